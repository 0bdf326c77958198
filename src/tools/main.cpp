// The dsa CLI: one subcommand per job (design.md "tools"). Exit codes: 0 success, 2 a usage error
// (unknown command or option, an option value out of range, conflicting options), 1 any other error.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cpu/simd.h"
#include "core/error.h"
#include "git_commit.h"  // generated at build time: DSA_GIT_COMMIT
#include "tools/commands.h"

namespace {

void print_version() {
  std::printf("dsa %s (commit %s, %s build, CUDA backend %s, CPU kernels %s)\n", DSA_VERSION, DSA_GIT_COMMIT,
              DSA_BUILD_TYPE, DSA_CUDA_BUILT ? "built" : "not built", dsa::cpu::kernels().name);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dsa::tools;
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) {
    print_version();
    return 0;
  }
  std::string cmd = argv[1];
  try {
    for (const Command& c : commands())
      if (cmd == c.name) return c.run(argc - 1, argv + 1);
    std::fprintf(stderr, "dsa: unknown command '%s'\n", cmd.c_str());
    print_usage();
    return 2;
  } catch (const dsa::UsageError& e) {
    std::fprintf(stderr, "dsa %s: usage error: %s (dsa %s --help lists the options)\n", cmd.c_str(), e.what(),
                 cmd.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsa %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}

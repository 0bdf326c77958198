// The dsa CLI: one subcommand per job (design.md "tools").
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  using namespace dsa::tools;
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  try {
    for (const Command& c : commands())
      if (cmd == c.name) return c.run(argc - 1, argv + 1);
    std::fprintf(stderr, "dsa: unknown command '%s'\n", cmd.c_str());
    print_usage();
    return 2;
  } catch (const dsa::Error& e) {
    std::fprintf(stderr, "dsa %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsa %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}

#include "tools/commands.h"

#include <algorithm>
#include <cstdio>

namespace dsa::tools {

std::vector<Command>& commands() {
  static std::vector<Command> c;
  return c;
}

void print_usage() {
  std::fprintf(stderr, "usage: dsa <command> [options]   (dsa <command> --help for its options)\n"
                       "       dsa --version\n\ncommands:\n");
  auto cs = commands();
  std::sort(cs.begin(), cs.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (auto& c : cs) std::fprintf(stderr, "  %-14s %s\n", c.name.c_str(), c.help.c_str());
}

}  // namespace dsa::tools

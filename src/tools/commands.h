#pragma once
// Registry of dsa subcommands. Each lives in its own cmd_*.cpp and registers itself.
#include <functional>
#include <string>
#include <vector>

namespace dsa::tools {

struct Command {
  std::string name;
  std::string help;
  std::function<int(int, char**)> run;  // argv[0] is the subcommand name
};
std::vector<Command>& commands();
void print_usage();

struct Register {
  Register(std::string name, std::string help, std::function<int(int, char**)> run) {
    commands().push_back({std::move(name), std::move(help), std::move(run)});
  }
};

}  // namespace dsa::tools

#pragma once
// One error type for the whole engine. Messages name the file, the tensor and what was
// expected versus found, so a user can act on them without a debugger.
#include <stdexcept>
#include <string>
#include <utility>

namespace dsa {

class Error : public std::runtime_error {
 public:
  explicit Error(std::string msg) : std::runtime_error(std::move(msg)) {}
};

// A command line the user must change (bad option value, conflicting options): the CLI exits 2 for
// these and 1 for every other Error.
class UsageError : public Error {
 public:
  explicit UsageError(std::string msg) : Error(std::move(msg)) {}
};

// Concatenate arguments with operator<< into an Error and throw it.
template <typename... Args>
[[noreturn]] void fail(Args&&... args);
template <typename... Args>
[[noreturn]] void usage_fail(Args&&... args);

}  // namespace dsa

#include <sstream>
namespace dsa {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(concat(std::forward<Args>(args)...));
}
template <typename... Args>
[[noreturn]] void usage_fail(Args&&... args) {
  throw UsageError(concat(std::forward<Args>(args)...));
}
}  // namespace dsa

#define DSA_CHECK(cond, ...)                                                   \
  do {                                                                         \
    if (!(cond)) ::dsa::fail(__VA_ARGS__);                                     \
  } while (0)

#define DSA_USAGE_CHECK(cond, ...)                                             \
  do {                                                                         \
    if (!(cond)) ::dsa::usage_fail(__VA_ARGS__);                               \
  } while (0)

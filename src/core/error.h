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

// Concatenate arguments with operator<< into an Error and throw it.
template <typename... Args>
[[noreturn]] void fail(Args&&... args);

}  // namespace dsa

#include <sstream>
namespace dsa {
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  throw Error(os.str());
}
}  // namespace dsa

#define DSA_CHECK(cond, ...)                                                   \
  do {                                                                         \
    if (!(cond)) ::dsa::fail(__VA_ARGS__);                                     \
  } while (0)

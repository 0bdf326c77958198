#include "io/token_ids.h"

#include <limits>

#include "core/error.h"

namespace dsa {

std::vector<int32_t> parse_token_ids(std::string_view s, int64_t vocab_size, const std::string& what) {
  const int64_t limit = vocab_size > 0 ? vocab_size : int64_t(std::numeric_limits<int32_t>::max()) + 1;
  auto is_sep = [](char c) { return c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']'; };
  auto shown = [&](size_t i, size_t j) {
    std::string t(s.substr(i, std::min<size_t>(j - i, 40)));
    return j - i > 40 ? t + "..." : t;
  };
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    if (is_sep(s[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && !is_sep(s[j])) ++j;
    const bool neg = s[i] == '-';
    size_t k = neg ? i + 1 : i;
    bool digits = k < j;
    // Accumulate with saturation: the value only needs to be exact while it can still be in range.
    int64_t v = 0;
    for (; k < j && digits; ++k) {
      if (s[k] < '0' || s[k] > '9') digits = false;
      else if (v <= limit) v = v * 10 + (s[k] - '0');
    }
    if (!digits)
      fail(what, ": '", shown(i, j), "' at byte ", i, " is not a token id (expected integers in [0, ", limit, ")",
           " separated by spaces or commas)");
    if (neg) fail(what, ": token id ", shown(i, j), " at byte ", i, " is negative (expected [0, ", limit, "))");
    if (v >= limit)
      fail(what, ": token id ", shown(i, j), " at byte ", i, " is outside ",
           vocab_size > 0 ? "the vocabulary " : "the range ", "[0, ", limit, ")");
    ids.push_back(int32_t(v));
    i = j;
  }
  return ids;
}

}  // namespace dsa

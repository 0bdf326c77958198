#pragma once
// Token-id lists as users write them: "1 2 3", "1,2,3", "[1, 2, 3]" (white space, commas and
// brackets separate ids).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsa {

// Every id must be in [0, vocab_size) (vocab_size <= 0: any non-negative int32). Errors (dsa::Error)
// start with `what` and name the offending text, its byte offset and the allowed range.
std::vector<int32_t> parse_token_ids(std::string_view s, int64_t vocab_size, const std::string& what);

}  // namespace dsa

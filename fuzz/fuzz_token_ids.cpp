// libFuzzer target: the token-id list parser (--prompt-ids, tokenize --decode). Bytes 0-1 give the
// vocabulary size, the rest is the list. Either every id is in [0, vocab) and printing the ids and
// parsing them again gives the same list, or it throws dsa::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "io/token_ids.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const int64_t vocab = int64_t(data[0]) << 8 | data[1];  // 0: any int32
  const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);
  try {
    const std::vector<int32_t> ids = dsa::parse_token_ids(text, vocab, "fuzz");
    std::string again;
    for (int32_t id : ids) {
      if (id < 0 || (vocab > 0 && id >= vocab)) std::abort();
      again += std::to_string(id) + ",";
    }
    if (dsa::parse_token_ids(again, vocab, "fuzz") != ids) std::abort();
  } catch (const dsa::Error&) {
  }
  return 0;
}

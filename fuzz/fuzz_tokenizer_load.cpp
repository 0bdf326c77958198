// libFuzzer target: tokenizer.json + tokenizer_config.json loading. The input is the two files'
// texts separated by the first NUL byte (none: no tokenizer_config.json). Loading either succeeds
// (then encoding and decoding a few strings must work) or throws dsa::Error.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t nul = all.find('\0');
  const std::string_view tj = all.substr(0, nul), cj = nul == std::string_view::npos ? "" : all.substr(nul + 1);
  try {
    const dsa::Tokenizer tok = dsa::Tokenizer::from_json_strings(tj, cj, "fuzz/tokenizer.json", "fuzz/tokenizer_config.json");
    for (const char* s : {"", "hello world", "  \n\t x", "<|begin_of_sentence|>caf\xc3\xa9 123"}) {
      const std::vector<int32_t> ids = tok.encode_with_bos(s);
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) std::abort();
      (void)tok.decode(ids, false);
      (void)tok.decode(ids, true);
    }
  } catch (const dsa::Error&) {
  }
  return 0;
}

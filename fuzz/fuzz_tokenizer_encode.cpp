// libFuzzer target: encoding any bytes with a real tokenizer (dsa-mini's, or $DSA_FUZZ_TOKENIZER_DIR).
// Every id is in the vocabulary; for valid UTF-8 (no normalizer in this tokenizer) decoding gives the
// text back, and the streaming decoder gives what decode gives.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/error.h"
#include "io/tokenizer.h"

namespace {
const dsa::Tokenizer* tokenizer() {
  static std::unique_ptr<dsa::Tokenizer> t = [] {
    const char* env = std::getenv("DSA_FUZZ_TOKENIZER_DIR");
    const std::string dir = env ? env : DSA_SHARED_DIR "/models/dsa-mini";
    try {
      return std::make_unique<dsa::Tokenizer>(dsa::Tokenizer::from_dir(dir));
    } catch (const dsa::Error& e) {
      std::fprintf(stderr, "fuzz_tokenizer_encode: no tokenizer (%s): nothing to fuzz\n", e.what());
      return std::unique_ptr<dsa::Tokenizer>();
    }
  }();
  return t.get();
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = cp << 6 | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const dsa::Tokenizer* tok = tokenizer();
  if (!tok) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tok->encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= tok->vocab_size()) std::abort();
  const std::string back = tok->decode(ids, false);
  if (valid_utf8(text) && back != text) std::abort();
  dsa::StreamDecoder sd(*tok, false);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  if (streamed != back) std::abort();
  return 0;
}

#pragma once
// Byte-level BPE tokenizer that reads Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)
// and reproduces the `tokenizers` library (Rust; what `transformers` "fast" tokenizers run) id for
// id. Written for the DeepSeek-V3 family (V3, V3.1, V3.2, dsa-mini): docs/tokenizer.md.
//
// Pipeline of encode(text), as in HF `Tokenizer::encode(text, add_special_tokens=false)`:
//   1. Invalid UTF-8 is replaced by U+FFFD, one per maximal invalid subpart (the WHATWG / Unicode
//      "best practice" rule, which is also what Rust's String::from_utf8_lossy, JS TextDecoder and
//      Node's Buffer#toString("utf8") do). HF Rust only accepts &str, so it never sees invalid input;
//      this choice makes dsa agree with the JS reference (tests/tokenizer_diff) after lossy decoding.
//   2. Added tokens ("added_tokens" of tokenizer.json, special or not) are split out of the text,
//      leftmost-longest, honouring lstrip / rstrip / single_word: first those with normalized=false
//      on the raw text, then those with normalized=true on the normalized remaining pieces.
//   3. normalizer (null, Sequence, Prepend, Replace, Strip), then pre_tokenizer (Sequence of Split
//      [String or Regex pattern, any behaviour, invert] ending in ByteLevel [add_prefix_space,
//      use_regex]), then the BPE model over the bytes of each pre-token (merge ranks; merges as
//      "a b" strings or ["a","b"] pairs; ignore_merges; unk_token; byte_fallback; dropout must be
//      null or 0). Anything else is rejected at load time with a dsa::Error naming the type.
//   Regexes are HF's Oniguruma patterns run by PCRE2 (UTF + UCP, JIT) after a translation that keeps
//   Oniguruma's meaning: \s / \S are the Unicode White_Space set (which includes U+0085 and excludes
//   U+FEFF and U+180E), \w is letters, marks, decimal digits and connector punctuation, \h is a hex
//   digit, ^ and $ match at line boundaries (Ruby syntax). See docs/tokenizer.md for the differences
//   with the JS port (transformers.js), which uses JavaScript's \s.
// decode(ids) follows HF's ByteLevel decoder: each token's characters are mapped back to bytes (a
// token with a character outside the byte alphabet, such as an added token, contributes its own
// UTF-8), the bytes are joined and invalid UTF-8 becomes U+FFFD. Ids that name no token are skipped,
// as HF does. No clean-up of spaces is applied (clean_up_tokenization_spaces is false for DeepSeek).
//
// Thread safety: a Tokenizer is immutable after loading and may be shared by threads; the pre-token
// -> ids cache is per thread. Copies are cheap (shared state).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsa {

class Tokenizer {
 public:
  // dir/tokenizer.json, plus dir/tokenizer_config.json when that file exists.
  static Tokenizer from_dir(const std::string& dir);
  // tokenizer_config_json may be "" (then add_bos() is false and bos_id()/eos_id() are -1).
  static Tokenizer from_files(const std::string& tokenizer_json, const std::string& tokenizer_config_json);
  // The same from the files' contents.
  // origin / config_origin name the two in errors.
  static Tokenizer from_json_strings(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                                     const std::string& origin = "<memory>", const std::string& config_origin = "");

  // Token ids of text; no BOS is added; added/special tokens written in the text are matched.
  std::vector<int32_t> encode(std::string_view text) const;
  // Appends to out instead (no clearing).
  void encode_into(std::string_view text, std::vector<int32_t>& out) const;
  // BOS first iff add_bos(), then encode(text).
  std::vector<int32_t> encode_with_bos(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  int32_t bos_id() const;  // from tokenizer_config.json "bos_token"; -1 if unknown
  int32_t eos_id() const;  // from tokenizer_config.json "eos_token"; -1 if unknown
  bool add_bos() const;    // tokenizer_config.json "add_bos_token" (false without a config)
  int64_t vocab_size() const;  // 1 + the largest id of the model vocab and the added tokens
  std::optional<int32_t> token_to_id(std::string_view tok) const;  // added tokens first, then vocab
  std::string id_to_token(int32_t id) const;  // as written in tokenizer.json; throws on unknown id
  bool is_special(int32_t id) const;          // an added token with "special": true
  bool is_added(int32_t id) const;            // any added token
  // The bytes this token contributes to decoded text (possibly not valid UTF-8 on its own);
  // empty for an unknown id.
  std::string token_bytes(int32_t id) const;
  // Pre-tokens of text (after added-token splitting, normalization and pre-tokenization) as raw
  // UTF-8 pieces; added tokens appear as their content. For tests and debugging.
  std::vector<std::string> pre_tokenize(std::string_view text) const;
  // Empties the calling thread's pre-token -> ids cache (for cold-cache benchmarks).
  static void clear_thread_cache();

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Streaming detokenizer: push ids one by one; push returns the text that is complete so far. It
// never emits part of a UTF-8 sequence: bytes that may still become a valid character are held
// back. A sequence that can no longer become valid is emitted as U+FFFD at once, and flush()
// returns what is left (an unfinished sequence becomes U+FFFD), so the concatenation of every
// push() and the final flush() equals Tokenizer::decode of all the ids. After flush() the decoder
// can be reused for a new stream.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  Tokenizer tok_;
  bool skip_special_;
  std::string pending_;
};

// UTF-8 helpers used by the tokenizer (exposed for tests and other text code).
// Appends src to out, replacing each maximal invalid subpart by U+FFFD. If final is false, an
// unfinished but so far valid sequence at the end is not consumed. Returns bytes consumed.
size_t utf8_append_lossy(std::string_view src, std::string& out, bool final = true);
bool utf8_valid(std::string_view s);

}  // namespace dsa

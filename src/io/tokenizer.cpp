// Byte-level BPE tokenizer compatible with Hugging Face `tokenizers` (see tokenizer.h and
// docs/tokenizer.md). Written from the documented behaviour of the library and its JSON format.
#include "io/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsa {

// ------------------------------------------------------------------------------------------------
// UTF-8
// ------------------------------------------------------------------------------------------------

namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Length of the sequence that lead byte b starts (0: b cannot start one) and the allowed range of
// the second byte (Unicode Table 3-7, which WHATWG's decoder follows).
struct LeadInfo {
  uint8_t len, lo, hi;
};
inline LeadInfo lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Decode one code point of valid UTF-8 at p (p < end); advances p.
inline uint32_t next_cp(const char*& p) {
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  uint32_t c = u[0];
  if (c < 0x80) {
    p += 1;
    return c;
  }
  if (c < 0xE0) {
    p += 2;
    return ((c & 0x1F) << 6) | (u[1] & 0x3F);
  }
  if (c < 0xF0) {
    p += 3;
    return ((c & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F);
  }
  p += 4;
  return ((c & 0x07) << 18) | ((u[1] & 0x3F) << 12) | ((u[2] & 0x3F) << 6) | (u[3] & 0x3F);
}

// The code point that ends at end (valid UTF-8 in [begin, end), end > begin); sets *start.
inline uint32_t prev_cp(const char* begin, const char* end, const char** start) {
  const char* p = end - 1;
  while (p > begin && (static_cast<uint8_t>(*p) & 0xC0) == 0x80) --p;
  *start = p;
  const char* q = p;
  return next_cp(q);
}

inline void append_cp(std::string& out, uint32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s test).
inline bool is_white_space(uint32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Length of the longest valid prefix of [p, p+n).
size_t valid_prefix(const char* s, size_t n) {
  const auto* u = reinterpret_cast<const uint8_t*>(s);
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    if (i + 8 <= n) {
      uint64_t v;
      std::memcpy(&v, u + i, 8);
      if ((v & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    uint8_t b = u[i];
    if (b < 0x80) {
      ++i;
      continue;
    }
    LeadInfo li = lead_info(b);
    if (li.len == 0 || i + li.len > n) return i;
    if (u[i + 1] < li.lo || u[i + 1] > li.hi) return i;
    for (size_t k = 2; k < li.len; ++k)
      if ((u[i + k] & 0xC0) != 0x80) return i;
    i += li.len;
  }
  return n;
}

}  // namespace

bool utf8_valid(std::string_view s) { return valid_prefix(s.data(), s.size()) == s.size(); }

size_t utf8_append_lossy(std::string_view src, std::string& out, bool final) {
  const auto* u = reinterpret_cast<const uint8_t*>(src.data());
  const size_t n = src.size();
  size_t i = 0;
  while (i < n) {
    size_t good = valid_prefix(src.data() + i, n - i);
    out.append(src.data() + i, good);
    i += good;
    if (i >= n) break;
    // u[i] starts an invalid or unfinished sequence.
    LeadInfo li = lead_info(u[i]);
    if (li.len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    size_t j = i + 1;
    bool bad = false;
    for (size_t k = 1; k < li.len; ++k, ++j) {
      if (j >= n) break;
      uint8_t lo = k == 1 ? li.lo : 0x80, hi = k == 1 ? li.hi : 0xBF;
      if (u[j] < lo || u[j] > hi) {
        bad = true;
        break;
      }
    }
    if (!bad && j >= n) {  // unfinished at the end of the input
      if (!final) return i;
      out += kReplacement;
      return n;
    }
    out += kReplacement;  // maximal subpart [i, j) is replaced; u[j] is looked at again
    i = j;
  }
  return n;
}

// ------------------------------------------------------------------------------------------------
// Regexes: Oniguruma (HF) syntax translated to PCRE2
// ------------------------------------------------------------------------------------------------

namespace {

constexpr const char* kWhiteSpaceClass =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* kWordClass = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Translate an Oniguruma (Ruby syntax, UTF-8) pattern as found in tokenizer.json into a PCRE2
// pattern with the same meaning under PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE.
std::string onig_to_pcre2(const std::string& pat) {
  std::string out;
  out.reserve(pat.size() * 2);
  bool in_class = false;
  const size_t n = pat.size();
  size_t i = 0;
  while (i < n) {
    char c = pat[i];
    if (c == '\\') {
      if (i + 1 >= n) fail("tokenizer: regex /", pat, "/ ends with a lone backslash");
      char d = pat[i + 1];
      i += 2;
      switch (d) {
        case 's':
          out += in_class ? std::string(kWhiteSpaceClass) : std::string("[") + kWhiteSpaceClass + "]";
          break;
        case 'S':
          if (in_class) fail("tokenizer: regex /", pat, "/ uses \\S inside a character class, which is unsupported");
          out += std::string("[^") + kWhiteSpaceClass + "]";
          break;
        case 'w':
          out += in_class ? std::string(kWordClass) : std::string("[") + kWordClass + "]";
          break;
        case 'W':
          if (in_class) fail("tokenizer: regex /", pat, "/ uses \\W inside a character class, which is unsupported");
          out += std::string("[^") + kWordClass + "]";
          break;
        case 'h':
          out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
          break;
        case 'H':
          if (in_class) fail("tokenizer: regex /", pat, "/ uses \\H inside a character class, which is unsupported");
          out += "[^0-9a-fA-F]";
          break;
        case 'u':
          if (i + 4 <= n && is_hex(pat[i]) && is_hex(pat[i + 1]) && is_hex(pat[i + 2]) && is_hex(pat[i + 3])) {
            out += "\\x{" + pat.substr(i, 4) + "}";
            i += 4;
          } else {
            fail("tokenizer: regex /", pat, "/ has a malformed \\u escape");
          }
          break;
        default:
          out += '\\';
          out += d;
      }
      continue;
    }
    if (!in_class) {
      if (c == '[') {
        in_class = true;
        out += c;
        ++i;
        if (i < n && pat[i] == '^') out += pat[i++];
        if (i < n && pat[i] == ']') out += pat[i++];  // a leading ']' is literal
        continue;
      }
      if (c == '(' && i + 1 < n && pat[i + 1] == '?') {
        // Inline options: Ruby's (?m) is "dot matches newline", PCRE2's (?s).
        size_t j = i + 2;
        while (j < n && (pat[j] == 'i' || pat[j] == 'm' || pat[j] == 'x' || pat[j] == '-')) ++j;
        if (j > i + 2 && j < n && (pat[j] == ':' || pat[j] == ')')) {
          out += "(?";
          for (size_t k = i + 2; k < j; ++k) out += pat[k] == 'm' ? 's' : pat[k];
          i = j;
          continue;
        }
      }
      out += c;
      ++i;
      continue;
    }
    // Inside a class.
    if (c == '[') {
      if (i + 1 < n && pat[i + 1] == ':') {  // POSIX bracket [:alpha:]
        size_t e = pat.find(":]", i + 2);
        if (e == std::string::npos) fail("tokenizer: regex /", pat, "/ has an unterminated POSIX class");
        out.append(pat, i, e + 2 - i);
        i = e + 2;
        continue;
      }
      fail("tokenizer: regex /", pat, "/ nests character classes (Oniguruma syntax), which is unsupported");
    }
    if (c == '&' && i + 1 < n && pat[i + 1] == '&')
      fail("tokenizer: regex /", pat, "/ uses class intersection &&, which is unsupported");
    if (c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};

class Regex {
 public:
  Regex() = default;
  // literal: match the string as is (HF's Split/Replace "String" patterns).
  Regex(const std::string& pattern, bool literal) {
    std::string p = literal ? pattern : onig_to_pcre2(pattern);
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
    if (literal) opts = PCRE2_UTF | PCRE2_LITERAL;
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), opts, &err, &off, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("tokenizer: cannot compile regex /", pattern, "/ (as PCRE2 /", p, "/): ", reinterpret_cast<char*>(msg),
           " at offset ", off);
    }
    code_.reset(code, Pcre2CodeDeleter());
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }
  explicit operator bool() const { return code_ != nullptr; }
  // Finds the first match in [s, s+n) starting at or after start; sets [*b, *e).
  bool find(const char* s, size_t n, size_t start, size_t* b, size_t* e) const;

 private:
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

// Per-thread PCRE2 state: match data and a JIT stack large enough for long pre-tokens.
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!md || !mctx || !stack) fail("tokenizer: out of memory creating PCRE2 match state");
    pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
  }
};

MatchState& match_state() {
  thread_local MatchState st;
  return st;
}

bool Regex::find(const char* s, size_t n, size_t start, size_t* b, size_t* e) const {
  MatchState& st = match_state();
  auto subj = reinterpret_cast<PCRE2_SPTR>(s);
  int rc = jit_ ? pcre2_jit_match(code_.get(), subj, n, start, 0, st.md, st.mctx)
                : pcre2_match(code_.get(), subj, n, start, PCRE2_NO_UTF_CHECK, st.md, st.mctx);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    fail("tokenizer: regex match failed: ", reinterpret_cast<char*>(msg));
  }
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  *b = ov[0];
  *e = ov[1];
  return true;
}

// All matches of re in [s, s+n) as HF's find_matches sees them (the Rust onig crate's find_iter:
// an empty match right where the previous match ended is skipped). Calls f(begin, end, is_match)
// for every gap and match in order; gaps are never empty, matches may be.
template <typename F>
void for_each_split(const Regex& re, const char* s, size_t n, F&& f) {
  size_t last_end = 0, prev = 0;
  size_t last_match_end = static_cast<size_t>(-1);
  size_t b, e;
  while (last_end <= n && re.find(s, n, last_end, &b, &e)) {
    if (b == e && last_match_end == e) {
      if (last_end >= n) break;
      const char* p = s + last_end;
      next_cp(p);
      last_end = p - s;
      continue;
    }
    if (prev != b) f(prev, b, false);
    f(b, e, true);
    prev = e;
    last_end = e;
    last_match_end = e;
  }
  if (prev != n) f(prev, n, false);
}

// ------------------------------------------------------------------------------------------------
// Hash tables
// ------------------------------------------------------------------------------------------------

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ull;
  x ^= x >> 27;
  x *= 0x81dadef4bc2dd44dull;
  x ^= x >> 33;
  return x;
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
  }
  return mix64(h);
}

// (left id, right id) -> (rank, merged id); open addressing, read-only after construction.
class MergeTable {
 public:
  void build(const std::vector<std::array<int32_t, 3>>& merges) {  // {left, right, merged}; rank = index
    size_t cap = 16;
    while (cap < merges.size() * 2) cap <<= 1;
    mask_ = cap - 1;
    slots_.assign(cap, Slot{});
    for (size_t r = 0; r < merges.size(); ++r) {
      uint64_t key = pack(merges[r][0], merges[r][1]);
      size_t i = mix64(key) & mask_;
      while (slots_[i].rank >= 0 && slots_[i].key != key) i = (i + 1) & mask_;
      if (slots_[i].rank >= 0) continue;  // duplicate merge: the first (lowest) rank wins, as in HF
      slots_[i] = Slot{key, static_cast<int32_t>(r), merges[r][2]};
    }
  }
  // Returns the rank (or -1) and sets *merged.
  inline int32_t find(int32_t a, int32_t b, int32_t* merged) const {
    uint64_t key = pack(a, b);
    size_t i = mix64(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.rank < 0) return -1;
      if (s.key == key) {
        *merged = s.merged;
        return s.rank;
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  struct Slot {
    uint64_t key = 0;
    int32_t rank = -1;
    int32_t merged = -1;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Per-thread cache: pre-token bytes -> ids. Grows from 4K to 256K slots (at most 128K words, like
// HF's cache it only holds words up to kMaxWordLen bytes) and is cleared when full.
class WordCache {
 public:
  static constexpr size_t kMaxWordLen = 256;
  const int32_t* find(const char* w, size_t n, uint64_t h, uint32_t* len) const {
    if (slots_.empty()) return nullptr;
    size_t i = h & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.klen == 0) return nullptr;
      if (s.h == h && s.klen == n && std::memcmp(keys_.data() + s.koff, w, n) == 0) {
        *len = s.vlen;
        return vals_.data() + s.voff;
      }
      i = (i + 1) & mask_;
    }
  }
  void insert(const char* w, size_t n, uint64_t h, const int32_t* ids, size_t m) {
    if (slots_.empty()) resize(kMinSlots);
    if (count_ + 1 > slots_.size() / 2) {
      if (slots_.size() < kMaxSlots)
        resize(slots_.size() * 2);
      else
        clear();
    }
    if (keys_.size() + n > (32u << 20) || vals_.size() + m > (8u << 20)) clear();
    place(Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(n), static_cast<uint32_t>(vals_.size()),
               static_cast<uint32_t>(m)});
    keys_.append(w, n);
    vals_.insert(vals_.end(), ids, ids + m);
    ++count_;
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    vals_.clear();
    count_ = 0;
  }
  uint64_t owner = 0;

 private:
  static constexpr size_t kMinSlots = size_t(1) << 12, kMaxSlots = size_t(1) << 18;
  struct Slot {
    uint64_t h = 0;
    uint32_t koff = 0, klen = 0, voff = 0, vlen = 0;
  };
  void place(const Slot& s) {
    size_t i = s.h & mask_;
    while (slots_[i].klen != 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
  void resize(size_t n) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    for (const Slot& s : old)
      if (s.klen != 0) place(s);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  std::string keys_;
  std::vector<int32_t> vals_;
};

// ------------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode)
// ------------------------------------------------------------------------------------------------

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};
  ByteAlphabet() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

// Token string as written in tokenizer.json -> bytes it stands for. A token with a character
// outside the byte alphabet stands for its own UTF-8 (HF's ByteLevel decoder does the same).
std::string token_to_bytes(const std::string& tok) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  out.reserve(tok.size());
  const char* p = tok.data();
  const char* end = p + tok.size();
  if (!utf8_valid(tok)) return tok;
  while (p < end) {
    uint32_t c = next_cp(p);
    if (c >= a.cp_to_byte.size() || a.cp_to_byte[c] < 0) return tok;
    out += static_cast<char>(a.cp_to_byte[c]);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Added tokens
// ------------------------------------------------------------------------------------------------

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

// Byte trie over added-token contents; leftmost-longest matching.
class AddedTrie {
 public:
  bool empty() const { return nodes_.size() <= 1; }
  void add(const std::string& s, int32_t token_index) {
    if (nodes_.empty()) nodes_.emplace_back();
    if (s.empty()) return;
    first_[static_cast<uint8_t>(s[0])] = true;
    int32_t cur = 0;
    for (unsigned char c : s) {
      int32_t nx = child(cur, c);
      if (nx < 0) {
        nx = static_cast<int32_t>(nodes_.size());
        nodes_[cur].kids.emplace_back(c, nx);
        nodes_.emplace_back();
      }
      cur = nx;
    }
    if (nodes_[cur].token < 0) nodes_[cur].token = token_index;
  }
  // Longest match starting at s[i]: returns its length (0: none) and the token index.
  size_t longest_at(const char* s, size_t n, size_t i, int32_t* token) const {
    if (!first_[static_cast<uint8_t>(s[i])]) return 0;
    int32_t cur = 0;
    size_t best = 0;
    for (size_t j = i; j < n; ++j) {
      cur = child(cur, static_cast<uint8_t>(s[j]));
      if (cur < 0) break;
      if (nodes_[cur].token >= 0) {
        best = j + 1 - i;
        *token = nodes_[cur].token;
      }
    }
    return best;
  }

 private:
  int32_t child(int32_t node, uint8_t c) const {
    for (const auto& [k, v] : nodes_[node].kids)
      if (k == c) return v;
    return -1;
  }
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;
    int32_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

// ------------------------------------------------------------------------------------------------
// Normalizers and pre-tokenizers
// ------------------------------------------------------------------------------------------------

struct Normalizer {
  enum Kind { Prepend, Replace, Strip } kind = Prepend;
  std::string text;  // Prepend: prefix; Replace: replacement
  Regex re;          // Replace
  bool left = false, right = false;  // Strip
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct SplitStep {
  Regex re;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
};

struct Range {
  size_t b, e;
  bool match;
};

bool is_word_char(uint32_t c);  // defined below (uses PCRE2)

}  // namespace

// ------------------------------------------------------------------------------------------------
// Tokenizer state
// ------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  uint64_t uid = 0;
  std::string origin;

  // Model (BPE).
  std::unordered_map<std::string, int32_t> vocab;  // token string (byte-level alphabet) -> id
  std::unordered_map<std::string, int32_t> raw_vocab;  // bytes -> id (only for ignore_merges)
  std::vector<std::string> id_to_tok;                  // id -> token string ("" = none)
  std::vector<std::string> id_bytes;                   // id -> bytes for decoding
  std::vector<uint8_t> id_flags;                       // bit 0: added, bit 1: special
  std::array<int32_t, 256> byte_id{};                  // byte -> id of its one-character token
  MergeTable merges;
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  int32_t unk_id = -1;
  std::array<int32_t, 256> fallback_id{};  // <0xXX> tokens (byte_fallback)

  // Added tokens.
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_ids;  // content -> id
  AddedTrie raw_trie, norm_trie;  // normalized=false / normalized=true tokens

  std::vector<Normalizer> normalizers;
  std::vector<SplitStep> splits;  // applied in order, then ByteLevel
  bool bl_add_prefix_space = false, bl_use_regex = false;
  Regex bl_regex;

  int32_t bos = -1, eos = -1;
  bool add_bos = false;

  void normalize(std::string& s) const;

  // Splits [s, s+n) on the tokens of trie; on_text(b, e) for text, on_added(token index) for
  // tokens. Implements lstrip / rstrip / single_word as HF's AddedVocabulary does.
  template <typename T, typename A>
  void split_added(const AddedTrie& trie, const char* s, size_t n, T&& on_text, A&& on_added) const;

  // Pre-tokenizes [s, s+n) from split step `level` on; on_piece(p, len) for each final pre-token.
  template <typename P>
  void pre_tokenize_from(size_t level, const char* s, size_t n, P& on_piece) const;

  template <typename P, typename A>
  void run(std::string_view text, P& on_piece, A& on_added) const;

  void bpe(const char* w, size_t n, std::vector<int32_t>& out) const;
  void bpe_uncached(const char* w, size_t n, std::vector<int32_t>& out) const;
};

namespace {

Regex& word_char_regex() {
  static Regex re("[\\p{L}\\p{N}_]", false);
  return re;
}

bool is_word_char(uint32_t c) {
  std::string s;
  append_cp(s, c);
  size_t b, e;
  return word_char_regex().find(s.data(), s.size(), 0, &b, &e);
}

}  // namespace

void Tokenizer::Impl::normalize(std::string& s) const {
  for (const Normalizer& nm : normalizers) {
    switch (nm.kind) {
      case Normalizer::Prepend:
        if (!s.empty()) s.insert(0, nm.text);
        break;
      case Normalizer::Replace: {
        std::string out;
        size_t prev = 0;
        for_each_split(nm.re, s.data(), s.size(), [&](size_t b, size_t e, bool m) {
          if (m) {
            out.append(s, prev, b - prev);
            out += nm.text;
          } else {
            out.append(s, b, e - b);
          }
          prev = e;
        });
        s = std::move(out);
        break;
      }
      case Normalizer::Strip: {
        const char* b = s.data();
        const char* e = b + s.size();
        if (nm.left) {
          while (b < e) {
            const char* p = b;
            if (!is_white_space(next_cp(p))) break;
            b = p;
          }
        }
        if (nm.right) {
          while (e > b) {
            const char* st;
            if (!is_white_space(prev_cp(b, e, &st))) break;
            e = st;
          }
        }
        s = std::string(b, e);
        break;
      }
    }
  }
}

template <typename T, typename A>
void Tokenizer::Impl::split_added(const AddedTrie& trie, const char* s, size_t n, T&& on_text,
                                  A&& on_added) const {
  if (trie.empty()) {
    if (n) on_text(0, n);
    return;
  }
  size_t text_start = 0;  // start of the pending text gap
  size_t i = 0;
  while (i < n) {
    int32_t tok = -1;
    size_t len = trie.longest_at(s, n, i, &tok);
    if (len == 0) {
      ++i;
      continue;
    }
    const AddedToken& at = added[tok];
    size_t b = i, e = i + len;
    if (at.single_word) {
      bool ok = true;
      if (b > 0) {
        const char* st;
        if (is_word_char(prev_cp(s, s + b, &st))) ok = false;
      }
      if (ok && e < n) {
        const char* p = s + e;
        if (is_word_char(next_cp(p))) ok = false;
      }
      if (!ok) {  // HF's matcher moves on past the rejected match
        i = e;
        continue;
      }
    }
    if (at.lstrip) {
      while (b > text_start) {
        const char* st;
        if (!is_white_space(prev_cp(s, s + b, &st))) break;
        b = st - s;
      }
    }
    if (at.rstrip) {
      while (e < n) {
        const char* p = s + e;
        if (!is_white_space(next_cp(p))) break;
        e = p - s;
      }
    }
    if (b > text_start) on_text(text_start, b);
    on_added(tok);
    text_start = e;
    i = std::max(e, i + len);
  }
  if (text_start < n) on_text(text_start, n);
}

template <typename P>
void Tokenizer::Impl::pre_tokenize_from(size_t level, const char* s, size_t n, P& on_piece) const {
  if (level == splits.size()) {  // ByteLevel
    thread_local std::string prefixed;
    if (bl_add_prefix_space && s[0] != ' ') {
      prefixed.assign(1, ' ');
      prefixed.append(s, n);
      s = prefixed.data();
      n = prefixed.size();
    }
    if (!bl_use_regex) {
      on_piece(s, n);
      return;
    }
    for_each_split(bl_regex, s, n, [&](size_t b, size_t e, bool) {
      if (e > b) on_piece(s + b, e - b);
    });
    return;
  }
  const SplitStep& st = splits[level];
  if (st.behavior == Behavior::Isolated && !st.invert) {
    for_each_split(st.re, s, n, [&](size_t b, size_t e, bool) {
      if (e > b) pre_tokenize_from(level + 1, s + b, e - b, on_piece);
    });
    return;
  }
  // General behaviours, following HF's SplitDelimiterBehavior.
  std::vector<Range> m;
  for_each_split(st.re, s, n, [&](size_t b, size_t e, bool is_m) { m.push_back({b, e, is_m != st.invert}); });
  std::vector<Range> out;
  switch (st.behavior) {
    case Behavior::Isolated:
      out = m;
      break;
    case Behavior::Removed:
      for (const Range& r : m)
        if (!r.match) out.push_back(r);
      break;
    case Behavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const Range& r : m) {
        if (r.match && !prev_match && !out.empty())
          out.back().e = r.e;
        else
          out.push_back(r);
        prev_match = r.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev_match = false;
      for (size_t k = m.size(); k-- > 0;) {
        const Range& r = m[k];
        if (r.match && !prev_match && !out.empty())
          out.back().b = r.b;
        else
          out.push_back(r);
        prev_match = r.match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case Behavior::Contiguous: {
      bool prev_match = false;
      for (const Range& r : m) {
        if (r.match == prev_match && !out.empty())
          out.back().e = r.e;
        else
          out.push_back(r);
        prev_match = r.match;
      }
      break;
    }
  }
  for (const Range& r : out)
    if (r.e > r.b) pre_tokenize_from(level + 1, s + r.b, r.e - r.b, on_piece);
}

template <typename P, typename A>
void Tokenizer::Impl::run(std::string_view input, P& on_piece, A& on_added) const {
  std::string fixed;
  if (!utf8_valid(input)) {
    fixed.reserve(input.size() + 16);
    utf8_append_lossy(input, fixed, true);
    input = fixed;
  }
  const char* s = input.data();
  auto on_norm_text = [&](const char* t, size_t b, size_t e) { pre_tokenize_from(0, t + b, e - b, on_piece); };
  split_added(
      raw_trie, s, input.size(),
      [&](size_t b, size_t e) {
        if (normalizers.empty()) {
          split_added(
              norm_trie, s + b, e - b, [&](size_t b2, size_t e2) { on_norm_text(s + b, b2, e2); },
              [&](int32_t tok) { on_added(tok); });
        } else {
          std::string t(s + b, e - b);
          normalize(t);
          split_added(
              norm_trie, t.data(), t.size(), [&](size_t b2, size_t e2) { on_norm_text(t.data(), b2, e2); },
              [&](int32_t tok) { on_added(tok); });
        }
      },
      [&](int32_t tok) { on_added(tok); });
}

namespace {

struct BpeSym {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // 0: merged away
};
struct BpeCand {
  int32_t rank;
  int32_t pos;
  int32_t merged;
  bool operator<(const BpeCand& o) const {  // for a min-heap through std::push_heap (max-heap of inverse)
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

struct BpeScratch {
  std::vector<BpeSym> syms;
  std::vector<BpeCand> heap;
  // Word caches of the last few tokenizers this thread used (keyed by Impl::uid), so that
  // alternating between tokenizers does not empty a cache each time.
  static constexpr int kCaches = 4;
  WordCache caches[kCaches];
  int next_victim = 0;
  WordCache& cache_for(uint64_t uid) {
    for (WordCache& c : caches)
      if (c.owner == uid) return c;
    for (WordCache& c : caches)
      if (c.owner == 0) {
        c.owner = uid;
        return c;
      }
    WordCache& c = caches[next_victim];
    next_victim = (next_victim + 1) % kCaches;
    c.clear();
    c.owner = uid;
    return c;
  }
};
BpeScratch& bpe_scratch() {
  thread_local BpeScratch s;
  return s;
}

}  // namespace

void Tokenizer::Impl::bpe_uncached(const char* w, size_t n, std::vector<int32_t>& out) const {
  BpeScratch& sc = bpe_scratch();
  auto& syms = sc.syms;
  auto& heap = sc.heap;
  syms.clear();
  heap.clear();
  // Initial symbols: one per byte (one per character of the byte-level string).
  for (size_t i = 0; i < n; ++i) {
    uint8_t b = static_cast<uint8_t>(w[i]);
    int32_t id = byte_id[b];
    if (id < 0 && byte_fallback && fallback_id[b] >= 0) id = fallback_id[b];
    if (id < 0) {
      if (unk_id < 0) continue;  // HF drops characters it cannot represent when there is no unk
      if (fuse_unk && !syms.empty() && syms.back().id == unk_id) {
        syms.back().len += 1;
        continue;
      }
      id = unk_id;
    }
    int32_t k = static_cast<int32_t>(syms.size());
    syms.push_back({id, k - 1, -1, 1});
    if (k > 0) syms[k - 1].next = k;
  }
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    int32_t merged = -1;
    int32_t r = merges.find(syms[i].id, syms[i + 1].id, &merged);
    if (r >= 0) heap.push_back({r, static_cast<int32_t>(i), merged});
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    BpeCand top = heap.back();
    heap.pop_back();
    BpeSym& left = syms[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    BpeSym& right = syms[left.next];
    int32_t merged = -1;
    int32_t r = merges.find(left.id, right.id, &merged);
    if (r != top.rank || merged != top.merged) continue;  // stale candidate
    left.id = merged;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = top.pos;
    if (left.prev >= 0) {
      int32_t r2 = merges.find(syms[left.prev].id, left.id, &merged);
      if (r2 >= 0) {
        heap.push_back({r2, left.prev, merged});
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (left.next >= 0) {
      int32_t r2 = merges.find(left.id, syms[left.next].id, &merged);
      if (r2 >= 0) {
        heap.push_back({r2, top.pos, merged});
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

void Tokenizer::Impl::bpe(const char* w, size_t n, std::vector<int32_t>& out) const {
  if (n == 1 && byte_id[static_cast<uint8_t>(w[0])] >= 0) {
    out.push_back(byte_id[static_cast<uint8_t>(w[0])]);
    return;
  }
  if (ignore_merges) {
    auto it = raw_vocab.find(std::string(w, n));
    if (it != raw_vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (n > WordCache::kMaxWordLen) {
    bpe_uncached(w, n, out);
    return;
  }
  WordCache& cache = bpe_scratch().cache_for(uid);
  uint64_t h = hash_bytes(w, n);
  uint32_t len = 0;
  if (const int32_t* hit = cache.find(w, n, h, &len)) {
    out.insert(out.end(), hit, hit + len);
    return;
  }
  size_t before = out.size();
  bpe_uncached(w, n, out);
  cache.insert(w, n, h, out.data() + before, out.size() - before);
}

// ------------------------------------------------------------------------------------------------
// Loading
// ------------------------------------------------------------------------------------------------

namespace {

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st)) fail("tokenizer: ", what, " '", path, "' is a directory, not a file");
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))
    fail("tokenizer: ", what, " '", path, "' is not a regular file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("tokenizer: cannot open ", what, " '", path, "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("tokenizer: cannot read ", what, " '", path, "'");
  return ss.str();
}

using nlohmann::json;

json parse_json(std::string_view text, const std::string& origin, const char* what) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("tokenizer: malformed JSON in ", what, " '", origin, "': ", e.what());
  }
}

std::string type_of(const json& j, const char* what, const std::string& origin) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("tokenizer: ", what, " in '", origin, "' has no \"type\"");
  return j["type"].get<std::string>();
}

// Ids index per-id tables, so they are bounded well below INT32_MAX (a real vocabulary has ~130K).
constexpr int64_t kMaxTokenId = (int64_t(1) << 22) - 1;

int64_t token_id_of(const json& v, const std::string& what, const std::string& origin) {
  if (!v.is_number_integer()) fail("tokenizer: ", what, " in '", origin, "' has id ", v.dump(), ": expected an integer");
  if (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(kMaxTokenId) : (v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTokenId))
    fail("tokenizer: ", what, " in '", origin, "' has id ", v.dump(), ": expected an id in [0, ", kMaxTokenId, "]");
  return v.get<int64_t>();
}

bool get_bool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail("tokenizer: field \"", key, "\" is not a boolean");
  return it->get<bool>();
}

void load_normalizer(const json& j, Tokenizer::Impl& t) {
  if (j.is_null()) return;
  std::string type = type_of(j, "normalizer", t.origin);
  if (type == "Sequence") {
    for (const json& c : j.at("normalizers")) load_normalizer(c, t);
  } else if (type == "Prepend") {
    Normalizer nm;
    nm.kind = Normalizer::Prepend;
    nm.text = j.at("prepend").get<std::string>();
    t.normalizers.push_back(std::move(nm));
  } else if (type == "Replace") {
    Normalizer nm;
    nm.kind = Normalizer::Replace;
    const json& p = j.at("pattern");
    if (p.contains("String"))
      nm.re = Regex(p["String"].get<std::string>(), true);
    else if (p.contains("Regex"))
      nm.re = Regex(p["Regex"].get<std::string>(), false);
    else
      fail("tokenizer: Replace normalizer in '", t.origin, "' has neither a String nor a Regex pattern");
    nm.text = j.at("content").get<std::string>();
    t.normalizers.push_back(std::move(nm));
  } else if (type == "Strip") {
    Normalizer nm;
    nm.kind = Normalizer::Strip;
    nm.left = get_bool(j, "strip_left", true);
    nm.right = get_bool(j, "strip_right", true);
    t.normalizers.push_back(std::move(nm));
  } else {
    fail("tokenizer: normalizer type \"", type, "\" in '", t.origin,
         "' is unsupported (supported: null, Sequence, Prepend, Replace, Strip)");
  }
}

constexpr const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void load_pre_tokenizer(const json& j, Tokenizer::Impl& t, bool& have_byte_level) {
  if (j.is_null()) return;
  std::string type = type_of(j, "pre_tokenizer", t.origin);
  if (type != "Sequence" && have_byte_level)
    fail("tokenizer: pre_tokenizer \"", type, "\" after ByteLevel in '", t.origin,
         "' is unsupported (ByteLevel must come last)");
  if (type == "Sequence") {
    for (const json& c : j.at("pretokenizers")) load_pre_tokenizer(c, t, have_byte_level);
  } else if (type == "Split") {
    SplitStep st;
    const json& p = j.at("pattern");
    if (p.contains("String"))
      st.re = Regex(p["String"].get<std::string>(), true);
    else if (p.contains("Regex"))
      st.re = Regex(p["Regex"].get<std::string>(), false);
    else
      fail("tokenizer: Split pre_tokenizer in '", t.origin, "' has neither a String nor a Regex pattern");
    std::string b = j.at("behavior").get<std::string>();
    if (b == "Removed")
      st.behavior = Behavior::Removed;
    else if (b == "Isolated")
      st.behavior = Behavior::Isolated;
    else if (b == "MergedWithPrevious")
      st.behavior = Behavior::MergedWithPrevious;
    else if (b == "MergedWithNext")
      st.behavior = Behavior::MergedWithNext;
    else if (b == "Contiguous")
      st.behavior = Behavior::Contiguous;
    else
      fail("tokenizer: Split behavior \"", b, "\" in '", t.origin, "' is unsupported");
    st.invert = get_bool(j, "invert", false);
    t.splits.push_back(std::move(st));
  } else if (type == "ByteLevel") {
    have_byte_level = true;
    t.bl_add_prefix_space = get_bool(j, "add_prefix_space", true);
    t.bl_use_regex = get_bool(j, "use_regex", true);
    if (t.bl_use_regex) t.bl_regex = Regex(kGpt2Pattern, false);
  } else {
    fail("tokenizer: pre_tokenizer type \"", type, "\" in '", t.origin,
         "' is unsupported (supported: Sequence, Split, ByteLevel)");
  }
}

void check_decoder(const json& j, const std::string& origin) {
  if (j.is_null())
    fail("tokenizer: '", origin, "' has no decoder; only the ByteLevel decoder is supported");
  std::string type = type_of(j, "decoder", origin);
  if (type == "Sequence") {
    for (const json& c : j.at("decoders")) check_decoder(c, origin);
  } else if (type != "ByteLevel") {
    fail("tokenizer: decoder type \"", type, "\" in '", origin, "' is unsupported (supported: ByteLevel)");
  }
}

std::atomic<uint64_t> g_next_uid{1};

}  // namespace

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  std::string d = dir.empty() ? "." : dir;
  if (d.back() != '/') d += '/';
  std::string cfg = d + "tokenizer_config.json";
  std::error_code ec;
  return from_files(d + "tokenizer.json", std::filesystem::exists(cfg, ec) ? cfg : std::string());
}

Tokenizer Tokenizer::from_files(const std::string& tokenizer_json, const std::string& tokenizer_config_json) {
  std::string tj = read_file(tokenizer_json, "tokenizer.json");
  std::string cj;
  if (!tokenizer_config_json.empty()) cj = read_file(tokenizer_config_json, "tokenizer_config.json");
  return from_json_strings(tj, cj, tokenizer_json, tokenizer_config_json);
}

Tokenizer Tokenizer::from_json_strings(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                                       const std::string& origin, const std::string& config_origin) {
  auto t = std::make_shared<Impl>();
  t->uid = g_next_uid.fetch_add(1);
  t->origin = origin;
  json j = parse_json(tokenizer_json, origin, "tokenizer.json");
  if (!j.is_object()) fail("tokenizer: '", origin, "' is not a JSON object");
  try {
    // --- model ---
    if (!j.contains("model")) fail("tokenizer: '", origin, "' has no \"model\"");
    const json& m = j["model"];
    std::string mtype = m.is_object() && m.contains("type") ? m["type"].get<std::string>() : std::string("BPE");
    if (mtype != "BPE")
      fail("tokenizer: model type \"", mtype, "\" in '", origin, "' is unsupported (only byte-level BPE is)");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0)
      fail("tokenizer: BPE dropout in '", origin, "' is unsupported (it makes encoding random)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(k) && !m[k].is_null() && !m[k].get<std::string>().empty())
        fail("tokenizer: BPE ", k, " in '", origin, "' is unsupported for a byte-level BPE");
    t->ignore_merges = get_bool(m, "ignore_merges", false);
    t->byte_fallback = get_bool(m, "byte_fallback", false);
    t->fuse_unk = get_bool(m, "fuse_unk", false);

    const json& vocab = m.at("vocab");
    if (!vocab.is_object()) fail("tokenizer: model.vocab in '", origin, "' is not an object");
    int32_t max_id = -1;
    t->vocab.reserve(vocab.size() * 2);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const int64_t id = token_id_of(it.value(), "token '" + it.key() + "'", origin);
      t->vocab.emplace(it.key(), static_cast<int32_t>(id));
      max_id = std::max(max_id, static_cast<int32_t>(id));
    }
    // --- added tokens ---
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      for (const json& a : j["added_tokens"]) {
        AddedToken at;
        at.id = int32_t(token_id_of(a.at("id"), "added token " + a.value("content", std::string("?")), origin));
        at.content = a.at("content").get<std::string>();
        at.special = get_bool(a, "special", false);
        at.lstrip = get_bool(a, "lstrip", false);
        at.rstrip = get_bool(a, "rstrip", false);
        at.normalized = get_bool(a, "normalized", !at.special);
        at.single_word = get_bool(a, "single_word", false);
        max_id = std::max(max_id, at.id);
        t->added_ids.emplace(at.content, at.id);  // the first of duplicates wins, as in the trie
        t->added.push_back(std::move(at));
      }
    }
    t->id_to_tok.assign(max_id + 1, std::string());
    t->id_flags.assign(max_id + 1, 0);
    for (const auto& [tok, id] : t->vocab) t->id_to_tok[id] = tok;
    for (size_t k = 0; k < t->added.size(); ++k) {
      const AddedToken& at = t->added[k];
      t->id_to_tok[at.id] = at.content;
      t->id_flags[at.id] = at.special ? 3 : 1;
    }
    t->id_bytes.resize(t->id_to_tok.size());
    for (size_t id = 0; id < t->id_to_tok.size(); ++id) t->id_bytes[id] = token_to_bytes(t->id_to_tok[id]);
    if (t->ignore_merges) {
      for (const auto& [tok, id] : t->vocab) t->raw_vocab.emplace(token_to_bytes(tok), id);
    }
    const ByteAlphabet& alpha = byte_alphabet();
    for (int b = 0; b < 256; ++b) {
      std::string s;
      append_cp(s, alpha.byte_to_cp[b]);
      auto it = t->vocab.find(s);
      t->byte_id[b] = it == t->vocab.end() ? -1 : it->second;
      char fb[8];
      std::snprintf(fb, sizeof fb, "<0x%02X>", b);
      auto it2 = t->vocab.find(fb);
      t->fallback_id[b] = it2 == t->vocab.end() ? -1 : it2->second;
    }
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
      auto it = t->vocab.find(m["unk_token"].get<std::string>());
      if (it == t->vocab.end()) fail("tokenizer: unk_token of '", origin, "' is not in the vocabulary");
      t->unk_id = it->second;
    }
    // merges
    std::vector<std::array<int32_t, 3>> merges;
    if (m.contains("merges")) {
      const json& ms = m["merges"];
      merges.reserve(ms.size());
      auto lookup = [&](const std::string& s, size_t rank) {
        auto it = t->vocab.find(s);
        if (it == t->vocab.end())
          fail("tokenizer: merge ", rank, " of '", origin, "' uses token '", s, "' which is not in the vocabulary");
        return it->second;
      };
      for (size_t r = 0; r < ms.size(); ++r) {
        std::string a, b;
        if (ms[r].is_string()) {
          const std::string& line = ms[r].get_ref<const std::string&>();
          size_t sp = line.find(' ');
          if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
            fail("tokenizer: merge ", r, " of '", origin, "' is not of the form \"a b\": '", line, "'");
          a = line.substr(0, sp);
          b = line.substr(sp + 1);
        } else if (ms[r].is_array() && ms[r].size() == 2) {
          a = ms[r][0].get<std::string>();
          b = ms[r][1].get<std::string>();
        } else {
          fail("tokenizer: merge ", r, " of '", origin, "' is neither \"a b\" nor [\"a\", \"b\"]");
        }
        merges.push_back({lookup(a, r), lookup(b, r), lookup(a + b, r)});
      }
    }
    t->merges.build(merges);

    // --- normalizer, pre-tokenizer, decoder ---
    load_normalizer(j.contains("normalizer") ? j["normalizer"] : json(), *t);
    bool have_byte_level = false;
    load_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), *t, have_byte_level);
    if (!have_byte_level)
      fail("tokenizer: the pre_tokenizer of '", origin,
           "' does not end with ByteLevel; only byte-level BPE tokenizers are supported");
    check_decoder(j.contains("decoder") ? j["decoder"] : json(), origin);

    // Tries: normalized tokens are matched after normalization (identical when there is none).
    for (size_t k = 0; k < t->added.size(); ++k) {
      const AddedToken& at = t->added[k];
      (at.normalized ? t->norm_trie : t->raw_trie).add(at.content, static_cast<int32_t>(k));
    }
  } catch (const json::exception& e) {
    fail("tokenizer: unexpected JSON structure in '", origin, "': ", e.what());
  }

  // --- tokenizer_config.json ---
  if (!tokenizer_config_json.empty()) try {
    const std::string corigin = config_origin.empty() ? "tokenizer_config.json of " + origin : config_origin;
    json c = parse_json(tokenizer_config_json, corigin, "tokenizer_config.json");
    if (!c.is_object()) fail("tokenizer: '", corigin, "' is not a JSON object");
    if (auto it = c.find("add_bos_token"); it != c.end() && !it->is_null() && !it->is_boolean())
      fail("tokenizer: field \"add_bos_token\" in '", corigin, "' is not a boolean");
    t->add_bos = get_bool(c, "add_bos_token", false);
    auto token_id = [&](const char* key) -> int32_t {
      auto it = c.find(key);
      if (it == c.end() || it->is_null()) return -1;
      std::string s;
      if (it->is_string())
        s = it->get<std::string>();
      else if (it->is_object() && it->contains("content"))
        s = (*it)["content"].get<std::string>();
      else
        fail("tokenizer: \"", key, "\" in '", corigin, "' is neither a string nor an AddedToken");
      auto a = t->added_ids.find(s);
      if (a != t->added_ids.end()) return a->second;
      auto v = t->vocab.find(s);
      if (v == t->vocab.end()) fail("tokenizer: ", key, " '", s, "' is not a token of '", origin, "'");
      return v->second;
    };
    t->bos = token_id("bos_token");
    t->eos = token_id("eos_token");
    if (t->add_bos && t->bos < 0) fail("tokenizer: add_bos_token is true in '", corigin, "' but there is no bos_token");
  } catch (const json::exception& e) {
    fail("tokenizer: unexpected JSON structure in '",
         config_origin.empty() ? "tokenizer_config.json of " + origin : config_origin, "': ", e.what());
  }
  return Tokenizer(std::move(t));
}

// ------------------------------------------------------------------------------------------------
// Public API
// ------------------------------------------------------------------------------------------------

void Tokenizer::encode_into(std::string_view text, std::vector<int32_t>& out) const {
  const Impl& t = *impl_;
  auto on_piece = [&](const char* p, size_t n) { t.bpe(p, n, out); };
  auto on_added = [&](int32_t k) { out.push_back(t.added[k].id); };
  t.run(text, on_piece, on_added);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  encode_into(text, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_bos(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  if (impl_->add_bos) out.push_back(impl_->bos);
  encode_into(text, out);
  return out;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  const Impl& t = *impl_;
  std::vector<std::string> out;
  auto on_piece = [&](const char* p, size_t n) { out.emplace_back(p, n); };
  auto on_added = [&](int32_t k) { out.push_back(t.added[k].content); };
  t.run(text, on_piece, on_added);
  return out;
}

void Tokenizer::clear_thread_cache() {
  for (WordCache& c : bpe_scratch().caches) {
    c.clear();
    c.owner = 0;
  }
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= t.id_bytes.size()) continue;
    if (skip_special && (t.id_flags[id] & 2)) continue;
    bytes += t.id_bytes[id];
  }
  if (utf8_valid(bytes)) return bytes;
  std::string out;
  utf8_append_lossy(bytes, out, true);
  return out;
}

int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_tok.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view tok) const {
  std::string key(tok);
  auto a = impl_->added_ids.find(key);
  if (a != impl_->added_ids.end()) return a->second;
  auto it = impl_->vocab.find(key);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_tok.size() ||
      (impl_->id_to_tok[id].empty() && !(impl_->id_flags[id] & 1)))
    fail("tokenizer: no token has id ", id, " (vocabulary size ", impl_->id_to_tok.size(), ")");
  return impl_->id_to_tok[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_flags.size() && (impl_->id_flags[id] & 2);
}
bool Tokenizer::is_added(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_flags.size() && (impl_->id_flags[id] & 1);
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size()) return {};
  return impl_->id_bytes[id];
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  std::string out;
  size_t used = utf8_append_lossy(pending_, out, false);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  utf8_append_lossy(pending_, out, true);
  pending_.clear();
  return out;
}

}  // namespace dsa

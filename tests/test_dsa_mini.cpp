// End to end on the real dsa-mini checkpoint (../shared/models/dsa-mini): it loads, decodes
// consistently with prefill, and its short-window perplexity (dense and DSA) is what the engine
// measured when it reproduced the README's context-8192 numbers (see docs/numerics.md).
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/tokenizer.h"
#include "runtime/engine.h"
#include "runtime/perplexity.h"
#include "test_util.h"

namespace dsa::test {

static std::string mini_dir() { return std::string(DSA_SHARED_DIR) + "/models/dsa-mini"; }

TEST(DsaMini, DecodeAfterPrefillMatchesFullPrefill) {
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    EngineOptions o;
    o.attention = mode;
    auto eng = Engine::load(mini_dir(), o);
    const int64_t V = eng->model().config().vocab_size;
    Tokenizer tok = Tokenizer::from_dir(mini_dir());
    std::ifstream f(std::string(DSA_SHARED_DIR) + "/data/dev/sotu__1800_john_adams_f.txt");
    std::stringstream ss;
    ss << f.rdbuf();
    std::vector<int32_t> toks = tok.encode_with_bos(ss.str());
    toks.resize(300);  // > index_topk = 256: the decode steps run the indexer over the cache
    Sequence full, inc;
    auto lf = eng->feed(full, toks, true);
    eng->feed(inc, std::vector<int32_t>(toks.begin(), toks.end() - 2));
    eng->feed(inc, {toks[toks.size() - 2]});
    auto ld = eng->feed(inc, {toks.back()});
    std::vector<double> a(ld.begin(), ld.end()), b(lf.end() - V, lf.end());
    EXPECT_LT(rel_l2(a, b), 0.03) << "absorbed decode vs MHA prefill (architecture.md §10.12)";
    EXPECT_EQ(argmax(ld.data(), V), argmax(lf.data() + lf.size() - V, V));
  }
}

TEST(DsaMini, GreedyGenerationIsEnglish) {
  EngineOptions o;
  auto eng = Engine::load(mini_dir(), o);
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  std::vector<int32_t> out;
  eng->generate(tok.encode_with_bos("The President of the United States"), SamplingParams{}, 24,
                [&](int32_t t) { out.push_back(t); return true; });
  const std::string text = tok.decode(out);
  // The README warns that greedy output repeats itself; ask for printable English words only.
  int printable = 0;
  for (char c : text) printable += std::isprint(static_cast<unsigned char>(c)) != 0;
  EXPECT_EQ(printable, int(text.size())) << text;
  int common = 0;
  std::istringstream words(text);
  for (std::string w; words >> w;) {
    while (!w.empty() && std::ispunct(static_cast<unsigned char>(w.back()))) w.pop_back();
    for (const char* c : {"the", "of", "and", "to", "in", "a", "is", "that", "which", "who", "he", "it", "was", "be"})
      common += w == c;
  }
  EXPECT_GE(common, 5) << text;
}

}  // namespace dsa::test

namespace dsa::test {

// The short-window version of the dev-set comparison (the full one — context 8192, 214,242
// predicted tokens, README: dense 24.01, DSA 24.74 — takes ~30 min per mode on 2 cores and is
// recorded in bench/RESULTS.md). At context 1024 over the first two windows the engine gave
// dense 31.3879 / DSA 31.6348 (AVX-512; AVX2 31.6445, scalar 31.6305) at the commit whose full
// run reproduced the README numbers; held here to the 0.5 %.
TEST(DsaMini, ShortWindowPerplexityDenseAndDsa) {
  const auto files = manifest_files(std::string(DSA_SHARED_DIR) + "/data/dev/MANIFEST.txt");
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  double ppl[2];
  for (int m = 0; m < 2; ++m) {
    EngineOptions o;
    o.attention = m == 0 ? AttentionMode::Dense : AttentionMode::Sparse;
    auto eng = Engine::load(mini_dir(), o);
    PerplexityResult r = evaluate_perplexity(*eng, tok, files, 1024, 2);
    EXPECT_EQ(r.stream_tokens, 214269) << "the README's token count (27 windows of 8192, 214,242 predicted)";
    EXPECT_EQ(r.tokens, 2046);
    ppl[m] = r.ppl();
  }
  EXPECT_NEAR(ppl[0], 31.3879, 31.3879 * 0.005) << "dense";
  EXPECT_NEAR(ppl[1], 31.6348, 31.6348 * 0.005) << "DSA";
  EXPECT_GT(ppl[1], ppl[0]) << "top-256 of up to 1024 keys loses a little against dense";
}

}  // namespace dsa::test

namespace dsa::test {

// The absorbed-form prefill (--prefill-form mqa) computes every token exactly as a decode step
// would: the same ops per token, and every CPU op is independent of which other rows share the
// batch — so prefilling N tokens gives the logits of feeding them one at a time, bit for bit.
// Against the reference's MHA-form prefill it differs only by rounding (as decode does).
TEST(DsaMini, MqaFormPrefillEqualsTokenByTokenDecode) {
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  std::ifstream f(std::string(DSA_SHARED_DIR) + "/data/dev/sotu__1800_john_adams_f.txt");
  std::stringstream ss;
  ss << f.rdbuf();
  std::vector<int32_t> toks = tok.encode_with_bos(ss.str());
  toks.resize(300);  // > index_topk = 256: the indexer selects
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    SCOPED_TRACE(mode == AttentionMode::Sparse ? "sparse" : "dense");
    EngineOptions o;
    o.attention = mode;
    o.prefill_form = PrefillForm::Mqa;
    auto eng = Engine::load(mini_dir(), o);
    const int64_t V = eng->model().config().vocab_size;
    Sequence whole, steps;
    auto lw = eng->feed(whole, toks, true);
    std::vector<float> last;
    for (size_t i = 0; i < toks.size(); ++i) {
      last = eng->feed(steps, {toks[i]});
      if (i + 1 == 100 || i + 1 == toks.size()) {  // a row before and after the indexer starts selecting
        ASSERT_EQ(0, std::memcmp(last.data(), lw.data() + i * size_t(V), size_t(V) * sizeof(float))) << "token " << i;
      }
    }
    EngineOptions r = o;
    r.prefill_form = PrefillForm::Mha;
    auto ref = Engine::load(mini_dir(), r);
    Sequence s;
    auto lr = ref->feed(s, toks, true);
    std::vector<double> a(lw.begin(), lw.end()), b(lr.begin(), lr.end());
    const double e = rel_l2(a, b);
    int64_t agree = 0;
    for (size_t i = 0; i < toks.size(); ++i) agree += argmax(lw.data() + i * V, V) == argmax(lr.data() + i * V, V);
    std::printf("[ prefill mqa vs mha, %s ] rel-L2 %.3e, argmax agrees on %ld of %zu rows\n",
                mode == AttentionMode::Sparse ? "dsa" : "dense", e, long(agree), toks.size());
    EXPECT_LT(e, 0.03) << "absorbed vs MHA prefill: rounding only (architecture.md §10.12)";
    EXPECT_GE(agree, int64_t(toks.size() * 9 / 10));
  }
}

}  // namespace dsa::test

// End to end on dsa-mini: the same checkpoint and prompt on "cuda" and "cpu" give matching logits
// (prefill and decode, DSA and dense), the same greedy tokens for 32 steps, and the same
// short-window perplexity. The shared folder comes from DSA_SHARED_DIR (a copy in .device/shared
// on the device machine).
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <sstream>

#include "gpu_util.h"
#include "io/tokenizer.h"
#include "backends/cuda/cuda_backend.h"
#include "runtime/engine.h"

namespace dsa::test {

static std::string mini_dir() { return std::string(DSA_SHARED_DIR) + "/models/dsa-mini"; }

static std::vector<int32_t> dev_tokens(const Tokenizer& tok, size_t n) {
  std::vector<int32_t> toks;
  const std::string dir = std::string(DSA_SHARED_DIR) + "/data/dev";
  for (const char* f : {"linux-doc__power__runtime_pm.txt", "linux-doc__driver-api__uio-howto.txt"}) {
    std::ifstream in(dir + "/" + f);
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<int32_t> t = tok.encode_with_bos(ss.str());
    toks.insert(toks.end(), t.begin(), t.end());
    if (toks.size() >= n) break;
  }
  if (toks.size() < n) {  // no data folder: a repeated sentence
    std::string s;
    for (int i = 0; i < 200; ++i) s += "The quick brown fox " + std::to_string(i) + " jumps over the lazy dog. ";
    toks = tok.encode_with_bos(s);
  }
  toks.resize(n);
  return toks;
}

#define REQUIRE_MINI()                                                         \
  REQUIRE_GPU();                                                               \
  if (!std::filesystem::exists(mini_dir() + "/config.json"))                   \
  GTEST_SKIP() << mini_dir() << " not found"

TEST(GpuModel, LogitsMatchCpuPrefillAndDecode) {
  REQUIRE_MINI();
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  const std::vector<int32_t> toks = dev_tokens(tok, 400);  // > index_topk = 256: DSA selects
  // Both prefill forms: the reference's MHA form and the absorbed form (--prefill-form mqa, which runs
  // many tokens of a sequence through the tensor-core decode kernels).
  for (auto form : {PrefillForm::Mha, PrefillForm::Mqa})
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    const char* fname = form == PrefillForm::Mha ? "" : ", mqa form";
    SCOPED_TRACE(std::string(mode == AttentionMode::Sparse ? "sparse" : "dense") + fname);
    EngineOptions oc, og;
    oc.attention = og.attention = mode;
    oc.prefill_form = og.prefill_form = form;
    oc.kv_tokens = og.kv_tokens = 2048;
    og.device = "cuda";
    auto ec = Engine::load(mini_dir(), oc);
    auto eg = Engine::load(mini_dir(), og);
    const int64_t V = ec->model().config().vocab_size;
    Sequence sc, sg;
    std::vector<int32_t> prompt(toks.begin(), toks.end() - 3);
    auto lc = ec->feed(sc, prompt, true);
    auto lg = eg->feed(sg, prompt, true);
    ASSERT_EQ(lc.size(), lg.size());
    int64_t agree = 0;
    const int64_t rows = int64_t(prompt.size());
    for (int64_t r = 0; r < rows; ++r) agree += argmax(lc.data() + r * V, V) == argmax(lg.data() + r * V, V);
    const double e = rel_l2(std::vector<double>(lg.begin(), lg.end()), std::vector<double>(lc.begin(), lc.end()));
    std::printf("[ prefill %s%s ] rel_l2 %.3e, argmax agrees on %ld of %ld rows\n",
                mode == AttentionMode::Sparse ? "dsa" : "dense", fname, e, long(agree), long(rows));
    // Not bit-identical: fp32 sums run in another order, so a bf16 activation can differ by one ulp,
    // and the next FP8 (3-bit mantissa) activation quantisation turns a rare one-ulp change into a
    // 6-12% change of that element; over 6 layers the logits drift by ~1-2% (relative L2) and rows
    // whose top two logits are nearly tied can change their argmax.
    EXPECT_LT(e, 3e-2) << "prefill logits";
    EXPECT_GE(agree, rows - rows / 16) << "argmax rows";
    for (int step = 0; step < 3; ++step) {  // decode steps (absorbed MQA form from the FP8 cache)
      const int32_t t = toks[toks.size() - 3 + size_t(step)];
      auto dc = ec->feed(sc, {t});
      auto dg = eg->feed(sg, {t});
      const double ed = rel_l2(std::vector<double>(dg.begin(), dg.end()), std::vector<double>(dc.begin(), dc.end()));
      std::printf("[ decode %s%s step %d ] rel_l2 %.3e\n", mode == AttentionMode::Sparse ? "dsa" : "dense", fname, step, ed);
      EXPECT_LT(ed, 3e-2) << "decode logits, step " << step;
      EXPECT_EQ(argmax(dc.data(), V), argmax(dg.data(), V)) << "decode argmax, step " << step;
    }
  }
}

TEST(GpuModel, GreedyTokensMatchCpuFor32Steps) {
  REQUIRE_MINI();
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  EngineOptions oc, og;
  oc.kv_tokens = og.kv_tokens = 1024;
  og.device = "cuda";
  auto ec = Engine::load(mini_dir(), oc);
  auto eg = Engine::load(mini_dir(), og);
  const int64_t V = ec->model().config().vocab_size;
  for (size_t plen : {size_t(20), size_t(300)}) {
    const std::vector<int32_t> prompt = dev_tokens(tok, plen);
    std::vector<int32_t> out[2];
    for (int d = 0; d < 2; ++d)
      (d ? eg : ec)->generate(prompt, SamplingParams{}, 32, [&](int32_t t) { out[d].push_back(t); return true; }, true);
    ASSERT_EQ(out[0].size(), 32u);
    ASSERT_EQ(out[1].size(), 32u);
    if (out[0] == out[1]) {
      std::printf("[ greedy, prompt %zu ] 32 of 32 tokens equal\n", plen);
      continue;
    }
    // A divergence is accepted only at a near-tie: both backends' logits at that step, on the same
    // context, must rank the two tokens within the measured CPU/GPU logit noise of that step.
    size_t i = 0;
    while (out[0][i] == out[1][i]) ++i;
    std::vector<int32_t> ctx = prompt;
    ctx.insert(ctx.end(), out[0].begin(), out[0].begin() + int64_t(i));
    Sequence a, b;
    auto lc = ec->feed(a, ctx);
    auto lg = eg->feed(b, ctx);
    a.release(ec->kv());
    b.release(eg->kv());
    double ss = 0;
    for (int64_t v = 0; v < V; ++v) ss += double(lc[size_t(v)] - lg[size_t(v)]) * double(lc[size_t(v)] - lg[size_t(v)]);
    const double rms = std::sqrt(ss / double(V));
    const double gap_c = lc[size_t(out[0][i])] - lc[size_t(out[1][i])], gap_g = lg[size_t(out[1][i])] - lg[size_t(out[0][i])];
    std::printf("[ greedy, prompt %zu ] tokens equal up to %zu of 32; at token %zu cpu decode picks %d, cuda decode picks "
                "%d; on a prefill of that context the CPU prefers %d by %.4f and the GPU prefers %d by %.4f (CPU/GPU "
                "logit rms difference %.4f)\n",
                plen, i, i, out[0][i], out[1][i], out[0][i], gap_c, out[1][i], gap_g, rms);
    EXPECT_LE(gap_c, 4 * rms) << "divergence at token " << i << " is not a near-tie";
    EXPECT_LE(gap_g, 4 * rms) << "divergence at token " << i << " is not a near-tie";
    EXPECT_GE(i, 8u) << "divergence too early";
  }
}

// Decode steps run as CUDA graphs (captured once per key, then replayed with new inputs staged) must give
// exactly the logits of eager launches: same kernels, same arguments, same order (docs/decode-graphs.md).
TEST(GpuModel, DecodeGraphsMatchEagerBitForBit) {
  REQUIRE_MINI();
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  // Prompt 300 > index_topk: the indexer selects. Prompt 520: contexts 521..550 in bucket 640, so a token's
  // context ends before some of its attention splits start (empty splits).
  for (const size_t plen : {size_t(300), size_t(520)})
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    const std::vector<int32_t> toks = dev_tokens(tok, plen + 30);
    SCOPED_TRACE((mode == AttentionMode::Sparse ? "sparse, prompt " : "dense, prompt ") + std::to_string(plen));
    EngineOptions o;
    o.device = "cuda";
    o.attention = mode;
    o.kv_tokens = 1024;
    auto eg = Engine::load(mini_dir(), o), ee = Engine::load(mini_dir(), o);
    auto* bg = dynamic_cast<cuda::CudaBackend*>(&eg->backend());
    auto* bn = dynamic_cast<cuda::CudaBackend*>(&ee->backend());
    if (!bg || !bn) GTEST_SKIP() << "backend is wrapped (DSA_PROFILE_OPS?)";
    bg->set_graphs(true);
    bn->set_graphs(false);
    Sequence sg, se;
    std::vector<int32_t> prompt(toks.begin(), toks.begin() + int64_t(plen));
    auto lg = eg->feed(sg, prompt);
    auto le = ee->feed(se, prompt);
    ASSERT_EQ(lg, le) << "prefill (never graphed) differs";
    for (size_t i = plen; i < toks.size(); ++i) {
      lg = eg->feed(sg, {toks[i]});
      le = ee->feed(se, {toks[i]});
      ASSERT_EQ(lg.size(), le.size());
      ASSERT_TRUE(std::memcmp(lg.data(), le.data(), lg.size() * sizeof(float)) == 0) << "decode step " << i - plen;
    }
    const auto& st = bg->graph_stats();
    std::printf("[ graphs %s, prompt %zu ] 30 decode steps: %ld captured, %ld replayed, "
                "%ld run once, %ld dropped\n", mode == AttentionMode::Sparse ? "dsa" : "dense", plen, long(st.captured),
                long(st.replayed), long(st.run_once), long(st.dropped));
    EXPECT_GE(st.captured, 1);
    EXPECT_LE(st.captured + st.run_once, 6);  // once per key, plus once per workspace growth
    EXPECT_GE(st.replayed, 20);               // every other step after the eager warm-up
    EXPECT_EQ(bn->graph_stats().captured + bn->graph_stats().replayed, 0);
  }
}

// Continuous batching with graphs: requests of different lengths and sampling join and leave, so the
// decode steps change rows and buckets; every request's tokens and logprobs equal those of the same
// engine with graphs off.
TEST(GpuModel, BatchedDecodeGraphsMatchEager) {
  REQUIRE_MINI();
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  const std::vector<int32_t> text = dev_tokens(tok, 1200);
  auto run = [&](bool graphs, cuda::CudaBackend::GraphStats* stats) {
    EngineOptions o;
    o.device = "cuda";
    o.kv_tokens = 8192;
    o.max_seqs = 8;
    auto e = Engine::load(mini_dir(), o);
    auto* be = dynamic_cast<cuda::CudaBackend*>(&e->backend());
    if (!be) return std::map<RequestId, std::pair<std::vector<int32_t>, std::vector<float>>>{};
    be->set_graphs(graphs);
    std::map<RequestId, std::pair<std::vector<int32_t>, std::vector<float>>> out;
    for (int i = 0; i < 10; ++i) {
      RequestParams p;
      const size_t off = size_t(37 * i), len = size_t(120 + 61 * i);  // 120..669 tokens: across index_topk and buckets
      p.prompt.assign(text.begin() + off, text.begin() + off + len);
      p.max_tokens = 20 + 7 * (i % 4);
      p.ignore_eos = true;
      p.sampling.temperature = i % 3 ? 0.8f : 0.0f;
      p.sampling.top_k = i % 3 == 2 ? 40 : 0;
      p.sampling.seed = uint64_t(100 + i);
      e->add_request(p);
    }
    while (e->has_work())
      for (auto& r : e->step()) {
        out[r.id].first.insert(out[r.id].first.end(), r.tokens.begin(), r.tokens.end());
        out[r.id].second.insert(out[r.id].second.end(), r.logprobs.begin(), r.logprobs.end());
      }
    if (stats) *stats = be->graph_stats();
    return out;
  };
  cuda::CudaBackend::GraphStats st;
  const auto eager = run(false, nullptr), graphed = run(true, &st);
  if (eager.empty()) GTEST_SKIP() << "backend is wrapped (DSA_PROFILE_OPS?)";
  ASSERT_EQ(eager.size(), graphed.size());
  for (const auto& [id, r] : eager) {
    EXPECT_EQ(graphed.at(id).first, r.first) << "request " << id;
    EXPECT_EQ(graphed.at(id).second, r.second) << "request " << id << " logprobs";
  }
  std::printf("[ batched graphs ] %ld captured, %ld replayed, %ld run once, %ld dropped\n", long(st.captured),
              long(st.replayed), long(st.run_once), long(st.dropped));
  EXPECT_GT(st.replayed, st.captured);
}

TEST(GpuModel, PerplexityMatchesCpu) {
  REQUIRE_MINI();
  Tokenizer tok = Tokenizer::from_dir(mini_dir());
  const std::vector<int32_t> w = dev_tokens(tok, 1024);
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    double ppl[2];
    for (int d = 0; d < 2; ++d) {
      EngineOptions o;
      o.device = d ? "cuda" : "cpu";
      o.attention = mode;
      o.kv_tokens = 1024;
      auto eng = Engine::load(mini_dir(), o);
      const int64_t V = eng->model().config().vocab_size;
      Sequence s;
      auto lg = eng->feed(s, w, true);
      double nll = 0;
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const float* r = lg.data() + i * size_t(V);
        double m = r[0];
        for (int64_t v = 1; v < V; ++v) m = std::max(m, double(r[v]));
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += std::exp(double(r[v]) - m);
        nll += m + std::log(z) - double(r[w[i + 1]]);
      }
      ppl[d] = std::exp(nll / double(w.size() - 1));
    }
    std::printf("[ ppl %s, 1024 tokens ] cpu %.4f cuda %.4f (%.3f%%)\n", mode == AttentionMode::Sparse ? "dsa" : "dense",
                ppl[0], ppl[1], 100.0 * (ppl[1] / ppl[0] - 1));
    // One 1024-token window is noisy (see above); the 0.2% bound is checked on the whole dev set
    // at context 8192 by scripts/gpu_check.sh (dsa perplexity --device cuda).
    EXPECT_NEAR(ppl[1] / ppl[0], 1.0, 0.005);
  }
}

}  // namespace dsa::test

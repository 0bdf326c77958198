// The batched engine on CUDA (dsa-mini): 16 requests run together give the tokens each gives alone.
// Not guaranteed bit-identical on the GPU: a kernel may tile differently for another batch size and
// round differently, which can flip a near-tied greedy choice. A difference is accepted only at a
// near-tie — the top two log-probabilities of that step within 2e-2 in either run — and is logged
// with the token and the gap; the request is compared no further after it.
// The reference (MHA) prefill form only: on the H100 (2026-12-07) it gave 16 of 16 identical, while the
// absorbed (--prefill-form mqa) form gave 8 of 16 with gaps up to 0.19 — its multi-token decode-kernel
// path is not batch-invariant yet (issue 11's note), so it is not claimed here.
#include <filesystem>
#include <map>

#include "gpu_util.h"
#include "runtime/engine.h"

namespace dsa::test {

namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<std::vector<TopLogprob>> top;
  FinishReason finish = FinishReason::None;
};

std::map<RequestId, Outcome> drain(Engine& e) {
  std::map<RequestId, Outcome> m;
  while (e.has_work()) {
    for (RequestOutput& o : e.step()) {
      Outcome& r = m[o.id];
      r.tokens.insert(r.tokens.end(), o.tokens.begin(), o.tokens.end());
      r.top.insert(r.top.end(), o.top.begin(), o.top.end());
      if (o.finished) r.finish = o.finish;
    }
    e.check_invariants();
  }
  return m;
}

}  // namespace

TEST(GpuRuntime, BatchedEqualsOneByOneOnDsaMini) {
  REQUIRE_GPU();
  const std::string dir = std::string(DSA_SHARED_DIR) + "/models/dsa-mini";
  if (!std::filesystem::exists(dir + "/config.json")) GTEST_SKIP() << dir << " not found";
  for (auto form : {PrefillForm::Mha}) {
    SCOPED_TRACE("mha prefill");
    EngineOptions o;
    o.device = "cuda";
    o.kv_tokens = 16384;
    o.max_batch_tokens = 512;  // chunked prompts mixed with decode rows
    o.prefill_form = form;
    auto e = Engine::load(dir, o);
    const int64_t V = e->config().vocab_size;
    std::vector<RequestParams> reqs;
    for (int i = 0; i < 16; ++i) {
      RequestParams p;
      const int64_t len = 1 + (i * 97) % 700;  // around and past index_topk = 256
      for (int64_t j = 0; j < len; ++j) p.prompt.push_back(int32_t(2 + rng()() % uint64_t(V - 2)));
      p.max_tokens = 24;
      p.ignore_eos = true;
      p.top_logprobs = 2;
      reqs.push_back(p);
    }
    std::vector<RequestId> ids;
    for (auto& p : reqs) ids.push_back(e->add_request(p));
    auto together = drain(*e);
    int exact = 0, near_ties = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      e->add_request(reqs[i]);
      auto alone_m = drain(*e);
      const Outcome& a = alone_m.begin()->second;
      const Outcome& t = together[ids[i]];
      ASSERT_EQ(a.tokens.size(), 24u);
      ASSERT_EQ(t.tokens.size(), 24u);
      size_t k = 0;
      while (k < a.tokens.size() && a.tokens[k] == t.tokens[k]) ++k;
      if (k == a.tokens.size()) {
        ++exact;
        continue;
      }
      const double gap_a = a.top[k][0].logprob - a.top[k][1].logprob, gap_t = t.top[k][0].logprob - t.top[k][1].logprob;
      std::printf("[ request %zu: token %zu differs (alone %d, batched %d), top-2 logprob gap %.3e / %.3e ]\n", i, k,
                  a.tokens[k], t.tokens[k], gap_a, gap_t);
      EXPECT_TRUE(std::min(gap_a, gap_t) < 2e-2) << "request " << i << " differs at token " << k << " without a near-tie";
      ++near_ties;
    }
    std::printf("[ %d of 16 requests identical, %d differ at a near-tie ]\n", exact, near_ties);
    EXPECT_EQ(e->kv().pool().in_use(), 0);
  }
}

}  // namespace dsa::test

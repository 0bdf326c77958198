// The batched engine end to end on real model code (CPU backend): many requests run together give
// exactly the tokens each gives alone; mixed decode + prefill steps, prefix-cache hits and
// preemptions change nothing; the pool never leaks; stop conditions and bad requests. The
// scheduler's bookkeeping alone is simulated in test_scheduler.cpp.
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include "io/tokenizer.h"
#include "runtime/engine.h"
#include "test_models.h"
#include "test_util.h"

namespace dsa::test {

namespace {

struct Result {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  std::string text;
  FinishReason finish = FinishReason::None;
  std::string error, stop_match;
  int64_t cached = 0, preemptions = 0, completion = 0;
};

// Step until the engine is idle, checking the scheduler's invariants after every step.
std::map<RequestId, Result> drain(Engine& e, int64_t max_steps = 200000) {
  std::map<RequestId, Result> m;
  for (int64_t s = 0; e.has_work(); ++s) {
    if (s == max_steps) {
      ADD_FAILURE() << "the engine still has work after " << max_steps << " steps";
      break;
    }
    for (RequestOutput& o : e.step()) {
      Result& r = m[o.id];
      r.tokens.insert(r.tokens.end(), o.tokens.begin(), o.tokens.end());
      r.logprobs.insert(r.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      r.top.insert(r.top.end(), o.top.begin(), o.top.end());
      r.text += o.text;
      if (o.finished) {
        EXPECT_EQ(r.finish, FinishReason::None) << "request " << o.id << " finished twice";
        r.finish = o.finish;
        r.error = o.error;
        r.stop_match = o.stop_match;
        r.cached = o.cached_tokens;
        r.preemptions = o.preemptions;
        r.completion = o.completion_tokens;
      }
    }
    e.check_invariants();
  }
  return m;
}

Result run_alone(Engine& e, const RequestParams& p) {
  const RequestId id = e.add_request(p);
  auto m = drain(e);
  EXPECT_EQ(m.size(), 1u);
  return m[id];
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(2 + rng()() % uint64_t(vocab - 2));  // no BOS/EOS inside
  return t;
}

// A mix of sampling setups: greedy, temperature, top-k, top-p, with top logprobs on some.
RequestParams mixed_request(int i, std::vector<int32_t> prompt, int64_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.ignore_eos = i % 2 == 0;
  p.sampling.seed = uint64_t(1000 + i);
  switch (i % 4) {
    case 0: break;  // greedy
    case 1: p.sampling.temperature = 0.9f; break;
    case 2: p.sampling.temperature = 1.0f, p.sampling.top_k = 20; break;
    case 3: p.sampling.temperature = 0.7f, p.sampling.top_p = 0.9f; break;
  }
  if (i % 3 == 0) p.top_logprobs = 3;
  return p;
}

void expect_same(const Result& got, const Result& want, const std::string& what) {
  EXPECT_EQ(got.finish, want.finish) << what;
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.logprobs, want.logprobs) << what << ": logprobs";
  ASSERT_EQ(got.top.size(), want.top.size()) << what;
  for (size_t i = 0; i < got.top.size(); ++i) {
    ASSERT_EQ(got.top[i].size(), want.top[i].size()) << what;
    for (size_t j = 0; j < got.top[i].size(); ++j) {
      EXPECT_EQ(got.top[i][j].token, want.top[i][j].token) << what << " token " << i;
      EXPECT_EQ(got.top[i][j].logprob, want.top[i][j].logprob) << what << " token " << i;
    }
  }
}

std::unique_ptr<Engine> tiny(AttentionMode mode, int64_t budget, int64_t max_seqs, int64_t kv_tokens = 0,
                             bool prefix_cache = true, PrefillForm form = PrefillForm::Mha) {
  EngineOptions o;
  o.threads = 2;
  o.attention = mode;
  o.max_batch_tokens = budget;
  o.max_seqs = max_seqs;
  o.kv_tokens = kv_tokens;
  o.prefix_cache = prefix_cache;
  o.prefill_form = form;
  return Engine::load(tiny_model_dir(), o);
}

}  // namespace

// 20 requests of lengths around index_topk (32) and block (64) boundaries, with every sampling
// mode, run together under a small token budget (so prompts are prefilled in chunks while others
// decode, and some wait for a free sequence slot) give exactly the tokens, log-probabilities and
// top alternatives each gives alone.
TEST(Engine, BatchedEqualsOneByOne) {
  const int64_t lens[] = {1, 5, 31, 32, 33, 63, 64, 65, 100, 129, 200, 7, 300, 2, 47, 96, 150, 17, 250, 64};
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense})
    for (auto form : {PrefillForm::Mha, PrefillForm::Mqa}) {
      if (mode == AttentionMode::Dense && form == PrefillForm::Mqa) continue;
      SCOPED_TRACE(std::string(mode == AttentionMode::Sparse ? "sparse" : "dense") +
                   (form == PrefillForm::Mqa ? ", mqa prefill" : ""));
      auto batched = tiny(mode, 96, 12, 0, true, form);
      auto alone = tiny(mode, 4096, 1, 0, false, form);
      std::vector<RequestParams> reqs;
      for (int i = 0; i < 20; ++i) reqs.push_back(mixed_request(i, random_tokens(lens[i], 512), 6 + i % 9));
      std::vector<RequestId> ids;
      for (auto& p : reqs) ids.push_back(batched->add_request(p));
      auto together = drain(*batched);
      for (size_t i = 0; i < reqs.size(); ++i) {
        const Result want = run_alone(*alone, reqs[i]);
        EXPECT_NE(want.finish, FinishReason::Error) << want.error;
        expect_same(together[ids[i]], want, "request " + std::to_string(i) + " (prompt " + std::to_string(lens[i]) + ")");
      }
      EXPECT_EQ(batched->kv().pool().in_use(), 0) << "blocks still referenced after every request finished";
    }
}

// One forward step holding decode rows of two sequences and a prefill chunk of a third gives the
// logits of the three run apart (each row in its own attention form).
TEST(Engine, MixedDecodeAndPrefillStepEqualsApart) {
  for (auto mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    SCOPED_TRACE(mode == AttentionMode::Sparse ? "sparse" : "dense");
    auto e = tiny(mode, 4096, 8);
    const int64_t V = e->config().vocab_size;
    Sequence a, b, c;
    e->feed(a, random_tokens(100, V));
    e->feed(b, random_tokens(40, V));
    e->feed(c, random_tokens(70, V));
    const std::vector<int32_t> ta = random_tokens(1, V), tb = random_tokens(1, V), tc = random_tokens(30, V);
    for (Sequence* s : {&a, &b, &c}) s->reserve(e->kv(), s->len + 30);
    auto forward = [&](const std::vector<BatchSlice>& sl, const std::vector<int32_t>& toks) {
      Batch bt = make_batch(sl);
      std::vector<int32_t> rows(toks.size());
      for (size_t i = 0; i < rows.size(); ++i) rows[i] = int32_t(i);
      Tensor ids = e->backend().upload(Tensor{const_cast<int32_t*>(toks.data()), DType::I32, {int64_t(toks.size())}});
      Tensor lg = e->model().forward(ids, bt, e->kv(), mode, rows);
      std::vector<float> out(size_t(lg.numel()));
      e->backend().download(lg, out.data());
      return out;
    };
    std::vector<int32_t> all = ta;
    all.insert(all.end(), tb.begin(), tb.end());
    all.insert(all.end(), tc.begin(), tc.end());
    const auto mixed = forward({{&a.blocks, a.len, 1, true}, {&b.blocks, b.len, 1, true}, {&c.blocks, c.len, 30, false}}, all);
    // Apart: the same cache slots are written again with the same values.
    const auto la = forward({{&a.blocks, a.len, 1, true}}, ta);
    const auto lb = forward({{&b.blocks, b.len, 1, true}}, tb);
    const auto lc = forward({{&c.blocks, c.len, 30, false}}, tc);
    ASSERT_EQ(mixed.size(), size_t(32 * V));
    EXPECT_EQ(std::memcmp(mixed.data(), la.data(), size_t(V) * 4), 0) << "decode row of a";
    EXPECT_EQ(std::memcmp(mixed.data() + V, lb.data(), size_t(V) * 4), 0) << "decode row of b";
    EXPECT_EQ(std::memcmp(mixed.data() + 2 * V, lc.data(), size_t(30 * V) * 4), 0) << "prefill chunk of c";
    // The absorbed form really ran for the decode rows: the MHA form of a's token rounds differently.
    const auto la_mha = forward({{&a.blocks, a.len, 1, false}}, ta);
    EXPECT_NE(std::memcmp(la_mha.data(), la.data(), size_t(V) * 4), 0) << "decode row computed in the prefill form";
    for (Sequence* s : {&a, &b, &c}) s->release(e->kv());
  }
}

// A request whose prompt starts with cached blocks gives exactly what it gives without the cache;
// in the absorbed prefill form the blocks of generated tokens are reused too (a chat's next turn).
TEST(Engine, PrefixCacheHitEqualsMiss) {
  for (auto form : {PrefillForm::Mha, PrefillForm::Mqa}) {
    SCOPED_TRACE(form == PrefillForm::Mqa ? "mqa prefill" : "mha prefill");
    auto cached = tiny(AttentionMode::Sparse, 128, 8, 0, true, form);
    auto plain = tiny(AttentionMode::Sparse, 128, 8, 0, false, form);
    const std::vector<int32_t> shared = random_tokens(150, 512);
    int n = 0;
    for (int64_t extra : {10, 1, 77}) {
      std::vector<int32_t> prompt = shared, tail = random_tokens(extra, 512);
      prompt.insert(prompt.end(), tail.begin(), tail.end());
      RequestParams p = mixed_request(n++, prompt, 12);
      const Result hit = run_alone(*cached, p), miss = run_alone(*plain, p);
      expect_same(hit, miss, "suffix of " + std::to_string(extra));
      EXPECT_EQ(miss.cached, 0);
      if (n > 1) EXPECT_EQ(hit.cached, 128) << "two full blocks of the shared prefix reused";
    }
    // The same prompt again: all but the block holding the last prompt token come from the cache.
    RequestParams p = mixed_request(5, random_tokens(192, 512), 70);
    p.ignore_eos = true;
    const Result first = run_alone(*cached, p), again = run_alone(*cached, p);
    expect_same(again, first, "repeated prompt");
    EXPECT_EQ(again.cached, 128);
    // Next turn: prompt + answer + more. Generated tokens are cached only when they were computed in
    // the form the next prompt's prefill uses (the absorbed form).
    std::vector<int32_t> next = p.prompt;
    next.insert(next.end(), first.tokens.begin(), first.tokens.end());
    const std::vector<int32_t> more = random_tokens(20, 512);
    next.insert(next.end(), more.begin(), more.end());
    RequestParams q = mixed_request(6, next, 8);
    const Result turn = run_alone(*cached, q), turn_miss = run_alone(*plain, q);
    expect_same(turn, turn_miss, "next turn");
    EXPECT_EQ(turn.cached, form == PrefillForm::Mqa ? 256 : 192);
    cached->check_invariants();
  }
}

// A pool too small for all requests at once forces preemptions; the preempted requests are
// recomputed and give exactly the tokens of an uninterrupted run.
TEST(Engine, PreemptedEqualsUninterrupted) {
  auto small = tiny(AttentionMode::Sparse, 256, 8, 6 * 64);
  auto big = tiny(AttentionMode::Sparse, 256, 8);
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 6; ++i) {
    RequestParams p = mixed_request(i, random_tokens(60 + 17 * i, 512), 90);
    p.ignore_eos = true;
    reqs.push_back(p);
  }
  std::vector<RequestId> ids;
  for (auto& p : reqs) ids.push_back(small->add_request(p));
  auto got = drain(*small);
  int64_t preempted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Result want = run_alone(*big, reqs[i]);
    expect_same(got[ids[i]], want, "request " + std::to_string(i));
    EXPECT_EQ(got[ids[i]].completion, 90);
    preempted += got[ids[i]].preemptions;
  }
  EXPECT_GT(small->stats().preemptions, 0) << "the pool was meant to run out";
  EXPECT_EQ(preempted, small->stats().preemptions);
  EXPECT_EQ(small->kv().pool().in_use(), 0);
}

// Many requests on a tiny pool: each either finishes or is rejected at add() with the numbers;
// nothing leaks, nothing hangs.
TEST(Engine, PoolExhaustionFinishesOrRejectsClearly) {
  auto e = tiny(AttentionMode::Sparse, 200, 16, 4 * 64);
  std::vector<RequestId> ids;
  int rejected = 0;
  for (int i = 0; i < 40; ++i) {
    RequestParams p = mixed_request(i, random_tokens(1 + int64_t(rng()() % 200), 512), 1 + int64_t(rng()() % 120));
    try {
      ids.push_back(e->add_request(p));
    } catch (const Error& err) {
      ++rejected;
      EXPECT_NE(std::string(err.what()).find("KV blocks"), std::string::npos) << err.what();
      EXPECT_GT(int64_t(p.prompt.size()) + p.max_tokens - 1, 4 * 64) << "rejected a request that fits: " << err.what();
    }
  }
  auto got = drain(*e);
  EXPECT_EQ(got.size(), ids.size());
  for (RequestId id : ids) {
    EXPECT_TRUE(got[id].finish == FinishReason::Stop || got[id].finish == FinishReason::Length)
        << "request " << id << ": " << finish_reason_name(got[id].finish) << " " << got[id].error;
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(e->kv().pool().in_use(), 0);
  EXPECT_EQ(e->stats().running + e->stats().waiting, 0);
}

// Cancel: the request ends at the next step with its blocks freed; the others are unaffected.
TEST(Engine, CancelFreesBlocksAtTheNextStep) {
  auto e = tiny(AttentionMode::Sparse, 256, 8);
  auto ref = tiny(AttentionMode::Sparse, 256, 8);
  RequestParams keep = mixed_request(1, random_tokens(90, 512), 40), drop = mixed_request(2, random_tokens(130, 512), 40);
  keep.ignore_eos = drop.ignore_eos = true;
  const RequestId k = e->add_request(keep), d = e->add_request(drop);
  std::map<RequestId, Result> got;
  for (int s = 0; s < 5; ++s)
    for (auto& o : e->step()) got[o.id].tokens.insert(got[o.id].tokens.end(), o.tokens.begin(), o.tokens.end());
  const int64_t used_before = e->kv().pool().in_use();
  e->cancel(d);
  e->cancel(d);       // twice: ignored
  e->cancel(12345);   // unknown: ignored
  bool saw_cancel = false;
  for (auto& o : e->step()) {
    if (o.id == d) saw_cancel = o.finished && o.finish == FinishReason::Cancelled;
    got[o.id].tokens.insert(got[o.id].tokens.end(), o.tokens.begin(), o.tokens.end());
  }
  EXPECT_TRUE(saw_cancel);
  EXPECT_LT(e->kv().pool().in_use(), used_before);
  auto rest = drain(*e);
  got[k].tokens.insert(got[k].tokens.end(), rest[k].tokens.begin(), rest[k].tokens.end());
  EXPECT_EQ(got[k].tokens, run_alone(*ref, keep).tokens);
  EXPECT_EQ(e->kv().pool().in_use(), 0);
}

TEST(Engine, BadRequestsAreRejectedWithTheField) {
  auto e = tiny(AttentionMode::Sparse, 256, 8, 4 * 64);
  auto bad = [&](const std::function<void(RequestParams&)>& edit, const std::string& needle,
                 const std::string& needle2 = "") {
    RequestParams p;
    p.prompt = {2, 3, 4};
    edit(p);
    EXPECT_DSA_ERROR(e->add_request(p), needle, needle2);
  };
  bad([](RequestParams& p) { p.prompt.clear(); }, "prompt is empty");
  bad([](RequestParams& p) { p.prompt[1] = 512; }, "prompt token 512 at index 1");
  bad([](RequestParams& p) { p.prompt[1] = -3; }, "outside the vocabulary");
  bad([](RequestParams& p) { p.max_tokens = -1; }, "max_tokens");
  bad([](RequestParams& p) { p.prompt.assign(1024, 5); }, "shorter than the model's context");
  bad([](RequestParams& p) { p.sampling.temperature = -1; }, "temperature");
  bad([](RequestParams& p) { p.sampling.temperature = NAN; }, "temperature");
  bad([](RequestParams& p) { p.sampling.top_p = 0; }, "top_p");
  bad([](RequestParams& p) { p.sampling.top_p = 1.5f; }, "top_p");
  bad([](RequestParams& p) { p.sampling.top_k = -2; }, "top_k");
  bad([](RequestParams& p) { p.top_logprobs = 21; }, "top_logprobs");
  bad([](RequestParams& p) { p.stop_token_ids = {9999}; }, "stop token id 9999");
  bad([](RequestParams& p) { p.stop = {"x"}; }, "stop strings need a tokenizer");  // the tiny model has none
  bad([](RequestParams& p) { p.max_tokens = 500; }, "KV blocks", "--kv-memory");
  EXPECT_FALSE(e->has_work());
  EXPECT_EQ(e->kv().pool().in_use(), 0);
}

// On dsa-mini (real tokenizer): a stop string ends the request with the text cut before it; a stop
// token id ends it including the token; text deltas concatenate to the decoded tokens.
TEST(Engine, StopStringsAndStopTokensOnDsaMini) {
  if (!have_mini_model()) GTEST_SKIP() << mini_model_dir() << " not found";
  EngineOptions o;
  o.threads = 2;
  o.kv_tokens = 2048;
  auto e = Engine::load(mini_model_dir(), o);
  const Tokenizer& tok = *e->tokenizer();
  RequestParams p;
  p.prompt = tok.encode_with_bos("The President of the United States said that");
  p.max_tokens = 40;
  p.ignore_eos = true;
  const Result full = run_alone(*e, p);
  ASSERT_EQ(full.finish, FinishReason::Length);
  EXPECT_EQ(full.text, tok.decode(full.tokens, true));
  ASSERT_GT(full.text.size(), 40u);
  // A stop string that starts in the middle of the text (and spans tokens, most likely).
  const std::string stop = full.text.substr(full.text.size() / 2, 5);
  const size_t at = full.text.find(stop);
  RequestParams ps = p;
  ps.stop = {"never-appears-xyz", stop};
  const Result cut = run_alone(*e, ps);
  EXPECT_EQ(cut.finish, FinishReason::Stop);
  EXPECT_EQ(cut.stop_match, stop);
  EXPECT_EQ(cut.text, full.text.substr(0, at));
  ASSERT_LE(cut.tokens.size(), full.tokens.size());
  EXPECT_TRUE(std::equal(cut.tokens.begin(), cut.tokens.end(), full.tokens.begin()));
  // Stop token id: the request ends with that token.
  RequestParams pt = p;
  pt.stop_token_ids = {full.tokens[5]};
  const Result st = run_alone(*e, pt);
  EXPECT_EQ(st.finish, FinishReason::Stop);
  const auto first = std::find(full.tokens.begin(), full.tokens.end(), full.tokens[5]);
  EXPECT_EQ(st.tokens, std::vector<int32_t>(full.tokens.begin(), first + 1));
}

// ---- sampling (CPU reference of Backend::sample) ------------------------------------------------

namespace {

Tensor logit_rows(const std::vector<std::vector<float>>& rows) {
  const int64_t V = int64_t(rows[0].size());
  Tensor t = host_tensor(DType::F32, {int64_t(rows.size()), V});
  for (size_t r = 0; r < rows.size(); ++r) std::memcpy(t.ptr<float>() + int64_t(r) * V, rows[r].data(), size_t(V) * 4);
  return t;
}

struct Drawn {
  std::vector<int32_t> tok;
  std::vector<float> lp;
  std::vector<int32_t> top_ids;
  std::vector<float> top_lp;
};

Drawn draw(Backend& be, const std::vector<std::vector<float>>& rows, const std::vector<SampleParams>& sp, int n_top = 0) {
  const int64_t R = int64_t(rows.size());
  Tensor l = logit_rows(rows);
  Tensor tok = host_tensor(DType::I32, {R}), lp = host_tensor(DType::F32, {R});
  Tensor ti = host_tensor(DType::I32, {R, n_top}), tl = host_tensor(DType::F32, {R, n_top});
  poison(tok), poison(lp), poison(ti), poison(tl);
  be.sample(l, sp, tok, lp, n_top ? &ti : nullptr, n_top ? &tl : nullptr);
  Drawn d;
  d.tok.assign(tok.ptr<int32_t>(), tok.ptr<int32_t>() + R);
  d.lp.assign(lp.ptr<float>(), lp.ptr<float>() + R);
  d.top_ids.assign(ti.ptr<int32_t>(), ti.ptr<int32_t>() + R * n_top);
  d.top_lp.assign(tl.ptr<float>(), tl.ptr<float>() + R * n_top);
  return d;
}

// The ids a filtered draw may return, by brute force in float64 (the rule of backend.h).
std::vector<int32_t> allowed_set(const std::vector<float>& l, const SampleParams& p) {
  std::vector<int32_t> ids(l.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[size_t(a)] > l[size_t(b)]; });
  size_t n = p.top_k > 0 ? std::min<size_t>(size_t(p.top_k), l.size()) : l.size();
  if (p.top_p < 1.0f) {
    const double T = p.temperature, zmax = l[size_t(ids[0])] / T;
    double total = 0, acc = 0;
    for (size_t i = 0; i < n; ++i) total += std::exp(l[size_t(ids[i])] / T - zmax);
    size_t keep = 0;
    while (keep < n) {
      acc += std::exp(l[size_t(ids[keep])] / T - zmax);
      ++keep;
      if (acc >= p.top_p * total) break;
    }
    n = keep;
  }
  ids.resize(n);
  return ids;
}

}  // namespace

TEST(Sampling, GreedyTakesTheMaxWithTiesToTheLowerId) {
  auto be = make_backend("cpu", 2);
  std::vector<float> row(100, -1.0f);
  row[40] = row[17] = row[90] = 3.5f;
  SampleParams g;
  auto d = draw(*be, {row, row}, {g, SampleParams{0.0f, 5, 0.5f, 9, 9}}, 4);
  EXPECT_EQ(d.tok[0], 17);
  EXPECT_EQ(d.tok[1], 17) << "greedy ignores the filters";
  EXPECT_EQ(std::vector<int32_t>(d.top_ids.begin(), d.top_ids.begin() + 4), (std::vector<int32_t>{17, 40, 90, 0}));
  // log-softmax in float64
  double s = 0;
  for (float v : row) s += std::exp(double(v) - 3.5);
  EXPECT_EQ(d.lp[0], float(3.5 - (std::log(s) + 3.5)));
  EXPECT_EQ(d.top_lp[3], float(-1.0 - (std::log(s) + 3.5)));
}

// Filtered draws only return ids of the brute-force kept set, every kept id is drawn for some
// seed, and a row's draw is the same alone as in any batch.
TEST(Sampling, TopKTopPDrawFromExactlyTheKeptSet) {
  auto be = make_backend("cpu", 2);
  std::vector<float> row(64);
  for (auto& v : row) v = randn(2.0f);
  row[10] = row[11];  // a tie inside the set
  for (SampleParams p : {SampleParams{1.0f, 8, 1.0f}, SampleParams{0.8f, 0, 0.7f}, SampleParams{1.3f, 12, 0.9f},
                         SampleParams{1.0f, 1, 1.0f}, SampleParams{2.0f, 0, 1e-6f}}) {
    const std::vector<int32_t> keep = allowed_set(row, p);
    std::set<int32_t> seen;
    std::vector<std::vector<float>> rows;
    std::vector<SampleParams> sp;
    for (int s = 0; s < 400; ++s) {
      p.seed = uint64_t(s) * 7919, p.counter = uint64_t(s % 5);
      rows.push_back(row), sp.push_back(p);
    }
    auto d = draw(*be, rows, sp);
    for (int s = 0; s < 400; ++s) {
      ASSERT_NE(std::find(keep.begin(), keep.end(), d.tok[size_t(s)]), keep.end())
          << "top_k " << p.top_k << " top_p " << p.top_p << ": drew " << d.tok[size_t(s)];
      seen.insert(d.tok[size_t(s)]);
    }
    // Every kept id of probability >= 5% shows up (missing one by chance: < 0.95^400 ~ 1e-9).
    double z = 0;
    for (int32_t v : keep) z += std::exp(row[size_t(v)] / p.temperature);
    for (int32_t v : keep)
      if (std::exp(row[size_t(v)] / p.temperature) / z >= 0.05) EXPECT_TRUE(seen.count(v)) << "id " << v << " never drawn";
    for (int s : {0, 137, 399}) {  // batch independence
      auto one = draw(*be, {row}, {sp[size_t(s)]});
      EXPECT_EQ(one.tok[0], d.tok[size_t(s)]);
    }
  }
}

// Temperature draws follow softmax(l / T): a chi-square test over 20000 seeds (p < 1e-6 to fail by chance).
TEST(Sampling, DrawsFollowTheTemperedDistribution) {
  auto be = make_backend("cpu", 2);
  const std::vector<float> row = {0.0f, 1.0f, -0.5f, 2.0f, 0.3f, -3.0f, 1.5f, 0.9f};
  const float T = 0.8f;
  const int N = 20000;
  std::vector<std::vector<float>> rows(N, row);
  std::vector<SampleParams> sp(N);
  for (int i = 0; i < N; ++i) sp[size_t(i)] = SampleParams{T, 0, 1.0f, 42, uint64_t(i)};
  auto d = draw(*be, rows, sp);
  std::vector<double> prob(row.size());
  double z = 0;
  for (size_t i = 0; i < row.size(); ++i) z += prob[i] = std::exp(row[i] / T);
  std::vector<int> count(row.size());
  for (int t : d.tok) ++count[size_t(t)];
  double chi2 = 0;
  for (size_t i = 0; i < row.size(); ++i) {
    const double e = N * prob[i] / z;
    chi2 += (count[i] - e) * (count[i] - e) / e;
  }
  EXPECT_LT(chi2, 38.0) << "7 degrees of freedom; 38 has p ~ 2e-6";
}

TEST(Sampling, TokenLogprobsAreFloat64LogSoftmax) {
  auto be = make_backend("cpu", 2);
  std::vector<float> a(300), b(300);
  for (auto& v : a) v = randn(3.0f);
  for (auto& v : b) v = randn(0.1f);
  Tensor l = logit_rows({a, b});
  std::vector<int32_t> tg = {7, 299};
  Tensor t{tg.data(), DType::I32, {2}};
  Tensor lp = host_tensor(DType::F64, {2});
  be->token_logprobs(l, t, lp);
  for (int r = 0; r < 2; ++r) {
    const auto& row = r ? b : a;
    double m = *std::max_element(row.begin(), row.end()), s = 0;
    for (float v : row) s += std::exp(double(v) - m);
    EXPECT_NEAR(lp.ptr<double>()[r], double(row[size_t(tg[size_t(r)])]) - std::log(s) - m, 1e-12);
  }
  tg[1] = 300;
  EXPECT_DSA_ERROR(be->token_logprobs(l, t, lp), "target 300");
}

}  // namespace dsa::test

// Model-level behaviour on a tiny random model in the exact V3.2 checkpoint format: chunked
// prefill == one-shot prefill, decode after prefill ~= full prefill, DSA vs dense, bad input.
#include <omp.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backends/op_profiler.h"
#include "model/random_model.h"
#include "runtime/engine.h"
#include "test_models.h"
#include "test_util.h"

namespace dsa::test {

namespace fs = std::filesystem;

static std::unique_ptr<Engine> tiny_engine(AttentionMode mode, int64_t chunk = 0, int64_t kv_tokens = 0) {
  EngineOptions o;
  o.threads = 2;
  o.attention = mode;
  o.prefill_chunk = chunk;
  o.kv_tokens = kv_tokens;
  return Engine::load(tiny_model_dir(), o);
}

static std::vector<int32_t> random_tokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(rng()() % uint64_t(vocab));
  return t;
}

static std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// DSA_PROFILE_OPS=1 wraps the backend in OpProfiler: every op forwarded unchanged (same logits, bit for
// bit) and counted.
TEST(Model, OpProfilerForwardsEveryOpUnchanged) {
  ::setenv("DSA_PROFILE_OPS", "1", 1);
  auto prof = tiny_engine(AttentionMode::Sparse);
  ::unsetenv("DSA_PROFILE_OPS");
  auto plain = tiny_engine(AttentionMode::Sparse);
  auto* op = dynamic_cast<OpProfiler*>(&prof->backend());
  ASSERT_NE(op, nullptr) << "DSA_PROFILE_OPS=1 did not wrap the backend";
  EXPECT_EQ(dynamic_cast<OpProfiler*>(&plain->backend()), nullptr);
  const int64_t V = prof->model().config().vocab_size, K = prof->model().config().index_topk;
  const std::vector<int32_t> toks = random_tokens(K + 40, V);  // past index_topk: the indexer selects
  Sequence a, b;
  EXPECT_EQ(prof->feed(a, toks, true), plain->feed(b, toks, true));
  EXPECT_EQ(prof->feed(a, {toks[3]}), plain->feed(b, {toks[3]}));
  EXPECT_GT(op->calls("linear_fp8"), 0);
  EXPECT_GT(op->calls("indexer_topk"), 0);
  EXPECT_GT(op->calls("attention_mha sparse"), 0);
  EXPECT_GT(op->calls("attention_mqa sparse"), 0);
  EXPECT_EQ(op->calls("no such op"), 0);
}

TEST(Model, TinyModelIsShardedAndLoads) {
  int shards = 0;
  for (auto& e : fs::directory_iterator(tiny_model_dir())) shards += e.path().extension() == ".safetensors";
  EXPECT_GT(shards, 1);
  EXPECT_TRUE(fs::exists(tiny_model_dir() + "/model.safetensors.index.json"));
  auto eng = tiny_engine(AttentionMode::Sparse);
  EXPECT_EQ(eng->model().config().index_topk, 32);
}

TEST(Model, ChunkedPrefillMatchesOneShotBitExactly) {
  // The reference cannot prefill on top of a cache; we can, and the result must not depend on
  // the chunking (every per-token computation is the same).
  for (AttentionMode mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    auto one = tiny_engine(mode), chunked = tiny_engine(mode, 13);
    const auto toks = random_tokens(100, 512);  // > index_topk = 32: the indexer really selects
    Sequence a, b;
    std::vector<float> la = one->feed(a, toks, true), lb = chunked->feed(b, toks, true);
    ASSERT_EQ(la.size(), lb.size());
    EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * 4), 0) << (mode == AttentionMode::Sparse ? "sparse" : "dense");
  }
}

TEST(Model, DecodeAfterPrefillMatchesFullPrefill) {
  // Decode uses the absorbed MQA form with bf16-dequantised wkv_b, prefill the MHA form with an
  // FP8 GEMM: the same function with different rounding (architecture.md §10.12). On this random
  // model, rounding-level differences occasionally flip a near-tied MoE routing or top-k choice and
  // move one prompt's logits a lot (seen: 1 prompt in ~15), so the check is the median over five
  // prompts. A wrong position, cache slot or head mapping moves every prompt by O(1). The trained
  // dsa-mini is held to 3 % on a single prompt (DsaMini.DecodeAfterPrefillMatchesFullPrefill).
  for (AttentionMode mode : {AttentionMode::Sparse, AttentionMode::Dense}) {
    auto eng = tiny_engine(mode);
    std::vector<double> rels;
    for (int trial = 0; trial < 5; ++trial) {
      const auto toks = random_tokens(90, 512);
      Sequence full, inc;
      std::vector<float> lf = eng->feed(full, toks, true);
      std::vector<float> last(lf.end() - 512, lf.end());
      eng->feed(inc, std::vector<int32_t>(toks.begin(), toks.end() - 3));
      std::vector<float> ld;
      for (size_t i = toks.size() - 3; i < toks.size(); ++i) ld = eng->feed(inc, {toks[i]});  // three decode steps
      rels.push_back(rel_l2(as_double(ld), as_double(last)));
      full.release(eng->kv());
      inc.release(eng->kv());
    }
    std::sort(rels.begin(), rels.end());
    EXPECT_LT(rels[2], 0.1) << (mode == AttentionMode::Sparse ? "sparse" : "dense") << ": median of 5";
  }
}

TEST(Model, DsaEqualsDenseWithinTopkAndDiffersBeyond) {
  auto sp = tiny_engine(AttentionMode::Sparse), de = tiny_engine(AttentionMode::Dense);
  const auto toks = random_tokens(120, 512);
  Sequence a, b, c, d;
  // L <= index_topk (32): DSA is exactly dense causal attention.
  std::vector<int32_t> short_toks(toks.begin(), toks.begin() + 32);
  auto s1 = sp->feed(a, short_toks, true), d1 = de->feed(b, short_toks, true);
  EXPECT_EQ(std::memcmp(s1.data(), d1.data(), s1.size() * 4), 0);
  // L > k with a (random, non-trivial) indexer: positions past 32 attend to a strict subset.
  auto s2 = sp->feed(c, toks, true), d2 = de->feed(d, toks, true);
  std::vector<double> tail_s(s2.begin() + 40 * 512, s2.end()), tail_d(d2.begin() + 40 * 512, d2.end());
  std::vector<double> head_s(s2.begin(), s2.begin() + 32 * 512), head_d(d2.begin(), d2.begin() + 32 * 512);
  EXPECT_EQ(rel_l2(head_s, head_d), 0.0) << "the first 32 positions see <= 32 keys: identical";
  EXPECT_GT(rel_l2(tail_s, tail_d), 1e-3) << "beyond k the sparse selection must change the result";
}

TEST(Model, SparseDecodeStepsPastTopkReallySelect) {
  // Decode steps past k run the indexer over the cache and attend to a strict subset: their logits
  // must differ from dense decode from the same cache state. (Decode-vs-prefill agreement with
  // sparse selection is checked on the trained dsa-mini, where selections are not near-ties:
  // DsaMini.DecodeAfterPrefillMatchesFullPrefill. On this random 2-layer model with k = 32 of ~65
  // keys, bf16-level differences between the two forms flip near-tied selections.)
  auto sp = tiny_engine(AttentionMode::Sparse), de = tiny_engine(AttentionMode::Dense);
  const auto toks = random_tokens(70, 512);
  Sequence a, b;
  sp->feed(a, std::vector<int32_t>(toks.begin(), toks.begin() + 31));  // <= k: identical caches
  de->feed(b, std::vector<int32_t>(toks.begin(), toks.begin() + 31));
  std::vector<float> ls, ld;
  for (size_t i = 31; i < toks.size(); ++i) {
    ls = sp->feed(a, {toks[i]});
    ld = de->feed(b, {toks[i]});
    for (float v : ls) ASSERT_TRUE(std::isfinite(v));
    if (i < 32) EXPECT_EQ(std::memcmp(ls.data(), ld.data(), ls.size() * 4), 0) << "position " << i << " sees <= k keys";
  }
  EXPECT_GT(rel_l2(as_double(ls), as_double(ld)), 1e-3);
}

TEST(Model, PromptTooLongAndOutOfKvMemoryAreClearErrors) {
  auto eng = tiny_engine(AttentionMode::Sparse, 0, 128);
  Sequence s;
  try {
    eng->feed(s, random_tokens(2000, 512));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceed the model's context"), std::string::npos) << e.what();
  }
  try {
    eng->feed(s, random_tokens(200, 512));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of KV memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(eng->kv().pool().available(), 2) << "a failed step must not leak blocks";
  auto logits = eng->feed(s, random_tokens(100, 512));  // and the engine still works
  EXPECT_EQ(logits.size(), 512u);
}

// ---- loader errors on a real checkpoint layout ------------------------------------------------

static std::string copy_model(const std::string& tag) {
  const std::string d = (fs::temp_directory_path() / ("dsa-bad-" + tag + "-" + std::to_string(::getpid()))).string();
  fs::remove_all(d);
  fs::copy(tiny_model_dir(), d, fs::copy_options::recursive);
  return d;
}

static void expect_load_error(const std::string& dir, const std::vector<std::string>& needles) {
  try {
    EngineOptions o;
    Engine::load(dir, o);
    FAIL() << "expected a load error for " << dir;
  } catch (const Error& e) {
    for (auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "message: " << e.what() << "\nmissing: " << n;
  }
}

// Rewrite the model's tensors with one change applied by `edit`.
static void rewrite(const std::string& dir, const std::function<void(std::vector<NamedTensor>&)>& edit) {
  Checkpoint ck = Checkpoint::open(dir);
  std::vector<NamedTensor> ts;
  for (auto& n : ck.names()) {
    Tensor src = ck.get(n);
    Tensor t = host_tensor(src.dtype, src.shape);
    std::memcpy(t.data, src.data, src.nbytes());
    ts.push_back({n, t});
  }
  edit(ts);
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors" || e.path().filename() == "model.safetensors.index.json") fs::remove(e.path());
  write_sharded_checkpoint(dir, ts, 1u << 20);
}

TEST(ModelLoad, MissingTensorNamesIt) {
  auto d = copy_model("missing");
  rewrite(d, [](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "model.layers.1.self_attn.indexer.wk.weight"; }); });
  expect_load_error(d, {"model.layers.1.self_attn.indexer.wk.weight", "missing"});
}

TEST(ModelLoad, WrongShapeAndDtypeSayWhatWasExpected) {
  auto d = copy_model("shape");
  rewrite(d, [](auto& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.kv_a_layernorm.weight") t.tensor = host_tensor(DType::BF16, {500});
  });
  expect_load_error(d, {"model.layers.0.self_attn.kv_a_layernorm.weight", "[512]", "[500]"});
  auto e = copy_model("dtype");
  rewrite(e, [](auto& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.q_a_proj.weight") t.tensor = host_tensor(DType::BF16, t.tensor.shape);
  });
  expect_load_error(e, {"model.layers.0.self_attn.q_a_proj.weight", "F8_E4M3", "BF16"});
}

TEST(ModelLoad, UnexpectedTensorIsRejected) {
  auto d = copy_model("extra");
  rewrite(d, [](auto& ts) { ts.push_back({"model.layers.0.self_attn.surprise.weight", host_tensor(DType::F32, {4})}); });
  expect_load_error(d, {"unexpected tensor", "model.layers.0.self_attn.surprise.weight"});
}

TEST(ModelLoad, BadConfigAndTruncatedShardAreClearErrors) {
  auto d = copy_model("config");
  {
    nlohmann::json j = nlohmann::json::parse(std::ifstream(d + "/config.json"));
    j["hidden_size"] = "wide";
    std::ofstream(d + "/config.json") << j.dump();
  }
  expect_load_error(d, {"config.json", "hidden_size"});
  auto e = copy_model("trunc");
  for (auto& f : fs::directory_iterator(e))
    if (f.path().extension() == ".safetensors") {
      fs::resize_file(f.path(), fs::file_size(f.path()) / 2);
      expect_load_error(e, {f.path().filename().string()});
      break;
    }
}

TEST(ModelLoad, RandomModelIsDeterministicBySeed) {
  // Same seed -> same bytes, whatever the number of threads that generate it.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto a = random_model_tensors(preset_model_config("tiny"), 5);
  omp_set_num_threads(std::max(2, threads));
  auto b = random_model_tensors(preset_model_config("tiny"), 5);
  omp_set_num_threads(threads);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].name, b[i].name);
    ASSERT_EQ(std::memcmp(a[i].tensor.data, b[i].tensor.data, a[i].tensor.nbytes()), 0) << a[i].name;
  }
}

TEST(ModelLoad, RandomModelSeedsDiffer) {
  auto a = random_model_tensors(preset_model_config("tiny"), 5), b = random_model_tensors(preset_model_config("tiny"), 6);
  EXPECT_NE(std::memcmp(a[0].tensor.data, b[0].tensor.data, a[0].tensor.nbytes()), 0);
}

}  // namespace dsa::test

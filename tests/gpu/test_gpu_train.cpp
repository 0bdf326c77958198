// Indexer training on CUDA (issue 14, docs/training.md "CUDA"): the GPU loss and its five gradients
// against the CPU reference indexer_loss_grad<double> (itself checked against finite differences in
// tests/test_train_indexer.cpp) on fresh random shapes, both stages, tiles that do not divide T,
// T < k, T = k, T = k + 1; exact fp32 and TF32; poisoned scratch; then dsa-mini: the tap's device
// tensors give the CPU's loss and gradient on the same inputs, train-indexer on cuda agrees with cpu,
// and resume == uninterrupted on the GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include <unistd.h>

#include "backends/cuda/train/indexer_train.h"
#include "gpu_util.h"
#include "model/rope_table.h"
#include "model/random_model.h"
#include "runtime/engine.h"
#include "train/indexer_ckpt.h"
#include "train/layer_tap.h"
#include "train/trainer.h"

namespace dsa::test {
namespace {

using train::IndexerParams;
using train::IndexerShape;
using train::LayerInputs;
using train::LayerStats;
using train::LossOptions;

constexpr int64_t kRopeRows = 1024;
const float* rope() {
  static const Tensor t = rope_table(preset_model_config("tiny"), kRopeRows);
  return t.ptr<float>();
}

std::vector<double> randn_vec(size_t n, std::mt19937_64& g, double sd, double mean = 0.0) {
  std::normal_distribution<double> d(mean, sd);
  std::vector<double> v(n);
  for (auto& x : v) x = double(float(d(g)));  // representable in fp32: both paths see the same inputs
  return v;
}
template <class F>
std::vector<F> cast(const std::vector<double>& v) {
  return std::vector<F>(v.begin(), v.end());
}

// A random layer: Hi = 8 indexer heads, D = 48, QL = 32, H = 3 main heads of 40 dims, positions from 5.
struct RandomLayer {
  IndexerShape s{48, 32, 8, 128};
  int64_t T, H = 3, dm = 40;
  double scale = 0.3;
  std::vector<double> x, qr, mq, mk;
  std::vector<int32_t> pos;
  IndexerParams<double> p;
  RandomLayer(int64_t T_, uint64_t seed) : T(T_) {
    std::mt19937_64 g(seed);
    x = randn_vec(size_t(T * s.D), g, 1.0);
    qr = randn_vec(size_t(T * s.QL), g, 1.0);
    mq = randn_vec(size_t(T * H * dm), g, 1.0);
    mk = randn_vec(size_t(T * H * dm), g, 1.0);
    for (int64_t t = 0; t < T; ++t) pos.push_back(int32_t(5 + t));
    p.wq = randn_vec(size_t(s.n_wq()), g, 0.3);
    p.wk = randn_vec(size_t(s.n_wk()), g, 0.3);
    p.ln_w = randn_vec(size_t(s.Di), g, 0.1, 1.0);
    p.ln_b = randn_vec(size_t(s.Di), g, 0.1);
    p.wp = randn_vec(size_t(s.n_wp()), g, 0.5);
  }
  template <class F>
  LayerInputs<F> inputs(const std::vector<F>& xf, const std::vector<F>& qf, const std::vector<F>& mqf,
                        const std::vector<F>& mkf) const {
    LayerInputs<F> in;
    in.T = T; in.x = xf.data(); in.qr = qf.data(); in.mq = mqf.data(); in.mk = mkf.data();
    in.H = H; in.dm = dm; in.scale = scale; in.rope = rope(); in.pos = pos.data();
    return in;
  }
  // Two margins (f64) that keep fp32 rounding from changing a discrete choice: the smallest gap, over
  // rows with more than k keys, between the k-th and (k+1)-th largest index score relative to the row's
  // largest |I| (the sparse set), and the smallest |q.k| of a visible pair relative to their rms (the
  // ReLU mask, whose flip would switch the subgradient of that dot).
  struct Margins {
    double topk_gap = 1e30, relu = 1e30;
  };
  Margins margins(int64_t k) const {
    const int64_t Hi = s.Hi, Di = s.Di;
    std::vector<double> Q(size_t(T * Hi * Di)), Kl(size_t(T * Di)), Kn(size_t(T * Di)), mu(static_cast<size_t>(T)), rs(static_cast<size_t>(T)),
        W(size_t(T * Hi));
    train::linear_fwd(qr.data(), p.wq.data(), T, Hi * Di, s.QL, Q.data());
    train::rope_half(Q.data(), T, Hi, Di, rope(), pos.data(), false);
    train::linear_fwd(x.data(), p.wk.data(), T, Di, s.D, Kl.data());
    train::layer_norm_fwd(Kl.data(), p.ln_w.data(), p.ln_b.data(), T, Di, 1e-6, Kn.data(), mu.data(), rs.data());
    train::rope_half(Kn.data(), T, 1, Di, rope(), pos.data(), false);
    train::linear_fwd(x.data(), p.wp.data(), T, Hi, s.D, W.data());
    Margins m;
    double amin = 1e30, a2 = 0;
    int64_t na = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = t + 1;
      std::vector<double> a(size_t(Hi * n)), I(static_cast<size_t>(n));
      train::index_scores_row(Q.data() + t * Hi * Di, W.data() + t * Hi, Kn.data(), Hi, Di, n,
                              1.0 / std::sqrt(double(Hi) * 128.0), a.data(), I.data());
      for (double v : a) { amin = std::min(amin, std::fabs(v)); a2 += v * v; ++na; }
      if (n <= k) continue;
      double mx = 0;
      for (double v : I) mx = std::max(mx, std::fabs(v));
      std::sort(I.begin(), I.end(), std::greater<double>());
      m.topk_gap = std::min(m.topk_gap, (I[size_t(k - 1)] - I[size_t(k)]) / mx);
    }
    m.relu = amin / std::sqrt(a2 / double(na));
    return m;
  }
};

// The first seed from `seed` whose layer has no near-tie at the k-th index score (gap > 1e-4 of max |I|)
// and no dot within 1e-6 of zero (relative to their rms; the fp32 roundings of a dot are ~1e-7).
RandomLayer layer_without_near_ties(int64_t T, int64_t k, uint64_t seed) {
  for (int tries = 0; tries < 50; ++tries) {
    RandomLayer L(T, seed + uint64_t(tries) * 7919);
    const RandomLayer::Margins m = L.margins(k);
    if (m.topk_gap > 1e-4 && m.relu > 1e-6) return L;
  }
  ADD_FAILURE() << "no random layer without near-ties";
  return RandomLayer(T, seed);
}

std::vector<double> flat(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

struct Tolerances {
  double loss, recall, grad, dI;
};

struct GpuResult {
  LayerStats st;
  IndexerParams<float> g;
  std::vector<float> dI;
};

GpuResult run_gpu(cuda::CudaBackend& be, const RandomLayer& L, const LossOptions& o0, cuda::TrainPrecision prec,
                  int64_t tile, bool poison = false) {
  cuda::IndexerTrainer tr(be, L.s, prec);
  tr.set_tile_rows(tile);
  tr.set_poison(poison);
  const std::vector<float> x = cast<float>(L.x), qr = cast<float>(L.qr), mq = cast<float>(L.mq), mk = cast<float>(L.mk);
  IndexerParams<float> pf;
  pf.wq = cast<float>(L.p.wq); pf.wk = cast<float>(L.p.wk); pf.ln_w = cast<float>(L.p.ln_w);
  pf.ln_b = cast<float>(L.p.ln_b); pf.wp = cast<float>(L.p.wp);
  GpuResult r;
  r.g.resize(L.s);
  LossOptions o = o0;
  o.dI_out = &r.dI;
  r.st = tr.loss_grad(L.inputs(x, qr, mq, mk), kRopeRows, pf, o, &r.g);
  return r;
}

// GPU (fp32 or TF32) against the CPU f64 reference: loss, recall, dL/dI and the five gradients.
void compare_to_cpu(int64_t T, int64_t tile, bool sparse, int64_t k, cuda::TrainPrecision prec, const Tolerances& tol,
                    uint64_t seed) {
  SCOPED_TRACE("T " + std::to_string(T) + " tile " + std::to_string(tile) + (sparse ? " sparse" : " dense") + " k " +
               std::to_string(k) + (prec == cuda::TrainPrecision::Tf32 ? " tf32" : " fp32"));
  const RandomLayer L = layer_without_near_ties(T, k, seed);
  LossOptions o;
  o.sparse = sparse;
  o.topk = k;
  std::vector<float> dI_ref;
  o.dI_out = &dI_ref;
  IndexerParams<double> gref;
  gref.resize(L.s);
  const LayerStats ref = train::indexer_loss_grad(L.s, L.p, L.inputs(L.x, L.qr, L.mq, L.mk), o, &gref);
  o.dI_out = nullptr;
  Both be;
  const GpuResult r = run_gpu(be.gpu, L, o, prec, tile);
  EXPECT_NEAR(r.st.loss, ref.loss, tol.loss * std::max(1.0, ref.loss)) << "loss";
  EXPECT_EQ(r.st.recall_rows, ref.recall_rows);
  if (ref.recall_rows) {
    EXPECT_NEAR(r.st.recall, ref.recall, tol.recall) << "recall";
  }
  const double e_dI = rel_l2(flat(r.dI), flat(dI_ref));
  EXPECT_LT(e_dI, tol.dI) << "dL/dI";
  const char* names[] = {"wq_b", "wk", "k_norm.weight", "k_norm.bias", "weights_proj"};
  auto pr = gref.parts();
  auto pg = r.g.parts();
  std::printf("[ train T=%ld tile %ld %s %s ] loss %.6f (ref %.6f) dI %.2e", long(T), long(tile),
              sparse ? "sparse" : "dense", prec == cuda::TrainPrecision::Tf32 ? "tf32" : "fp32", r.st.loss, ref.loss,
              e_dI);
  for (size_t q = 0; q < pr.size(); ++q) {
    for (float v : *pg[q]) ASSERT_TRUE(std::isfinite(v)) << names[q];
    const double e = rel_l2(flat(*pg[q]), *pr[q]);
    std::printf(" %s %.2e", names[q], e);
    EXPECT_LT(e, tol.grad) << names[q];
  }
  std::printf("\n");
}

// Exact fp32 against f64 (the GPU's products in another summation order): ~1e-6 per element, more in
// gradients that are sums of nearly cancelling terms (each row of dI sums to zero), so 5e-4 for them;
// a misplaced row or tile boundary would be ~1/T = 1e-2. The layers have no near-tie that rounding
// could resolve the other way.
constexpr Tolerances kExact{1e-5, 1e-5, 5e-4, 1e-4};

TEST(GpuTrain, DenseMatchesCpuExactFp32) {
  REQUIRE_GPU();
  uint64_t seed = 100;
  for (auto [T, tile] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {5, 0}, {37, 16}, {64, 16}, {100, 24}, {130, 0}})
    compare_to_cpu(T, tile, false, 8, cuda::TrainPrecision::Fp32, kExact, seed++);
}

TEST(GpuTrain, SparseMatchesCpuExactFp32) {
  REQUIRE_GPU();
  uint64_t seed = 200;
  // T < k, T = k (no row restricted), T = k + 1 (the last row only), tiles that do not divide T.
  for (auto [T, tile] : std::vector<std::pair<int64_t, int64_t>>{{5, 0}, {8, 0}, {9, 0}, {9, 4}, {37, 16}, {100, 24}})
    compare_to_cpu(T, tile, true, 8, cuda::TrainPrecision::Fp32, kExact, seed++);
}

// TF32 (10-bit mantissa inputs, fp32 accumulation) in the four products over (query, key) pairs:
// each dot is off by ~1e-3 relative, so I, the target and the loss by ~1e-3; dL/dI by a few 1e-3.
// The gradients of wq_b, wk and k_norm also take the ReLU-mask flips of dots within ~1e-3 of zero
// (a share ~5e-4 of them: each flips one subgradient choice of dA), which sets their relative L2
// error near sqrt(5e-4) ~ 2e-2; weights_proj's gradient is continuous in the dots (~1e-3).
TEST(GpuTrain, DenseTf32WithinItsRounding) {
  REQUIRE_GPU();
  const Tolerances tf32{5e-3, 1e-2, 8e-2, 2e-2};
  compare_to_cpu(100, 32, false, 8, cuda::TrainPrecision::Tf32, tf32, 300);
  compare_to_cpu(200, 0, false, 16, cuda::TrainPrecision::Tf32, tf32, 301);
}

// Every scratch buffer poisoned with NaN bytes: the same bits as without (nothing unwritten is read).
TEST(GpuTrain, PoisonedScratchGivesTheSameBits) {
  REQUIRE_GPU();
  Both be;
  for (bool sparse : {false, true}) {
    const RandomLayer L = layer_without_near_ties(45, 8, 400);
    LossOptions o;
    o.sparse = sparse;
    o.topk = 8;
    const GpuResult a = run_gpu(be.gpu, L, o, cuda::TrainPrecision::Tf32, 16, false);
    const GpuResult b = run_gpu(be.gpu, L, o, cuda::TrainPrecision::Tf32, 16, true);
    EXPECT_EQ(a.st.loss, b.st.loss);
    EXPECT_EQ(a.st.recall, b.st.recall);
    EXPECT_EQ(a.dI, b.dI);
    auto pa = a.g.parts();
    auto pb = b.g.parts();
    for (size_t q = 0; q < pa.size(); ++q) EXPECT_EQ(*pa[q], *pb[q]) << "part " << q << (sparse ? " sparse" : " dense");
  }
}

// The gradient is added to the caller's buffers (as the CPU's), and the loss without a gradient is the same.
TEST(GpuTrain, GradientAddsAndLossOnly) {
  REQUIRE_GPU();
  Both be;
  const RandomLayer L(30, 500);
  const std::vector<float> x = cast<float>(L.x), qr = cast<float>(L.qr), mq = cast<float>(L.mq), mk = cast<float>(L.mk);
  IndexerParams<float> pf;
  pf.wq = cast<float>(L.p.wq); pf.wk = cast<float>(L.p.wk); pf.ln_w = cast<float>(L.p.ln_w);
  pf.ln_b = cast<float>(L.p.ln_b); pf.wp = cast<float>(L.p.wp);
  cuda::IndexerTrainer tr(be.gpu, L.s, cuda::TrainPrecision::Fp32);
  LossOptions o;
  o.topk = 8;
  IndexerParams<float> g0, g1;
  g0.resize(L.s);
  g1.resize(L.s);
  for (auto* v : g1.parts()) std::fill(v->begin(), v->end(), 1.5f);
  const LayerStats s0 = tr.loss_grad(L.inputs(x, qr, mq, mk), kRopeRows, pf, o, &g0);
  const LayerStats s1 = tr.loss_grad(L.inputs(x, qr, mq, mk), kRopeRows, pf, o, &g1);
  const LayerStats s2 = tr.loss_grad(L.inputs(x, qr, mq, mk), kRopeRows, pf, o, nullptr);
  EXPECT_EQ(s0.loss, s1.loss);
  EXPECT_EQ(s0.loss, s2.loss);
  auto p0 = g0.parts();
  auto p1 = g1.parts();
  for (size_t q = 0; q < p0.size(); ++q)
    for (size_t i = 0; i < p0[q]->size(); ++i) ASSERT_EQ((*p1[q])[i], (*p0[q])[i] + 1.5f) << "part " << q << " " << i;
}

// ---- dsa-mini ------------------------------------------------------------------------------------
std::string mini_dir() { return std::string(DSA_SHARED_DIR) + "/models/dsa-mini"; }
#define REQUIRE_MINI()                                       \
  REQUIRE_GPU();                                             \
  if (!std::filesystem::exists(mini_dir() + "/config.json")) \
  GTEST_SKIP() << mini_dir() << " not found"

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(g() % uint32_t(vocab));
  return t;
}

// The backbone on CUDA; each layer's tap gives the GPU trainer its device tensors and the CPU reference
// the same values through LayerTap (downloaded through the Backend interface): the same loss, recall
// and gradient up to fp32 summation order (exact-fp32 products), in both stages.
TEST(GpuTrain, DsaMiniTapOnDeviceMatchesCpuOnTheSameInputs) {
  REQUIRE_MINI();
  EngineOptions eo;
  eo.device = "cuda";
  eo.kv_tokens = 320;
  eo.prefix_cache = false;
  eo.attention = AttentionMode::Dense;
  auto eng = Engine::load(mini_dir(), eo);
  auto* cb = dynamic_cast<cuda::CudaBackend*>(&eng->backend());
  if (!cb) GTEST_SKIP() << "backend is wrapped (DSA_PROFILE_OPS?)";
  const ModelConfig& cfg = eng->config();
  const IndexerShape shape = train::indexer_shape(cfg);
  const Tensor rope_t = rope_table(cfg, cfg.max_position_embeddings);
  train::LayerTap tap(eng->backend(), cfg);
  cuda::IndexerTrainer tr(*cb, shape, cuda::TrainPrecision::Fp32);
  tr.set_tile_rows(96);  // 300 rows: 4 tiles, the last partial
  int layers = 0;
  for (bool sparse : {false, true}) {
    LossOptions o;
    o.sparse = sparse;
    o.topk = cfg.index_topk;  // 256 < 300: rows 256.. have a top-k set
    eng->model().set_attention_tap([&](const AttentionTap& a) {
      const IndexerParams<float> p = train::random_indexer(shape, 7, a.layer, 0.02);
      IndexerParams<float> gg, gc;
      gg.resize(shape);
      gc.resize(shape);
      std::vector<float> dIg, dIc;
      LossOptions og = o, oc = o;
      og.dI_out = &dIg;
      oc.dI_out = &dIc;
      const LayerStats sg = tr.loss_grad(a, cfg, rope_t.ptr<float>(), rope_t.dim(0), p, og, &gg);
      const LayerStats sc = train::indexer_loss_grad(shape, p, tap.inputs(a, rope_t.ptr<float>()), oc, &gc);
      SCOPED_TRACE("layer " + std::to_string(a.layer) + (sparse ? " sparse" : " dense"));
      // Rows whose set U_t differs (the support of dL/dI): real data may hold a near-tie at the k-th index
      // score that fp32 rounding resolves the other way; such a row moves a little, so looser bounds then.
      int64_t rows_differ = 0;
      const int64_t T = 300;
      for (int64_t t = 0; t < T; ++t) {
        bool d = false;
        for (int64_t j = 0; j <= t; ++j) d |= (dIg[size_t(t * T + j)] == 0.f) != (dIc[size_t(t * T + j)] == 0.f);
        rows_differ += d;
      }
      // Exact-fp32 products: the loss and the weights_proj gradient (continuous in the dots) agree to
      // ~1e-6 (5e-4 for cancellation in the sums); a dot within fp32 rounding of zero (real data: ~0.2 of
      // the 2.9M dots of a layer) switches one ReLU subgradient, ~6e-4 of relative L2 in the other four.
      const bool tight = rows_differ == 0;
      const double tl = tight ? 1e-5 : 1e-3;
      const double tg[5] = {tight ? 3e-3 : 3e-2, tight ? 3e-3 : 3e-2, tight ? 3e-3 : 3e-2, tight ? 3e-3 : 3e-2,
                            tight ? 5e-4 : 3e-2};
      EXPECT_LE(rows_differ, 2) << "rows whose top-k set differs";
      EXPECT_NEAR(sg.loss, sc.loss, tl * std::max(1.0, sc.loss));
      EXPECT_NEAR(sg.recall, sc.recall, tight ? 1e-5 : 1e-3);
      auto pg = gg.parts();
      auto pc = gc.parts();
      std::printf("[ dsa-mini tap layer %ld %s ] loss %.6f (cpu %.6f) recall %.4f (cpu %.4f), %ld rows with another "
                  "set; grad rel_l2", long(a.layer), sparse ? "sparse" : "dense", sg.loss, sc.loss, sg.recall, sc.recall,
                  long(rows_differ));
      for (size_t q = 0; q < pg.size(); ++q) {
        const double e = rel_l2(flat(*pg[q]), flat(*pc[q]));
        std::printf(" %.2e", e);
        EXPECT_LT(e, tg[q]) << "part " << q;
      }
      std::printf("\n");
      ++layers;
    });
    Sequence seq;
    eng->feed(seq, random_tokens(300, cfg.vocab_size, 11), false);
    seq.release(eng->kv());
  }
  eng->model().set_attention_tap(nullptr);
  EXPECT_EQ(layers, 2 * cfg.num_hidden_layers);
}

std::string tmp_dir(const std::string& name) {
  const std::string d =
      (std::filesystem::temp_directory_path() / ("dsa-gpu-train-" + name + "-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(d);
  return d;
}

train::TrainOptions mini_opts(const std::string& out, const std::string& device) {
  train::TrainOptions o;
  o.model = mini_dir();
  o.out = out;
  o.device = device;
  o.init_random = true;
  o.ctx = 256;
  o.steps = 3;
  o.warmup = 1;
  o.lr = 1e-3;
  o.seed = 5;
  o.tokens = random_tokens(2048, 8192, 12);
  return o;
}

// train-indexer on cuda and on cpu, three steps of 256 tokens: the same per-layer losses and gradient
// norms up to the backbone's own CUDA-vs-CPU drift (GpuModel.LogitsMatchCpuPrefillAndDecode: bf16
// activations a ulp apart, amplified by the FP8 activation quantisation, ~1-2% on the logits after 6
// layers; the attention inputs of the deeper layers move by up to that much).
TEST(GpuTrain, DsaMiniTrainIndexerCudaMatchesCpu) {
  REQUIRE_MINI();
  train::TrainOptions oc = mini_opts(tmp_dir("cpu"), "cpu"), og = mini_opts(tmp_dir("cuda"), "cuda"),
                      ot = mini_opts(tmp_dir("tf32"), "cuda");
  og.exact_fp32 = true;
  const train::TrainResult rc = train::train_indexer(oc), rg = train::train_indexer(og), rt = train::train_indexer(ot);
  ASSERT_EQ(rc.log.size(), 3u);
  ASSERT_EQ(rg.log.size(), 3u);
  ASSERT_EQ(rt.log.size(), 3u);
  for (size_t s = 0; s < 3; ++s) {
    std::printf("[ dsa-mini train step %zu ] cpu: %s\n  cuda fp32: %s\n  cuda tf32: %s\n", s + 1,
                train::format_step(rc.log[s]).c_str(), train::format_step(rg.log[s]).c_str(),
                train::format_step(rt.log[s]).c_str());
    for (size_t l = 0; l < rc.log[s].loss.size(); ++l) {
      SCOPED_TRACE("step " + std::to_string(s + 1) + " layer " + std::to_string(l));
      const double lc = rc.log[s].loss[l];
      EXPECT_NEAR(rg.log[s].loss[l], lc, 3e-2 * lc) << "cuda fp32 loss";
      EXPECT_NEAR(rt.log[s].loss[l], lc, 3e-2 * lc) << "cuda tf32 loss";
      if (s == 0) {  // the same inputs (one backbone): TF32 rounding only. Later steps: AdamW's first
                     // steps move each weight by ~lr whatever its gradient's size, so tiny gradient
                     // entries of opposite sign already separate the two runs' weights.
        EXPECT_NEAR(rt.log[s].loss[l], rg.log[s].loss[l], 5e-3 * lc) << "tf32 vs fp32 (same backbone)";
        const double gc = rc.log[s].grad_norm[l];
        EXPECT_NEAR(rg.log[s].grad_norm[l], gc, 5e-2 * gc) << "cuda fp32 gradient norm";
        EXPECT_NEAR(rt.log[s].grad_norm[l], rg.log[s].grad_norm[l], 2e-2 * gc) << "tf32 vs fp32 gradient norm";
      }
    }
  }
  for (const auto* o : {&oc, &og, &ot}) std::filesystem::remove_all(o->out);
}

// Resume on the GPU: 1 step, save, resume for 2 more == 3 uninterrupted steps, bit for bit (every
// reduction of a step has a fixed order: cuBLASLt without atomics, block reductions, no float atomics).
TEST(GpuTrain, DsaMiniResumeEqualsUninterrupted) {
  REQUIRE_MINI();
  train::TrainOptions a = mini_opts(tmp_dir("full"), "cuda"), b = mini_opts(tmp_dir("resumed"), "cuda");
  const train::TrainResult ra = train::train_indexer(a);
  b.stop_after = 1;
  train::train_indexer(b);
  b.stop_after = 0;
  b.resume = true;
  const train::TrainResult rb = train::train_indexer(b);
  ASSERT_EQ(ra.step, 3);
  ASSERT_EQ(rb.step, 3);
  ASSERT_EQ(ra.params.size(), rb.params.size());
  for (size_t l = 0; l < ra.params.size(); ++l) {
    auto pa = ra.params[l].parts();
    auto pb = rb.params[l].parts();
    for (size_t q = 0; q < pa.size(); ++q) EXPECT_EQ(*pa[q], *pb[q]) << "layer " << l << " part " << q;
  }
  ASSERT_EQ(rb.log.size(), 2u);
  for (size_t l = 0; l < ra.log[2].loss.size(); ++l) EXPECT_EQ(ra.log[2].loss[l], rb.log[1].loss[l]) << "layer " << l;
  std::filesystem::remove_all(a.out);
  std::filesystem::remove_all(b.out);
}

}  // namespace
}  // namespace dsa::test

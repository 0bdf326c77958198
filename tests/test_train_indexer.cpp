// Indexer training (issue 14, docs/training.md): every backward piece against float64 central
// finite differences on small shapes, the whole layer loss (dense and sparse stage), the sparse
// stage's top-k restriction.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "model/random_model.h"
#include "model/rope_table.h"
#include "train/indexer_grad.h"

namespace dsa::train {
namespace {

using Vec = std::vector<double>;

Vec randn(size_t n, uint64_t seed, double sd = 1.0, double mean = 0.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(mean, sd);
  Vec v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of f at every (or every stride-th) entry of x against the analytic gradient g.
void check_fd(const std::function<double()>& f, Vec& x, const Vec& g, const char* what, size_t stride = 1,
              double h = 1e-6, double tol = 1e-6) {
  ASSERT_EQ(x.size(), g.size()) << what;
  double gmax = 0;
  for (double v : g) gmax = std::max(gmax, std::fabs(v));
  ASSERT_GT(gmax, 0.0) << what << ": the analytic gradient is all zero (the check would be vacuous)";
  int checked = 0;
  for (size_t i = 0; i < x.size(); i += stride) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    const double fd = (fp - fm) / (2 * h);
    EXPECT_NEAR(fd, g[i], tol * std::max(1.0, gmax)) << what << " entry " << i;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

const float* rope() {
  static const Tensor t = rope_table(preset_model_config("tiny"), 1024);
  return t.ptr<float>();
}

std::vector<int32_t> iota_pos(int64_t T, int32_t start = 0) {
  std::vector<int32_t> p(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) p[size_t(t)] = start + int32_t(t);
  return p;
}

TEST(TrainIndexerGrad, Linear) {
  const int64_t T = 5, N = 7, K = 9;
  Vec x = randn(T * K, 1), W = randn(N * K, 2), R = randn(T * N, 3), y(T * N), dW(N * K, 0.0);
  auto f = [&] { linear_fwd(x.data(), W.data(), T, N, K, y.data()); return dot(R, y); };
  linear_bwd_w(R.data(), x.data(), T, N, K, dW.data());
  check_fd(f, W, dW, "dW");
}

TEST(TrainIndexerGrad, LayerNormWithBias) {
  const int64_t T = 3, n = 128;
  Vec x = randn(T * n, 4, 2.0, 0.5), g = randn(n, 5, 0.3, 1.0), b = randn(n, 6, 0.2), R = randn(T * n, 7);
  Vec y(T * n), mu(T), rs(T), dx(T * n), dg(n, 0.0), db(n, 0.0);
  auto f = [&] { layer_norm_fwd(x.data(), g.data(), b.data(), T, n, 1e-6, y.data(), mu.data(), rs.data()); return dot(R, y); };
  f();
  layer_norm_bwd(R.data(), x.data(), g.data(), mu.data(), rs.data(), T, n, dx.data(), dg.data(), db.data());
  check_fd(f, x, dx, "LayerNorm dx");
  check_fd(f, g, dg, "LayerNorm dg");
  check_fd(f, b, db, "LayerNorm db");
}

TEST(TrainIndexerGrad, RopeHalfSplit) {
  const int64_t T = 4, nv = 3, W = 128;
  const auto pos = std::vector<int32_t>{0, 5, 17, 900};
  Vec x = randn(T * nv * W, 8), R = randn(T * nv * W, 9), y;
  auto f = [&] { y = x; rope_half(y.data(), T, nv, W, rope(), pos.data(), false); return dot(R, y); };
  Vec g = R;  // d<R, rope(x)>/dx = rope^T R = the inverse rotation of R
  rope_half(g.data(), T, nv, W, rope(), pos.data(), true);
  check_fd(f, x, g, "RoPE dx");
  // Layout check: pairs (i, i+32) of the first 64 dims only, dims 64.. untouched (§10.1).
  Vec e(W, 0.0);
  e[3] = 1.0;
  const int32_t p5 = 5;
  rope_half(e.data(), 1, 1, W, rope(), &p5, false);
  EXPECT_NEAR(e[3], rope()[5 * 64 + 6], 1e-7);
  EXPECT_NEAR(e[35], rope()[5 * 64 + 7], 1e-7);
  for (int64_t i = 0; i < W; ++i)
    if (i != 3 && i != 35) EXPECT_EQ(e[size_t(i)], 0.0) << i;
}

// I[j] = c sum_h w[h] relu(q[h].k[j]): gradients wrt q, k (the dot products), w (the head weights,
// i.e. weights_proj's output) through the ReLU . w head sum.
TEST(TrainIndexerGrad, IndexScoresReluHeadSum) {
  const int64_t Hi = 11, Di = 128, n = 21;  // Hi not a multiple of the 8-row tile, n not of 16
  Vec q = randn(Hi * Di, 10, 0.2), w = randn(Hi, 11), k = randn(n * Di, 12, 0.2), R = randn(n, 13);
  Vec a(Hi * n), I(n);
  const double c = 0.37;
  auto f = [&] { index_scores_row(q.data(), w.data(), k.data(), Hi, Di, n, c, a.data(), I.data()); return dot(R, I); };
  f();
  // Reference of the forward itself in plain loops.
  for (int64_t j = 0; j < n; ++j) {
    double acc = 0;
    for (int64_t h = 0; h < Hi; ++h) {
      double d = 0;
      for (int64_t e = 0; e < Di; ++e) d += q[size_t(h * Di + e)] * k[size_t(j * Di + e)];
      acc += w[size_t(h)] * std::max(d, 0.0);
    }
    EXPECT_NEAR(I[size_t(j)], c * acc, 1e-12);
  }
  Vec dq(Hi * Di, 0.0), dw(Hi, 0.0), dk(n * Di, 0.0), scratch(Hi * n);
  index_scores_row_bwd(q.data(), w.data(), k.data(), a.data(), Hi, Di, n, nullptr, R.data(), n, c, dq.data(), dw.data(),
                       dk.data(), scratch.data());
  check_fd(f, q, dq, "scores dq");
  check_fd(f, k, dk, "scores dk");
  check_fd(f, w, dw, "scores dw");
  // Over a subset of keys (the sparse stage): keys outside get nothing.
  const std::vector<int32_t> idx{2, 7, 20};
  const Vec Rs{R[2], R[7], R[20]};
  Vec dk2(n * Di, 0.0), dq2(Hi * Di, 0.0), dw2(Hi, 0.0);
  index_scores_row_bwd(q.data(), w.data(), k.data(), a.data(), Hi, Di, n, idx.data(), Rs.data(), 3, c, dq2.data(),
                       dw2.data(), dk2.data(), scratch.data());
  for (int64_t j = 0; j < n; ++j) {
    const bool in = j == 2 || j == 7 || j == 20;
    double m = 0;
    for (int64_t e = 0; e < Di; ++e) m = std::max(m, std::fabs(dk2[size_t(j * Di + e)]));
    if (in) EXPECT_GT(m, 0.0) << j;
    else EXPECT_EQ(m, 0.0) << j;
  }
}

TEST(TrainIndexerGrad, KlRow) {
  const int64_t m = 9;
  Vec I = randn(m, 14), p = randn(m, 15), dI(m);
  double s = 0;
  for (auto& v : p) { v = std::exp(v); s += v; }
  for (auto& v : p) v /= s;
  auto f = [&] { Vec t(m); return kl_row(p.data(), I.data(), m, 1.0, t.data()); };
  const double kl = kl_row(p.data(), I.data(), m, 1.0, dI.data());
  // Reference: sum p log(p / softmax(I)).
  double mx = *std::max_element(I.begin(), I.end()), z = 0;
  for (double v : I) z += std::exp(v - mx);
  double ref = 0;
  for (int64_t j = 0; j < m; ++j) ref += p[size_t(j)] * (std::log(p[size_t(j)]) - (I[size_t(j)] - mx - std::log(z)));
  EXPECT_NEAR(kl, ref, 1e-13);
  check_fd(f, I, dI, "KL dI");
}

// A small layer: Hi = 4 indexer heads, D = 32, QL = 16, H = 2 main heads of 24 dims, T = 24 tokens.
struct SmallLayer {
  IndexerShape s{32, 16, 4, 128};
  int64_t T = 24, H = 2, dm = 24;
  Vec x, qr, mq, mk;
  std::vector<int32_t> pos;
  IndexerParams<double> p;
  SmallLayer() {
    x = randn(T * s.D, 20);
    qr = randn(T * s.QL, 21);
    mq = randn(T * H * dm, 22);
    mk = randn(T * H * dm, 23);
    pos = iota_pos(T, 3);
    p.wq = randn(s.n_wq(), 24, 0.3);
    p.wk = randn(s.n_wk(), 25, 0.3);
    p.ln_w = randn(s.Di, 26, 0.1, 1.0);
    p.ln_b = randn(s.Di, 27, 0.1);
    p.wp = randn(s.n_wp(), 28, 0.5);
  }
  LayerInputs<double> inputs() const {
    LayerInputs<double> in;
    in.T = T; in.x = x.data(); in.qr = qr.data(); in.mq = mq.data(); in.mk = mk.data();
    in.H = H; in.dm = dm; in.scale = 0.4; in.rope = rope(); in.pos = pos.data();
    return in;
  }
};

void check_layer(bool sparse) {
  SmallLayer L;
  LossOptions o;
  o.sparse = sparse;
  o.topk = 6;
  IndexerParams<double> g;
  g.resize(L.s);
  const LayerStats st = indexer_loss_grad(L.s, L.p, L.inputs(), o, &g);
  EXPECT_GT(st.loss, 0.0);
  EXPECT_GT(st.recall_rows, 0);
  auto f = [&] { return indexer_loss_grad<double>(L.s, L.p, L.inputs(), o, nullptr).loss; };
  EXPECT_DOUBLE_EQ(f(), st.loss);
  check_fd(f, L.p.wq, g.wq, "layer dWq_b", 37);
  check_fd(f, L.p.wk, g.wk, "layer dWk", 29);
  check_fd(f, L.p.ln_w, g.ln_w, "layer dk_norm.weight", 3);
  check_fd(f, L.p.ln_b, g.ln_b, "layer dk_norm.bias", 3);
  check_fd(f, L.p.wp, g.wp, "layer dweights_proj", 5);
}

TEST(TrainIndexerGrad, LayerLossDense) { check_layer(false); }
TEST(TrainIndexerGrad, LayerLossSparse) { check_layer(true); }

// Stage 2: dL/dI is exactly zero outside each row's top-k of I, and the restricted softmax minus
// the restricted target sums to zero inside it. I is recomputed here from the pieces.
TEST(TrainIndexerGrad, SparseStageOnlyTopK) {
  SmallLayer L;
  const int64_t T = L.T, Hi = L.s.Hi, Di = L.s.Di, k = 6;
  std::vector<float> dI;
  LossOptions o;
  o.sparse = true;
  o.topk = k;
  o.dI_out = &dI;
  indexer_loss_grad<double>(L.s, L.p, L.inputs(), o, nullptr);
  Vec Q(T * Hi * Di), Kl(T * Di), Kn(T * Di), mu(T), rs(T), W(T * Hi);
  linear_fwd(L.qr.data(), L.p.wq.data(), T, Hi * Di, L.s.QL, Q.data());
  rope_half(Q.data(), T, Hi, Di, rope(), L.pos.data(), false);
  linear_fwd(L.x.data(), L.p.wk.data(), T, Di, L.s.D, Kl.data());
  layer_norm_fwd(Kl.data(), L.p.ln_w.data(), L.p.ln_b.data(), T, Di, 1e-6, Kn.data(), mu.data(), rs.data());
  rope_half(Kn.data(), T, 1, Di, rope(), L.pos.data(), false);
  linear_fwd(L.x.data(), L.p.wp.data(), T, Hi, L.s.D, W.data());
  int restricted_rows = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = t + 1;
    Vec a(Hi * n), I(n);
    index_scores_row(Q.data() + t * Hi * Di, W.data() + t * Hi, Kn.data(), Hi, Di, n, 1.0 / std::sqrt(Hi * 128.0),
                     a.data(), I.data());
    std::vector<int32_t> order(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) order[size_t(j)] = int32_t(j);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return I[size_t(x)] > I[size_t(y)]; });
    std::set<int32_t> top(order.begin(), order.begin() + std::min(n, k));
    double sum = 0;
    int nonzero = 0;
    for (int64_t j = 0; j < T; ++j) {
      const float v = dI[size_t(t * T + j)];
      if (!top.count(int32_t(j))) EXPECT_EQ(v, 0.0f) << "row " << t << " key " << j << " outside the top-" << k;
      else { sum += v; nonzero += v != 0.0f; }
    }
    EXPECT_NEAR(sum, 0.0, 1e-6) << t;
    if (n > k) { ++restricted_rows; EXPECT_GT(nonzero, 0) << t; }
  }
  EXPECT_EQ(restricted_rows, T - k);
}

// The fp32 path (SIMD clones) agrees with the f64 path.
TEST(TrainIndexerGrad, Fp32MatchesF64) {
  SmallLayer L;
  LossOptions o;
  o.topk = 6;
  IndexerParams<double> gd;
  gd.resize(L.s);
  const LayerStats sd = indexer_loss_grad(L.s, L.p, L.inputs(), o, &gd);
  auto f32 = [](const Vec& v) { return std::vector<float>(v.begin(), v.end()); };
  IndexerParams<float> pf, gf;
  pf.wq = f32(L.p.wq); pf.wk = f32(L.p.wk); pf.ln_w = f32(L.p.ln_w); pf.ln_b = f32(L.p.ln_b); pf.wp = f32(L.p.wp);
  gf.resize(L.s);
  std::vector<float> x = f32(L.x), qr = f32(L.qr), mq = f32(L.mq), mk = f32(L.mk);
  LayerInputs<float> in;
  in.T = L.T; in.x = x.data(); in.qr = qr.data(); in.mq = mq.data(); in.mk = mk.data();
  in.H = L.H; in.dm = L.dm; in.scale = 0.4; in.rope = rope(); in.pos = L.pos.data();
  const LayerStats sf = indexer_loss_grad(L.s, pf, in, o, &gf);
  EXPECT_NEAR(sf.loss, sd.loss, 1e-5 * std::max(1.0, sd.loss));
  auto pd = gd.parts();
  auto pf_ = gf.parts();
  for (size_t k = 0; k < pd.size(); ++k) {
    double mx = 0, err = 0;
    for (size_t i = 0; i < pd[k]->size(); ++i) {
      mx = std::max(mx, std::fabs((*pd[k])[i]));
      err = std::max(err, std::fabs((*pd[k])[i] - double((*pf_[k])[i])));
    }
    EXPECT_LT(err, 1e-4 * mx) << "part " << k;
  }
}

}  // namespace
}  // namespace dsa::train

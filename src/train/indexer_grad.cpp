// Indexer forward + exact backward (indexer_grad.h; the math of each piece: docs/training.md).
#include "train/indexer_grad.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "backends/cpu/cpu_backend.h"
#include "core/error.h"

namespace dsa::train {

namespace {

constexpr int64_t kDi = 128;   // the indexer head dim (kIndexDim); RoPE on its first 64
constexpr int64_t kTileRows = 8, kTileCols = 16;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// C[i, j] = sum_d A[i, d] BT[d, j] for i < m <= 8, j < n (n a multiple of 16; BT padded with zeros).
// The hot loop of both the index scores and the main-attention target: an 8 x 16 register tile.
template <class F>
inline void tile_nt_impl(const F* A, int64_t lda, int64_t m, const F* BT, int64_t ldb, int64_t n, int64_t kd, F* C,
                         int64_t ldc) {
  F Ap[kTileRows * 192];
  DSA_CHECK(kd <= 192, "tile_nt: inner dim ", kd);
  for (int64_t i = 0; i < kTileRows; ++i)
    for (int64_t d = 0; d < kd; ++d) Ap[d * kTileRows + i] = i < m ? A[i * lda + d] : F(0);
  for (int64_t j0 = 0; j0 < n; j0 += kTileCols) {
    F acc[kTileRows][kTileCols] = {};
    for (int64_t d = 0; d < kd; ++d) {
      const F* b = BT + d * ldb + j0;
      const F* a = Ap + d * kTileRows;
      for (int64_t i = 0; i < kTileRows; ++i)
        for (int64_t jj = 0; jj < kTileCols; ++jj) acc[i][jj] += a[i] * b[jj];
    }
    for (int64_t i = 0; i < m; ++i) std::memcpy(C + i * ldc + j0, acc[i], sizeof(acc[i]));
  }
}

// dq[h, :] += sum_jj da[h, jj] k[idx[jj], :]  (two heads per pass, 128-wide accumulators)
template <class F>
inline void dq_impl(const F* da, int64_t ldda, int64_t Hi, const F* k, const int32_t* idx, int64_t m, F* dq) {
  for (int64_t h = 0; h < Hi; h += 2) {
    F a0[kDi] = {}, a1[kDi] = {};
    const F* d0 = da + h * ldda;
    const F* d1 = da + std::min(h + 1, Hi - 1) * ldda;
    const F s1 = h + 1 < Hi ? F(1) : F(0);
    for (int64_t jj = 0; jj < m; ++jj) {
      const F* kr = k + (idx ? idx[jj] : jj) * kDi;
      const F g0 = d0[jj], g1 = d1[jj] * s1;
      for (int64_t d = 0; d < kDi; ++d) { a0[d] += g0 * kr[d]; a1[d] += g1 * kr[d]; }
    }
    for (int64_t d = 0; d < kDi; ++d) dq[h * kDi + d] += a0[d];
    if (h + 1 < Hi)
      for (int64_t d = 0; d < kDi; ++d) dq[(h + 1) * kDi + d] += a1[d];
  }
}

// dk[idx[jj], :] += sum_h da[h, jj] q[h, :]
template <class F>
inline void dk_impl(const F* da, int64_t ldda, int64_t Hi, const F* q, const int32_t* idx, int64_t m, F* dk) {
  for (int64_t jj = 0; jj < m; ++jj) {
    F acc[kDi] = {};
    for (int64_t h = 0; h < Hi; ++h) {
      const F g = da[h * ldda + jj];
      const F* qh = q + h * kDi;
      for (int64_t d = 0; d < kDi; ++d) acc[d] += g * qh[d];
    }
    F* o = dk + (idx ? idx[jj] : jj) * kDi;
    for (int64_t d = 0; d < kDi; ++d) o[d] += acc[d];
  }
}

// fp32 instances compiled for AVX-512 / AVX2 / baseline, chosen at load time (the project builds
// for the baseline ISA, backends/cpu/simd.h); f64 (tests) uses the templates as they are.
#define DSA_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
DSA_CLONES void tile_nt_f32(const float* A, int64_t lda, int64_t m, const float* BT, int64_t ldb, int64_t n,
                            int64_t kd, float* C, int64_t ldc) {
  tile_nt_impl(A, lda, m, BT, ldb, n, kd, C, ldc);
}
DSA_CLONES void dq_f32(const float* da, int64_t ldda, int64_t Hi, const float* k, const int32_t* idx, int64_t m,
                       float* dq) {
  dq_impl(da, ldda, Hi, k, idx, m, dq);
}
DSA_CLONES void dk_f32(const float* da, int64_t ldda, int64_t Hi, const float* q, const int32_t* idx, int64_t m,
                       float* dk) {
  dk_impl(da, ldda, Hi, q, idx, m, dk);
}
#undef DSA_CLONES

template <class F>
void tile_nt(const F* A, int64_t lda, int64_t m, const F* BT, int64_t ldb, int64_t n, int64_t kd, F* C, int64_t ldc) {
  if constexpr (std::is_same_v<F, float>) tile_nt_f32(A, lda, m, BT, ldb, n, kd, C, ldc);
  else tile_nt_impl(A, lda, m, BT, ldb, n, kd, C, ldc);
}
template <class F>
void dq_acc(const F* da, int64_t ldda, int64_t Hi, const F* k, const int32_t* idx, int64_t m, F* dq) {
  if constexpr (std::is_same_v<F, float>) dq_f32(da, ldda, Hi, k, idx, m, dq);
  else dq_impl(da, ldda, Hi, k, idx, m, dq);
}
template <class F>
void dk_acc(const F* da, int64_t ldda, int64_t Hi, const F* q, const int32_t* idx, int64_t m, F* dk) {
  if constexpr (std::is_same_v<F, float>) dk_f32(da, ldda, Hi, q, idx, m, dk);
  else dk_impl(da, ldda, Hi, q, idx, m, dk);
}

// BT[d, j] = X[j, col0 + d] for d < kd, j < n, zero for n <= j < ldb.
template <class F>
std::vector<F> transpose_padded(const F* X, int64_t ldx, int64_t col0, int64_t n, int64_t kd, int64_t ldb) {
  std::vector<F> BT(static_cast<size_t>(kd * ldb), F(0));
#pragma omp parallel for if (n * kd > (1 << 16))
  for (int64_t d = 0; d < kd; ++d)
    for (int64_t j = 0; j < n; ++j) BT[size_t(d * ldb + j)] = X[j * ldx + col0 + d];
  return BT;
}

}  // namespace

template <class F>
MainAttention<F>::MainAttention(const F* mq, const F* mk, int64_t T, int64_t H, int64_t dm, double scale)
    : mq_(mq), T_(T), H_(H), dm_(dm), ld_(round_up(T, kTileCols)), scale_(scale) {
  DSA_CHECK(dm <= 192, "MainAttention: head dim ", dm);
  kT_.resize(size_t(H));
  for (int64_t h = 0; h < H; ++h) kT_[size_t(h)] = transpose_padded(mk, H * dm, h * dm, T, dm, ld_);
}

template <class F>
void MainAttention<F>::probs(int64_t r0, int64_t nr, F* S, F* Pd, const int32_t* U, const int64_t* nU, F* Pu) const {
  const int64_t ld = ld_, H = H_, nk = round_up(r0 + nr, kTileCols);
  std::fill(Pd, Pd + nr * ld, F(0));
  if (U) std::fill(Pu, Pu + nr * ld, F(0));
  for (int64_t h = 0; h < H; ++h) {  // one head's [8 x keys] scores at a time
    tile_nt(mq_ + (r0 * H + h) * dm_, H * dm_, nr, kT_[size_t(h)].data(), ld, nk, dm_, S, ld);
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t n = r0 + i + 1;
      F* st = S + i * ld;
      F mx = -std::numeric_limits<F>::infinity();
      for (int64_t j = 0; j < n; ++j) { st[j] *= F(scale_); mx = std::max(mx, st[j]); }
      F z = 0;
      for (int64_t j = 0; j < n; ++j) { st[j] = std::exp(st[j] - mx); z += st[j]; }
      F* pd = Pd + i * ld;
      const F iz = F(1) / (z * F(H));
      for (int64_t j = 0; j < n; ++j) pd[j] += st[j] * iz;
      if (U && nU[i] < n) {
        const int32_t* Ut = U + i * ld;
        F zu = 0;
        for (int64_t jj = 0; jj < nU[i]; ++jj) zu += st[Ut[jj]];
        const F izu = F(1) / (zu * F(H));
        F* pu = Pu + i * ld;
        for (int64_t jj = 0; jj < nU[i]; ++jj) pu[jj] += st[Ut[jj]] * izu;
      }
    }
  }
}

template <class F>
void IndexerParams<F>::resize(const IndexerShape& s) {
  wq.assign(static_cast<size_t>(s.n_wq()), F(0));
  wk.assign(static_cast<size_t>(s.n_wk()), F(0));
  ln_w.assign(static_cast<size_t>(s.Di), F(0));
  ln_b.assign(static_cast<size_t>(s.Di), F(0));
  wp.assign(static_cast<size_t>(s.n_wp()), F(0));
}

template <class F>
void linear_fwd(const F* x, const F* W, int64_t T, int64_t N, int64_t K, F* y) {
#pragma omp parallel for if (T * N * K > (1 << 18))
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      F acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x[t * K + k] * W[n * K + k];
      y[t * N + n] = acc;
    }
}

template <class F>
void linear_bwd_w(const F* dy, const F* x, int64_t T, int64_t N, int64_t K, F* dW) {
#pragma omp parallel for if (T * N * K > (1 << 18))
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t) {
      const F g = dy[t * N + n];
      if (g == F(0)) continue;
      for (int64_t k = 0; k < K; ++k) dW[n * K + k] += g * x[t * K + k];
    }
}

template <class F>
void layer_norm_fwd(const F* x, const F* g, const F* b, int64_t T, int64_t n, double eps, F* y, F* mean, F* rstd) {
  for (int64_t t = 0; t < T; ++t) {
    const F* r = x + t * n;
    F mu = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mu += r[i];
    mu /= F(n);
    for (int64_t i = 0; i < n; ++i) var += (r[i] - mu) * (r[i] - mu);
    var /= F(n);
    const F rs = F(1) / std::sqrt(var + F(eps));
    mean[t] = mu;
    rstd[t] = rs;
    for (int64_t i = 0; i < n; ++i) y[t * n + i] = (r[i] - mu) * rs * g[i] + b[i];
  }
}

template <class F>
void layer_norm_bwd(const F* dy, const F* x, const F* g, const F* mean, const F* rstd, int64_t T, int64_t n, F* dx,
                    F* dg, F* db) {
  for (int64_t t = 0; t < T; ++t) {
    const F* r = x + t * n;
    const F* d = dy + t * n;
    F s1 = 0, s2 = 0;  // mean(dxh), mean(dxh * xh)
    for (int64_t i = 0; i < n; ++i) {
      const F xh = (r[i] - mean[t]) * rstd[t], dxh = d[i] * g[i];
      s1 += dxh;
      s2 += dxh * xh;
      dg[i] += d[i] * xh;
      db[i] += d[i];
    }
    s1 /= F(n);
    s2 /= F(n);
    for (int64_t i = 0; i < n; ++i) {
      const F xh = (r[i] - mean[t]) * rstd[t];
      dx[t * n + i] = rstd[t] * (d[i] * g[i] - s1 - xh * s2);
    }
  }
}

template <class F>
void rope_half(F* x, int64_t T, int64_t nv, int64_t W, const float* table, const int32_t* pos, bool inverse) {
  for (int64_t t = 0; t < T; ++t) {
    const float* cs = table + int64_t(pos[t]) * 64;  // 32 x (cos, sin)
    for (int64_t v = 0; v < nv; ++v) {
      F* r = x + (t * nv + v) * W;
      for (int64_t i = 0; i < 32; ++i) {
        const F c = F(cs[2 * i]), s = inverse ? -F(cs[2 * i + 1]) : F(cs[2 * i + 1]);
        const F a = r[i], b = r[i + 32];
        r[i] = a * c - b * s;
        r[i + 32] = a * s + b * c;
      }
    }
  }
}

// Row form with keys given row-major (the piece the checks use); the layer loop calls the tile kernel
// on the transposed keys directly.
template <class F>
void index_scores_row(const F* q, const F* w, const F* k, int64_t Hi, int64_t Di, int64_t n, F c, F* a, F* I) {
  DSA_CHECK(Di == kDi, "index_scores_row: head dim ", Di);
  const int64_t ld = round_up(n, kTileCols);
  std::vector<F> kT = transpose_padded(k, Di, 0, n, Di, ld), at(static_cast<size_t>(Hi * ld));
  for (int64_t h = 0; h < Hi; h += kTileRows)
    tile_nt(q + h * Di, Di, std::min(kTileRows, Hi - h), kT.data(), ld, ld, Di, at.data() + h * ld, ld);
  for (int64_t j = 0; j < n; ++j) {
    F acc = 0;
    for (int64_t h = 0; h < Hi; ++h) {
      a[h * n + j] = at[size_t(h * ld + j)];
      acc += w[h] * std::max(at[size_t(h * ld + j)], F(0));
    }
    I[j] = c * acc;
  }
}

// The shared backward of a score row; a has row stride lda, da scratch [Hi, m].
template <class F>
static void score_row_bwd(const F* q, const F* w, const F* k, const F* a, int64_t lda, int64_t Hi, const int32_t* idx,
                          const F* dI, int64_t m, F c, F* dq, F* dw, F* dk, F* da) {
  for (int64_t h = 0; h < Hi; ++h) {
    const F* ah = a + h * lda;
    F sw = 0;
    const F wh = w[h];
    for (int64_t jj = 0; jj < m; ++jj) {
      const F av = ah[idx ? idx[jj] : jj];
      const F g = av > F(0) ? c * dI[jj] : F(0);
      sw += g * av;
      da[h * m + jj] = g * wh;
    }
    dw[h] += sw;
  }
  dq_acc(da, m, Hi, k, idx, m, dq);
  dk_acc(da, m, Hi, q, idx, m, dk);
}

template <class F>
void index_scores_row_bwd(const F* q, const F* w, const F* k, const F* a, int64_t Hi, int64_t Di, int64_t n,
                          const int32_t* idx, const F* dI, int64_t m, F c, F* dq, F* dw, F* dk, F* scratch) {
  DSA_CHECK(Di == kDi, "index_scores_row_bwd: head dim ", Di);
  score_row_bwd(q, w, k, a, n, Hi, idx, dI, m, c, dq, dw, dk, scratch);
}

template <class F>
double kl_row(const F* p, const F* I, int64_t m, F wscale, F* dI) {
  F mx = -std::numeric_limits<F>::infinity();
  for (int64_t j = 0; j < m; ++j) mx = std::max(mx, I[j]);
  F z = 0;
  for (int64_t j = 0; j < m; ++j) z += std::exp(I[j] - mx);
  const F lse = mx + std::log(z);
  double kl = 0;
  for (int64_t j = 0; j < m; ++j) {
    const F lq = I[j] - lse;
    if (p[j] > F(0)) kl += double(p[j]) * (std::log(double(p[j])) - double(lq));
    dI[j] = wscale * (std::exp(lq) - p[j]);
  }
  return kl;
}

template <class F>
LayerStats indexer_loss_grad(const IndexerShape& s, const IndexerParams<F>& p, const LayerInputs<F>& in,
                             const LossOptions& opt, IndexerParams<F>* grad) {
  const int64_t T = in.T, Hi = s.Hi, Di = s.Di, D = s.D, QL = s.QL, H = in.H, dm = in.dm;
  DSA_CHECK(Di == kDi && T > 0 && dm <= 192, "indexer_loss_grad: shapes");
  DSA_CHECK(!opt.sparse || opt.topk > 0, "indexer_loss_grad: the sparse stage needs topk > 0");
  const F c = F(1.0 / std::sqrt(double(Hi) * double(Di)));
  const double eps = 1e-6;  // k_norm (architecture.md §2.1)
  // ---- per-token forward ----
  std::vector<F> Q(static_cast<size_t>(T * Hi * Di)), Kl(static_cast<size_t>(T * Di)), Kn(static_cast<size_t>(T * Di)), mu(static_cast<size_t>(T)), rs(static_cast<size_t>(T)),
      Wt(static_cast<size_t>(T * Hi));
  linear_fwd(in.qr, p.wq.data(), T, Hi * Di, QL, Q.data());
  rope_half(Q.data(), T, Hi, Di, in.rope, in.pos, false);
  linear_fwd(in.x, p.wk.data(), T, Di, D, Kl.data());
  layer_norm_fwd(Kl.data(), p.ln_w.data(), p.ln_b.data(), T, Di, eps, Kn.data(), mu.data(), rs.data());
  std::vector<F> K = Kn;
  rope_half(K.data(), T, 1, Di, in.rope, in.pos, false);
  linear_fwd(in.x, p.wp.data(), T, Hi, D, Wt.data());
  const int64_t ld = round_up(T, kTileCols);
  const std::vector<F> KT = transpose_padded(K.data(), Di, 0, T, Di, ld);
  const MainAttention<F> main(in.mq, in.mk, T, H, dm, in.scale);

  const bool want_grad = grad != nullptr;
  std::vector<F> dQ(want_grad ? size_t(T * Hi * Di) : 0), dW(want_grad ? size_t(T * Hi) : 0);
  const int nth = omp_get_max_threads();
  std::vector<std::vector<F>> dKt(static_cast<size_t>(nth));
  std::vector<double> row_loss(static_cast<size_t>(T), 0.0), row_recall(static_cast<size_t>(T), -1.0);
  if (opt.dI_out) opt.dI_out->assign(static_cast<size_t>(T * T), 0.f);
  const int64_t ntile = (T + kTileRows - 1) / kTileRows;
  // Tiles in the order first, last, second, second last, ... dealt round-robin: balanced and
  // deterministic for a given thread count (resume == uninterrupted).
  std::vector<int64_t> order;
  for (int64_t lo = 0, hi = ntile - 1; lo <= hi; ++lo, --hi) {
    order.push_back(lo);
    if (hi != lo) order.push_back(hi);
  }
  const F wscale = F(1.0 / double(T));
  const int64_t ksel = opt.topk;
#pragma omp parallel num_threads(nth)
  {
    const int tid = omp_get_thread_num();
    std::vector<F>& dK = dKt[size_t(tid)];
    if (want_grad) dK.assign(static_cast<size_t>(T * Di), F(0));
    std::vector<F> A(static_cast<size_t>(kTileRows * Hi * ld)), I(static_cast<size_t>(kTileRows * ld)), Pd(static_cast<size_t>(kTileRows * ld)),
        Pu(static_cast<size_t>(kTileRows * ld)), S(static_cast<size_t>(kTileRows * ld)), IU(static_cast<size_t>(ld)), dIU(static_cast<size_t>(ld)), da(static_cast<size_t>(Hi * ld));
    std::vector<int32_t> U(static_cast<size_t>(kTileRows * ld)), top(static_cast<size_t>(std::max<int64_t>(ksel, 1)));
    std::vector<int64_t> nU(kTileRows);
    std::vector<float> If(static_cast<size_t>(ld));
#pragma omp for schedule(static, 1)
    for (int64_t oi = 0; oi < int64_t(order.size()); ++oi) {
      const int64_t r0 = order[size_t(oi)] * kTileRows, r1 = std::min(T, r0 + kTileRows), nr = r1 - r0;
      const int64_t nk = round_up(r1, kTileCols);  // keys 0..r1-1, padded
      // Index scores of each row: a[h, j] (kept for the backward) and I[j].
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t t = r0 + i, n = t + 1;
        F* at = A.data() + i * Hi * ld;
        for (int64_t h = 0; h < Hi; h += kTileRows)
          tile_nt(Q.data() + (t * Hi + h) * Di, Di, std::min(kTileRows, Hi - h), KT.data(), ld, nk, Di, at + h * ld, ld);
        F* It = I.data() + i * ld;
        for (int64_t j = 0; j < n; ++j) It[j] = 0;
        for (int64_t h = 0; h < Hi; ++h) {
          const F wh = Wt[size_t(t * Hi + h)];
          const F* ah = at + h * ld;
          for (int64_t j = 0; j < n; ++j) It[j] += wh * std::max(ah[j], F(0));
        }
        for (int64_t j = 0; j < n; ++j) It[j] *= c;
        // The loss set U_t: every visible key (dense), or the top-k of I_t (sparse, §9.3).
        int32_t* Ut = U.data() + i * ld;
        if (opt.sparse && n > ksel) {
          for (int64_t j = 0; j < n; ++j) If[size_t(j)] = float(It[j]);
          cpu::topk_select(If.data(), n, ksel, Ut);
          nU[size_t(i)] = ksel;
        } else {
          for (int64_t j = 0; j < n; ++j) Ut[j] = int32_t(j);
          nU[size_t(i)] = n;
        }
      }
      // Main-attention target, head by head over the tile (running per-head statistics, one head's
      // [8 x keys] scores at a time): Pd = dense head-averaged probabilities, Pu = the same over U_t.
      main.probs(r0, nr, S.data(), Pd.data(), opt.sparse ? U.data() : nullptr, nU.data(), Pu.data());
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t t = r0 + i, n = t + 1, m = nU[size_t(i)];
        const int32_t* Ut = U.data() + i * ld;
        const F* It = I.data() + i * ld;
        const F* pd = Pd.data() + i * ld;
        const bool restricted = m < n;
        const F* pu = restricted ? Pu.data() + i * ld : pd;
        for (int64_t jj = 0; jj < m; ++jj) IU[size_t(jj)] = It[Ut[jj]];
        row_loss[size_t(t)] = kl_row(pu, IU.data(), m, wscale, dIU.data());
        // Recall: the dense attention mass on the top-k of I (rows with more than k keys).
        if (ksel > 0 && n > ksel) {
          const int32_t* sel = Ut;
          if (!restricted) {
            for (int64_t j = 0; j < n; ++j) If[size_t(j)] = float(It[j]);
            cpu::topk_select(If.data(), n, ksel, top.data());
            sel = top.data();
          }
          double r = 0;
          for (int64_t jj = 0; jj < ksel; ++jj) r += double(pd[sel[jj]]);
          row_recall[size_t(t)] = r;
        }
        if (opt.dI_out)
          for (int64_t jj = 0; jj < m; ++jj) (*opt.dI_out)[size_t(t * T + Ut[jj])] = float(dIU[size_t(jj)]);
        if (want_grad)
          score_row_bwd(Q.data() + t * Hi * Di, Wt.data() + t * Hi, K.data(), A.data() + i * Hi * ld, ld, Hi,
                        restricted ? Ut : nullptr, dIU.data(), m, c, dQ.data() + t * Hi * Di, dW.data() + t * Hi,
                        dK.data(), da.data());
      }
    }
  }
  LayerStats st;
  for (int64_t t = 0; t < T; ++t) st.loss += row_loss[size_t(t)];
  st.loss /= double(T);
  for (int64_t t = 0; t < T; ++t)
    if (row_recall[size_t(t)] >= 0) { st.recall += row_recall[size_t(t)]; ++st.recall_rows; }
  st.recall = st.recall_rows ? st.recall / double(st.recall_rows) : -1.0;
  if (!want_grad) return st;
  // ---- per-token backward: RoPE^T, LayerNorm, the linears (inputs are constants) ----
  std::vector<F> dK(static_cast<size_t>(T * Di), F(0));
  for (int th = 0; th < nth; ++th)
    if (!dKt[size_t(th)].empty())
      for (int64_t i = 0; i < T * Di; ++i) dK[size_t(i)] += dKt[size_t(th)][size_t(i)];
  rope_half(dQ.data(), T, Hi, Di, in.rope, in.pos, true);
  linear_bwd_w(dQ.data(), in.qr, T, Hi * Di, QL, grad->wq.data());
  linear_bwd_w(dW.data(), in.x, T, Hi, D, grad->wp.data());
  rope_half(dK.data(), T, 1, Di, in.rope, in.pos, true);
  std::vector<F> dKl(static_cast<size_t>(T * Di));
  layer_norm_bwd(dK.data(), Kl.data(), p.ln_w.data(), mu.data(), rs.data(), T, Di, dKl.data(), grad->ln_w.data(),
                 grad->ln_b.data());
  linear_bwd_w(dKl.data(), in.x, T, Di, D, grad->wk.data());
  return st;
}

#define DSA_INST(F)                                                                                               \
  template struct IndexerParams<F>;                                                                               \
  template class MainAttention<F>;                                                                                \
  template LayerStats indexer_loss_grad<F>(const IndexerShape&, const IndexerParams<F>&, const LayerInputs<F>&,   \
                                           const LossOptions&, IndexerParams<F>*);                                \
  template void linear_fwd<F>(const F*, const F*, int64_t, int64_t, int64_t, F*);                                 \
  template void linear_bwd_w<F>(const F*, const F*, int64_t, int64_t, int64_t, F*);                               \
  template void layer_norm_fwd<F>(const F*, const F*, const F*, int64_t, int64_t, double, F*, F*, F*);             \
  template void layer_norm_bwd<F>(const F*, const F*, const F*, const F*, const F*, int64_t, int64_t, F*, F*, F*); \
  template void rope_half<F>(F*, int64_t, int64_t, int64_t, const float*, const int32_t*, bool);                   \
  template void index_scores_row<F>(const F*, const F*, const F*, int64_t, int64_t, int64_t, F, F*, F*);          \
  template void index_scores_row_bwd<F>(const F*, const F*, const F*, const F*, int64_t, int64_t, int64_t,         \
                                        const int32_t*, const F*, int64_t, F, F*, F*, F*, F*);                    \
  template double kl_row<F>(const F*, const F*, int64_t, F, F*);
DSA_INST(float)
DSA_INST(double)
#undef DSA_INST

}  // namespace dsa::train

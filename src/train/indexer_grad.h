#pragma once
// Lightning-indexer training math (architecture.md §4, §9; docs/training.md): the indexer forward
// and its exact hand-written backward, one template for fp32 (training) and float64 (the
// finite-difference checks in tests/test_train_indexer.cpp). The main model is frozen: its
// activations enter as constants (detached), so only the indexer parameters get gradients.
//
// Training forward (exact arithmetic, no FP8: the Hadamard rotation is orthonormal and applied to
// both q and k, so it leaves every q.k unchanged and is left out; FP8 only enters at export):
//   q[t,h]  = RoPE_half(wq_b qr[t])_h                (Hi heads x 128, RoPE on dims 0..63, §10.1)
//   k[t]    = RoPE_half(LayerNorm(wk x[t]; g, b))    (128, eps 1e-6)
//   w[t,h]  = (weights_proj x[t])_h
//   I[t,j]  = c * sum_h w[t,h] * relu(q[t,h].k[j]),  c = 1/sqrt(Hi) * 1/sqrt(128)   (§4 step 7)
// Loss of one layer (§9.2, §9.3), the mean over the window's rows t:
//   dense : KL(p_t || softmax(I_t)) over U_t = {0..t},
//           p_t = (1/H) sum_h softmax_j(scale * qm[t,h].km[j,h])  (the main attention, head-averaged)
//   sparse: U_t = top-k of I_t (all of 0..t when t < k); p and softmax(I) both restricted to U_t
//           (per-head main-attention softmax over U_t, as the sparse main attention computes it).
// Scores exist only as tiles of 8 query rows (never an [S x L] matrix per head).
#include <cstdint>
#include <vector>

namespace dsa::train {

struct IndexerShape {
  int64_t D = 0;    // hidden size (x)
  int64_t QL = 0;   // q_lora_rank (qr)
  int64_t Hi = 0;   // indexer heads
  int64_t Di = 128; // indexer head dim (RoPE on the first 64)
  int64_t n_wq() const { return Hi * Di * QL; }
  int64_t n_wk() const { return Di * D; }
  int64_t n_wp() const { return Hi * D; }
};

// One layer's indexer parameters (fp32 masters in training, f64 in the checks).
template <class F>
struct IndexerParams {
  std::vector<F> wq;          // [Hi*Di, QL]  indexer.wq_b
  std::vector<F> wk;          // [Di, D]      indexer.wk
  std::vector<F> ln_w, ln_b;  // [Di]         indexer.k_norm weight, bias
  std::vector<F> wp;          // [Hi, D]      indexer.weights_proj
  void resize(const IndexerShape& s);  // zero-filled
  // The five tensors in a fixed order (optimiser, checkpoints).
  std::vector<std::vector<F>*> parts() { return {&wq, &wk, &ln_w, &ln_b, &wp}; }
  std::vector<const std::vector<F>*> parts() const { return {&wq, &wk, &ln_w, &ln_b, &wp}; }
};

// Frozen inputs of one layer for one sequence of T tokens (constants for the indexer loss).
template <class F>
struct LayerInputs {
  int64_t T = 0;
  const F* x = nullptr;   // [T, D]  attn_norm output
  const F* qr = nullptr;  // [T, QL] q_norm(wq_a x), the indexer's query input (§10.6)
  const F* mq = nullptr;  // [T, H, dm] main-attention queries (RoPE applied)
  const F* mk = nullptr;  // [T, H, dm] main-attention keys (k_nope | k_pe)
  int64_t H = 0, dm = 0;
  double scale = 0;       // main softmax scale (mla_softmax_scale)
  const float* rope = nullptr;  // [max_pos, 32, 2] (cos, sin), rope_table()
  const int32_t* pos = nullptr; // [T] positions; key j of row t is visible iff j <= t
};

struct LossOptions {
  bool sparse = false;     // stage 2: KL on the indexer's own top-k set
  int64_t topk = 0;        // stage 2's k; also the k of the recall statistic (0: no recall)
  std::vector<float>* dI_out = nullptr;  // tests: [T, T] dL/dI (0 outside U_t)
};

struct LayerStats {
  double loss = 0;      // mean over rows of the row KL
  double recall = 0;    // mean over rows t >= topk of the dense p mass on the top-k of I (-1: none)
  int64_t recall_rows = 0;
};

// Loss (mean row KL) and, if grad is given, its exact gradient (added to *grad, which must be sized).
template <class F>
LayerStats indexer_loss_grad(const IndexerShape& s, const IndexerParams<F>& p, const LayerInputs<F>& in,
                             const LossOptions& opt, IndexerParams<F>* grad);

// The main attention's head-averaged probabilities (the target p of §9.2), computed tile by tile
// from per-head keys transposed once: no [S x L] matrix per head ever exists.
template <class F>
class MainAttention {
 public:
  // mq, mk [T, H, dm] (queries, keys), key j visible to row t iff j <= t.
  MainAttention(const F* mq, const F* mk, int64_t T, int64_t H, int64_t dm, double scale);
  int64_t ld() const { return ld_; }  // row stride of S, Pd, Pu, U (T rounded up to 16)
  // Rows r0 .. r0 + nr - 1 (nr <= 8): Pd[i, j] = (1/H) sum_h softmax_{j <= t}(scale q[t,h].k[j,h]).
  // If U is given, for rows with nU[i] < t + 1 also Pu[i, jj] = the same with each head's softmax
  // taken over the keys U[i * ld + jj], jj < nU[i] only. S: scratch [8, ld].
  void probs(int64_t r0, int64_t nr, F* S, F* Pd, const int32_t* U, const int64_t* nU, F* Pu) const;

 private:
  const F* mq_;
  int64_t T_, H_, dm_, ld_;
  double scale_;
  std::vector<std::vector<F>> kT_;  // per head [dm, ld]
};

// ---- the pieces (each checked against finite differences) --------------------------------------
// y[T, N] = x[T, K] W[N, K]^T ;  dW[N, K] += dy^T x
template <class F> void linear_fwd(const F* x, const F* W, int64_t T, int64_t N, int64_t K, F* y);
template <class F> void linear_bwd_w(const F* dy, const F* x, int64_t T, int64_t N, int64_t K, F* dW);
// LayerNorm over rows of n: y = (x - mean) * rstd * g + b; saves mean, rstd [T]
template <class F> void layer_norm_fwd(const F* x, const F* g, const F* b, int64_t T, int64_t n, double eps,
                                       F* y, F* mean, F* rstd);
// dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g;  dg += sum dy * xh; db += sum dy
template <class F> void layer_norm_bwd(const F* dy, const F* x, const F* g, const F* mean, const F* rstd,
                                       int64_t T, int64_t n, F* dx, F* dg, F* db);
// In-place half-split RoPE on dims [0, 64) of each of nv vectors of width W per token (§2.3):
// out[i] = x[i] cos - x[i+32] sin, out[i+32] = x[i] sin + x[i+32] cos. inverse=true applies the
// transpose (rotation by -theta): the backward.
template <class F> void rope_half(F* x, int64_t T, int64_t nv, int64_t W, const float* table, const int32_t* pos,
                                  bool inverse);
// One query row against n keys: a[h, j] = q[h].k[j] (q [Hi, Di], k [n, Di]), I[j] = c sum_h w[h] relu(a[h, j]).
template <class F> void index_scores_row(const F* q, const F* w, const F* k, int64_t Hi, int64_t Di, int64_t n,
                                         F c, F* a, F* I);
// Backward of index_scores_row for dI over the keys idx[0..m) (a the forward's [Hi, n] dots):
// dw[h] += c sum dI relu(a); dq[h] += sum da k; dk[idx] += sum_h da q, da = c dI w [a > 0].
template <class F> void index_scores_row_bwd(const F* q, const F* w, const F* k, const F* a, int64_t Hi,
                                             int64_t Di, int64_t n, const int32_t* idx, const F* dI, int64_t m,
                                             F c, F* dq, F* dw, F* dk, F* scratch);
// Row KL(p || softmax(I)) over m entries; dI = softmax(I) - p (times wscale). Returns the KL.
template <class F> double kl_row(const F* p, const F* I, int64_t m, F wscale, F* dI);

}  // namespace dsa::train

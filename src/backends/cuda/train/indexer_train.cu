// Indexer loss + exact gradient on the GPU (indexer_train.h; the math of each piece:
// docs/training.md, the CPU reference: train/indexer_grad.cpp).
#include "backends/cuda/train/indexer_train.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/train/f32_gemm.h"
#include "core/error.h"

namespace dsa::cuda {

namespace {

constexpr int kDi = 128;          // indexer head dim (RoPE on its first 64, §4)
constexpr int kRowThreads = 256;  // threads of the per-row kernels
constexpr int kMaxMainHeads = 128;
constexpr double kLnEps = 1e-6;   // indexer.k_norm (§2.1)

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---- block reductions (kRowThreads threads) ------------------------------------------------------
// Every thread gets op over the block's values; id is op's identity (0 for sums, -inf for max).
template <class V, class Op>
__device__ V block_reduce(V v, Op op, V id, V* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kRowThreads / 32 ? red[lane] : id;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const V r = red[0];
  __syncthreads();
  return r;
}
struct AddOp { template <class V> __device__ V operator()(V a, V b) const { return a + b; } };
struct MaxOp { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

// ---- frozen inputs ------------------------------------------------------------------------------
__global__ void bf16_to_f32_kernel(const uint16_t* __restrict__ in, float* __restrict__ out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf2f(in[i]);
}

// Per-head main keys km[t, h] = (k_nope[t, h] | k_pe[t]) (§3.2) from kv_up [T, H, nope + dv] and pe [T, ro].
__global__ void main_keys_kernel(const uint16_t* __restrict__ kv, const uint16_t* __restrict__ pe, int64_t T, int H,
                                 int nope, int dv, int ro, float* __restrict__ mk) {
  const int dm = nope + ro;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * H * dm) return;
  const int d = int(i % dm);
  const int64_t th = i / dm, t = th / H;
  mk[i] = bf2f(d < nope ? kv[th * (nope + dv) + d] : pe[t * ro + (d - nope)]);
}

// ---- per-token pieces ---------------------------------------------------------------------------
// Half-split RoPE on dims [0, 64) of nv vectors of width W per token (§2.3); inverse: rotation by -theta
// (the transpose, i.e. the backward).
__global__ void rope_half_kernel(float* __restrict__ x, int64_t T, int nv, int W, const float* __restrict__ table,
                                 const int32_t* __restrict__ pos, bool inverse) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * nv * 32) return;
  const int i = int(idx & 31);
  const int64_t tv = idx >> 5, t = tv / nv;
  const float* cs = table + int64_t(pos[t]) * 64;
  const float c = cs[2 * i], s = inverse ? -cs[2 * i + 1] : cs[2 * i + 1];
  float* r = x + tv * W;
  const float a = r[i], b = r[i + 32];
  r[i] = a * c - b * s;
  r[i + 32] = a * s + b * c;
}

// LayerNorm over rows of 128 (one warp per token): y = (x - mean) rstd g + b; saves mean, rstd.
__global__ void layer_norm_fwd_kernel(const float* __restrict__ x, const float* __restrict__ g,
                                      const float* __restrict__ b, int64_t T, float eps, float* __restrict__ y,
                                      float* __restrict__ mean, float* __restrict__ rstd) {
  const int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  float v[4];
  float s = 0;
  for (int k = 0; k < 4; ++k) { v[k] = x[t * kDi + lane + 32 * k]; s += v[k]; }
  const float mu = warp_sum(s) / float(kDi);
  float q = 0;
  for (int k = 0; k < 4; ++k) q += (v[k] - mu) * (v[k] - mu);
  const float rs = 1.0f / sqrtf(warp_sum(q) / float(kDi) + eps);
  for (int k = 0; k < 4; ++k) {
    const int i = lane + 32 * k;
    y[t * kDi + i] = (v[k] - mu) * rs * g[i] + b[i];
  }
  if (lane == 0) { mean[t] = mu; rstd[t] = rs; }
}

// LayerNorm backward per token: dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)), dxh = dy g; also dy xh
// per element (its column sums are dg; those of dy are db).
__global__ void layer_norm_bwd_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                      const float* __restrict__ g, const float* __restrict__ mean,
                                      const float* __restrict__ rstd, int64_t T, float* __restrict__ dx,
                                      float* __restrict__ dy_xh) {
  const int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (t >= T) return;
  float xh[4], d[4], s1 = 0, s2 = 0;
  for (int k = 0; k < 4; ++k) {
    const int i = lane + 32 * k;
    xh[k] = (x[t * kDi + i] - mean[t]) * rstd[t];
    d[k] = dy[t * kDi + i];
    const float dxh = d[k] * g[i];
    s1 += dxh;
    s2 += dxh * xh[k];
    dy_xh[t * kDi + i] = d[k] * xh[k];
  }
  s1 = warp_sum(s1) / float(kDi);
  s2 = warp_sum(s2) / float(kDi);
  for (int k = 0; k < 4; ++k) {
    const int i = lane + 32 * k;
    dx[t * kDi + i] = rstd[t] * (d[k] * g[i] - s1 - xh[k] * s2);
  }
}

// out[c] = sum_r a[r, c] (one block per column, a fixed order: deterministic).
__global__ void col_sum_kernel(const float* __restrict__ a, int64_t rows, int cols, float* __restrict__ out) {
  __shared__ float red[32];
  const int c = blockIdx.x;
  float s = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kRowThreads) s += a[r * cols + c];
  s = block_reduce(s, AddOp{}, 0.0f, red);
  if (threadIdx.x == 0) out[c] = s;
}

// ---- one tile of query rows [r0, r0 + R) -------------------------------------------------------
// I[i, j] = c sum_h w[t, h] relu(A[(i Hi + h), j]) for j <= t = r0 + i (-inf beyond, up to ld).
__global__ void index_scores_kernel(const float* __restrict__ A, int64_t ld, int Hi, const float* __restrict__ W,
                                    int64_t r0, float c, float* __restrict__ I) {
  const int64_t i = blockIdx.y, t = r0 + i, j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= ld) return;
  if (j > t) { I[i * ld + j] = -INFINITY; return; }
  const float* a = A + i * Hi * ld + j;
  const float* w = W + t * Hi;
  float acc = 0;
  for (int h = 0; h < Hi; ++h) acc += w[h] * fmaxf(a[h * ld], 0.0f);
  I[i * ld + j] = c * acc;
}

// sel[i, j] = 1 for the top-k positions of row i (rows whose top-k list is given; -1 entries skipped).
__global__ void select_mask_kernel(const int32_t* __restrict__ topk, int64_t rows, int64_t k, uint8_t* __restrict__ sel,
                                   int64_t ld) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * k) return;
  const int32_t j = topk[idx];
  if (j >= 0) sel[(idx / k) * ld + j] = 1;
}

// A row t has a restricted set U_t (the top-k of I_t) iff it sees more than k keys (§9.3).
__device__ __forceinline__ bool has_topk(int64_t t, int64_t ksel) { return ksel > 0 && t + 1 > ksel; }

// The target of row i (§9.2): head h's scores S[(h R + i) ld + j] (scale applied). Per head the max m_h,
// z_h = sum_{j <= t} exp(S - m_h) and zu_h = the same over U_t. P[i, j] = sum_h exp(S_h[j] - m_h) / (H z_h)
// (dense), or in the sparse stage on rows with a restricted set: the same with zu_h, on U_t only (each
// head's softmax over U_t, as the sparse main attention computes it). recall[t] = dense mass on the top-k
// = sum_h zu_h / (H z_h), or -1 for rows without a top-k.
__global__ void __launch_bounds__(kRowThreads) target_kernel(const float* __restrict__ S, int64_t ld, int64_t R, int H,
                                                             int64_t r0, const uint8_t* __restrict__ sel,
                                                             int64_t ksel, bool sparse, float* __restrict__ P,
                                                             double* __restrict__ recall) {
  __shared__ float red[32];
  __shared__ float hmax[kMaxMainHeads], hinv[kMaxMainHeads];
  const int64_t i = blockIdx.x, t = r0 + i, n = t + 1;
  const bool topk = has_topk(t, ksel), restricted = sparse && topk;
  const uint8_t* su = sel + i * ld;
  double rec = 0;
  for (int h = 0; h < H; ++h) {
    const float* s = S + (h * R + i) * ld;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += kRowThreads) mx = fmaxf(mx, s[j]);
    mx = block_reduce(mx, MaxOp{}, -INFINITY, red);
    float z = 0, zu = 0;
    for (int64_t j = threadIdx.x; j < n; j += kRowThreads) {
      const float e = expf(s[j] - mx);
      z += e;
      if (topk && su[j]) zu += e;
    }
    z = block_reduce(z, AddOp{}, 0.0f, red);
    if (topk) zu = block_reduce(zu, AddOp{}, 0.0f, red);
    if (threadIdx.x == 0) {
      hmax[h] = mx;
      hinv[h] = 1.0f / ((restricted ? zu : z) * float(H));
      rec += double(zu) / double(z);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < ld; j += kRowThreads) {
    float acc = 0;
    if (j < n && (!restricted || su[j]))
      for (int h = 0; h < H; ++h) acc += expf(S[(h * R + i) * ld + j] - hmax[h]) * hinv[h];
    P[i * ld + j] = acc;
  }
  if (threadIdx.x == 0) recall[t] = topk ? rec / double(H) : -1.0;
}

// Row KL(p || softmax(I)) over the row's set (U_t in the sparse stage, else 0..t) and
// dI = wscale (softmax(I) - p) there, 0 elsewhere (every column up to ld).
__global__ void __launch_bounds__(kRowThreads) kl_kernel(const float* __restrict__ I, const float* __restrict__ P,
                                                         const uint8_t* __restrict__ sel, int64_t ld, int64_t r0,
                                                         int64_t ksel, bool sparse, float wscale,
                                                         float* __restrict__ dI, double* __restrict__ row_loss) {
  __shared__ float red[32];
  __shared__ double redd[32];
  const int64_t i = blockIdx.x, t = r0 + i, n = t + 1;
  const bool restricted = sparse && has_topk(t, ksel);
  const float* It = I + i * ld;
  const float* pt = P + i * ld;
  const uint8_t* su = sel + i * ld;
  auto in_set = [&](int64_t j) { return j < n && (!restricted || su[j]); };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += kRowThreads)
    if (in_set(j)) mx = fmaxf(mx, It[j]);
  mx = block_reduce(mx, MaxOp{}, -INFINITY, red);
  float z = 0;
  for (int64_t j = threadIdx.x; j < n; j += kRowThreads)
    if (in_set(j)) z += expf(It[j] - mx);
  z = block_reduce(z, AddOp{}, 0.0f, red);
  const float lse = mx + logf(z);
  double kl = 0;
  for (int64_t j = threadIdx.x; j < ld; j += kRowThreads) {
    float g = 0;
    if (in_set(j)) {
      const float lq = It[j] - lse, p = pt[j];
      if (p > 0.0f) kl += double(p) * (log(double(p)) - double(lq));
      g = wscale * (expf(lq) - p);
    }
    dI[i * ld + j] = g;
  }
  kl = block_reduce(kl, AddOp{}, 0.0, redd);
  if (threadIdx.x == 0) row_loss[t] = kl;
}

// Backward of the ReLU head sum, one block per row (i, h) of A: g = c dI [A > 0] (keys j <= t),
// dw[t, h] = sum_j g A, and A <- g w[t, h] = dA in place (0 for j > t), keys j < nk.
__global__ void __launch_bounds__(kRowThreads) index_bwd_kernel(float* __restrict__ A, int64_t ld, int Hi,
                                                                const float* __restrict__ dI,
                                                                const float* __restrict__ W, int64_t r0, int64_t nk,
                                                                float c, float* __restrict__ dW) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x, i = row / Hi, t = r0 + i;
  const int h = int(row % Hi);
  const float w = W[t * Hi + h];
  float* a = A + row * ld;
  const float* d = dI + i * ld;
  float sw = 0;
  for (int64_t j = threadIdx.x; j < nk; j += kRowThreads) {
    const float av = a[j];
    const float g = (j <= t && av > 0.0f) ? c * d[j] : 0.0f;
    sw += g * av;
    a[j] = g * w;
  }
  sw = block_reduce(sw, AddOp{}, 0.0f, red);
  if (threadIdx.x == 0) dW[t * Hi + h] = sw;
}

enum Phase { kInputs, kLinears, kIndexFwd, kTarget, kLoss, kIndexBwd, kLinearsBwd, kTransfers, kEnd, kPhases = kEnd };
const char* const kPhaseNames[kPhases] = {"inputs", "linears", "index fwd", "target", "loss", "index bwd",
                                          "linears bwd", "transfers"};

// Device fp32 inputs of one layer.
struct DevInputs {
  int64_t T = 0, H = 0, dm = 0;
  double scale = 0;
  const float *x = nullptr, *qr = nullptr, *mq = nullptr, *mk = nullptr, *rope = nullptr;
  const int32_t* pos = nullptr;
};

}  // namespace

struct IndexerTrainer::Impl {
  CudaBackend& be;
  train::IndexerShape s;
  TrainPrecision prec;
  F32Blas blas;
  Tensor rope;                     // device copy of the host rope table
  const float* rope_src = nullptr;
  int64_t rope_rows = 0;
  std::vector<std::pair<int, cudaEvent_t>> marks;
  std::vector<cudaEvent_t> spare;
  double acc[kPhases] = {};
  bool profiling = false, poison = false;

  Impl(CudaBackend& b, const train::IndexerShape& sh, TrainPrecision p) : be(b), s(sh), prec(p) {}
  ~Impl() {
    for (auto& m : marks) cudaEventDestroy(m.second);
    for (cudaEvent_t e : spare) cudaEventDestroy(e);
  }

  void mark(int phase) {
    if (!profiling) return;
    cudaEvent_t e;
    if (spare.empty()) DSA_CUDA_CHECK(cudaEventCreate(&e));
    else { e = spare.back(); spare.pop_back(); }
    DSA_CUDA_CHECK(cudaEventRecord(e, cudaStreamPerThread));
    marks.push_back({phase, e});
  }
  // After a synchronising call: the time between consecutive marks goes to the earlier mark's phase.
  void settle() {
    for (size_t k = 0; k + 1 < marks.size(); ++k) {
      float ms = 0;
      DSA_CUDA_CHECK(cudaEventElapsedTime(&ms, marks[k].second, marks[k + 1].second));
      if (marks[k].first < kPhases) acc[marks[k].first] += ms * 1e-3;
    }
    for (auto& m : marks) spare.push_back(m.second);
    marks.clear();
  }

  const float* rope_table(const float* host, int64_t rows) {
    if (host != rope_src || rows != rope_rows) {
      rope = be.alloc(DType::F32, {rows, 64});
      DSA_CUDA_CHECK(cudaMemcpy(rope.data, host, size_t(rows) * 64 * sizeof(float), cudaMemcpyHostToDevice));
      rope_src = host;
      rope_rows = rows;
    }
    return rope.ptr<float>();
  }

  Tensor upload(const std::vector<float>& v) {
    Tensor d = be.alloc(DType::F32, {int64_t(v.size())});
    DSA_CUDA_CHECK(cudaMemcpyAsync(d.data, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice,
                                   cudaStreamPerThread));
    return d;
  }

  void gemm(F32Gemm g, bool big) {
    g.tf32 = big && prec == TrainPrecision::Tf32;
    blas.run(g);
  }

  train::LayerStats run(const DevInputs& in, const train::IndexerParams<float>& p, const train::LossOptions& opt,
                        train::IndexerParams<float>* grad, int64_t R);
};

IndexerTrainer::IndexerTrainer(CudaBackend& be, const train::IndexerShape& s, TrainPrecision prec)
    : impl_(std::make_unique<Impl>(be, s, prec)) {}
IndexerTrainer::~IndexerTrainer() = default;
void IndexerTrainer::set_poison(bool on) { impl_->poison = on; }

int64_t IndexerTrainer::tile_rows(int64_t T) const {
  if (tile_rows_override_ > 0) return std::min(tile_rows_override_, T);
  // The index dots of a tile, [R * Hi, ld] floats, within ~512 MiB; at least 16 rows.
  const int64_t budget = int64_t(128) << 20, ld = round_up(T, 4);
  return std::clamp<int64_t>(budget / (impl_->s.Hi * ld), 16, std::max<int64_t>(T, 16));
}

std::vector<std::pair<std::string, double>> IndexerTrainer::take_profile() {
  std::vector<std::pair<std::string, double>> r;
  for (int k = 0; k < kPhases; ++k) {
    r.push_back({kPhaseNames[k], impl_->acc[k]});
    impl_->acc[k] = 0;
  }
  return r;
}

train::LayerStats IndexerTrainer::loss_grad(const AttentionTap& a, const ModelConfig& cfg, const float* rope,
                                            int64_t rope_rows, const train::IndexerParams<float>& p,
                                            const train::LossOptions& opt, train::IndexerParams<float>* grad) {
  Impl& m = *impl_;
  m.profiling = profiling_;
  const Batch& b = *a.batch;
  DSA_CHECK(b.seqs.size() == 1 && b.seqs[0].start_pos == 0, "IndexerTrainer: one sequence prefilled from position 0");
  for (const Tensor* t : {a.x, a.qr, a.q, a.kv_up, a.pe})
    DSA_CHECK(t->dtype == DType::BF16 && t->device == Device::CUDA, "IndexerTrainer: expected a BF16 CUDA tensor, found ",
              t->str());
  const int64_t T = a.x->dim(0), H = cfg.num_attention_heads, NOPE = cfg.qk_nope_head_dim, RO = cfg.qk_rope_head_dim,
                DV = cfg.v_head_dim, dm = NOPE + RO;
  DSA_CHECK(a.kv_up->dim(0) == T && a.pe->dim(0) == T, "IndexerTrainer: the context must be the window itself");
  m.mark(kInputs);
  auto to_f32 = [&](const Tensor& t) {
    Tensor d = m.be.alloc(DType::F32, t.shape);
    const int64_t n = t.numel();
    if (n) bf16_to_f32_kernel<<<cdiv(n, 256), 256>>>(t.ptr<uint16_t>(), d.ptr<float>(), n);
    DSA_LAUNCH_CHECK();
    return d;
  };
  const Tensor x = to_f32(*a.x), qr = to_f32(*a.qr), mq = to_f32(*a.q);
  Tensor mk = m.be.alloc(DType::F32, {T, H, dm});
  main_keys_kernel<<<cdiv(T * H * dm, 256), 256>>>(a.kv_up->ptr<uint16_t>(), a.pe->ptr<uint16_t>(), T, int(H), int(NOPE),
                                                   int(DV), int(RO), mk.ptr<float>());
  DSA_LAUNCH_CHECK();
  Tensor pos = m.be.alloc(DType::I32, {T});
  DSA_CUDA_CHECK(cudaMemcpyAsync(pos.data, b.positions.data(), size_t(T) * 4, cudaMemcpyHostToDevice, cudaStreamPerThread));
  DevInputs in;
  in.T = T; in.H = H; in.dm = dm; in.scale = cfg.mla_softmax_scale();
  in.x = x.ptr<float>(); in.qr = qr.ptr<float>(); in.mq = mq.ptr<float>(); in.mk = mk.ptr<float>();
  in.rope = m.rope_table(rope, rope_rows);
  in.pos = pos.ptr<int32_t>();
  return m.run(in, p, opt, grad, tile_rows(T));
}

train::LayerStats IndexerTrainer::loss_grad(const train::LayerInputs<float>& h, int64_t rope_rows,
                                            const train::IndexerParams<float>& p, const train::LossOptions& opt,
                                            train::IndexerParams<float>* grad) {
  Impl& m = *impl_;
  m.profiling = profiling_;
  const int64_t T = h.T;
  auto up = [&](const float* src, int64_t n) {
    Tensor d = m.be.alloc(DType::F32, {n});
    DSA_CUDA_CHECK(cudaMemcpy(d.data, src, size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
    return d;
  };
  const Tensor x = up(h.x, T * m.s.D), qr = up(h.qr, T * m.s.QL), mq = up(h.mq, T * h.H * h.dm),
               mk = up(h.mk, T * h.H * h.dm);
  Tensor pos = m.be.alloc(DType::I32, {T});
  DSA_CUDA_CHECK(cudaMemcpy(pos.data, h.pos, size_t(T) * 4, cudaMemcpyHostToDevice));
  DevInputs in;
  in.T = T; in.H = h.H; in.dm = h.dm; in.scale = h.scale;
  in.x = x.ptr<float>(); in.qr = qr.ptr<float>(); in.mq = mq.ptr<float>(); in.mk = mk.ptr<float>();
  in.rope = m.rope_table(h.rope, rope_rows);
  in.pos = pos.ptr<int32_t>();
  return m.run(in, p, opt, grad, tile_rows(T));
}

train::LayerStats IndexerTrainer::Impl::run(const DevInputs& in, const train::IndexerParams<float>& p,
                                            const train::LossOptions& opt, train::IndexerParams<float>* grad,
                                            int64_t R) {
  const int64_t T = in.T, Hi = s.Hi, D = s.D, QL = s.QL, H = in.H, dm = in.dm, HD = Hi * kDi;
  DSA_CHECK(s.Di == kDi && T > 0 && H >= 1 && H <= kMaxMainHeads && R >= 1, "IndexerTrainer: shapes");
  DSA_CHECK(!opt.sparse || opt.topk > 0, "IndexerTrainer: the sparse stage needs topk > 0");
  const float c = float(1.0 / std::sqrt(double(Hi) * double(kDi)));
  const int64_t ksel = opt.topk, ld = round_up(T, 4);  // ld: row stride of every [rows x keys] buffer
  auto scratch = [&](DType t, int64_t n) {
    Tensor d = be.alloc(t, {std::max<int64_t>(n, 1)});
    if (poison) DSA_CUDA_CHECK(cudaMemsetAsync(d.data, 0xff, d.nbytes(), cudaStreamPerThread));
    return d;
  };
  auto f32 = [&](int64_t n) { return scratch(DType::F32, n); };

  // ---- parameters up, per-token forward (fp32 GEMMs: ~2% of the step's FLOPs) ----
  mark(kTransfers);
  const Tensor wq = upload(p.wq), wk = upload(p.wk), lnw = upload(p.ln_w), lnb = upload(p.ln_b), wp = upload(p.wp);
  std::vector<int32_t> iota_h(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) iota_h[size_t(t)] = int32_t(t);
  Tensor iota = be.alloc(DType::I32, {T});  // row t sees keys 0..t: the top-k's row lengths (iota + 1)
  DSA_CUDA_CHECK(cudaMemcpy(iota.data, iota_h.data(), size_t(T) * 4, cudaMemcpyHostToDevice));
  mark(kLinears);
  Tensor Q = f32(T * HD), Kl = f32(T * kDi), K = f32(T * kDi), mu = f32(T), rs = f32(T), Wt = f32(T * Hi);
  {
    F32Gemm g;
    g.a = in.qr; g.lda = QL; g.b = wq.ptr<float>(); g.ldb = QL; g.trans_b = true;
    g.d = Q.ptr<float>(); g.ldd = HD; g.M = T; g.N = HD; g.K = QL;
    gemm(g, false);
    g.a = in.x; g.lda = D; g.b = wk.ptr<float>(); g.ldb = D; g.d = Kl.ptr<float>(); g.ldd = kDi; g.N = kDi; g.K = D;
    gemm(g, false);
    g.b = wp.ptr<float>(); g.d = Wt.ptr<float>(); g.ldd = Hi; g.N = Hi;
    gemm(g, false);
  }
  rope_half_kernel<<<cdiv(T * Hi * 32, 256), 256>>>(Q.ptr<float>(), T, int(Hi), kDi, in.rope, in.pos, false);
  DSA_LAUNCH_CHECK();
  layer_norm_fwd_kernel<<<cdiv(T, 8), 256>>>(Kl.ptr<float>(), lnw.ptr<float>(), lnb.ptr<float>(), T, float(kLnEps),
                                             K.ptr<float>(), mu.ptr<float>(), rs.ptr<float>());
  DSA_LAUNCH_CHECK();
  rope_half_kernel<<<cdiv(T * 32, 256), 256>>>(K.ptr<float>(), T, 1, kDi, in.rope, in.pos, false);
  DSA_LAUNCH_CHECK();

  // ---- tiles of query rows ----
  const bool want_grad = grad != nullptr;
  Tensor dQ = f32(T * HD), dK = f32(T * kDi), dW = f32(T * Hi);
  Tensor row_loss = f32(2 * T), row_recall = f32(2 * T);  // doubles
  Tensor A = f32(R * Hi * ld), S = f32(H * R * ld), I = f32(R * ld), P = f32(R * ld), dI = f32(R * ld);
  Tensor sel = scratch(DType::U8, R * ld), top = scratch(DType::I32, T * ksel);
  DSA_CUDA_CHECK(cudaMemsetAsync(dK.data, 0, size_t(T) * kDi * 4, cudaStreamPerThread));
  if (opt.dI_out) opt.dI_out->assign(static_cast<size_t>(T * T), 0.f);
  const float wscale = float(1.0 / double(T));
  for (int64_t r0 = 0; r0 < T; r0 += R) {
    const int64_t r1 = std::min(T, r0 + R), nr = r1 - r0, nk = r1;  // keys 0..r1-1
    mark(kIndexFwd);
    {  // A[(i, h), j] = q[r0 + i, h] . k[j]: the tile's rows of q are one [nr * Hi, 128] matrix
      F32Gemm g;
      g.a = Q.ptr<float>() + r0 * HD; g.lda = kDi;
      g.b = K.ptr<float>(); g.ldb = kDi; g.trans_b = true;
      g.d = A.ptr<float>(); g.ldd = ld; g.M = nr * Hi; g.N = nk; g.K = kDi;
      gemm(g, true);
    }
    index_scores_kernel<<<dim3(cdiv(ld, 256), unsigned(nr)), 256>>>(A.ptr<float>(), ld, int(Hi), Wt.ptr<float>(), r0,
                                                                     c, I.ptr<float>());
    DSA_LAUNCH_CHECK();
    // The top-k set of each row that sees more than k keys (§9.3; ties to the lower index, as the CPU).
    const int64_t i0 = ksel > 0 ? std::clamp<int64_t>(ksel - r0, 0, nr) : nr;
    DSA_CUDA_CHECK(cudaMemsetAsync(sel.data, 0, size_t(nr * ld), cudaStreamPerThread));
    if (i0 < nr) {
      be.launch_topk(I.ptr<float>() + i0 * ld, ld, iota.ptr<int32_t>(), 1, r0 + i0, nr - i0, ksel, top.ptr<int32_t>());
      select_mask_kernel<<<cdiv((nr - i0) * ksel, 256), 256>>>(top.ptr<int32_t>() + (r0 + i0) * ksel, nr - i0, ksel,
                                                               sel.ptr<uint8_t>() + i0 * ld, ld);
      DSA_LAUNCH_CHECK();
    }
    mark(kTarget);
    {  // S[h](i, j) = scale q_m[r0 + i, h] . k_m[j, h], one batch entry per main head
      F32Gemm g;
      g.a = in.mq + r0 * H * dm; g.lda = H * dm; g.stride_a = dm;
      g.b = in.mk; g.ldb = H * dm; g.stride_b = dm; g.trans_b = true;
      g.d = S.ptr<float>(); g.ldd = ld; g.stride_d = nr * ld;
      g.M = nr; g.N = nk; g.K = dm; g.batch = H; g.alpha = float(in.scale);
      gemm(g, true);
    }
    target_kernel<<<unsigned(nr), kRowThreads>>>(S.ptr<float>(), ld, nr, int(H), r0, sel.ptr<uint8_t>(), ksel,
                                                 opt.sparse, P.ptr<float>(), row_recall.ptr<double>());
    DSA_LAUNCH_CHECK();
    mark(kLoss);
    kl_kernel<<<unsigned(nr), kRowThreads>>>(I.ptr<float>(), P.ptr<float>(), sel.ptr<uint8_t>(), ld, r0, ksel,
                                             opt.sparse, wscale, dI.ptr<float>(), row_loss.ptr<double>());
    DSA_LAUNCH_CHECK();
    if (opt.dI_out)
      DSA_CUDA_CHECK(cudaMemcpy2D(opt.dI_out->data() + r0 * T, size_t(T) * 4, dI.data, size_t(ld) * 4,
                                  size_t(nk) * 4, size_t(nr), cudaMemcpyDeviceToHost));
    if (!want_grad) continue;
    mark(kIndexBwd);
    index_bwd_kernel<<<unsigned(nr * Hi), kRowThreads>>>(A.ptr<float>(), ld, int(Hi), dI.ptr<float>(),
                                                         Wt.ptr<float>(), r0, nk, c, dW.ptr<float>());
    DSA_LAUNCH_CHECK();
    {  // dq[(i, h)] = sum_j dA[(i, h), j] k[j]
      F32Gemm g;
      g.a = A.ptr<float>(); g.lda = ld;
      g.b = K.ptr<float>(); g.ldb = kDi;
      g.d = dQ.ptr<float>() + r0 * HD; g.ldd = kDi; g.M = nr * Hi; g.N = kDi; g.K = nk;
      gemm(g, true);
    }
    {  // dk[j] += sum_(i, h) dA[(i, h), j] q[r0 + i, h]
      F32Gemm g;
      g.a = A.ptr<float>(); g.lda = ld; g.trans_a = true;
      g.b = Q.ptr<float>() + r0 * HD; g.ldb = kDi;
      g.d = dK.ptr<float>(); g.ldd = kDi; g.M = nk; g.N = kDi; g.K = nr * Hi; g.beta = 1.f;
      gemm(g, true);
    }
  }

  // ---- per-token backward: RoPE^T, LayerNorm, the weight gradients (inputs are constants) ----
  train::IndexerParams<float> gd;
  Tensor gwq, gwk, gwp, glnw, glnb;
  if (want_grad) {
    mark(kLinearsBwd);
    rope_half_kernel<<<cdiv(T * Hi * 32, 256), 256>>>(dQ.ptr<float>(), T, int(Hi), kDi, in.rope, in.pos, true);
    DSA_LAUNCH_CHECK();
    rope_half_kernel<<<cdiv(T * 32, 256), 256>>>(dK.ptr<float>(), T, 1, kDi, in.rope, in.pos, true);
    DSA_LAUNCH_CHECK();
    Tensor dKl = f32(T * kDi), dyxh = f32(T * kDi);
    layer_norm_bwd_kernel<<<cdiv(T, 8), 256>>>(dK.ptr<float>(), Kl.ptr<float>(), lnw.ptr<float>(), mu.ptr<float>(),
                                               rs.ptr<float>(), T, dKl.ptr<float>(), dyxh.ptr<float>());
    DSA_LAUNCH_CHECK();
    glnw = f32(kDi);
    glnb = f32(kDi);
    col_sum_kernel<<<kDi, kRowThreads>>>(dyxh.ptr<float>(), T, kDi, glnw.ptr<float>());
    DSA_LAUNCH_CHECK();
    col_sum_kernel<<<kDi, kRowThreads>>>(dK.ptr<float>(), T, kDi, glnb.ptr<float>());
    DSA_LAUNCH_CHECK();
    gwq = f32(HD * QL);
    gwk = f32(kDi * D);
    gwp = f32(Hi * D);
    F32Gemm g;  // dW[n, k] = sum_t dy[t, n] x[t, k]
    g.a = dQ.ptr<float>(); g.lda = HD; g.trans_a = true;
    g.b = in.qr; g.ldb = QL;
    g.d = gwq.ptr<float>(); g.ldd = QL; g.M = HD; g.N = QL; g.K = T;
    gemm(g, false);
    g.a = dKl.ptr<float>(); g.lda = kDi; g.b = in.x; g.ldb = D; g.d = gwk.ptr<float>(); g.ldd = D; g.M = kDi; g.N = D;
    gemm(g, false);
    g.a = dW.ptr<float>(); g.lda = Hi; g.d = gwp.ptr<float>(); g.M = Hi;
    gemm(g, false);
  }
  mark(kTransfers);
  std::vector<double> loss_h(static_cast<size_t>(T)), recall_h(static_cast<size_t>(T));
  DSA_CUDA_CHECK(cudaMemcpy(loss_h.data(), row_loss.data, size_t(T) * 8, cudaMemcpyDeviceToHost));
  DSA_CUDA_CHECK(cudaMemcpy(recall_h.data(), row_recall.data, size_t(T) * 8, cudaMemcpyDeviceToHost));
  if (want_grad) {
    std::vector<float> tmp;
    auto add_down = [&](const Tensor& d, std::vector<float>& host) {
      tmp.resize(host.size());
      DSA_CUDA_CHECK(cudaMemcpy(tmp.data(), d.data, tmp.size() * sizeof(float), cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < host.size(); ++i) host[i] += tmp[i];
    };
    add_down(gwq, grad->wq);
    add_down(gwk, grad->wk);
    add_down(glnw, grad->ln_w);
    add_down(glnb, grad->ln_b);
    add_down(gwp, grad->wp);
  }
  mark(kEnd);
  be.check_errors();
  settle();
  train::LayerStats st;
  for (int64_t t = 0; t < T; ++t) st.loss += loss_h[size_t(t)];
  st.loss /= double(T);
  for (int64_t t = 0; t < T; ++t)
    if (recall_h[size_t(t)] >= 0) { st.recall += recall_h[size_t(t)]; ++st.recall_rows; }
  st.recall = st.recall_rows ? st.recall / double(st.recall_rows) : -1.0;
  return st;
}

}  // namespace dsa::cuda

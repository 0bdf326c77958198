// MLA prefill on CUDA: attention in the MHA form (per-head 192-dim keys from kv_up = wkv_b(kv),
// 128-dim values), dense causal or over each token's top-k rows. Numerics as the CPU reference:
// bf16(q.k), bf16 scale multiply, fp32 softmax, probabilities rounded to bf16 after
// normalisation, fp32 P.V rounded to bf16 (architecture.md §3 prefill).
#include <cfloat>

#include "backends/cuda/cuda_backend.h"

namespace dsa::cuda {

namespace {

// ---- prefill (MHA form) -----------------------------------------------------------------------
// One block of 4 warps per (token, head); each warp takes every 4th candidate, its lanes split the
// 192 (q.k) and 128 (p.v) dimensions.
struct MhaP {
  const uint16_t* q; int64_t H, DQK, NOPE, DV;   // q [T, H, DQK]
  const uint16_t* kv; const uint16_t* pe;        // kv_up [NC, H, NOPE + DV], pe [NC, 64]
  const int32_t* topk; int64_t K;
  const int32_t* pos; const int32_t* tseq; const int32_t* ctx;
  float scale;
  uint16_t* out;                                 // [T, H, DV]
  int* err;
};

__global__ void __launch_bounds__(128) mha_kernel(MhaP p) {
  const int64_t t = blockIdx.x / p.H, h = blockIdx.x % p.H;
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  const int posn = p.pos[t];
  const int64_t base = p.ctx[p.tseq[t]];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  __shared__ float red_m[4], red_s[4];
  __shared__ float acc_s[4][128];
  // q in registers: lane holds dims l + 32*i (i < 6 covers 192)
  float qv[8];
  const uint16_t* qr = p.q + (t * p.H + h) * p.DQK;
  for (int i = 0; i < 8; ++i) qv[i] = (l + 32 * i < p.DQK) ? bf2f(qr[l + 32 * i]) : 0.f;
  auto key_of = [&](int64_t i) -> int64_t {
    if (!p.topk) return i;
    const int idx = p.topk[t * p.K + i];
    if (idx < -1 || idx > posn) {
      atomicOr(p.err, kErrTopk);
      return -1;
    }
    return idx;
  };
  auto score = [&](int64_t j) {
    const uint16_t* kr = p.kv + ((base + j) * p.H + h) * (p.NOPE + p.DV);
    const uint16_t* per = p.pe + (base + j) * kMlaRope;
    float s = 0.f;
    for (int i = 0; i < 8; ++i) {
      const int d = l + 32 * i;
      if (d < p.NOPE) s = fmaf(qv[i], bf2f(kr[d]), s);
      else if (d < p.DQK) s = fmaf(qv[i], bf2f(per[d - p.NOPE]), s);
    }
    s = warp_sum(s);
    return rbf(__fmul_rn(rbf(s), p.scale));
  };
  float m = -INFINITY, sum = 0.f;
  for (int64_t i = w; i < n; i += 4) {
    const int64_t j = key_of(i);
    if (j < 0) continue;
    const float s = score(j);
    if (s > m) {
      sum = (m > -INFINITY ? sum * expf(m - s) : 0.f) + 1.0f;
      m = s;
    } else {
      sum += expf(s - m);
    }
  }
  if (l == 0) {
    red_m[w] = m;
    red_s[w] = sum;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int i = 0; i < 4; ++i) M = fmaxf(M, red_m[i]);
  float S = 0.f;
  for (int i = 0; i < 4; ++i)
    if (red_m[i] > -INFINITY) S += red_s[i] * expf(red_m[i] - M);
  const float inv = S > 0.f ? 1.0f / S : 0.f;
  float acc[4] = {};
  for (int64_t i = w; i < n; i += 4) {
    const int64_t j = key_of(i);
    if (j < 0) continue;
    const float pr = rbf(__fmul_rn(expf(__fsub_rn(score(j), M)), inv));
    const uint16_t* vr = p.kv + ((base + j) * p.H + h) * (p.NOPE + p.DV) + p.NOPE;
    for (int k = 0; k < 4; ++k)
      if (l + 32 * k < p.DV) acc[k] = fmaf(pr, bf2f(vr[l + 32 * k]), acc[k]);
  }
  for (int k = 0; k < 4; ++k)
    if (l + 32 * k < p.DV) acc_s[w][l + 32 * k] = acc[k];
  __syncthreads();
  for (int d = threadIdx.x; d < p.DV; d += 128)
    p.out[(t * p.H + h) * p.DV + d] = f2bf(acc_s[0][d] + acc_s[1][d] + acc_s[2][d] + acc_s[3][d]);
}

}  // namespace

void CudaBackend::attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                                const Tensor* topk, float scale, Tensor& out) {
  const int64_t T = q.dim(0), H = q.dim(1), DQK = q.dim(2), NOPE = DQK - kMlaRope, DV = kv_up.dim(2) - NOPE;
  DSA_CHECK(kv_up.dim(1) == H && pe.dim(0) == kv_up.dim(0), "attention_mha: shapes ", q.str(), " ", kv_up.str(), " ",
            pe.str());
  DSA_CHECK(DQK <= 256 && DV <= 128, "attention_mha: head dims ", DQK, "/", DV, " beyond the kernel's 256/128");
  if (T == 0) return;
  if (topk) DSA_CHECK(topk->dim(0) == T, "top-k rows ", topk->dim(0), " != batch tokens ", T);
  const DevBatch& d = dev(b);
  MhaP p{};
  p.q = q.ptr<uint16_t>(); p.H = H; p.DQK = DQK; p.NOPE = NOPE; p.DV = DV;
  p.kv = kv_up.ptr<uint16_t>(); p.pe = pe.ptr<uint16_t>();
  p.topk = topk ? topk->ptr<int32_t>() : nullptr; p.K = topk ? topk->dim(1) : 0;
  p.pos = d.positions; p.tseq = d.token_seq; p.ctx = d.seq_ctx;
  p.scale = scale; p.out = out.ptr<uint16_t>(); p.err = err_;
  DSA_CHECK(T * H < (int64_t(1) << 31), "attention_mha: too many rows");
  mha_kernel<<<unsigned(T * H), 128>>>(p);
  DSA_LAUNCH_CHECK();
}

}  // namespace dsa::cuda

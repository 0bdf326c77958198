// CPU MLA: the 656-byte FP8 latent cache, the prefill (MHA) form and the decode (absorbed MQA) form,
// both dense and sparse (top-k gather). Numerics follow the reference (architecture.md §3.2, §3.3):
// scores rounded to bf16, the scale multiply rounded to bf16, an fp32 softmax whose probabilities
// are rounded to bf16, and an fp32-accumulated P.V rounded to bf16.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/cpu/cpu_backend.h"

namespace dsa {

namespace {

constexpr int64_t kLatentScalesOff = kMlaLatent;            // 4 fp32 scales after the 512 codes
constexpr int64_t kRopeOff = kMlaLatent + 16;               // 64 bf16 after the scales

uint8_t* mla_slot(const KvLayer& c, int64_t slot) { return c.mla.ptr<uint8_t>() + slot * kMlaTokenBytes; }

// Dequantise one cached latent row to fp32 (values are bf16-exact: e4m3 x power of two).
void read_latent(const uint8_t* row, float* kv, float* pe) {
  float sc[4];
  std::memcpy(sc, row + kLatentScalesOff, 16);
  for (int64_t i = 0; i < kMlaLatent; ++i) kv[i] = e4m3_to_f32(row[i]) * sc[i / 128];
  if (pe) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row + kRopeOff);
    for (int64_t i = 0; i < kMlaRope; ++i) pe[i] = bf16_to_f32(p[i]);
  }
}

DSA_KERNEL float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
DSA_KERNEL void axpy(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// scores (fp32 values already rounded to bf16 and scaled) -> bf16-rounded probabilities, in place.
void softmax_bf16(float* s, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, s[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    sum += s[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) s[i] = round_bf16(s[i] * inv);
}

// The reference's score rounding: bf16(q.k), then bf16(that * scale).
inline float score_round(float dot_fp32, float scale) { return round_bf16(round_bf16(dot_fp32) * scale); }

// Candidate positions of token t: its top-k row (without -1) or 0..p.
int64_t candidates(const Tensor* topk, int64_t t, int64_t p, std::vector<int32_t>& out) {
  out.clear();
  if (topk) {
    const int64_t K = topk->dim(1);
    const int32_t* r = topk->ptr<int32_t>() + t * K;
    for (int64_t i = 0; i < K; ++i)
      if (r[i] >= 0 && r[i] <= p) out.push_back(r[i]);  // validated by check_topk
  } else {
    out.resize(size_t(p + 1));
    for (int64_t i = 0; i <= p; ++i) out[size_t(i)] = int32_t(i);
  }
  return int64_t(out.size());
}

// Indices must lie in [-1, position]; checked once, outside the parallel regions.
void check_topk(const Tensor* topk, const Batch& b) {
  if (!topk) return;
  const int64_t T = topk->dim(0), K = topk->dim(1);
  DSA_CHECK(T == b.n_tokens(), "top-k rows ", T, " != batch tokens ", b.n_tokens());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) {
      const int32_t j = topk->ptr<int32_t>()[t * K + i];
      DSA_CHECK(j >= -1 && j <= b.positions[size_t(t)], "top-k index ", j, " of token ", t,
                " is outside [-1, ", b.positions[size_t(t)], "]");
    }
}

}  // namespace

void CpuBackend::mla_cache_write(const Tensor& kv, const Tensor& k_pe, KvLayer& cache, const Batch& b) {
  const int64_t T = b.n_tokens();
#pragma omp parallel for if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    uint8_t* row = mla_slot(cache, cpu::slot_of(b, s, p));
    float v[128], sc[4];
    for (int g = 0; g < 4; ++g) {
      for (int i = 0; i < 128; ++i) v[i] = bf16_to_f32(kv.ptr<uint16_t>()[t * kMlaLatent + g * 128 + i]);
      sc[g] = cpu::quant_group128(v, row + g * 128);
    }
    std::memcpy(row + kLatentScalesOff, sc, 16);
    std::memcpy(row + kRopeOff, k_pe.ptr<uint16_t>() + t * kMlaRope, kMlaRope * 2);
  }
}

void CpuBackend::mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) {
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const BatchSeq& q = b.seqs[s];
#pragma omp parallel for if (q.end_pos() > 64)
    for (int64_t j = 0; j < q.end_pos(); ++j) {
      float lat[kMlaLatent], r[kMlaRope];
      read_latent(mla_slot(cache, cpu::slot_of(b, int64_t(s), j)), lat, r);
      const int64_t row = q.ctx_offset + j;
      for (int64_t i = 0; i < kMlaLatent; ++i) kv.ptr<uint16_t>()[row * kMlaLatent + i] = f32_to_bf16(lat[i]);
      for (int64_t i = 0; i < kMlaRope; ++i) pe.ptr<uint16_t>()[row * kMlaRope + i] = f32_to_bf16(r[i]);
    }
  }
}

void CpuBackend::attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out) {
  const int64_t T = q.dim(0), H = q.dim(1), DQK = q.dim(2), NOPE = DQK - kMlaRope, DV = kv_up.dim(2) - NOPE;
  const int64_t NC = kv_up.dim(0);
  DSA_CHECK(kv_up.dim(1) == H && pe.dim(0) == NC, "attention_mha: shapes ", q.str(), " ", kv_up.str(), " ", pe.str());
  check_topk(topk, b);
  // Head-major fp32 copies: K[h][row] = (k_nope | pe), V[h][row]; one conversion per call.
  std::vector<float> K(static_cast<size_t>(H * NC * DQK)), V(static_cast<size_t>(H * NC * DV)), Q(static_cast<size_t>(T * H * DQK));
#pragma omp parallel for
  for (int64_t r = 0; r < NC; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const uint16_t* src = kv_up.ptr<uint16_t>() + (r * H + h) * (NOPE + DV);
      float* k = K.data() + (h * NC + r) * DQK;
      for (int64_t i = 0; i < NOPE; ++i) k[i] = bf16_to_f32(src[i]);
      for (int64_t i = 0; i < kMlaRope; ++i) k[NOPE + i] = bf16_to_f32(pe.ptr<uint16_t>()[r * kMlaRope + i]);
      float* v = V.data() + (h * NC + r) * DV;
      for (int64_t i = 0; i < DV; ++i) v[i] = bf16_to_f32(src[NOPE + i]);
    }
  for (int64_t i = 0; i < T * H * DQK; ++i) Q[size_t(i)] = bf16_to_f32(q.ptr<uint16_t>()[i]);

  // Work items: (token block, head). A block's score rows are a bounded tile [kQB x end_pos].
  constexpr int64_t kQB = 16;
  const int64_t nqb = (T + kQB - 1) / kQB;
#pragma omp parallel
  {
    std::vector<float> S, acc(static_cast<size_t>(DV));
    std::vector<int32_t> cand;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t qb = 0; qb < nqb; ++qb)
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t t = qb * kQB; t < std::min(T, (qb + 1) * kQB); ++t) {
          const BatchSeq& sq = b.seqs[size_t(b.token_seq[size_t(t)])];
          const int64_t p = b.positions[size_t(t)];
          const int64_t n = candidates(topk, t, p, cand);
          S.resize(size_t(n));
          const float* qv = Q.data() + (t * H + h) * DQK;
          const float* Kh = K.data() + (h * NC + sq.ctx_offset) * DQK;
          const float* Vh = V.data() + (h * NC + sq.ctx_offset) * DV;
          for (int64_t i = 0; i < n; ++i) S[size_t(i)] = score_round(dot(qv, Kh + int64_t(cand[size_t(i)]) * DQK, DQK), scale);
          softmax_bf16(S.data(), n);
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t i = 0; i < n; ++i) axpy(S[size_t(i)], Vh + int64_t(cand[size_t(i)]) * DV, acc.data(), DV);
          uint16_t* o = out.ptr<uint16_t>() + (t * H + h) * DV;
          for (int64_t i = 0; i < DV; ++i) o[i] = f32_to_bf16(acc[size_t(i)]);
        }
      }
  }
}

void CpuBackend::attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out_lat) {
  const int64_t T = q_lat.dim(0), H = q_lat.dim(1);
  check_topk(topk, b);
  std::vector<float> ql(static_cast<size_t>(H * kMlaLatent)), qp(static_cast<size_t>(H * kMlaRope));
  std::vector<int32_t> cand;
  std::vector<float> rows, S;  // dequantised candidate rows [n][512 + 64], scores [H][n]
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    const int64_t n = candidates(topk, t, p, cand);
    for (int64_t i = 0; i < H * kMlaLatent; ++i) ql[size_t(i)] = bf16_to_f32(q_lat.ptr<uint16_t>()[t * H * kMlaLatent + i]);
    for (int64_t i = 0; i < H * kMlaRope; ++i) qp[size_t(i)] = bf16_to_f32(q_pe.ptr<uint16_t>()[t * H * kMlaRope + i]);
    rows.resize(size_t(n * (kMlaLatent + kMlaRope)));
    S.resize(size_t(H * n));
    constexpr int64_t RW = kMlaLatent + kMlaRope;
    // Pass 1: gather + dequantise each selected row once, score it for every head.
#pragma omp parallel for schedule(static) if (n > 32)
    for (int64_t i = 0; i < n; ++i) {
      float* r = rows.data() + i * RW;
      read_latent(mla_slot(cache, cpu::slot_of(b, s, cand[size_t(i)])), r, r + kMlaLatent);
      for (int64_t h = 0; h < H; ++h) {
        const float a = round_bf16(dot(ql.data() + h * kMlaLatent, r, kMlaLatent));
        const float c = round_bf16(dot(qp.data() + h * kMlaRope, r + kMlaLatent, kMlaRope));
        S[size_t(h * n + i)] = round_bf16(round_bf16(a + c) * scale);
      }
    }
    // Pass 2: per head softmax and P.V over the latent rows.
#pragma omp parallel for schedule(static) if (H > 1 && n > 32)
    for (int64_t h = 0; h < H; ++h) {
      float* sh = S.data() + h * n;
      softmax_bf16(sh, n);
      float acc[kMlaLatent] = {};
      for (int64_t i = 0; i < n; ++i) axpy(sh[i], rows.data() + i * RW, acc, kMlaLatent);
      uint16_t* o = out_lat.ptr<uint16_t>() + (t * H + h) * kMlaLatent;
      for (int64_t c = 0; c < kMlaLatent; ++c) o[c] = f32_to_bf16(acc[c]);
    }
  }
}

void CpuBackend::mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) {
  const int64_t T = q.dim(0), H = q.dim(1), QS = q.dim(2), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2);
#pragma omp parallel for collapse(2) if (T * H > 4)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float acc[kMlaLatent] = {};
      std::vector<float> wrow(static_cast<size_t>(C));
      for (int64_t d = 0; d < NOPE; ++d) {
        const float qd = bf16_to_f32(q.ptr<uint16_t>()[(t * H + h) * QS + d]);
        const uint16_t* w = wkv_b.ptr<uint16_t>() + (h * 2 * NOPE + d) * C;
        for (int64_t c = 0; c < C; ++c) wrow[size_t(c)] = bf16_to_f32(w[c]);
        axpy(qd, wrow.data(), acc, C);
      }
      for (int64_t c = 0; c < C; ++c) q_lat.ptr<uint16_t>()[(t * H + h) * C + c] = f32_to_bf16(acc[c]);
    }
}

void CpuBackend::mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) {
  const int64_t T = o_lat.dim(0), H = o_lat.dim(1), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2), DV = NOPE;
#pragma omp parallel for collapse(2) if (T * H > 4)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float o[kMlaLatent], wrow[kMlaLatent];
      for (int64_t c = 0; c < C; ++c) o[c] = bf16_to_f32(o_lat.ptr<uint16_t>()[(t * H + h) * C + c]);
      for (int64_t d = 0; d < DV; ++d) {
        const uint16_t* w = wkv_b.ptr<uint16_t>() + (h * 2 * NOPE + NOPE + d) * C;
        for (int64_t c = 0; c < C; ++c) wrow[c] = bf16_to_f32(w[c]);
        out.ptr<uint16_t>()[(t * H + h) * DV + d] = f32_to_bf16(dot(o, wrow, C));
      }
    }
}

}  // namespace dsa

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
#include "backends/cpu/simd.h"

namespace dsa {

namespace {

constexpr int64_t kLatentScalesOff = kMlaLatent;            // 4 fp32 scales after the 512 codes
constexpr int64_t kRopeOff = kMlaLatent + 16;               // 64 bf16 after the scales

uint8_t* mla_slot(const KvLayer& c, int64_t slot) { return c.mla.ptr<uint8_t>() + slot * kMlaTokenBytes; }

// Dequantise one cached latent row to fp32 (values are bf16-exact: e4m3 x power of two).
void read_latent(const uint8_t* row, float* kv, float* pe) {
  const auto& kn = cpu::kernels();
  float sc[4];
  std::memcpy(sc, row + kLatentScalesOff, 16);
  for (int64_t g = 0; g < 4; ++g) kn.e4m3_to_f32(row + g * 128, kv + g * 128, 128, sc[g]);
  if (pe) kn.bf16_to_f32(reinterpret_cast<const uint16_t*>(row + kRopeOff), pe, kMlaRope);
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
    std::sort(out.begin(), out.end());  // ascending: the result must not depend on the top-k order
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
  const auto& kn = cpu::kernels();
#pragma omp parallel for if (T > 64)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    uint8_t* row = mla_slot(cache, cpu::slot_of(b, s, p));
    float sc[4];
    for (int g = 0; g < 4; ++g) sc[g] = kn.quant128_bf16_codes(kv.ptr<uint16_t>() + t * kMlaLatent + g * 128, row + g * 128);
    std::memcpy(row + kLatentScalesOff, sc, 16);
    std::memcpy(row + kRopeOff, k_pe.ptr<uint16_t>() + t * kMlaRope, kMlaRope * 2);
  }
}

void CpuBackend::mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) {
  const auto& kn = cpu::kernels();
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const BatchSeq& q = b.seqs[s];
#pragma omp parallel for if (q.end_pos() > 64)
    for (int64_t j = 0; j < q.end_pos(); ++j) {
      float lat[kMlaLatent], r[kMlaRope];
      read_latent(mla_slot(cache, cpu::slot_of(b, int64_t(s), j)), lat, r);
      const int64_t row = q.ctx_offset + j;
      kn.f32_to_bf16(lat, kv.ptr<uint16_t>() + row * kMlaLatent, kMlaLatent);
      kn.f32_to_bf16(r, pe.ptr<uint16_t>() + row * kMlaRope, kMlaRope);
    }
  }
}

// Prefill, MHA form. Dense causal: work items (sequence, 32-query tile, head); the tile's scores
// against keys [0, last position] are one register-blocked GEMM over head-major transposed keys,
// then an exact two-pass softmax per row (bf16 probabilities, zero beyond the row's position) and a
// register-blocked P.V. Sparse: work items are tokens; each head gathers its selected rows.
void CpuBackend::attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out) {
  const int64_t T = q.dim(0), H = q.dim(1), DQK = q.dim(2), NOPE = DQK - kMlaRope, DV = kv_up.dim(2) - NOPE;
  const int64_t NC = kv_up.dim(0), RW = NOPE + DV;
  DSA_CHECK(kv_up.dim(1) == H && pe.dim(0) == NC, "attention_mha: shapes ", q.str(), " ", kv_up.str(), " ", pe.str());
  DSA_CHECK(DV % 64 == 0 && DQK % 16 == 0, "attention_mha: head dims ", DQK, "/", DV, " not supported");
  check_topk(topk, b);
  const auto& kn = cpu::kernels();
  const uint16_t* kvp = kv_up.ptr<uint16_t>();
  const uint16_t* pep = pe.ptr<uint16_t>();
  uint16_t* op = out.ptr<uint16_t>();
  std::vector<float> Q(static_cast<size_t>(T * H * DQK));

  if (topk) {
    // Row-major fp32 copies: KV [NC][H][NOPE + DV], PE [NC][64].
    std::vector<float> KV(static_cast<size_t>(NC * H * RW)), PE(static_cast<size_t>(NC * kMlaRope));
    const int64_t K = topk->dim(1);
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < NC; ++r) {
        kn.bf16_to_f32(kvp + r * H * RW, KV.data() + r * H * RW, H * RW);
        kn.bf16_to_f32(pep + r * kMlaRope, PE.data() + r * kMlaRope, kMlaRope);
      }
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) kn.bf16_to_f32(q.ptr<uint16_t>() + t * H * DQK, Q.data() + t * H * DQK, H * DQK);
      // Same kernels and per-element order as the dense path (a sparse row that selects every
      // position equals the dense row bit for bit): gathered keys transposed into KT [DQK][KP].
      const int64_t KP = (K + 15) / 16 * 16;
      float* KTg = cpu::thread_work(DQK * KP + KP + DV + KP);
      float* S = KTg + DQK * KP;
      float* O = S + KP;
      int32_t* cand = reinterpret_cast<int32_t*>(O + DV);
#pragma omp for schedule(dynamic, 4)
      for (int64_t t = 0; t < T; ++t) {
        const BatchSeq& sq = b.seqs[size_t(b.token_seq[size_t(t)])];
        const int64_t p = b.positions[size_t(t)];
        const int32_t* r = topk->ptr<int32_t>() + t * K;
        int64_t n = 0;
        for (int64_t i = 0; i < K; ++i)
          if (r[i] >= 0 && r[i] <= p) cand[n++] = r[i];
        // Ascending, as the dense path sums: the result must not depend on the order the top-k
        // op wrote the indices in (any order is allowed), and selecting every position == dense.
        std::sort(cand, cand + n);
        const int64_t np = (n + 15) / 16 * 16;
        for (int64_t i = n; i < np; ++i) cand[i] = n ? cand[0] : 0;  // padding: probability 0
        const float* kvs = KV.data() + sq.ctx_offset * H * RW;
        const float* pes = PE.data() + sq.ctx_offset * kMlaRope;
        kn.gather_t(pes, kMlaRope, cand, n, kMlaRope, KTg + NOPE * KP, KP);
        for (int64_t h = 0; h < H; ++h) {
          kn.gather_t(kvs + h * RW, H * RW, cand, n, NOPE, KTg, KP);
          kn.att_scores(Q.data() + (t * H + h) * DQK, DQK, 1, KTg, KP, DQK, np, scale, S, KP);
          kn.softmax_bf16(S, n, np);
          kn.att_pv(S, KP, 1, kvs + h * RW + NOPE, H * RW, cand, np, DV, O, DV);
          kn.f32_to_bf16(O, op + (t * H + h) * DV, DV);
        }
      }
    }
    return;
  }

  // Dense. Keys per sequence in 64-key blocks, each block contiguous and transposed:
  // KT [H][blocks][DQK][64]; values V [H][blocks * 64][DV]; rows past a sequence's end are zero.
  constexpr int64_t kQB = 36, kKB = 64;  // query tile (a multiple of the micro-kernel's 6 rows)
  std::vector<int64_t> boff(b.seqs.size() + 1, 0);
  for (size_t s = 0; s < b.seqs.size(); ++s) boff[s + 1] = boff[s] + (b.seqs[s].end_pos() + kKB - 1) / kKB;
  const int64_t NB = boff.back();
  std::vector<float> KT(static_cast<size_t>(H * NB * DQK * kKB)), V(static_cast<size_t>(H * NB * kKB * DV));
  struct Item { int64_t s, t0, t1, h; };
  std::vector<Item> items;
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const BatchSeq& sq = b.seqs[s];
    for (int64_t t0 = sq.token_offset + sq.n_new; t0 > sq.token_offset; t0 -= kQB)  // longest tiles first
      for (int64_t h = 0; h < H; ++h) items.push_back({int64_t(s), std::max(sq.token_offset, t0 - kQB), t0, h});
  }
  int64_t maxk = 0;
  for (auto& sq : b.seqs) maxk = std::max(maxk, sq.end_pos());
  const int64_t ldS = (maxk + kKB - 1) / kKB * kKB;
  int32_t iota[kKB];
  for (int i = 0; i < kKB; ++i) iota[i] = i;
#pragma omp parallel
  {
    float* tmp = cpu::thread_work(kKB * 256);
#pragma omp for schedule(static) nowait
    for (int64_t blk = 0; blk < NB; ++blk) {
      const int64_t s = std::upper_bound(boff.begin(), boff.end(), blk) - boff.begin() - 1;
      const BatchSeq& sq = b.seqs[size_t(s)];
      const int64_t j0 = (blk - boff[size_t(s)]) * kKB;
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < kKB; ++i) {
          float* vr = V.data() + ((h * NB + blk) * kKB + i) * DV;
          if (j0 + i < sq.end_pos()) {
            const int64_t r = sq.ctx_offset + j0 + i;
            kn.bf16_to_f32(kvp + (r * H + h) * RW, tmp + i * DQK, NOPE);
            kn.bf16_to_f32(pep + r * kMlaRope, tmp + i * DQK + NOPE, kMlaRope);
            kn.bf16_to_f32(kvp + (r * H + h) * RW + NOPE, vr, DV);
          } else {
            std::fill(tmp + i * DQK, tmp + (i + 1) * DQK, 0.f);
            std::fill(vr, vr + DV, 0.f);
          }
        }
        kn.gather_t(tmp, DQK, iota, kKB, DQK, KT.data() + (h * NB + blk) * DQK * kKB, kKB);
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) kn.bf16_to_f32(q.ptr<uint16_t>() + t * H * DQK, Q.data() + t * H * DQK, H * DQK);
    float* S = cpu::thread_work(kQB * ldS + kQB * DV);
    float* O = S + kQB * ldS;
#pragma omp for schedule(dynamic, 1)
    for (size_t it = 0; it < items.size(); ++it) {
      const Item& w = items[it];
      const int64_t m = w.t1 - w.t0, h = w.h;
      int64_t pmax = 0;
      for (int64_t t = w.t0; t < w.t1; ++t) pmax = std::max<int64_t>(pmax, b.positions[size_t(t)]);
      const int64_t nkb = pmax / kKB + 1, nk = nkb * kKB;
      const float* kt = KT.data() + (h * NB + boff[size_t(w.s)]) * DQK * kKB;
      for (int64_t kb = 0; kb < nkb; ++kb)
        kn.att_scores(Q.data() + (w.t0 * H + h) * DQK, H * DQK, m, kt + kb * DQK * kKB, kKB, DQK, kKB, scale,
                      S + kb * kKB, ldS);
      for (int64_t i = 0; i < m; ++i) kn.softmax_bf16(S + i * ldS, b.positions[size_t(w.t0 + i)] + 1, nk);
      kn.att_pv(S, ldS, m, V.data() + (h * NB + boff[size_t(w.s)]) * kKB * DV, DV, nullptr, nk, DV, O, DV);
      for (int64_t i = 0; i < m; ++i) kn.f32_to_bf16(O + i * DV, op + ((w.t0 + i) * H + h) * DV, DV);
    }
  }
}

void CpuBackend::attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out_lat) {
  const int64_t T = q_lat.dim(0), H = q_lat.dim(1);
  check_topk(topk, b);
  const auto& kn = cpu::kernels();
  constexpr int64_t RW = kMlaLatent + kMlaRope;
  std::vector<float> ql(static_cast<size_t>(H * kMlaLatent)), qp(static_cast<size_t>(H * kMlaRope));
  std::vector<int32_t> cand;
  std::vector<float> rows, S;  // dequantised candidate rows [n][512 + 64], scores [H][n]
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    const int64_t n = candidates(topk, t, p, cand);
    kn.bf16_to_f32(q_lat.ptr<uint16_t>() + t * H * kMlaLatent, ql.data(), H * kMlaLatent);
    kn.bf16_to_f32(q_pe.ptr<uint16_t>() + t * H * kMlaRope, qp.data(), H * kMlaRope);
    rows.resize(size_t(n * RW));
    S.resize(size_t(H * n));
    const int64_t nch = (n + 15) / 16;
#pragma omp parallel if (n * H > 4096)
    {
      // Pass 1: gather + dequantise each selected row once, score it for every head.
#pragma omp for schedule(static)
      for (int64_t c = 0; c < nch; ++c) {
        const int64_t i0 = c * 16, i1 = std::min(n, i0 + 16);
        for (int64_t i = i0; i < i1; ++i) {
          float* r = rows.data() + i * RW;
          read_latent(mla_slot(cache, cpu::slot_of(b, s, cand[size_t(i)])), r, r + kMlaLatent);
        }
        kn.mqa_scores(ql.data(), qp.data(), H, rows.data() + i0 * RW, i1 - i0, scale, S.data() + i0, n);
      }
      // Pass 2: per head softmax and P.V over the latent rows.
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h) {
        float* sh = S.data() + h * n;
        kn.softmax_bf16(sh, n, n);
        alignas(64) float acc[kMlaLatent] = {};
        kn.axpys(sh, rows.data(), RW, nullptr, n, kMlaLatent, acc);
        kn.f32_to_bf16(acc, out_lat.ptr<uint16_t>() + (t * H + h) * kMlaLatent, kMlaLatent);
      }
    }
  }
}

void CpuBackend::mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) {
  const int64_t T = q.dim(0), H = q.dim(1), QS = q.dim(2), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2);
  const auto& kn = cpu::kernels();
  DSA_CHECK(C <= kMlaLatent && NOPE <= 256, "mla_absorb_q: shapes");
#pragma omp parallel for collapse(2) if (T * H > 32)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      alignas(64) float acc[kMlaLatent] = {};
      float qf[256];
      kn.bf16_to_f32(q.ptr<uint16_t>() + (t * H + h) * QS, qf, NOPE);
      kn.axpys_bf16(qf, wkv_b.ptr<uint16_t>() + h * 2 * NOPE * C, C, NOPE, C, acc);
      kn.f32_to_bf16(acc, q_lat.ptr<uint16_t>() + (t * H + h) * C, C);
    }
}

void CpuBackend::mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) {
  const int64_t T = o_lat.dim(0), H = o_lat.dim(1), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2), DV = NOPE;
  const auto& kn = cpu::kernels();
  DSA_CHECK(C <= kMlaLatent && DV <= 256, "mla_absorb_out: shapes");
#pragma omp parallel for collapse(2) if (T * H > 32)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      alignas(64) float o[kMlaLatent];
      float r[256];
      kn.bf16_to_f32(o_lat.ptr<uint16_t>() + (t * H + h) * C, o, C);
      kn.dots_bf16(o, wkv_b.ptr<uint16_t>() + (h * 2 * NOPE + NOPE) * C, C, DV, C, r);
      kn.f32_to_bf16(r, out.ptr<uint16_t>() + (t * H + h) * DV, DV);
    }
}

}  // namespace dsa

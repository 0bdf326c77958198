// Lightning indexer on CUDA (portable sm_80+, CUDA cores): the 132-byte FP8 key cache, the scores
//   I[t, j] = k_scale[j] * sum_h w[t, h] * relu(q[t, h, :] . k[j, :])
// (on sm_90a SASS, Hi <= 64: the FP8 wgmma kernel of scores_sm90.cu instead, for one token or token
// pairs; DSA_CUDA_INDEXER_WGMMA_FP8=0 there selects the f16 wgmma kernel, DSA_CUDA_INDEXER_WGMMA=0 the
// kernels below; the switches are IndexerConfig's, kernel_config.h)
// computed by tensor cores (mma.sync, f16 operands exact for e4m3, fp32 accumulation) — or, with
// DSA_CUDA_INDEXER_EXACT=1, on CUDA cores in the CPU reference's order (per head a sequential fma chain over the 128 dims, heads
// summed in order with fma, the key scale applied after the sum) — so the scores match the CPU's
// bit for bit where its compiler fuses multiply-adds (x86-64-v3/v4) — and exact top-k over tiles of
// at most IndexerConfig::score_tile_floats scores: never a full [T x L] matrix beyond that bound.
#include <algorithm>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/indexer/scores_sm90.h"

namespace dsa::cuda {

namespace {

constexpr int64_t kBlockKeyBytes = kKvBlock * kIndexDim;
constexpr int KLDF = 132;  // float stride of a key row in shared memory (16-byte aligned, conflict-free)

__global__ void indexer_cache_write_kernel(const uint16_t* k, uint8_t* cache, const int32_t* pos, const int32_t* tseq,
                                           const int32_t* bt, int mb, int64_t T, int* err) {
  const int64_t t = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (t >= T) return;
  const int l = threadIdx.x, p = pos[t];
  const int blk = bt[int64_t(tseq[t]) * mb + p / kKvBlock], off = p % kKvBlock;
  if (blk < 0) {
    if (l == 0) atomicOr(err, kErrBlock);
    return;
  }
  uint8_t* base = cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
  const uint2 raw = *reinterpret_cast<const uint2*>(k + t * kIndexDim + l * 4);
  float v[4] = {bf2f(raw.x & 0xffff), bf2f(raw.x >> 16), bf2f(raw.y & 0xffff), bf2f(raw.y >> 16)};
  const float amax = warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
  const float sc = ue8m0_scale_dev(amax), inv = 1.0f / sc;
  *reinterpret_cast<uint32_t*>(base + off * kIndexDim + l * 4) =
      uint32_t(quant_e4m3(v[0], inv)) | (uint32_t(quant_e4m3(v[1], inv)) << 8) |
      (uint32_t(quant_e4m3(v[2], inv)) << 16) | (uint32_t(quant_e4m3(v[3], inv)) << 24);
  if (l == 0) reinterpret_cast<float*>(base + kBlockKeyBytes)[off] = sc;
}

struct ScoreP {
  const uint8_t* q;   // [T, Hi, 128] e4m3
  const float* w;     // [T, Hi]
  const uint8_t* cache;
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int Hi;
  int64_t t0;         // first token of this tile
  float* out; int64_t ld;  // row r = token t0 + r; column j
  int fill_ninf;      // write -inf for p < j < ld (indexer_scores)
};

// Block: one token (blockIdx.y) x a strided set of 64-key cache blocks; thread j = key j.
__global__ void __launch_bounds__(64) indexer_score_kernel(ScoreP p) {
  extern __shared__ __align__(16) float sm[];
  float* qf = sm;                            // [Hi][128]
  float* wf = qf + p.Hi * 128;               // [Hi]
  float* kf = wf + ((p.Hi + 3) / 4) * 4;     // [64][KLDF]
  float* ksc = kf + 64 * KLDF;               // [64]
  const int64_t t = p.t0 + blockIdx.y;
  const int j = threadIdx.x;
  const int posn = p.pos[t], s = p.tseq[t];
  const int nblk = (posn + kKvBlock) / kKvBlock;
  float* orow = p.out + int64_t(blockIdx.y) * p.ld;
  if (p.fill_ninf)
    for (int64_t c = int64_t(posn) + 1 + int64_t(blockIdx.x) * 64 + j; c < p.ld; c += int64_t(gridDim.x) * 64)
      orow[c] = -INFINITY;
  if (int(blockIdx.x) >= nblk) return;
  for (int i = j; i < p.Hi * 128; i += 64) qf[i] = e4m3_to_float(p.q[t * p.Hi * 128 + i]);
  for (int i = j; i < p.Hi; i += 64) wf[i] = p.w[t * p.Hi + i];
  for (int kb = blockIdx.x; kb < nblk; kb += gridDim.x) {
    const int blk = p.bt[int64_t(s) * p.mb + kb];
    __syncthreads();
    if (blk >= 0) {
      const uint8_t* base = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
      // 64 keys x 128 bytes: each thread converts 128 bytes (8 x 16-byte loads, coalesced by rows)
      for (int i = j; i < 64 * 8; i += 64) {
        const int r = i / 8, c = (i % 8) * 16;
        const uint4 v = *reinterpret_cast<const uint4*>(base + r * 128 + c);
        const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
        float* dst = kf + r * KLDF + c;
#pragma unroll
        for (int e = 0; e < 16; ++e) dst[e] = e4m3_to_float((wv[e / 4] >> (8 * (e % 4))) & 0xff);
      }
      ksc[j] = reinterpret_cast<const float*>(base + kBlockKeyBytes)[j];
    }
    __syncthreads();
    const int64_t col = int64_t(kb) * 64 + j;
    if (blk < 0) {
      if (col <= posn) orow[col] = -INFINITY;
      continue;
    }
    if (col > posn) {
      if (col < p.ld) orow[col] = -INFINITY;
      continue;
    }
    const float4* krow = reinterpret_cast<const float4*>(kf + j * KLDF);
    float tot = 0.f;
    int h = 0;
    for (; h + 4 <= p.Hi; h += 4) {
      const float4* q0 = reinterpret_cast<const float4*>(qf + (h + 0) * 128);
      const float4* q1 = reinterpret_cast<const float4*>(qf + (h + 1) * 128);
      const float4* q2 = reinterpret_cast<const float4*>(qf + (h + 2) * 128);
      const float4* q3 = reinterpret_cast<const float4*>(qf + (h + 3) * 128);
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 8
      for (int d = 0; d < 32; ++d) {
        const float4 kv = krow[d], x0 = q0[d], x1 = q1[d], x2 = q2[d], x3 = q3[d];
        a0 = fmaf(x0.x, kv.x, a0); a0 = fmaf(x0.y, kv.y, a0); a0 = fmaf(x0.z, kv.z, a0); a0 = fmaf(x0.w, kv.w, a0);
        a1 = fmaf(x1.x, kv.x, a1); a1 = fmaf(x1.y, kv.y, a1); a1 = fmaf(x1.z, kv.z, a1); a1 = fmaf(x1.w, kv.w, a1);
        a2 = fmaf(x2.x, kv.x, a2); a2 = fmaf(x2.y, kv.y, a2); a2 = fmaf(x2.z, kv.z, a2); a2 = fmaf(x2.w, kv.w, a2);
        a3 = fmaf(x3.x, kv.x, a3); a3 = fmaf(x3.y, kv.y, a3); a3 = fmaf(x3.z, kv.z, a3); a3 = fmaf(x3.w, kv.w, a3);
      }
      tot = fmaf(wf[h + 0], fmaxf(a0, 0.f), tot);
      tot = fmaf(wf[h + 1], fmaxf(a1, 0.f), tot);
      tot = fmaf(wf[h + 2], fmaxf(a2, 0.f), tot);
      tot = fmaf(wf[h + 3], fmaxf(a3, 0.f), tot);
    }
    for (; h < p.Hi; ++h) {
      const float4* q0 = reinterpret_cast<const float4*>(qf + h * 128);
      float a0 = 0.f;
      for (int d = 0; d < 32; ++d) {
        const float4 kv = krow[d], x0 = q0[d];
        a0 = fmaf(x0.x, kv.x, a0); a0 = fmaf(x0.y, kv.y, a0); a0 = fmaf(x0.z, kv.z, a0); a0 = fmaf(x0.w, kv.w, a0);
      }
      tot = fmaf(wf[h], fmaxf(a0, 0.f), tot);
    }
    orow[col] = __fmul_rn(tot, ksc[j]);
  }
}


// ---- tensor-core scores (mma.sync m16n8k16, f16 operands, fp32 accumulate; sm_80+) -----------
// e4m3 values are exact in f16 and their products exact in fp32, so only the fp32 summation order
// differs from the CPU (the exact CUDA-core kernel above stays available: DSA_CUDA_INDEXER_EXACT=1).
// Block: 4 warps = one 64-key cache block per step; warp w owns keys 16w..16w+15 as the A operand
// (keys x dims), the token's heads are the B operand (dims x heads) from shared memory; ReLU, the
// head weights and the sum over heads run on the accumulators in registers, then across the quad.
constexpr int QW = 68;    // words per f16 head row in shared memory (64 + 4 pad: conflict-free)
constexpr int KB = 144;   // bytes per key row in shared memory (128 + 16 pad)

__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint16_t v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(v), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

__global__ void __launch_bounds__(128) indexer_score_mma_kernel(ScoreP p) {
  extern __shared__ __align__(16) uint8_t smraw[];
  const int HP = (p.Hi + 7) / 8 * 8;
  uint32_t* qh = reinterpret_cast<uint32_t*>(smraw);          // [HP][QW] f16 pairs
  float* wf = reinterpret_cast<float*>(qh + HP * QW);          // [HP]
  uint8_t* ks = reinterpret_cast<uint8_t*>(wf + HP);           // [64][KB] e4m3
  float* ksc = reinterpret_cast<float*>(ks + 64 * KB);         // [64]
  const int64_t t = p.t0 + blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int posn = p.pos[t], s = p.tseq[t];
  const int nblk = (posn + kKvBlock) / kKvBlock;
  float* orow = p.out + int64_t(blockIdx.y) * p.ld;
  if (p.fill_ninf)
    for (int64_t c = int64_t(posn) + 1 + int64_t(blockIdx.x) * 128 + tid; c < p.ld; c += int64_t(gridDim.x) * 128)
      orow[c] = -INFINITY;
  if (int(blockIdx.x) >= nblk) return;
  const uint8_t* qsrc = p.q + t * p.Hi * 128;
  for (int i = tid; i < HP * 64; i += 128) {
    const int h = i / 64, c = i % 64;
    qh[h * QW + c] = h < p.Hi ? e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(qsrc + h * 128 + 2 * c)) : 0u;
  }
  for (int i = tid; i < HP; i += 128) wf[i] = i < p.Hi ? p.w[t * p.Hi + i] : 0.f;
  // Software pipeline: the next cache block's 8 KB of keys (4 x 16 bytes per thread) and scales are
  // loaded into registers while the current block is multiplied.
  uint4 kr[4];
  float kscale = 0.f;
  auto fetch = [&](int kb) -> int {
    const int blk = p.bt[int64_t(s) * p.mb + kb];
    if (blk >= 0) {
      const uint8_t* base = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = tid + 128 * e, r = i / 8, c = (i % 8) * 16;
        kr[e] = *reinterpret_cast<const uint4*>(base + r * 128 + c);
      }
      if (tid < 64) kscale = reinterpret_cast<const float*>(base + kBlockKeyBytes)[tid];
    }
    return blk;
  };
  int next_blk = fetch(blockIdx.x);
  for (int kb = blockIdx.x; kb < nblk; kb += gridDim.x) {
    const int blk = next_blk;
    __syncthreads();
    if (blk >= 0) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = tid + 128 * e, r = i / 8, c = (i % 8) * 16;
        *reinterpret_cast<uint4*>(ks + r * KB + c) = kr[e];
      }
      if (tid < 64) ksc[tid] = kscale;
    }
    if (kb + int(gridDim.x) < nblk) next_blk = fetch(kb + gridDim.x);
    __syncthreads();
    const int j0 = warp * 16 + gid, j1 = j0 + 8;
    const int64_t col0 = int64_t(kb) * 64 + j0, col1 = int64_t(kb) * 64 + j1;
    if (blk < 0) {
      if (tq == 0) {
        if (col0 <= posn) orow[col0] = -INFINITY;
        if (col1 <= posn) orow[col1] = -INFINITY;
      }
      continue;
    }
    if (int64_t(kb) * 64 + warp * 16 > posn) {  // the whole warp's keys are in the future
      if (tq == 0) {
        if (col0 < p.ld) orow[col0] = -INFINITY;
        if (col1 < p.ld) orow[col1] = -INFINITY;
      }
      continue;
    }
    uint32_t a[8][4];
    const uint8_t* r0 = ks + j0 * KB + 2 * tq;
    const uint8_t* r1 = ks + j1 * KB + 2 * tq;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      a[k][0] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r0 + 16 * k));
      a[k][1] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r1 + 16 * k));
      a[k][2] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r0 + 16 * k + 8));
      a[k][3] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r1 + 16 * k + 8));
    }
    float lo = 0.f, hi = 0.f;
    for (int nt = 0; nt < HP / 8; ++nt) {
      float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
      const uint32_t* qb = qh + (nt * 8 + gid) * QW + tq;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const uint32_t b0 = qb[8 * k], b1 = qb[8 * k + 4];
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
            : "r"(a[k][0]), "r"(a[k][1]), "r"(a[k][2]), "r"(a[k][3]), "r"(b0), "r"(b1));
      }
      const float w0 = wf[nt * 8 + 2 * tq], w1 = wf[nt * 8 + 2 * tq + 1];
      lo = fmaf(w0, fmaxf(c0, 0.f), lo);
      lo = fmaf(w1, fmaxf(c1, 0.f), lo);
      hi = fmaf(w0, fmaxf(c2, 0.f), hi);
      hi = fmaf(w1, fmaxf(c3, 0.f), hi);
    }
    lo += __shfl_xor_sync(0xffffffffu, lo, 1);
    lo += __shfl_xor_sync(0xffffffffu, lo, 2);
    hi += __shfl_xor_sync(0xffffffffu, hi, 1);
    hi += __shfl_xor_sync(0xffffffffu, hi, 2);
    if (tq == 0) {
      if (col0 < p.ld) orow[col0] = col0 <= posn ? __fmul_rn(lo, ksc[j0]) : -INFINITY;
      if (col1 < p.ld) orow[col1] = col1 <= posn ? __fmul_rn(hi, ksc[j1]) : -INFINITY;
    }
  }
}

size_t score_mma_smem(int Hi) {
  const int HP = (Hi + 7) / 8 * 8;
  return size_t(HP) * QW * 4 + size_t(HP) * 4 + 64 * KB + 64 * 4;
}

// ---- pipelined tensor-core scores (decode and prefill, Hi <= 64) -------------------------------
// Work unit: 32 consecutive keys (half a 64-key cache block) of one query group (NQ = 1 token, or
// NQ = 2 tokens of the same sequence — the MTP decode form — which share every key load). A CTA
// (4 warps) owns a contiguous range of units of one group; each warp streams its units through its
// own STAGES-deep cp.async ring in shared memory (keys + their scales), so the loads of the next
// units overlap the tensor-core work of the current one and no __syncthreads is needed in the loop.
// Keys are the M operand (2 m16 tiles per unit), heads the N operand (8 n8 tiles), q*k over 128
// dims. The dims are permuted identically in A and B (a dot product does not care): thread (gid,
// tq) supplies the 32 dims {16tq..16tq+15} u {64+16tq..64+16tq+15} of its rows and of its heads,
// which makes every shared-memory read a conflict-free 16-byte load.
// Default operands: f16 (exact for e4m3; products exact in fp32; the f16 HMMA accumulates in fp32).
// Opt-in (DSA_CUDA_INDEXER_FP8=1, sm_89+ SASS only): e4m3 operands (m16n8k32) — half the mma count
// and no conversions, but Hopper's FP8 tensor cores accumulate with fewer than fp32's mantissa bits
// (DeepSeek-V3 report §3.3.2), so each mma starts from zero and its 32-term partial is added in
// fp32; the partial itself may still be truncated, hence opt-in.
constexpr int PS_STAGES = 3;
constexpr int PS_UNIT = 32;                              // keys per unit
constexpr int PS_STAGE_BYTES = PS_UNIT * 128 + PS_UNIT * 4;  // keys (swizzled rows) + scales
constexpr int PS_WARPS = 4;

struct PScoreP {
  const uint8_t* q; const float* w; const uint8_t* cache;
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int Hi;
  int64_t t0, rows;   // tokens [t0, t0 + rows) of this tile; group g = tokens t0 + NQ*g + (0..NQ-1)
  float* out; int64_t ld;
  int fill_ninf;      // indexer_scores: -inf for j > position up to ld
  int gx;             // CTAs per group
  int fp8;            // use e4m3 mma where compiled (sm_89+)
};


__device__ __forceinline__ void mma_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define DSA_IDX_FP8_MMA 1
__device__ __forceinline__ void mma_e4m3_add(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
  float d0, d1, d2, d3;
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.f));
  c[0] += d0; c[1] += d1; c[2] += d2; c[3] += d3;
}
#else
#define DSA_IDX_FP8_MMA 0
#endif

// Byte offset in a q / key row of word j (0..7) of quad lane tq's dim subset.
__device__ __forceinline__ int sub_word_off(int tq, int j) { return (j < 4 ? 16 * tq : 64 + 16 * tq) + 4 * (j & 3); }

template <int NQ>
__global__ void __launch_bounds__(PS_WARPS * 32, NQ == 1 ? 3 : 2) indexer_score_pipe_kernel(PScoreP p) {
  extern __shared__ __align__(16) uint8_t smraw[];
  // q operands: f16 layout [NQ][8 nt][4 s][32 lanes] uint4, or e4m3 layout [NQ][8 nt][2 sp][32] uint4
  uint4* qs = reinterpret_cast<uint4*>(smraw);
  float* ws = reinterpret_cast<float*>(smraw + NQ * 8 * 4 * 32 * 16);      // [NQ][64]
  uint8_t* stages = smraw + NQ * 8 * 4 * 32 * 16 + NQ * 64 * 4;           // [warps][STAGES][STAGE_BYTES]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int64_t g = blockIdx.y;
  const int cx = blockIdx.x;
  const int64_t tfirst = p.t0 + g * NQ;
  const int nq = int(min(int64_t(NQ), p.t0 + p.rows - tfirst));
  int posq[NQ];
  int maxpos = -1;
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    posq[i] = i < nq ? p.pos[tfirst + i] : -1;
    maxpos = max(maxpos, posq[i]);
  }
  const int s = p.tseq[tfirst];
  const int64_t nunits = (int64_t(maxpos) + PS_UNIT) / PS_UNIT;
  if (p.fill_ninf) {  // columns past every computed unit
    for (int i = 0; i < nq; ++i) {
      float* orow = p.out + (tfirst + i - p.t0) * p.ld;
      for (int64_t c = nunits * PS_UNIT + int64_t(cx) * blockDim.x + tid; c < p.ld; c += int64_t(p.gx) * blockDim.x)
        orow[c] = -INFINITY;
    }
  }
  const int64_t per = (nunits + p.gx - 1) / p.gx;
  const int64_t u0 = int64_t(cx) * per, u1 = min(nunits, u0 + per);
  if (u0 >= u1) return;
#if DSA_IDX_FP8_MMA
  const bool fp8 = p.fp8 != 0;
#else
  constexpr bool fp8 = false;
#endif
  // q (and weights) of the group into shared memory in fragment order; heads >= Hi are zero.
  // All global loads of a thread are issued before the first conversion (one latency, not 8).
  constexpr int QE = 8 * 4 * 32 / (PS_WARPS * 32);  // per query
#pragma unroll 1
  for (int qh = 0; qh < NQ; ++qh) {
  uint4 raw[QE];
#pragma unroll
  for (int j = 0; j < QE; ++j) {
    const int e = tid + (qh * QE + j) * PS_WARPS * 32;
    const int qi = e / 1024, nt = (e / 128) % 8, s4 = (e / 32) % 4, ln = e % 32;
    const int h = nt * 8 + ln / 4, lq = ln % 4;
    raw[j] = make_uint4(0, 0, 0, 0);
    if (qi < nq && h < p.Hi) {
      const uint8_t* qr = p.q + ((tfirst + qi) * p.Hi + h) * 128;
      if (fp8) {
        if (s4 < 2) raw[j] = *reinterpret_cast<const uint4*>(qr + sub_word_off(lq, 4 * s4));  // words 4sp..4sp+3
      } else {
        const uint2 v = *reinterpret_cast<const uint2*>(qr + sub_word_off(lq, 2 * s4));       // words 2s4, 2s4+1
        raw[j].x = v.x;
        raw[j].y = v.y;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < QE; ++j) {
    const int e = tid + (qh * QE + j) * PS_WARPS * 32;
    const int qi = e / 1024, nt = (e / 128) % 8, s4 = (e / 32) % 4, ln = e % 32;
    if (fp8) {
      if (s4 < 2) qs[((qi * 8 + nt) * 2 + s4) * 32 + ln] = raw[j];
    } else {
      const uint32_t w0 = raw[j].x, w1 = raw[j].y;
      qs[e] = make_uint4(e4m3x2_to_f16x2(uint16_t(w0)), e4m3x2_to_f16x2(uint16_t(w0 >> 16)),
                         e4m3x2_to_f16x2(uint16_t(w1)), e4m3x2_to_f16x2(uint16_t(w1 >> 16)));
    }
  }
  }
  for (int e = tid; e < NQ * 64; e += blockDim.x) {
    const int qi = e / 64, h = e % 64;
    ws[e] = (qi < nq && h < p.Hi) ? p.w[(tfirst + qi) * p.Hi + h] : 0.f;
  }
  __syncthreads();
  const int nts = (p.Hi + 7) / 8;
  uint8_t* ring = stages + warp * PS_STAGES * PS_STAGE_BYTES;
  const int32_t* btrow = p.bt + int64_t(s) * p.mb;
  // unit i of this warp: u0 + warp + PS_WARPS * i
  const int64_t nmine = (u1 - u0 - warp + PS_WARPS - 1) / PS_WARPS;
  auto issue = [&](int64_t i) {
    if (i < nmine) {
      const int64_t u = u0 + warp + PS_WARPS * i;
      const int blk = btrow[u / 2];
      if (blk >= 0) {
        const uint8_t* base = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
        const uint8_t* src = base + (u % 2) * PS_UNIT * 128;
        uint8_t* dst = ring + (i % PS_STAGES) * PS_STAGE_BYTES;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const int ch = lane + 32 * j, r = ch / 8, c = ch % 8;
          mma::cp16(dst + r * 128 + ((c ^ ((r & 1) << 2)) * 16), src + r * 128 + c * 16);
        }
        if (lane < 8) mma::cp16(dst + PS_UNIT * 128 + lane * 16, base + kBlockKeyBytes + (u % 2) * PS_UNIT * 4 + lane * 16);
      }
    }
    mma::cp_commit();
  };
#pragma unroll
  for (int i = 0; i < PS_STAGES - 1; ++i) issue(i);
  for (int64_t i = 0; i < nmine; ++i) {
    issue(i + PS_STAGES - 1);
    mma::cp_wait<PS_STAGES - 1>();
    __syncwarp();
    const int64_t u = u0 + warp + PS_WARPS * i;
    const int blk = btrow[u / 2];
    const uint8_t* st = ring + (i % PS_STAGES) * PS_STAGE_BYTES;
    const float* ksc = reinterpret_cast<const float*>(st + PS_UNIT * 128);
    const int64_t col = u * PS_UNIT + tq * 8 + gid;  // the key this lane stores: row tq*8 + gid
    // rows of this lane: gid + 8m (m = 0..3); tile mt = rows 16mt..16mt+15 = m in {2mt, 2mt+1}
#pragma unroll
    for (int qi = 0; qi < NQ; ++qi) {
      if (qi >= nq) continue;
      float* orow = p.out + (tfirst + qi - p.t0) * p.ld;
      if (u * PS_UNIT > posq[qi]) {  // the whole unit is in this query's future
        if (col < p.ld) orow[col] = -INFINITY;
        continue;
      }
      if (blk < 0) {
        if (col < p.ld) orow[col] = -INFINITY;
        continue;
      }
      float acc[8][2][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][mt][e] = 0.f;
#pragma unroll
      for (int sp = 0; sp < 2; ++sp) {
        uint4 a[4];  // words 4sp..4sp+3 of rows gid + 8m
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int r = gid + 8 * m, c = sp * 4 + tq;
          a[m] = *reinterpret_cast<const uint4*>(st + r * 128 + ((c ^ ((r & 1) << 2)) * 16));
        }
        if (fp8) {
#if DSA_IDX_FP8_MMA
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) {
            if (nt >= nts) break;
            const uint4 b = qs[((qi * 8 + nt) * 2 + sp) * 32 + lane];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
              mma_e4m3_add(acc[nt][mt], a[2 * mt].x, a[2 * mt + 1].x, a[2 * mt].y, a[2 * mt + 1].y, b.x, b.y);
              mma_e4m3_add(acc[nt][mt], a[2 * mt].z, a[2 * mt + 1].z, a[2 * mt].w, a[2 * mt + 1].w, b.z, b.w);
            }
          }
#endif
        } else {
#pragma unroll
          for (int ss = 0; ss < 2; ++ss) {
            uint32_t h0[4][2], h1[4][2];  // f16x2 of words 2ss (h0) and 2ss+1 (h1): [m][lo/hi]
#pragma unroll
            for (int m = 0; m < 4; ++m) {
              const uint32_t w0 = ss ? a[m].z : a[m].x, w1 = ss ? a[m].w : a[m].y;
              h0[m][0] = e4m3x2_to_f16x2(uint16_t(w0)); h0[m][1] = e4m3x2_to_f16x2(uint16_t(w0 >> 16));
              h1[m][0] = e4m3x2_to_f16x2(uint16_t(w1)); h1[m][1] = e4m3x2_to_f16x2(uint16_t(w1 >> 16));
            }
            const int s4 = 2 * sp + ss;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
              if (nt >= nts) break;
              const uint4 b = qs[((qi * 8 + nt) * 4 + s4) * 32 + lane];
#pragma unroll
              for (int mt = 0; mt < 2; ++mt) {
                mma_f16(acc[nt][mt], h0[2 * mt][0], h0[2 * mt + 1][0], h0[2 * mt][1], h0[2 * mt + 1][1], b.x, b.y);
                mma_f16(acc[nt][mt], h1[2 * mt][0], h1[2 * mt + 1][0], h1[2 * mt][1], h1[2 * mt + 1][1], b.z, b.w);
              }
            }
          }
        }
      }
      // ReLU * w summed over heads: in the thread (its 2 heads per n tile), then across the quad.
      float sum[4] = {0.f, 0.f, 0.f, 0.f};  // rows gid, gid+8, gid+16, gid+24
      const float* wq = ws + qi * 64;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (nt >= nts) break;
        const float2 wv = *reinterpret_cast<const float2*>(wq + nt * 8 + 2 * tq);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          sum[2 * mt] = fmaf(wv.x, fmaxf(acc[nt][mt][0], 0.f), sum[2 * mt]);
          sum[2 * mt] = fmaf(wv.y, fmaxf(acc[nt][mt][1], 0.f), sum[2 * mt]);
          sum[2 * mt + 1] = fmaf(wv.x, fmaxf(acc[nt][mt][2], 0.f), sum[2 * mt + 1]);
          sum[2 * mt + 1] = fmaf(wv.y, fmaxf(acc[nt][mt][3], 0.f), sum[2 * mt + 1]);
        }
      }
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        sum[m] += __shfl_xor_sync(0xffffffffu, sum[m], 1);
        sum[m] += __shfl_xor_sync(0xffffffffu, sum[m], 2);
      }
      // lane tq stores row tq*8 + gid: 32 consecutive keys per warp store.
      const float v = tq == 0 ? sum[0] : tq == 1 ? sum[1] : tq == 2 ? sum[2] : sum[3];
      if (col < p.ld) orow[col] = col <= posq[qi] ? __fmul_rn(v, ksc[tq * 8 + gid]) : -INFINITY;
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  mma::cp_wait<0>();
}

size_t pipe_smem(int nq) { return size_t(nq) * (8 * 4 * 32 * 16 + 64 * 4) + size_t(PS_WARPS) * PS_STAGES * PS_STAGE_BYTES; }

size_t score_smem(int Hi) { return size_t(Hi * 128 + ((Hi + 3) / 4) * 4 + 64 * KLDF + 64) * 4; }

// Two consecutive tokens of the same sequence can share a CTA (and every key load).
bool pairs_ok(const Batch& b) {
  const int64_t T = b.n_tokens();
  if (T < 2 || T % 2) return false;
  for (int64_t t = 0; t < T; t += 2)
    if (b.token_seq[size_t(t)] != b.token_seq[size_t(t + 1)]) return false;
  return true;
}

// CTAs per SM of the pipelined kernel with NQ queries per CTA; sets its shared-memory limit (-1: refused).
template <int NQ>
int pipe_probe_occupancy(CudaContext& ctx) {
  if (!ctx.try_smem_attr(indexer_score_pipe_kernel<NQ>, pipe_smem(NQ))) return -1;
  int n = 0;
  DSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, indexer_score_pipe_kernel<NQ>, PS_WARPS * 32,
                                                               pipe_smem(NQ)));
  return std::max(n, 1);
}

// Dynamic shared memory cap of the generic kernels: 200 KB, or less where the GPU allows less per block
// (sm_80: 163 KB, sm_86/89: 99 KB); more heads than fit give a clear error.
int generic_smem_cap(const CudaContext& ctx) { return std::min(200 * 1024, int(ctx.facts().smem_optin) - 1024); }

// rows: tokens [p.t0, p.t0 + rows); nq: 2 if tokens pair up by sequence (t0 and rows even), else 1.
// hist0: optional [rows][2048] first top-k digit histograms to add to (only the sm_90a FP8 kernel builds
// them); returns whether they were built.
bool launch_scores(const CudaContext& ctx, const ScoreP& p, int64_t rows, int64_t max_nblk, int nq,
                   int* hist0 = nullptr) {
  if (rows == 0) return false;
  DSA_CHECK(rows <= 65535, "indexer: tile of ", rows, " rows");
  const IndexerConfig& cfg = ctx.config().indexer;
  const int sms = ctx.facts().sms;
  if (!cfg.exact && p.Hi <= 64 && ctx.indexer_sm90() && (nq == 1 || ctx.indexer_sm90_pairs())) {  // Hopper: wgmma
    Sm90ScoreArgs a{};
    a.q = p.q; a.w = p.w; a.cache = p.cache; a.pos = p.pos; a.tseq = p.tseq; a.bt = p.bt; a.mb = p.mb; a.Hi = p.Hi;
    a.t0 = p.t0; a.rows = rows; a.out = p.out; a.ld = p.ld; a.fill_ninf = p.fill_ninf; a.hist = hist0;
    return launch_scores_sm90(ctx, a, max_nblk, nq);
  }
  if (!cfg.exact && p.Hi <= 64) {
    PScoreP q{};
    q.q = p.q; q.w = p.w; q.cache = p.cache; q.pos = p.pos; q.tseq = p.tseq; q.bt = p.bt; q.mb = p.mb; q.Hi = p.Hi;
    q.t0 = p.t0; q.rows = rows; q.out = p.out; q.ld = p.ld; q.fill_ninf = p.fill_ninf; q.fp8 = cfg.fp8;
    const int64_t groups = (rows + nq - 1) / nq;
    const int occ = ctx.facts().indexer_pipe_occ[nq == 2 ? 1 : 0];
    DSA_CHECK(occ > 0, "indexer: this GPU does not grant the pipelined score kernel its ", pipe_smem(nq),
              " bytes of shared memory per block");
    const int64_t slots = int64_t(occ) * sms;
    const int64_t nunits = max_nblk * (kKvBlock / PS_UNIT);
    int64_t gx = std::max<int64_t>(1, slots / groups);
    gx = std::max<int64_t>(1, std::min<int64_t>(gx, nunits / (PS_WARPS * 2)));  // >= 2 units per warp
    q.gx = int(gx);
    if (nq == 2)
      indexer_score_pipe_kernel<2><<<dim3(unsigned(gx), unsigned(groups)), PS_WARPS * 32, pipe_smem(2)>>>(q);
    else
      indexer_score_pipe_kernel<1><<<dim3(unsigned(gx), unsigned(groups)), PS_WARPS * 32, pipe_smem(1)>>>(q);
    DSA_LAUNCH_CHECK();
    return false;
  }
  // Key blocks per token: enough CTAs to fill the GPU a few times, at least 2 key blocks per CTA.
  int64_t gx = std::max<int64_t>(1, (8 * int64_t(sms) + rows - 1) / rows);
  gx = std::min<int64_t>(gx, std::max<int64_t>(1, (max_nblk + 1) / 2));
  const int smem_cap = generic_smem_cap(ctx);
  if (cfg.exact) {
    const size_t smem = score_smem(p.Hi);
    ctx.smem_attr(indexer_score_kernel, size_t(smem_cap));
    DSA_CHECK(smem <= size_t(smem_cap), "indexer: ", p.Hi, " heads need ", smem, " bytes of shared memory, this GPU allows ",
              smem_cap);
    indexer_score_kernel<<<dim3(unsigned(gx), unsigned(rows)), 64, smem>>>(p);
  } else {
    ctx.smem_attr(indexer_score_mma_kernel, size_t(smem_cap));
    DSA_CHECK(score_mma_smem(p.Hi) <= size_t(smem_cap), "indexer: ", p.Hi, " heads need ", score_mma_smem(p.Hi),
              " bytes of shared memory, this GPU allows ", smem_cap);
    indexer_score_mma_kernel<<<dim3(unsigned(gx), unsigned(rows)), 128, score_mma_smem(p.Hi)>>>(p);
  }
  DSA_LAUNCH_CHECK();
  return false;
}

__global__ void indexer_weights_kernel(float* w, const float* qs, int64_t n, float hs, float ss) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) w[i] = __fmul_rn(__fmul_rn(__fmul_rn(w[i], hs), qs[i]), ss);
}

}  // namespace

void probe_indexer(CudaContext& ctx, DeviceFacts& f) {
  f.indexer_pipe_occ[0] = pipe_probe_occupancy<1>(ctx);
  f.indexer_pipe_occ[1] = pipe_probe_occupancy<2>(ctx);
  probe_indexer_sm90(ctx, f);
}

void CudaBackend::indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) {
  const int64_t T = b.n_tokens();
  if (T == 0) return;
  const DevBatch& d = dev(b);
  indexer_cache_write_kernel<<<cdiv(T, 8), dim3(32, 8)>>>(k.ptr<uint16_t>(), cache.indexer.ptr<uint8_t>(),
                                                          d.positions, d.token_seq, d.block_table, d.max_blocks, T,
                                                          err_);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) {
  const int64_t n = w.numel();
  if (n == 0) return;
  indexer_weights_kernel<<<cdiv(n, 256), 256>>>(w.ptr<float>(), q_scale.ptr<float>(), n, head_scale, softmax_scale);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                                 Tensor& scores) {
  const int64_t T = b.n_tokens(), L = scores.dim(1);
  if (T == 0) return;
  const DevBatch& d = dev(b);
  DSA_CHECK(d.max_end <= L, "indexer_scores: ", L, " columns for positions up to ", d.max_end);
  ScoreP p{};
  p.q = q.ptr<uint8_t>(); p.w = w.ptr<float>(); p.cache = cache.indexer.ptr<uint8_t>();
  p.pos = d.positions; p.tseq = d.token_seq; p.bt = d.block_table; p.mb = d.max_blocks;
  p.Hi = int(q.dim(1)); p.out = scores.ptr<float>(); p.ld = L; p.fill_ninf = 1;
  const int nq = pairs_ok(b) ? 2 : 1;
  for (int64_t t0 = 0; t0 < T; t0 += 65534) {
    p.t0 = t0;
    p.out = scores.ptr<float>() + t0 * L;
    launch_scores(context(), p, std::min<int64_t>(65534, T - t0), (d.max_end + kKvBlock - 1) / kKvBlock, nq);
  }
}

void CudaBackend::indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                               Tensor& topk) {
  const int64_t T = b.n_tokens(), Hi = q.dim(1);
  DSA_CHECK(q.dim(2) == kIndexDim && topk.dim(1) == k, "indexer_topk: shapes ", q.str(), " ", topk.str());
  if (T == 0) return;
  const DevBatch& d = dev(b);
  const int64_t max_nblk = (d.max_end + kKvBlock - 1) / kKvBlock, ld = std::max<int64_t>(64, max_nblk * kKvBlock);
  int nq = pairs_ok(b) ? 2 : 1;
  int64_t rows = std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(T, config().indexer.score_tile_floats / ld), 65534));
  if (nq == 2 && rows < T) {  // tiles keep the pairs together
    if (rows >= 2) rows = rows / 2 * 2;
    else nq = 1;
  }
  Tensor tile = alloc(DType::F32, {rows, ld});  // the bounded score tile, reused for every chunk of tokens
  ScoreP p{};
  p.q = q.ptr<uint8_t>(); p.w = w.ptr<float>(); p.cache = cache.indexer.ptr<uint8_t>();
  p.pos = d.positions; p.tseq = d.token_seq; p.bt = d.block_table; p.mb = d.max_blocks;
  p.Hi = int(Hi); p.out = tile.ptr<float>(); p.ld = ld; p.fill_ninf = 0;
  for (int64_t t0 = 0; t0 < T; t0 += rows) {
    const int64_t r = std::min(rows, T - t0);
    p.t0 = t0;
    // The first radix pass of the on-chip top-k from the score kernel's epilogue (sm_90a FP8 kernel):
    // docs/indexer-topk-cuda.md.
    int* h0 = topk_takes_hist0(ld, r, k) ? topk_hist0(r) : nullptr;
    bool built = false;
    try {
      built = launch_scores(context(), p, r, max_nblk, nq, h0);
      launch_topk(tile.ptr<float>(), ld, d.positions, 1, t0, r, k, topk.ptr<int32_t>(), built ? h0 : nullptr);
    } catch (...) {  // a failed launch must not leave counts in the buffer for a later call
      if (built) cudaMemsetAsync(h0, 0, size_t(r) * 2048 * sizeof(int));
      throw;
    }
  }
}

}  // namespace dsa::cuda

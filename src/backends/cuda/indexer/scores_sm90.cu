// Indexer decode/prefill scores on Hopper tensor cores (wgmma, sm_90a). Two kernels:
//
// 1. indexer_scores_sm90_fp8_kernel (the default): e4m3 x e4m3 wgmma straight from the cache bytes,
//    one or two query tokens of a sequence per CTA, a 4-deep cp.async ring, 4 CTAs per SM. See the
//    comment above it. Its FP8 accumulation is not fp32 (the tests bound the difference).
// 2. indexer_scores_sm90_kernel (DSA_CUDA_INDEXER_WGMMA_FP8=0: IndexerConfig::sm90_fp8_stages = 0): f16 wgmma, exact products and fp32
//    accumulation, so it differs from the CPU only by fp32 summation order; one token per CTA.
//
// f16 kernel. Work: CTA = 1 warpgroup (128 threads) x one token x a contiguous range of 64-key cache
// blocks. Per block: cp.async brings the 8 KB of e4m3 keys + 64 scales into a 3-deep ring; the threads
// convert the keys to f16 (exact for e4m3) into a 128B-swizzled K-major tile; 8 wgmma m64n64k16
// compute S[64 keys x 64 heads] = K . Q^T in fp32 (f16 products are exact in fp32, so the scores
// differ from the CPU only by fp32 summation order, as the portable kernel); the epilogue sums
// ReLU(S) * w over heads in registers + 2 quad shuffles and applies the key scale after the sum.
// Tile layout (both operands, K-major, 128B swizzle): per 64-dim half ("atom column") 64 rows of
// 128 bytes, 16-byte chunk c of row r stored at chunk c ^ (r % 8); atoms are 8 KB and 1024-aligned;
// a k16 step is the atom base + 32 bytes x (step % 4) in the descriptor's start address.
// It runs at ~43-46% of copy bandwidth at b=32/128 64K: the conversion pass (all threads, then a
// barrier before the wgmma) and only 2 blocks in flight per CTA leave both HBM and the tensor pipe idle.
#include <cuda_fp8.h>

#include <algorithm>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/wgmma.cuh"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/indexer/scores_sm90.h"
#include "backends/cuda/topk/topk_key.cuh"

namespace dsa::cuda {

namespace {

constexpr int kStages = 3;
constexpr int kRawBytes = kKvBlock * kIndexDim + kKvBlock * 4;  // 8448: keys + scales of one block
constexpr int kTileBytes = 64 * 256;                            // 64 rows x 128 f16, two 8 KB atoms
constexpr int kBids = 2048;                                     // block ids staged in shared memory
constexpr size_t kSmem = 1024 /*align slack*/ + kTileBytes /*q*/ + kTileBytes /*keys*/ + kStages * kRawBytes +
                         64 * 4 /*w*/ + kBids * 4;

__global__ void sm90_probe_kernel(int* out) { *out = DSA_WGMMA; }

#if DSA_WGMMA
using wgmma::desc_sw128;

__device__ __forceinline__ uint32_t cvt_e4m3x2_f16x2(uint16_t v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(v), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

// 16 e4m3 values (dims 16c..16c+15 of row r) -> two swizzled 16-byte f16 chunks of the tile.
__device__ __forceinline__ void store_f16_chunks(uint8_t* tile, int r, int c, uint4 v) {
  const int atom = c >> 2, fc = (c & 3) * 2;  // f16 chunk pair within the 128-byte atom row
  uint8_t* row = tile + atom * 8192 + r * 128;
  const uint4 lo = make_uint4(cvt_e4m3x2_f16x2(uint16_t(v.x)), cvt_e4m3x2_f16x2(uint16_t(v.x >> 16)),
                              cvt_e4m3x2_f16x2(uint16_t(v.y)), cvt_e4m3x2_f16x2(uint16_t(v.y >> 16)));
  const uint4 hi = make_uint4(cvt_e4m3x2_f16x2(uint16_t(v.z)), cvt_e4m3x2_f16x2(uint16_t(v.z >> 16)),
                              cvt_e4m3x2_f16x2(uint16_t(v.w)), cvt_e4m3x2_f16x2(uint16_t(v.w >> 16)));
  *reinterpret_cast<uint4*>(row + ((fc ^ (r & 7)) << 4)) = lo;
  *reinterpret_cast<uint4*>(row + (((fc + 1) ^ (r & 7)) << 4)) = hi;
}
#endif

__global__ void __launch_bounds__(128) indexer_scores_sm90_kernel(Sm90ScoreArgs p, int gx) {
#if DSA_WGMMA
  extern __shared__ uint8_t smraw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smraw) + 1023) & ~uintptr_t(1023));
  uint8_t* qt = base;                              // q tile (f16, swizzled)
  uint8_t* kt = base + kTileBytes;                 // key tile (f16, swizzled)
  uint8_t* raw = base + 2 * kTileBytes;            // kStages raw blocks
  float* ws = reinterpret_cast<float*>(raw + kStages * kRawBytes);
  int* bids = reinterpret_cast<int*>(ws + 64);     // physical block of each of this CTA's blocks
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int64_t t = p.t0 + blockIdx.y;
  const int posq = p.pos[t];
  const int s = p.tseq[t];
  const int cx = blockIdx.x;
  float* orow = p.out + (t - p.t0) * p.ld;
  const int64_t nblk = int64_t(posq) / kKvBlock + 1;
  if (p.fill_ninf)
    for (int64_t c = nblk * kKvBlock + int64_t(cx) * 128 + tid; c < p.ld; c += int64_t(gx) * 128) orow[c] = -INFINITY;
  const int64_t per = (nblk + gx - 1) / gx, b0 = int64_t(cx) * per, b1 = min(nblk, b0 + per);
  if (b0 >= b1) return;
  const int32_t* btrow = p.bt + int64_t(s) * p.mb;

  // q (64 heads x 128 dims; heads >= Hi zero) -> f16 swizzled tile; weights.
  for (int ch = tid; ch < 64 * 8; ch += 128) {
    const int h = ch / 8, c = ch % 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h < p.Hi) v = *reinterpret_cast<const uint4*>(p.q + (t * p.Hi + h) * 128 + c * 16);
    store_f16_chunks(qt, h, c, v);
  }
  if (tid < 64) ws[tid] = tid < p.Hi ? p.w[t * p.Hi + tid] : 0.f;
  // The block table slice of this CTA's range, loaded once: a per-block lookup would put a dependent
  // global load in front of every cp.async (one L2 latency per block, the kernel's former limit).
  for (int64_t i = tid; i < min(b1 - b0, int64_t(kBids)); i += 128) bids[i] = btrow[b0 + i];
  __syncthreads();
  auto bid = [&](int64_t b) { return b - b0 < kBids ? bids[b - b0] : btrow[b]; };

  auto issue = [&](int64_t b) {
    if (b < b1) {
      const int blk = bid(b);
      if (blk >= 0) {
        const uint8_t* src = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
        uint8_t* dst = raw + ((b - b0) % kStages) * kRawBytes;
        for (int ch = tid; ch < kRawBytes / 16; ch += 128) mma::cp16(dst + ch * 16, src + ch * 16);
      }
    }
    mma::cp_commit();
  };
  for (int i = 0; i < kStages - 1; ++i) issue(b0 + i);

  for (int64_t b = b0; b < b1; ++b) {
    mma::cp_wait<kStages - 2>();
    __syncthreads();  // this block's bytes (all threads' copies) have landed; block b-1 is fully done
    issue(b + kStages - 1);  // refills block b-1's stage (its scales were read before the barrier)
    const int blk = bid(b);
    const uint8_t* rb = raw + ((b - b0) % kStages) * kRawBytes;
    const int64_t col0 = b * kKvBlock;
    if (blk < 0) {  // unmapped block: no keys
      if (tid < 64 && col0 + tid < p.ld) orow[col0 + tid] = -INFINITY;
      continue;
    }
    uint8_t* tile = kt;  // free: every thread passed the barrier above after block b-1's wgmma completed
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int ch = tid + 128 * j, r = ch / 8, c = ch % 8;
      store_f16_chunks(tile, r, c, *reinterpret_cast<const uint4*>(rb + r * 128 + c * 16));
    }
    wgmma::fence_proxy_async();  // generic-proxy stores -> wgmma reads
    __syncthreads();
    float d[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
      const int off = (ks >> 2) * 8192 + (ks & 3) * 32;
      wgmma::m64n64k16_f16(d, desc_sw128(tile + off), desc_sw128(qt + off), ks > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
    // d[4j + e]: key row 16*warp + gid (+8 for e >= 2), head 8j + 2tq (+1 for odd e).
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float w0 = ws[8 * j + 2 * tq], w1 = ws[8 * j + 2 * tq + 1];
      s0 = fmaf(w0, fmaxf(d[4 * j + 0], 0.f), s0);
      s0 = fmaf(w1, fmaxf(d[4 * j + 1], 0.f), s0);
      s1 = fmaf(w0, fmaxf(d[4 * j + 2], 0.f), s1);
      s1 = fmaf(w1, fmaxf(d[4 * j + 3], 0.f), s1);
    }
    s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
    s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
    if (tq < 2) {
      const int key = 16 * warp + gid + 8 * tq;
      const int64_t col = col0 + key;
      const float ksc = reinterpret_cast<const float*>(rb + kKvBlock * kIndexDim)[key];
      if (col < p.ld) orow[col] = col <= posq ? __fmul_rn(tq ? s1 : s0, ksc) : -INFINITY;
    }
  }
  mma::cp_wait<0>();
#else
  __trap();  // never launched: DeviceFacts::indexer_sm90 is false for this build of the kernel
#endif
}


// ---- FP8 variant: e4m3 x e4m3 wgmma straight from the cache bytes ----------------------------------
//
// Why: the f16 kernel spends its time on the per-block e4m3 -> f16 conversion (all 128 threads, then a
// barrier before the wgmma) and keeps only 2 blocks in flight per CTA; neither the tensor pipe nor HBM is
// busy. e4m3 wgmma reads the cache bytes as they are (a key row is 128 e4m3 = exactly one 128B-swizzle
// row), so a block is 4 x m64nNk32, there is no conversion pass, and the shared memory the f16 tiles took
// goes into a deeper cp.async ring (STAGES blocks, STAGES-1 in flight per CTA, 2-4 CTAs per SM).
// NQ = 2 (MTP decode: two tokens of one sequence) puts both queries' heads in N = 128 so one key block
// feeds both.
// Precision: Hopper's FP8 tensor cores add the 32 exact products of a k32 step and the accumulator with
// fewer mantissa bits than fp32 (truncation after aligning to the largest addend), so the scores are not
// the CPU's to fp32 rounding; see docs/indexer-topk-cuda.md for the bound the tests use.
// DSA_CUDA_INDEXER_WGMMA_FP8=0 selects the f16 kernel (exact products, fp32 accumulation).
constexpr int kFp8Bids = 1024;
constexpr size_t fp8_smem(int nq, int stages, bool hist) {
  return 1024 /*align slack*/ + size_t(nq) * 8192 /*q*/ + size_t(stages) * (8192 + 256) /*keys, scales*/ +
         size_t(nq) * 64 * 4 /*w*/ + kFp8Bids * 4 + (hist ? kTopkDigit0Bins * 4 : 0);
}


// grid (gx, groups): group g = tokens t0 + NQ*g .. + NQ-1 (the same sequence when NQ = 2), CTA x = a
// contiguous range of the group's 64-key blocks.
// HIST: also the first radix digit's histogram of every row's keys [0, position] (the top-k's pass 0,
// topk/topk_key.cuh), added to p.hist[row][2048]: shared-memory counts (16 bits per query, two queries
// packed in one int: the host keeps a CTA's keys per row < 65536), flushed with one global atomic per
// non-zero bin and row. The on-chip top-k then starts at its second digit.
template <int NQ, int STAGES, bool HIST>
__global__ void __launch_bounds__(128) indexer_scores_sm90_fp8_kernel(Sm90ScoreArgs p, int gx) {
  pdl_wait();  // launched through launch_chained (launch.cuh)
  pdl_launch_next();
#if DSA_WGMMA
  extern __shared__ uint8_t smraw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smraw) + 1023) & ~uintptr_t(1023));
  uint8_t* qt = base;                                  // NQ*64 rows (query-major heads) x 128 e4m3, swizzled
  uint8_t* kt = base + NQ * 8192;                      // STAGES key tiles (64 x 128 e4m3, swizzled)
  float* kscale = reinterpret_cast<float*>(kt + STAGES * 8192);  // STAGES x 64 key scales
  float* ws = kscale + STAGES * 64;                    // NQ x 64 head weights
  int* bids = reinterpret_cast<int*>(ws + NQ * 64);    // physical block of each of this CTA's blocks
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int64_t tfirst = p.t0 + int64_t(blockIdx.y) * NQ;
  const int nq = int(min(int64_t(NQ), p.t0 + p.rows - tfirst));
  int posq[NQ];
  int posmax = 0;
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    posq[i] = i < nq ? p.pos[tfirst + i] : -1;
    posmax = max(posmax, posq[i]);
  }
  const int s = p.tseq[tfirst];
  const int cx = blockIdx.x;
  const int64_t nblk = int64_t(posmax) / kKvBlock + 1;
  if (p.fill_ninf)
    for (int i = 0; i < nq; ++i) {
      float* orow = p.out + (tfirst + i - p.t0) * p.ld;
      for (int64_t c = nblk * kKvBlock + int64_t(cx) * 128 + tid; c < p.ld; c += int64_t(gx) * 128) orow[c] = -INFINITY;
    }
  const int64_t per = (nblk + gx - 1) / gx, b0 = int64_t(cx) * per, b1 = min(nblk, b0 + per);
  if (b0 >= b1) return;
  const int32_t* btrow = p.bt + int64_t(s) * p.mb;

  // q rows (heads >= Hi and a missing second query: zero) by cp.async in the first copy group.
  for (int ch = tid; ch < NQ * 64 * 8; ch += 128) {
    const int r = ch / 8, c = ch % 8, qi = r / 64, h = r % 64;
    if (qi < nq && h < p.Hi) mma::cp16(qt + wgmma::sw128_offset(r, c), p.q + ((tfirst + qi) * p.Hi + h) * 128 + c * 16);
    else *reinterpret_cast<uint4*>(qt + wgmma::sw128_offset(r, c)) = make_uint4(0, 0, 0, 0);
  }
  for (int e = tid; e < NQ * 64; e += 128) {
    const int qi = e / 64, h = e % 64;
    ws[e] = (qi < nq && h < p.Hi) ? p.w[(tfirst + qi) * p.Hi + h] : 0.f;
  }
  for (int64_t i = tid; i < min(b1 - b0, int64_t(kFp8Bids)); i += 128) bids[i] = btrow[b0 + i];
  int* hsm = bids + kFp8Bids;  // HIST: [2048] packed counts (query 0: low 16 bits, query 1: high)
  if constexpr (HIST)
    for (int i = tid; i < kTopkDigit0Bins; i += 128) hsm[i] = 0;
  __syncthreads();
  auto bid = [&](int64_t b) { return b - b0 < kFp8Bids ? bids[b - b0] : btrow[b]; };

  auto issue = [&](int64_t b) {
    if (b < b1) {
      const int blk = bid(b);
      if (blk >= 0) {
        const uint8_t* src = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
        const int st = int((b - b0) % STAGES);
        uint8_t* kdst = kt + st * 8192;
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // 512 key chunks: row r = ch / 8, chunk c = ch % 8
          const int ch = tid + 128 * j;
          mma::cp16(kdst + wgmma::sw128_offset(ch / 8, ch % 8), src + ch * 16);
        }
        if (tid < 16) mma::cp16(kscale + st * 64 + tid * 4, src + kKvBlock * kIndexDim + tid * 16);
      }
    }
    mma::cp_commit();
  };
  for (int i = 0; i < STAGES - 1; ++i) issue(b0 + i);

  for (int64_t b = b0; b < b1; ++b) {
    mma::cp_wait<STAGES - 2>();
    // cp.async writes are generic-proxy stores as far as wgmma (async proxy) is concerned
    wgmma::fence_proxy_async();
    __syncthreads();  // block b has landed (all threads' copies); block b-1 is fully done
    issue(b + STAGES - 1);  // refills block b-1's stage
    const int blk = bid(b);
    const int st = int((b - b0) % STAGES);
    const int64_t col0 = b * kKvBlock;
    if (blk < 0) {  // unmapped block: no keys
      if (tid < 64)
        for (int i = 0; i < nq; ++i)
          if (col0 + tid < p.ld) p.out[(tfirst + i - p.t0) * p.ld + col0 + tid] = -INFINITY;
      if constexpr (HIST)
        if (tid < nq) {  // the block's keys up to the position are -inf
          const int64_t n_in = min(int64_t(kKvBlock), max(int64_t(0), int64_t(posq[tid]) - col0 + 1));
          if (n_in) atomicAdd(&hsm[order_key(-INFINITY) >> kTopkDigit0Shift], int(n_in) << (16 * tid));
        }
      continue;
    }
    float d[NQ * 32];
    wgmma::fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if constexpr (NQ == 1) wgmma::m64n64k32_e4m3(d, desc_sw128(kt + st * 8192 + ks * 32), desc_sw128(qt + ks * 32), ks > 0);
      else wgmma::m64n128k32_e4m3(d, desc_sw128(kt + st * 8192 + ks * 32), desc_sw128(qt + ks * 32), ks > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();
    // d[4j + e]: key row 16*warp + gid (+8 for e >= 2), head column 8j + 2tq (+1 for odd e); column n is
    // head n % 64 of query n / 64.
    float s0[NQ], s1[NQ];
#pragma unroll
    for (int qi = 0; qi < NQ; ++qi) {
      s0[qi] = 0.f;
      s1[qi] = 0.f;
#pragma unroll
      for (int j = 8 * qi; j < 8 * qi + 8; ++j) {
        const float w0 = ws[8 * j + 2 * tq], w1 = ws[8 * j + 2 * tq + 1];
        s0[qi] = fmaf(w0, fmaxf(d[4 * j + 0], 0.f), s0[qi]);
        s0[qi] = fmaf(w1, fmaxf(d[4 * j + 1], 0.f), s0[qi]);
        s1[qi] = fmaf(w0, fmaxf(d[4 * j + 2], 0.f), s1[qi]);
        s1[qi] = fmaf(w1, fmaxf(d[4 * j + 3], 0.f), s1[qi]);
      }
      s0[qi] += __shfl_xor_sync(0xffffffffu, s0[qi], 1);
      s0[qi] += __shfl_xor_sync(0xffffffffu, s0[qi], 2);
      s1[qi] += __shfl_xor_sync(0xffffffffu, s1[qi], 1);
      s1[qi] += __shfl_xor_sync(0xffffffffu, s1[qi], 2);
    }
    // lane tq of the quad stores key row gid (+8 for odd tq) of query tq / 2 (NQ = 2) or tq < 2 only.
    const int qi = NQ == 2 ? tq >> 1 : 0;
    if ((NQ == 2 || tq < 2) && qi < nq) {
      const int key = 16 * warp + gid + 8 * (tq & 1);
      const int64_t col = col0 + key;
      float v = (tq & 1) ? s1[0] : s0[0];
      if constexpr (NQ == 2)
        if (qi) v = (tq & 1) ? s1[NQ - 1] : s0[NQ - 1];
      const int pq = (NQ == 2 && qi) ? posq[NQ - 1] : posq[0];
      const float val = col <= pq ? __fmul_rn(v, kscale[st * 64 + key]) : -INFINITY;
      if (col < p.ld) p.out[(tfirst + qi - p.t0) * p.ld + col] = val;
      if constexpr (HIST)
        if (col <= pq) atomicAdd(&hsm[order_key(val) >> kTopkDigit0Shift], 1 << (16 * qi));
    }
  }
  mma::cp_wait<0>();
  if constexpr (HIST) {  // flush: one global atomic per non-zero bin and row
    __syncthreads();
    int* g0 = p.hist + (tfirst - p.t0) * kTopkDigit0Bins;
    for (int i = tid; i < kTopkDigit0Bins; i += 128) {
      const unsigned c = unsigned(hsm[i]);  // unsigned: query 1's count may reach bit 31 (up to 65535)
      if (c & 0xffffu) atomicAdd(g0 + i, int(c & 0xffffu));
      if (NQ == 2 && (c >> 16)) atomicAdd(g0 + kTopkDigit0Bins + i, int(c >> 16));
    }
  }
#else
  __trap();  // never launched: DeviceFacts::indexer_sm90 is false for this build of the kernel
#endif
}

}  // namespace

namespace {
constexpr int kFp8DefaultStages = 4;  // measured best of 4 / 6 / 8 (4 CTAs per SM); IndexerConfig::sm90_fp8_stages
static_assert(kFp8DefaultStages == IndexerConfig{}.sm90_fp8_stages, "the config's default ring depth");

// CTAs per SM of the FP8 kernel; sets its shared-memory limit on this device (0: the limit was refused).
template <int NQ, int STAGES, bool HIST = false>
int fp8_probe_occupancy(CudaContext& ctx) {
  if (!ctx.try_smem_attr(indexer_scores_sm90_fp8_kernel<NQ, STAGES, HIST>, fp8_smem(NQ, STAGES, HIST))) return 0;
  int n = 0;
  DSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, indexer_scores_sm90_fp8_kernel<NQ, STAGES, HIST>, 128,
                                                               fp8_smem(NQ, STAGES, HIST)));
  return n;
}

// Returns whether the first-digit histogram was built (a.hist set, the default ring depth, no loss of
// occupancy, fewer than 65536 keys per CTA and row).
template <int NQ, int STAGES>
bool launch_fp8(const CudaContext& ctx, const Sm90ScoreArgs& a, int64_t max_nblk) {
  // The paired kernel reads the first token's sequence for both (indexer.cu pairs_ok: even rows, same sequence).
  DSA_CHECK(NQ == 1 || a.rows % 2 == 0, "indexer (sm90 fp8): token pairs need an even row count, got ", a.rows);
  const DeviceFacts& f = ctx.facts();
  const int occ = f.indexer_fp8_occ[NQ - 1][STAGES - 3];
  const int64_t groups = (a.rows + NQ - 1) / NQ;
  // Enough CTAs to fill every SM's slots, at least 2 blocks per CTA.
  int64_t gx = std::max<int64_t>(1, int64_t(std::max(occ, 1)) * f.sms / groups);
  gx = std::max<int64_t>(1, std::min<int64_t>(gx, max_nblk / 2));
  DSA_CHECK(groups <= 65535, "indexer (sm90 fp8): tile of ", a.rows, " rows");
  bool hist = false;
  if constexpr (STAGES == kFp8DefaultStages)
    hist = a.hist != nullptr && f.indexer_fp8_hist_occ[NQ - 1] >= occ && (max_nblk + gx - 1) / gx * kKvBlock < 65536;
  if (hist) {
    if constexpr (STAGES == kFp8DefaultStages)
      launch_chained(ctx, indexer_scores_sm90_fp8_kernel<NQ, STAGES, true>, dim3(unsigned(gx), unsigned(groups)), dim3(128),
                     fp8_smem(NQ, STAGES, true), 1, a, int(gx));
  } else {
    launch_chained(ctx, indexer_scores_sm90_fp8_kernel<NQ, STAGES, false>, dim3(unsigned(gx), unsigned(groups)), dim3(128),
                   fp8_smem(NQ, STAGES, false), 1, a, int(gx));
  }
  DSA_LAUNCH_CHECK();
  return hist;
}

template <int NQ>
bool launch_fp8_stages(const CudaContext& ctx, const Sm90ScoreArgs& a, int64_t max_nblk, int stages) {
  switch (stages) {
    case 3: return launch_fp8<NQ, 3>(ctx, a, max_nblk);
    case 5: return launch_fp8<NQ, 5>(ctx, a, max_nblk);
    case 6: return launch_fp8<NQ, 6>(ctx, a, max_nblk);
    default: return launch_fp8<NQ, 4>(ctx, a, max_nblk);
  }
}
}  // namespace

bool probe_sm90a_sass() {
  int* d = nullptr;
  if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  int h = 0;
  sm90_probe_kernel<<<1, 1>>>(d);
  const bool launched = cudaGetLastError() == cudaSuccess && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d);
  cudaGetLastError();
  return launched && h == 1;
}

void probe_indexer_sm90(CudaContext& ctx, DeviceFacts& f) {
  f.indexer_sm90 = false;
  if (!f.sm90a_sass) return;
  // Every kernel's shared memory set here (never in a graph capture), and the occupancies the grids follow.
  const bool f16 = ctx.try_smem_attr(indexer_scores_sm90_kernel, kSmem);
  f.indexer_fp8_occ[0][0] = fp8_probe_occupancy<1, 3>(ctx);
  f.indexer_fp8_occ[0][1] = fp8_probe_occupancy<1, 4>(ctx);
  f.indexer_fp8_occ[0][2] = fp8_probe_occupancy<1, 5>(ctx);
  f.indexer_fp8_occ[0][3] = fp8_probe_occupancy<1, 6>(ctx);
  f.indexer_fp8_occ[1][0] = fp8_probe_occupancy<2, 3>(ctx);
  f.indexer_fp8_occ[1][1] = fp8_probe_occupancy<2, 4>(ctx);
  f.indexer_fp8_occ[1][2] = fp8_probe_occupancy<2, 5>(ctx);
  f.indexer_fp8_occ[1][3] = fp8_probe_occupancy<2, 6>(ctx);
  f.indexer_fp8_hist_occ[0] = fp8_probe_occupancy<1, kFp8DefaultStages, true>(ctx);
  f.indexer_fp8_hist_occ[1] = fp8_probe_occupancy<2, kFp8DefaultStages, true>(ctx);
  bool ok = f16;
  for (auto& q : f.indexer_fp8_occ)
    for (int o : q) ok = ok && o > 0;
  if (!ok) return;
  int n = 0;
  DSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, indexer_scores_sm90_kernel, 128, kSmem));
  f.indexer_f16_occ = std::max(n, 1);
  f.indexer_sm90 = true;
}

bool launch_scores_sm90(const CudaContext& ctx, const Sm90ScoreArgs& a, int64_t max_nblk, int nq) {
  if (a.rows == 0) return false;
  DSA_CHECK(a.Hi <= 64, "indexer (sm90): ", a.Hi, " heads > 64");
  DSA_CHECK(ctx.facts().indexer_sm90, "indexer (sm90): the sm_90a kernels do not run on this device");
  const int mode = ctx.config().indexer.sm90_fp8_stages;
  if (mode > 0)
    return nq == 2 ? launch_fp8_stages<2>(ctx, a, max_nblk, mode) : launch_fp8_stages<1>(ctx, a, max_nblk, mode);
  DSA_CHECK(nq == 1, "indexer (sm90 f16): one token per CTA");
  const int occ = ctx.facts().indexer_f16_occ;
  // Enough CTAs to fill every SM's slots, at least 2 blocks per CTA.
  int64_t gx = std::max<int64_t>(1, int64_t(occ) * ctx.facts().sms / a.rows);
  gx = std::max<int64_t>(1, std::min<int64_t>(gx, max_nblk / 2));
  DSA_CHECK(a.rows <= 65535, "indexer (sm90): tile of ", a.rows, " rows");
  indexer_scores_sm90_kernel<<<dim3(unsigned(gx), unsigned(a.rows)), 128, kSmem>>>(a, int(gx));
  DSA_LAUNCH_CHECK();
  return false;
}

}  // namespace dsa::cuda

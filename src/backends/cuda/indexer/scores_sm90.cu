// Indexer decode/prefill scores on Hopper tensor cores (wgmma, sm_90a), one query token per CTA.
//
// Why: the portable kernel (mma.sync m16n8k16, f16 operands) runs the tensor pipe near its mma.sync
// ceiling at ~2 TB/s of keys; wgmma has twice the issue rate and reads both operands from shared
// memory, so the same work takes a quarter of the tensor time and the kernel can follow HBM.
//
// Work: CTA = 1 warpgroup (128 threads) x one token x a contiguous range of 64-key cache blocks.
// Per block: cp.async brings the 8 KB of e4m3 keys + 64 scales into a 3-deep ring; the threads
// convert the keys to f16 (exact for e4m3) into a 128B-swizzled K-major tile; 8 wgmma m64n64k16
// compute S[64 keys x 64 heads] = K . Q^T in fp32 (f16 products are exact in fp32, so the scores
// differ from the CPU only by fp32 summation order, as the portable kernel); the epilogue sums
// ReLU(S) * w over heads in registers + 2 quad shuffles and applies the key scale after the sum.
// Tile layout (both operands, K-major, 128B swizzle): per 64-dim half ("atom column") 64 rows of
// 128 bytes, 16-byte chunk c of row r stored at chunk c ^ (r % 8); atoms are 8 KB and 1024-aligned;
// a k16 step is the atom base + 32 bytes x (step % 4) in the descriptor's start address.
#include <cuda_fp8.h>

#include <cstdlib>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/wgmma.cuh"
#include "backends/cuda/indexer/scores_sm90.h"

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
  __trap();  // never launched: sm90_scores_available() is false for this build of the kernel
#endif
}

}  // namespace

bool sm90a_sass_runs() {
  static const bool ok = [] {
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
  }();
  return ok;
}

namespace {
int g_sm90_enabled = -1;  // -1: from DSA_CUDA_INDEXER_WGMMA (default on); 0/1 set by set_sm90_scores_enabled
}

void set_sm90_scores_enabled(bool on) { g_sm90_enabled = on ? 1 : 0; }

bool sm90_scores_available() {
  if (g_sm90_enabled < 0) {
    const char* e = std::getenv("DSA_CUDA_INDEXER_WGMMA");
    g_sm90_enabled = (e && *e == '0') ? 0 : 1;
  }
  if (!g_sm90_enabled) return false;
  static const bool ok = sm90a_sass_runs() &&
                         cudaFuncSetAttribute(indexer_scores_sm90_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              int(kSmem)) == cudaSuccess;
  return ok;
}

void launch_scores_sm90(const Sm90ScoreArgs& a, int64_t max_nblk, int sms) {
  if (a.rows == 0) return;
  DSA_CHECK(a.Hi <= 64, "indexer (sm90): ", a.Hi, " heads > 64");
  static const int occ = [] {
    int n = 0;
    DSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, indexer_scores_sm90_kernel, 128, kSmem));
    return std::max(n, 1);
  }();
  // Enough CTAs to fill every SM's slots, at least 2 blocks per CTA.
  int64_t gx = std::max<int64_t>(1, int64_t(occ) * sms / a.rows);
  gx = std::max<int64_t>(1, std::min<int64_t>(gx, max_nblk / 2));
  DSA_CHECK(a.rows <= 65535, "indexer (sm90): tile of ", a.rows, " rows");
  indexer_scores_sm90_kernel<<<dim3(unsigned(gx), unsigned(a.rows)), 128, kSmem>>>(a, int(gx));
  DSA_LAUNCH_CHECK();
}

}  // namespace dsa::cuda

#pragma once
// Shared by the stored-scores MLA decode kernels (decode.cu: mma.sync, portable; decode_sm90.cu:
// wgmma, Hopper): the launch parameters, the exact e4m3 x 2^k -> bf16 dequantisation, the cache
// slot resolution of a candidate and the merge of (max, sum) softmax statistics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "backends/cuda/common.cuh"
#include "backends/cuda/mma.cuh"

namespace dsa::cuda::mqa {

constexpr int kScalesOff = int(kMlaLatent), kRopeOff = int(kMlaLatent) + 16;

struct DecP {
  const uint16_t* qlat; const uint16_t* qpe;  // [T, H, 512], [T, H, 64]
  const uint8_t* cache;
  const int32_t* topk; int64_t K;             // nullptr: dense causal
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int H, NS, tiles_per;                       // split s: tiles [s * tiles_per, (s + 1) * tiles_per)
  int64_t KP;                                 // score row stride (a multiple of TN)
  float scale;
  uint16_t* S;     // [T, H, KP] bf16 scores (-inf where no candidate)
  float* ms;       // [T, H, NS, 2] per-split (max, sum exp(s - max))
  float* part;     // [T, H, NS, 512] partial P.V (NS > 1)
  uint16_t* out;   // [T, H, 512]
  int* err;
};

// Two e4m3 values (low 16 bits of x) times a power-of-two scale -> bf16x2, exact.
__device__ __forceinline__ uint32_t deq2(uint32_t x, float sc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(x & 0xffffu), __NV_E4M3);
  const float2 f = __half22float2(__half2(hr));
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * sc, f.y * sc);
  return *reinterpret_cast<const uint32_t*>(&b);
#else
  return uint32_t(f2bf(__fmul_rn(e4m3_to_float(x & 0xff), sc))) |
         (uint32_t(f2bf(__fmul_rn(e4m3_to_float((x >> 8) & 0xff), sc))) << 16);
#endif
}
// 16 e4m3 -> 16 bf16 (two 16-byte stores).
__device__ __forceinline__ void deq16(const uint8_t* src, float sc, uint16_t* dst) {
  const uint4 w = *reinterpret_cast<const uint4*>(src);
  const uint32_t v[4] = {w.x, w.y, w.z, w.w};
  uint32_t o[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    o[2 * i] = deq2(v[i], sc);
    o[2 * i + 1] = deq2(v[i] >> 16, sc);
  }
  reinterpret_cast<uint4*>(dst)[0] = make_uint4(o[0], o[1], o[2], o[3]);
  reinterpret_cast<uint4*>(dst)[1] = make_uint4(o[4], o[5], o[6], o[7]);
}

__device__ __forceinline__ void stat_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;
  s = (m > -INFINITY ? s * expf(m - mm) : 0.f) + (m2 > -INFINITY ? s2 * expf(m2 - mm) : 0.f);
  m = mm;
}

// Q of token t, heads h0 .. h0 + 63 (72 chunks of 16 bytes per head: 64 latent, 8 RoPE; heads >= H zero),
// by cp.async to dst_of(head, chunk) — every copy of a thread in flight at once; NT threads. The caller
// commits and waits.
template <int NT, class DstOf>
__device__ __forceinline__ void q_tile_async(const DecP& p, int t, int h0, int tid, DstOf dst_of) {
  for (int i = tid; i < 64 * 72; i += NT) {
    const int h = i / 72, c = i % 72;
    void* dst = dst_of(h, c);
    if (h0 + h < p.H) {
      const int64_t row = int64_t(t) * p.H + h0 + h;
      mma::cp16(dst, c < 64 ? static_cast<const void*>(p.qlat + row * 512 + c * 8) : static_cast<const void*>(p.qpe + row * 64 + (c - 64) * 8));
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
}

// ---- cache slots off the critical path ------------------------------------------------------
// Candidate index of position i of token t (-1 beyond c_end: treated as padding, never checked; any
// other value, -2 included, is checked by cand_resolve); the top-k load is issued one tile ahead, the
// block-table load half a tile ahead, both into registers.
__device__ __forceinline__ int cand_idx(const DecP& p, int t, int64_t i, int64_t c_end) {
  if (i >= c_end) return -1;
  return p.topk ? __ldg(p.topk + int64_t(t) * p.K + i) : int(i);
}
// Cache slot of candidate index idx, -1 for none, a bad index or an unmapped block (no error flags:
// kernel B, after kernel A raised them for the same candidates).
__device__ __forceinline__ int cand_slot(const DecP& p, int t, int idx, int posn) {
  if (idx < 0 || idx > posn) return -1;
  return int(slot_of(p.bt, p.mb, p.tseq[t], idx));
}
__device__ __forceinline__ int cand_resolve(const DecP& p, int t, int idx, int posn) {
  if (idx < -1 || idx > posn) {
    atomicOr(p.err, kErrTopk);
    return -1;
  }
  if (idx < 0) return -1;
  const int64_t s = slot_of(p.bt, p.mb, p.tseq[t], idx);
  if (s < 0) atomicOr(p.err, kErrBlock);
  return int(s);
}

}  // namespace dsa::cuda::mqa

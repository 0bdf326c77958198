#pragma once
// Shared device helpers of the CUDA backend: exact conversions matching core/dtype.h, error
// checking, the device mirror of a Batch, and the launch stream.
#include <cuda_runtime.h>
#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

#include <cstdint>

#include "backends/backend.h"

namespace dsa::cuda {

#define DSA_CUDA_CHECK(expr)                                                                        \
  do {                                                                                              \
    cudaError_t e_ = (expr);                                                                        \
    if (e_ != cudaSuccess) ::dsa::fail("CUDA error ", cudaGetErrorString(e_), " at ", __FILE__, ":", \
                                       __LINE__, " (", #expr, ")");                                 \
  } while (0)
// After every launch: catches bad launch configurations at once (no device sync).
#define DSA_LAUNCH_CHECK() DSA_CUDA_CHECK(cudaGetLastError())

// Error bits a kernel can raise without a host round trip; read back at synchronize()/download().
enum ErrBits : int {
  kErrTokenId = 1,      // embed: id out of range
  kErrPosition = 2,     // rope: position beyond the table
  kErrTopk = 4,         // attention: top-k index outside [-1, position]
  kErrBlock = 8,        // cache: block table entry < 0
  kErrExpert = 16,      // moe: expert id out of range
};

// Device mirror of a Batch (Batch::device holds a shared_ptr to this).
struct DevBatch {
  int32_t* positions = nullptr;    // [T]
  int32_t* token_seq = nullptr;    // [T]
  int32_t* block_table = nullptr;  // [n_seqs, max_blocks]
  int32_t* seq_start = nullptr;    // [n_seqs] start_pos
  int32_t* seq_nnew = nullptr;     // [n_seqs]
  int32_t* seq_tok = nullptr;      // [n_seqs] token_offset
  int32_t* seq_ctx = nullptr;      // [n_seqs] ctx_offset
  int n_tokens = 0, n_seqs = 0, max_blocks = 0, max_end = 0;
  Tensor storage;                  // one device buffer holding all of the above
};

inline unsigned cdiv(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

#if defined(__CUDACC__)  // device helpers (the header is also included by host-only test code)
// ---- exact scalar conversions (bit-identical to core/dtype.h) ------------------------------
__device__ __forceinline__ float bf2f(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }
__device__ __forceinline__ uint16_t f2bf(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
__device__ __forceinline__ float rbf(float f) { return bf2f(f2bf(f)); }

// e4m3fn -> fp32, exact (subnormals included; 0x7f/0xff are NaN).
__device__ __forceinline__ float e4m3_to_float(uint32_t b) {
  if ((b & 0x7fu) == 0x7fu) return __uint_as_float(0x7fc00000u);
  const float mag = __uint_as_float((b & 0x7fu) << 20) * 1.329227995784916e+36f;  // * 2^120
  return (b & 0x80u) ? -mag : mag;
}
// fp32 -> e4m3fn, round to nearest even, saturating (callers clamp to ±448 first).
__device__ __forceinline__ uint8_t float_to_e4m3(float f) {
  return uint8_t(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ float pow2_ceil_dev(float v) {
  const uint32_t u = __float_as_uint(v);
  const int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  return __uint_as_float(uint32_t(e + 127) << 23);
}
__device__ __forceinline__ float ue8m0_scale_dev(float amax) {
  if (amax < 1e-4f) amax = 1e-4f;
  return pow2_ceil_dev(__fmul_rn(amax, 1.0f / 448.0f));
}
// Quantise one value with the group's inverse scale (exact power of two).
__device__ __forceinline__ uint8_t quant_e4m3(float x, float inv) {
  return float_to_e4m3(fminf(fmaxf(__fmul_rn(x, inv), -448.0f), 448.0f));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Physical cache slot (block * 64 + offset) of position pos of sequence s; -1 if unmapped.
__device__ __forceinline__ int64_t slot_of(const int32_t* block_table, int max_blocks, int s, int pos) {
  const int blk = block_table[int64_t(s) * max_blocks + pos / kKvBlock];
  return blk < 0 ? -1 : int64_t(blk) * kKvBlock + pos % kKvBlock;
}

#endif  // __CUDACC__

}  // namespace dsa::cuda

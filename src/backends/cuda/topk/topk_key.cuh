#pragma once
// The top-k's order-preserving key of a score and its first radix digit, shared by the top-k kernels and
// the indexer score kernel that builds the first histogram in its epilogue (docs/indexer-topk-cuda.md,
// "first histogram from the score kernel").
#include <cstdint>

namespace dsa::cuda {

// Floats -> uint32 in the same order (NaN ranks as -inf, -0 == +0).
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) v = -INFINITY;  // NaN ranks as -inf
  if (v == 0.f) v = 0.f;      // -0 == +0
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// First digit of the on-chip top-k (digits 11/11/10): key bits 31..21, 2048 bins.
constexpr int kTopkDigit0Shift = 21;
constexpr int kTopkDigit0Bins = 2048;

}  // namespace dsa::cuda

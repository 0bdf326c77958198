#pragma once
// The noise of Backend::sample, shared by every backend so that they draw the same tokens: a
// counter-based hash of (seed, counter, token id), so a draw depends on nothing but its request's
// seed and the index of the token being drawn — not on the batch, the step or the thread.
#include <cstdint>

#if defined(__CUDACC__)
#define DSA_HOST_DEVICE __host__ __device__
#else
#define DSA_HOST_DEVICE
#endif

namespace dsa {

// splitmix64's finaliser: a bijection on 64 bits with full avalanche.
DSA_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in the open interval (0, 1): 53 random bits, centred in their cell.
DSA_HOST_DEVICE inline double sample_uniform(uint64_t seed, uint64_t counter, uint32_t id) {
  const uint64_t h = mix64(mix64(mix64(seed) ^ counter) ^ uint64_t(id));
  return (double(h >> 11) + 0.5) * 0x1p-53;
}

}  // namespace dsa

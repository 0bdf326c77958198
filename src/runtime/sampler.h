#pragma once
// Token sampling on host fp32 logits: greedy (temperature 0), temperature, top-k, top-p, seeded.
#include <cstdint>
#include <random>
#include <vector>

namespace dsa {

struct SamplingParams {
  float temperature = 0.0f;  // 0 -> greedy argmax (ties -> lowest id)
  int64_t top_k = 0;         // 0 -> off
  float top_p = 1.0f;        // 1 -> off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> buf_;
};

// Greedy argmax, lowest id on ties.
int32_t argmax(const float* logits, int64_t n);

}  // namespace dsa

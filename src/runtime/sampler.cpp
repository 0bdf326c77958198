#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

namespace dsa {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

int32_t Sampler::sample(const float* logits, int64_t V) {
  if (p_.temperature <= 0.0f) return argmax(logits, V);
  buf_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) buf_[size_t(i)] = {logits[i] / p_.temperature, int32_t(i)};
  auto desc = [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  int64_t n = V;
  if (p_.top_k > 0 && p_.top_k < V) {
    std::partial_sort(buf_.begin(), buf_.begin() + p_.top_k, buf_.end(), desc);
    n = p_.top_k;
  } else {
    std::sort(buf_.begin(), buf_.end(), desc);
  }
  // softmax over the kept candidates (sorted descending), then the nucleus cut.
  const float m = buf_[0].first;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (buf_[size_t(i)].first = std::exp(buf_[size_t(i)].first - m));
  if (p_.top_p < 1.0f) {
    double acc = 0;
    int64_t keep = 0;
    while (keep < n) {
      acc += buf_[size_t(keep)].first / sum;
      ++keep;
      if (acc >= p_.top_p) break;
    }
    n = keep;
    sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += buf_[size_t(i)].first;
  }
  std::uniform_real_distribution<double> u(0.0, sum);
  double r = u(rng_), acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += buf_[size_t(i)].first;
    if (r < acc) return buf_[size_t(i)].second;
  }
  return buf_[size_t(n - 1)].second;
}

}  // namespace dsa

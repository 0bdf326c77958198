// CPU sampling: the reference for every backend's Backend::sample and token_logprobs
// (docs/sampling.md). Float64 throughout; rows in parallel.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/sample_noise.h"

namespace dsa {

namespace {

// log(sum_v exp(l_v - m)) + m over one row, m = the row's max (the perplexity formula).
double row_logsumexp(const float* l, int64_t V) {
  const float m = *std::max_element(l, l + V);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(l[v]) - m);
  return std::log(s) + m;
}

// The first n ids of the order (logit descending, ties to the lower id), sorted.
void order_prefix(const float* l, int64_t V, int64_t n, std::vector<int32_t>& ids) {
  ids.resize(size_t(V));
  std::iota(ids.begin(), ids.end(), 0);
  auto before = [l](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  if (n < V) std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), before);
  else std::sort(ids.begin(), ids.end(), before);
  ids.resize(size_t(n));
}

}  // namespace

void CpuBackend::sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens,
                        Tensor& logprobs, Tensor* top_ids, Tensor* top_lp) {
  const int64_t R = logits.dim(0), V = logits.dim(1);
  const int64_t NT = top_ids ? top_ids->dim(1) : 0;
  check_sample_args(logits, params.size(), tokens, logprobs, top_ids, top_lp);
#pragma omp parallel for schedule(dynamic) if (R > 1)
  for (int64_t r = 0; r < R; ++r) {
    const float* l = logits.ptr<float>() + r * V;
    const SampleParams& p = params[size_t(r)];
    const bool greedy = p.greedy();
    int64_t n = p.top_k > 0 ? std::min<int64_t>(p.top_k, V) : V;
    // Greedy and plain temperature sampling need no order beyond what is asked for the outputs.
    const bool need_order = p.filtered(V);
    std::vector<int32_t> ids;
    order_prefix(l, V, std::max<int64_t>({NT, need_order ? n : 0, greedy ? 1 : 0}), ids);
    int32_t tok = 0;
    if (greedy) {
      tok = ids[0];
    } else {
      const double T = double(p.temperature);
      if (need_order && p.top_p < 1.0f) {
        const double zmax = double(l[ids[0]]) / T;
        double sum = 0;
        for (int64_t i = 0; i < n; ++i) sum += std::exp(double(l[ids[size_t(i)]]) / T - zmax);
        const double target = double(p.top_p) * sum;
        double acc = 0;
        int64_t keep = 0;
        while (keep < n) {
          acc += std::exp(double(l[ids[size_t(keep)]]) / T - zmax);
          ++keep;
          if (acc >= target) break;
        }
        n = keep;
      }
      double best = -std::numeric_limits<double>::infinity();
      int32_t best_id = -1;
      for (int64_t i = 0; i < n; ++i) {
        const int32_t v = need_order ? ids[size_t(i)] : int32_t(i);
        const double key = double(l[v]) / T - std::log(-std::log(sample_uniform(p.seed, p.counter, uint32_t(v))));
        if (key > best || (key == best && v < best_id)) best = key, best_id = v;
      }
      tok = best_id >= 0 ? best_id : ids.empty() ? 0 : ids[0];  // -inf everywhere: fall back to the order
    }
    const double lse = row_logsumexp(l, V);
    tokens.ptr<int32_t>()[r] = tok;
    logprobs.ptr<float>()[r] = float(double(l[tok]) - lse);
    for (int64_t i = 0; i < NT; ++i) {
      top_ids->ptr<int32_t>()[r * NT + i] = ids[size_t(i)];
      top_lp->ptr<float>()[r * NT + i] = float(double(l[ids[size_t(i)]]) - lse);
    }
  }
}

void CpuBackend::token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) {
  const int64_t R = logits.dim(0), V = logits.dim(1);
  check_token_logprobs_args(logits, targets, lp);
  for (int64_t r = 0; r < R; ++r) {
    const int32_t t = targets.ptr<int32_t>()[r];
    DSA_CHECK(t >= 0 && t < V, "token_logprobs: target ", t, " of row ", r, " is outside [0, ", V, ")");
  }
#pragma omp parallel for if (R > 1)
  for (int64_t r = 0; r < R; ++r) {
    const float* l = logits.ptr<float>() + r * V;
    lp.ptr<double>()[r] = double(l[targets.ptr<int32_t>()[r]]) - row_logsumexp(l, V);
  }
}

}  // namespace dsa

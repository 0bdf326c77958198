// CPU MoE: sigmoid + bias group-limited routing and the fp32 expert combine (architecture.md §6).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_backend.h"

namespace dsa {

void CpuBackend::moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group,
                           int64_t topk, bool norm, float route_scale, Tensor& ids, Tensor& weights) {
  const int64_t T = logits.dim(0), E = logits.dim(1), G = E / n_group;
  const float ninf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for if (T > 64)
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> sc(static_cast<size_t>(E)), biased(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      sc[size_t(e)] = 1.0f / (1.0f + std::exp(-logits.ptr<float>()[t * E + e]));
      biased[size_t(e)] = sc[size_t(e)] + (bias ? bias->ptr<float>()[e] : 0.0f);
    }
    if (n_group > 1) {
      // Group score: sum of the top-2 biased scores (max when there is no bias); keep topk_group groups.
      std::vector<float> gs(static_cast<size_t>(n_group));
      for (int64_t g = 0; g < n_group; ++g) {
        std::vector<float> v(biased.begin() + g * G, biased.begin() + (g + 1) * G);
        std::sort(v.begin(), v.end(), std::greater<float>());
        gs[size_t(g)] = bias ? v[0] + (G > 1 ? v[1] : 0.f) : v[0];
      }
      std::vector<int64_t> go(static_cast<size_t>(n_group));
      std::iota(go.begin(), go.end(), 0);
      std::stable_sort(go.begin(), go.end(), [&](int64_t a, int64_t c) { return gs[size_t(a)] > gs[size_t(c)]; });
      for (int64_t r = topk_group; r < n_group; ++r)
        for (int64_t e = go[size_t(r)] * G; e < (go[size_t(r)] + 1) * G; ++e) biased[size_t(e)] = ninf;
    }
    std::vector<int64_t> eo(static_cast<size_t>(E));
    std::iota(eo.begin(), eo.end(), 0);
    std::stable_sort(eo.begin(), eo.end(), [&](int64_t a, int64_t c) { return biased[size_t(a)] > biased[size_t(c)]; });
    float sum = 0.f;
    for (int64_t i = 0; i < topk; ++i) sum += sc[size_t(eo[size_t(i)])];
    for (int64_t i = 0; i < topk; ++i) {
      ids.ptr<int32_t>()[t * topk + i] = int32_t(eo[size_t(i)]);
      float wv = sc[size_t(eo[size_t(i)])];
      if (norm) wv /= sum;  // weights use the unbiased scores
      weights.ptr<float>()[t * topk + i] = wv * route_scale;
    }
  }
}

void CpuBackend::moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                             const std::vector<MlpWeights>& experts, const MlpWeights* shared, Tensor& out) {
  const int64_t T = x.dim(0), D = x.dim(1), K = ids.dim(1), E = int64_t(experts.size());
  std::vector<float> y(static_cast<size_t>(T * D), 0.f);
  std::vector<std::vector<std::pair<int64_t, float>>> rows(static_cast<size_t>(E));  // expert -> (token, weight)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) {
      const int32_t e = ids.ptr<int32_t>()[t * K + i];
      DSA_CHECK(e >= 0 && e < E, "expert id ", e, " out of range");
      rows[size_t(e)].push_back({t, weights.ptr<float>()[t * K + i]});
    }
  auto accumulate = [&](const MlpWeights& w, const std::vector<std::pair<int64_t, float>>* sel) {
    const int64_t n = sel ? int64_t(sel->size()) : T;
    Tensor xe = alloc(DType::BF16, {n, D}), ye = alloc(DType::BF16, {n, D});
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = sel ? (*sel)[size_t(i)].first : i;
      std::copy_n(x.ptr<uint16_t>() + t * D, D, xe.ptr<uint16_t>() + i * D);
    }
    mlp_forward(*this, xe, w, ye);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = sel ? (*sel)[size_t(i)].first : i;
      const float wt = sel ? (*sel)[size_t(i)].second : 1.0f;
      for (int64_t d = 0; d < D; ++d) y[size_t(t * D + d)] += bf16_to_f32(ye.ptr<uint16_t>()[i * D + d]) * wt;
    }
  };
  for (int64_t e = 0; e < E; ++e)  // ascending expert id, as the reference
    if (!rows[size_t(e)].empty()) accumulate(experts[size_t(e)], &rows[size_t(e)]);
  if (shared) accumulate(*shared, nullptr);
  for (int64_t i = 0; i < T * D; ++i) out.ptr<uint16_t>()[i] = f32_to_bf16(y[size_t(i)]);
}

}  // namespace dsa

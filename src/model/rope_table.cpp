#include "model/rope_table.h"

#include <algorithm>
#include <cmath>

namespace dsa {

std::vector<float> rope_frequencies(const ModelConfig& cfg) {
  const int dim = int(cfg.qk_rope_head_dim);
  const float base = float(cfg.rope_theta);
  std::vector<float> f(static_cast<size_t>(dim / 2));
  for (int i = 0; i < dim / 2; ++i) f[size_t(i)] = 1.0f / std::pow(base, float(2 * i) / float(dim));
  if (cfg.yarn_active()) {
    const RopeScaling& y = *cfg.rope_scaling;
    // Correction dims in double, as the reference's Python math (floor / ceil, clamped).
    auto corr = [&](double rot) {
      return dim * std::log(double(y.original_max_position_embeddings) / (rot * 2 * M_PI)) / (2 * std::log(double(cfg.rope_theta)));
    };
    double low = std::max(std::floor(corr(y.beta_fast)), 0.0);
    double high = std::min(std::ceil(corr(y.beta_slow)), double(dim - 1));
    if (low == high) high += 0.001;
    const float factor = float(y.factor);
    for (int i = 0; i < dim / 2; ++i) {
      float ramp = (float(i) - float(low)) / float(high - low);
      ramp = std::clamp(ramp, 0.0f, 1.0f);
      const float smooth = 1.0f - ramp;
      f[size_t(i)] = f[size_t(i)] / factor * (1.0f - smooth) + f[size_t(i)] * smooth;
    }
  }
  return f;
}

Tensor rope_table(const ModelConfig& cfg, int64_t max_pos) {
  const std::vector<float> f = rope_frequencies(cfg);
  const int64_t half = int64_t(f.size());
  Tensor t = host_tensor(DType::F32, {max_pos, half, 2});
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float ang = float(p) * f[size_t(i)];
      t.ptr<float>()[(p * half + i) * 2] = std::cos(ang);
      t.ptr<float>()[(p * half + i) * 2 + 1] = std::sin(ang);
    }
  return t;
}

}  // namespace dsa

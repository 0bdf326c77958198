#pragma once
// A layer's frozen attention inputs (model::AttentionTap, on the backend) as host fp32 LayerInputs:
// x, qr, the MLA queries and the per-head keys km[t, h] = (k_nope[t, h] | k_pe[t]) of §3.2.
// Single sequence prefilled from position 0 (training windows, evaluation windows).
#include <vector>

#include "model/deepseek_v32.h"
#include "train/indexer_grad.h"

namespace dsa::train {

class LayerTap {
 public:
  LayerTap(Backend& be, const ModelConfig& cfg) : be_(be), cfg_(cfg) {}
  // Valid until the next call.
  LayerInputs<float> inputs(const AttentionTap& a, const float* rope);

 private:
  std::vector<float> bf16_host(const Tensor& t);
  Backend& be_;
  const ModelConfig& cfg_;
  std::vector<float> x_, qr_, mq_, mk_;
  std::vector<int32_t> pos_;
  std::vector<uint16_t> tmp_;
};

}  // namespace dsa::train

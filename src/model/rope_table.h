#pragma once
// The fp32 RoPE/YaRN frequency table exactly as the reference builds it (architecture.md §1.4):
// base_i = 1 / theta^(2i/64) in fp32; with YaRN, frequencies are blended between the correction
// dims; angle = fp32(pos * freq_i); cos/sin in fp32. One table serves MLA and the indexer.
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"

namespace dsa {

std::vector<float> rope_frequencies(const ModelConfig& cfg);  // [32]
// F32 [max_pos, 32, 2] (cos, sin) host tensor.
Tensor rope_table(const ModelConfig& cfg, int64_t max_pos);

}  // namespace dsa

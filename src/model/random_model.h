#pragma once
// Random models in the exact Hugging Face DeepSeek-V3.2 checkpoint format (design.md "make-model"):
// FP8 e4m3 weights with fp32 128x128 `weight_scale_inv` blocks (ue8m0 powers of two), bf16 where
// the real checkpoint has bf16, fp32 for e_score_correction_bias; sharded safetensors + index +
// config.json. Deterministic by seed.
#include <cstdint>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/safetensors.h"

namespace dsa {

// The default model's config: the real V3.2 attention geometry (512+64 latent, 64x128 indexer)
// at a size that runs on a laptop CPU.
ModelConfig default_model_config();
// Named presets: "default", "mini" (dsa-mini's shape), "v32-real-attn" (7168 hidden, 128 heads,
// k = 2048, few layers and experts — for the GPU at 128K context).
ModelConfig preset_model_config(const std::string& name);

// Quantise W[n, k] (fp32) to e4m3 with one power-of-two scale per 128x128 block.
void quantize_fp8_blocks(const float* w, int64_t n, int64_t k, uint8_t* q, float* scales);

// All tensors of a random model with this config (host tensors).
std::vector<NamedTensor> random_model_tensors(const ModelConfig& cfg, uint64_t seed);
// Write config.json + shards + index into dir (created if missing).
void write_random_model(const std::string& dir, const ModelConfig& cfg, uint64_t seed, size_t max_shard_bytes = 64u << 20);

}  // namespace dsa

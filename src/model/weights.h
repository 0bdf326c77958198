#pragma once
// Typed, validated views of a DeepSeek-V3.2 checkpoint (architecture.md §7.1), resident on a
// backend. Every tensor's dtype and shape is checked against the config before use.
#include <vector>

#include "backends/backend.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace dsa {

struct IndexerWeights {
  Fp8Weight wq_b;            // [Hi*128, q_lora]
  Fp8Weight wk;              // [128, D]
  Tensor k_norm_w, k_norm_b;  // F32 [128] (LayerNorm with bias)
  Tensor weights_proj;       // BF16 [Hi, D] (used in fp32)
};

struct LayerWeights {
  Tensor attn_norm, ffn_norm;  // F32 [D]
  Fp8Weight wq_a, wq_b, wkv_a, wkv_b, wo;
  Tensor q_norm, kv_norm;      // F32
  Tensor wkv_b_bf16;           // BF16 [H, nope + v, 512]: dequantised once for the decode form
  IndexerWeights indexer;
  bool moe = false;
  MlpWeights mlp;              // dense layers
  Tensor gate;                 // BF16 [E, D]
  Tensor gate_bias;            // F32 [E] (e_score_correction_bias) — undefined when absent
  std::vector<MlpWeights> experts;
  bool has_shared = false;
  MlpWeights shared;
};

struct ModelWeights {
  Tensor embed;  // BF16 [V, D]
  std::vector<LayerWeights> layers;
  Tensor norm;   // F32 [D]
  Tensor head;   // BF16 [V, D] (used in fp32)
  size_t bytes = 0;  // resident weight bytes on the backend
};

// check_finite: scan every floating-point tensor for NaN/Inf first (Checkpoint::check_finite).
ModelWeights load_weights(const Checkpoint& ckpt, const ModelConfig& cfg, Backend& be, bool check_finite = true);

}  // namespace dsa

#pragma once
// config.json of a DeepseekV32ForCausalLM checkpoint (HF field names, architecture.md §1.2),
// validated, plus the constants derived from it (YaRN, softmax scales).
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace dsa {

struct RopeScaling {
  std::string type = "yarn";           // only "yarn" is supported (others: clear error)
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
};

struct ModelConfig {
  std::string model_type = "deepseek_v32";
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0, first_k_dense_replace = 0, moe_layer_freq = 1;
  int64_t num_attention_heads = 0, q_lora_rank = 0, kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0;
  int64_t n_group = 1, topk_group = 1;
  std::string scoring_func = "sigmoid", topk_method = "noaux_tc";
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  int64_t index_n_heads = 0, index_head_dim = 0, index_topk = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0, rms_norm_eps = 1e-6;
  std::optional<RopeScaling> rope_scaling;  // null / absent -> plain RoPE
  // quantization_config (absent -> weights are not FP8, which this engine rejects for now)
  bool fp8 = false;
  int64_t weight_block_n = 128, weight_block_k = 128;
  std::string scale_fmt = "ue8m0";
  int64_t bos_token_id = 0, eos_token_id = 1;
  bool tie_word_embeddings = false;
  int64_t num_nextn_predict_layers = 0;

  // Parse + validate. `what` names the file in errors ("<path>: field 'hidden_size': expected a
  // positive integer, found \"abc\"").
  static ModelConfig from_json(const nlohmann::json& j, const std::string& what);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;  // HF field names; round-trips through from_json
  void validate(const std::string& what) const;

  // Derived (architecture.md §1.3, §1.4).
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  bool yarn_active() const;       // rope_scaling is yarn and max_position_embeddings > original
  double yarn_mscale() const;     // 0.1 * mscale * ln(factor) + 1 when active, else 1
  double mla_softmax_scale() const;  // qk_head_dim^-0.5 * mscale^2 (architecture.md §10.3)
};

}  // namespace dsa

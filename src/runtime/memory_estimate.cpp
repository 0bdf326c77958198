#include "runtime/memory_estimate.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"

namespace dsa {

uint64_t estimate_weight_bytes(const ModelConfig& cfg, uint64_t checkpoint_tensor_bytes) {
  const uint64_t wkv_b = uint64_t(cfg.num_attention_heads) * uint64_t(cfg.qk_nope_head_dim + cfg.v_head_dim) *
                         uint64_t(cfg.kv_lora_rank) * 2;
  return checkpoint_tensor_bytes + uint64_t(cfg.num_hidden_layers) * wkv_b;
}

uint64_t estimate_workspace_bytes(const ModelConfig& cfg, int64_t tokens, int64_t context, int64_t logit_rows) {
  const uint64_t T = uint64_t(std::max<int64_t>(tokens, 1)), C = uint64_t(std::max<int64_t>(context, 1));
  const uint64_t D = uint64_t(cfg.hidden_size), H = uint64_t(cfg.num_attention_heads);
  const uint64_t ffn = uint64_t(std::max(cfg.intermediate_size, cfg.moe_intermediate_size *
                                                                   std::max<int64_t>(cfg.num_experts_per_tok, 1)));
  // Per token (bf16 unless noted): residual stream and norms, the q path, the latent, the indexer's
  // queries (bf16 + e4m3 + fp32 weights) and top-k, attention output, the FFN's gate/up/act.
  const uint64_t per_token = 2 * (4 * D + 2 * uint64_t(cfg.q_lora_rank) + H * uint64_t(cfg.qk_head_dim()) +
                                  uint64_t(cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2 +
                                  H * uint64_t(cfg.v_head_dim) + 3 * ffn) +
                             uint64_t(cfg.index_n_heads) * (uint64_t(cfg.index_head_dim) * 3 + 8) +
                             uint64_t(cfg.index_topk) * 4 + uint64_t(cfg.n_routed_experts) * 4;
  // MHA prefill: the chunk's sequence's cached latents expanded to keys and values.
  const uint64_t expand = C * (H * uint64_t(cfg.qk_nope_head_dim + cfg.v_head_dim) +
                               uint64_t(cfg.kv_lora_rank + cfg.qk_rope_head_dim)) * 2;
  const uint64_t logits = uint64_t(std::max<int64_t>(logit_rows, 1)) * uint64_t(cfg.vocab_size) * 4;
  return T * per_token + expand + logits;
}

std::string format_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (b >= 1024 && i < 5) b /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, u[i]);
  return buf;
}

void check_memory_fits(const std::string& what, uint64_t need, const std::string& breakdown, uint64_t available,
                       const std::string& where, const std::string& advice) {
  if (available == 0 || need <= available) return;
  fail("not enough memory for ", what, ": needs ", format_bytes(double(need)), " (", breakdown, "), but ", where,
       " has ", format_bytes(double(available)), " free; ", advice);
}

}  // namespace dsa

#pragma once
// What a model run will allocate, estimated before allocating it, so that a request for more memory
// than the host or GPU has is refused with the numbers (and the option to change) instead of the
// process being killed part-way.
#include <cstdint>
#include <string>

#include "io/model_config.h"

namespace dsa {

// Device bytes of the weights as loaded: the checkpoint's tensor bytes plus the bf16 copy of every
// layer's kv_b_proj the MHA prefill form multiplies with.
uint64_t estimate_weight_bytes(const ModelConfig& cfg, uint64_t checkpoint_tensor_bytes);
// Peak per-step activations: `tokens` rows through one layer, a prefill chunk's keys/values expanded
// over `context` cached tokens, and `logit_rows` rows of fp32 logits.
uint64_t estimate_workspace_bytes(const ModelConfig& cfg, int64_t tokens, int64_t context, int64_t logit_rows);

// Throws "not enough memory for <what>: needs <need> (<breakdown>), but <where> has <available>
// free; <advice>" when need > available. available == 0 means unknown (no check).
void check_memory_fits(const std::string& what, uint64_t need, const std::string& breakdown, uint64_t available,
                       const std::string& where, const std::string& advice);

std::string format_bytes(double b);  // "1.5 GiB"

}  // namespace dsa

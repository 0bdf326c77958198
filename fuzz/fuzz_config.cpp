// libFuzzer target: config.json text -> ModelConfig. Any bytes either give a config that survives a
// to_json round trip, or a dsa::Error; never another exception (a bare library message), a crash or
// undefined behaviour (integer overflow in derived sizes included).
#include <cstdint>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    const dsa::ModelConfig c = dsa::ModelConfig::from_json(j, "fuzz/config.json");
    const dsa::ModelConfig back = dsa::ModelConfig::from_json(c.to_json(), "round trip");
    if (back.to_json() != c.to_json()) std::abort();
    volatile double s = c.mla_softmax_scale() + c.yarn_mscale();
    volatile int64_t per_layer = c.num_attention_heads * c.qk_head_dim() * c.q_lora_rank;
    (void)s;
    (void)per_layer;
  } catch (const dsa::Error&) {
  }
  return 0;
}

#pragma once
// Engine: a loaded model on a backend with its KV memory; runs prompts and decoding for one or
// more sequences. (The continuous-batching scheduler and the server build on this later.)
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/deepseek_v32.h"
#include "runtime/kv_cache.h"
#include "runtime/sampler.h"

namespace dsa {

struct EngineOptions {
  std::string device = "cpu";
  int threads = 0;
  int64_t kv_tokens = 0;      // KV capacity in tokens (0: max_position_embeddings)
  int64_t prefill_chunk = 0;  // 0: the whole prompt in one step; else chunked prefill
  AttentionMode attention = AttentionMode::Sparse;
  PrefillForm prefill_form = PrefillForm::Mha;  // Mqa: absorbed-form prefill (see deepseek_v32.h)
};

struct GenerateStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double ttft_s = 0, prefill_s = 0, decode_s = 0;
  double prefill_tok_s() const { return prefill_s > 0 ? double(prompt_tokens) / prefill_s : 0; }
  double decode_tok_s() const { return decode_s > 0 && new_tokens > 1 ? double(new_tokens - 1) / decode_s : 0; }
};

class Engine {
 public:
  static std::unique_ptr<Engine> load(const std::string& model_dir, const EngineOptions& opt);
  DeepseekV32& model() { return *model_; }
  KvCache& kv() { return *kv_; }
  Backend& backend() { return *be_; }
  const EngineOptions& options() const { return opt_; }
  size_t weight_bytes() const { return model_->weights().bytes; }

  // Feed `tokens` to a sequence (prefill or continuation, chunked per options); returns the fp32
  // logits of the last token (host) — or of every token when all_logits (rows x vocab).
  std::vector<float> feed(Sequence& s, const std::vector<int32_t>& tokens, bool all_logits = false);
  // Prompt + sampling loop. on_token returns false to stop. Stops at EOS unless ignore_eos.
  GenerateStats generate(const std::vector<int32_t>& prompt, const SamplingParams& sp, int64_t max_new,
                         const std::function<bool(int32_t)>& on_token, bool ignore_eos = false);

 private:
  EngineOptions opt_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<DeepseekV32> model_;
  std::unique_ptr<KvCache> kv_;
};

}  // namespace dsa

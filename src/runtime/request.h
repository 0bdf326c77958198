#pragma once
// Requests to the batched engine and what they produce (docs/runtime.md).
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dsa {

using RequestId = int64_t;

// How a request draws its tokens (Backend::sample has the exact rule).
struct SamplingParams {
  float temperature = 0.0f;      // 0: greedy (argmax, ties to the lower id)
  int64_t top_k = 0;             // 0: off
  float top_p = 1.0f;            // 1: off
  std::optional<uint64_t> seed;  // unset: a fresh random seed for the request
};

struct RequestParams {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t max_tokens = 16;              // at most this many generated tokens (also cut by the context)
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;  // generating one of these finishes the request ("stop")
  std::vector<std::string> stop;        // stop strings, matched on the generated text (needs a tokenizer);
                                        // the text is cut before the match
  bool detokenize = true;               // text deltas in the outputs (when the engine has a tokenizer)
  bool skip_special_tokens = true;      // special tokens contribute no text
  int top_logprobs = 0;                 // alternatives per generated token, 0..20 (the token's own
                                        // log-probability is always reported)
  bool prompt_logprobs = false;         // log p(prompt[i] | prompt[0..i)) for i >= 1; such a request
                                        // computes every prompt token (no prefix-cache reuse)
  bool use_prefix_cache = true;
};

enum class FinishReason : uint8_t { None, Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error" ("" for None)

struct TopLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// Per request, per step with something new: tokens, text, and at the end the finish and usage.
struct RequestOutput {
  RequestId id = -1;
  std::vector<int32_t> tokens;                 // generated this step (usually one)
  std::vector<float> logprobs;                 // of each token under the model's distribution
  std::vector<std::vector<TopLogprob>> top;    // per token, when top_logprobs > 0
  std::string text;                            // new text (held back while it may begin a stop string)
  std::vector<double> prompt_logprobs;         // with prompt_logprobs: entries for prompt[1..], once
  bool finished = false;
  FinishReason finish = FinishReason::None;
  std::string stop_match;                      // the stop string or "token <id>" that finished it
  std::string error;                           // FinishReason::Error: why
  // Usage and timing (seconds on the engine's clock), complete in the final output.
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0, preemptions = 0;
  double arrival_s = 0, first_token_s = 0, finish_s = 0;
};

}  // namespace dsa

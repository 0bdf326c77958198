#pragma once
// Engine: a loaded model on a backend with its KV pool and scheduler — the batched step API every
// tool and the server drive (docs/runtime.md).
//
//   auto eng = Engine::load(dir, opt);
//   RequestId id = eng->add_request(params);     // any thread, any time
//   while (eng->has_work()) for (RequestOutput& o : eng->step()) ...;  // one thread
//
// Each step() runs one ragged batch: decode rows of running requests and prefill chunks of new
// ones under the token budget, each row in its attention form, the draws on the device. add_request
// and cancel may be called from other threads while a step runs; they take effect at the next one.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/deepseek_v32.h"
#include "runtime/kv_cache.h"
#include "runtime/request.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"

namespace dsa {

struct EngineOptions {
  std::string device = "cpu";
  int threads = 0;
  int64_t kv_tokens = 0;         // KV pool capacity in tokens (0: from kv_memory, else the model's context)
  std::string kv_memory;         // KV pool as bytes ("8G", "512M", "1.5G") or a share of the memory the
                                 // device has free after loading ("90%"); "" = unset
  int64_t max_batch_tokens = 8192;  // tokens per step: decode rows + prefill chunks
  int64_t max_seqs = 128;        // sequences running at once
  int64_t prefill_chunk = 0;     // most prompt tokens of one request per step (0: the budget)
  bool prefix_cache = true;
  AttentionMode attention = AttentionMode::Sparse;
  PrefillForm prefill_form = PrefillForm::Mha;  // Mqa: absorbed-form prefill (see deepseek_v32.h)
  Numerics numerics = Numerics::Reference;      // Fast: production-kernel numerics (backend.h, docs/numerics.md)
  bool tokenizer = true;         // load tokenizer.json when the directory has one (text outputs, stop strings)
  bool check_weights = true;     // scan the weights for NaN/Inf while loading
};

// Per-step costs of the last step, on the host clock (seconds).
struct StepTiming {
  int64_t tokens = 0, seqs = 0, decode_rows = 0;
  double schedule_s = 0, build_s = 0, forward_s = 0, sample_s = 0, commit_s = 0;
  double total() const { return schedule_s + build_s + forward_s + sample_s + commit_s; }
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
  ~Engine();
  DeepseekV32& model() { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  KvCache& kv() { return *kv_; }
  const KvCache& kv() const { return *kv_; }
  // The KV pool's capacity in tokens: fixed at load, so safe to read from any thread (the server's
  // start-up line, request limits) while steps run.
  int64_t kv_capacity_tokens() const { return kv_->capacity_tokens(); }
  Backend& backend() { return *be_; }
  const EngineOptions& options() const { return opt_; }
  const Tokenizer* tokenizer() const { return tok_.get(); }
  size_t weight_bytes() const { return model_->weights().bytes; }

  // ---- the step API ---------------------------------------------------------------------------
  // Thread-safe. Throws dsa::Error naming what is wrong when the request can never run.
  RequestId add_request(RequestParams p);
  void cancel(RequestId id);
  bool has_work() const;
  // One step; returns every request output it produced (tokens, text, finishes). A failure inside
  // the model finishes the step's requests with the error instead of throwing.
  std::vector<RequestOutput> step();
  // Cancel everything (e.g. at shutdown); returns the final outputs of every request. Safe while
  // another thread is inside step(): it waits for that step to commit (at most one step), so no
  // block of a running forward is freed under it; that step's own outputs still come back from it.
  std::vector<RequestOutput> cancel_all();
  SchedulerStats stats() const;
  const StepTiming& last_step() const { return last_; }
  // Switch DSA / dense MLA between requests (throws while any is in flight). Blocks cached in one
  // mode are never reused in the other: dense steps write no indexer keys, and every later token's
  // values depend on the mode.
  void set_attention(AttentionMode m);
  AttentionMode attention() const { return opt_.attention; }
  void check_invariants() const;

  // Convenience over the step API: one request run to completion. on_token returns false to stop.
  GenerateStats generate(const std::vector<int32_t>& prompt, const SamplingParams& sp, int64_t max_new,
                         const std::function<bool(int32_t)>& on_token, bool ignore_eos = false);

  // ---- model level (tests, kernels' end-to-end checks) ------------------------------------------
  // Feed `tokens` to a hand-driven sequence, bypassing the scheduler: a multi-token call takes the
  // prefill form (chunked per prefill_chunk), a one-token call the decode form. Returns the fp32 logits
  // of the last token — or of every token when all_logits (rows x vocab).
  std::vector<float> feed(Sequence& s, const std::vector<int32_t>& tokens, bool all_logits = false);

 private:
  Engine() = default;
  StepResults run(const StepPlan& plan, StepTiming& t);
  EngineOptions opt_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<DeepseekV32> model_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Scheduler> sched_;
  mutable std::mutex mu_;  // guards sched_ between and around steps
  std::condition_variable step_done_;  // stepping_ went false, or a cancel_all() finished
  bool stepping_ = false;  // a step is between schedule and commit (under mu_): its plan's blocks are in use
  int cancels_waiting_ = 0;  // cancel_all() calls waiting for the step in flight (under mu_); step() lets them go first
  StepTiming last_;
};

// Bytes of a size option: "8G", "512M", "64K", "1.5G", plain bytes, or "P%" of `available`.
size_t parse_memory_size(const std::string& s, size_t available, const std::string& what);

}  // namespace dsa

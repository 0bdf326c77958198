#pragma once
// Scheduler: continuous batching over a BlockPool (docs/runtime.md). Pure bookkeeping — it never
// touches the model, so it can be simulated for thousands of steps in a test.
//
// Each step (schedule → the engine runs the plan → commit):
//   1. cancellations take effect; their blocks are freed.
//   2. decode rows: every running request with one generated token pending gets a row of one
//      token, oldest request first;
//   3. prefill chunks: running requests with more pending tokens (a prompt being prefilled in
//      chunks, or the tokens of a preempted request being recomputed), then waiting requests in
//      arrival order, each taking what is left of the token budget (chunked prefill);
//   4. when the pool cannot supply a row's blocks, the newest running request is preempted: its
//      blocks are released and it waits again, ahead of later arrivals, to be recomputed — prompt
//      tokens in the prefill form, generated tokens in the decode form, so it produces exactly the
//      tokens it would have produced uninterrupted (its draws depend only on its seed and counter).
// A waiting request first reuses the longest cached prefix of its tokens (whole blocks of both
// caches), then prefills the rest. A request that could never fit the pool is rejected at add().
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "runtime/block_pool.h"
#include "runtime/request.h"

namespace dsa {

class Tokenizer;
class StreamDecoder;

struct SchedulerConfig {
  int64_t max_batch_tokens = 2048;  // tokens per step (decode rows + prefill chunks)
  int64_t max_seqs = 128;           // sequences per step
  int64_t max_prefill_chunk = 0;    // most prompt tokens of one request per step (0: the budget)
  int64_t max_context = 0;          // the model's context (max_position_embeddings)
  int64_t vocab_size = 0;
  int32_t eos_id = -1;
  bool prefix_cache = true;
  bool prompt_absorbed = false;     // prompt tokens take the absorbed form too (--prefill-form mqa)
  uint64_t salt = 0;                // what else the cached values depend on (attention mode)
};

// What one step computes, in batch order: decode rows first, then prefill chunks.
struct StepPlan {
  struct Row {
    RequestId id = -1;
    int64_t start_pos = 0, n_new = 0;       // tokens [start_pos, start_pos + n_new) of the request
    int64_t ids_offset = 0;                 // where they are in `ids`
    bool absorbed = false;                  // attention form of these tokens
    const std::vector<int32_t>* blocks = nullptr;  // block table (covers start_pos + n_new)
    bool sample = false;                    // the last row's logits draw the next token
    SampleParams sampling;                  // counter = index of the token being drawn
    int top_logprobs = 0;
    int64_t lp_row0 = 0;                    // prompt logprobs: chunk rows lp_row0, lp_row0 + 1, ...
    std::vector<int32_t> lp_targets;        // score these next prompt tokens
  };
  std::vector<Row> rows;
  std::vector<int32_t> ids;  // the tokens of every row, packed
  int64_t n_decode = 0;      // rows[0, n_decode) are one-token decode rows
  bool empty() const { return rows.empty(); }
};

// What the engine computed for a plan: per sampling row (in plan order) the drawn token, its
// log-probability and alternatives; per prompt-logprob row its entries, concatenated.
struct StepResults {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  std::vector<double> prompt_lp;
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;
  int64_t blocks_total = 0, blocks_used = 0, blocks_cached = 0;
  int64_t prefix_queried_tokens = 0, prefix_hit_tokens = 0;  // over admissions
  int64_t preemptions = 0;
  int64_t finished_stop = 0, finished_length = 0, cancelled = 0, errors = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
};

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;
  // tok (may be null) detokenizes outputs and matches stop strings.
  Scheduler(BlockPool& pool, const SchedulerConfig& cfg, const Tokenizer* tok = nullptr);
  ~Scheduler();
  const SchedulerConfig& config() const { return cfg_; }
  // What the cached values depend on besides their tokens (e.g. the attention mode): blocks cached
  // under another salt are never reused.
  void set_salt(uint64_t salt) { cfg_.salt = salt; }

  // Checks the request against the model and the pool and queues it; throws dsa::Error naming
  // the field and the allowed range when it can never run.
  RequestId add(RequestParams p);
  // Takes effect at the next schedule(): the request finishes as cancelled, its blocks freed.
  // Unknown or finished ids are ignored.
  void cancel(RequestId id);
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }

  // Plan the next step; outputs of requests that ended while planning (cancelled) go to `ended`.
  StepPlan schedule(std::vector<RequestOutput>& ended);
  // Apply what the engine computed: new tokens, stop conditions, finished requests freed.
  std::vector<RequestOutput> commit(const StepPlan& plan, const StepResults& res);
  // The plan's forward failed: every request in it finishes with this error, its blocks freed.
  std::vector<RequestOutput> fail(const StepPlan& plan, const std::string& error);
  // Finish every request (cancelled), e.g. at shutdown.
  std::vector<RequestOutput> cancel_all();

  SchedulerStats stats() const;
  // Every invariant: each block's references equal its owners' (request tables), waiting requests
  // own nothing, running ones cover their computed tokens, the pool's own structure. Throws.
  void check() const;

 private:
  struct Req;
  Req* find(RequestId id) const;
  void release(Req& r);
  void preempt(Req& r, StepPlan& plan, int64_t& budget);
  bool ensure_blocks(Req& r, int64_t tokens);        // allocate (no preemption); false if short
  int64_t admit_prefix(Req& r);                      // prefix-cache reuse on admission
  void publish_full_blocks(Req& r);
  uint64_t block_salt(const Req& r, int64_t block) const;  // 0: not cacheable
  void add_row(StepPlan& plan, Req& r, int64_t n_new);
  RequestOutput finish(Req& r, FinishReason why, const std::string& detail = "");
  void emit_token(Req& r, int32_t tok, float lp, const std::vector<TopLogprob>* top, RequestOutput& out);
  double now() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }

  BlockPool& pool_;
  SchedulerConfig cfg_;
  const Tokenizer* tok_;
  Clock::time_point t0_ = Clock::now();
  RequestId next_id_ = 1;
  std::map<RequestId, std::unique_ptr<Req>> reqs_;
  std::vector<Req*> running_;  // in arrival order
  std::deque<Req*> waiting_;   // in arrival order (preempted requests keep their place)
  SchedulerStats stats_;
  uint64_t seed_state_;
};

}  // namespace dsa

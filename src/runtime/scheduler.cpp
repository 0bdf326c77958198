#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "backends/sample_noise.h"
#include "io/tokenizer.h"

namespace dsa {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
    default: return "";
  }
}

struct Scheduler::Req {
  RequestId id = 0;
  RequestParams p;
  uint64_t seed = 0;
  int64_t n_prompt = 0, max_new = 0;
  std::vector<int32_t> tokens;  // prompt, then every generated token
  int64_t n_computed = 0;       // tokens whose K/V are in the cache
  std::vector<int32_t> blocks;  // block table; one reference held on each
  std::vector<uint64_t> keys;   // chain hash of block i's key, for the blocks looked up or published
  int64_t n_published = 0;      // leading blocks already offered to the prefix cache
  bool cacheable = true;        // false after the first block that cannot be cached
  bool running = false, cancelled = false;
  int64_t cached_tokens = 0, preemptions = 0;
  std::unique_ptr<StreamDecoder> dec;
  std::string text;             // generated text so far (cut at a stop string)
  size_t emitted = 0, max_stop = 0;
  std::vector<double> prompt_lp;
  bool prompt_lp_sent = false;
  double arrival_s = 0, first_token_s = 0;
  int64_t n_generated() const { return int64_t(tokens.size()) - n_prompt; }
  bool decode_ready() const { return n_computed >= n_prompt && n_computed + 1 == int64_t(tokens.size()); }
};

Scheduler::Scheduler(BlockPool& pool, const SchedulerConfig& cfg, const Tokenizer* tok)
    : pool_(pool), cfg_(cfg), tok_(tok), seed_state_(std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32)) {
  DSA_CHECK(cfg_.max_batch_tokens >= 1, "scheduler: max_batch_tokens must be >= 1, got ", cfg_.max_batch_tokens);
  DSA_CHECK(cfg_.max_seqs >= 1, "scheduler: max_seqs must be >= 1, got ", cfg_.max_seqs);
  DSA_CHECK(cfg_.max_prefill_chunk >= 0, "scheduler: max_prefill_chunk must be >= 0, got ", cfg_.max_prefill_chunk);
  DSA_CHECK(cfg_.max_context >= 1 && cfg_.vocab_size >= 1, "scheduler: the model's context and vocabulary are unset");
}

Scheduler::~Scheduler() = default;

Scheduler::Req* Scheduler::find(RequestId id) const {
  auto it = reqs_.find(id);
  return it == reqs_.end() ? nullptr : it->second.get();
}

RequestId Scheduler::add(RequestParams p) {
  const int64_t P = int64_t(p.prompt.size());
  DSA_CHECK(P > 0, "request: the prompt is empty");
  for (int64_t i = 0; i < P; ++i)
    DSA_CHECK(p.prompt[size_t(i)] >= 0 && p.prompt[size_t(i)] < cfg_.vocab_size, "request: prompt token ",
              p.prompt[size_t(i)], " at index ", i, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  DSA_CHECK(p.max_tokens >= 0, "request: max_tokens is ", p.max_tokens, "; it must be >= 0");
  if (p.max_tokens > 0)
    DSA_CHECK(P < cfg_.max_context, "request: the prompt has ", P, " tokens; to generate it must be shorter than the model's context of ",
              cfg_.max_context, " tokens");
  else
    DSA_CHECK(P <= cfg_.max_context, "request: the prompt has ", P, " tokens, more than the model's context of ", cfg_.max_context);
  const SamplingParams& s = p.sampling;
  DSA_CHECK(std::isfinite(s.temperature) && s.temperature >= 0, "request: temperature ", s.temperature,
            " must be finite and >= 0 (0 = greedy)");
  DSA_CHECK(std::isfinite(s.top_p) && s.top_p > 0 && s.top_p <= 1, "request: top_p ", s.top_p, " must be in (0, 1]");
  DSA_CHECK(s.top_k >= 0 && s.top_k <= (int64_t(1) << 31) - 1, "request: top_k ", s.top_k, " must be >= 0 (0 = off)");
  DSA_CHECK(p.top_logprobs >= 0 && p.top_logprobs <= 20, "request: top_logprobs ", p.top_logprobs, " must be in [0, 20]");
  for (auto& t : p.stop_token_ids)
    DSA_CHECK(t >= 0 && t < cfg_.vocab_size, "request: stop token id ", t, " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  for (auto& st : p.stop) DSA_CHECK(!st.empty(), "request: a stop string is empty");
  DSA_CHECK(tok_ || p.stop.empty(), "request: stop strings need a tokenizer (tokenizer.json in the model directory)");
  const int64_t max_new = std::min(p.max_tokens, cfg_.max_context - P);
  const int64_t need_tokens = P + std::max<int64_t>(max_new - 1, 0);  // the last token is never fed back
  const int64_t need_blocks = (need_tokens + kKvBlock - 1) / kKvBlock;
  DSA_CHECK(need_blocks <= pool_.num_blocks(), "request: ", P, " prompt + ", max_new, " new tokens need ", need_blocks,
            " KV blocks of ", kKvBlock, " tokens; the pool has ", pool_.num_blocks(),
            " (raise --kv-memory or --kv-tokens, or lower max_tokens)");

  auto r = std::make_unique<Req>();
  r->id = next_id_++;
  r->n_prompt = P;
  r->max_new = max_new;
  r->tokens = p.prompt;
  r->seed = s.seed ? *s.seed : mix64(seed_state_++);
  for (auto& st : p.stop) r->max_stop = std::max(r->max_stop, st.size());
  if (tok_ && p.detokenize) r->dec = std::make_unique<StreamDecoder>(*tok_, p.skip_special_tokens);
  r->arrival_s = now();
  r->p = std::move(p);
  r->p.prompt.clear();  // kept once, in tokens
  r->p.prompt.shrink_to_fit();
  Req* raw = r.get();
  reqs_.emplace(raw->id, std::move(r));
  waiting_.push_back(raw);
  return raw->id;
}

void Scheduler::cancel(RequestId id) {
  if (Req* r = find(id)) r->cancelled = true;
}

void Scheduler::release(Req& r) {
  // Last block first: it becomes the least recently used, so the LRU evicts a cached prefix from its
  // end. (Evicting the first block would strand all the others: lookups walk the chain from the start.)
  for (auto it = r.blocks.rbegin(); it != r.blocks.rend(); ++it) pool_.release(*it);
  r.blocks.clear();
  r.n_computed = 0;
  r.n_published = 0;
  r.cacheable = true;
}

uint64_t Scheduler::block_salt(const Req& r, int64_t block) const {
  // Prompt tokens take the prefill form, generated tokens the decode form; a block of generated
  // tokens is worth caching only when both forms are the same (its values then equal a prefill's).
  const int64_t end = (block + 1) * kKvBlock;
  if (end > int64_t(r.tokens.size())) return 0;
  if (end > r.n_prompt && !cfg_.prompt_absorbed) return 0;
  return mix64(cfg_.salt ^ (cfg_.prompt_absorbed ? 0x2545f4914f6cdd1dull : 0x9e3779b97f4a7c15ull)) | 1;
}

int64_t Scheduler::admit_prefix(Req& r) {
  if (!cfg_.prefix_cache || !r.p.use_prefix_cache || r.p.prompt_logprobs) return 0;
  // Whole blocks only, and never the last token: its logits are needed, so the block holding it
  // is computed (and owned) by this request.
  const int64_t max_blocks = (int64_t(r.tokens.size()) - 1) / kKvBlock;
  for (int64_t i = 0; i < max_blocks; ++i) {
    const uint64_t salt = block_salt(r, i);
    if (!salt) break;
    const BlockKey key{i ? r.keys[size_t(i - 1)] : 0, salt,
                       std::span<const int32_t>(r.tokens.data() + i * kKvBlock, size_t(kKvBlock))};
    if (int64_t(r.keys.size()) <= i) r.keys.push_back(key.hash());
    const int32_t b = pool_.lookup(key);
    if (b < 0) break;
    r.blocks.push_back(b);
  }
  return int64_t(r.blocks.size()) * kKvBlock;
}

void Scheduler::publish_full_blocks(Req& r) {
  if (!cfg_.prefix_cache) return;
  const int64_t full = r.n_computed / kKvBlock;
  while (r.cacheable && r.n_published < full) {
    const int64_t i = r.n_published;
    const uint64_t salt = block_salt(r, i);
    if (!salt) {
      r.cacheable = false;
      break;
    }
    const BlockKey key{i ? r.keys[size_t(i - 1)] : 0, salt,
                       std::span<const int32_t>(r.tokens.data() + i * kKvBlock, size_t(kKvBlock))};
    if (int64_t(r.keys.size()) <= i) r.keys.push_back(key.hash());
    pool_.publish(r.blocks[size_t(i)], key);
    ++r.n_published;
  }
}

bool Scheduler::ensure_blocks(Req& r, int64_t tokens) {
  const int64_t need = (tokens + kKvBlock - 1) / kKvBlock - int64_t(r.blocks.size());
  if (need <= 0) return true;
  if (need > pool_.available()) return false;
  for (int64_t i = 0; i < need; ++i) r.blocks.push_back(pool_.allocate());
  return true;
}

void Scheduler::add_row(StepPlan& plan, Req& r, int64_t n_new) {
  StepPlan::Row row;
  row.id = r.id;
  row.start_pos = r.n_computed;
  row.n_new = n_new;
  row.absorbed = row.start_pos >= r.n_prompt ? true : cfg_.prompt_absorbed;
  row.blocks = &r.blocks;
  const int64_t end = row.start_pos + n_new;
  // Writes land only in blocks this request owns alone (a shared block is full and computed).
  for (int64_t b = row.start_pos / kKvBlock; b < (end + kKvBlock - 1) / kKvBlock; ++b)
    DSA_CHECK(pool_.refs(r.blocks[size_t(b)]) == 1, "scheduler: request ", r.id, " would write shared block ",
              r.blocks[size_t(b)]);
  row.sample = end == int64_t(r.tokens.size()) && r.n_generated() < r.max_new;
  row.sampling.temperature = r.p.sampling.temperature;
  row.sampling.top_k = int32_t(r.p.sampling.top_k);
  row.sampling.top_p = r.p.sampling.top_p;
  row.sampling.seed = r.seed;
  row.sampling.counter = uint64_t(r.n_generated());
  row.top_logprobs = r.p.top_logprobs;
  if (r.p.prompt_logprobs) {
    // Entries for prompt[j + 1], j from what was already recorded (a recomputation records nothing twice).
    const int64_t j0 = std::max<int64_t>(row.start_pos, int64_t(r.prompt_lp.size()));
    const int64_t j1 = std::min<int64_t>(end, r.n_prompt - 1);
    row.lp_row0 = j0 - row.start_pos;
    for (int64_t j = j0; j < j1; ++j) row.lp_targets.push_back(r.tokens[size_t(j + 1)]);
  }
  plan.rows.push_back(std::move(row));
}

void Scheduler::preempt(Req& r, StepPlan& plan, int64_t& budget) {
  auto it = std::find_if(plan.rows.begin(), plan.rows.end(), [&](const StepPlan::Row& x) { return x.id == r.id; });
  if (it != plan.rows.end()) {
    budget += it->n_new;
    plan.rows.erase(it);
  }
  release(r);
  r.running = false;
  ++r.preemptions;
  ++stats_.preemptions;
  running_.erase(std::find(running_.begin(), running_.end(), &r));
  // Back to the queue, ahead of every later arrival.
  auto pos = std::find_if(waiting_.begin(), waiting_.end(), [&](Req* w) { return w->id > r.id; });
  waiting_.insert(pos, &r);
}

StepPlan Scheduler::schedule(std::vector<RequestOutput>& ended) {
  for (auto it = reqs_.begin(); it != reqs_.end();) {
    Req& r = *(it++)->second;  // finish() erases r
    if (r.cancelled) ended.push_back(finish(r, FinishReason::Cancelled));
  }
  StepPlan plan;
  int64_t budget = cfg_.max_batch_tokens;
  bool preempted = false;
  auto has_row = [&](const Req& r) {
    return std::any_of(plan.rows.begin(), plan.rows.end(), [&](const StepPlan::Row& x) { return x.id == r.id; });
  };
  // Blocks for r's next n tokens, preempting the newest running requests (r itself last) until the
  // pool can supply them. False when r itself was preempted.
  auto blocks_for = [&](Req& r, int64_t n) {
    while (!ensure_blocks(r, r.n_computed + n)) {
      Req& victim = *running_.back();
      preempt(victim, plan, budget);
      preempted = true;
      if (&victim == &r) return false;
    }
    return true;
  };
  // Decode rows, oldest request first.
  for (size_t i = 0; i < running_.size(); ++i) {
    Req& r = *running_[i];
    if (!r.decode_ready()) continue;
    if (int64_t(plan.rows.size()) >= cfg_.max_seqs || budget < 1) break;
    if (blocks_for(r, 1)) {
      add_row(plan, r, 1);
      budget -= 1;
    }
  }
  // Chunks of running requests with more pending tokens, then of waiting ones.
  auto chunk = [&](const Req& r) {
    int64_t n = r.n_computed < r.n_prompt ? r.n_prompt - r.n_computed : int64_t(r.tokens.size()) - r.n_computed;
    if (r.n_computed < r.n_prompt && cfg_.max_prefill_chunk > 0) n = std::min(n, cfg_.max_prefill_chunk);
    return std::min(n, budget);
  };
  for (size_t i = 0; i < running_.size(); ++i) {
    Req& r = *running_[i];
    if (r.decode_ready() || has_row(r)) continue;
    if (int64_t(plan.rows.size()) >= cfg_.max_seqs || budget < 1) break;
    const int64_t n = chunk(r);
    if (blocks_for(r, n)) {
      add_row(plan, r, n);
      budget -= n;
    } else {
      --i;  // r left running_
    }
  }
  while (!preempted && !waiting_.empty() && int64_t(running_.size()) < cfg_.max_seqs &&
         int64_t(plan.rows.size()) < cfg_.max_seqs && budget >= 1) {
    Req& r = *waiting_.front();
    const int64_t hit = admit_prefix(r);
    r.n_computed = hit;
    r.n_published = hit / kKvBlock;
    const int64_t n = chunk(r);
    if (!ensure_blocks(r, r.n_computed + n)) {
      release(r);
      break;  // first come, first served: later arrivals wait too
    }
    waiting_.pop_front();
    r.running = true;
    r.cached_tokens = hit;
    stats_.prefix_queried_tokens += int64_t(r.tokens.size());
    stats_.prefix_hit_tokens += hit;
    running_.insert(std::find_if(running_.begin(), running_.end(), [&](Req* x) { return x->id > r.id; }), &r);
    add_row(plan, r, n);
    budget -= n;
  }
  // Decode rows first, then chunks in the absorbed form, then MHA-form chunks (fewest attention runs);
  // the tokens of every row packed in that order.
  auto group = [&](const StepPlan::Row& x) {
    const bool decode = x.n_new == 1 && x.sample && x.start_pos >= find(x.id)->n_prompt;
    return decode ? 0 : x.absorbed ? 1 : 2;
  };
  std::stable_sort(plan.rows.begin(), plan.rows.end(),
                   [&](const StepPlan::Row& a, const StepPlan::Row& b) { return group(a) < group(b); });
  for (auto& row : plan.rows) {
    const Req& r = *find(row.id);
    row.ids_offset = int64_t(plan.ids.size());
    plan.ids.insert(plan.ids.end(), r.tokens.begin() + row.start_pos, r.tokens.begin() + row.start_pos + row.n_new);
    plan.n_decode += group(row) == 0;
  }
  return plan;
}

void Scheduler::emit_token(Req& r, int32_t tok, float lp, const std::vector<TopLogprob>* top, RequestOutput& out) {
  r.tokens.push_back(tok);
  ++stats_.generated_tokens;
  if (r.first_token_s == 0) r.first_token_s = now();
  out.tokens.push_back(tok);
  out.logprobs.push_back(lp);
  if (top) out.top.push_back(*top);
  FinishReason why = FinishReason::None;
  std::string match;
  if (tok == cfg_.eos_id && !r.p.ignore_eos) why = FinishReason::Stop;
  else if (std::find(r.p.stop_token_ids.begin(), r.p.stop_token_ids.end(), tok) != r.p.stop_token_ids.end())
    why = FinishReason::Stop, match = "token " + std::to_string(tok);
  bool by_string = false;
  if (r.dec) {
    // The token that stops a request contributes no text (as EOS does).
    const size_t before = r.text.size();
    if (why == FinishReason::None) r.text += r.dec->push(tok);
    for (const std::string& s : r.p.stop) {
      const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
      const size_t at = r.text.find(s, from);
      if (at != std::string::npos) {
        r.text.resize(at);
        why = FinishReason::Stop;
        match = s;
        by_string = true;
        break;
      }
    }
  }
  if (why == FinishReason::None && r.n_generated() >= r.max_new) why = FinishReason::Length;
  if (r.dec && why != FinishReason::None && !by_string) r.text += r.dec->flush();
  if (r.dec) {
    size_t end = r.text.size();
    if (why == FinishReason::None && r.max_stop > 1) {
      // Hold back what may still begin a stop string, on a UTF-8 character boundary.
      end = end > r.max_stop - 1 ? end - (r.max_stop - 1) : 0;
      while (end > r.emitted && (static_cast<unsigned char>(r.text[end]) & 0xC0) == 0x80) --end;
    }
    if (end > r.emitted) {
      out.text += r.text.substr(r.emitted, end - r.emitted);
      r.emitted = end;
    }
  }
  if (why != FinishReason::None) {
    RequestOutput fin = finish(r, why, match);
    fin.tokens = std::move(out.tokens);
    fin.logprobs = std::move(out.logprobs);
    fin.top = std::move(out.top);
    fin.text = std::move(out.text);
    fin.prompt_logprobs = std::move(out.prompt_logprobs);
    out = std::move(fin);
  }
}

std::vector<RequestOutput> Scheduler::commit(const StepPlan& plan, const StepResults& res) {
  std::vector<RequestOutput> outs;
  size_t si = 0, li = 0;
  for (const StepPlan::Row& row : plan.rows) {
    Req* rp = find(row.id);
    DSA_CHECK(rp && rp->running, "scheduler: commit of a plan row for request ", row.id, " that is not running");
    Req& r = *rp;
    r.n_computed = row.start_pos + row.n_new;
    DSA_CHECK(li + row.lp_targets.size() <= res.prompt_lp.size(), "scheduler: results lack prompt logprobs");
    r.prompt_lp.insert(r.prompt_lp.end(), res.prompt_lp.begin() + int64_t(li),
                       res.prompt_lp.begin() + int64_t(li + row.lp_targets.size()));
    li += row.lp_targets.size();
    if (row.start_pos < r.n_prompt) stats_.prompt_tokens += std::min(r.n_prompt, r.n_computed) - row.start_pos;
    publish_full_blocks(r);
    RequestOutput out;
    out.id = r.id;
    if (r.p.prompt_logprobs && !r.prompt_lp_sent && r.n_computed >= r.n_prompt) {
      out.prompt_logprobs = r.prompt_lp;
      r.prompt_lp_sent = true;
    }
    if (row.sample) {
      DSA_CHECK(si < res.tokens.size() && si < res.logprobs.size(), "scheduler: results lack a sampled token");
      const std::vector<TopLogprob>* top = row.top_logprobs > 0 && si < res.top.size() ? &res.top[si] : nullptr;
      emit_token(r, res.tokens[si], res.logprobs[si], top, out);
      ++si;
    } else if (r.n_computed >= int64_t(r.tokens.size()) && r.n_generated() >= r.max_new) {
      RequestOutput fin = finish(r, FinishReason::Length);  // nothing to generate (max_tokens 0)
      fin.prompt_logprobs = std::move(out.prompt_logprobs);
      out = std::move(fin);
    }
    if (out.finished || !out.tokens.empty() || !out.prompt_logprobs.empty()) outs.push_back(std::move(out));
  }
  return outs;
}

RequestOutput Scheduler::finish(Req& r, FinishReason why, const std::string& detail) {
  RequestOutput o;
  o.id = r.id;
  o.finished = true;
  o.finish = why;
  if (why == FinishReason::Error) o.error = detail;
  else o.stop_match = detail;
  if (why == FinishReason::Cancelled && r.dec) {
    // Whatever was held back for stop strings goes out with the end.
    if (r.text.size() > r.emitted) o.text = r.text.substr(r.emitted);
  }
  o.prompt_tokens = r.n_prompt;
  o.completion_tokens = r.n_generated();
  o.cached_tokens = r.cached_tokens;
  o.preemptions = r.preemptions;
  o.arrival_s = r.arrival_s;
  o.first_token_s = r.first_token_s;
  o.finish_s = now();
  switch (why) {
    case FinishReason::Stop: ++stats_.finished_stop; break;
    case FinishReason::Length: ++stats_.finished_length; break;
    case FinishReason::Cancelled: ++stats_.cancelled; break;
    default: ++stats_.errors; break;
  }
  release(r);
  if (r.running) running_.erase(std::find(running_.begin(), running_.end(), &r));
  else waiting_.erase(std::find(waiting_.begin(), waiting_.end(), &r));
  reqs_.erase(r.id);
  return o;
}

std::vector<RequestOutput> Scheduler::fail(const StepPlan& plan, const std::string& error) {
  std::vector<RequestOutput> outs;
  for (const StepPlan::Row& row : plan.rows)
    if (Req* r = find(row.id)) outs.push_back(finish(*r, FinishReason::Error, error));
  return outs;
}

std::vector<RequestOutput> Scheduler::cancel_all() {
  std::vector<RequestOutput> outs;
  while (!reqs_.empty()) outs.push_back(finish(*reqs_.begin()->second, FinishReason::Cancelled));
  return outs;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = stats_;
  s.running = int64_t(running_.size());
  s.waiting = int64_t(waiting_.size());
  s.blocks_total = pool_.num_blocks();
  s.blocks_used = pool_.in_use();
  s.blocks_cached = pool_.cached();
  return s;
}

void Scheduler::check() const {
  std::vector<int32_t> refs(size_t(pool_.num_blocks()), 0);
  for (const auto& [id, rp] : reqs_) {
    const Req& r = *rp;
    if (!r.running) {
      DSA_CHECK(r.blocks.empty() && r.n_computed == 0, "scheduler: waiting request ", id, " holds ", r.blocks.size(), " blocks");
      DSA_CHECK(std::find(waiting_.begin(), waiting_.end(), &r) != waiting_.end(), "scheduler: request ", id, " is on no queue");
    } else {
      DSA_CHECK(std::find(running_.begin(), running_.end(), &r) != running_.end(), "scheduler: request ", id, " is on no queue");
      // Between schedule() and commit() the table also covers the planned tokens (at most all of them).
      const int64_t nb = int64_t(r.blocks.size());
      DSA_CHECK(nb >= (r.n_computed + kKvBlock - 1) / kKvBlock && nb <= (int64_t(r.tokens.size()) + kKvBlock - 1) / kKvBlock,
                "scheduler: request ", id, " has ", nb, " blocks for ", r.n_computed, " computed of ", r.tokens.size(), " tokens");
      DSA_CHECK(r.n_computed < int64_t(r.tokens.size()) || r.n_generated() >= r.max_new, "scheduler: request ", id,
                " has nothing pending");
    }
    std::vector<int32_t> mine = r.blocks;
    std::sort(mine.begin(), mine.end());
    DSA_CHECK(std::adjacent_find(mine.begin(), mine.end()) == mine.end(), "scheduler: request ", id, " holds a block twice");
    for (int32_t b : r.blocks) ++refs[size_t(b)];
  }
  DSA_CHECK(int64_t(running_.size() + waiting_.size()) == int64_t(reqs_.size()), "scheduler: ", reqs_.size(), " requests, ",
            running_.size(), " running + ", waiting_.size(), " waiting");
  DSA_CHECK(std::is_sorted(running_.begin(), running_.end(), [](Req* a, Req* b) { return a->id < b->id; }) &&
                std::is_sorted(waiting_.begin(), waiting_.end(), [](Req* a, Req* b) { return a->id < b->id; }),
            "scheduler: queues out of arrival order");
  pool_.check(&refs);
}

}  // namespace dsa

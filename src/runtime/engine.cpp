#include "runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "backends/sample_noise.h"
#include "io/safetensors.h"
#include "runtime/memory_estimate.h"

namespace dsa {

using Clock = std::chrono::steady_clock;
static uint64_t attention_salt(AttentionMode m) { return m == AttentionMode::Sparse ? 0x5a17 : 0xde45; }
static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
template <typename T>
static void check_finite_logits(const T* p, int64_t n, const char* which) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      fail("the model produced a non-finite logit (", p[i], ")", which,
           ": its weights or inputs hold NaN/Inf (loading scans the weights unless --no-check-weights)");
}

size_t parse_memory_size(const std::string& s, size_t available, const std::string& what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = s.substr(used);
  DSA_CHECK(used > 0 && std::isfinite(v) && v > 0, what, " '", s, "': expected a size such as 8G, 512M or 90%");
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KiB") mul = 1024.0;
  else if (unit == "M" || unit == "MiB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TiB") mul = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "%") {
    DSA_CHECK(v <= 100, what, " '", s, "': a share must be at most 100%");
    return size_t(double(available) * v / 100.0);
  } else {
    fail(what, " '", s, "': unknown unit '", unit, "' (use K, M, G, T or %)");
  }
  return size_t(v * mul);
}

std::unique_ptr<Engine> Engine::load(const std::string& dir, const EngineOptions& opt) {
  auto e = std::unique_ptr<Engine>(new Engine());
  e->opt_ = opt;
  ModelConfig cfg = ModelConfig::from_file(dir + "/config.json");
  Checkpoint ck = Checkpoint::open(dir);
  e->be_ = make_backend(opt.device, opt.threads);
  e->be_->set_numerics(opt.numerics);
  const std::string where = e->be_->name() == "cpu" ? "the host (MemAvailable)" : e->be_->name();
  check_memory_fits("the weights", estimate_weight_bytes(cfg, ck.tensor_bytes()), dir, e->be_->free_memory(), where,
                    "use a machine or device with more memory");
  ModelWeights w = load_weights(ck, cfg, *e->be_, opt.check_weights);
  const size_t per_token = KvCache::bytes_per_token(cfg.num_hidden_layers);
  int64_t kv_tokens = opt.kv_tokens;
  if (kv_tokens <= 0 && !opt.kv_memory.empty()) {
    const size_t bytes = parse_memory_size(opt.kv_memory, e->be_->free_memory(), "--kv-memory");
    kv_tokens = int64_t(bytes / per_token);
    DSA_CHECK(kv_tokens >= kKvBlock, "--kv-memory ", opt.kv_memory, " holds ", kv_tokens, " tokens (", per_token,
              " bytes per token over ", cfg.num_hidden_layers, " layers); at least one block of ", kKvBlock, " is needed");
  }
  if (kv_tokens <= 0) kv_tokens = cfg.max_position_embeddings;
  {
    const uint64_t kv_bytes = uint64_t(per_token) * uint64_t((kv_tokens + kKvBlock - 1) / kKvBlock * kKvBlock);
    const uint64_t ws = estimate_workspace_bytes(cfg, opt.max_batch_tokens, std::min(kv_tokens, cfg.max_position_embeddings),
                                                 std::min(opt.max_seqs, opt.max_batch_tokens));
    check_memory_fits("the KV pool and the step workspace", kv_bytes + ws,
                      concat("KV ", format_bytes(double(kv_bytes)), " for ", kv_tokens, " tokens at ", per_token,
                             " B/token, workspace ~", format_bytes(double(ws)), " for steps of ", opt.max_batch_tokens,
                             " tokens"),
                      e->be_->free_memory(), where,
                      "lower --kv-tokens (or --kv-memory), the batch (--batch, --concurrency, --max-seqs) or "
                      "--max-batch-tokens");
  }
  e->kv_ = std::make_unique<KvCache>(*e->be_, cfg.num_hidden_layers, (kv_tokens + kKvBlock - 1) / kKvBlock);
  if (opt.tokenizer && std::filesystem::exists(dir + "/tokenizer.json"))
    e->tok_ = std::make_unique<Tokenizer>(Tokenizer::from_dir(dir));
  SchedulerConfig sc;
  sc.max_batch_tokens = opt.max_batch_tokens;
  sc.max_seqs = opt.max_seqs;
  sc.max_prefill_chunk = opt.prefill_chunk;
  sc.max_context = cfg.max_position_embeddings;
  sc.vocab_size = cfg.vocab_size;
  sc.eos_id = int32_t(cfg.eos_token_id);
  sc.prefix_cache = opt.prefix_cache;
  sc.prompt_absorbed = opt.prefill_form == PrefillForm::Mqa;
  sc.salt = attention_salt(opt.attention);
  e->model_ = std::make_unique<DeepseekV32>(std::move(cfg), std::move(w), *e->be_);
  e->sched_ = std::make_unique<Scheduler>(e->kv_->pool(), sc, e->tok_.get());
  return e;
}

Engine::~Engine() = default;

RequestId Engine::add_request(RequestParams p) {
  std::lock_guard<std::mutex> g(mu_);
  return sched_->add(std::move(p));
}

void Engine::cancel(RequestId id) {
  std::lock_guard<std::mutex> g(mu_);
  sched_->cancel(id);
}

bool Engine::has_work() const {
  std::lock_guard<std::mutex> g(mu_);
  return sched_->has_work();
}

SchedulerStats Engine::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return sched_->stats();
}

void Engine::set_attention(AttentionMode m) {
  std::lock_guard<std::mutex> g(mu_);
  DSA_CHECK(!sched_->has_work(), "the attention mode can change only while no request is in flight");
  opt_.attention = m;
  sched_->set_salt(attention_salt(m));
}

void Engine::check_invariants() const {
  std::lock_guard<std::mutex> g(mu_);
  sched_->check();
}

std::vector<RequestOutput> Engine::cancel_all() {
  std::unique_lock<std::mutex> l(mu_);
  // Announced first: a stepping thread that loops straight into its next step() would otherwise
  // take the lock back before this one wakes, step after step, until every request had finished.
  ++cancels_waiting_;
  step_done_.wait(l, [&] { return !stepping_; });
  std::vector<RequestOutput> outs = sched_->cancel_all();
  --cancels_waiting_;
  l.unlock();
  step_done_.notify_all();
  return outs;
}

std::vector<RequestOutput> Engine::step() {
  StepTiming t;
  auto t0 = Clock::now();
  std::vector<RequestOutput> outs;
  StepPlan plan;
  {
    std::unique_lock<std::mutex> l(mu_);
    DSA_CHECK(!stepping_, "Engine::step called from two threads at once");
    step_done_.wait(l, [&] { return cancels_waiting_ == 0; });  // a cancel_all() waiting goes first
    plan = sched_->schedule(outs);
    stepping_ = !plan.empty();
  }
  t.schedule_s = since(t0);
  if (plan.empty()) {
    last_ = t;
    return outs;
  }
  // From here to the commit the plan's block tables are in use: cancel_all() waits (also when
  // something below throws).
  struct Stepping {
    Engine& e;
    ~Stepping() {
      {
        std::lock_guard<std::mutex> g(e.mu_);
        e.stepping_ = false;
      }
      e.step_done_.notify_all();
    }
  } stepping{*this};
  t.tokens = int64_t(plan.ids.size());
  t.seqs = int64_t(plan.rows.size());
  t.decode_rows = plan.n_decode;
  StepResults res;
  std::string error;
  try {
    res = run(plan, t);
  } catch (const Error& e) {
    error = e.what();
  }
  auto tc = Clock::now();
  {
    std::lock_guard<std::mutex> g(mu_);
    std::vector<RequestOutput> o = error.empty() ? sched_->commit(plan, res) : sched_->fail(plan, error);
    outs.insert(outs.end(), std::make_move_iterator(o.begin()), std::make_move_iterator(o.end()));
  }
  t.commit_s = since(tc);
  last_ = t;
  return outs;
}

StepResults Engine::run(const StepPlan& plan, StepTiming& t) {
  auto t0 = Clock::now();
  std::vector<BatchSlice> slices;
  slices.reserve(plan.rows.size());
  for (const auto& r : plan.rows) slices.push_back({r.blocks, r.start_pos, r.n_new, r.absorbed});
  Batch b = make_batch(slices);
  // Logit rows: every sampling row's last token, then the prompt-logprob rows.
  std::vector<int32_t> rows, targets;
  std::vector<SampleParams> sp;
  int top_n = 0;
  for (size_t i = 0; i < plan.rows.size(); ++i)
    if (plan.rows[i].sample) {
      rows.push_back(int32_t(b.seqs[i].token_offset + plan.rows[i].n_new - 1));
      sp.push_back(plan.rows[i].sampling);
      top_n = std::max(top_n, plan.rows[i].top_logprobs);
    }
  const size_t ns = rows.size();
  for (size_t i = 0; i < plan.rows.size(); ++i) {
    const auto& r = plan.rows[i];
    for (size_t j = 0; j < r.lp_targets.size(); ++j) rows.push_back(int32_t(b.seqs[i].token_offset + r.lp_row0 + int64_t(j)));
    targets.insert(targets.end(), r.lp_targets.begin(), r.lp_targets.end());
  }
  const size_t nl = targets.size();
  if (rows.empty()) rows.push_back(int32_t(b.n_tokens() - 1));  // a step of middle chunks: logits unused
  // Host ids: the model puts them on the device (staged with the step's other inputs in decode steps).
  Tensor ids_h{const_cast<int32_t*>(plan.ids.data()), DType::I32, {int64_t(plan.ids.size())}};
  t.build_s = since(t0);
  auto tf = Clock::now();
  Tensor logits = model_->forward(ids_h, b, *kv_, opt_.attention, rows);
  t.forward_s = since(tf);
  auto ts = Clock::now();
  StepResults res;
  // Non-finite logits (bad weights or inputs) stop the step's requests with an error instead of
  // sampling garbage: host logits are scanned before sampling (sorting NaNs is undefined); on a device
  // the log-probabilities computed over each whole row below carry any NaN/Inf through.
  if (logits.device == Device::CPU) check_finite_logits(logits.ptr<float>(), logits.numel(), "");
  if (ns > 0) {
    Tensor tok = be_->alloc(DType::I32, {int64_t(ns)}), lp = be_->alloc(DType::F32, {int64_t(ns)});
    Tensor tid, tlp;
    if (top_n > 0) tid = be_->alloc(DType::I32, {int64_t(ns), top_n}), tlp = be_->alloc(DType::F32, {int64_t(ns), top_n});
    be_->sample(logits.rows(0, int64_t(ns)), sp, tok, lp, top_n > 0 ? &tid : nullptr, top_n > 0 ? &tlp : nullptr);
    res.tokens.resize(ns);
    res.logprobs.resize(ns);
    be_->download(tok, res.tokens.data());
    be_->download(lp, res.logprobs.data());
    check_finite_logits(res.logprobs.data(), int64_t(ns), " (a sampled token's log-probability)");
    if (top_n > 0) {
      std::vector<int32_t> hi(ns * size_t(top_n));
      std::vector<float> hl(ns * size_t(top_n));
      be_->download(tid, hi.data());
      be_->download(tlp, hl.data());
      res.top.resize(ns);
      size_t k = 0;
      for (size_t i = 0; i < plan.rows.size(); ++i) {
        if (!plan.rows[i].sample) continue;
        for (int j = 0; j < plan.rows[i].top_logprobs; ++j)
          res.top[k].push_back({hi[k * size_t(top_n) + size_t(j)], hl[k * size_t(top_n) + size_t(j)]});
        ++k;
      }
    }
  }
  if (nl > 0) {
    Tensor tg_h{targets.data(), DType::I32, {int64_t(nl)}};
    Tensor tg = be_->upload(tg_h), lp = be_->alloc(DType::F64, {int64_t(nl)});
    be_->token_logprobs(logits.rows(int64_t(ns), int64_t(ns + nl)), tg, lp);
    res.prompt_lp.resize(nl);
    be_->download(lp, res.prompt_lp.data());
    check_finite_logits(res.prompt_lp.data(), int64_t(nl), " (a prompt token's log-probability)");
  }
  be_->synchronize();
  t.sample_s = since(ts);
  return res;
}

GenerateStats Engine::generate(const std::vector<int32_t>& prompt, const SamplingParams& sp, int64_t max_new,
                               const std::function<bool(int32_t)>& on_token, bool ignore_eos) {
  RequestParams p;
  p.prompt = prompt;
  p.sampling = sp;
  p.max_tokens = std::min<int64_t>(max_new, config().max_position_embeddings - int64_t(prompt.size()));
  p.ignore_eos = ignore_eos;
  p.detokenize = false;
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  const RequestId id = add_request(std::move(p));
  bool done = false, stopped = false;
  while (!done) {
    for (RequestOutput& o : step()) {
      if (o.id != id) continue;
      for (int32_t t : o.tokens) {
        ++st.new_tokens;
        if (!stopped && !on_token(t)) {
          stopped = true;
          cancel(id);
        }
      }
      if (o.finished) {
        DSA_CHECK(o.finish != FinishReason::Error, o.error);
        done = true;
        st.ttft_s = o.first_token_s > 0 ? o.first_token_s - o.arrival_s : 0;
        st.prefill_s = st.ttft_s;
        st.decode_s = o.first_token_s > 0 ? o.finish_s - o.first_token_s : 0;
      }
    }
  }
  return st;
}

std::vector<float> Engine::feed(Sequence& s, const std::vector<int32_t>& tokens, bool all_logits) {
  const int64_t V = config().vocab_size, n = int64_t(tokens.size());
  DSA_CHECK(n > 0, "feed: no tokens");
  DSA_CHECK(s.len + n <= config().max_position_embeddings, "prompt too long: ", s.len + n,
            " tokens exceed the model's context of ", config().max_position_embeddings);
  const int64_t chunk = opt_.prefill_chunk > 0 ? opt_.prefill_chunk : n;
  const bool absorbed = n == 1 || opt_.prefill_form == PrefillForm::Mqa;
  std::vector<float> out;
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t m = std::min(chunk, n - off);
    s.reserve(*kv_, s.len + m);
    Batch b = make_batch({BatchSlice{&s.blocks, s.len, m, absorbed}});
    Tensor ids_h{const_cast<int32_t*>(tokens.data() + off), DType::I32, {m}};
    std::vector<int32_t> rows;
    if (all_logits) for (int64_t i = 0; i < m; ++i) rows.push_back(int32_t(i));
    else rows.push_back(int32_t(m - 1));  // a chunk in the middle: logits unused
    Tensor logits = model_->forward(ids_h, b, *kv_, opt_.attention, rows);
    s.len += m;
    if (all_logits || off + m == n) {
      const size_t base = out.size();
      out.resize(base + rows.size() * size_t(V));
      be_->download(logits, out.data() + base);
    }
  }
  be_->synchronize();
  return out;
}

}  // namespace dsa

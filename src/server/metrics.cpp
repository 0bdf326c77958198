#include "server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace dsa::server {

namespace {

std::string num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

void head(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void line(std::string& out, const std::string& name, double v, const std::string& labels = "") {
  out += name;
  if (!labels.empty()) out += "{" + labels + "}";
  out += ' ';
  out += num(v);
  out += '\n';
}

// Token-count buckets: powers of two from 1 to 2^20.
std::vector<double> pow2_bounds() {
  std::vector<double> b;
  for (double v = 1; v <= double(1 << 20); v *= 2) b.push_back(v);
  return b;
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());  // le: v <= bound
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  uint64_t cum = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i];
    const std::string le = i < bounds_.size() ? num(bounds_[i]) : "+Inf";
    line(out, name + "_bucket", double(cum), "le=\"" + le + "\"");
  }
  line(out, name + "_sum", sum_);
  line(out, name + "_count", double(count_));
}

// Latency buckets reach down to a millisecond: decode steps on the CPU and on a GPU are that short.
Metrics::Metrics()
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
             160.0, 640.0}),
      tpot_({0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0}),
      e2e_({0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0}),
      prompt_len_(pow2_bounds()),
      gen_len_(pow2_bounds()) {}

void Metrics::on_output(const RequestOutput& o) {
  std::lock_guard<std::mutex> g(mu_);
  generation_tokens_ += o.tokens.size();
  if (!o.finished) return;
  ++finished_[finish_reason_name(o.finish)];
  prompt_tokens_ += uint64_t(o.prompt_tokens);
  cached_tokens_ += uint64_t(o.cached_tokens);
  prompt_len_.observe(double(o.prompt_tokens));
  gen_len_.observe(double(o.completion_tokens));
  e2e_.observe(o.finish_s - o.arrival_s);
  if (o.first_token_s > 0) {
    ttft_.observe(o.first_token_s - o.arrival_s);
    if (o.completion_tokens > 1) tpot_.observe((o.finish_s - o.first_token_s) / double(o.completion_tokens - 1));
  }
  if (o.finish != FinishReason::Stop && o.finish != FinishReason::Length) return;
  ++finished_total_;
  auto keep = [](std::vector<double>& ring, size_t& next, double v) {
    if (ring.size() < kRecent) ring.push_back(v);
    else ring[next] = v;
    next = (next + 1) % kRecent;
  };
  keep(recent_e2e_, recent_e2e_next_, o.finish_s - o.arrival_s);
  if (o.first_token_s > 0) {
    keep(recent_ttft_, recent_ttft_next_, o.first_token_s - o.arrival_s);
    if (o.completion_tokens > 1)
      keep(recent_tpot_, recent_tpot_next_, (o.finish_s - o.first_token_s) / double(o.completion_tokens - 1));
  }
}

std::string Metrics::request_report() const {
  std::lock_guard<std::mutex> g(mu_);
  char b[320];
  std::snprintf(b, sizeof b,
                "requests: %lu finished; engine clock: TTFT p50 %.1f ms, p99 %.1f ms | TPOT p50 %.2f ms, p99 %.2f ms | "
                "latency p50 %.2f s\n",
                (unsigned long)finished_total_, percentile(recent_ttft_, 50) * 1e3, percentile(recent_ttft_, 99) * 1e3,
                percentile(recent_tpot_, 50) * 1e3, percentile(recent_tpot_, 99) * 1e3, percentile(recent_e2e_, 50));
  return b;
}

std::string render_steps(const StepStats& s, int64_t outputs, double handoff_s, double deliver_s) {
  std::string o;
  const StepStats::Kind kinds[] = {StepStats::kDecode, StepStats::kMixed, StepStats::kPrefill, StepStats::kEmpty};
  head(o, "dsa:engine_steps_total", "counter",
       "Engine steps by kind: decode (decode rows only), mixed (decode rows and prefill chunks), prefill, empty.");
  for (auto k : kinds) line(o, "dsa:engine_steps_total", double(s.sum[k].steps), std::string("kind=\"") + StepStats::kind_name(k) + "\"");
  head(o, "dsa:engine_step_tokens_total", "counter", "Tokens computed by the engine steps of each kind.");
  for (auto k : kinds)
    line(o, "dsa:engine_step_tokens_total", double(s.sum[k].tokens), std::string("kind=\"") + StepStats::kind_name(k) + "\"");
  head(o, "dsa:engine_step_seconds_total", "counter",
       "Engine thread time per step kind: forward (the model's forward call), sample (sampling and the device sync), "
       "host (the rest of the step: schedule, batch, commit), between (after the step, before the next: the outputs "
       "handed on).");
  for (auto k : kinds) {
    const StepStats::Sum& x = s.sum[k];
    const std::string kl = std::string("kind=\"") + StepStats::kind_name(k) + "\",part=\"";
    line(o, "dsa:engine_step_seconds_total", x.forward_s, kl + "forward\"");
    line(o, "dsa:engine_step_seconds_total", x.sample_s, kl + "sample\"");
    line(o, "dsa:engine_step_seconds_total", x.host_s(), kl + "host\"");
    line(o, "dsa:engine_step_seconds_total", x.between_s, kl + "between\"");
  }
  head(o, "dsa:engine_outputs_total", "counter", "Request outputs (a step's tokens and finishes) handed to HTTP threads.");
  line(o, "dsa:engine_outputs_total", double(outputs));
  head(o, "dsa:engine_handoff_seconds_total", "counter", "Stepping thread time spent handing outputs on (between steps).");
  line(o, "dsa:engine_handoff_seconds_total", handoff_s);
  head(o, "dsa:engine_deliver_seconds_total", "counter",
       "Time spent putting outputs into the requests' mailboxes and waking their HTTP threads.");
  line(o, "dsa:engine_deliver_seconds_total", deliver_s);
  return o;
}

void Metrics::on_http(const std::string& route, int status) {
  std::lock_guard<std::mutex> g(mu_);
  ++http_[{route, status}];
}

std::string Metrics::render(const SchedulerStats& s, int64_t in_flight) const {
  std::lock_guard<std::mutex> g(mu_);
  std::string o;
  head(o, "dsa:num_requests_running", "gauge", "Requests in the running batch (prefilling or decoding).");
  line(o, "dsa:num_requests_running", double(s.running));
  head(o, "dsa:num_requests_waiting", "gauge", "Requests waiting for a slot (new or preempted).");
  line(o, "dsa:num_requests_waiting", double(s.waiting));
  head(o, "dsa:num_requests_in_flight", "gauge", "Engine requests the server has submitted and not yet seen finish.");
  line(o, "dsa:num_requests_in_flight", double(in_flight));

  head(o, "dsa:kv_cache_blocks_total", "gauge", "KV blocks in the pool (64 tokens each).");
  line(o, "dsa:kv_cache_blocks_total", double(s.blocks_total));
  head(o, "dsa:kv_cache_blocks_used", "gauge", "KV blocks referenced by some request.");
  line(o, "dsa:kv_cache_blocks_used", double(s.blocks_used));
  head(o, "dsa:kv_cache_blocks_free", "gauge", "KV blocks not referenced by any request (empty or cached).");
  line(o, "dsa:kv_cache_blocks_free", double(s.blocks_total - s.blocks_used));
  head(o, "dsa:kv_cache_blocks_cached", "gauge", "KV blocks published in the prefix cache (referenced or not).");
  line(o, "dsa:kv_cache_blocks_cached", double(s.blocks_cached));
  head(o, "dsa:kv_cache_usage_perc", "gauge", "Share of the KV blocks in use (1 = full).");
  line(o, "dsa:kv_cache_usage_perc", s.blocks_total > 0 ? double(s.blocks_used) / double(s.blocks_total) : 0.0);

  head(o, "dsa:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache at admission.");
  line(o, "dsa:prefix_cache_queries_total", double(s.prefix_queried_tokens));
  head(o, "dsa:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache (not recomputed).");
  line(o, "dsa:prefix_cache_hits_total", double(s.prefix_hit_tokens));
  head(o, "dsa:num_preemptions_total", "counter", "Requests preempted (blocks released, recomputed later).");
  line(o, "dsa:num_preemptions_total", double(s.preemptions));
  head(o, "dsa:prefill_tokens_total", "counter", "Prompt tokens computed (cache hits excluded, recomputations included).");
  line(o, "dsa:prefill_tokens_total", double(s.prompt_tokens));

  head(o, "dsa:prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
  line(o, "dsa:prompt_tokens_total", double(prompt_tokens_));
  head(o, "dsa:prompt_tokens_cached_total", "counter", "Prompt tokens of finished requests served from the prefix cache.");
  line(o, "dsa:prompt_tokens_cached_total", double(cached_tokens_));
  head(o, "dsa:generation_tokens_total", "counter", "Generated tokens.");
  line(o, "dsa:generation_tokens_total", double(generation_tokens_));

  head(o, "dsa:request_success_total", "counter", "Finished engine requests by finish reason.");
  for (const char* r : {"stop", "length", "cancelled", "error"}) {
    auto it = finished_.find(r);
    line(o, "dsa:request_success_total", it == finished_.end() ? 0.0 : double(it->second),
         std::string("finished_reason=\"") + r + "\"");
  }
  head(o, "dsa:http_requests_total", "counter", "HTTP responses by route and status code.");
  for (const auto& [k, v] : http_)
    line(o, "dsa:http_requests_total", double(v), "route=\"" + k.first + "\",status=\"" + std::to_string(k.second) + "\"");

  head(o, "dsa:time_to_first_token_seconds", "histogram", "Arrival to first generated token, per request.");
  ttft_.render(o, "dsa:time_to_first_token_seconds");
  head(o, "dsa:time_per_output_token_seconds", "histogram", "Mean time per output token after the first, per request.");
  tpot_.render(o, "dsa:time_per_output_token_seconds");
  head(o, "dsa:e2e_request_latency_seconds", "histogram", "Arrival to finish, per request.");
  e2e_.render(o, "dsa:e2e_request_latency_seconds");
  head(o, "dsa:request_prompt_tokens", "histogram", "Prompt length of finished requests.");
  prompt_len_.render(o, "dsa:request_prompt_tokens");
  head(o, "dsa:request_generation_tokens", "histogram", "Generated tokens of finished requests.");
  gen_len_.render(o, "dsa:request_generation_tokens");
  return o;
}

}  // namespace dsa::server

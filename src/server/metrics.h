#pragma once
// Server metrics in the Prometheus text format (version 0.0.4), names in vLLM's style with a
// `dsa:` prefix (docs/server.md lists them). Request-level numbers come from the finished
// RequestOutputs (on the engine thread), HTTP numbers from the handlers, the rest is read from the
// scheduler when /metrics is scraped.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/request.h"
#include "runtime/scheduler.h"
#include "runtime/step_stats.h"

namespace dsa::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // `name`_bucket{le=...}, `name`_sum and `name`_count lines.
  void render(std::string& out, const std::string& name) const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // Every engine output (engine thread): tokens as they come, the request's latencies at its end.
  void on_output(const RequestOutput& o);
  // One HTTP response: `route` is the path of a known endpoint (or "other").
  void on_http(const std::string& route, int status);

  // The whole exposition; `in_flight` is the server's own count of unfinished engine requests.
  std::string render(const SchedulerStats& s, int64_t in_flight) const;
  // Finished requests on the engine clock (arrival = add_request), in dsa bench's words:
  // "requests: N finished; engine clock: TTFT p50 .. ms, p99 .. ms | TPOT p50 .. ms, p99 .. ms | latency p50 .. s"
  // (percentiles of the last kRecent requests).
  std::string request_report() const;
  static constexpr size_t kRecent = size_t(1) << 16;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> finished_;                    // by finish reason
  std::map<std::pair<std::string, int>, uint64_t> http_;        // by (route, status)
  uint64_t prompt_tokens_ = 0, generation_tokens_ = 0, cached_tokens_ = 0;
  Histogram ttft_, tpot_, e2e_, prompt_len_, gen_len_;
  std::vector<double> recent_ttft_, recent_tpot_, recent_e2e_;  // rings of kRecent
  size_t recent_ttft_next_ = 0, recent_tpot_next_ = 0, recent_e2e_next_ = 0;
  uint64_t finished_total_ = 0;
};

// The engine loop's step statistics as Prometheus counters: dsa:engine_steps_total{kind},
// dsa:engine_step_seconds_total{kind,part} (part: forward, sample, host, between),
// dsa:engine_step_tokens_total{kind}, dsa:engine_outputs_total, dsa:engine_handoff_seconds_total (the
// stepping thread's), dsa:engine_deliver_seconds_total (into the mailboxes).
std::string render_steps(const StepStats& s, int64_t outputs, double handoff_s, double deliver_s);

}  // namespace dsa::server

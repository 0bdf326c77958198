// dsa bench: the batched engine's numbers, through the same step API the server uses.
//   latency (default): --batch sequences prefilled to --ctx tokens, then --steps decode steps,
//     DSA and dense MLA in turn (each prefilled in its own mode); ms per decode step.
//   throughput (--requests N): N requests of --input-len prompt / --output-len generated tokens (or
//     a JSONL --trace), --concurrency in flight; requests/s, output tokens/s, TTFT and TPOT
//     p50/p99, KV blocks used, prefix-cache hit rate, preemptions and where a step's time goes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "backends/op_profiler.h"
#include "runtime/step_stats.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

using namespace dsa;
using clk = std::chrono::steady_clock;

double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  // Ids from 2 up: never BOS/EOS, so ignore_eos is the only stop.
  for (auto& v : t) v = int32_t(2 + rng() % uint64_t(std::max<int64_t>(1, vocab - 2)));
  return t;
}

// Decode latency of `batch` sequences at context `ctx` in the engine's current attention mode.
struct LatencyResult {
  double prefill_s = 0, ms_per_step = 0;
};
LatencyResult latency_run(Engine& eng, int64_t ctx, int64_t steps, int64_t batch) {
  std::mt19937_64 rng(1);
  for (int64_t i = 0; i < batch; ++i) {
    RequestParams p;
    p.prompt = random_tokens(rng, ctx, eng.config().vocab_size);
    p.max_tokens = steps + 2;  // one token from the prefill, a warm-up decode step, then `steps` timed
    p.ignore_eos = true;
    p.detokenize = false;
    eng.add_request(std::move(p));
  }
  LatencyResult r;
  const auto t0 = clk::now();
  std::set<RequestId> started;
  int64_t done = 0, decode_steps = 0;
  double total = 0;
  while (done < batch) {
    const auto ts = clk::now();
    std::vector<RequestOutput> outs = eng.step();
    const double dt = seconds_since(ts);
    if (eng.last_step().decode_rows == batch && eng.last_step().seqs == batch && decode_steps++ > 0) total += dt;
    for (auto& o : outs) {
      DSA_CHECK(o.finish != FinishReason::Error, o.error);
      if (!o.tokens.empty()) started.insert(o.id);
      done += o.finished;
    }
    if (int64_t(started.size()) == batch && r.prefill_s == 0) {
      r.prefill_s = seconds_since(t0);
      if (auto* prof = dynamic_cast<OpProfiler*>(&eng.backend())) prof->reset();  // DSA_PROFILE_OPS: decode steps only
    }
  }
  r.ms_per_step = decode_steps > 1 ? total / double(decode_steps - 1) * 1e3 : 0;
  return r;
}

int run(int argc, char** argv) {
  CLI::App app{"Engine benchmarks: decode latency (DSA vs dense) or serving throughput"};
  tools::EngineFlags ef;
  ef.add(app);
  int64_t ctx = 0, steps = 8, batch = 1;
  int64_t requests = 0, concurrency = 8, input_len = 1024, output_len = 256, shared_prefix = 0;
  uint64_t seed = 1;
  double client_rtt_ms = 0;
  bool detokenize = false;
  int graph_replay = 0;
  std::string trace;
  app.add_option("--ctx", ctx, "latency: context length (default: 8 x index_topk)");
  app.add_option("--steps", steps, "latency: decode steps per mode")->capture_default_str();
  app.add_option("--batch", batch, "latency: sequences decoded together")->capture_default_str();
  app.add_option("--requests", requests, "throughput mode: number of requests");
  app.add_option("--concurrency", concurrency, "throughput: requests in flight")->capture_default_str();
  app.add_option("--input-len", input_len, "throughput: prompt tokens per request")->capture_default_str();
  app.add_option("--output-len", output_len, "throughput: generated tokens per request")->capture_default_str();
  app.add_option("--shared-prefix", shared_prefix, "throughput: tokens every prompt starts with (prefix cache)");
  app.add_option("--client-rtt", client_rtt_ms,
                 "throughput: a finished request's successor is submitted this many ms after the finish, at the first "
                 "step boundary past that (0: before the next step; a closed-loop client over HTTP is > 0, so its next "
                 "request misses the step that follows the finish, as with dsa serve + scripts/serve_load.py)")
      ->check(CLI::Range(0.0, 60000.0));
  app.add_flag("--detokenize", detokenize,
               "throughput: the engine detokenises every output (text deltas, as for a request with stop strings; "
               "dsa serve does it on its HTTP threads otherwise): its cost shows in the steps' host time");
  app.add_option("--trace", trace, "throughput: JSONL, one request per line: {\"input_len\": N, \"output_len\": M}");
  app.add_option("--graph-replay", graph_replay,
                 "throughput: record decode-only steps as CUDA graphs and replay each N more times, timed "
                 "(the step's kernel time without host gaps; the step times then include the recording)")
      ->check(CLI::Range(0, 100));
  app.add_option("--seed", seed, "prompt tokens' seed")->capture_default_str();
  app.get_option("--attention")->description("throughput mode (--requests, --trace): sparse (DSA) or dense; "
                                             "latency mode always runs both");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  const ModelConfig cfg = ef.check();
  EngineOptions opt = ef.options();
  const bool throughput = requests > 0 || !trace.empty();
  DSA_USAGE_CHECK(throughput || app.get_option("--attention")->count() == 0,
                  "--attention applies to throughput mode (--requests, --trace); latency mode runs DSA and dense in turn");
  DSA_USAGE_CHECK(throughput || graph_replay == 0, "--graph-replay applies to throughput mode (--requests, --trace)");
  DSA_USAGE_CHECK(throughput || client_rtt_ms == 0, "--client-rtt applies to throughput mode (--requests, --trace)");
  DSA_USAGE_CHECK(throughput || !detokenize, "--detokenize applies to throughput mode (--requests, --trace)");
  const int64_t C = cfg.max_position_embeddings;
  tools::check_range<int64_t>("--steps", steps, 1, 1 << 20);
  tools::check_range<int64_t>("--batch", batch, 1, 1 << 16);
  if (ctx != 0) tools::check_range<int64_t>("--ctx", ctx, 1, C, " (the model's context)");
  tools::check_range<int64_t>("--requests", requests, 0, 1 << 24);
  tools::check_range<int64_t>("--concurrency", concurrency, 1, 1 << 16);
  tools::check_range<int64_t>("--input-len", input_len, 1, C, " (the model's context)");
  tools::check_range<int64_t>("--output-len", output_len, 1, C, " (the model's context)");
  tools::check_range<int64_t>("--shared-prefix", shared_prefix, 0, C - 1, " (less than the model's context)");

  if (!throughput) {
    // ---- latency ---------------------------------------------------------------------------
    if (ctx == 0) ctx = 8 * cfg.index_topk;
    DSA_CHECK(ctx >= 1 && ctx + steps + 2 <= cfg.max_position_embeddings, "--ctx + --steps exceeds the model's context (",
              cfg.max_position_embeddings, ")");
    if (opt.kv_tokens == 0 && opt.kv_memory.empty()) opt.kv_tokens = batch * (ctx + steps + 2 * kKvBlock);
    opt.max_seqs = std::max(opt.max_seqs, batch);
    auto eng = tools::load_engine(ef, opt);
    std::printf("memory: weights %s, KV pool %s for %ld tokens (%s/token over all layers)\n",
                tools::human_bytes(double(eng->weight_bytes())).c_str(), tools::human_bytes(double(eng->kv().bytes())).c_str(),
                long(eng->kv().capacity_tokens()),
                tools::human_bytes(double(KvCache::bytes_per_token(cfg.num_hidden_layers))).c_str());
    double ms[2] = {0, 0}, pre[2] = {0, 0};
    const AttentionMode modes[2] = {AttentionMode::Dense, AttentionMode::Sparse};
    for (int m = 0; m < 2; ++m) {
      eng->set_attention(modes[m]);
      std::fprintf(stderr, "%s: prefilling %ld x %ld tokens on %s ...\n", tools::attention_label(modes[m]).c_str(),
                   long(batch), long(ctx), eng->backend().name().c_str());
      LatencyResult r = latency_run(*eng, ctx, steps, batch);
      ms[m] = r.ms_per_step;
      pre[m] = r.prefill_s;
    }
    if (std::string mr = eng->backend().memory_report(); !mr.empty()) std::printf("%s\n", mr.c_str());
    std::printf("decode at context %ld, batch %ld, %s, %ld layers, %ld heads, index_topk %ld (chunks of <= %ld tokens)\n",
                long(ctx), long(batch), eng->backend().name().c_str(), long(cfg.num_hidden_layers),
                long(cfg.num_attention_heads), long(cfg.index_topk), long(opt.max_batch_tokens));
    for (int m = 0; m < 2; ++m)
      std::printf("  %-36s %10.2f ms/step  %8.1f tok/s   (prefill %.2f s = %.0f tok/s)\n",
                  tools::attention_label(modes[m]).c_str(), ms[m], double(batch) * 1e3 / ms[m], pre[m],
                  double(batch * ctx) / pre[m]);
    std::printf("  DSA decode is %.2fx %s than dense at context %ld (%.1fx index_topk)\n",
                ms[0] > ms[1] ? ms[0] / ms[1] : ms[1] / ms[0], ms[0] > ms[1] ? "faster" : "SLOWER", long(ctx),
                double(ctx) / double(cfg.index_topk));
    return 0;
  }

  // ---- throughput --------------------------------------------------------------------------
  struct Job {
    int64_t in = 0, out = 0;
  };
  std::vector<Job> jobs;
  if (!trace.empty()) {
    std::ifstream f(trace);
    DSA_CHECK(f.good(), trace, ": cannot open");
    std::string line;
    for (int64_t ln = 1; std::getline(f, line); ++ln) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const std::exception& e) {
        fail(trace, ":", ln, ": not JSON (", e.what(), ")");
      }
      DSA_CHECK(j.is_object() && j.contains("input_len") && j["input_len"].is_number_integer() && j.contains("output_len") &&
                    j["output_len"].is_number_integer(),
                trace, ":", ln, ": expected {\"input_len\": N, \"output_len\": M}");
      jobs.push_back({j["input_len"].get<int64_t>(), j["output_len"].get<int64_t>()});
      if (requests > 0 && int64_t(jobs.size()) >= requests) break;
    }
    DSA_CHECK(!jobs.empty(), trace, ": no requests");
  } else {
    jobs.assign(size_t(requests), Job{input_len, output_len});
  }
  DSA_CHECK(concurrency >= 1, "--concurrency must be >= 1");
  for (auto& j : jobs)
    DSA_CHECK(j.in >= 1 && j.out >= 1 && j.in + j.out <= cfg.max_position_embeddings && shared_prefix < j.in, "request of ",
              j.in, " + ", j.out, " tokens: each must be >= 1, the sum within the model's context (",
              cfg.max_position_embeddings, ") and the prompt longer than --shared-prefix");
  opt.max_seqs = std::max(opt.max_seqs, concurrency);
  if (opt.kv_tokens == 0 && opt.kv_memory.empty()) {
    int64_t longest = 0;
    for (auto& j : jobs) longest = std::max(longest, j.in + j.out);
    opt.kv_tokens = std::min<int64_t>(int64_t(jobs.size()), concurrency) * (longest + kKvBlock);
  }
  auto eng = tools::load_engine(ef, opt);
  eng->backend().set_graph_replay_probe(graph_replay);
  std::mt19937_64 rng(seed);
  const std::vector<int32_t> prefix = random_tokens(rng, shared_prefix, cfg.vocab_size);
  std::fprintf(stderr, "throughput: %zu requests, concurrency %ld, on %s, %s, KV pool %ld tokens, step budget %ld tokens\n",
               jobs.size(), long(concurrency), eng->backend().name().c_str(), tools::run_label(opt).c_str(),
               long(eng->kv().capacity_tokens()), long(opt.max_batch_tokens));
  size_t next = 0;
  int64_t in_flight = 0, out_tokens = 0, in_tokens = 0, peak_blocks = 0;
  std::vector<double> ttft, tpot, e2e;
  // Per request: how long it waited between its client "sending" it (its slot's free_at) and add_request
  // (the next step boundary): part of its TTFT and latency, as a client over HTTP measures them.
  std::map<RequestId, double> held;
  // When each free slot takes its next request (seconds since t0): all at the start, then --client-rtt
  // after the request that held it finished (0: before the next step, as the engine alone can).
  std::vector<double> free_at(size_t(std::min<int64_t>(concurrency, int64_t(jobs.size()))), 0.0);
  const double rtt = client_rtt_ms * 1e-3;
  StepStats step_stats;
  auto t0 = clk::now();
  auto submit = [&] {
    const double now = seconds_since(t0);
    for (size_t k = 0; k < free_at.size() && next < jobs.size();) {
      if (free_at[k] > now) {
        ++k;
        continue;
      }
      const double sent = free_at[k];
      free_at.erase(free_at.begin() + int64_t(k));
      RequestParams p;
      p.prompt = prefix;
      const std::vector<int32_t> rest = random_tokens(rng, jobs[next].in - shared_prefix, cfg.vocab_size);
      p.prompt.insert(p.prompt.end(), rest.begin(), rest.end());
      p.max_tokens = jobs[next].out;
      p.ignore_eos = true;
      p.detokenize = detokenize;
      p.sampling.seed = seed + next;
      const RequestId id = eng->add_request(std::move(p));
      if (rtt > 0) held[id] = seconds_since(t0) - sent;
      ++next;
      ++in_flight;
    }
  };
  const ThreadUsage usage0 = ThreadUsage::now();
  submit();
  while (in_flight > 0 || next < jobs.size()) {
    if (in_flight == 0) {  // every slot waits out its client's round trip
      const double first = *std::min_element(free_at.begin(), free_at.end());
      std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, first - seconds_since(t0))));
      submit();
      continue;
    }
    auto ts = clk::now();
    std::vector<RequestOutput> outs = eng->step();
    const auto te = clk::now();
    step_stats.add(eng->last_step(), std::chrono::duration<double>(te - ts).count());
    const double done_at = std::chrono::duration<double>(te - t0).count();
    peak_blocks = std::max(peak_blocks, eng->stats().blocks_used);
    for (auto& o : outs) {
      if (!o.finished) continue;
      DSA_CHECK(o.finish != FinishReason::Error, "request ", o.id, ": ", o.error);
      --in_flight;
      free_at.push_back(done_at + rtt);
      out_tokens += o.completion_tokens;
      in_tokens += o.prompt_tokens;
      const double wait = rtt > 0 ? held[o.id] : 0.0;
      held.erase(o.id);
      ttft.push_back(o.first_token_s - o.arrival_s + wait);
      e2e.push_back(o.finish_s - o.arrival_s + wait);
      if (o.completion_tokens > 1) tpot.push_back((o.finish_s - o.first_token_s) / double(o.completion_tokens - 1));
    }
    submit();
    step_stats.add_between(seconds_since(te));
  }
  const double wall = seconds_since(t0);
  usage0.add_since(step_stats);
  const SchedulerStats st = eng->stats();
  char rtt_buf[64] = "";
  if (rtt > 0) std::snprintf(rtt_buf, sizeof rtt_buf, ", client round trip %g ms", client_rtt_ms);
  const std::string rtt_label = rtt_buf;
  std::printf("throughput on %s (%s): %zu requests, concurrency %ld, prompts %s, outputs %s%s\n", eng->backend().name().c_str(),
              tools::run_label(opt).c_str(), jobs.size(), long(concurrency),
              trace.empty() ? std::to_string(input_len).c_str() : "from trace",
              trace.empty() ? std::to_string(output_len).c_str() : "from trace",
              rtt_label.c_str());
  std::printf("  %.3f requests/s, %.1f output tok/s, %.1f total tok/s over %.2f s\n", double(jobs.size()) / wall,
              double(out_tokens) / wall, double(out_tokens + in_tokens) / wall, wall);
  std::printf("  TTFT p50 %.1f ms, p99 %.1f ms | TPOT p50 %.2f ms, p99 %.2f ms | latency p50 %.2f s\n",
              percentile(ttft, 50) * 1e3, percentile(ttft, 99) * 1e3, percentile(tpot, 50) * 1e3,
              percentile(tpot, 99) * 1e3, percentile(e2e, 50));
  std::printf("  KV blocks: peak %ld of %ld in use | prefix cache: %.1f%% of %ld prompt tokens reused | preemptions %ld\n",
              long(peak_blocks), long(st.blocks_total),
              st.prefix_queried_tokens ? 100.0 * double(st.prefix_hit_tokens) / double(st.prefix_queried_tokens) : 0.0,
              long(st.prefix_queried_tokens), long(st.preemptions));
  std::printf("%s", step_stats.report("  ").c_str());
  if (graph_replay > 0) {
    const Backend::GraphReplayStats g = eng->backend().graph_replay_stats();
    if (g.replays > 0)
      std::printf("  graph replay: %ld decode steps recorded, each replayed %d times: %.3f ms per step's kernels back to back\n",
                  long(g.steps), graph_replay, g.ms / double(g.replays));
    else
      std::printf("  graph replay: no decode step was recorded as a graph on %s\n", eng->backend().name().c_str());
  }
  return 0;
}
dsa::tools::Register reg("bench", "decode latency (DSA vs dense) or serving throughput of the batched engine", run);
}  // namespace

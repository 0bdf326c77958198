// dsa serve under traffic: 64 concurrent streams each getting exactly its solo tokens, the prefix
// cache seen in /metrics and TTFT, disconnects freeing blocks, the bounded queue (429), pool
// exhaustion (preemption, then completion), graceful shutdown in-process and on SIGTERM.
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "io/chat_encoding.h"
#include "test_server_util.h"

namespace dsa::test {

namespace {

std::vector<int32_t> words_prompt(const Tokenizer& tok, int64_t n_tokens, uint64_t seed) {
  // Distinct English-like text, cut to exactly n_tokens ids (BOS first).
  static const char* kWords[] = {"the", "river", "stone", "north", "winter", "green", "house", "light", "quiet",
                                 "market", "letter", "garden", "bridge", "summer", "window", "mountain"};
  std::string text;
  uint64_t x = seed * 2654435761u + 1;
  std::vector<int32_t> ids;
  while (int64_t(ids.size()) < n_tokens) {
    for (int i = 0; i < 64; ++i) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      text += std::string(kWords[(x >> 33) % 16]) + " ";
    }
    ids = tok.encode_with_bos(text);
  }
  ids.resize(size_t(n_tokens));
  return ids;
}

json completion_body(const std::vector<int32_t>& ids, int max_tokens, double temperature, uint64_t seed, bool streamed,
                     bool ignore_eos = false) {
  json b{{"prompt", ids}, {"max_tokens", max_tokens}, {"temperature", temperature}, {"seed", seed}, {"stream", streamed}};
  if (ignore_eos) b["ignore_eos"] = true;
  if (!streamed) return b;
  b["stream_options"] = {{"include_usage", true}};
  return b;
}

RequestParams sampled(std::vector<int32_t> prompt, int64_t max_tokens, float temperature, float top_p, uint64_t seed) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  p.sampling.temperature = temperature;
  p.sampling.top_p = top_p;
  p.sampling.seed = seed;
  p.skip_special_tokens = true;
  return p;
}

std::string text_of(const Engine& e, std::vector<int32_t> toks) {
  if (!toks.empty() && toks.back() == e.config().eos_token_id) toks.pop_back();
  return e.tokenizer()->decode(toks, true);
}

}  // namespace

// 64 clients at once, each with its own seed: the batch must not change anyone's tokens.
TEST(ServerLoad, SixtyFourConcurrentStreamsGetTheirSoloTokens) {
  TestServer s;
  const Tokenizer& tok = *s.eng->tokenizer();
  constexpr int kClients = 64, kTokens = 12;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kClients; ++i) prompts.push_back(words_prompt(tok, 8 + (i * 7) % 40, uint64_t(i)));
  std::vector<std::string> texts(kClients);
  std::vector<int64_t> counts(kClients, -1);
  std::vector<int> statuses(kClients, 0);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> th;
  for (int i = 0; i < kClients; ++i)
    th.emplace_back([&, i] {
      httplib::Client c = s.client(120);
      StreamResult st = stream(c, "/v1/completions", completion_body(prompts[size_t(i)], kTokens, 0.9, 1000 + uint64_t(i), true));
      statuses[size_t(i)] = st.status;
      texts[size_t(i)] = collect(st.events)[0].content;
      for (const std::string& e : st.events) {
        const json j = json::parse(e, nullptr, false);
        if (j.is_object() && j.contains("usage") && j["usage"].is_object()) counts[size_t(i)] = j["usage"]["completion_tokens"];
      }
    });
  for (auto& t : th) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 120.0);
  const std::string m = metrics_of(s);
  std::printf("64 streams of %d tokens in %.2f s\n", kTokens, secs);
  for (int i = 0; i < kClients; ++i) {
    ASSERT_EQ(statuses[size_t(i)], 200) << "client " << i;
    const std::vector<int32_t> solo = solo_tokens(sampled(prompts[size_t(i)], kTokens, 0.9f, s.model().top_p, 1000 + uint64_t(i)));
    EXPECT_EQ(texts[size_t(i)], text_of(reference_engine(), solo)) << "client " << i;
    EXPECT_EQ(counts[size_t(i)], int64_t(solo.size())) << "client " << i;
  }
  EXPECT_EQ(metric(m, "dsa:num_requests_running"), 0);
  EXPECT_EQ(metric(m, "dsa:kv_cache_blocks_used"), 0);
}

// The engine loop's statistics (dispatch thread on and off): every output handed on once and in order
// (each stream still gets its solo tokens), every computed token counted in one step kind, the report
// dsa serve prints when it stops; the HTTP threads' scheduling policy (SCHED_BATCH unless turned off).
TEST(ServerLoad, StepStatisticsDispatchThreadAndHttpThreadPolicy) {
  for (bool on : {true, false}) {
    SCOPED_TRACE(on ? "dispatch thread, SCHED_BATCH HTTP threads" : "stepping thread delivers, default policy");
    server::ServerOptions so;
    so.dispatch_thread = on;
    so.batch_http_threads = on;
    TestServer s(engine_options(), so);
    const Tokenizer& tok = *s.eng->tokenizer();
    constexpr int kClients = 6, kTokens = 7;
    std::vector<std::vector<int32_t>> prompts;
    int64_t prompt_tokens = 0;
    for (int i = 0; i < kClients; ++i) {
      prompts.push_back(words_prompt(tok, 10 + 5 * i, 50 + uint64_t(i)));
      prompt_tokens += int64_t(prompts.back().size());
    }
    std::vector<std::string> texts(kClients);
    std::vector<std::thread> th;
    for (int i = 0; i < kClients; ++i)
      th.emplace_back([&, i] {
        httplib::Client c = s.client(120);
        StreamResult st = stream(c, "/v1/completions", completion_body(prompts[size_t(i)], kTokens, 0.8, 70 + uint64_t(i), true, true));
        texts[size_t(i)] = collect(st.events)[0].content;
      });
    for (auto& t : th) t.join();
    for (int i = 0; i < kClients; ++i)
      EXPECT_EQ(texts[size_t(i)], text_of(reference_engine(), solo_tokens([&] {
                                            RequestParams p = sampled(prompts[size_t(i)], kTokens, 0.8f, s.model().top_p, 70 + uint64_t(i));
                                            p.ignore_eos = true;
                                            return p;
                                          }())))
          << "client " << i;
    ASSERT_TRUE(eventually([&] { return metric(metrics_of(s), "dsa:num_requests_in_flight") == 0; }));
    const std::string m = metrics_of(s);
    EXPECT_EQ(metric(m, "dsa:engine_outputs_total"), kClients * kTokens);  // one token an output, the last one finishing
    double step_tokens = 0, steps = 0;
    for (const char* k : {"decode", "mixed", "prefill", "empty"}) {
      step_tokens += metric(m, std::string("dsa:engine_step_tokens_total{kind=\"") + k + "\"}");
      steps += metric(m, std::string("dsa:engine_steps_total{kind=\"") + k + "\"}");
    }
    EXPECT_EQ(step_tokens, double(prompt_tokens + kClients * (kTokens - 1)));  // the last token is never fed back
    EXPECT_GE(steps, kTokens);
    EXPECT_GT(metric(m, "dsa:engine_step_seconds_total{kind=\"decode\",part=\"forward\"}"), 0);
    EXPECT_GT(metric(m, "dsa:engine_deliver_seconds_total"), 0);
    const std::string rep = s.srv->step_report();
    EXPECT_NE(rep.find("decode-only steps: "), std::string::npos) << rep;
    EXPECT_NE(rep.find("requests: 6 finished; engine clock: TTFT p50 "), std::string::npos) << rep;
    EXPECT_NE(rep.find("stepping thread: "), std::string::npos) << rep;
    EXPECT_NE(rep.find(on ? "handed to the dispatch thread" : "delivered by the stepping thread"), std::string::npos) << rep;
    // The pool keeps its threads: count this process's threads under SCHED_BATCH (none elsewhere in the tests).
    int batch = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task"))
      if (sched_getscheduler(pid_t(std::stol(e.path().filename().string()))) == SCHED_BATCH) ++batch;
    if (on) EXPECT_GE(batch, 1);
    else EXPECT_EQ(batch, 0);
  }
}

// A second request sharing a 2K-token prefix prefills only the tokens after it.
TEST(ServerLoad, PrefixCacheVisibleInMetricsAndTtft) {
  TestServer s;
  const Tokenizer& tok = *s.eng->tokenizer();
  const std::vector<int32_t> shared = words_prompt(tok, 2048, 5);
  std::vector<int32_t> a = shared, b = shared;
  const std::vector<int32_t> tail_a = words_prompt(tok, 40, 6), tail_b = words_prompt(tok, 40, 7);
  a.insert(a.end(), tail_a.begin() + 1, tail_a.end());
  b.insert(b.end(), tail_b.begin() + 1, tail_b.end());
  httplib::Client c = s.client(120);
  auto ttft_sum = [&] { return metric(metrics_of(s), "dsa:time_to_first_token_seconds_sum"); };
  auto value = [&](const char* name) { return metric(metrics_of(s), name); };

  const double hits0 = value("dsa:prefix_cache_hits_total"), prefill0 = value("dsa:prefill_tokens_total"), t0 = ttft_sum();
  Reply ra = post(c, "/v1/completions", completion_body(a, 2, 0, 1, false));
  ASSERT_EQ(ra.status, 200) << ra.raw;
  const double hits1 = value("dsa:prefix_cache_hits_total"), prefill1 = value("dsa:prefill_tokens_total"), t1 = ttft_sum();
  Reply rb = post(c, "/v1/completions", completion_body(b, 2, 0, 1, false));
  ASSERT_EQ(rb.status, 200) << rb.raw;
  const double hits2 = value("dsa:prefix_cache_hits_total"), prefill2 = value("dsa:prefill_tokens_total"), t2 = ttft_sum();

  EXPECT_EQ(hits1 - hits0, 0);
  EXPECT_EQ(prefill1 - prefill0, double(a.size()));
  EXPECT_EQ(hits2 - hits1, 2048) << "the shared 2048 tokens are 32 whole blocks";
  EXPECT_EQ(prefill2 - prefill1, double(b.size() - 2048)) << "only the new tokens are prefilled";
  EXPECT_EQ(rb.body["usage"]["prompt_tokens_details"]["cached_tokens"], 2048);
  EXPECT_EQ(ra.body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  const double ttft_a = t1 - t0, ttft_b = t2 - t1;
  std::printf("TTFT %.3f s cold, %.3f s with a 2048-token prefix hit\n", ttft_a, ttft_b);
  EXPECT_LT(ttft_b, ttft_a / 2) << "cold " << ttft_a << " s, cached " << ttft_b << " s";
  const std::string m = metrics_of(s);
  EXPECT_GE(metric(m, "dsa:prefix_cache_queries_total"), double(a.size() + b.size()));
}

// A client that hangs up mid-stream is cancelled and its blocks are freed at the next step; so is
// one that gives up on a non-streaming request.
TEST(ServerLoad, DisconnectCancelsAndFreesBlocks) {
  TestServer s;
  const std::vector<int32_t> prompt = words_prompt(*s.eng->tokenizer(), 300, 3);
  auto endless = [&](uint64_t seed, bool streamed) {
    return completion_body(prompt, 4000, 0.8, seed, streamed, true);  // only the disconnect can end it early
  };
  httplib::Client c = s.client();
  int seen = 0;
  StreamResult st = stream(c, "/v1/completions", endless(9, true), [&](const std::string&) {
    return ++seen < 5;  // hang up after a few tokens
  });
  EXPECT_EQ(seen, 5);
  auto idle = [&] {
    const std::string m = metrics_of(s);
    return metric(m, "dsa:num_requests_running") == 0 && metric(m, "dsa:kv_cache_blocks_used") == 0 &&
           metric(m, "dsa:request_success_total{finished_reason=\"cancelled\"}") >= 1;
  };
  EXPECT_TRUE(eventually(idle, std::chrono::seconds(5))) << metrics_of(s);
  const double gen = metric(metrics_of(s), "dsa:generation_tokens_total");
  EXPECT_LT(gen, 200) << "generation went on after the client left";

  // Non-streaming: the client closes before any byte of the answer.
  {
    RawConn r(s.port);
    ASSERT_TRUE(r.send_all(http_post_text("/v1/completions", endless(10, false).dump(), s.port)));
    ASSERT_TRUE(eventually([&] { return metric(metrics_of(s), "dsa:num_requests_running") == 1; }));
    r.close();
  }
  EXPECT_TRUE(eventually([&] {
    const std::string m = metrics_of(s);
    return metric(m, "dsa:num_requests_running") == 0 && metric(m, "dsa:kv_cache_blocks_used") == 0 &&
           metric(m, "dsa:request_success_total{finished_reason=\"cancelled\"}") >= 2;
  }, std::chrono::seconds(5))) << metrics_of(s);
  s.eng->check_invariants();
}

// One slot and a queue of one: the third concurrent request is refused with 429 until there is room.
TEST(ServerLoad, FullQueueAnswers429) {
  EngineOptions eo = engine_options();
  eo.max_seqs = 1;
  server::ServerOptions so;
  so.max_queue = 1;
  TestServer s(eo, so);
  const std::vector<int32_t> prompt = words_prompt(*s.eng->tokenizer(), 20, 1);
  std::atomic<bool> hang_up{false};
  std::atomic<int> first_events{0};
  std::thread first([&] {
    httplib::Client c = s.client();
    stream(c, "/v1/completions", completion_body(prompt, 4000, 0.8, 1, true, true), [&](const std::string&) {
      ++first_events;
      return !hang_up;
    });
  });
  ASSERT_TRUE(eventually([&] { return first_events >= 2; }));  // running
  Reply second;
  std::thread waiter([&] {
    httplib::Client c = s.client();
    second = post(c, "/v1/completions", completion_body(prompt, 3, 0, 1, false));
  });
  ASSERT_TRUE(eventually([&] { return metric(metrics_of(s), "dsa:num_requests_waiting") == 1; }));
  httplib::Client c = s.client();
  Reply third = post(c, "/v1/completions", completion_body(prompt, 3, 0, 1, false));
  EXPECT_EQ(third.status, 429) << third.raw;
  EXPECT_EQ(third.body["error"]["code"], "queue_full");
  EXPECT_NE(expect_error_shape(third).find("--max-queue"), std::string::npos);
  bool retry_after = false;
  for (auto& [k, v] : third.headers) retry_after = retry_after || k == "Retry-After";
  EXPECT_TRUE(retry_after);
  // n = 2 needs two places in the queue at once: refused as a whole.
  json two = user_chat("hi", 2);
  two["n"] = 2;
  EXPECT_EQ(post(c, "/v1/chat/completions", two).status, 429);
  hang_up = true;  // the first leaves; the waiting one runs
  first.join();
  waiter.join();
  EXPECT_EQ(second.status, 200) << second.raw;
  EXPECT_EQ(post(c, "/v1/completions", completion_body(prompt, 3, 0, 1, false)).status, 200);
  EXPECT_GE(metric(metrics_of(s), "dsa:http_requests_total{route=\"/v1/completions\",status=\"429\"}"), 1);
}

// A pool too small for everyone at once: requests are preempted, recomputed, and all finish with
// the tokens they get alone.
TEST(ServerLoad, PoolExhaustionPreemptsThenCompletes) {
  EngineOptions eo = engine_options();
  eo.kv_tokens = 640;  // 10 blocks
  TestServer s(eo);
  const Tokenizer& tok = *s.eng->tokenizer();
  constexpr int kClients = 6, kTokens = 120;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kClients; ++i) prompts.push_back(words_prompt(tok, 100, 40 + uint64_t(i)));
  std::vector<std::string> texts(kClients);
  std::vector<int> statuses(kClients);
  std::vector<std::thread> th;
  for (int i = 0; i < kClients; ++i)
    th.emplace_back([&, i] {
      httplib::Client c = s.client(180);
      Reply r = post(c, "/v1/completions", completion_body(prompts[size_t(i)], kTokens, 0.9, 500 + uint64_t(i), false));
      statuses[size_t(i)] = r.status;
      if (r.status == 200) texts[size_t(i)] = r.body["choices"][0]["text"];
    });
  for (auto& t : th) t.join();
  const std::string m = metrics_of(s);
  EXPECT_GT(metric(m, "dsa:num_preemptions_total"), 0) << m;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_EQ(statuses[size_t(i)], 200) << i;
    const std::vector<int32_t> solo = solo_tokens(sampled(prompts[size_t(i)], kTokens, 0.9f, s.model().top_p, 500 + uint64_t(i)));
    EXPECT_EQ(texts[size_t(i)], text_of(reference_engine(), solo)) << "client " << i;
  }
  EXPECT_EQ(metric(m, "dsa:kv_cache_blocks_used"), 0);
}

TEST(ServerLoad, MetricsExposition) {
  TestServer s;
  httplib::Client c = s.client();
  ASSERT_EQ(post(c, "/v1/chat/completions", user_chat("hi", 3)).status, 200);
  ASSERT_EQ(post(c, "/v1/chat/completions", std::string("{")).status, 400);
  // The library counts a response after writing it: wait until both are in.
  ASSERT_TRUE(eventually([&] {
    return metric(metrics_of(s), "dsa:http_requests_total{route=\"/v1/chat/completions\",status=\"400\"}") == 1;
  }));
  auto r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain; version=0.0.4"), std::string::npos);
  const std::string& m = r->body;
  // Every line: a comment or `name{labels} value`; every sample's family declared before it.
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$)");
  std::set<std::string> declared;
  std::istringstream in(m);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      declared.insert(line.substr(7, line.find(' ', 7) - 7));
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) continue;
    std::smatch mt;
    ASSERT_TRUE(std::regex_match(line, mt, sample)) << line;
    std::string fam = mt[1];
    for (const char* suf : {"_bucket", "_sum", "_count"})
      if (!declared.count(fam) && fam.size() > strlen(suf) && fam.compare(fam.size() - strlen(suf), strlen(suf), suf) == 0)
        fam = fam.substr(0, fam.size() - strlen(suf));
    EXPECT_TRUE(declared.count(fam)) << line;
  }
  EXPECT_EQ(metric(m, "dsa:http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"), 1);
  EXPECT_EQ(metric(m, "dsa:http_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"), 1);
  EXPECT_EQ(metric(m, "dsa:request_success_total{finished_reason=\"length\"}") +
                metric(m, "dsa:request_success_total{finished_reason=\"stop\"}"), 1);
  EXPECT_EQ(metric(m, "dsa:time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(metric(m, "dsa:time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 1);
  EXPECT_EQ(metric(m, "dsa:kv_cache_blocks_total"), 128);
  EXPECT_GE(metric(m, "dsa:generation_tokens_total"), 1);
  // Buckets are cumulative.
  double prev = 0;
  std::istringstream in2(m);
  for (std::string line; std::getline(in2, line);)
    if (line.rfind("dsa:e2e_request_latency_seconds_bucket", 0) == 0) {
      const double v = std::stod(line.substr(line.rfind(' ') + 1));
      EXPECT_GE(v, prev) << line;
      prev = v;
    }
}

// shutdown(grace): new requests get 503, the running stream finishes normally; with no grace
// left the running stream ends with an error event instead.
TEST(ServerLoad, GracefulShutdownDrainsThenCancels) {
  for (double grace : {30.0, 0.0}) {
    auto s = std::make_unique<TestServer>();
    const std::vector<int32_t> prompt = words_prompt(*s->eng->tokenizer(), 20, 2);
    std::atomic<int> events{0};
    StreamResult st;
    std::thread client([&] {
      httplib::Client c = s->client();
      st = stream(c, "/v1/completions", completion_body(prompt, grace > 0 ? 60 : 4000, 0.8, 3, true, true), [&](const std::string&) {
        ++events;
        return true;
      });
    });
    ASSERT_TRUE(eventually([&] { return events >= 2; }));
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
      s->srv->shutdown(grace);
      stopped = true;
    });
    // While draining: refused with 503 (or, once the listener is closed, no connection).
    if (grace > 0) {
      ASSERT_TRUE(eventually([&] {
        httplib::Client c = s->client();
        auto h = c.Get("/health");
        return h && h->status == 503;
      }));
      httplib::Client c = s->client();
      Reply r = post(c, "/v1/completions", completion_body(prompt, 2, 0, 1, false));
      if (r.status != -1) {
        EXPECT_EQ(r.status, 503) << r.raw;
        EXPECT_EQ(r.body["error"]["code"], "shutting_down");
      }
    }
    client.join();
    stopper.join();
    EXPECT_TRUE(stopped);
    ASSERT_FALSE(st.events.empty());
    if (grace > 0) {
      EXPECT_EQ(st.events.back(), "[DONE]") << "the running stream finished";
      EXPECT_EQ(collect(st.events)[0].finish, "length");
    } else {
      const json last = json::parse(st.events.back(), nullptr, false);
      ASSERT_TRUE(last.is_object() && last.contains("error")) << st.events.back();
      EXPECT_NE(last["error"]["message"].get<std::string>().find("shut down"), std::string::npos);
    }
  }
}

// The real process: `dsa serve --port 0`, a stream in flight, SIGTERM: the stream completes, the
// process exits 0.
TEST(ServerLoad, SigtermDrainsAndExitsZero) {
  const std::string bin = std::string(DSA_BINARY_DIR) + "/dsa";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    execl(bin.c_str(), bin.c_str(), "serve", "-m", mini_dir().c_str(), "--port", "0", "-t", "2", "--shutdown-grace", "60",
          (char*)nullptr);
    _exit(127);
  }
  close(out[1]);
  // The start-up line names the address.
  FILE* f = fdopen(out[0], "r");
  int port = -1;
  std::string startup;
  char line[1024];
  while (port < 0 && std::fgets(line, sizeof line, f)) {
    startup += line;
    if (const char* p = std::strstr(line, "listening on http://127.0.0.1:")) port = std::atoi(p + std::strlen("listening on http://127.0.0.1:"));
  }
  ASSERT_GT(port, 0) << startup;
  EXPECT_NE(startup.find("dsa-mini on cpu"), std::string::npos) << startup;
  EXPECT_NE(startup.find("KV 8192 tokens"), std::string::npos) << startup;

  std::atomic<int> events{0};
  StreamResult st;
  std::thread client([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    st = stream(c, "/v1/chat/completions", [] { json b = user_chat("Tell me a story.", 80, 0.7); b["stream"] = true; return b; }(),
                [&](const std::string&) {
                  ++events;
                  return true;
                });
  });
  ASSERT_TRUE(eventually([&] { return events >= 3; }, std::chrono::seconds(30)));
  const auto t0 = std::chrono::steady_clock::now();
  kill(pid, SIGTERM);
  client.join();
  int status = 0;
  bool exited = eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, std::chrono::seconds(30));
  if (!exited) kill(pid, SIGKILL), waitpid(pid, &status, 0);
  fclose(f);
  ASSERT_TRUE(exited) << "still running 30 s after SIGTERM";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_EQ(st.events.back(), "[DONE]");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20) * kTimeScale);
}

}  // namespace dsa::test

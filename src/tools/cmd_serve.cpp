// dsa serve: the OpenAI-compatible HTTP server (docs/server.md). One engine thread runs the batched
// step loop; HTTP threads parse requests, submit them and stream the outputs back. SIGTERM or
// SIGINT stops it gracefully: new requests get 503, running ones get --shutdown-grace seconds to
// finish, the rest are cancelled, and the process exits 0. A second signal exits at once.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "server/server.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

using namespace dsa;

int run(int argc, char** argv) {
  // Signals are taken by one thread with sigwait; block them before any thread (OpenMP's included)
  // exists, so none of those threads gets them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  CLI::App app{"OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics, "
               "and a chat page at /"};
  tools::EngineFlags ef;
  ef.add(app);
  server::ServerOptions so;
  std::string name, format;
  bool think = false, allow_scripted = false;
  int max_n = 16;
  double grace = 30;
  size_t max_body_mb = so.max_body_bytes >> 20;
  app.add_option("--host", so.host, "address to listen on (0.0.0.0: every interface)")->capture_default_str();
  app.add_option("--port", so.port, "TCP port (0: any free port)")->capture_default_str();
  app.add_option("--api-key", so.api_key, "require \"Authorization: Bearer KEY\" on /v1/* (default: $DSA_API_KEY, else none)");
  app.add_option("--served-model-name", name, "model id in the API (default: the model directory's name)");
  app.add_option("--chat-format", format, "v32 (DSML) or v31 (V3.1-family template); default: from the model directory");
  app.add_flag("--think", think, "thinking on for requests that do not say (chat_template_kwargs.thinking)");
  app.add_option("--max-queue", so.max_queue, "requests that may wait for a slot; more get 429")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-n", max_n, "largest `n` (choices per request)")->capture_default_str()->check(CLI::Range(1, 128));
  app.add_option("--max-body", max_body_mb, "largest request body in MiB; larger get 413")->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--max-connections", so.max_connections, "open HTTP connections served at once")->capture_default_str()
      ->check(CLI::Range(8, 65536));
  app.add_option("--timeout", so.read_timeout_s, "seconds a client may stall while sending or receiving")
      ->capture_default_str()->check(CLI::Range(1, 3600));
  app.add_option("--shutdown-grace", grace, "seconds running requests get to finish on SIGTERM/SIGINT")
      ->capture_default_str()->check(CLI::Range(0.0, 86400.0));
  app.add_flag("--log-requests", so.log_requests, "one line per request on stderr");
  std::string dispatch = "auto";
  app.add_option("--dispatch-thread", dispatch,
                 "on: a thread of its own hands each step's outputs to the HTTP threads while the next step runs; off: "
                 "the stepping thread does it between steps; auto: on unless the CPU backend's threads take every core "
                 "(docs/server.md \"Overhead\")")
      ->capture_default_str()->check(CLI::IsMember({"auto", "on", "off"}));
  bool normal_http_threads = false;
  app.add_flag("--normal-http-threads", normal_http_threads,
               "HTTP threads under the default scheduling policy instead of SCHED_BATCH (measurement: docs/server.md \"Overhead\")");
  bool no_cors = false;
  app.add_flag("--no-cors", no_cors, "no Access-Control-Allow-Origin header (browser pages from other origins)");
  app.add_flag("--allow-scripted-replies", allow_scripted,
               "testing only: a request's `scripted_reply` replaces the model's text token for token");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  if (so.api_key.empty())
    if (const char* k = std::getenv("DSA_API_KEY")) so.api_key = k;
  so.write_timeout_s = so.read_timeout_s;
  so.max_body_bytes = max_body_mb << 20;
  so.cors = !no_cors;
  // auto: a core of its own is free unless the CPU backend's OpenMP team takes every core (--threads 0 or
  // >= the cores): then waking it during a step would stall the team (its barrier waits for the preempted one).
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const bool team_on_every_core = ef.device == "cpu" && (ef.threads <= 0 || unsigned(ef.threads) >= cores);
  so.dispatch_thread = dispatch == "on" || (dispatch == "auto" && !team_on_every_core);
  so.batch_http_threads = !normal_http_threads;
  so.engine_thread = false;  // serve() steps the engine here, on the thread that loads it
  ef.check();

  auto eng = tools::load_engine(ef);
  std::optional<chat::ChatFormat> fmt;
  if (!format.empty()) fmt = chat::chat_format_from_name(format);
  server::ModelInfo mi = server::describe_model(*eng, ef.model, name, fmt);
  mi.default_thinking = think;
  mi.max_n = max_n;
  mi.allow_scripted = allow_scripted;
  server::Server srv(*eng, mi, so);
  const int port = srv.bind();
  const int64_t kv = eng->kv_capacity_tokens();
  std::printf("dsa serve: %s on %s, %s; KV %ld tokens (%s), context %ld, chat format %s%s%s\n", mi.name.c_str(),
              eng->backend().name().c_str(), tools::run_label(ef.options()).c_str(), long(kv),
              tools::human_bytes(double(KvCache::bytes_per_token(eng->config().num_hidden_layers)) * double(kv)).c_str(),
              long(mi.context), chat::chat_format_name(mi.format), so.api_key.empty() ? "" : ", API key required",
              allow_scripted ? ", SCRIPTED REPLIES ALLOWED (testing)" : "");
  std::printf("dsa serve: listening on http://%s:%d\n", so.host.c_str(), port);
  std::fflush(stdout);

  std::atomic<bool> signalled{false};
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    signalled = true;
    std::fprintf(stderr, "dsa serve: %s: finishing running requests (up to %.0f s; again to quit at once)\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", grace);
    std::thread second([&] {
      int s2 = 0;
      sigwait(&sigs, &s2);
      std::fprintf(stderr, "dsa serve: second signal: exiting now\n");
      std::_Exit(130);
    });
    second.detach();
    const int64_t cancelled = srv.shutdown(grace);
    std::fprintf(stderr, "dsa serve: stopped%s\n", cancelled ? (" (" + std::to_string(cancelled) + " requests cancelled)").c_str() : "");
  });
  srv.serve();
  std::fprintf(stderr, "%s", srv.step_report().c_str());
  const bool clean = signalled.load();
  if (!clean) kill(getpid(), SIGTERM);  // the listener failed on its own: release the signal thread
  signals.join();
  if (!clean) std::fprintf(stderr, "dsa serve: error: the listener stopped unexpectedly\n");
  return clean ? 0 : 1;
}

dsa::tools::Register reg("serve", "OpenAI-compatible HTTP server (chat, completions, streaming, tools, metrics, chat page)",
                         run);

}  // namespace

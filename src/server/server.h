#pragma once
// `dsa serve`: an OpenAI-compatible HTTP server on the batched engine (docs/server.md).
//
//   auto eng = Engine::load(dir, opt);
//   Server srv(*eng, describe_model(*eng, dir, ""), ServerOptions{});
//   int port = srv.bind();        // port 0 in the options: any free port
//   srv.start();                  // or srv.serve() to block
//   ...
//   srv.shutdown(30.0);           // refuse new requests, let running ones finish, then stop
//
// Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
// GET /metrics (Prometheus), GET / (the chat page).
#include <memory>
#include <optional>
#include <string>

#include "io/chat_encoding.h"
#include "runtime/engine.h"
#include "server/openai_api.h"

namespace dsa::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0: any free port (see Server::bind)
  std::string api_key;              // non-empty: /v1/* needs "Authorization: Bearer <key>"
  int64_t max_queue = 256;          // requests waiting for a slot; beyond: 429
  size_t max_body_bytes = 16u << 20;  // larger request bodies: 413
  int max_connections = 1024;       // HTTP worker threads (one per open connection) at most
  int read_timeout_s = 30;          // a client silent this long while sending is dropped
  int write_timeout_s = 30;         // a client not reading this long is dropped (its request cancelled)
  bool cors = true;                 // Access-Control-Allow-Origin: * (browser clients elsewhere)
  bool log_requests = false;        // one line per request on stderr
  // Step the engine on a thread of the server's own. False: serve() steps it on the calling thread,
  // which should be the one that loaded the engine (its OpenMP team; see EngineLoop).
  bool engine_thread = true;
  // Hand each step's outputs to a thread that wakes the HTTP threads while the next step runs,
  // instead of waking them from the stepping thread between steps (EngineLoop). dsa serve turns it
  // off when the CPU backend's OpenMP team (led by the stepping thread) takes every core.
  bool dispatch_thread = true;
  // HTTP worker threads under SCHED_BATCH: a woken one does not preempt the thread on its core
  // (the stepping or the dispatch thread). docs/server.md "Overhead".
  bool batch_http_threads = true;
};

// The served model as the API describes it: name (default: the directory's last component),
// limits, chat format (default: detected from the directory), sampling defaults from
// generation_config.json. Throws dsa::Error when the model has no tokenizer.
ModelInfo describe_model(const Engine& eng, const std::string& dir, const std::string& name,
                         std::optional<chat::ChatFormat> format = std::nullopt);

class Server {
 public:
  Server(Engine& eng, ModelInfo model, ServerOptions opt);
  ~Server();  // shuts down at once if still running (no grace period)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket; returns the port. Throws dsa::Error naming the address on failure.
  int bind();
  // Serves until shutdown() (bind() first), stepping the engine on this thread unless
  // engine_thread. start() returns at once (needs engine_thread).
  void serve();
  void start();
  // Graceful stop: new requests get 503, requests in flight may finish until `grace_s` has passed,
  // the rest are cancelled (their clients get an error), then the listener closes. Returns the
  // number of requests cancelled. Safe to call from any thread, more than once.
  int64_t shutdown(double grace_s);

  int port() const;
  const ModelInfo& model() const;
  std::string metrics_text() const;
  // Where the engine loop's time went so far, in dsa bench's words (steps by kind, their time split,
  // the time spent handing outputs on, engine-clock TTFT/TPOT of finished requests); `dsa serve` prints
  // it on stderr when it stops (docs/server.md "Overhead").
  std::string step_report() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsa::server

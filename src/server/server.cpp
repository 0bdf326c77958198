#include "server/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include <httplib.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <list>

#include "core/error.h"
#include "server/engine_loop.h"
#include "server/metrics.h"

namespace dsa::server {

extern const char kChatPage[];  // chat_page.html, embedded at build time (chat_page.cpp)

namespace {

using Clock = std::chrono::steady_clock;

// cpp-httplib runs each connection on a task-queue thread for as long as it is open (a streaming
// response holds one for its whole length), so a fixed pool would make concurrent streams wait.
// This queue starts threads as connections need them, up to a ceiling, and keeps them.
//
// batch: the threads run under SCHED_BATCH, which keeps a thread that wakes from preempting the one
// running on the core it lands on. Every token wakes its stream's thread; without this, the woken
// threads preempt the thread that steps the engine (and the one that wakes them) many times a step
// (docs/server.md "Overhead"). They still get their fair share of the CPU, a little later.
class GrowingPool : public httplib::TaskQueue {
 public:
  GrowingPool(size_t max_threads, bool batch) : max_(max_threads), batch_(batch) {}
  void enqueue(std::function<void()> fn) override {
    std::lock_guard<std::mutex> g(mu_);
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_) threads_.emplace_back([this] { work(); });
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    if (batch_) batch_this_thread();
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      std::function<void()> fn = std::move(jobs_.front());
      jobs_.pop_front();
      l.unlock();
      fn();
      l.lock();
    }
  }
  static void batch_this_thread() {
    sched_param sp{};
    if (sched_setscheduler(0, SCHED_BATCH, &sp) != 0) {  // pid 0: this thread; allowed unprivileged
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true))
        std::fprintf(stderr, "dsa serve: warning: SCHED_BATCH for the HTTP threads refused (%s); they keep the default policy\n",
                     std::strerror(errno));
    }
  }
  size_t max_, idle_ = 0;
  bool batch_ = true;
  bool stop_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::list<std::function<void()>> jobs_;
  std::list<std::thread> threads_;
};

// Access to the listening socket, to give it a real backlog: the library listens with 5, which
// drops connection attempts when many clients connect at once.
class HttpServer : public httplib::Server {
 public:
  void widen_backlog(int n) {
    const auto s = svr_sock_.load();
    if (s != INVALID_SOCKET) ::listen(s, n);
  }
};

std::string address_of(const sockaddr_storage& a, int& port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof buf);
    port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    port = ntohs(v6->sin6_port);
  } else {
    port = -1;
  }
  return buf;
}

// The socket of the connection a handler runs on, found by its address pair: cpp-httplib 0.11
// does not hand it to handlers, and without it a client that goes away while its answer is being
// computed (no bytes written yet) would go unnoticed until the end. -1 if not found.
int connection_fd(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end) continue;
    sockaddr_storage peer{}, self{};
    socklen_t lp = sizeof peer, ls = sizeof self;
    if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &lp) != 0) continue;
    int pport = -1, sport = -1;
    if (address_of(peer, pport) != req.remote_addr || pport != req.remote_port) continue;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&self), &ls) != 0) continue;
    address_of(self, sport);
    if (sport != req.local_port) continue;
    found = int(fd);
    break;
  }
  closedir(d);
  return found;
}

// The peer closed its side (or the connection broke). Pipelined bytes are left unread.
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, short(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  return (p.revents & POLLIN) && recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

bool same_key(const std::string& a, const std::string& b) {
  unsigned diff = a.size() != b.size();
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i)
    diff |= unsigned(i < a.size() ? a[i] : 0) ^ unsigned(i < b.size() ? b[i] : 0);
  return diff == 0;
}

const char* route_of(const std::string& path) {
  for (const char* r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/"})
    if (path == r) return r;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

ModelInfo describe_model(const Engine& eng, const std::string& dir, const std::string& name,
                         std::optional<chat::ChatFormat> format) {
  namespace fs = std::filesystem;
  DSA_CHECK(eng.tokenizer(), dir, " has no tokenizer.json; the server needs one (text in, text out)");
  ModelInfo m;
  std::string base = fs::path(dir).lexically_normal().filename().string();
  if (base.empty()) base = fs::path(dir).lexically_normal().parent_path().filename().string();
  m.name = name.empty() ? base : name;
  m.dir = dir;
  m.context = eng.config().max_position_embeddings;
  m.kv_tokens = eng.kv_capacity_tokens();
  m.vocab = eng.config().vocab_size;
  m.tok = eng.tokenizer();
  m.format = format ? *format : chat::detect_chat_format(dir);
  // Sampling defaults as the checkpoint's authors set them (vLLM does the same).
  std::ifstream f(dir + "/generation_config.json");
  if (f) {
    try {
      const nlohmann::json g = nlohmann::json::parse(f);
      if (g.contains("temperature") && g["temperature"].is_number()) m.temperature = g["temperature"].get<float>();
      if (g.contains("top_p") && g["top_p"].is_number()) m.top_p = g["top_p"].get<float>();
      if (g.contains("top_k") && g["top_k"].is_number_integer()) m.top_k = std::max<int64_t>(0, g["top_k"].get<int64_t>());
    } catch (const nlohmann::json::exception& e) {
      fail(dir, "/generation_config.json: ", e.what());
    }
  }
  return m;
}

struct Server::Impl {
  Engine& eng;
  ModelInfo model;
  ServerOptions opt;
  Metrics metrics;
  std::unique_ptr<EngineLoop> loop;
  HttpServer http;
  std::thread thread;
  int port = -1;
  std::atomic<int> open_responses{0};
  std::mutex shutdown_mu;
  bool stopped = false;
  int64_t created = std::time(nullptr);

  Impl(Engine& e, ModelInfo m, ServerOptions o) : eng(e), model(std::move(m)), opt(std::move(o)) {
    loop = std::make_unique<EngineLoop>(
        eng, opt.max_queue, [this](const RequestOutput& out) { metrics.on_output(out); }, opt.engine_thread,
        opt.dispatch_thread);
    routes();
  }

  static void error(httplib::Response& res, int status, const std::string& msg, const std::string& param = "",
                    const std::string& code = "") {
    res.status = status;
    res.set_content(error_body(status, msg, param, code), "application/json");
  }
  static void error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_body(e), "application/json");
  }

  void routes();
  std::string metrics_text() const {
    const EngineLoop::Stats st = loop->stats();
    return metrics.render(eng.stats(), loop->in_flight()) + render_steps(st.steps, st.outputs, st.handoff_s, st.deliver_s);
  }
  void generate(const httplib::Request& req, httplib::Response& res, ApiKind kind);
  json model_object() const {
    json o = json::object();
    o["id"] = model.name;
    o["object"] = "model";
    o["created"] = created;
    o["owned_by"] = "dsa";
    o["max_model_len"] = model.context;
    return o;
  }
};

void Server::Impl::routes() {
  http.new_task_queue = [this] { return new GrowingPool(size_t(std::max(8, opt.max_connections)), opt.batch_http_threads); };
  http.set_payload_max_length(opt.max_body_bytes);
  http.set_read_timeout(opt.read_timeout_s, 0);
  http.set_write_timeout(opt.write_timeout_s, 0);
  http.set_keep_alive_max_count(1000);
  http.set_keep_alive_timeout(5);
  http.set_tcp_nodelay(true);  // stream chunks go out as they are written
  // The library's default also sets SO_REUSEPORT, which lets a second server bind the same port
  // and silently take half the connections: keep SO_REUSEADDR only.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (opt.cors) {
      res.set_header("Access-Control-Allow-Origin", "*");
      if (req.method == "OPTIONS") {
        res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
        res.status = 204;
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (!opt.api_key.empty() && req.path.rfind("/v1/", 0) == 0) {
      const std::string auth = req.get_header_value("Authorization");
      const std::string prefix = "Bearer ";
      if (auth.rfind(prefix, 0) != 0 || !same_key(auth.substr(prefix.size()), opt.api_key)) {
        error(res, 401,
              auth.empty() ? "You didn't provide an API key. Send it as \"Authorization: Bearer YOUR_KEY\"."
                           : "Incorrect API key provided.",
              "", "invalid_api_key");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Statuses the library sets itself (unknown route, bad headers, body too large) get a JSON body.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg;
    switch (res.status) {
      case 400: msg = "bad request: malformed HTTP or a header line over 8 KiB"; break;
      case 404: msg = "no route " + req.method + " " + req.path + " (see GET /v1/models, POST /v1/chat/completions)"; break;
      case 413:
        // The library caps form-encoded bodies at 8 KiB (what `curl -d` sends without a Content-Type).
        if (req.get_header_value("Content-Type") == "application/x-www-form-urlencoded")
          msg = "a body sent as application/x-www-form-urlencoded is limited to 8 KiB; send the JSON with "
                "\"Content-Type: application/json\"";
        else
          msg = "the request body is larger than " + std::to_string(opt.max_body_bytes) + " bytes (--max-body)";
        break;
      case 414: msg = "the request URI is too long"; break;
      default: msg = res.reason.empty() ? "HTTP error " + std::to_string(res.status) : res.reason;
    }
    res.set_content(error_body(res.status, msg), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));

  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = std::string("internal error: ") + e.what();
    } catch (...) {
    }
    error(res, 500, msg);
  });

  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.on_http(route_of(req.path), res.status);
    if (opt.log_requests) std::fprintf(stderr, "dsa serve: %s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
  });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(kChatPage, "text/html; charset=utf-8");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ok = loop->accepting();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "{\"status\":\"ok\"}" : "{\"status\":\"shutting down\"}", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json o = json::object();
    o["object"] = "list";
    o["data"] = json::array({model_object()});
    res.set_content(dump(o), "application/json");
  });
  http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id != model.name) return error(res, 404, "The model `" + id + "` does not exist.", "model", "model_not_found");
    res.set_content(dump(model_object()), "application/json");
  });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, ApiKind::Chat); });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, ApiKind::Completion); });
}

namespace {

// What a streaming response keeps between calls of its content provider. `open` counts the
// responses still being written, so that shutdown lets their last events out before closing.
struct StreamState {
  explicit StreamState(std::atomic<int>& open_) : open(open_) { ++open; }
  ~StreamState() { --open; }
  std::atomic<int>& open;
  ApiRequest req;
  const ModelInfo* model = nullptr;
  EngineLoop* loop = nullptr;
  std::unique_ptr<Submission> sub;
  std::vector<Choice> choices;
  std::string id;
  int64_t created = 0;
  int fd = -1;
  bool opened = false, ended = false;
};

// An engine finish that is not a normal end, as the error a client sees.
std::optional<ApiError> failure(const Choice& c, const EngineLoop& loop) {
  if (c.engine_finish() == FinishReason::Error)
    return ApiError(500, "the engine failed while generating: " + c.error(), "", "engine_error");
  if (c.engine_finish() == FinishReason::Cancelled)
    return ApiError(503, loop.cancelling_all() ? "the server shut down before the request finished" : "the request was cancelled",
                    "", "cancelled");
  return std::nullopt;
}

// One call of the content provider: everything that is ready, as events. False: stop (the client
// is gone); the releaser then cancels what is left.
bool pump(StreamState& s, httplib::DataSink& sink) {
  if (s.ended) return false;
  std::string out;
  if (!s.opened) {
    s.opened = true;
    json cs = json::array();
    for (const Choice& c : s.choices)
      for (json& o : c.opening()) cs.push_back(std::move(o));
    if (!cs.empty()) out += sse(chunk_object(s.req, *s.model, std::move(cs), s.id, s.created));
  }
  std::vector<Mailbox::Item> items;
  s.sub->next(items, std::chrono::milliseconds(out.empty() ? 200 : 0));
  std::optional<ApiError> err;
  for (Mailbox::Item& it : items) {
    Choice& c = s.choices[size_t(it.choice)];
    std::vector<json> chunks;
    c.feed(it.out, &chunks);
    for (json& ch : chunks) out += sse(chunk_object(s.req, *s.model, json::array({std::move(ch)}), s.id, s.created));
    if (c.finished() && !err) err = failure(c, *s.loop);
  }
  if (err) {
    // OpenAI's clients raise an `error` event as an exception; the stream ends there.
    out += "data: " + error_body(*err) + "\n\n";
    s.ended = true;
  } else if (s.sub->done()) {
    if (s.req.include_usage) {
      json u = chunk_object(s.req, *s.model, json::array(), s.id, s.created);
      u["usage"] = usage(s.req, s.choices);
      out += sse(u);
    }
    out += "data: [DONE]\n\n";
    s.ended = true;
  }
  if (!out.empty() && !sink.write(out.data(), out.size())) return false;
  if (s.ended) {
    sink.done();
    return true;
  }
  return out.empty() ? !peer_closed(s.fd) : true;
}

}  // namespace

void Server::Impl::generate(const httplib::Request& req, httplib::Response& res, ApiKind kind) {
  if (!loop->accepting()) {
    res.set_header("Connection", "close");
    return error(res, 503, "the server is shutting down and accepts no new requests", "", "shutting_down");
  }
  auto st = std::make_shared<StreamState>(open_responses);
  try {
    st->req = kind == ApiKind::Chat ? parse_chat_request(req.body, model) : parse_completion_request(req.body, model);
    st->sub = std::make_unique<Submission>(*loop, st->req.engine_requests());
  } catch (const ApiError& e) {
    return error(res, e);
  } catch (const QueueFull& e) {
    res.set_header("Retry-After", "1");
    return error(res, 429, e.what(), "", "queue_full");
  } catch (const ShuttingDown& e) {
    return error(res, 503, e.what(), "", "shutting_down");
  } catch (const Error& e) {
    return error(res, 400, e.what());  // the engine's check of a request that can never run
  }
  st->model = &model;
  st->loop = loop.get();
  st->choices = make_choices(st->req, model);
  st->id = new_response_id(kind);
  st->created = std::time(nullptr);
  st->fd = connection_fd(req);

  if (st->req.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: do not hold the events back
    res.set_chunked_content_provider(
        "text/event-stream", [st](size_t, httplib::DataSink& sink) { return pump(*st, sink); },
        [st](bool) { st->sub->cancel(); });
    return;
  }
  std::vector<Mailbox::Item> items;
  auto checked = Clock::now();
  while (!st->sub->done()) {
    items.clear();
    st->sub->next(items, std::chrono::milliseconds(100));
    for (Mailbox::Item& it : items) st->choices[size_t(it.choice)].feed(it.out, nullptr);
    if (Clock::now() - checked > std::chrono::milliseconds(100)) {
      checked = Clock::now();
      if (peer_closed(st->fd)) {
        st->sub->cancel();  // nobody is waiting for the answer
        return error(res, 499, "client closed the connection");
      }
    }
  }
  for (const Choice& c : st->choices)
    if (auto e = failure(c, *loop)) return error(res, *e);
  res.set_content(dump(response_object(st->req, model, st->choices, st->id, st->created)), "application/json");
}

Server::Server(Engine& eng, ModelInfo model, ServerOptions opt)
    : impl_(std::make_unique<Impl>(eng, std::move(model), std::move(opt))) {}

Server::~Server() {
  shutdown(0);
  if (impl_->thread.joinable()) impl_->thread.join();
}

int Server::bind() {
  Impl& s = *impl_;
  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
  } else {
    s.port = s.http.bind_to_port(s.opt.host, s.opt.port) ? s.opt.port : -1;
  }
  DSA_CHECK(s.port > 0, "cannot listen on ", s.opt.host, ":", s.opt.port,
            " (address in use, not an address of this machine, or a port below 1024 without privileges)");
  s.http.widen_backlog(1024);
  return s.port;
}

void Server::start() {
  DSA_CHECK(impl_->opt.engine_thread, "Server::start needs ServerOptions::engine_thread (or call serve())");
  // A client that closes its socket while we write must not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  impl_->thread = std::thread([this] { impl_->http.listen_after_bind(); });
}

void Server::serve() {
  std::signal(SIGPIPE, SIG_IGN);
  impl_->thread = std::thread([this] {
    impl_->http.listen_after_bind();
    impl_->loop->stop();  // the listener is gone (shut down or failed): so is serve()
  });
  if (!impl_->opt.engine_thread) impl_->loop->run();  // until shutdown() stops it
  if (impl_->thread.joinable()) impl_->thread.join();
}

int64_t Server::shutdown(double grace_s) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> g(s.shutdown_mu);
  if (s.stopped) return 0;
  s.stopped = true;
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(std::max(0.0, grace_s) * 1000));
  const int64_t cancelled = s.loop->drain(deadline);
  // Streams may still be writing their last events (or an error): let them, within reason.
  for (int i = 0; i < 500 && s.open_responses > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s.http.stop();
  return cancelled;
}

int Server::port() const { return impl_->port; }
const ModelInfo& Server::model() const { return impl_->model; }
std::string Server::metrics_text() const { return impl_->metrics_text(); }

std::string Server::step_report() const {
  const EngineLoop::Stats st = impl_->loop->stats();
  const double n = double(std::max<int64_t>(1, st.steps.steps())), b = double(std::max<int64_t>(1, st.batches));
  char line[400];
  if (st.dispatch_thread)
    std::snprintf(line, sizeof line,
                  "dsa serve: engine loop: %ld steps, %ld outputs; handed to the dispatch thread in %.3f ms per step, "
                  "which delivered them in %.3f ms per step (%.2f us per output), %.3f ms after the hand-off\n",
                  long(st.steps.steps()), long(st.outputs), st.handoff_s / n * 1e3, st.deliver_s / b * 1e3,
                  st.outputs ? st.deliver_s / double(st.outputs) * 1e6 : 0.0, st.queued_s / b * 1e3);
  else
    std::snprintf(line, sizeof line,
                  "dsa serve: engine loop: %ld steps, %ld outputs; delivered by the stepping thread in %.3f ms per step "
                  "(%.2f us per output)\n",
                  long(st.steps.steps()), long(st.outputs), st.handoff_s / n * 1e3,
                  st.outputs ? st.deliver_s / double(st.outputs) * 1e6 : 0.0);
  return line + st.steps.report("  ") + "  " + impl_->metrics.request_report();
}

}  // namespace dsa::server

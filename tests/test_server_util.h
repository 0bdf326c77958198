#pragma once
// Helpers for the server tests: an in-process `dsa serve` on dsa-mini at a free port, a reference
// engine for "what the same request gets alone", an SSE reader over httplib::Client, and raw
// sockets for clients that misbehave.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "server/server.h"

namespace dsa::test {

using json = nlohmann::ordered_json;

inline std::string mini_dir() { return std::string(DSA_SHARED_DIR) + "/models/dsa-mini"; }

inline EngineOptions engine_options() {
  EngineOptions o;
  o.threads = 2;
  return o;
}

// A server on its own engine, listening on 127.0.0.1 at a free port.
struct TestServer {
  std::unique_ptr<Engine> eng;
  std::unique_ptr<server::Server> srv;
  int port = -1;

  explicit TestServer(EngineOptions eo = engine_options(), server::ServerOptions so = {},
                      const std::function<void(server::ModelInfo&)>& tweak = {}) {
    eng = Engine::load(mini_dir(), eo);
    server::ModelInfo mi = server::describe_model(*eng, mini_dir(), "");
    mi.allow_scripted = true;
    if (tweak) tweak(mi);
    so.port = 0;
    srv = std::make_unique<server::Server>(*eng, mi, so);
    port = srv->bind();
    srv->start();
  }
  ~TestServer() {
    srv.reset();  // shuts down, joins
  }
  httplib::Client client(int timeout_s = 60) const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(timeout_s, 0);
    c.set_write_timeout(timeout_s, 0);
    c.set_connection_timeout(5, 0);
    return c;
  }
  const server::ModelInfo& model() const { return srv->model(); }
};

// A reference engine (same options) for running requests alone.
inline Engine& reference_engine() {
  static std::unique_ptr<Engine> e = Engine::load(mini_dir(), engine_options());
  return *e;
}

// Tokens the request gets alone, through the step API of the reference engine.
inline std::vector<int32_t> solo_tokens(RequestParams p) {
  Engine& e = reference_engine();
  const RequestId id = e.add_request(std::move(p));
  std::vector<int32_t> toks;
  bool done = false;
  while (!done)
    for (RequestOutput& o : e.step()) {
      if (o.id != id) continue;
      toks.insert(toks.end(), o.tokens.begin(), o.tokens.end());
      done = o.finished;
    }
  return toks;
}

struct Reply {
  int status = 0;
  json body;
  std::string raw;
  httplib::Headers headers;
};

inline Reply post(httplib::Client& c, const std::string& path, const std::string& body,
                  const httplib::Headers& h = {}) {
  Reply r;
  auto res = c.Post(path.c_str(), h, body, "application/json");
  if (!res) {
    r.status = -1;
    r.raw = httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.raw = res->body;
  r.headers = res->headers;
  r.body = json::parse(res->body, nullptr, false);
  return r;
}
inline Reply post(httplib::Client& c, const std::string& path, const json& body, const httplib::Headers& h = {}) {
  return post(c, path, body.dump(), h);
}

// The error body has OpenAI's shape; returns the message.
inline std::string expect_error_shape(const Reply& r) {
  EXPECT_TRUE(r.body.is_object()) << r.raw;
  if (!r.body.is_object() || !r.body.contains("error")) {
    ADD_FAILURE() << "no `error` object: " << r.raw;
    return "";
  }
  const json& e = r.body["error"];
  EXPECT_TRUE(e.contains("message") && e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.raw;
  EXPECT_TRUE(e.contains("type") && e["type"].is_string()) << r.raw;
  EXPECT_TRUE(e.contains("param") && (e["param"].is_null() || e["param"].is_string())) << r.raw;
  EXPECT_TRUE(e.contains("code")) << r.raw;
  return e.value("message", "");
}

// A streaming POST; `on_event` gets each `data:` payload in order and returns false to hang up.
struct StreamResult {
  int status = 0;
  std::vector<std::string> events;  // every data payload ([DONE] included)
  bool transport_error = false;
};
inline StreamResult stream(httplib::Client& c, const std::string& path, const json& body,
                           const std::function<bool(const std::string&)>& on_event = {},
                           const httplib::Headers& h = {}) {
  StreamResult out;
  std::string buf;
  bool stop = false;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = h;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buf.append(data, len);
    size_t p;
    while ((p = buf.find("\n\n")) != std::string::npos) {
      std::string ev = buf.substr(0, p);
      buf.erase(0, p + 2);
      if (ev.rfind("data: ", 0) != 0) continue;  // comments
      out.events.push_back(ev.substr(6));
      if (on_event && !on_event(out.events.back())) stop = true;
    }
    return !stop;
  };
  auto res = c.send(req);
  if (res) out.status = res->status;
  else out.transport_error = !stop;
  if (res && res->status != 200) out.events.push_back(res->body);
  return out;
}

// Text of a chat stream's choice `k` (content deltas), and its finish reason.
struct StreamedChoice {
  std::string content, reasoning, finish;
  int chunks = 0;
};
inline std::vector<StreamedChoice> collect(const std::vector<std::string>& events, size_t n = 1) {
  std::vector<StreamedChoice> c(n);
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    json j = json::parse(e, nullptr, false);
    if (!j.is_object() || !j.contains("choices")) continue;
    for (const json& ch : j["choices"]) {
      const size_t k = ch["index"].get<size_t>();
      if (k >= c.size()) c.resize(k + 1);
      ++c[k].chunks;
      if (ch.contains("delta")) {
        const json& d = ch["delta"];
        if (d.contains("content") && d["content"].is_string()) c[k].content += d["content"].get<std::string>();
        if (d.contains("reasoning_content") && d["reasoning_content"].is_string())
          c[k].reasoning += d["reasoning_content"].get<std::string>();
      }
      if (ch.contains("text")) c[k].content += ch["text"].get<std::string>();
      if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) c[k].finish = ch["finish_reason"];
    }
  }
  return c;
}

// One metric's value from the exposition text (first sample with this name and label text).
inline double metric(const std::string& text, const std::string& name_and_labels) {
  size_t p = 0;
  while ((p = text.find(name_and_labels + " ", p)) != std::string::npos) {
    if (p == 0 || text[p - 1] == '\n') return std::stod(text.substr(p + name_and_labels.size() + 1));
    p += 1;
  }
  return -1;
}
inline std::string metrics_of(const TestServer& s) {
  httplib::Client c = s.client();
  auto r = c.Get("/metrics");
  return r && r->status == 200 ? r->body : "";
}

// Under the sanitizers (scripts/sanitize.sh) a model step is about ten times slower: time limits
// there only ask whether something happened, not how fast.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr int kTimeScale = 10;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr int kTimeScale = 10;
#else
inline constexpr int kTimeScale = 1;
#endif
#else
inline constexpr int kTimeScale = 1;
#endif

// Waits until pred() holds (polling), at most `timeout` (times kTimeScale).
inline bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + timeout * kTimeScale;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// A raw TCP connection to the server, for clients that misbehave.
struct RawConn {
  int fd = -1;
  explicit RawConn(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ~RawConn() { close(); }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  bool send_all(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
  // Reads until the peer closes or `timeout` passes.
  std::string read_all(std::chrono::milliseconds timeout) {
    std::string out;
    timeval tv{long(timeout.count() / 1000), long((timeout.count() % 1000) * 1000)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, size_t(n));
    }
    return out;
  }
};

inline std::string http_post_text(const std::string& path, const std::string& body, int port) {
  return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

inline json user_chat(const std::string& text, int max_tokens, double temperature = 0) {
  return json{{"messages", json::array({json{{"role", "user"}, {"content", text}}})},
              {"max_tokens", max_tokens},
              {"temperature", temperature}};
}

}  // namespace dsa::test

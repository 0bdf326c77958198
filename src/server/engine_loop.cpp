#include "server/engine_loop.h"

#include <cstdio>
#include <optional>

namespace dsa::server {

void Mailbox::push(Item it) {
  {
    std::lock_guard<std::mutex> g(mu_);
    items_.push_back(std::move(it));
  }
  cv_.notify_all();
}

bool Mailbox::pop_all(std::vector<Item>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> l(mu_);
  if (items_.empty()) cv_.wait_for(l, timeout, [&] { return !items_.empty(); });
  if (items_.empty()) return false;
  for (auto& it : items_) out.push_back(std::move(it));
  items_.clear();
  return true;
}

EngineLoop::EngineLoop(Engine& eng, int64_t max_waiting, OutputObserver observe, bool own_thread, bool dispatch_thread)
    : eng_(eng), max_waiting_(max_waiting), observe_(std::move(observe)) {
  stats_.dispatch_thread = dispatch_thread;
  if (dispatch_thread) dispatcher_ = std::thread([this] { dispatch_loop(); });
  if (own_thread) th_ = std::thread([this] { run(); });
}

void EngineLoop::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  wake_cv_.notify_all();
}

EngineLoop::~EngineLoop() {
  stop();
  if (th_.joinable()) th_.join();
  // What the last steps handed on is delivered before the cancellations below.
  if (dispatcher_.joinable()) {
    {
      std::lock_guard<std::mutex> g(out_mu_);
      out_stop_ = true;
    }
    out_cv_.notify_all();
    dispatcher_.join();
  }
  // Nothing steps any more (an external run() has returned before its owner destroys the loop):
  // finishing everything here cannot race a step.
  std::vector<RequestOutput> outs = eng_.cancel_all();
  deliver(outs);
}

std::vector<RequestId> EngineLoop::submit(std::vector<RequestParams> reqs, std::shared_ptr<Mailbox> box) {
  std::lock_guard<std::mutex> g(mu_);
  if (!accepting_) throw ShuttingDown("the server is shutting down and accepts no new requests");
  // The engine counts a request as waiting from add_request until its first step, so this bound
  // covers requests just submitted too.
  const int64_t waiting = eng_.stats().waiting;
  if (waiting + int64_t(reqs.size()) > max_waiting_)
    throw QueueFull("the server is busy: " + std::to_string(waiting) + " requests are waiting (limit " +
                    std::to_string(max_waiting_) + ", --max-queue); retry later");
  std::vector<RequestId> ids;
  try {
    for (RequestParams& p : reqs) ids.push_back(eng_.add_request(std::move(p)));
  } catch (...) {
    for (RequestId id : ids) eng_.cancel(id);  // no route: their cancelled outputs are dropped
    throw;
  }
  for (size_t i = 0; i < ids.size(); ++i) routes_[ids[i]] = {box, int(i)};
  wake_ = true;
  wake_cv_.notify_all();
  return ids;
}

void EngineLoop::cancel(RequestId id) {
  eng_.cancel(id);
  {
    std::lock_guard<std::mutex> g(mu_);
    wake_ = true;  // the cancellation takes effect at the next step
  }
  wake_cv_.notify_all();
}

int64_t EngineLoop::in_flight() const {
  std::lock_guard<std::mutex> g(mu_);
  return int64_t(routes_.size());
}

void EngineLoop::deliver(std::vector<RequestOutput>& outs) {
  if (observe_)
    for (const RequestOutput& o : outs) observe_(o);
  bool idle = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (RequestOutput& o : outs) {
      auto it = routes_.find(o.id);
      if (it == routes_.end()) continue;
      const bool fin = o.finished;
      it->second.box->push({it->second.choice, std::move(o)});
      if (fin) routes_.erase(it);
    }
    idle = routes_.empty();
  }
  if (idle) idle_cv_.notify_all();
}

void EngineLoop::hand_off(std::vector<RequestOutput>&& outs) {
  if (outs.empty()) return;
  if (!dispatcher_.joinable()) {
    const auto t0 = Clock::now();
    deliver(outs);
    std::lock_guard<std::mutex> g(stats_mu_);
    stats_.deliver_s += std::chrono::duration<double>(Clock::now() - t0).count();
    ++stats_.batches;
    return;
  }
  bool wake = false;
  {
    std::lock_guard<std::mutex> g(out_mu_);
    out_q_.emplace_back(std::move(outs), Clock::now());
    wake = out_waiting_;  // a busy dispatcher takes the batch on its next round: no wake-up to pay
  }
  if (wake) out_cv_.notify_one();
}

void EngineLoop::dispatch_loop() {
  std::unique_lock<std::mutex> l(out_mu_);
  for (;;) {
    if (out_q_.empty()) {
      if (out_stop_) return;
      out_waiting_ = true;
      out_cv_.wait(l, [&] { return out_stop_ || !out_q_.empty(); });
      out_waiting_ = false;
      continue;
    }
    auto batch = std::move(out_q_);
    out_q_.clear();
    l.unlock();
    const auto t0 = Clock::now();
    double queued = 0;
    for (auto& [outs, at] : batch) {
      queued += std::chrono::duration<double>(Clock::now() - at).count();
      deliver(outs);
    }
    {
      std::lock_guard<std::mutex> g(stats_mu_);
      stats_.deliver_s += std::chrono::duration<double>(Clock::now() - t0).count();
      stats_.queued_s += queued;
      stats_.batches += int64_t(batch.size());
    }
    l.lock();
  }
}

EngineLoop::Stats EngineLoop::stats() const {
  std::lock_guard<std::mutex> g(stats_mu_);
  return stats_;
}

void EngineLoop::run() {
  auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      wake_cv_.wait(l, [&] { return wake_ || stop_; });
      if (stop_) return;
      wake_ = false;
    }
    std::optional<Clock::time_point> prev;  // when the last step() returned, while stepping goes on
    auto close_between = [&](Clock::time_point now) {
      if (!prev) return;
      std::lock_guard<std::mutex> g(stats_mu_);
      stats_.steps.add_between(secs(now - *prev));
    };
    const ThreadUsage usage0 = ThreadUsage::now();  // this stretch of stepping
    struct Usage {
      EngineLoop& loop;
      const ThreadUsage& u0;
      ~Usage() {
        std::lock_guard<std::mutex> g(loop.stats_mu_);
        u0.add_since(loop.stats_.steps);
      }
    } usage{*this, usage0};
    while (eng_.has_work()) {
      std::vector<RequestOutput> outs;
      const auto ts = Clock::now();
      close_between(ts);
      try {
        outs = eng_.step();  // a failure inside the model comes back as error finishes
      } catch (const std::exception& e) {
        // Anything else leaves the step half done: finish every request with the error.
        std::fprintf(stderr, "dsa serve: engine step failed: %s\n", e.what());
        outs = eng_.cancel_all();
        for (RequestOutput& o : outs) {
          o.finish = FinishReason::Error;
          o.error = std::string("engine step failed: ") + e.what();
        }
      }
      const auto te = Clock::now();
      const StepTiming t = eng_.last_step();
      // Nothing could be scheduled (cannot last: running requests always make progress); do not spin.
      if (outs.empty() && t.tokens == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const auto td = Clock::now();
      const int64_t n_out = int64_t(outs.size());
      hand_off(std::move(outs));
      {
        std::lock_guard<std::mutex> g(stats_mu_);
        stats_.steps.add(t, secs(te - ts));
        stats_.outputs += n_out;
        stats_.handoff_s += secs(Clock::now() - td);
      }
      prev = te;
      if (stop_) return;
    }
    close_between(Clock::now());
  }
}

int64_t EngineLoop::drain(std::chrono::steady_clock::time_point deadline) {
  stop_accepting();
  std::vector<RequestId> left;
  {
    std::unique_lock<std::mutex> l(mu_);
    idle_cv_.wait_until(l, deadline, [&] { return routes_.empty(); });
    for (auto& [id, r] : routes_) left.push_back(id);
  }
  if (left.empty()) return 0;
  cancelling_all_ = true;
  for (RequestId id : left) cancel(id);
  // Cancellations take effect at the next step, which is at most one step away.
  std::unique_lock<std::mutex> l(mu_);
  idle_cv_.wait_for(l, std::chrono::seconds(30), [&] { return routes_.empty(); });
  return int64_t(left.size());
}

Submission::Submission(EngineLoop& loop, std::vector<RequestParams> reqs) : loop_(loop) {
  ids_ = loop_.submit(std::move(reqs), box_);
  finished_.assign(ids_.size(), false);
}

Submission::~Submission() { cancel(); }

void Submission::cancel() {
  for (size_t i = 0; i < ids_.size(); ++i)
    if (!finished_[i]) loop_.cancel(ids_[i]);
}

bool Submission::next(std::vector<Mailbox::Item>& out, std::chrono::milliseconds timeout) {
  const size_t first = out.size();
  if (!box_->pop_all(out, timeout)) return false;
  for (size_t i = first; i < out.size(); ++i) {
    const int c = out[i].choice;
    if (out[i].out.finished && !finished_[size_t(c)]) {
      finished_[size_t(c)] = true;
      ++n_done_;
    }
  }
  return true;
}

}  // namespace dsa::server

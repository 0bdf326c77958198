#pragma once
// EngineLoop: the one thread that drives Engine::step() for the server, and the hand-off of each
// request's outputs to the HTTP thread that waits for them (docs/server.md).
//
// HTTP threads submit requests (a whole `n` group at once) with a Mailbox; the loop thread steps
// while the engine has work and drops every RequestOutput into the mailbox of its request. The
// engine thread never waits for a client: a slow reader only grows its own mailbox.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/engine.h"
#include "runtime/step_stats.h"

namespace dsa::server {

// The outputs of one HTTP request's engine requests (its choices), in arrival order.
class Mailbox {
 public:
  struct Item {
    int choice = 0;
    RequestOutput out;
  };
  void push(Item it);
  // Moves every queued item into `out`; waits up to `timeout` when there is none. False if none.
  bool pop_all(std::vector<Item>& out, std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
};

// Thrown by submit when the waiting queue is full (HTTP 429) or the server is draining (503).
struct QueueFull : Error {
  using Error::Error;
};
struct ShuttingDown : Error {
  using Error::Error;
};

// What one engine step finished, for the metrics (called on the loop thread).
using OutputObserver = std::function<void(const RequestOutput&)>;

class EngineLoop {
 public:
  // max_waiting: requests that may wait for a slot before submit refuses more (QueueFull).
  // own_thread: step on a thread of its own; otherwise the owner calls run(). On the CPU the thread
  // that loaded the engine should run it: its OpenMP team is then the only one, and the workers
  // keep spinning between parallel regions (a second team halves decode speed on few cores).
  // dispatch_thread: a thread of the loop's own puts the outputs into the mailboxes (and wakes their
  // HTTP threads) while the next step runs; otherwise the stepping thread does it between steps.
  // Each output it hands on wakes one HTTP thread, which costs the waker microseconds (the futex
  // wake, and the woken thread's work when it lands on the waker's core): with 32-128 streams that
  // is a tenth of a GPU decode step when the stepping thread pays it (docs/server.md "Overhead").
  EngineLoop(Engine& eng, int64_t max_waiting, OutputObserver observe = {}, bool own_thread = true,
             bool dispatch_thread = true);
  ~EngineLoop();  // stops; requests still in flight are cancelled

  // Steps until stop() (when not own_thread).
  void run();
  void stop();

  // Adds the requests as choices 0..k-1 of `box`, all or none: throws QueueFull / ShuttingDown, or
  // the engine's dsa::Error for a request that can never run.
  std::vector<RequestId> submit(std::vector<RequestParams> reqs, std::shared_ptr<Mailbox> box);
  void cancel(RequestId id);

  // Refuse new requests from now on (ShuttingDown); in-flight ones continue.
  void stop_accepting() { accepting_ = false; }
  bool accepting() const { return accepting_; }
  // Requests submitted and not yet finished.
  int64_t in_flight() const;
  // Waits until nothing is in flight or the deadline passes; then cancels whatever is left and
  // waits for those cancellations to be delivered. Returns the number cancelled.
  int64_t drain(std::chrono::steady_clock::time_point deadline);
  // True once drain() started cancelling: a cancelled finish then means "shutting down".
  bool cancelling_all() const { return cancelling_all_; }

  Engine& engine() { return eng_; }

  // What the loop's steps did so far, in dsa bench's definitions (runtime/step_stats.h): `between` is
  // the loop thread's time from step() returning to the next step() (handing the outputs on).
  struct Stats {
    StepStats steps;
    int64_t outputs = 0;     // RequestOutputs handed on
    double handoff_s = 0;    // stepping thread: time handing them on (part of `between`)
    bool dispatch_thread = false;
    double deliver_s = 0;    // putting them into the mailboxes (the dispatch thread's busy time, or = handoff_s)
    double queued_s = 0;     // dispatch thread: sum over steps of hand-off to delivery start
    int64_t batches = 0;     // steps' outputs delivered
  };
  Stats stats() const;

 private:
  using Clock = std::chrono::steady_clock;
  // One step's outputs to `deliver`: on the dispatch thread (queued) or right here.
  void hand_off(std::vector<RequestOutput>&& outs);
  void deliver(std::vector<RequestOutput>& outs);  // observe, mailboxes, routes (any one thread at a time)
  void dispatch_loop();

  Engine& eng_;
  int64_t max_waiting_;
  OutputObserver observe_;
  std::atomic<bool> accepting_{true}, cancelling_all_{false};
  mutable std::mutex mu_;
  std::condition_variable wake_cv_, idle_cv_;
  bool wake_ = false;
  std::atomic<bool> stop_{false};  // set under mu_ (for wake_cv_); read without it between steps
  struct Route {
    std::shared_ptr<Mailbox> box;
    int choice = 0;
  };
  std::unordered_map<RequestId, Route> routes_;
  mutable std::mutex stats_mu_;
  Stats stats_;
  // The dispatch thread's queue: steps' outputs with the time they were handed on.
  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::deque<std::pair<std::vector<RequestOutput>, Clock::time_point>> out_q_;
  bool out_stop_ = false, out_waiting_ = false;
  std::thread dispatcher_;
  std::thread th_;
};

// One HTTP request's engine requests (its choices). Whatever has not finished when it is destroyed
// is cancelled: a handler that returns early, or a client that went away, frees its blocks.
class Submission {
 public:
  Submission(EngineLoop& loop, std::vector<RequestParams> reqs);  // throws as EngineLoop::submit
  ~Submission();
  Submission(const Submission&) = delete;
  Submission& operator=(const Submission&) = delete;

  int size() const { return int(ids_.size()); }
  // The next outputs (marking finished choices); waits up to `timeout` for some.
  bool next(std::vector<Mailbox::Item>& out, std::chrono::milliseconds timeout);
  bool done() const { return n_done_ == int(ids_.size()); }
  void cancel();

 private:
  EngineLoop& loop_;
  std::shared_ptr<Mailbox> box_ = std::make_shared<Mailbox>();
  std::vector<RequestId> ids_;
  std::vector<bool> finished_;
  int n_done_ = 0;
};

}  // namespace dsa::server

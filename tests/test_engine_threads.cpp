// The engine's step API across threads, as the server uses it: one thread steps, others add,
// cancel and — at shutdown — cancel everything while a step is running; the KV capacity is read
// through a const accessor while steps run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/engine.h"
#include "test_models.h"
#include "test_util.h"

namespace dsa::test {

namespace {

std::unique_ptr<Engine> tiny_engine(int64_t kv_tokens = 0) {
  EngineOptions o;
  o.threads = 2;
  o.max_batch_tokens = 256;
  o.max_seqs = 8;
  o.kv_tokens = kv_tokens;
  return Engine::load(tiny_model_dir(), o);
}

RequestParams request(int i, int64_t prompt_len, int64_t max_tokens) {
  RequestParams p;
  for (int64_t k = 0; k < prompt_len; ++k) p.prompt.push_back(int32_t(2 + (k * 37 + i * 101) % 500));
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  p.sampling.seed = uint64_t(i);
  return p;
}

std::vector<int32_t> run_alone(Engine& e, const RequestParams& p) {
  const RequestId id = e.add_request(p);
  std::vector<int32_t> toks;
  while (e.has_work())
    for (RequestOutput& o : e.step())
      if (o.id == id) toks.insert(toks.end(), o.tokens.begin(), o.tokens.end());
  return toks;
}

}  // namespace

// cancel_all() from another thread while steps run (the server's shutdown): it waits for the step
// in flight to commit, so that step neither fails nor loses its outputs; every request finishes
// exactly once (by the step or as Cancelled), no block stays in use, and the engine then gives
// a new request exactly the tokens a fresh engine gives.
TEST(EngineThreads, CancelAllWhileAStepRuns) {
  auto e = tiny_engine();
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<RequestId> ids;
    for (int i = 0; i < 6; ++i) ids.push_back(e->add_request(request(trial * 10 + i, 40 + 30 * i, 300)));
    std::mutex mu;
    std::map<RequestId, int> finishes;
    std::map<RequestId, FinishReason> how;
    auto record = [&](std::vector<RequestOutput>& outs) {
      std::lock_guard<std::mutex> g(mu);
      for (RequestOutput& o : outs)
        if (o.finished) {
          ++finishes[o.id];
          how[o.id] = o.finish;
        }
    };
    std::atomic<int> steps{0};
    std::atomic<bool> about_to_step{false};
    std::string error;
    std::thread stepper([&] {
      try {
        while (e->has_work()) {
          about_to_step = true;
          std::vector<RequestOutput> outs = e->step();
          ++steps;
          record(outs);
        }
      } catch (const std::exception& ex) {
        error = ex.what();
      }
    });
    // Let a few steps pass (prefills of different lengths, then decodes), then cancel just as the
    // next step starts: a tiny-model step takes long enough that this lands inside it.
    while (steps < 2 + trial && error.empty()) std::this_thread::yield();
    about_to_step = false;
    while (!about_to_step && error.empty()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(100));  // past the step's schedule()
    std::vector<RequestOutput> outs = e->cancel_all();
    record(outs);
    stepper.join();
    ASSERT_EQ(error, "") << "trial " << trial << ": a step failed while cancel_all ran";
    for (RequestId id : ids) {
      EXPECT_EQ(finishes[id], 1) << "trial " << trial << ", request " << id << " finished " << finishes[id] << " times";
      EXPECT_TRUE(how[id] == FinishReason::Cancelled || how[id] == FinishReason::Length) << "trial " << trial;
    }
    EXPECT_GT(std::count_if(how.begin(), how.end(), [](auto& kv) { return kv.second == FinishReason::Cancelled; }), 0);
    EXPECT_FALSE(e->has_work());
    e->check_invariants();
    EXPECT_EQ(e->kv().pool().in_use(), 0) << "trial " << trial;
  }
  // The pool was never written under a running forward by another request's blocks: a new request
  // (reusing the freed blocks) gives what it gives on a fresh engine.
  auto fresh = tiny_engine();
  const RequestParams p = request(99, 150, 24);
  EXPECT_EQ(run_alone(*e, p), run_alone(*fresh, p));
}

// cancel_all() with no step running, and on an idle engine.
TEST(EngineThreads, CancelAllBetweenStepsAndWhenIdle) {
  auto e = tiny_engine();
  EXPECT_TRUE(e->cancel_all().empty());
  const RequestId a = e->add_request(request(1, 70, 50)), b = e->add_request(request(2, 20, 50));
  e->step();
  e->step();
  std::vector<RequestOutput> outs = e->cancel_all();
  ASSERT_EQ(outs.size(), 2u);
  for (const RequestOutput& o : outs) {
    EXPECT_TRUE(o.id == a || o.id == b);
    EXPECT_TRUE(o.finished);
    EXPECT_EQ(o.finish, FinishReason::Cancelled);
  }
  EXPECT_FALSE(e->has_work());
  EXPECT_EQ(e->kv().pool().in_use(), 0);
  EXPECT_TRUE(e->step().empty());
}

// The KV capacity through a const Engine, equal to the pool's, whole blocks covering what was asked;
// read from another thread while steps run.
TEST(EngineThreads, KvCapacityTokensConstAccessor) {
  auto e = tiny_engine(1000);
  const Engine& ce = *e;
  EXPECT_EQ(ce.kv_capacity_tokens(), e->kv().capacity_tokens());
  EXPECT_EQ(ce.kv_capacity_tokens(), ce.kv().num_blocks() * kKvBlock);
  EXPECT_GE(ce.kv_capacity_tokens(), 1000);
  EXPECT_LT(ce.kv_capacity_tokens(), 1000 + kKvBlock);
  e->add_request(request(3, 100, 20));
  std::atomic<bool> done{false};
  int64_t seen = 0;
  std::thread reader([&] {
    do seen = std::max(seen, ce.kv_capacity_tokens());
    while (!done);
  });
  while (e->has_work()) e->step();
  done = true;
  reader.join();
  EXPECT_EQ(seen, ce.kv_capacity_tokens());
}

}  // namespace dsa::test

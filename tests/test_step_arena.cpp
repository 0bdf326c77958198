// The decode-step workspace (backends/step_arena.h, docs/decode-graphs.md): bump allocation, growth by
// use, a tensor kept past its step keeps its memory; and on the CPU backend, decode steps that draw
// every tensor from it compute what plain allocation computes.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <random>
#include <map>
#include <set>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/step_arena.h"
#include "runtime/engine.h"
#include "test_models.h"

namespace dsa {
namespace {

struct CountingHeap {
  int64_t allocs = 0, frees = 0;
  StepArena make() {
    return StepArena([this](size_t n) { ++allocs; return std::aligned_alloc(StepArena::kAlign, n); },
                     [this](void* p) { ++frees; std::free(p); });
  }
};

TEST(StepArena, BumpsAlignedGrowsByUseAndReusesItsBlock) {
  CountingHeap heap;
  {
    StepArena a = heap.make();
    EXPECT_TRUE(a.begin());  // first use: a block (of the minimum size)
    EXPECT_EQ(a.take(1000), nullptr);  // does not fit yet: the caller allocates it elsewhere
    EXPECT_EQ(a.misses(), 1);
    a.end();
    EXPECT_TRUE(a.begin());  // grown for the 1024 bytes asked last step, plus headroom
    EXPECT_GE(a.capacity(), 1024u);
    char* p = static_cast<char*>(a.take(1000));
    char* q = static_cast<char*>(a.take(1));
    ASSERT_NE(p, nullptr);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % StepArena::kAlign, 0u);
    EXPECT_EQ(q - p, 1024);  // 1000 rounded up to 256-byte alignment
    EXPECT_EQ(a.misses(), 0);
    a.end();
    // Same requests, same addresses: what replaying a captured step relies on.
    EXPECT_FALSE(a.begin());
    EXPECT_EQ(a.take(1000), p);
    EXPECT_EQ(a.take(1), q);
    a.end();
    EXPECT_EQ(heap.allocs, 2);
    EXPECT_EQ(heap.frees, 1);  // the first block, referenced by nothing, is gone
  }
  EXPECT_EQ(heap.frees, heap.allocs);
}

TEST(StepArena, ScopesGiveBackTheirTemporaries) {
  CountingHeap heap;
  StepArena a = heap.make();
  a.reserve(8192);
  a.begin();
  void* keep = a.take(1024);  // lives through the step (e.g. the residual stream)
  void* first = nullptr;
  for (int layer = 0; layer < 10; ++layer) {
    const StepArena::Mark m = a.mark();
    void* t = a.take(2048);
    a.take(1000);
    if (layer == 0) first = t;
    EXPECT_EQ(t, first) << "layer " << layer << " does not reuse the previous layer's memory";
    a.release(m);
  }
  EXPECT_EQ(a.used(), 1024u);
  EXPECT_EQ(a.peak_need(), std::max<size_t>(8192, 1024 + 2048 + 1024));  // one layer's, not ten
  EXPECT_NE(keep, first);
  a.end();
}

TEST(StepArena, ATensorKeptPastItsStepKeepsItsMemory) {
  CountingHeap heap;
  StepArena a = heap.make();
  a.reserve(4096);
  a.begin();
  void* p = a.take(512);
  std::shared_ptr<void> kept = a.owner(p);  // e.g. logits held by a caller after the step
  std::memset(p, 0x5a, 512);
  a.end();
  EXPECT_TRUE(a.begin());  // the block is still referenced: a new one, the old one untouched
  void* r = a.take(512);
  EXPECT_NE(r, p);
  std::memset(r, 0, 512);
  EXPECT_EQ(static_cast<unsigned char*>(p)[511], 0x5a);
  a.end();
  EXPECT_EQ(heap.frees, 0);
  kept.reset();  // the last reference to the old block
  EXPECT_EQ(heap.frees, 1);
  EXPECT_FALSE(a.begin());
  a.end();
}

// Decode on the CPU backend through the workspace: after the first step (which sizes it), every step
// draws all of its tensors from one block (no misses, no new blocks), and the tokens equal those of
// each request run alone — where batch shapes, and so the workspace's layout, differ.
TEST(StepArena, CpuDecodeStepsRunFromTheWorkspace) {
  EngineOptions o;
  o.threads = 2;
  o.max_seqs = 8;
  auto e = Engine::load(test::tiny_model_dir(), o);
  auto* cpu = dynamic_cast<CpuBackend*>(&e->backend());
  ASSERT_NE(cpu, nullptr);
  std::mt19937 rng(7);
  std::vector<RequestParams> reqs;
  for (int i = 0; i < 4; ++i) {
    RequestParams p;
    for (int j = 0; j < 20 + 13 * i; ++j) p.prompt.push_back(int32_t(2 + rng() % 200));
    p.max_tokens = 12;
    p.ignore_eos = true;
    p.sampling.temperature = i % 2 ? 0.8f : 0.0f;
    p.sampling.seed = uint64_t(i);
    reqs.push_back(p);
  }
  auto run = [&](const std::vector<RequestParams>& rs) {
    std::map<RequestId, std::vector<int32_t>> out;
    std::vector<RequestId> ids;
    for (const auto& r : rs) ids.push_back(e->add_request(r));
    int64_t blocks_after_warmup = -1, decode_steps = 0;
    while (e->has_work()) {
      for (auto& o : e->step()) out[o.id].insert(out[o.id].end(), o.tokens.begin(), o.tokens.end());
      const StepArena& a = cpu->step_arena();
      const StepTiming& st = e->last_step();
      if (st.tokens > 0 && st.decode_rows == st.tokens) {
        if (++decode_steps == 2) blocks_after_warmup = a.blocks_made();
        if (decode_steps >= 2) {  // the first decode step sizes the workspace (its tensors mostly do not fit)
          EXPECT_GT(a.used(), 0u) << "the decode step's tensors did not come from the workspace";
          EXPECT_EQ(a.misses(), 0) << "decode step " << decode_steps;
        }
      }
    }
    if (decode_steps > 2) EXPECT_EQ(cpu->step_arena().blocks_made(), blocks_after_warmup);
    std::vector<std::vector<int32_t>> r;
    for (RequestId id : ids) r.push_back(out[id]);
    return r;
  };
  const auto together = run(reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto alone = run({reqs[i]});
    EXPECT_EQ(alone[0], together[i]) << "request " << i;
    EXPECT_EQ(together[i].size(), 12u);
  }
}

}  // namespace
}  // namespace dsa

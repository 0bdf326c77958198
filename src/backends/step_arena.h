#pragma once
// StepArena: the workspace of decode steps (docs/decode-graphs.md). Every tensor a decode step
// allocates is bump-allocated from one block, reset at the start of the next decode step, so the hot
// path makes no allocator calls and, for the same step shape, the same sequence of allocations gets
// the same addresses — what a captured CUDA graph needs to be replayed.
//
// The block is sized by use: a request that does not fit returns nullptr (the caller allocates it
// elsewhere for this step) and the next begin() replaces the block with one large enough for the
// biggest step seen (reserve() sizes it up front). Tensors carry the block as their owner (copies of
// one shared_ptr: no allocation per tensor), so a tensor kept past its step keeps its memory: begin()
// then starts a new block instead of overwriting it. Captured graphs hold plain addresses, not
// owners: when begin() replaces the block, its caller drops them.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace dsa {

class StepArena {
 public:
  using AllocFn = std::function<void*(size_t)>;
  using FreeFn = std::function<void(void*)>;
  static constexpr size_t kAlign = 256;  // every tensor starts on a 256-byte boundary (vector loads, TMA)

  StepArena(AllocFn alloc, FreeFn free) : alloc_(std::move(alloc)), free_(std::move(free)) {}

  // Start a step: offsets back to 0. Returns true when the block was replaced (first use, grown, or
  // still referenced by a tensor of an earlier step), which invalidates every address of the old one.
  bool begin();
  // `bytes` (rounded up to kAlign) from the block, or nullptr if they do not fit.
  void* take(size_t bytes);
  // Scopes inside a step (the model's layers): release(mark()) gives back everything taken since the
  // mark, so a step needs its largest layer, not the sum of its layers. Later requests reuse the
  // addresses, which is safe in stream order (as any allocator's reuse) and still deterministic.
  struct Mark {
    size_t off = 0, need = 0;
  };
  Mark mark() const { return {off_, need_}; }
  void release(const Mark& m);
  void end() { in_step_ = false; }
  bool in_step() const { return in_step_; }
  // The block's owner, for tensors taken from it (aliasing: no allocation).
  std::shared_ptr<void> owner(void* p) const { return std::shared_ptr<void>(block_, p); }
  // Make the next begin() provide at least this many bytes.
  void reserve(size_t bytes) { need_max_ = bytes > need_max_ ? bytes : need_max_; }

  size_t capacity() const { return block_ ? block_->bytes : 0; }
  size_t used() const { return off_; }
  size_t step_need() const { return need_; }     // bytes this step holds now, taken or not
  size_t peak_need() const { return need_max_; } // the most any step held at once
  int64_t misses() const { return misses_; }     // requests in this step that did not fit
  int64_t blocks_made() const { return blocks_; }
  const void* base() const { return block_ ? block_->p : nullptr; }

 private:
  struct Block {
    void* p = nullptr;
    size_t bytes = 0;
    FreeFn free;
    ~Block() {
      if (p) free(p);
    }
  };
  AllocFn alloc_;
  FreeFn free_;
  std::shared_ptr<Block> block_;
  size_t off_ = 0, need_ = 0, need_max_ = 0;
  int64_t misses_ = 0, blocks_ = 0;
  bool in_step_ = false;
};

}  // namespace dsa

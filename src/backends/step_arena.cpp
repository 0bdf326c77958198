#include "backends/step_arena.h"

#include "core/error.h"

namespace dsa {

bool StepArena::begin() {
  const bool shared = block_ && block_.use_count() > 1;  // a tensor of an earlier step is still alive
  const bool small = !block_ || block_->bytes < need_max_;
  bool replaced = false;
  if (shared || small) {
    // 1/4 headroom over the largest step seen: one more grow covers a step a little larger than any before.
    size_t bytes = need_max_ + need_max_ / 4;
    if (block_ && block_->bytes > bytes) bytes = block_->bytes;
    bytes = (bytes + kAlign - 1) / kAlign * kAlign;
    if (bytes < kAlign) bytes = kAlign;
    auto b = std::make_shared<Block>();
    b->free = free_;
    b->p = alloc_(bytes);
    DSA_CHECK(b->p, "decode-step workspace: cannot allocate ", bytes, " bytes");
    b->bytes = bytes;
    block_ = std::move(b);  // the old block lives on while tensors of earlier steps hold it
    ++blocks_;
    replaced = true;
  }
  off_ = 0;
  need_ = 0;
  misses_ = 0;
  in_step_ = true;
  return replaced;
}

void StepArena::release(const Mark& m) {
  if (m.off <= off_) off_ = m.off;
  if (m.need <= need_) need_ = m.need;
}

void* StepArena::take(size_t bytes) {
  const size_t n = (bytes + kAlign - 1) / kAlign * kAlign;
  need_ += n;
  if (need_ > need_max_) need_max_ = need_;
  if (!block_ || off_ + n > block_->bytes) {
    ++misses_;
    return nullptr;
  }
  void* p = static_cast<char*>(block_->p) + off_;
  off_ += n;
  return p;
}

}  // namespace dsa

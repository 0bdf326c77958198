#pragma once
// KV memory: per layer one MLA pool (656 B/token) and one indexer pool (132 B/token), both in
// 64-token blocks handed out by one BlockPool (a block id addresses both caches of every layer),
// shared by all sequences through per-sequence block tables (design.md "runtime").
#include <cstdint>
#include <vector>

#include "backends/backend.h"
#include "runtime/block_pool.h"

namespace dsa {

class KvCache {
 public:
  KvCache(Backend& be, int64_t n_layers, int64_t num_blocks);
  std::vector<KvLayer> layers;
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }
  int64_t num_blocks() const { return pool_.num_blocks(); }
  int64_t capacity_tokens() const { return num_blocks() * kKvBlock; }
  size_t bytes() const { return bytes_; }
  static size_t bytes_per_token(int64_t n_layers) { return size_t(n_layers) * (kMlaTokenBytes + kIndexTokenBytes); }

 private:
  BlockPool pool_;
  size_t bytes_ = 0;
};

// What one sequence contributes to a step: its new tokens after start_pos, in the given form,
// over its block table (which must already cover start_pos + n_new tokens).
struct BatchSlice {
  const std::vector<int32_t>* blocks = nullptr;
  int64_t start_pos = 0, n_new = 0;
  bool absorbed = false;
};
// The ragged batch of the slices, packed in order.
Batch make_batch(const std::vector<BatchSlice>& slices);

// A sequence driven by hand (model-level tests and tools that bypass the scheduler): a block
// table and a length. Engine::feed grows it; release() returns its blocks.
struct Sequence {
  std::vector<int32_t> blocks;  // block table (one reference held on each)
  int64_t len = 0;              // tokens in the cache
  // Blocks for `tokens` tokens in all; throws "out of KV memory" with the numbers, leaving the
  // sequence as it was, when the pool cannot supply them.
  void reserve(KvCache& kv, int64_t tokens);
  void release(KvCache& kv);
};

}  // namespace dsa

#pragma once
// KV memory: per layer one MLA pool (656 B/token) and one indexer pool (132 B/token), both in
// 64-token blocks, shared by all sequences through per-sequence block tables (design.md "runtime").
#include <cstdint>
#include <vector>

#include "backends/backend.h"

namespace dsa {

class KvCache {
 public:
  KvCache(Backend& be, int64_t n_layers, int64_t num_blocks);
  std::vector<KvLayer> layers;
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return int64_t(free_.size()); }
  size_t bytes() const { return bytes_; }
  static size_t bytes_per_token(int64_t n_layers) { return size_t(n_layers) * (kMlaTokenBytes + kIndexTokenBytes); }
  // Block allocation; alloc throws "out of KV memory" with the numbers when empty.
  int32_t alloc_block();
  void free_block(int32_t b);

 private:
  int64_t num_blocks_;
  size_t bytes_ = 0;
  std::vector<int32_t> free_;
};

// One sequence's cache state.
struct Sequence {
  std::vector<int32_t> blocks;  // block table
  int64_t len = 0;              // tokens in the cache
  void release(KvCache& kv);
};

// Build a batch: for each sequence, `n_new[i]` new tokens after its current length. Allocates the
// blocks the new tokens need (throws cleanly when KV memory runs out, leaving sequences unchanged).
Batch make_batch(KvCache& kv, const std::vector<Sequence*>& seqs, const std::vector<int64_t>& n_new);
// After a forward pass: advance each sequence's length by its new tokens.
void commit_batch(const std::vector<Sequence*>& seqs, const Batch& b);

}  // namespace dsa

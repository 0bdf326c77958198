#pragma once
// BlockPool: the allocator of KV blocks and the prefix cache over them (docs/runtime.md).
//
// One block id names 64 token slots in every layer's MLA cache (656 B/token) and indexer cache
// (132 B/token), so one id covers both caches of all layers. Blocks are reference-counted: a
// sequence holds one reference on each block of its table, and a prefix-cache hit adds one more.
// A full block whose tokens are known can be published under a key (the chain hash of its tokens
// and of every block before it, plus a salt naming how it was computed); an unreferenced published
// block stays cached — findable by lookup — until allocate() needs it, least recently used first.
// Empty blocks are handed out before cached ones are evicted.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace dsa {

// The identity of a full block: what it holds and everything its values depend on.
struct BlockKey {
  uint64_t parent = 0;          // hash of the previous block's key (0 for the first block)
  uint64_t salt = 0;            // how the block's tokens were computed (attention mode, form)
  std::span<const int32_t> tokens;  // its 64 tokens
  uint64_t hash() const;
};

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks, int64_t block_tokens = 64);
  int64_t num_blocks() const { return int64_t(blocks_.size()); }
  // Blocks allocate() can hand out now: the empty ones plus the cached ones nobody references.
  int64_t available() const { return int64_t(empty_.size()) + lru_size_; }
  int64_t in_use() const { return num_blocks() - available(); }  // referenced by some sequence
  int64_t cached() const { return int64_t(by_hash_.size()); }    // published (referenced or not)

  // A block with one reference: an empty one, else the least recently used cached block (its
  // key is forgotten). -1 when every block is referenced.
  int32_t allocate();
  void retain(int32_t b);
  // Drop one reference; at zero a published block joins the cache's LRU, any other becomes empty.
  void release(int32_t b);
  int32_t refs(int32_t b) const { return blocks_[size_t(b)].refs; }

  // The published block with this key, with one more reference, or -1 (a miss).
  int32_t lookup(const BlockKey& key);
  // Publish a referenced, full block under key. A key already published keeps its block (this one
  // stays unpublished and is freed as usual). Returns whether b is now the key's block.
  bool publish(int32_t b, const BlockKey& key);
  bool published(int32_t b) const { return blocks_[size_t(b)].published; }
  // Forget every unreferenced cached block (they become empty).
  void clear_cache();

  struct Stats {
    int64_t lookups = 0, hits = 0, evictions = 0;
  };
  const Stats& stats() const { return stats_; }

  // Every invariant of the structure (lists, counts, keys); throws dsa::Error naming the first one
  // that fails. `expected_refs`, if given, is the reference count each block must have.
  void check(const std::vector<int32_t>* expected_refs = nullptr) const;

 private:
  struct Block {
    int32_t refs = 0;
    bool published = false;
    uint64_t hash = 0, parent = 0, salt = 0;
    int32_t prev = -1, next = -1;  // LRU links while unreferenced and published
  };
  bool same_key(int32_t b, const BlockKey& key) const;
  void lru_remove(int32_t b);
  void lru_push(int32_t b);  // most recently used end
  void forget(int32_t b);    // unpublish

  int64_t block_tokens_;
  std::vector<Block> blocks_;
  std::vector<int32_t> tokens_;  // [num_blocks][block_tokens]: the published tokens of each block
  std::vector<int32_t> empty_;   // unreferenced, unpublished
  int32_t lru_head_ = -1, lru_tail_ = -1;  // head: least recently used
  int64_t lru_size_ = 0;
  std::unordered_map<uint64_t, int32_t> by_hash_;
  Stats stats_;
};

}  // namespace dsa

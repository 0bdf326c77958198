#include "runtime/block_pool.h"

#include <algorithm>

#include "backends/sample_noise.h"  // mix64
#include "core/error.h"

namespace dsa {

uint64_t BlockKey::hash() const {
  uint64_t h = mix64(parent ^ mix64(salt + 0x51afd6ed4b6d0c3bull));
  for (int32_t t : tokens) h = mix64(h ^ uint64_t(uint32_t(t)));
  return h ? h : 1;  // 0 names "no parent"
}

// Checked before any member is sized (a negative count would throw std::length_error first).
static int64_t checked_blocks(int64_t num_blocks) {
  DSA_CHECK(num_blocks > 0 && num_blocks < (int64_t(1) << 31), "KV block pool of ", num_blocks,
            " blocks: must be in [1, 2^31)");
  return num_blocks;
}

BlockPool::BlockPool(int64_t num_blocks, int64_t block_tokens)
    : block_tokens_(block_tokens), blocks_(size_t(checked_blocks(num_blocks))), tokens_(size_t(num_blocks * block_tokens)) {
  for (int64_t b = num_blocks - 1; b >= 0; --b) empty_.push_back(int32_t(b));
}

void BlockPool::lru_remove(int32_t b) {
  Block& k = blocks_[size_t(b)];
  (k.prev >= 0 ? blocks_[size_t(k.prev)].next : lru_head_) = k.next;
  (k.next >= 0 ? blocks_[size_t(k.next)].prev : lru_tail_) = k.prev;
  k.prev = k.next = -1;
  --lru_size_;
}

void BlockPool::lru_push(int32_t b) {
  Block& k = blocks_[size_t(b)];
  k.prev = lru_tail_;
  k.next = -1;
  (lru_tail_ >= 0 ? blocks_[size_t(lru_tail_)].next : lru_head_) = b;
  lru_tail_ = b;
  ++lru_size_;
}

void BlockPool::forget(int32_t b) {
  Block& k = blocks_[size_t(b)];
  by_hash_.erase(k.hash);
  k.published = false;
  k.hash = k.parent = k.salt = 0;
}

int32_t BlockPool::allocate() {
  int32_t b = -1;
  if (!empty_.empty()) {
    b = empty_.back();
    empty_.pop_back();
  } else if (lru_head_ >= 0) {
    b = lru_head_;
    lru_remove(b);
    forget(b);
    ++stats_.evictions;
  } else {
    return -1;
  }
  blocks_[size_t(b)].refs = 1;
  return b;
}

void BlockPool::retain(int32_t b) {
  Block& k = blocks_[size_t(b)];
  if (k.refs == 0) {
    DSA_CHECK(k.published, "BlockPool::retain: block ", b, " is free");
    lru_remove(b);
  }
  ++k.refs;
}

void BlockPool::release(int32_t b) {
  Block& k = blocks_[size_t(b)];
  DSA_CHECK(k.refs > 0, "BlockPool::release: block ", b, " has no reference");
  if (--k.refs > 0) return;
  if (k.published) lru_push(b);
  else empty_.push_back(b);
}

bool BlockPool::same_key(int32_t b, const BlockKey& key) const {
  const Block& k = blocks_[size_t(b)];
  return k.parent == key.parent && k.salt == key.salt && int64_t(key.tokens.size()) == block_tokens_ &&
         std::equal(key.tokens.begin(), key.tokens.end(), tokens_.begin() + int64_t(b) * block_tokens_);
}

int32_t BlockPool::lookup(const BlockKey& key) {
  ++stats_.lookups;
  auto it = by_hash_.find(key.hash());
  if (it == by_hash_.end() || !same_key(it->second, key)) return -1;
  ++stats_.hits;
  retain(it->second);
  return it->second;
}

bool BlockPool::publish(int32_t b, const BlockKey& key) {
  Block& k = blocks_[size_t(b)];
  DSA_CHECK(k.refs > 0 && int64_t(key.tokens.size()) == block_tokens_, "BlockPool::publish: block ", b,
            " must be referenced and full");
  if (k.published) return same_key(b, key);
  const uint64_t h = key.hash();
  if (by_hash_.count(h)) return false;
  by_hash_.emplace(h, b);
  k.published = true;
  k.hash = h;
  k.parent = key.parent;
  k.salt = key.salt;
  std::copy(key.tokens.begin(), key.tokens.end(), tokens_.begin() + int64_t(b) * block_tokens_);
  return true;
}

void BlockPool::clear_cache() {
  while (lru_head_ >= 0) {
    const int32_t b = lru_head_;
    lru_remove(b);
    forget(b);
    empty_.push_back(b);
  }
}

void BlockPool::check(const std::vector<int32_t>* expected_refs) const {
  const int64_t n = num_blocks();
  std::vector<uint8_t> where(size_t(n), 0);  // 1 empty, 2 lru
  for (int32_t b : empty_) {
    DSA_CHECK(b >= 0 && b < n && where[size_t(b)] == 0, "BlockPool: block ", b, " is twice on the free lists");
    where[size_t(b)] = 1;
    DSA_CHECK(blocks_[size_t(b)].refs == 0 && !blocks_[size_t(b)].published, "BlockPool: empty block ", b,
              " is referenced or published");
  }
  int64_t lru = 0;
  for (int32_t b = lru_head_, prev = -1; b >= 0; prev = b, b = blocks_[size_t(b)].next) {
    DSA_CHECK(where[size_t(b)] == 0, "BlockPool: block ", b, " is twice on the free lists");
    where[size_t(b)] = 2;
    DSA_CHECK(blocks_[size_t(b)].prev == prev, "BlockPool: LRU links broken at block ", b);
    DSA_CHECK(blocks_[size_t(b)].refs == 0 && blocks_[size_t(b)].published, "BlockPool: cached block ", b,
              " is referenced or unpublished");
    ++lru;
  }
  DSA_CHECK(lru == lru_size_, "BlockPool: LRU holds ", lru, " blocks, counted ", lru_size_);
  int64_t published = 0;
  for (int64_t b = 0; b < n; ++b) {
    const Block& k = blocks_[size_t(b)];
    DSA_CHECK(k.refs >= 0, "BlockPool: block ", b, " has ", k.refs, " references");
    DSA_CHECK((k.refs == 0) == (where[size_t(b)] != 0), "BlockPool: block ", b, " with ", k.refs,
              " references is ", where[size_t(b)] ? "on a free list" : "on no list");
    if (expected_refs)
      DSA_CHECK(k.refs == (*expected_refs)[size_t(b)], "BlockPool: block ", b, " has ", k.refs,
                " references, its owners hold ", (*expected_refs)[size_t(b)]);
    if (k.published) {
      ++published;
      auto it = by_hash_.find(k.hash);
      DSA_CHECK(it != by_hash_.end() && it->second == b, "BlockPool: published block ", b, " is not under its key");
    }
  }
  DSA_CHECK(published == int64_t(by_hash_.size()), "BlockPool: ", by_hash_.size(), " keys for ", published,
            " published blocks");
}

}  // namespace dsa

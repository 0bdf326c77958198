// BlockPool and Scheduler without a model. The scheduler is pure bookkeeping, so a fake "model"
// stands in for the engine: it keeps a physical KV cache of (token, attention form) per slot, writes
// each plan row's tokens through the row's block table, and draws every token as a hash of what it
// reads back through the table (positions 0..end) plus the request's seed and counter. A request's
// tokens are then a pure function of its own history, so "the same tokens as when run alone" is
// checkable exactly — and a wrong block table, a prefix-cache block with other tokens, a write into a
// shared block or a token computed in the other form changes the tokens.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backends/sample_noise.h"  // mix64
#include "runtime/block_pool.h"
#include "runtime/scheduler.h"
#include "test_util.h"

namespace dsa::test {
namespace {

constexpr int64_t B = kKvBlock;  // 64

// ---------------------------------------------------------------------------------------------
// BlockPool
// ---------------------------------------------------------------------------------------------

std::vector<int32_t> block_tokens(uint64_t seed, int64_t n = B) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t(mix64(seed * 1000003 + uint64_t(i)) % 50000);
  return t;
}

// Owns the tokens a BlockKey points at.
struct Key {
  uint64_t parent = 0, salt = 0;
  std::vector<int32_t> toks;
  BlockKey key() const { return BlockKey{parent, salt, std::span<const int32_t>(toks)}; }
};
Key make_key(uint64_t seed, uint64_t parent = 0, uint64_t salt = 7) { return Key{parent, salt, block_tokens(seed)}; }

// Inverse of mix64 (splitmix64's finaliser is a bijection), to build a real hash collision.
uint64_t unxorshift(uint64_t y, int s) {
  uint64_t x = y;
  for (int i = s; i < 64; i += s) x ^= y >> i;
  return x;
}
uint64_t inv_odd(uint64_t m) {
  uint64_t x = m;  // Newton: correct to 3 bits, doubling each step
  for (int i = 0; i < 6; ++i) x *= 2 - m * x;
  return x;
}
uint64_t mix64_inv(uint64_t z) {
  z = unxorshift(z, 31);
  z *= inv_odd(0x94d049bb133111ebull);
  z = unxorshift(z, 27);
  z *= inv_odd(0xbf58476d1ce4e5b9ull);
  z = unxorshift(z, 30);
  return z - 0x9e3779b97f4a7c15ull;
}
// The parent that makes BlockKey{parent, salt, toks}.hash() equal `target` (given the chain formula
// of BlockKey::hash; the caller asserts the collision really happened).
uint64_t parent_for_hash(uint64_t target, uint64_t salt, const std::vector<int32_t>& toks) {
  uint64_t h = target;
  for (size_t i = toks.size(); i-- > 0;) h = mix64_inv(h) ^ uint64_t(uint32_t(toks[i]));
  return mix64_inv(h) ^ mix64(salt + 0x51afd6ed4b6d0c3bull);
}

void expect_pool_ok(const BlockPool& pool, const std::vector<int32_t>& refs) {
  EXPECT_NO_THROW(pool.check());
  EXPECT_NO_THROW(pool.check(&refs));
}
#define EXPECT_POOL_OK(pool, refs) \
  do {                             \
    SCOPED_TRACE("pool check");    \
    expect_pool_ok(pool, refs);    \
  } while (0)

TEST(BlockPool, RejectsBadSizes) {
  EXPECT_DSA_ERROR((void)BlockPool(0), "KV block pool of 0 blocks");
  EXPECT_DSA_ERROR((void)BlockPool(-3), "KV block pool");
}

TEST(BlockPool, AllocateRetainReleaseRefcounts) {
  BlockPool pool(4);
  std::vector<int32_t> refs(4, 0);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.num_blocks(), 4);
  EXPECT_EQ(pool.available(), 4);
  EXPECT_EQ(pool.in_use(), 0);

  const int32_t a = pool.allocate();
  ASSERT_GE(a, 0);
  ASSERT_LT(a, 4);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.refs(a), 1);
  EXPECT_EQ(pool.in_use(), 1);
  EXPECT_EQ(pool.available(), 3);
  EXPECT_POOL_OK(pool, refs);

  pool.retain(a);
  refs[size_t(a)] = 2;
  EXPECT_EQ(pool.refs(a), 2);
  EXPECT_EQ(pool.in_use(), 1);
  EXPECT_POOL_OK(pool, refs);

  pool.release(a);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.refs(a), 1);
  EXPECT_EQ(pool.in_use(), 1);
  EXPECT_POOL_OK(pool, refs);

  // A wrong expectation is reported, naming the block.
  std::vector<int32_t> wrong = refs;
  wrong[size_t(a)] = 2;
  EXPECT_DSA_ERROR(pool.check(&wrong), "block " + std::to_string(a), "1 references", "hold 2");
  wrong = refs;
  wrong[size_t((a + 1) % 4)] = 1;  // an unreferenced block claimed by someone
  EXPECT_DSA_ERROR(pool.check(&wrong), "0 references");

  pool.release(a);
  refs[size_t(a)] = 0;
  EXPECT_EQ(pool.refs(a), 0);
  EXPECT_FALSE(pool.published(a));
  EXPECT_EQ(pool.available(), 4);
  EXPECT_EQ(pool.cached(), 0);
  EXPECT_POOL_OK(pool, refs);

  EXPECT_DSA_ERROR(pool.release(a), "has no reference");
  EXPECT_DSA_ERROR(pool.retain(a), "is free");
  EXPECT_POOL_OK(pool, refs);

  // Every block handed out exactly once, then -1.
  std::set<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    const int32_t b = pool.allocate();
    ASSERT_GE(b, 0);
    EXPECT_TRUE(got.insert(b).second) << "block " << b << " handed out twice";
    refs[size_t(b)] = 1;
    EXPECT_POOL_OK(pool, refs);
  }
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_EQ(pool.available(), 0);
  EXPECT_EQ(pool.in_use(), 4);
  EXPECT_EQ(pool.stats().evictions, 0);
  EXPECT_POOL_OK(pool, refs);
}

TEST(BlockPool, EmptyBlocksBeforeCachedOnes) {
  BlockPool pool(4);
  std::vector<int32_t> refs(4, 0);
  const Key k = make_key(1);
  const int32_t a = pool.allocate();
  EXPECT_TRUE(pool.publish(a, k.key()));
  EXPECT_TRUE(pool.published(a));
  pool.release(a);  // cached, unreferenced
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_EQ(pool.available(), 4);
  EXPECT_EQ(pool.in_use(), 0);
  EXPECT_POOL_OK(pool, refs);

  for (int i = 0; i < 3; ++i) {
    const int32_t b = pool.allocate();
    ASSERT_GE(b, 0);
    EXPECT_NE(b, a) << "a cached block was evicted while empty ones were left";
    refs[size_t(b)] = 1;
    EXPECT_POOL_OK(pool, refs);
  }
  EXPECT_EQ(pool.stats().evictions, 0);
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_EQ(pool.available(), 1);

  // Still findable; the hit takes it out of the LRU.
  EXPECT_EQ(pool.lookup(k.key()), a);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.available(), 0);
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_POOL_OK(pool, refs);

  pool.release(a);
  refs[size_t(a)] = 0;
  EXPECT_POOL_OK(pool, refs);
  // Now the cached block is the only one left: it is evicted and its key forgotten.
  EXPECT_EQ(pool.allocate(), a);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.stats().evictions, 1);
  EXPECT_FALSE(pool.published(a));
  EXPECT_EQ(pool.cached(), 0);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.lookup(k.key()), -1);
  EXPECT_EQ(pool.stats().lookups, 2);
  EXPECT_EQ(pool.stats().hits, 1);
}

TEST(BlockPool, EvictsLeastRecentlyUsedFirst) {
  BlockPool pool(3);
  std::vector<int32_t> refs(3, 0);
  const Key ka = make_key(10), kb = make_key(11), kc = make_key(12);
  const int32_t a = pool.allocate(), b = pool.allocate(), c = pool.allocate();
  ASSERT_TRUE(a >= 0 && b >= 0 && c >= 0);
  EXPECT_TRUE(pool.publish(a, ka.key()));
  EXPECT_TRUE(pool.publish(b, kb.key()));
  EXPECT_TRUE(pool.publish(c, kc.key()));
  EXPECT_EQ(pool.cached(), 3);
  // Released in the order b, a, c: b is the least recently used.
  pool.release(b);
  pool.release(a);
  pool.release(c);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.available(), 3);

  EXPECT_EQ(pool.allocate(), b);
  refs[size_t(b)] = 1;
  EXPECT_EQ(pool.stats().evictions, 1);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.lookup(kb.key()), -1);  // forgotten

  // Using a makes c the least recently used.
  EXPECT_EQ(pool.lookup(ka.key()), a);
  refs[size_t(a)] = 1;
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.allocate(), c);
  refs[size_t(c)] = 1;
  EXPECT_EQ(pool.stats().evictions, 2);
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_POOL_OK(pool, refs);

  // retain() of a cached block also takes it out of the LRU; the next release puts it at the end.
  pool.release(a);  // LRU: a
  refs[size_t(a)] = 0;
  pool.release(c);  // c is unpublished now (evicted): it is empty, not cached
  refs[size_t(c)] = 0;
  EXPECT_FALSE(pool.published(c));
  EXPECT_TRUE(pool.published(a));
  EXPECT_POOL_OK(pool, refs);
  pool.retain(a);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.available(), 1);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.allocate(), c);  // the empty one, a is referenced
  refs[size_t(c)] = 1;
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_EQ(pool.stats().evictions, 2);
  EXPECT_EQ(pool.stats().lookups, 2);
  EXPECT_EQ(pool.stats().hits, 1);
  EXPECT_POOL_OK(pool, refs);
}

TEST(BlockPool, LookupHitAddsAReference) {
  BlockPool pool(4);
  std::vector<int32_t> refs(4, 0);
  const Key k = make_key(3);
  const int32_t a = pool.allocate();
  EXPECT_TRUE(pool.publish(a, k.key()));
  // Referenced and published: a hit adds a reference.
  EXPECT_EQ(pool.lookup(k.key()), a);
  EXPECT_EQ(pool.refs(a), 2);
  refs[size_t(a)] = 2;
  EXPECT_POOL_OK(pool, refs);
  pool.release(a);
  pool.release(a);
  refs[size_t(a)] = 0;
  EXPECT_EQ(pool.available(), 4);
  EXPECT_POOL_OK(pool, refs);
  // Unreferenced and cached: the hit takes it out of the LRU.
  EXPECT_EQ(pool.lookup(k.key()), a);
  refs[size_t(a)] = 1;
  EXPECT_EQ(pool.available(), 3);
  EXPECT_EQ(pool.in_use(), 1);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.stats().lookups, 2);
  EXPECT_EQ(pool.stats().hits, 2);
}

TEST(BlockPool, LookupMissesOnAnyOtherKey) {
  BlockPool pool(4);
  std::vector<int32_t> refs(4, 0);
  const Key k = make_key(5, /*parent=*/1234, /*salt=*/99);
  const int32_t a = pool.allocate();
  refs[size_t(a)] = 1;
  ASSERT_TRUE(pool.publish(a, k.key()));
  int64_t lookups = 0;

  Key other = k;
  other.salt = 98;
  EXPECT_EQ(pool.lookup(other.key()), -1);
  ++lookups;
  other = k;
  other.parent = 1235;
  EXPECT_EQ(pool.lookup(other.key()), -1);
  ++lookups;
  other = k;
  other.toks[63] ^= 1;
  EXPECT_EQ(pool.lookup(other.key()), -1);
  ++lookups;
  other = k;
  other.toks.pop_back();  // 63 tokens: never a full block
  EXPECT_EQ(pool.lookup(other.key()), -1);
  ++lookups;
  EXPECT_POOL_OK(pool, refs);

  // A real 64-bit hash collision with different tokens: same hash, different key.
  Key col = make_key(6, 0, 99);
  col.parent = parent_for_hash(k.key().hash(), col.salt, col.toks);
  ASSERT_EQ(col.key().hash(), k.key().hash()) << "the collision construction assumes BlockKey::hash's chain formula";
  ASSERT_NE(col.toks, k.toks);
  EXPECT_EQ(pool.lookup(col.key()), -1);
  ++lookups;
  EXPECT_EQ(pool.refs(a), 1);
  // Its block cannot be published under the colliding hash; the first key keeps its block.
  const int32_t b = pool.allocate();
  refs[size_t(b)] = 1;
  EXPECT_FALSE(pool.publish(b, col.key()));
  EXPECT_FALSE(pool.published(b));
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.lookup(k.key()), a);
  ++lookups;
  refs[size_t(a)] = 2;
  // Also when the first block is only cached (unreferenced).
  pool.release(a);
  pool.release(a);
  refs[size_t(a)] = 0;
  EXPECT_EQ(pool.lookup(col.key()), -1);
  ++lookups;
  EXPECT_EQ(pool.refs(a), 0);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.stats().lookups, lookups);
  EXPECT_EQ(pool.stats().hits, 1);
  EXPECT_EQ(pool.stats().evictions, 0);
}

TEST(BlockPool, PublishOfAPublishedKeyKeepsTheFirstBlock) {
  BlockPool pool(4);
  std::vector<int32_t> refs(4, 0);
  const Key k = make_key(20), k2 = make_key(21);
  const int32_t a = pool.allocate(), b = pool.allocate();
  refs[size_t(a)] = refs[size_t(b)] = 1;
  EXPECT_TRUE(pool.publish(a, k.key()));
  EXPECT_FALSE(pool.publish(b, k.key()));
  EXPECT_FALSE(pool.published(b));
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_TRUE(pool.publish(a, k.key()));    // already a's key
  EXPECT_FALSE(pool.publish(a, k2.key()));  // a is published under another key
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.lookup(k.key()), a);
  refs[size_t(a)] = 2;
  EXPECT_EQ(pool.lookup(k2.key()), -1);
  EXPECT_POOL_OK(pool, refs);
  // The unpublished duplicate is freed as usual (empty, not cached).
  pool.release(b);
  refs[size_t(b)] = 0;
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_EQ(pool.available(), 3);
  EXPECT_POOL_OK(pool, refs);
  // Only referenced, full blocks can be published.
  EXPECT_DSA_ERROR(pool.publish(b, k2.key()), "must be referenced and full");
  Key short_key = k2;
  short_key.toks.resize(10);
  EXPECT_DSA_ERROR(pool.publish(a, short_key.key()), "must be referenced and full");
  EXPECT_POOL_OK(pool, refs);
}

TEST(BlockPool, ClearCacheForgetsOnlyUnreferencedBlocks) {
  BlockPool pool(5);
  std::vector<int32_t> refs(5, 0);
  const Key ka = make_key(30), kb = make_key(31);
  const int32_t a = pool.allocate(), b = pool.allocate();
  refs[size_t(b)] = 1;
  pool.publish(a, ka.key());
  pool.publish(b, kb.key());
  pool.release(a);
  EXPECT_EQ(pool.cached(), 2);
  EXPECT_POOL_OK(pool, refs);
  pool.clear_cache();
  EXPECT_POOL_OK(pool, refs);
  EXPECT_EQ(pool.cached(), 1);
  EXPECT_FALSE(pool.published(a));
  EXPECT_TRUE(pool.published(b));
  EXPECT_EQ(pool.available(), 4);
  EXPECT_EQ(pool.lookup(ka.key()), -1);
  EXPECT_EQ(pool.lookup(kb.key()), b);
  refs[size_t(b)] = 2;
  EXPECT_EQ(pool.stats().evictions, 0);
  EXPECT_EQ(pool.stats().lookups, 2);
  EXPECT_EQ(pool.stats().hits, 1);
  EXPECT_POOL_OK(pool, refs);
  pool.release(b);
  pool.release(b);
  refs[size_t(b)] = 0;
  pool.clear_cache();
  EXPECT_EQ(pool.cached(), 0);
  EXPECT_EQ(pool.available(), 5);
  EXPECT_POOL_OK(pool, refs);
}

// Random operations against a shadow model of the pool: reference counts, keys, LRU order.
TEST(BlockPool, RandomOperationsMatchAShadowModel) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int64_t n = 12;
    BlockPool pool(n);
    std::vector<int32_t> refs(size_t(n), 0);
    std::vector<int> key_of(size_t(n), -1);  // shadow: which key index each block is published under
    std::map<int, int32_t> block_of;         // key index -> block
    std::list<int32_t> lru;                  // front: least recently used
    std::vector<Key> keys;
    for (int i = 0; i < 24; ++i) keys.push_back(make_key(100 + uint64_t(i), uint64_t(i % 3), 5));
    int64_t lookups = 0, hits = 0, evictions = 0;
    auto owned = [&]() {
      std::vector<int32_t> v;
      for (int32_t b = 0; b < n; ++b)
        if (refs[size_t(b)] > 0) v.push_back(b);
      return v;
    };
    for (int op = 0; op < 4000 && !HasFailure(); ++op) {
      const int what = int(rng() % 6);
      if (what == 0) {  // allocate
        const int32_t b = pool.allocate();
        int64_t empty = 0;
        for (int32_t x = 0; x < n; ++x) empty += refs[size_t(x)] == 0 && key_of[size_t(x)] < 0;
        if (empty > 0) {
          ASSERT_GE(b, 0);
          EXPECT_TRUE(refs[size_t(b)] == 0 && key_of[size_t(b)] < 0) << "allocate took a non-empty block " << b;
        } else if (!lru.empty()) {
          EXPECT_EQ(b, lru.front()) << "not the least recently used cached block";
          lru.pop_front();
          block_of.erase(key_of[size_t(b)]);
          key_of[size_t(b)] = -1;
          ++evictions;
        } else {
          EXPECT_EQ(b, -1);
        }
        if (b >= 0) refs[size_t(b)] = 1;
      } else if (what == 1) {  // retain an owned block
        auto v = owned();
        if (v.empty()) continue;
        const int32_t b = v[rng() % v.size()];
        pool.retain(b);
        ++refs[size_t(b)];
      } else if (what == 2 || what == 3) {  // release an owned block
        auto v = owned();
        if (v.empty()) continue;
        const int32_t b = v[rng() % v.size()];
        pool.release(b);
        if (--refs[size_t(b)] == 0 && key_of[size_t(b)] >= 0) lru.push_back(b);
      } else if (what == 4) {  // publish an owned block under a random key
        auto v = owned();
        if (v.empty()) continue;
        const int32_t b = v[rng() % v.size()];
        const int k = int(rng() % keys.size());
        const bool ok = pool.publish(b, keys[size_t(k)].key());
        bool expect;
        if (key_of[size_t(b)] >= 0) expect = key_of[size_t(b)] == k;
        else if (block_of.count(k)) expect = false;
        else {
          expect = true;
          key_of[size_t(b)] = k;
          block_of[k] = b;
        }
        EXPECT_EQ(ok, expect);
      } else {  // lookup
        const int k = int(rng() % keys.size());
        const int32_t b = pool.lookup(keys[size_t(k)].key());
        ++lookups;
        auto it = block_of.find(k);
        if (it == block_of.end()) {
          EXPECT_EQ(b, -1);
        } else {
          ++hits;
          EXPECT_EQ(b, it->second);
          if (refs[size_t(it->second)] == 0) lru.remove(it->second);
          ++refs[size_t(it->second)];
        }
      }
      if (rng() % 200 == 0) {
        pool.clear_cache();
        for (int32_t b : lru) {
          block_of.erase(key_of[size_t(b)]);
          key_of[size_t(b)] = -1;
        }
        lru.clear();
      }
      ASSERT_NO_THROW(pool.check(&refs)) << "op " << op;
      EXPECT_EQ(pool.available(), int64_t(std::count(refs.begin(), refs.end(), 0)));
      EXPECT_EQ(pool.cached(), int64_t(block_of.size()));
      for (int32_t b = 0; b < n; ++b) EXPECT_EQ(pool.published(b), key_of[size_t(b)] >= 0);
    }
    EXPECT_EQ(pool.stats().lookups, lookups);
    EXPECT_EQ(pool.stats().hits, hits);
    EXPECT_EQ(pool.stats().evictions, evictions);
    EXPECT_GT(hits, 0);
    EXPECT_GT(evictions, 0);
  }
}

// ---------------------------------------------------------------------------------------------
// The fake model and the reference ("run alone")
// ---------------------------------------------------------------------------------------------

constexpr uint64_t kH0 = 0x243f6a8885a308d3ull;
// One position of history: its token and the attention form it was computed in (-1: never written).
uint64_t hstep(uint64_t h, int32_t tok, int form) {
  return mix64(h ^ ((uint64_t(uint32_t(tok)) << 2) | uint64_t(form + 1)));
}
int32_t fake_token(uint64_t h, uint64_t seed, uint64_t counter, int64_t vocab) {
  return int32_t(mix64(h ^ mix64(seed ^ mix64(counter + 0x1234))) % uint64_t(vocab));
}
float fake_logprob(uint64_t h, int32_t tok) { return -float(mix64(h + uint64_t(tok)) % 10000) / 1000.0f; }
std::vector<TopLogprob> fake_top(uint64_t h, int32_t tok, int n, int64_t vocab) {
  std::vector<TopLogprob> v;
  for (int i = 0; i < n; ++i) v.push_back({int32_t((tok + 1 + i) % vocab), fake_logprob(h, tok) - 1.0f - float(i)});
  return v;
}
double fake_prompt_lp(uint64_t h, int32_t target) { return -double(mix64(h * 31 + uint64_t(target)) % 1000003) / 1e5; }

struct Ref {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::vector<TopLogprob>> top;
  FinishReason why = FinishReason::None;
  std::string match;
  std::vector<double> prompt_lp;
};

int64_t max_new_of(const RequestParams& p, const SchedulerConfig& c) {
  return std::min<int64_t>(p.max_tokens, c.max_context - int64_t(p.prompt.size()));
}

// What the fake model gives the request when it runs alone, uninterrupted: prompt tokens in the
// prefill form, generated tokens in the decode (absorbed) form. The stop rules of Scheduler.
Ref reference(const RequestParams& p, const SchedulerConfig& c, uint64_t seed) {
  Ref r;
  const int64_t P = int64_t(p.prompt.size());
  uint64_t h = kH0;
  for (int64_t i = 0; i < P; ++i) {
    h = hstep(h, p.prompt[size_t(i)], c.prompt_absorbed ? 1 : 0);
    if (p.prompt_logprobs && i + 1 < P) r.prompt_lp.push_back(fake_prompt_lp(h, p.prompt[size_t(i + 1)]));
  }
  const int64_t max_new = max_new_of(p, c);
  if (max_new <= 0) {
    r.why = FinishReason::Length;
    return r;
  }
  for (int64_t k = 0;; ++k) {
    const int32_t t = fake_token(h, seed, uint64_t(k), c.vocab_size);
    r.tokens.push_back(t);
    r.logprobs.push_back(fake_logprob(h, t));
    if (p.top_logprobs > 0) r.top.push_back(fake_top(h, t, p.top_logprobs, c.vocab_size));
    if (t == c.eos_id && !p.ignore_eos) {
      r.why = FinishReason::Stop;
      break;
    }
    if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) != p.stop_token_ids.end()) {
      r.why = FinishReason::Stop;
      r.match = "token " + std::to_string(t);
      break;
    }
    if (k + 1 >= max_new) {
      r.why = FinishReason::Length;
      break;
    }
    h = hstep(h, t, 1);
  }
  return r;
}

// Token stream of a request with no stop condition at all (to pick stop tokens from).
std::vector<int32_t> free_stream(std::vector<int32_t> prompt, uint64_t seed, int64_t n, const SchedulerConfig& c) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = n;
  SchedulerConfig cc = c;
  cc.eos_id = -1;
  cc.max_context = int64_t(p.prompt.size()) + n + 1;
  return reference(p, cc, seed).tokens;
}

// The physical KV cache: every plan row writes its tokens through its block table, then every row
// reads its whole history back through the table.
class FakeModel {
 public:
  struct Slot {
    int32_t tok = -1;
    int8_t form = -1;
  };
  FakeModel(const BlockPool& pool, int64_t vocab) : pool_(pool), vocab_(vocab), kv_(size_t(pool.num_blocks() * B)) {}

  StepResults run(const StepPlan& plan) {
    StepResults res;
    for (const auto& row : plan.rows) {
      const int64_t end = row.start_pos + row.n_new;
      if (!row.blocks || int64_t(row.blocks->size()) * B < end) {
        ADD_FAILURE() << "request " << row.id << ": block table does not cover " << end << " tokens";
        return res;
      }
      std::set<int32_t> distinct(row.blocks->begin(), row.blocks->end());
      EXPECT_EQ(distinct.size(), row.blocks->size()) << "request " << row.id << " holds a block twice";
      for (int64_t k = 0; k < row.n_new; ++k) {
        const int64_t pos = row.start_pos + k;
        const int32_t b = (*row.blocks)[size_t(pos / B)];
        EXPECT_TRUE(b >= 0 && b < pool_.num_blocks());
        EXPECT_EQ(pool_.refs(b), 1) << "request " << row.id << " writes shared block " << b;
        kv_[size_t(b * B + pos % B)] = Slot{plan.ids[size_t(row.ids_offset + k)], int8_t(row.absorbed ? 1 : 0)};
      }
    }
    for (const auto& row : plan.rows) {
      const int64_t end = row.start_pos + row.n_new;
      const int64_t lp0 = row.start_pos + row.lp_row0, lp1 = lp0 + int64_t(row.lp_targets.size());
      if (!row.lp_targets.empty()) {
        EXPECT_TRUE(lp0 >= row.start_pos && lp1 <= end) << "prompt-logprob rows outside the chunk of request " << row.id;
      }
      uint64_t h = kH0;
      for (int64_t pos = 0; pos < end; ++pos) {
        const Slot& s = kv_[size_t((*row.blocks)[size_t(pos / B)] * B + pos % B)];
        h = hstep(h, s.tok, s.form);
        if (pos >= lp0 && pos < lp1) res.prompt_lp.push_back(fake_prompt_lp(h, row.lp_targets[size_t(pos - lp0)]));
      }
      if (row.sample) {
        const int32_t t = fake_token(h, row.sampling.seed, row.sampling.counter, vocab_);
        res.tokens.push_back(t);
        res.logprobs.push_back(fake_logprob(h, t));
        res.top.push_back(fake_top(h, t, row.top_logprobs, vocab_));
      }
    }
    return res;
  }

 private:
  const BlockPool& pool_;
  int64_t vocab_;
  std::vector<Slot> kv_;
};

// ---------------------------------------------------------------------------------------------
// The harness: a scheduler, a pool, the fake model, and what every request received.
// ---------------------------------------------------------------------------------------------

struct Tracked {
  RequestParams p;
  uint64_t seed = 0;
  int64_t P = 0, max_new = 0;
  Ref ref;
  std::vector<int32_t> got;
  std::vector<float> got_lp;
  std::vector<std::vector<TopLogprob>> got_top;
  std::vector<double> plp;
  bool plp_received = false;
  int64_t plp_next = 0;  // next prompt position whose logprob entry is due
  bool cancel_requested = false, finished = false;
  bool expect_error = false;  // the test failed its plan on purpose
  RequestOutput fin;
  std::vector<int32_t> first_row;  // {start_pos, n_new} of the first row it was planned
};

int group_of(const StepPlan::Row& row, int64_t P) {
  return row.n_new == 1 && row.sample && row.start_pos >= P ? 0 : row.absorbed ? 1 : 2;
}

class Harness {
 public:
  Harness(int64_t blocks, const SchedulerConfig& c) : pool(blocks), sched(pool, c), model(pool, c.vocab_size) {}
  const SchedulerConfig& cfg() const { return sched.config(); }

  // Queues the request with an explicit seed; returns its id. Throws what add() throws.
  RequestId add(RequestParams p, uint64_t seed) {
    p.sampling.seed = seed;
    const RequestParams copy = p;
    const RequestId id = sched.add(std::move(p));
    EXPECT_EQ(reqs.count(id), 0u) << "id " << id << " reused";
    Tracked& t = reqs[id];
    t.p = copy;
    t.seed = seed;
    t.P = int64_t(copy.prompt.size());
    t.max_new = max_new_of(copy, cfg());
    t.ref = reference(copy, cfg(), seed);
    return id;
  }

  void check_now(const char* where) {
    try {
      sched.check();
    } catch (const Error& e) {
      ADD_FAILURE() << "Scheduler::check() " << where << " (step " << steps << "): " << e.what();
    }
  }

  void deliver(const RequestOutput& o) {
    auto it = reqs.find(o.id);
    if (it == reqs.end()) {
      ADD_FAILURE() << "output for unknown request " << o.id;
      return;
    }
    Tracked& t = it->second;
    EXPECT_FALSE(t.finished) << "output for request " << o.id << " after it finished";
    EXPECT_EQ(o.logprobs.size(), o.tokens.size());
    if (t.p.top_logprobs > 0) EXPECT_EQ(o.top.size(), o.tokens.size());
    else EXPECT_TRUE(o.top.empty());
    t.got.insert(t.got.end(), o.tokens.begin(), o.tokens.end());
    t.got_lp.insert(t.got_lp.end(), o.logprobs.begin(), o.logprobs.end());
    t.got_top.insert(t.got_top.end(), o.top.begin(), o.top.end());
    if (!o.prompt_logprobs.empty()) {
      EXPECT_FALSE(t.plp_received) << "prompt logprobs of request " << o.id << " sent twice";
      EXPECT_TRUE(t.p.prompt_logprobs) << "prompt logprobs nobody asked for, request " << o.id;
      t.plp = o.prompt_logprobs;
      t.plp_received = true;
    }
    if (o.finished) {
      t.finished = true;
      t.fin = o;
      EXPECT_NE(o.finish, FinishReason::None);
      EXPECT_EQ(o.completion_tokens, int64_t(t.got.size())) << "request " << o.id;
      EXPECT_EQ(o.prompt_tokens, t.P) << "request " << o.id;
      EXPECT_EQ(o.cached_tokens % B, 0);
      if (!t.p.use_prefix_cache || t.p.prompt_logprobs || !cfg().prefix_cache) { EXPECT_EQ(o.cached_tokens, 0); }
      ++finished_count[int(o.finish)];
    }
  }

  void verify_plan(const StepPlan& plan) {
    EXPECT_LE(int64_t(plan.rows.size()), cfg().max_seqs);
    EXPECT_LE(plan.n_decode, int64_t(plan.rows.size()));
    int64_t tokens = 0;
    int prev_group = 0;
    RequestId prev_decode = 0;
    std::set<RequestId> seen;
    for (size_t i = 0; i < plan.rows.size(); ++i) {
      const auto& row = plan.rows[i];
      auto it = reqs.find(row.id);
      if (it == reqs.end()) {
        ADD_FAILURE() << "plan row for unknown request " << row.id;
        continue;
      }
      Tracked& t = it->second;
      EXPECT_FALSE(t.finished) << "plan row for finished request " << row.id;
      EXPECT_TRUE(seen.insert(row.id).second) << "two rows for request " << row.id;
      if (t.first_row.empty()) t.first_row = {int32_t(row.start_pos), int32_t(row.n_new)};
      EXPECT_EQ(row.ids_offset, tokens);
      EXPECT_GE(row.n_new, 1);
      EXPECT_GE(row.start_pos, 0);
      tokens += row.n_new;
      std::vector<int32_t> hist = t.p.prompt;
      hist.insert(hist.end(), t.got.begin(), t.got.end());
      const int64_t end = row.start_pos + row.n_new;
      EXPECT_LE(end, int64_t(hist.size())) << "request " << row.id;
      if (end <= int64_t(hist.size()) && row.ids_offset + row.n_new <= int64_t(plan.ids.size())) {
        EXPECT_TRUE(std::equal(hist.begin() + row.start_pos, hist.begin() + end, plan.ids.begin() + row.ids_offset))
            << "plan ids of request " << row.id << " are not its tokens";
      }
      const bool want_sample = end == int64_t(hist.size()) && int64_t(t.got.size()) < t.max_new;
      EXPECT_EQ(row.sample, want_sample) << "request " << row.id;
      if (row.sample) {
        EXPECT_EQ(row.sampling.counter, uint64_t(t.got.size()));
        EXPECT_EQ(row.sampling.seed, t.seed);
        EXPECT_EQ(row.sampling.temperature, t.p.sampling.temperature);
        EXPECT_EQ(row.sampling.top_k, int32_t(t.p.sampling.top_k));
        EXPECT_EQ(row.sampling.top_p, t.p.sampling.top_p);
        EXPECT_EQ(row.top_logprobs, t.p.top_logprobs);
      }
      EXPECT_EQ(row.absorbed, row.start_pos >= t.P || cfg().prompt_absorbed) << "request " << row.id;
      if (row.start_pos < t.P) {
        EXPECT_LE(end, t.P) << "a chunk mixes prompt and generated tokens";
        if (cfg().max_prefill_chunk > 0) { EXPECT_LE(row.n_new, cfg().max_prefill_chunk); }
      }
      if (row.start_pos >= t.P && row.n_new > 1) ++recompute_rows;
      EXPECT_TRUE(row.blocks && int64_t(row.blocks->size()) * B >= end);
      const int g = group_of(row, t.P);
      EXPECT_EQ(g == 0, int64_t(i) < plan.n_decode) << "row " << i << " of request " << row.id;
      EXPECT_GE(g, prev_group) << "plan order: decode rows, absorbed chunks, then prefill-form chunks";
      prev_group = g;
      if (g == 0) {
        EXPECT_GT(row.id, prev_decode) << "decode rows oldest first";
        prev_decode = row.id;
      }
      if (!t.p.prompt_logprobs) {
        EXPECT_TRUE(row.lp_targets.empty());
      } else if (!row.lp_targets.empty()) {
        const int64_t j0 = row.start_pos + row.lp_row0;
        EXPECT_EQ(j0, t.plp_next) << "prompt logprobs of request " << row.id << " skipped or computed twice";
        for (size_t k = 0; k < row.lp_targets.size(); ++k) {
          const int64_t j = j0 + int64_t(k);
          EXPECT_LT(j + 1, t.P);
          if (j + 1 < t.P) { EXPECT_EQ(row.lp_targets[k], t.p.prompt[size_t(j + 1)]); }
        }
        t.plp_next = j0 + int64_t(row.lp_targets.size());
      }
    }
    EXPECT_EQ(tokens, int64_t(plan.ids.size()));
    EXPECT_LE(tokens, cfg().max_batch_tokens);
    max_rows = std::max(max_rows, int64_t(plan.rows.size()));
    max_step_tokens = std::max(max_step_tokens, tokens);
  }

  // One engine step: schedule, run the fake model, commit; check() after each phase.
  // `mid` runs between the forward and commit (e.g. a cancel arriving while the step runs).
  // With `fail_it` the forward "fails": Scheduler::fail() instead of commit().
  StepPlan step(const std::function<void()>& mid = nullptr, bool fail_it = false) {
    ++steps;
    std::vector<RequestOutput> ended;
    StepPlan plan = sched.schedule(ended);
    for (const auto& o : ended) {
      EXPECT_EQ(o.finish, FinishReason::Cancelled);
      deliver(o);
    }
    check_now("after schedule");
    EXPECT_EQ(plan.empty(), !sched.has_work()) << "an empty plan while requests wait (hang) or work left unplanned";
    verify_plan(plan);
    if (plan.empty()) return plan;
    const StepResults res = model.run(plan);
    if (mid) mid();
    check_now("before commit");
    if (fail_it) {
      const std::vector<RequestOutput> outs = sched.fail(plan, "injected failure");
      EXPECT_EQ(outs.size(), plan.rows.size());
      for (const auto& o : outs) {
        EXPECT_EQ(o.finish, FinishReason::Error);
        EXPECT_EQ(o.error, "injected failure");
        if (reqs.count(o.id)) reqs[o.id].expect_error = true;
        deliver(o);
      }
      check_now("after fail");
      return plan;
    }
    for (const auto& o : sched.commit(plan, res)) deliver(o);
    check_now("after commit");
    return plan;
  }

  void run_all(int64_t max_steps = 100000) {
    const int64_t limit = steps + max_steps;
    while (sched.has_work() && !::testing::Test::HasFailure()) {
      ASSERT_LT(steps, limit) << "requests did not finish within " << max_steps << " steps";
      step();
    }
  }

  // Every request finished, with exactly its run-alone tokens (a prefix of them when cancelled).
  void verify_final() {
    for (auto& [id, t] : reqs) {
      SCOPED_TRACE("request " + std::to_string(id));
      ASSERT_TRUE(t.finished);
      EXPECT_EQ(t.fin.finish == FinishReason::Error, t.expect_error) << t.fin.error;
      if (t.fin.finish == FinishReason::Cancelled || t.fin.finish == FinishReason::Error) {
        if (t.fin.finish == FinishReason::Cancelled) { EXPECT_TRUE(t.cancel_requested) << "cancelled without a cancel"; }
        ASSERT_LE(t.got.size(), t.ref.tokens.size());
        EXPECT_TRUE(std::equal(t.got.begin(), t.got.end(), t.ref.tokens.begin()));
        EXPECT_TRUE(std::equal(t.got_lp.begin(), t.got_lp.end(), t.ref.logprobs.begin()));
      } else {
        EXPECT_EQ(t.got, t.ref.tokens);
        EXPECT_EQ(t.got_lp, t.ref.logprobs);
        EXPECT_EQ(t.fin.finish, t.ref.why);
        EXPECT_EQ(t.fin.stop_match, t.ref.match);
        if (t.p.top_logprobs > 0) {
          ASSERT_EQ(t.got_top.size(), t.ref.top.size());
          for (size_t i = 0; i < t.got_top.size(); ++i) {
            ASSERT_EQ(t.got_top[i].size(), t.ref.top[i].size());
            for (size_t j = 0; j < t.got_top[i].size(); ++j) {
              EXPECT_EQ(t.got_top[i][j].token, t.ref.top[i][j].token);
              EXPECT_EQ(t.got_top[i][j].logprob, t.ref.top[i][j].logprob);
            }
          }
        }
        if (t.p.prompt_logprobs) {
          EXPECT_EQ(t.plp, t.ref.prompt_lp);
          EXPECT_EQ(t.plp_next, std::max<int64_t>(t.P - 1, 0));
        }
      }
      if (t.plp_received) { EXPECT_EQ(t.plp, t.ref.prompt_lp); }
    }
    EXPECT_FALSE(sched.has_work());
    EXPECT_EQ(pool.in_use(), 0) << "blocks leaked";
    std::vector<int32_t> zero(size_t(pool.num_blocks()), 0);
    EXPECT_NO_THROW(pool.check(&zero));
    const SchedulerStats s = sched.stats();
    EXPECT_EQ(s.running, 0);
    EXPECT_EQ(s.waiting, 0);
    EXPECT_EQ(s.blocks_used, 0);
    EXPECT_EQ(s.finished_stop, finished_count[int(FinishReason::Stop)]);
    EXPECT_EQ(s.finished_length, finished_count[int(FinishReason::Length)]);
    EXPECT_EQ(s.cancelled, finished_count[int(FinishReason::Cancelled)]);
    EXPECT_EQ(s.errors, finished_count[int(FinishReason::Error)]);
    int64_t generated = 0, preemptions = 0;
    for (auto& [id, t] : reqs) generated += int64_t(t.got.size()), preemptions += t.fin.preemptions;
    EXPECT_EQ(s.generated_tokens, generated);
    EXPECT_EQ(s.preemptions, preemptions);
  }

  BlockPool pool;
  Scheduler sched;
  FakeModel model;
  std::map<RequestId, Tracked> reqs;
  int64_t steps = 0, recompute_rows = 0, max_rows = 0, max_step_tokens = 0;
  int64_t finished_count[8] = {};
};

SchedulerConfig make_cfg(int64_t budget = 256, int64_t seqs = 16, int64_t chunk = 0, int64_t ctx = 1024,
                         int64_t vocab = 64, int32_t eos = -1) {
  SchedulerConfig c;
  c.max_batch_tokens = budget;
  c.max_seqs = seqs;
  c.max_prefill_chunk = chunk;
  c.max_context = ctx;
  c.vocab_size = vocab;
  c.eos_id = eos;
  return c;
}

std::vector<int32_t> rand_tokens(int64_t n, uint64_t seed, int64_t vocab = 64) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = int32_t(mix64(seed * 7919 + uint64_t(i) + 1) % uint64_t(vocab));
  return t;
}

RequestParams make_req(std::vector<int32_t> prompt, int64_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  return p;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---------------------------------------------------------------------------------------------
// Scheduler: deterministic cases
// ---------------------------------------------------------------------------------------------

TEST(Scheduler, RejectsBadConfigs) {
  BlockPool pool(4);
  SchedulerConfig c = make_cfg();
  c.max_batch_tokens = 0;
  EXPECT_DSA_ERROR((void)Scheduler(pool, c), "max_batch_tokens");
  c = make_cfg();
  c.max_seqs = 0;
  EXPECT_DSA_ERROR((void)Scheduler(pool, c), "max_seqs");
  c = make_cfg();
  c.max_prefill_chunk = -1;
  EXPECT_DSA_ERROR((void)Scheduler(pool, c), "max_prefill_chunk");
  c = make_cfg();
  c.max_context = 0;
  EXPECT_DSA_ERROR((void)Scheduler(pool, c), "context");
  c = make_cfg();
  c.vocab_size = 0;
  EXPECT_DSA_ERROR((void)Scheduler(pool, c), "vocabulary");
}

TEST(Scheduler, AddRejectsBadRequests) {
  Harness h(8, make_cfg(256, 16, 0, /*ctx=*/256, /*vocab=*/100));
  auto ok = [&](RequestParams p) { EXPECT_NO_THROW(h.add(std::move(p), 1)); };
  const auto base = [&](int64_t n = 10, int64_t max_tokens = 4) { return make_req(rand_tokens(n, 1, 100), max_tokens); };

  EXPECT_DSA_ERROR(h.add(make_req({}, 4), 1), "prompt is empty");
  RequestParams p = base();
  p.prompt[3] = -1;
  EXPECT_DSA_ERROR(h.add(p, 1), "prompt token -1 at index 3", "outside the vocabulary [0, 100)");
  p = base();
  p.prompt[9] = 100;
  EXPECT_DSA_ERROR(h.add(p, 1), "prompt token 100 at index 9", "outside the vocabulary");
  p = base();
  p.prompt[0] = 99;
  ok(p);

  p = base();
  p.max_tokens = -1;
  EXPECT_DSA_ERROR(h.add(p, 1), "max_tokens is -1");
  // Context: to generate, the prompt must be shorter than the context; with max_tokens 0 it may fill it.
  EXPECT_DSA_ERROR(h.add(base(256, 1), 1), "256 tokens", "shorter than the model's context of 256");
  EXPECT_DSA_ERROR(h.add(base(257, 0), 1), "257 tokens, more than the model's context of 256");
  ok(base(256, 0));
  ok(base(255, 100));  // clamped to one new token

  p = base();
  p.top_logprobs = 21;
  EXPECT_DSA_ERROR(h.add(p, 1), "top_logprobs 21", "[0, 20]");
  p.top_logprobs = -1;
  EXPECT_DSA_ERROR(h.add(p, 1), "top_logprobs -1");
  p.top_logprobs = 20;
  ok(p);

  p = base();
  p.sampling.temperature = -0.5f;
  EXPECT_DSA_ERROR(h.add(p, 1), "temperature");
  p.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  EXPECT_DSA_ERROR(h.add(p, 1), "temperature");
  p = base();
  p.sampling.top_p = 0.0f;
  EXPECT_DSA_ERROR(h.add(p, 1), "top_p");
  p.sampling.top_p = 1.5f;
  EXPECT_DSA_ERROR(h.add(p, 1), "top_p");
  p = base();
  p.sampling.top_k = -1;
  EXPECT_DSA_ERROR(h.add(p, 1), "top_k -1");

  p = base();
  p.stop_token_ids = {5, 100};
  EXPECT_DSA_ERROR(h.add(p, 1), "stop token id 100", "outside the vocabulary");
  p.stop_token_ids = {-2};
  EXPECT_DSA_ERROR(h.add(p, 1), "stop token id -2");
  p = base();
  p.stop = {""};
  EXPECT_DSA_ERROR(h.add(p, 1), "stop string is empty");
  p.stop = {"x"};
  EXPECT_DSA_ERROR(h.add(p, 1), "stop strings need a tokenizer");

  // Every add above that threw queued nothing.
  EXPECT_EQ(h.sched.stats().waiting, int64_t(h.reqs.size()));
  h.run_all();
  h.verify_final();
}

TEST(Scheduler, AddRejectsRequestsThatCanNeverFitThePool) {
  Harness h(2, make_cfg(256, 16, 0, /*ctx=*/1024));
  // 100 prompt + 29 new = 128 tokens fed (the last new token is never fed back): 2 blocks.
  EXPECT_NO_THROW(h.add(make_req(rand_tokens(100, 2), 29), 1));
  EXPECT_DSA_ERROR(h.add(make_req(rand_tokens(100, 2), 30), 1), "need 3 KV blocks", "the pool has 2");
  EXPECT_DSA_ERROR(h.add(make_req(rand_tokens(129, 2), 0), 1), "KV blocks");
  EXPECT_NO_THROW(h.add(make_req(rand_tokens(128, 3), 1), 1));
  // The context clamps max_tokens first: 60 + min(1000, 100 - 60) - 1 = 99 tokens, 2 blocks.
  Harness c(2, make_cfg(256, 16, 0, /*ctx=*/100));
  EXPECT_NO_THROW(c.add(make_req(rand_tokens(60, 4), 1000), 1));
  c.run_all();
  c.verify_final();
  EXPECT_EQ(c.reqs.begin()->second.got.size(), 40u);
  EXPECT_EQ(c.reqs.begin()->second.fin.finish, FinishReason::Length);
  h.run_all();
  h.verify_final();
}

TEST(Scheduler, RunAloneMatchesTheReference) {
  for (bool absorbed : {false, true}) {
    SchedulerConfig c = make_cfg(256, 16, 0, 1024);
    c.prompt_absorbed = absorbed;
    Harness h(32, c);
    RequestParams p = make_req(rand_tokens(150, 9), 20);
    p.top_logprobs = 3;
    p.prompt_logprobs = true;
    h.add(p, 77);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.got.size(), 20u);
    EXPECT_EQ(t.plp.size(), 149u);
    EXPECT_EQ(t.fin.preemptions, 0);
    // The seed matters (the draws are a function of seed and counter).
    EXPECT_NE(reference(p, c, 77).tokens, reference(p, c, 78).tokens);
  }
}

TEST(Scheduler, DecodeRowsFirstThenPrefillChunks) {
  const int64_t budget = 100;
  Harness h(64, make_cfg(budget, 16, 0, 1024));
  const RequestId a = h.add(make_req(rand_tokens(10, 1), 50), 1);
  const RequestId b = h.add(make_req(rand_tokens(20, 2), 50), 2);
  StepPlan s = h.step();
  ASSERT_EQ(s.rows.size(), 2u);
  EXPECT_EQ(s.n_decode, 0);
  EXPECT_EQ(s.rows[0].id, a);
  EXPECT_EQ(s.rows[1].id, b);
  EXPECT_TRUE(s.rows[0].sample && s.rows[1].sample);
  EXPECT_EQ(s.ids.size(), 30u);
  s = h.step();
  ASSERT_EQ(s.rows.size(), 2u);
  EXPECT_EQ(s.n_decode, 2);
  EXPECT_EQ(s.rows[0].start_pos, 10);
  EXPECT_EQ(s.rows[1].start_pos, 20);

  const int64_t P = 250;
  const RequestId c = h.add(make_req(rand_tokens(P, 3), 5), 3);
  int64_t done = 0;
  while (done < P) {
    s = h.step();
    ASSERT_EQ(s.rows.size(), 3u);
    EXPECT_EQ(s.n_decode, 2);
    EXPECT_EQ(s.rows[0].id, a);
    EXPECT_EQ(s.rows[1].id, b);
    EXPECT_EQ(s.rows[2].id, c);
    const int64_t n = std::min(P - done, budget - 2);
    EXPECT_EQ(s.rows[2].start_pos, done);
    EXPECT_EQ(s.rows[2].n_new, n);
    EXPECT_EQ(s.rows[2].ids_offset, 2);
    EXPECT_EQ(s.rows[2].sample, done + n == P);
    done += n;
    if (HasFailure()) return;
  }
  s = h.step();
  ASSERT_EQ(s.rows.size(), 3u);
  EXPECT_EQ(s.n_decode, 3);
  h.run_all();
  h.verify_final();
}

TEST(Scheduler, TokenBudgetAndMaxSeqs) {
  Harness h(64, make_cfg(/*budget=*/5, /*seqs=*/3));
  std::vector<RequestId> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(h.add(make_req(rand_tokens(3, 10 + uint64_t(i)), 4), uint64_t(i)));
  StepPlan s = h.step();
  // A's prompt (3) and 2 of B's 3 tokens fill the budget; C waits.
  ASSERT_EQ(s.rows.size(), 2u);
  EXPECT_EQ(s.rows[0].id, ids[0]);
  EXPECT_EQ(s.rows[0].n_new, 3);
  EXPECT_EQ(s.rows[1].id, ids[1]);
  EXPECT_EQ(s.rows[1].n_new, 2);
  EXPECT_FALSE(s.rows[1].sample);
  EXPECT_EQ(h.sched.stats().running, 2);
  // A decodes, B finishes its prompt, C is admitted with its 3 tokens: 5 tokens, 3 sequences.
  s = h.step();
  ASSERT_EQ(s.rows.size(), 3u);
  EXPECT_EQ(s.n_decode, 1);
  EXPECT_EQ(s.ids.size(), 5u);
  EXPECT_EQ(h.sched.stats().running, 3);
  EXPECT_EQ(h.sched.stats().waiting, 3);
  while (h.sched.has_work() && !HasFailure()) {
    h.step();
    EXPECT_LE(h.sched.stats().running, 3);
    ASSERT_LT(h.steps, 1000);
  }
  EXPECT_EQ(h.max_rows, 3);
  EXPECT_EQ(h.max_step_tokens, 5);
  h.verify_final();
}

TEST(Scheduler, ChunkedPrefillWhileOthersDecode) {
  const int64_t chunk = 64, P = 300;
  Harness h(64, make_cfg(256, 16, chunk));
  const RequestId a = h.add(make_req(rand_tokens(5, 1), 30), 1);
  h.step();
  const RequestId b = h.add(make_req(rand_tokens(P, 2), 3), 2);
  for (int64_t done = 0; done < P;) {
    const size_t a_before = h.reqs[a].got.size();
    StepPlan s = h.step();
    ASSERT_EQ(s.rows.size(), 2u);
    EXPECT_EQ(s.rows[0].id, a);
    EXPECT_EQ(s.n_decode, 1);
    EXPECT_EQ(s.rows[1].id, b);
    EXPECT_EQ(s.rows[1].start_pos, done);
    EXPECT_EQ(s.rows[1].n_new, std::min(chunk, P - done));
    EXPECT_EQ(h.reqs[a].got.size(), a_before + 1) << "the decoding request stalled during the prefill";
    done += s.rows[1].n_new;
    EXPECT_EQ(h.reqs[b].got.size(), done == P ? 1u : 0u);
    if (HasFailure()) return;
  }
  h.run_all();
  h.verify_final();
}

TEST(Scheduler, CancelFreesBlocksAtTheNextSchedule) {
  Harness h(16, make_cfg());
  const RequestId a = h.add(make_req(rand_tokens(100, 1), 50), 1);
  h.step();
  h.step();
  const int64_t used = h.pool.in_use();
  EXPECT_EQ(used, 2);
  h.sched.cancel(a);
  h.reqs[a].cancel_requested = true;
  EXPECT_EQ(h.pool.in_use(), used) << "cancel takes effect at the next schedule";
  EXPECT_TRUE(h.sched.has_work());
  std::vector<RequestOutput> ended;
  StepPlan s = h.sched.schedule(ended);
  EXPECT_TRUE(s.empty());
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].id, a);
  EXPECT_TRUE(ended[0].finished);
  EXPECT_EQ(ended[0].finish, FinishReason::Cancelled);
  EXPECT_EQ(std::string(finish_reason_name(ended[0].finish)), "cancelled");
  EXPECT_EQ(ended[0].completion_tokens, 2);
  h.deliver(ended[0]);
  EXPECT_EQ(h.pool.in_use(), 0);
  EXPECT_FALSE(h.sched.has_work());
  h.check_now("after cancel");

  // A waiting request (never planned) and unknown/finished ids.
  Harness w(16, make_cfg(256, /*seqs=*/1));
  const RequestId x = w.add(make_req(rand_tokens(10, 2), 5), 2);
  const RequestId y = w.add(make_req(rand_tokens(10, 3), 5), 3);
  w.step();
  EXPECT_EQ(w.sched.stats().waiting, 1);
  w.sched.cancel(y);
  w.reqs[y].cancel_requested = true;
  w.sched.cancel(12345);  // unknown: ignored
  w.step();
  EXPECT_TRUE(w.reqs[y].finished);
  EXPECT_EQ(w.reqs[y].fin.finish, FinishReason::Cancelled);
  EXPECT_EQ(w.reqs[y].got.size(), 0u);
  EXPECT_FALSE(w.reqs[x].finished);
  w.run_all();
  w.sched.cancel(x);  // finished: ignored
  w.step();
  w.verify_final();
  EXPECT_EQ(w.reqs[x].fin.finish, FinishReason::Length);

  // A cancel that arrives while the step runs: the step's token is delivered, then it ends.
  Harness m(16, make_cfg());
  const RequestId z = m.add(make_req(rand_tokens(10, 4), 50), 4);
  m.step();
  m.step([&] {
    m.sched.cancel(z);
    m.reqs[z].cancel_requested = true;
  });
  EXPECT_EQ(m.reqs[z].got.size(), 2u);
  EXPECT_FALSE(m.reqs[z].finished);
  m.step();
  EXPECT_TRUE(m.reqs[z].finished);
  m.verify_final();
}

TEST(Scheduler, FinishReasons) {
  SchedulerConfig c = make_cfg(256, 16, 0, 1024, 64, /*eos=*/-1);
  const std::vector<int32_t> prompt = rand_tokens(30, 5);
  const uint64_t seed = 11;
  const std::vector<int32_t> stream = free_stream(prompt, seed, 64, c);
  // The first index whose token did not occur before: a stop/eos token that ends exactly there.
  size_t k = 3;
  while (k < stream.size() && std::find(stream.begin(), stream.begin() + int64_t(k), stream[k]) != stream.begin() + int64_t(k)) ++k;
  ASSERT_LT(k, stream.size());
  const int32_t tok = stream[k];

  {  // max_tokens
    Harness h(16, c);
    h.add(make_req(prompt, 7), seed);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.fin.finish, FinishReason::Length);
    EXPECT_EQ(std::string(finish_reason_name(t.fin.finish)), "length");
    EXPECT_EQ(t.got, std::vector<int32_t>(stream.begin(), stream.begin() + 7));
  }
  {  // stop_token_ids: the stop token is the last one delivered
    Harness h(16, c);
    RequestParams p = make_req(prompt, 60);
    p.stop_token_ids = {tok};
    h.add(p, seed);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.fin.finish, FinishReason::Stop);
    EXPECT_EQ(std::string(finish_reason_name(t.fin.finish)), "stop");
    EXPECT_EQ(t.fin.stop_match, "token " + std::to_string(tok));
    EXPECT_EQ(t.got, std::vector<int32_t>(stream.begin(), stream.begin() + int64_t(k) + 1));
  }
  SchedulerConfig ce = c;
  ce.eos_id = tok;
  {  // eos
    Harness h(16, ce);
    h.add(make_req(prompt, 60), seed);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.fin.finish, FinishReason::Stop);
    EXPECT_EQ(t.fin.stop_match, "");
    EXPECT_EQ(t.got, std::vector<int32_t>(stream.begin(), stream.begin() + int64_t(k) + 1));
  }
  {  // ignore_eos: runs past the eos to max_tokens
    Harness h(16, ce);
    RequestParams p = make_req(prompt, 40);
    p.ignore_eos = true;
    h.add(p, seed);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.fin.finish, FinishReason::Length);
    EXPECT_EQ(t.got, std::vector<int32_t>(stream.begin(), stream.begin() + 40));
    EXPECT_GT(k, 0u);
    EXPECT_LT(k, 39u);
  }
  {  // ignore_eos does not ignore stop_token_ids
    Harness h(16, ce);
    RequestParams p = make_req(prompt, 40);
    p.ignore_eos = true;
    p.stop_token_ids = {tok};
    h.add(p, seed);
    h.run_all();
    h.verify_final();
    EXPECT_EQ(h.reqs.begin()->second.fin.finish, FinishReason::Stop);
    EXPECT_EQ(h.reqs.begin()->second.got.size(), k + 1);
  }
  {  // max_tokens 0: the prompt is computed, nothing generated
    Harness h(16, c);
    RequestParams p = make_req(prompt, 0);
    p.prompt_logprobs = true;
    h.add(p, seed);
    h.run_all();
    h.verify_final();
    const Tracked& t = h.reqs.begin()->second;
    EXPECT_EQ(t.fin.finish, FinishReason::Length);
    EXPECT_TRUE(t.got.empty());
    EXPECT_EQ(t.plp.size(), prompt.size() - 1);
  }
  {  // the context ends generation
    SchedulerConfig cc = c;
    cc.max_context = int64_t(prompt.size()) + 5;
    Harness h(16, cc);
    h.add(make_req(prompt, 100), seed);
    h.run_all();
    h.verify_final();
    EXPECT_EQ(h.reqs.begin()->second.fin.finish, FinishReason::Length);
    EXPECT_EQ(h.reqs.begin()->second.got, std::vector<int32_t>(stream.begin(), stream.begin() + 5));
  }
}

// The expected prefix-cache hit of a prompt: the leading whole blocks equal to a cached prompt's
// blocks, never the block holding the last token.
int64_t expected_hit(const std::vector<int32_t>& prompt, const std::vector<int32_t>& cached_prompt) {
  int64_t blocks = 0;
  while ((blocks + 1) * B <= int64_t(cached_prompt.size()) && (blocks + 1) * B <= int64_t(prompt.size()) &&
         std::equal(prompt.begin() + blocks * B, prompt.begin() + (blocks + 1) * B, cached_prompt.begin() + blocks * B))
    ++blocks;
  return std::min(blocks, (int64_t(prompt.size()) - 1) / B) * B;
}

TEST(Scheduler, PrefixCacheReusesAlignedPrefixes) {
  Harness h(64, make_cfg());
  const std::vector<int32_t> doc = rand_tokens(200, 42);
  const RequestId a = h.add(make_req(doc, 3), 1);
  h.run_all();
  EXPECT_EQ(h.reqs[a].fin.cached_tokens, 0);
  EXPECT_EQ(h.pool.in_use(), 0);
  EXPECT_EQ(h.pool.cached(), 3);  // 3 full blocks of prompt

  struct Case {
    std::vector<int32_t> prompt;
  };
  std::vector<Case> cases = {
      {concat(std::vector<int32_t>(doc.begin(), doc.begin() + 130), rand_tokens(20, 43))},  // 2 blocks
      {std::vector<int32_t>(doc.begin(), doc.begin() + 192)},  // 3 cached, the last token's block is recomputed
      {std::vector<int32_t>(doc.begin(), doc.begin() + 193)},  // 3 blocks
      {concat(doc, rand_tokens(100, 44))},                     // 3 blocks, then new ones
      {concat(rand_tokens(64, 45), doc)},                      // other first block: nothing
  };
  int64_t hit_total = 0, queried_total = int64_t(doc.size());
  for (auto& cs : cases) {
    const int64_t want = expected_hit(cs.prompt, doc);
    const int64_t hits_before = h.pool.stats().hits;
    const RequestId id = h.add(make_req(cs.prompt, 4), uint64_t(cs.prompt.size()));
    h.step();
    const Tracked& t = h.reqs[id];
    ASSERT_EQ(t.first_row.size(), 2u);
    EXPECT_EQ(t.first_row[0], want) << "prompt of " << cs.prompt.size();
    EXPECT_EQ(t.first_row[1], std::min(int64_t(cs.prompt.size()) - want, h.cfg().max_batch_tokens));
    EXPECT_EQ(h.pool.stats().hits - hits_before, want / B);
    h.run_all();
    EXPECT_EQ(h.reqs[id].fin.cached_tokens, want);
    hit_total += want;
    queried_total += int64_t(cs.prompt.size());
    EXPECT_EQ(h.sched.stats().prefix_hit_tokens, hit_total);
    EXPECT_EQ(h.sched.stats().prefix_queried_tokens, queried_total);
  }
  EXPECT_GT(hit_total, 0);
  h.verify_final();
}

TEST(Scheduler, PrefixCacheIsNotUsedWhenOptedOut) {
  const std::vector<int32_t> doc = rand_tokens(200, 50);
  for (int mode = 0; mode < 4; ++mode) {
    SCOPED_TRACE("mode " + std::to_string(mode));
    SchedulerConfig c = make_cfg();
    if (mode == 2) c.prefix_cache = false;
    Harness h(64, c);
    h.add(make_req(doc, 2), 1);
    h.run_all();
    EXPECT_EQ(h.pool.cached(), mode == 2 ? 0 : 3);
    RequestParams p = make_req(doc, 2);
    if (mode == 0) p.use_prefix_cache = false;
    if (mode == 1) p.prompt_logprobs = true;
    if (mode == 3) h.sched.set_salt(12345);  // other attention mode: other values
    const int64_t lookups = h.pool.stats().lookups;
    const RequestId id = h.add(p, 2);
    h.run_all();
    EXPECT_EQ(h.reqs[id].first_row[0], 0);
    EXPECT_EQ(h.reqs[id].fin.cached_tokens, 0);
    EXPECT_EQ(h.sched.stats().prefix_hit_tokens, 0);
    if (mode != 3) { EXPECT_EQ(h.pool.stats().lookups, lookups); }
    if (mode == 3) {  // back to the first salt: the first request's blocks are found again
      h.sched.set_salt(0);
      const RequestId again = h.add(make_req(doc, 2), 3);
      h.run_all();
      EXPECT_EQ(h.reqs[again].fin.cached_tokens, 192);
    }
    h.verify_final();
  }
}

TEST(Scheduler, PrefixBlocksSharedWithARunningRequest) {
  Harness h(64, make_cfg());
  const std::vector<int32_t> doc = rand_tokens(200, 60);
  const RequestId a = h.add(make_req(doc, 40), 1);
  h.step();  // A's prompt computed, its 3 full blocks published
  h.step();
  const RequestId b = h.add(make_req(concat(std::vector<int32_t>(doc.begin(), doc.begin() + 150), rand_tokens(30, 61)), 40), 2);
  h.step();
  EXPECT_EQ(h.reqs[b].first_row[0], 128);
  // B holds A's first two blocks: two references each (check() verifies against the tables too).
  int shared = 0;
  for (int32_t blk = 0; blk < h.pool.num_blocks(); ++blk) shared += h.pool.refs(blk) == 2;
  EXPECT_EQ(shared, 2);
  EXPECT_EQ(h.pool.in_use(), 4 + 1);  // A: 4 blocks (200 + 2 tokens), B: 2 shared + 1 own
  h.run_all();
  h.verify_final();
  EXPECT_EQ(h.reqs[a].fin.cached_tokens, 0);
  EXPECT_EQ(h.reqs[b].fin.cached_tokens, 128);
}

// Generated tokens are computed in the decode (absorbed) form: a block holding any is reused as prompt
// of a later request only when prompts take the absorbed form too.
TEST(Scheduler, GeneratedBlocksAreReusedOnlyInTheAbsorbedForm) {
  for (bool absorbed : {false, true}) {
    SCOPED_TRACE(absorbed ? "absorbed prompts" : "prefill-form prompts");
    SchedulerConfig c = make_cfg();
    c.prompt_absorbed = absorbed;
    Harness h(64, c);
    const RequestId a = h.add(make_req(rand_tokens(100, 95), 100), 1);  // block 1 holds 28 generated tokens
    h.run_all();
    ASSERT_EQ(h.reqs[a].got.size(), 100u);
    const std::vector<int32_t> cont = concat(concat(rand_tokens(100, 95), h.reqs[a].got), rand_tokens(10, 96));
    const RequestId b = h.add(make_req(cont, 5), 2);
    h.run_all();
    // Fed: 100 prompt + 99 generated tokens = 3 full blocks; block 0 is all prompt.
    EXPECT_EQ(h.reqs[b].fin.cached_tokens, absorbed ? 192 : 64);
    h.verify_final();
  }
}

// A chain's blocks are released tail first, so the LRU evicts the end of a cached prefix before its
// head: after evictions the remaining blocks still form a usable prefix.
TEST(Scheduler, EvictionKeepsTheHeadOfACachedPrefix) {
  Harness h(6, make_cfg());
  const std::vector<int32_t> doc = rand_tokens(256, 70);
  h.add(make_req(doc, 1), 1);  // 4 blocks, all published (the 4th is full of prompt)
  h.run_all();
  EXPECT_EQ(h.pool.cached(), 4);
  // An unrelated request needing 3 blocks: 2 empty, then one eviction.
  h.add(make_req(rand_tokens(150, 71), 1), 2);
  h.run_all();
  EXPECT_EQ(h.pool.stats().evictions, 1);
  const RequestId again = h.add(make_req(doc, 1), 3);
  h.run_all();
  // Blocks 0..2 are still cached (the 4th would be recomputed anyway: it holds the last token).
  EXPECT_EQ(h.reqs[again].fin.cached_tokens, 192);
  h.verify_final();
}

TEST(Scheduler, PreemptedRequestReproducesItsTokens) {
  // Two requests of 3 blocks each in a pool of 4: the newer one is preempted when the older one
  // needs its third block, recomputes its prompt and generated tokens, and ends as if alone.
  Harness h(4, make_cfg());
  const RequestId a = h.add(make_req(rand_tokens(10, 80), 150), 1);
  const RequestId b = h.add(make_req(rand_tokens(10, 81), 150), 2);
  h.run_all();
  h.verify_final();
  EXPECT_EQ(h.reqs[a].fin.preemptions, 0);
  EXPECT_GE(h.reqs[b].fin.preemptions, 1);
  EXPECT_GE(h.sched.stats().preemptions, 1);
  EXPECT_GT(h.recompute_rows, 0) << "generated tokens were never recomputed";
  EXPECT_EQ(h.reqs[b].got.size(), 150u);
}

TEST(Scheduler, PreemptionDuringAPromptLogprobsPrefill) {
  // A decodes into its second block while B (prompt logprobs, 16-token chunks) needs its second:
  // the pool of 3 cannot hold both, B is preempted mid-prefill, waits, and recomputes its prompt
  // without recording any prompt logprob twice.
  for (bool absorbed : {false, true}) {
    SchedulerConfig c = make_cfg(64, 16, /*chunk=*/16);
    c.prompt_absorbed = absorbed;
    Harness h(3, c);
    const RequestId a = h.add(make_req(rand_tokens(60, 90), 40), 1);
    h.step();
    RequestParams p = make_req(rand_tokens(120, 91), 2);
    p.prompt_logprobs = true;
    const RequestId b = h.add(p, 2);
    h.run_all();
    h.verify_final();
    EXPECT_EQ(h.reqs[a].fin.preemptions, 0);
    EXPECT_GE(h.reqs[b].fin.preemptions, 1);
    EXPECT_EQ(h.reqs[b].plp.size(), 119u);
  }
}

TEST(Scheduler, ManyRequestsExhaustingThePool) {
  std::mt19937_64 rng(5);
  SchedulerConfig c = make_cfg(128, 8, 0, 1024, 64, /*eos=*/3);
  Harness h(5, c);
  int rejected = 0;
  for (int i = 0; i < 60; ++i) {
    const int64_t P = 1 + int64_t(rng() % 250), mt = int64_t(rng() % 150);
    const int64_t need = (P + std::max<int64_t>(mt - 1, 0) + B - 1) / B;
    try {
      h.add(make_req(rand_tokens(P, 1000 + uint64_t(i)), mt), rng());
      EXPECT_LE(need, 5);
    } catch (const Error& e) {
      EXPECT_GT(need, 5) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(int(h.reqs.size()), 20);
  h.run_all();
  h.verify_final();
  EXPECT_GT(h.sched.stats().preemptions, 0);
  EXPECT_EQ(h.pool.in_use(), 0);
}

TEST(Scheduler, FailAndCancelAll) {
  Harness h(16, make_cfg(256, /*seqs=*/2));
  const RequestId a = h.add(make_req(rand_tokens(70, 1), 10), 1);
  const RequestId b = h.add(make_req(rand_tokens(20, 2), 10), 2);
  const RequestId c = h.add(make_req(rand_tokens(20, 3), 10), 3);
  h.step();
  std::vector<RequestOutput> ended;
  StepPlan s = h.sched.schedule(ended);
  ASSERT_EQ(s.rows.size(), 2u);
  EXPECT_GT(h.pool.in_use(), 0);
  const std::vector<RequestOutput> failed = h.sched.fail(s, "boom");
  ASSERT_EQ(failed.size(), 2u);
  for (const auto& o : failed) {
    EXPECT_TRUE(o.finished);
    EXPECT_EQ(o.finish, FinishReason::Error);
    EXPECT_EQ(o.error, "boom");
    EXPECT_EQ(std::string(finish_reason_name(o.finish)), "error");
    EXPECT_TRUE(o.id == a || o.id == b);
    h.reqs[o.id].expect_error = true;
    h.deliver(o);
  }
  EXPECT_EQ(h.pool.in_use(), 0);
  EXPECT_EQ(h.sched.stats().errors, 2);
  h.check_now("after fail");
  // The request that was not in the failed plan goes on.
  h.run_all();
  EXPECT_TRUE(h.reqs[c].finished);
  EXPECT_EQ(h.reqs[c].got, h.reqs[c].ref.tokens);

  h.add(make_req(rand_tokens(20, 4), 10), 4);
  h.add(make_req(rand_tokens(20, 5), 10), 5);
  h.add(make_req(rand_tokens(20, 6), 10), 6);
  h.step();
  const std::vector<RequestOutput> all = h.sched.cancel_all();
  EXPECT_EQ(all.size(), 3u);
  for (const auto& o : all) {
    EXPECT_EQ(o.finish, FinishReason::Cancelled);
    h.reqs[o.id].cancel_requested = true;
    h.deliver(o);
  }
  EXPECT_FALSE(h.sched.has_work());
  h.verify_final();
}

// ---------------------------------------------------------------------------------------------
// Randomized simulation
// ---------------------------------------------------------------------------------------------

struct SimCase {
  std::string name;
  int64_t blocks = 64;
  SchedulerConfig cfg;
  int requests = 150;
  int prompt_max = 200;
  int max_tokens_max = 60;
  double arrive_p = 0.3;
  int burst = 3;
  double shared_p = 0.0;    // the prompt begins with one of a few shared documents
  double continue_p = 0.0;  // the prompt is an earlier request's prompt and output, continued
  double cancel_p = 0.02;   // per step
  double plp_p = 0.05, nocache_p = 0.05;
  double fail_p = 0.002;    // per step: the forward fails (every request of the plan ends with an error)
  bool expect_preemption = false, expect_prefix_hits = false;
  uint64_t seed = 1;
};

void run_sim(const SimCase& sc) {
  std::mt19937_64 rng(sc.seed);
  auto uni = [&](int64_t lo, int64_t hi) { return lo + int64_t(rng() % uint64_t(hi - lo + 1)); };
  auto chance = [&](double p) { return double(rng() % 1000000) < p * 1e6; };
  const SchedulerConfig& c = sc.cfg;
  Harness h(sc.blocks, c);
  std::vector<std::vector<int32_t>> docs;
  for (int i = 0; i < 4; ++i) docs.push_back(rand_tokens(B * uni(1, 4), sc.seed * 100 + uint64_t(i), c.vocab_size));
  std::vector<RequestId> live, done;
  int arrived = 0, rejected = 0;
  int64_t work = 0;
  const int64_t max_steps = 200000;

  auto make_prompt = [&]() {
    std::vector<int32_t> p;
    if (chance(sc.continue_p) && !done.empty()) {
      const Tracked& t = h.reqs[done[size_t(uni(0, int64_t(done.size()) - 1))]];
      p = concat(t.p.prompt, t.got);
      p = concat(p, rand_tokens(uni(0, 10), rng(), c.vocab_size));
    } else if (chance(sc.shared_p)) {
      const auto& d = docs[size_t(uni(0, 3))];
      p.assign(d.begin(), d.begin() + (chance(0.5) ? int64_t(d.size()) : uni(1, int64_t(d.size()))));
      p = concat(p, rand_tokens(uni(0, sc.prompt_max / 2), rng(), c.vocab_size));
    } else if (chance(0.02)) {
      p = rand_tokens(c.max_context - uni(-1, 3), rng(), c.vocab_size);  // at the context's edge
    } else {
      p = rand_tokens(uni(1, sc.prompt_max), rng(), c.vocab_size);
    }
    return p;
  };
  auto arrive = [&]() {
    RequestParams p;
    p.prompt = make_prompt();
    p.max_tokens = chance(0.05) ? 0 : uni(1, sc.max_tokens_max);
    for (int64_t k = uni(0, 2); k > 0; --k) p.stop_token_ids.push_back(int32_t(uni(0, c.vocab_size - 1)));
    p.ignore_eos = chance(0.2);
    p.top_logprobs = chance(0.1) ? int(uni(1, 20)) : 0;
    p.prompt_logprobs = chance(sc.plp_p);
    p.use_prefix_cache = !chance(sc.nocache_p);
    p.sampling.temperature = float(uni(0, 3)) * 0.5f;
    p.sampling.top_k = uni(0, 5);
    p.sampling.top_p = chance(0.5) ? 1.0f : 0.9f;
    const int64_t P = int64_t(p.prompt.size());
    const int64_t max_new = std::min<int64_t>(p.max_tokens, c.max_context - P);
    const bool fits_context = p.max_tokens > 0 ? P < c.max_context : P <= c.max_context;
    const bool fits_pool = (P + std::max<int64_t>(max_new - 1, 0) + B - 1) / B <= sc.blocks;
    ++arrived;
    try {
      const RequestId id = h.add(p, rng());
      EXPECT_TRUE(fits_context && fits_pool) << "add() accepted a request of " << P << " + " << p.max_tokens;
      live.push_back(id);
      work += P + max_new;
    } catch (const Error& e) {
      EXPECT_FALSE(fits_context && fits_pool) << "add() rejected a valid request: " << e.what();
      ++rejected;
    }
  };
  auto cancel_one = [&]() {
    if (live.empty()) return;
    const RequestId id = live[size_t(uni(0, int64_t(live.size()) - 1))];
    h.sched.cancel(id);
    h.reqs[id].cancel_requested = true;
  };

  while ((arrived < sc.requests || h.sched.has_work()) && !::testing::Test::HasFailure()) {
    ASSERT_LT(h.steps, max_steps) << sc.name << ": requests did not finish (hang or livelock)";
    if (arrived < sc.requests && chance(sc.arrive_p))
      for (int64_t k = uni(1, sc.burst); k > 0 && arrived < sc.requests; --k) arrive();
    if (chance(sc.cancel_p)) cancel_one();
    if (chance(0.01)) h.sched.cancel(done.empty() ? 999999 : done[size_t(uni(0, int64_t(done.size()) - 1))]);
    const bool mid_cancel = chance(sc.cancel_p / 2);
    h.step(mid_cancel ? std::function<void()>(cancel_one) : nullptr, chance(sc.fail_p));
    for (size_t i = 0; i < live.size();) {
      if (h.reqs[live[i]].finished) {
        if (h.reqs[live[i]].fin.finish != FinishReason::Cancelled) done.push_back(live[i]);
        live[i] = live.back();
        live.pop_back();
      } else {
        ++i;
      }
    }
  }
  if (::testing::Test::HasFailure()) return;
  h.verify_final();
  const SchedulerStats s = h.sched.stats();
  if (sc.expect_preemption) { EXPECT_GT(s.preemptions, 0) << "the case was meant to preempt"; }
  if (sc.expect_prefix_hits) { EXPECT_GT(s.prefix_hit_tokens, 0) << "the case was meant to reuse prefixes"; }
  if (!c.prefix_cache) { EXPECT_EQ(s.prefix_hit_tokens, 0); }
  EXPECT_GT(int(h.reqs.size()), sc.requests / 2);
  EXPECT_GT(s.finished_stop + s.finished_length, 0);
  std::printf("[ sim      ] %s: %d requests (%d rejected), %lld steps for %lld tokens of work, %lld preemptions, "
              "prefix hits %lld/%lld tokens, %lld evictions, %lld cancelled, %lld failed\n",
              sc.name.c_str(), arrived, rejected, (long long)h.steps, (long long)work, (long long)s.preemptions,
              (long long)s.prefix_hit_tokens, (long long)s.prefix_queried_tokens, (long long)h.pool.stats().evictions,
              (long long)s.cancelled, (long long)s.errors);
}

std::vector<SimCase> sim_cases() {
  std::vector<SimCase> v;
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    const std::string sfx = "_seed" + std::to_string(seed);
    SimCase t;  // tiny pool: constant preemption
    t.name = "TinyPool" + sfx;
    t.blocks = 6;
    t.cfg = make_cfg(96, 8, 0, 512, 64, 1);
    t.requests = 500;
    t.prompt_max = 200;
    t.max_tokens_max = 120;
    t.arrive_p = 0.5;
    t.shared_p = 0.3;
    t.expect_preemption = true;
    t.seed = seed;
    v.push_back(t);

    SimCase ta = t;  // tiny pool, prompts in the absorbed form: generated blocks are cacheable too
    ta.name = "TinyPoolAbsorbed" + sfx;
    ta.cfg.prompt_absorbed = true;
    ta.continue_p = 0.3;
    v.push_back(ta);

    SimCase big;  // big pool: lots of concurrency, no pressure
    big.name = "BigPool" + sfx;
    big.blocks = 400;
    big.cfg = make_cfg(512, 64, 0, 1024, 64, 1);
    big.requests = 1000;
    big.prompt_max = 300;
    big.arrive_p = 0.6;
    big.burst = 5;
    big.shared_p = 0.3;
    big.continue_p = 0.2;
    big.expect_prefix_hits = true;
    big.seed = seed;
    v.push_back(big);

    SimCase pf;  // shared prefixes in a pool small enough to evict
    pf.name = "PrefixHeavy" + sfx;
    pf.blocks = 24;
    pf.cfg = make_cfg(256, 16, 64, 1024, 64, 1);
    pf.requests = 800;
    pf.prompt_max = 160;
    pf.shared_p = 0.7;
    pf.continue_p = 0.15;
    pf.expect_prefix_hits = true;
    pf.seed = seed;
    v.push_back(pf);

    SimCase pa = pf;  // and in the absorbed form, continuing earlier outputs
    pa.name = "PrefixHeavyAbsorbed" + sfx;
    pa.cfg.prompt_absorbed = true;
    pa.continue_p = 0.4;
    v.push_back(pa);

    SimCase sb;  // small budget and chunks
    sb.name = "SmallBudget" + sfx;
    sb.blocks = 12;
    sb.cfg = make_cfg(7, 3, 5, 512, 64, 1);
    sb.requests = 200;
    sb.prompt_max = 100;
    sb.max_tokens_max = 40;
    sb.arrive_p = 0.1;
    sb.shared_p = 0.4;
    sb.expect_prefix_hits = true;
    sb.seed = seed;
    v.push_back(sb);

    SimCase one;  // one token, one sequence per step
    one.name = "OneTokenSteps" + sfx;
    one.blocks = 4;
    one.cfg = make_cfg(1, 1, 0, 256, 64, 1);
    one.requests = 80;
    one.prompt_max = 60;
    one.max_tokens_max = 30;
    one.arrive_p = 0.05;
    one.cancel_p = 0.005;
    one.shared_p = 0.5;
    one.seed = seed;
    v.push_back(one);

    SimCase nc;  // the prefix cache off
    nc.name = "NoPrefixCache" + sfx;
    nc.blocks = 10;
    nc.cfg = make_cfg(128, 8, 32, 512, 64, 1);
    nc.cfg.prefix_cache = false;
    nc.requests = 300;
    nc.shared_p = 0.8;
    nc.expect_preemption = true;
    nc.seed = seed;
    v.push_back(nc);
  }
  return v;
}

class SchedulerSim : public ::testing::TestWithParam<SimCase> {};
TEST_P(SchedulerSim, RandomWorkloadsMatchRunAlone) { run_sim(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Scheduler, SchedulerSim, ::testing::ValuesIn(sim_cases()),
                         [](const ::testing::TestParamInfo<SimCase>& i) { return i.param.name; });

}  // namespace
}  // namespace dsa::test

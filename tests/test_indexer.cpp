// Lightning indexer: the 132-byte key cache, scores against float64, exact top-k with ties,
// L < k, L = k, L = k + 1, page boundaries (architecture.md §4, §11).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "backends/cpu/cpu_backend.h"
#include "test_util.h"

namespace dsa::test {

namespace {
struct IndexerCase {
  int64_t L, Hi = 64;
  int64_t nb;
  KvLayer kv;
  Batch b;          // one decode-style token per query position
  Tensor q, w;      // E4M3 [T, Hi, 128], F32 [T, Hi]
};

// Writes L random keys into a shuffled paged cache; queries at the given positions.
IndexerCase make_case(CpuBackend& be, int64_t L, const std::vector<int32_t>& qpos, int64_t Hi = 64) {
  IndexerCase c;
  c.L = L;
  c.Hi = Hi;
  c.nb = (L + kKvBlock - 1) / kKvBlock + 3;
  c.kv.mla = host_tensor(DType::U8, {c.nb, kKvBlock * kMlaTokenBytes});
  c.kv.indexer = host_tensor(DType::U8, {c.nb, kKvBlock * kIndexTokenBytes});
  Batch wb = one_seq_batch(0, L, c.nb);
  Tensor k = rand_bf16({L, kIndexDim});
  be.indexer_cache_write(k, c.kv, wb);
  // Query batch: same block table, tokens at qpos (as if each were the newest token).
  c.b = wb;
  c.b.positions.assign(qpos.begin(), qpos.end());
  c.b.token_seq.assign(qpos.size(), 0);
  c.b.seqs[0].start_pos = L - int64_t(qpos.size());
  c.b.seqs[0].n_new = int64_t(qpos.size());
  c.q = rand_e4m3({int64_t(qpos.size()), Hi, kIndexDim});
  c.w = rand_f32({int64_t(qpos.size()), Hi}, 0.01f);
  return c;
}

const uint8_t* key_bytes(const IndexerCase& c, int64_t pos) {
  const int64_t blk = c.b.block_table[size_t(pos / kKvBlock)];
  return c.kv.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes + (pos % kKvBlock) * kIndexDim;
}
float key_scale(const IndexerCase& c, int64_t pos) {
  const int64_t blk = c.b.block_table[size_t(pos / kKvBlock)];
  float s;
  std::memcpy(&s, c.kv.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes + kKvBlock * kIndexDim + (pos % kKvBlock) * 4, 4);
  return s;
}
}  // namespace

TEST(Indexer, CacheWriteIsActQuantOfTheKey) {
  CpuBackend be(2);
  const int64_t L = 130;
  KvLayer kv{host_tensor(DType::U8, {5, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {5, kKvBlock * kIndexTokenBytes})};
  Batch b = one_seq_batch(0, L, 5);
  Tensor k = rand_bf16({L, kIndexDim}, 4.0f);
  be.indexer_cache_write(k, kv, b);
  IndexerCase c;
  c.kv = kv;
  c.b = b;
  for (int64_t p = 0; p < L; ++p) {
    double amax = 0;
    for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(bf(k.ptr<uint16_t>()[p * 128 + i])));
    const double sc = ref_scale(amax);
    ASSERT_EQ(double(key_scale(c, p)), sc);
    for (int i = 0; i < 128; ++i) ASSERT_EQ(key_bytes(c, p)[i], ref_e4m3(std::clamp(bf(k.ptr<uint16_t>()[p * 128 + i]) / sc, -448.0, 448.0)));
  }
}

// Tolerance: each score is sum_h w_h ReLU(q_h . k) x scale with fp32 arithmetic (128-term dots, an Hi-term
// head sum): at most (128 + Hi + 2) x 2^-24 x the magnitude scale x sum_h |w_h| sum_i |q_hi k_i| away from the
// float64 value (the standard n-term summation bound). Per element, because the signed head weights can cancel:
// a relative error of one score (e.g. the only key of the token at position 0) is not bounded.
TEST(Indexer, ScoresMatchFloat64) {
  CpuBackend be(2);
  const int64_t L = 200;
  IndexerCase c = make_case(be, L, {0, 63, 64, 65, 127, 199});  // page boundaries
  const int64_t T = c.q.dim(0);
  Tensor S = host_tensor(DType::F32, {T, L});
  poison(S);
  be.indexer_scores(c.q, c.w, c.kv, c.b, S);
  const double ulp_bound = double(128 + c.Hi + 2) * std::ldexp(1.0, -24);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t p = c.b.positions[size_t(t)];
    double worst = 0;
    for (int64_t j = 0; j < L; ++j) {
      const float g = S.ptr<float>()[t * L + j];
      if (j > p) { ASSERT_TRUE(std::isinf(g) && g < 0) << "future key must be -inf"; continue; }
      double tot = 0, mag = 0;
      for (int64_t h = 0; h < c.Hi; ++h) {
        double d = 0, dm = 0;
        for (int i = 0; i < 128; ++i) {
          const double x = double(e4m3_to_f32(c.q.ptr<uint8_t>()[(t * c.Hi + h) * 128 + i])) * e4m3_to_f32(key_bytes(c, j)[i]);
          d += x;
          dm += std::fabs(x);
        }
        const double wh = c.w.ptr<float>()[t * c.Hi + h];
        tot += wh * std::max(d, 0.0);  // ReLU before the (signed) head weight
        mag += std::fabs(wh) * dm;
      }
      const double ref = tot * key_scale(c, j), bound = ulp_bound * mag * key_scale(c, j);
      ASSERT_LE(std::fabs(double(g) - ref), bound) << "token at position " << p << ", key " << j;
      if (bound > 0) worst = std::max(worst, std::fabs(double(g) - ref) / bound);
    }
    std::printf("  position %ld: worst error %.3g of the bound\n", long(p), worst);
  }
}

// The selection rule, from the backend's own scores: higher score first, ties -> lower position.
static std::vector<int32_t> expected_topk(const float* s, int64_t n, int64_t k) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  idx.resize(size_t(std::min(n, k)));
  std::sort(idx.begin(), idx.end());
  idx.resize(size_t(k), -1);
  return idx;
}

TEST(Indexer, TopkExactAtBoundariesOfK) {
  CpuBackend be(2);
  const int64_t K = 64;
  // L < k, L = k, L = k + 1, and well beyond; queries at several positions.
  for (int64_t L : {int64_t(10), K, K + 1, int64_t(300)}) {
    std::vector<int32_t> qpos = {int32_t(L - 1)};
    if (L > 5) qpos.insert(qpos.begin(), int32_t(L / 2));
    IndexerCase c = make_case(be, L, qpos);
    const int64_t T = c.q.dim(0);
    Tensor topk = host_tensor(DType::I32, {T, K}), S = host_tensor(DType::F32, {T, L});
    poison(topk);
    be.indexer_topk(c.q, c.w, c.kv, c.b, K, topk);
    be.indexer_scores(c.q, c.w, c.kv, c.b, S);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = c.b.positions[size_t(t)];
      std::vector<int32_t> got(topk.ptr<int32_t>() + t * K, topk.ptr<int32_t>() + (t + 1) * K);
      std::vector<int32_t> gs;  // any order is allowed: compare the sorted set, -1 padded
      for (int32_t v : got) if (v >= 0) gs.push_back(v);
      std::sort(gs.begin(), gs.end());
      gs.resize(size_t(K), -1);
      EXPECT_EQ(gs, expected_topk(S.ptr<float>() + t * L, p + 1, K)) << "L=" << L << " position " << p;
      const int64_t n_valid = std::count_if(got.begin(), got.end(), [](int32_t v) { return v >= 0; });
      EXPECT_EQ(n_valid, std::min<int64_t>(K, p + 1)) << "k = min(index_topk, visible length); -1 padding after";
    }
  }
}

TEST(Indexer, TopkTiesGoToLowerPositions) {
  // Queries whose every q.k is <= 0 for most keys give exact-zero scores (ReLU): many ties.
  CpuBackend be(2);
  const int64_t L = 150, K = 32;
  IndexerCase c = make_case(be, L, {149});
  // Make q = -k_0 direction for all heads is hard to control; instead zero all head weights but
  // one, and make that head's q orthogonal-ish: simplest exact tie is all-zero weights -> all
  // scores exactly 0 -> the first K positions win.
  for (int64_t h = 0; h < c.Hi; ++h) c.w.ptr<float>()[h] = 0.0f;
  Tensor topk = host_tensor(DType::I32, {1, K});
  poison(topk);
  be.indexer_topk(c.q, c.w, c.kv, c.b, K, topk);
  std::vector<int32_t> got(topk.ptr<int32_t>(), topk.ptr<int32_t>() + K), want(static_cast<size_t>(K));
  std::sort(got.begin(), got.end());
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(got, want);
  // Half the weights positive on one head, ties among the rest: positives first, then lowest positions.
  c.w.ptr<float>()[0] = 1.0f;
  Tensor S = host_tensor(DType::F32, {1, L});
  be.indexer_scores(c.q, c.w, c.kv, c.b, S);
  be.indexer_topk(c.q, c.w, c.kv, c.b, K, topk);
  got.assign(topk.ptr<int32_t>(), topk.ptr<int32_t>() + K);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, expected_topk(S.ptr<float>(), L, K));
  const int64_t zeros = std::count(S.ptr<float>(), S.ptr<float>() + L, 0.0f);
  EXPECT_GT(zeros, 10) << "the test needs exact-zero ties (ReLU)";
}

TEST(Indexer, TopkDoesNotDependOnBatching) {
  // A step of many tokens (prefill) and steps of one token (decode) must select the same keys for
  // the same query: the selection of a token depends only on its own q, w and the cache.
  CpuBackend be(2);
  const int64_t L = 260, K = 48;
  std::vector<int32_t> qpos;
  for (int32_t p = 200; p < 260; ++p) qpos.push_back(p);
  IndexerCase c = make_case(be, L, qpos);
  const int64_t T = c.q.dim(0);
  Tensor all = host_tensor(DType::I32, {T, K});
  be.indexer_topk(c.q, c.w, c.kv, c.b, K, all);
  for (int64_t t = 0; t < T; ++t) {
    Batch one = c.b;
    one.positions = {qpos[size_t(t)]};
    one.token_seq = {0};
    one.seqs[0].start_pos = qpos[size_t(t)];
    one.seqs[0].n_new = 1;
    one.seqs[0].token_offset = 0;
    Tensor q1 = c.q.rows(t, t + 1), w1 = c.w.rows(t, t + 1), k1 = host_tensor(DType::I32, {1, K});
    be.indexer_topk(q1, w1, c.kv, one, K, k1);
    std::vector<int32_t> a(all.ptr<int32_t>() + t * K, all.ptr<int32_t>() + (t + 1) * K), b(k1.ptr<int32_t>(), k1.ptr<int32_t>() + K);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    ASSERT_EQ(a, b) << "position " << qpos[size_t(t)];
  }
}

}  // namespace dsa::test

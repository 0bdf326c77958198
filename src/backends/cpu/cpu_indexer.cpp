// CPU lightning indexer (architecture.md §4, §5.3): the 132-byte FP8 key cache, tiled scoring
// I[t,j] = k_scale[j] * sum_h w[t,h] * relu(q[t,h].k[j]) and exact top-k selection.
// Scores exist only as one row per token (prefill) or [few tokens x end_pos] (decode).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/simd.h"

namespace dsa {

namespace {
constexpr int64_t kBlockKeyBytes = kKvBlock * kIndexDim;  // keys of a block, then kKvBlock fp32 scales
constexpr int64_t kKt = kIndexDim * kKvBlock + kKvBlock;   // decoded block: kt [128][64], then 64 scales

const uint8_t* idx_block(const KvLayer& c, int64_t blk) { return c.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes; }

void decode_block(const KvLayer& c, int64_t blk, float* kt) {
  const uint8_t* base = idx_block(c, blk);
  cpu::kernels().idx_decode_block(base, kt);
  std::memcpy(kt + kIndexDim * kKvBlock, base + kBlockKeyBytes, kKvBlock * 4);
}

// Scores of every token of sequence s against its keys [0, p]: row (t - t0) of S (stride ld) holds
// key j at column j, -inf for p < j < ld. Then, if topk is set, selects each row's top k.
// One parallel region. Few tokens (decode): work items are key blocks, each decoded once and scored
// for every token. Many tokens (prefill): all blocks are decoded once into a shared fp32 buffer,
// then work items are tokens (score row + top-k, no [T x L] matrix).
void score_seq(const KvLayer& c, const Batch& b, int64_t s, const Tensor& q, const Tensor& w, int64_t Hi,
               int64_t k, int32_t* topk, float* S_all, int64_t ld_all) {
  const auto& kn = cpu::kernels();
  const BatchSeq& sq = b.seqs[size_t(s)];
  const int64_t nblk = (sq.end_pos() + kKvBlock - 1) / kKvBlock, ld = nblk * kKvBlock;
  const int64_t t0 = sq.token_offset, nt = sq.n_new;
  const float ninf = -std::numeric_limits<float>::infinity();
  const uint8_t* qp = q.ptr<uint8_t>();
  const float* wp = w.ptr<float>();
  auto blk_of = [&](int64_t kb) { return int64_t(b.block_table[size_t(s * b.max_blocks + kb)]); };
  auto finish_row = [&](int64_t t, float* row) {
    const int64_t p = b.positions[size_t(t)];
    if (S_all) {
      float* dst = S_all + t * ld_all;
      for (int64_t j = 0; j < ld_all; ++j) dst[j] = j <= p && j < ld ? row[j] : ninf;
    }
    if (topk) cpu::topk_select(row, p + 1, k, topk + t * k);
  };
  const int nth = omp_get_max_threads();
  if (nt < 2 * nth) {
    std::vector<float> S(static_cast<size_t>(nt * ld)), qf(static_cast<size_t>(nt * Hi * kIndexDim));
    for (int64_t i = 0; i < nt; ++i) kn.e4m3_to_f32(qp + (t0 + i) * Hi * kIndexDim, qf.data() + i * Hi * kIndexDim, Hi * kIndexDim, 1.0f);
#pragma omp parallel if (nblk * nt * Hi > 512)
    {
      float* kt = cpu::thread_work(kKt);
#pragma omp for schedule(static)
      for (int64_t kb = 0; kb < nblk; ++kb) {
        decode_block(c, blk_of(kb), kt);
        for (int64_t i = 0; i < nt; ++i)
          if (b.positions[size_t(t0 + i)] >= kb * kKvBlock)
            kn.idx_score_block(qf.data() + i * Hi * kIndexDim, wp + (t0 + i) * Hi, Hi, kt, kt + kIndexDim * kKvBlock,
                               S.data() + i * ld + kb * kKvBlock);
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < nt; ++i) finish_row(t0 + i, S.data() + i * ld);
    }
    return;
  }
  std::vector<float> KT(static_cast<size_t>(nblk * kKt));
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t kb = 0; kb < nblk; ++kb) decode_block(c, blk_of(kb), KT.data() + kb * kKt);
    float* qf = cpu::thread_work(Hi * kIndexDim + ld);
    float* row = qf + Hi * kIndexDim;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = nt - 1; i >= 0; --i) {  // longest rows first
      const int64_t t = t0 + i, p = b.positions[size_t(t)];
      kn.e4m3_to_f32(qp + t * Hi * kIndexDim, qf, Hi * kIndexDim, 1.0f);
      for (int64_t kb = 0; kb * kKvBlock <= p; ++kb) {
        const float* kt = KT.data() + kb * kKt;
        kn.idx_score_block(qf, wp + t * Hi, Hi, kt, kt + kIndexDim * kKvBlock, row + kb * kKvBlock);
      }
      finish_row(t, row);
    }
  }
}

}  // namespace

void cpu::topk_select(const float* scores, int64_t n, int64_t k, int32_t* out) {
  if (n <= k) {
    for (int64_t i = 0; i < k; ++i) out[i] = i < n ? int32_t(i) : -1;
    return;
  }
  // Order: higher score first; equal scores (ReLU makes many exact zeros) -> lower position first.
  // NaN ranks below everything.
  auto key = [&](int32_t i) { float v = scores[i]; return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; };
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), [&](int32_t a, int32_t c) {
    const float x = key(a), y = key(c);
    return x > y || (x == y && a < c);
  });
  std::sort(idx.begin(), idx.begin() + k);
  std::copy_n(idx.begin(), k, out);
}

void CpuBackend::indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) {
  const int64_t T = b.n_tokens();
  const auto& kn = cpu::kernels();
#pragma omp parallel for if (T > 64)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    const int64_t blk = b.block_table[size_t(s * b.max_blocks + p / kKvBlock)], off = p % kKvBlock;
    uint8_t* base = cache.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes;
    const float sc = kn.quant128_bf16_codes(k.ptr<uint16_t>() + t * kIndexDim, base + off * kIndexDim);
    std::memcpy(base + kBlockKeyBytes + off * 4, &sc, 4);
  }
}

void CpuBackend::indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                              Tensor& topk) {
  const int64_t Hi = q.dim(1);
  DSA_CHECK(q.dim(2) == kIndexDim && topk.dim(1) == k, "indexer_topk: shapes ", q.str(), " ", topk.str());
  for (size_t s = 0; s < b.seqs.size(); ++s)
    score_seq(cache, b, int64_t(s), q, w, Hi, k, topk.ptr<int32_t>(), nullptr, 0);
}

void CpuBackend::indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) {
  for (int64_t i = 0; i < w.numel(); ++i)
    w.ptr<float>()[i] = ((w.ptr<float>()[i] * head_scale) * q_scale.ptr<float>()[i]) * softmax_scale;
}

void CpuBackend::indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                                Tensor& scores) {
  const int64_t Hi = q.dim(1), L = scores.dim(1);
  for (size_t s = 0; s < b.seqs.size(); ++s)
    score_seq(cache, b, int64_t(s), q, w, Hi, 0, nullptr, scores.ptr<float>(), L);
}

}  // namespace dsa

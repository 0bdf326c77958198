// CPU lightning indexer (architecture.md §4, §5.3): the 132-byte FP8 key cache, tiled scoring
// I[t,j] = k_scale[j] * sum_h w[t,h] * relu(q[t,h].k[j]) and exact top-k selection.
// Scores exist only as a bounded tile [kQB queries x end_pos] at a time.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "backends/cpu/cpu_backend.h"

namespace dsa {

namespace {
constexpr int64_t kBlockKeyBytes = kKvBlock * kIndexDim;  // keys of a block, then kKvBlock fp32 scales

const uint8_t* idx_block(const KvLayer& c, int64_t blk) { return c.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes; }

// Scores of one query (all heads) against the n <= 64 keys of one cache block.
//   qf: [Hi][128] fp32 (exact e4m3 values), w: [Hi], kt: [128][64] transposed keys, ks: [64] scales.
DSA_KERNEL void score_block(const float* qf, const float* w, int64_t Hi, const float* kt, const float* ks,
                            float* out /*[64]*/) {
  float tot[kKvBlock] = {};
  for (int64_t h = 0; h < Hi; ++h) {
    float acc[kKvBlock] = {};
    const float* qh = qf + h * kIndexDim;
    for (int64_t d = 0; d < kIndexDim; ++d) {
      const float qd = qh[d];
      const float* kr = kt + d * kKvBlock;
#pragma omp simd
      for (int64_t j = 0; j < kKvBlock; ++j) acc[j] += qd * kr[j];
    }
    const float wh = w[h];
#pragma omp simd
    for (int64_t j = 0; j < kKvBlock; ++j) tot[j] += wh * std::max(acc[j], 0.0f);
  }
  for (int64_t j = 0; j < kKvBlock; ++j) out[j] = tot[j] * ks[j];
}

void decode_block(const KvLayer& c, int64_t blk, float* kt /*[128][64]*/, float* ks /*[64]*/) {
  const uint8_t* base = idx_block(c, blk);
  for (int64_t j = 0; j < kKvBlock; ++j)
    for (int64_t d = 0; d < kIndexDim; ++d) kt[d * kKvBlock + j] = e4m3_to_f32(base[j * kIndexDim + d]);
  std::memcpy(ks, base + kBlockKeyBytes, kKvBlock * 4);
}

// Score rows for tokens [t0, t1) of sequence s into S[(t - t0) * ld + j]; -inf beyond each position.
void score_tile(const KvLayer& c, const Batch& b, int64_t s, const float* qf, const float* w, int64_t Hi,
                int64_t t0, int64_t t1, float* S, int64_t ld) {
  const BatchSeq& sq = b.seqs[size_t(s)];
  const int64_t nblk = (sq.end_pos() + kKvBlock - 1) / kKvBlock;
#pragma omp parallel
  {
    std::vector<float> kt(static_cast<size_t>(kIndexDim * kKvBlock));
    float ks[kKvBlock], tmp[kKvBlock];
#pragma omp for schedule(static)
    for (int64_t kb = 0; kb < nblk; ++kb) {
      decode_block(c, b.block_table[size_t(s * b.max_blocks + kb)], kt.data(), ks);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t p = b.positions[size_t(t)];
        float* row = S + (t - t0) * ld + kb * kKvBlock;
        const int64_t valid = std::min<int64_t>(kKvBlock, p + 1 - kb * kKvBlock);  // keys <= p
        if (valid <= 0) {
          for (int64_t j = 0; j < std::min(kKvBlock, ld - kb * kKvBlock); ++j) row[j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        score_block(qf + t * Hi * kIndexDim, w + t * Hi, Hi, kt.data(), ks, tmp);
        const int64_t lim = std::min(kKvBlock, ld - kb * kKvBlock);
        for (int64_t j = 0; j < lim; ++j) row[j] = j < valid ? tmp[j] : -std::numeric_limits<float>::infinity();
      }
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
#pragma omp parallel for if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t s = b.token_seq[size_t(t)], p = b.positions[size_t(t)];
    const int64_t blk = b.block_table[size_t(s * b.max_blocks + p / kKvBlock)], off = p % kKvBlock;
    uint8_t* base = cache.indexer.ptr<uint8_t>() + blk * kKvBlock * kIndexTokenBytes;
    float v[kIndexDim];
    for (int64_t i = 0; i < kIndexDim; ++i) v[i] = bf16_to_f32(k.ptr<uint16_t>()[t * kIndexDim + i]);
    const float sc = cpu::quant_group128(v, base + off * kIndexDim);
    std::memcpy(base + kBlockKeyBytes + off * 4, &sc, 4);
  }
}

namespace {
std::vector<float> decode_q(const Tensor& q) {
  std::vector<float> qf(static_cast<size_t>(q.numel()));
  for (int64_t i = 0; i < q.numel(); ++i) qf[size_t(i)] = e4m3_to_f32(q.ptr<uint8_t>()[i]);
  return qf;
}
}  // namespace

void CpuBackend::indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                              Tensor& topk) {
  const int64_t Hi = q.dim(1);
  DSA_CHECK(q.dim(2) == kIndexDim && topk.dim(1) == k, "indexer_topk: shapes ", q.str(), " ", topk.str());
  const std::vector<float> qf = decode_q(q);
  constexpr int64_t kQB = 16;  // tile: kQB query rows x end_pos keys
  std::vector<float> S;
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const BatchSeq& sq = b.seqs[s];
    const int64_t ld = ((sq.end_pos() + kKvBlock - 1) / kKvBlock) * kKvBlock;
    S.resize(size_t(kQB * ld));
    for (int64_t t0 = sq.token_offset; t0 < sq.token_offset + sq.n_new; t0 += kQB) {
      const int64_t t1 = std::min(sq.token_offset + sq.n_new, t0 + kQB);
      score_tile(cache, b, int64_t(s), qf.data(), w.ptr<float>(), Hi, t0, t1, S.data(), ld);
#pragma omp parallel for if (t1 - t0 > 1)
      for (int64_t t = t0; t < t1; ++t)
        cpu::topk_select(S.data() + (t - t0) * ld, b.positions[size_t(t)] + 1, k, topk.ptr<int32_t>() + t * k);
    }
  }
}

void CpuBackend::indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) {
  for (int64_t i = 0; i < w.numel(); ++i)
    w.ptr<float>()[i] = ((w.ptr<float>()[i] * head_scale) * q_scale.ptr<float>()[i]) * softmax_scale;
}

void CpuBackend::indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                                Tensor& scores) {
  const int64_t Hi = q.dim(1), L = scores.dim(1);
  const std::vector<float> qf = decode_q(q);
  for (size_t s = 0; s < b.seqs.size(); ++s) {
    const BatchSeq& sq = b.seqs[s];
    const int64_t ld = ((sq.end_pos() + kKvBlock - 1) / kKvBlock) * kKvBlock;
    std::vector<float> S(static_cast<size_t>(sq.n_new * ld));
    score_tile(cache, b, int64_t(s), qf.data(), w.ptr<float>(), Hi, sq.token_offset, sq.token_offset + sq.n_new,
               S.data(), ld);
    for (int64_t t = 0; t < sq.n_new; ++t)
      for (int64_t j = 0; j < L; ++j)
        scores.ptr<float>()[(sq.token_offset + t) * L + j] =
            j < ld ? S[size_t(t * ld + j)] : -std::numeric_limits<float>::infinity();
  }
}

}  // namespace dsa

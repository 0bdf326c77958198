#pragma once
// Shared helpers for the op tests: fresh random inputs, poisoning, float64 reference quantisers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/backend.h"
#include "core/dtype.h"
#include "core/tensor.h"

// Expect a dsa::Error whose message contains every one of the given substrings.
#define EXPECT_DSA_ERROR(stmt, ...)                                                        \
  do {                                                                                     \
    EXPECT_THROW(stmt, dsa::Error);                                                        \
    try {                                                                                  \
      stmt;                                                                                \
    } catch (const dsa::Error& e_) {                                                       \
      const std::string msg_ = e_.what();                                                  \
      for (const std::string& s_ : std::initializer_list<std::string>{__VA_ARGS__})        \
        EXPECT_NE(msg_.find(s_), std::string::npos) << "message: " << msg_ << "\nlacks: " << s_; \
    } catch (...) {                                                                        \
    }                                                                                      \
  } while (0)

namespace dsa::test {

inline std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());  // fresh inputs every run
  return r;
}
inline float randn(float std = 1.0f) { return std::normal_distribution<float>(0.f, std)(rng()); }
inline float randu(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng()); }

inline Tensor rand_bf16(Shape s, float std = 1.0f) {
  Tensor t = host_tensor(DType::BF16, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<uint16_t>()[i] = f32_to_bf16(randn(std));
  return t;
}
inline Tensor rand_f32(Shape s, float std = 1.0f) {
  Tensor t = host_tensor(DType::F32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = randn(std);
  return t;
}
// Random finite e4m3 codes (no NaN).
inline Tensor rand_e4m3(Shape s) {
  Tensor t = host_tensor(DType::E4M3, s);
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint8_t c;
    do c = uint8_t(rng()()); while ((c & 0x7f) == 0x7f);
    t.ptr<uint8_t>()[i] = c;
  }
  return t;
}
// Fill with 0xff bytes: NaN for bf16/f32/e4m3, -1 for ints — any unwritten element shows.
inline void poison(Tensor& t) { std::memset(t.data, 0xff, t.nbytes()); }

inline double bf(uint16_t b) { return double(bf16_to_f32(b)); }

// Nearest e4m3 code to v (|v| <= 448) by exhaustive search, ties to the even code — an
// independent reference for f32_to_e4m3.
inline uint8_t ref_e4m3(double v) {
  int best = -1;
  double bd = 1e300;
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    if ((c & 0x80) && (c & 0x7f) == 0) continue;  // prefer +0 for zero
    const double d = std::fabs(double(e4m3_to_f32(uint8_t(c))) - v);
    if (d < bd || (d == bd && (c & 1) == 0 && (best & 1) == 1)) { bd = d; best = c; }
  }
  if (v < 0 && best == 0) return 0x80;  // -0 keeps its sign
  return uint8_t(best);
}
// Reference ue8m0 scale in double: 2^ceil(log2(max(amax, 1e-4) / 448)).
inline double ref_scale(double amax) { return std::exp2(std::ceil(std::log2(std::max(amax, 1e-4) / 448.0))); }

// Relative L2 error ||a - b|| / ||b||.
inline double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// A one-sequence batch of n_new tokens after `start` cached tokens, with a shuffled block table
// (so page boundaries and non-contiguous blocks are exercised).
inline Batch one_seq_batch(int64_t start, int64_t n_new, int64_t num_blocks, std::vector<int32_t>* blocks_out = nullptr) {
  Batch b;
  BatchSeq s;
  s.start_pos = start;
  s.n_new = n_new;
  b.seqs.push_back(s);
  for (int64_t i = 0; i < n_new; ++i) {
    b.positions.push_back(int32_t(start + i));
    b.token_seq.push_back(0);
  }
  const int64_t nb = (start + n_new + kKvBlock - 1) / kKvBlock;
  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  for (int64_t i = 0; i < num_blocks; ++i) perm[size_t(i)] = int32_t(i);
  std::shuffle(perm.begin(), perm.end(), rng());
  b.max_blocks = nb;
  b.block_table.assign(perm.begin(), perm.begin() + nb);
  if (blocks_out) *blocks_out = b.block_table;
  return b;
}

}  // namespace dsa::test

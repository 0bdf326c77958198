// MLA: the 656-byte cache, prefill (MHA) and decode (absorbed MQA) forms against float64
// references with the reference's rounding points; DSA == dense when every position is selected.
#include <algorithm>
#include <numeric>

#include "backends/cpu/cpu_backend.h"
#include "test_util.h"

namespace dsa::test {

TEST(Attention, MlaCacheLayoutIs656BytesAndRoundTrips) {
  static_assert(kMlaTokenBytes == 656 && kIndexTokenBytes == 132);
  CpuBackend be(2);
  const int64_t L = 150, NB = 6;
  KvLayer kv{host_tensor(DType::U8, {NB, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {NB, kKvBlock * kIndexTokenBytes})};
  Batch b = one_seq_batch(0, L, NB);
  Tensor lat = rand_bf16({L, 512}, 2.0f), pe = rand_bf16({L, 64});
  be.mla_cache_write(lat, pe, kv, b);
  Tensor rk = host_tensor(DType::BF16, {L, 512}), rp = host_tensor(DType::BF16, {L, 64});
  poison(rk);
  poison(rp);
  be.mla_cache_read(kv, b, rk, rp);
  for (int64_t p = 0; p < L; ++p) {
    const uint8_t* row = kv.mla.ptr<uint8_t>() + (b.block_table[size_t(p / 64)] * 64 + p % 64) * 656;
    for (int g = 0; g < 4; ++g) {
      double amax = 0;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(bf(lat.ptr<uint16_t>()[p * 512 + g * 128 + i])));
      float sc;
      std::memcpy(&sc, row + 512 + 4 * g, 4);  // 4 fp32 scales after the 512 e4m3 codes
      ASSERT_EQ(double(sc), ref_scale(amax));
      for (int i = 0; i < 128; ++i) {
        const uint8_t code = ref_e4m3(std::clamp(bf(lat.ptr<uint16_t>()[p * 512 + g * 128 + i]) / sc, -448.0, 448.0));
        ASSERT_EQ(row[g * 128 + i], code);
        ASSERT_EQ(bf(rk.ptr<uint16_t>()[p * 512 + g * 128 + i]), double(e4m3_to_f32(code)) * sc) << "dequantised = e4m3 * scale";
      }
    }
    ASSERT_EQ(std::memcmp(row + 528, pe.ptr<uint16_t>() + p * 64, 128), 0) << "64 bf16 RoPE dims at bytes 528..655";
    ASSERT_EQ(std::memcmp(rp.ptr<uint16_t>() + p * 64, pe.ptr<uint16_t>() + p * 64, 128), 0);
  }
}

namespace {
// float64 reference of one (token, head) of attention over a candidate list, with the reference's
// rounding: bf16(score), bf16(score * scale), softmax, bf16(P), sum P v, (caller rounds to bf16).
std::vector<double> ref_attend(const std::vector<std::vector<double>>& k, const std::vector<std::vector<double>>& v,
                               const std::vector<double>& q, const std::vector<int32_t>& cand, float scale) {
  std::vector<double> s;
  for (int32_t j : cand) {
    double d = 0;
    for (size_t i = 0; i < q.size(); ++i) d += q[i] * k[size_t(j)][i];
    s.push_back(bf16_to_f32(f32_to_bf16(bf16_to_f32(f32_to_bf16(float(d))) * scale)));
  }
  const double m = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - m));
  std::vector<double> o(v[0].size(), 0.0);
  for (size_t i = 0; i < cand.size(); ++i) {
    const double p = bf16_to_f32(f32_to_bf16(float(s[i] / sum)));
    for (size_t d = 0; d < o.size(); ++d) o[d] += p * v[size_t(cand[i])][d];
  }
  return o;
}
}  // namespace

TEST(Attention, PrefillMhaDenseAndSparseMatchFloat64) {
  CpuBackend be(2);
  const int64_t start = 40, T = 30, L = start + T, H = 5;  // odd head count; chunk on top of a cache
  const float scale = 0.0935652f;
  Tensor q = rand_bf16({T, H, 192}), kvup = rand_bf16({L, H, 256}), pe = rand_bf16({L, 64});
  Batch b = one_seq_batch(start, T, 4);
  // Sparse selection: a random subset of each token's visible positions (including -1 padding).
  const int64_t K = 16;
  Tensor topk = host_tensor(DType::I32, {T, K});
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pos(static_cast<size_t>(start + t + 1));
    std::iota(pos.begin(), pos.end(), 0);
    std::shuffle(pos.begin(), pos.end(), rng());
    for (int64_t i = 0; i < K; ++i) topk.ptr<int32_t>()[t * K + i] = i < K - 3 ? pos[size_t(i)] : -1;
  }
  for (const Tensor* sel : {(const Tensor*)nullptr, (const Tensor*)&topk}) {
    Tensor out = host_tensor(DType::BF16, {T, H, 128});
    poison(out);
    be.attention_mha(q, kvup, pe, b, sel, scale, out);
    std::vector<double> got, ref;
    for (int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> k(static_cast<size_t>(L)), v(static_cast<size_t>(L));
      for (int64_t j = 0; j < L; ++j) {
        for (int i = 0; i < 128; ++i) k[size_t(j)].push_back(bf(kvup.ptr<uint16_t>()[(j * H + h) * 256 + i]));
        for (int i = 0; i < 64; ++i) k[size_t(j)].push_back(bf(pe.ptr<uint16_t>()[j * 64 + i]));
        for (int i = 0; i < 128; ++i) v[size_t(j)].push_back(bf(kvup.ptr<uint16_t>()[(j * H + h) * 256 + 128 + i]));
      }
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> qv;
        for (int i = 0; i < 192; ++i) qv.push_back(bf(q.ptr<uint16_t>()[(t * H + h) * 192 + i]));
        std::vector<int32_t> cand;
        if (sel) { for (int64_t i = 0; i < K; ++i) if (topk.ptr<int32_t>()[t * K + i] >= 0) cand.push_back(topk.ptr<int32_t>()[t * K + i]); }
        else for (int32_t j = 0; j <= start + t; ++j) cand.push_back(j);
        auto o = ref_attend(k, v, qv, cand, scale);
        for (int d = 0; d < 128; ++d) {
          ref.push_back(o[size_t(d)]);
          got.push_back(bf(out.ptr<uint16_t>()[(t * H + h) * 128 + d]));
          ASSERT_FALSE(std::isnan(got.back()));
        }
      }
    }
    EXPECT_LT(rel_l2(got, ref), 5e-3) << (sel ? "sparse" : "dense");
  }
}

TEST(Attention, SparseEqualsDenseWhenEveryPositionIsSelected) {
  // L <= k: top-k selects every visible position, so DSA must be bit-identical to dense causal.
  CpuBackend be(2);
  const int64_t T = 20, H = 4, K = 32;
  Tensor q = rand_bf16({T, H, 192}), kvup = rand_bf16({T, H, 256}), pe = rand_bf16({T, 64});
  Batch b = one_seq_batch(0, T, 2);
  Tensor topk = host_tensor(DType::I32, {T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) topk.ptr<int32_t>()[t * K + i] = i <= t ? int32_t(t - i) : -1;  // any order
  Tensor a = host_tensor(DType::BF16, {T, H, 128}), d = host_tensor(DType::BF16, {T, H, 128});
  be.attention_mha(q, kvup, pe, b, &topk, 0.1f, a);
  be.attention_mha(q, kvup, pe, b, nullptr, 0.1f, d);
  EXPECT_EQ(std::memcmp(a.data, d.data, a.nbytes()), 0);
  // ... and differs once a position is dropped.
  topk.ptr<int32_t>()[(T - 1) * K + 3] = -1;
  be.attention_mha(q, kvup, pe, b, &topk, 0.1f, a);
  EXPECT_NE(std::memcmp(a.data, d.data, a.nbytes()), 0);
}

TEST(Attention, DecodeMqaMatchesFloat64AndTheMhaForm) {
  CpuBackend be(2);
  const int64_t L = 97, H = 3, NB = 3;
  const float scale = 0.0935652f;
  KvLayer kv{host_tensor(DType::U8, {NB, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {NB, kKvBlock * kIndexTokenBytes})};
  Batch wb = one_seq_batch(0, L, NB);
  Tensor lat = rand_bf16({L, 512}), kpe = rand_bf16({L, 64});
  be.mla_cache_write(lat, kpe, kv, wb);
  Batch b = wb;  // one decode token at position L - 1
  b.positions = {int32_t(L - 1)};
  b.token_seq = {0};
  b.seqs[0].start_pos = L - 1;
  b.seqs[0].n_new = 1;
  Tensor ql = rand_bf16({1, H, 512}, 0.05f), qp = rand_bf16({1, H, 64}, 0.05f), out = host_tensor(DType::BF16, {1, H, 512});
  Tensor ckv = host_tensor(DType::BF16, {L, 512}), cpe = host_tensor(DType::BF16, {L, 64});
  be.mla_cache_read(kv, wb, ckv, cpe);
  for (int sparse = 0; sparse < 2; ++sparse) {
    Tensor topk = host_tensor(DType::I32, {1, 40});
    std::vector<int32_t> cand;
    for (int64_t i = 0; i < 40; ++i) topk.ptr<int32_t>()[i] = int32_t((i * 37) % L);
    poison(out);
    be.attention_mqa(ql, qp, kv, b, sparse ? &topk : nullptr, scale, out);
    std::vector<double> got, ref;
    for (int64_t h = 0; h < H; ++h) {
      if (sparse) { cand.assign(topk.ptr<int32_t>(), topk.ptr<int32_t>() + 40); } else { cand.resize(size_t(L)); std::iota(cand.begin(), cand.end(), 0); }
      // scores: bf16(bf16(q_lat . kv) + bf16(q_pe . pe)), then bf16(* scale)
      std::vector<double> s;
      for (int32_t j : cand) {
        double a = 0, c = 0;
        for (int i = 0; i < 512; ++i) a += bf(ql.ptr<uint16_t>()[h * 512 + i]) * bf(ckv.ptr<uint16_t>()[j * 512 + i]);
        for (int i = 0; i < 64; ++i) c += bf(qp.ptr<uint16_t>()[h * 64 + i]) * bf(cpe.ptr<uint16_t>()[j * 64 + i]);
        s.push_back(round_bf16(round_bf16(round_bf16(float(a)) + round_bf16(float(c))) * scale));
      }
      const double m = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (int c = 0; c < 512; ++c) {
        double o = 0;
        for (size_t i = 0; i < cand.size(); ++i) o += round_bf16(float(s[i] / sum)) * bf(ckv.ptr<uint16_t>()[cand[i] * 512 + c]);
        ref.push_back(o);
        got.push_back(bf(out.ptr<uint16_t>()[h * 512 + c]));
      }
    }
    EXPECT_LT(rel_l2(got, ref), 5e-3) << (sparse ? "sparse" : "dense");
  }
}

TEST(Attention, AbsorbedProductsMatchFloat64) {
  CpuBackend be(2);
  const int64_t T = 3, H = 2;
  Tensor q = rand_bf16({T, H, 192}), w = rand_bf16({H, 256, 512}, 0.05f), ql = host_tensor(DType::BF16, {T, H, 512});
  be.mla_absorb_q(q, w, ql);
  Tensor ol = rand_bf16({T, H, 512}), o = host_tensor(DType::BF16, {T, H, 128});
  be.mla_absorb_out(ol, w, o);
  std::vector<double> g1, r1, g2, r2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      for (int c = 0; c < 512; ++c) {
        double s = 0;
        for (int d = 0; d < 128; ++d) s += bf(q.ptr<uint16_t>()[(t * H + h) * 192 + d]) * bf(w.ptr<uint16_t>()[(h * 256 + d) * 512 + c]);
        r1.push_back(s);
        g1.push_back(bf(ql.ptr<uint16_t>()[(t * H + h) * 512 + c]));
      }
      for (int d = 0; d < 128; ++d) {
        double s = 0;
        for (int c = 0; c < 512; ++c) s += bf(ol.ptr<uint16_t>()[(t * H + h) * 512 + c]) * bf(w.ptr<uint16_t>()[(h * 256 + 128 + d) * 512 + c]);
        r2.push_back(s);
        g2.push_back(bf(o.ptr<uint16_t>()[(t * H + h) * 128 + d]));
      }
    }
  EXPECT_LT(rel_l2(g1, r1), 3e-3);
  EXPECT_LT(rel_l2(g2, r2), 3e-3);
}

}  // namespace dsa::test

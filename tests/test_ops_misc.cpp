// Norms, RoPE (both layouts), the YaRN table, Hadamard, MoE routing — float64 / hand-computed refs.
#include "backends/cpu/cpu_backend.h"
#include "io/model_config.h"
#include "model/random_model.h"
#include "model/rope_table.h"
#include "test_util.h"

namespace dsa::test {

TEST(Ops, RmsNormAndFusedResidual) {
  CpuBackend be(2);
  const int64_t T = 5, D = 384;
  Tensor x = rand_bf16({T, D}), r = rand_bf16({T, D}), w = rand_f32({D}, 0.5f), out = host_tensor(DType::BF16, {T, D});
  Tensor r0 = host_tensor(DType::BF16, {T, D});
  std::memcpy(r0.data, r.data, r.nbytes());
  poison(out);
  be.add_rms_norm(x, r, w, 1e-6f, out);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    std::vector<double> s(static_cast<size_t>(D));
    for (int64_t i = 0; i < D; ++i) {
      s[size_t(i)] = double(float(bf(x.ptr<uint16_t>()[t * D + i]) + bf(r0.ptr<uint16_t>()[t * D + i])));  // fp32 sum
      ss += s[size_t(i)] * s[size_t(i)];
      ASSERT_EQ(r.ptr<uint16_t>()[t * D + i], f32_to_bf16(float(s[size_t(i)]))) << "carried residual is bf16(sum)";
    }
    const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
    for (int64_t i = 0; i < D; ++i) {
      const double ref = w.ptr<float>()[i] * s[size_t(i)] * inv;  // normalises the unrounded sum
      ASSERT_NEAR(bf(out.ptr<uint16_t>()[t * D + i]), ref, std::fabs(ref) * 0.0079 + 1e-6);
    }
  }
}

TEST(Ops, LayerNormWithBias) {
  CpuBackend be(2);
  const int64_t T = 9, D = 128;
  Tensor x = rand_bf16({T, D}, 3.0f), w = rand_f32({D}), b = rand_f32({D}), out = host_tensor(DType::BF16, {T, D});
  poison(out);
  be.layer_norm(x, w, b, 1e-6f, out);
  for (int64_t t = 0; t < T; ++t) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < D; ++i) m += bf(x.ptr<uint16_t>()[t * D + i]);
    m /= D;
    for (int64_t i = 0; i < D; ++i) v += std::pow(bf(x.ptr<uint16_t>()[t * D + i]) - m, 2);
    v /= D;
    for (int64_t i = 0; i < D; ++i) {
      const double ref = (bf(x.ptr<uint16_t>()[t * D + i]) - m) / std::sqrt(v + 1e-6) * w.ptr<float>()[i] + b.ptr<float>()[i];
      ASSERT_NEAR(bf(out.ptr<uint16_t>()[t * D + i]), ref, std::fabs(ref) * 0.0079 + 1e-5);
    }
  }
}

TEST(Ops, YarnTableForDsaMiniAnd671B) {
  // dsa-mini: factor 4, original 2048, beta 32/1 -> correction dims 8 and 21; scale 0.0935652.
  ModelConfig mini = preset_model_config("mini");
  EXPECT_NEAR(mini.mla_softmax_scale(), 0.0935652, 5e-7);
  std::vector<float> f = rope_frequencies(mini);
  for (int i = 0; i < 32; ++i) {
    const float base = 1.0f / std::pow(10000.0f, float(2 * i) / 64.0f);
    if (i <= 8) {
      EXPECT_EQ(f[size_t(i)], base) << i;
    } else if (i >= 21) {
      EXPECT_FLOAT_EQ(f[size_t(i)], base / 4) << i;
    } else {
      EXPECT_LT(f[size_t(i)], base);
      EXPECT_GT(f[size_t(i)], base / 4);
    }
  }
  // 671B: factor 40, original 4096 -> dims 10 and 23; scale 0.135234; i = 16 blends 0.01 -> 0.0055.
  ModelConfig big = preset_model_config("v32-real-attn");
  EXPECT_NEAR(big.mla_softmax_scale(), 0.13523378, 5e-7);
  std::vector<float> g = rope_frequencies(big);
  EXPECT_EQ(g[10], 1.0f / std::pow(10000.0f, 20.0f / 64.0f));
  EXPECT_NEAR(g[16], 0.0055, 5e-5);
  EXPECT_FLOAT_EQ(g[23], 1.0f / std::pow(10000.0f, 46.0f / 64.0f) / 40);
}

TEST(Ops, RopeBothLayoutsOnDistinctValues) {
  CpuBackend be(2);
  ModelConfig cfg = preset_model_config("mini");
  Tensor tab = rope_table(cfg, 600);
  const int64_t T = 4, H = 3, W = 192;
  Batch b = one_seq_batch(517, T, 16);  // positions 517..520
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::HalfSplit}) {
    const int64_t col = layout == RopeLayout::Interleaved ? 128 : 0;  // MLA: last 64 dims; indexer: first 64
    Tensor x = host_tensor(DType::BF16, {T, H, W});
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<uint16_t>()[i] = f32_to_bf16(1.0f + float(i) / 64.0f);  // all distinct
    Tensor orig = host_tensor(DType::BF16, {T, H, W});
    std::memcpy(orig.data, x.data, x.nbytes());
    be.rope(x, col, b, tab, layout);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const uint16_t* o = orig.ptr<uint16_t>() + (t * H + h) * W;
        const uint16_t* r = x.ptr<uint16_t>() + (t * H + h) * W;
        for (int64_t c = 0; c < W; ++c)
          if (c < col || c >= col + 64) {
            ASSERT_EQ(r[c], o[c]) << "outside the rotated slice";
          }
        for (int i = 0; i < 32; ++i) {
          const int a = layout == RopeLayout::Interleaved ? 2 * i : i, bb = layout == RopeLayout::Interleaved ? 2 * i + 1 : i + 32;
          const double cs = tab.ptr<float>()[(b.positions[size_t(t)] * 32 + i) * 2], sn = tab.ptr<float>()[(b.positions[size_t(t)] * 32 + i) * 2 + 1];
          const double xa = bf(o[col + a]), xb = bf(o[col + bb]);
          EXPECT_NEAR(bf(r[col + a]), xa * cs - xb * sn, 0.004 * (std::fabs(xa) + std::fabs(xb))) << "pair " << i;
          EXPECT_NEAR(bf(r[col + bb]), xa * sn + xb * cs, 0.004 * (std::fabs(xa) + std::fabs(xb))) << "pair " << i;
        }
      }
  }
}

TEST(Ops, HadamardOnUnitVectorsIsSylvesterRow) {
  CpuBackend be(2);
  Tensor x = host_tensor(DType::BF16, {128, 128});
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < 128; ++j) x.ptr<uint16_t>()[i * 128 + j] = f32_to_bf16(i == j ? 1.0f : 0.0f);
  be.hadamard128(x);
  const float mag = bf16_to_f32(f32_to_bf16(1.0f / std::sqrt(128.0f)));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < 128; ++j)
      ASSERT_EQ(bf16_to_f32(x.ptr<uint16_t>()[i * 128 + j]), (__builtin_popcount(i & j) & 1) ? -mag : mag) << i << "," << j;
  // And it is orthonormal on a random vector: applying it twice returns the input (to bf16 precision).
  Tensor y = rand_bf16({3, 128}), y0 = host_tensor(DType::BF16, {3, 128});
  std::memcpy(y0.data, y.data, y.nbytes());
  be.hadamard128(y);
  be.hadamard128(y);
  for (int i = 0; i < 3 * 128; ++i) EXPECT_NEAR(bf(y.ptr<uint16_t>()[i]), bf(y0.ptr<uint16_t>()[i]), 0.03);
}

TEST(Ops, MoeRoutingHandComputed) {
  // 8 experts in 4 groups of 2, keep 2 groups, 2 experts; bias changes selection but not weights.
  CpuBackend be(2);
  Tensor logits = host_tensor(DType::F32, {1, 8}), bias = host_tensor(DType::F32, {8});
  const float lg[8] = {2.0f, -1.0f, 0.5f, 0.4f, 3.0f, -3.0f, 0.0f, 0.1f};
  const float bs[8] = {0.0f, 0.0f, 0.3f, 0.3f, -0.9f, 0.0f, 0.0f, 0.0f};
  std::memcpy(logits.data, lg, sizeof lg);
  std::memcpy(bias.data, bs, sizeof bs);
  Tensor ids = host_tensor(DType::I32, {1, 2}), w = host_tensor(DType::F32, {1, 2});
  be.moe_route(logits, &bias, 4, 2, 2, true, 2.5f, ids, w);
  auto sg = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  // biased: e0 .881, e1 .269 | e2 .922, e3 .899 | e4 .053, e5 .047 | e6 .5, e7 .525
  // group scores (top-2 sums): g0 1.150, g1 1.821, g2 0.100, g3 1.025 -> keep g1, g0
  // best biased in {e0..e3}: e2 (.922), e3 (.899); weights from unbiased sigmoid, normalised, x2.5
  EXPECT_EQ(ids.ptr<int32_t>()[0], 2);
  EXPECT_EQ(ids.ptr<int32_t>()[1], 3);
  const double s2 = sg(0.5), s3 = sg(0.4);
  EXPECT_NEAR(w.ptr<float>()[0], s2 / (s2 + s3) * 2.5, 1e-6);
  EXPECT_NEAR(w.ptr<float>()[1], s3 / (s2 + s3) * 2.5, 1e-6);
  be.moe_route(logits, nullptr, 4, 2, 2, true, 2.5f, ids, w);
  // Without a bias the group score is the max: g0 .881, g1 .622, g2 .953, g3 .525 -> keep g2, g0 -> e4, e0.
  EXPECT_EQ(ids.ptr<int32_t>()[0], 4);
  EXPECT_EQ(ids.ptr<int32_t>()[1], 0);
}

}  // namespace dsa::test

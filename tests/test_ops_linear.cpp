// act_quant and the FP8 block-scaled GEMM against float64 references (architecture.md §5.1, §5.2, §11).
#include "backends/cpu/cpu_backend.h"
#include "model/random_model.h"
#include "test_util.h"

namespace dsa::test {

TEST(Ops, ActQuantBitExactAroundPowerOfTwoBoundaries) {
  CpuBackend be(2);
  const int64_t R = 64, K = 256;
  Tensor x = rand_bf16({R, K});
  // Rows whose amax sits at, just below and just above 448 * 2^j (and 7 * 2^j), and zero rows.
  for (int64_t r = 0; r < R; ++r) {
    uint16_t* row = x.ptr<uint16_t>() + r * K;
    const int j = int(r % 24) - 16;
    float amax;
    switch (r % 5) {
      case 0: amax = std::ldexp(448.f, j); break;
      case 1: amax = bf16_to_f32(f32_to_bf16(std::ldexp(448.f, j))) * (1 + 1.0f / 128); break;
      case 2: amax = std::ldexp(448.f, j) * (1 - 1.0f / 256); break;
      case 3: amax = 7 * std::ldexp(1.f, j); break;
      default: amax = 0.f;
    }
    for (int64_t i = 0; i < K; ++i) row[i] = amax == 0.f ? 0 : f32_to_bf16(randu(-amax, amax) * 0.9f);
    if (amax != 0.f) row[r % K] = f32_to_bf16(-amax), row[(r * 7 + 200) % K] = f32_to_bf16(amax);
  }
  Tensor q = host_tensor(DType::E4M3, {R, K}), s = host_tensor(DType::F32, {R, K / 128});
  poison(q);
  poison(s);
  be.act_quant(x, q, s);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t g = 0; g < K / 128; ++g) {
      double amax = 0;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(bf(x.ptr<uint16_t>()[r * K + g * 128 + i])));
      const double sc = ref_scale(amax);
      ASSERT_EQ(double(s.ptr<float>()[r * (K / 128) + g]), sc) << "row " << r << " group " << g << " amax " << amax;
      for (int i = 0; i < 128; ++i) {
        const double v = std::clamp(bf(x.ptr<uint16_t>()[r * K + g * 128 + i]) / sc, -448.0, 448.0);
        ASSERT_EQ(q.ptr<uint8_t>()[r * K + g * 128 + i], ref_e4m3(v)) << "row " << r << " col " << g * 128 + i;
      }
    }
}

// float64 reference of linear_fp8 with per-128 promotion: returns unrounded values.
static std::vector<double> ref_linear_fp8(const Tensor& x, const Fp8Weight& w) {
  const int64_t K = x.dim(1), T = x.dim(0), N = w.n(), KB = K / 128;
  std::vector<double> out(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> a(static_cast<size_t>(K)), as(static_cast<size_t>(KB));
    for (int64_t g = 0; g < KB; ++g) {
      double amax = 0;
      for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(bf(x.ptr<uint16_t>()[t * K + g * 128 + i])));
      as[size_t(g)] = ref_scale(amax);
      for (int i = 0; i < 128; ++i)
        a[size_t(g * 128 + i)] = e4m3_to_f32(ref_e4m3(std::clamp(bf(x.ptr<uint16_t>()[t * K + g * 128 + i]) / as[size_t(g)], -448.0, 448.0)));
    }
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t g = 0; g < KB; ++g) {
        double p = 0;
        for (int i = 0; i < 128; ++i) p += a[size_t(g * 128 + i)] * double(e4m3_to_f32(w.w.ptr<uint8_t>()[n * K + g * 128 + i]));
        acc += p * as[size_t(g)] * double(w.scale.ptr<float>()[(n / 128) * KB + g]);
      }
      out[size_t(t * N + n)] = acc;
    }
  }
  return out;
}

static Fp8Weight rand_fp8_weight(int64_t n, int64_t k) {
  Fp8Weight w;
  w.w = rand_e4m3({n, k});
  w.scale = host_tensor(DType::F32, {(n + 127) / 128, (k + 127) / 128});
  for (int64_t i = 0; i < w.scale.numel(); ++i) w.scale.ptr<float>()[i] = std::ldexp(1.0f, -int(rng()() % 12) - 4);
  return w;
}

TEST(Ops, LinearFp8MatchesFloat64WithPer128Promotion) {
  CpuBackend be(2);
  // Shapes from spec §11: N = 576 (wkv_a, not a multiple of 128), 64, and a wide one; T = 1 (decode) and many.
  for (auto [T, N, K] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 576, 384}, {37, 576, 384}, {5, 64, 512}, {2, 8192, 128}, {3, 1000, 256}, {64, 256, 1536}}) {
    Tensor x = rand_bf16({T, K}, 2.0f);
    Fp8Weight w = rand_fp8_weight(N, K);
    Tensor out = host_tensor(DType::BF16, {T, N});
    poison(out);
    be.linear_fp8(x, w, out);
    std::vector<double> ref = ref_linear_fp8(x, w), got(ref.size());
    int64_t off_by_more = 0;
    double rms = 0;
    for (double v : ref) rms += v * v;
    rms = std::sqrt(rms / double(ref.size()));
    for (size_t i = 0; i < ref.size(); ++i) {
      got[i] = bf(out.ptr<uint16_t>()[i]);
      ASSERT_FALSE(std::isnan(got[i])) << "unwritten output " << i;
      // The fp32 accumulation may move the result across a bf16 rounding boundary: allow one bf16
      // ulp of the true value, and count anything beyond.
      if (std::fabs(got[i] - ref[i]) > std::ldexp(std::fabs(ref[i]), -7) + 1e-5 * rms) ++off_by_more;
    }
    EXPECT_EQ(off_by_more, 0) << "T=" << T << " N=" << N << " K=" << K;
    EXPECT_LT(rel_l2(got, ref), 3e-3) << "bf16 output rounding bounds the error by ~2^-9 relative";
  }
}

TEST(Ops, LinearF32UsesExactUpcasts) {
  CpuBackend be(2);
  const int64_t T = 7, N = 33, K = 384;
  Tensor x = rand_bf16({T, K}), w = rand_bf16({N, K}), out = host_tensor(DType::F32, {T, N});
  poison(out);
  be.linear_f32(x, w, out);
  std::vector<double> ref(static_cast<size_t>(T * N)), got(ref.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += bf(x.ptr<uint16_t>()[t * K + k]) * bf(w.ptr<uint16_t>()[n * K + k]);
      ref[size_t(t * N + n)] = s;
      got[size_t(t * N + n)] = out.ptr<float>()[t * N + n];
    }
  EXPECT_LT(rel_l2(got, ref), 1e-5);  // fp32 accumulation over 384 terms
}

TEST(Ops, DequantFp8IsBlockwiseProduct) {
  CpuBackend be(2);
  Fp8Weight w = rand_fp8_weight(300, 256);
  Tensor out = host_tensor(DType::BF16, {300, 256});
  poison(out);
  be.dequant_fp8(w, out);
  for (int64_t n = 0; n < 300; ++n)
    for (int64_t k = 0; k < 256; ++k)
      ASSERT_EQ(bf(out.ptr<uint16_t>()[n * 256 + k]),
                double(e4m3_to_f32(w.w.ptr<uint8_t>()[n * 256 + k])) * w.scale.ptr<float>()[(n / 128) * 2 + k / 128]);
}

TEST(Ops, QuantizeFp8BlocksRoundTripsWithinE4m3Precision) {
  const int64_t n = 200, k = 300;
  std::vector<float> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = randn(0.05f);
  std::vector<uint8_t> q(w.size());
  std::vector<float> s(static_cast<size_t>(2 * 3));
  quantize_fp8_blocks(w.data(), n, k, q.data(), s.data());
  for (float sc : s) EXPECT_EQ(sc, pow2_ceil(sc)) << "scales are powers of two";
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const double d = double(e4m3_to_f32(q[size_t(i * k + j)])) * s[size_t((i / 128) * 3 + j / 128)];
      ASSERT_NEAR(d, w[size_t(i * k + j)], std::fabs(w[size_t(i * k + j)]) / 16 + s[size_t((i / 128) * 3 + j / 128)] * std::ldexp(1.0, -9));
    }
}

TEST(Ops, PreparedWeightLayoutGivesIdenticalResults) {
  // prepare_weight may re-lay out the codes (CPU: 64-row k-major panels); values and arithmetic
  // must not change: bit-identical outputs for decode and prefill shapes, and for dequant_fp8.
  CpuBackend be(2);
  for (auto [T, N, K] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1000, 384}, {3, 576, 512}, {50, 130, 256}}) {
    Tensor x = rand_bf16({T, K});
    Fp8Weight w = rand_fp8_weight(N, K), p = w;
    be.prepare_weight(p);
    EXPECT_NE(p.layout, 0);
    Tensor a = host_tensor(DType::BF16, {T, N}), b = host_tensor(DType::BF16, {T, N});
    poison(a);
    poison(b);
    be.linear_fp8(x, w, a);
    be.linear_fp8(x, p, b);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes()), 0) << "T=" << T << " N=" << N;
    Tensor da = host_tensor(DType::BF16, {N, K}), db = host_tensor(DType::BF16, {N, K});
    be.dequant_fp8(w, da);
    be.dequant_fp8(p, db);
    EXPECT_EQ(std::memcmp(da.data, db.data, da.nbytes()), 0);
  }
}

}  // namespace dsa::test

#include "test_util.h"

namespace dsa::test {

TEST(DType, E4m3DecodeTable) {
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xff)));
}

TEST(DType, E4m3EncodeRoundTripsEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(f32_to_e4m3(e4m3_to_f32(uint8_t(c))), c) << c;
  }
}

TEST(DType, E4m3EncodeMatchesExhaustiveNearestTiesToEven) {
  // Random values plus every exact midpoint between neighbouring codes (the tie cases).
  std::vector<double> vals;
  for (int i = 0; i < 20000; ++i) vals.push_back(randu(-448.f, 448.f) * std::exp2(-int(rng()() % 16)));
  for (int c = 0; c < 0x7e; ++c) {
    const double a = e4m3_to_f32(uint8_t(c)), b = e4m3_to_f32(uint8_t(c + 1));
    vals.push_back((a + b) / 2);
    vals.push_back(-(a + b) / 2);
  }
  for (double v : vals) {
    const float f = float(v);
    if (double(f) != v) continue;  // only values exactly representable in fp32
    EXPECT_EQ(f32_to_e4m3(f), ref_e4m3(v)) << v;
  }
}

TEST(DType, Bf16RoundToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even -> 1.0
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even) -> up
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, Ue8m0ScaleIsCeilPowerOfTwo) {
  for (int j = -20; j < 10; ++j) {
    const float p = std::ldexp(448.0f, j);
    if (p < 1e-4f) continue;
    EXPECT_EQ(ue8m0_scale(p), std::ldexp(1.0f, j)) << "amax = 448 * 2^" << j;           // exact: no rounding up
    EXPECT_EQ(ue8m0_scale(std::nextafter(p, 1e30f)), std::ldexp(1.0f, j + 1)) << j;    // just above: next power
    EXPECT_EQ(ue8m0_scale(std::nextafter(p, 0.f)), std::ldexp(1.0f, j)) << j;          // just below: same power
    EXPECT_EQ(double(ue8m0_scale(7 * std::ldexp(1.0f, j))), ref_scale(7 * std::ldexp(1.0, j)));
  }
  EXPECT_EQ(ue8m0_scale(0.f), float(ref_scale(0.0)));  // amax clamped at 1e-4
}

}  // namespace dsa::test

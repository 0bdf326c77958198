// The cost model of `dsa cost` (runtime/cost_model.h): parsing with clear errors, interpolation,
// and the $ per million tokens arithmetic against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>

#include "runtime/cost_model.h"

using dsa::CostMeasurements;

namespace {

std::string error_of(const std::string& text) {
  try {
    CostMeasurements::parse(text, "m.csv");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(CostModel, ParsesNotesSeriesAndRest) {
  const CostMeasurements m = CostMeasurements::parse(
      "# device: H100\nphase,attention,position,us_per_token\ndecode,dsa,16384,3\ndecode,dsa,4096,2\n"
      "decode,rest,0,1.5\nphase,attention,position,us_per_token\nprefill,dense,8192,7\n",
      "m.csv");
  ASSERT_EQ(m.notes.size(), 1u);
  EXPECT_EQ(m.notes[0], "device: H100");
  ASSERT_TRUE(m.has("decode", "dsa"));
  const auto& s = m.series.at({"decode", "dsa"});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].first, 4096);  // sorted by position
  EXPECT_EQ(m.rest_us.at("decode"), 1.5);
  EXPECT_FALSE(m.has("prefill", "dsa"));
}

TEST(CostModel, BadInputNamesTheLineAndField) {
  const std::string h = "phase,attention,position,us_per_token\n";
  EXPECT_NE(error_of("decode,dsa,1,2\n").find("before the header"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,dsa,1\n").find("m.csv:2: expected 4"), std::string::npos);
  EXPECT_NE(error_of(h + "train,dsa,1,2\n").find("phase 'train'"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,sparse,1,2\n").find("attention 'sparse'"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,dsa,x,2\n").find("position 'x'"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,dsa,1,nan\n").find("us_per_token 'nan'"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,dsa,-1,2\n").find("negative"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,dsa,1,2\ndecode,dsa,1,3\n").find("second"), std::string::npos);
  EXPECT_NE(error_of(h + "decode,rest,0,2\ndecode,rest,0,3\n").find("second"), std::string::npos);
  EXPECT_NE(error_of(h).find("no measurements"), std::string::npos);
  EXPECT_NE(error_of("phase,attention,pos,us\n").find("expected the header"), std::string::npos);
}

TEST(CostModel, InterpolatesAndExtrapolatesLinearly) {
  // Fresh random line y = a + b x through random positions: every x (inside and outside) on it.
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(0.5, 2.0);
  const double a = u(rng), b = u(rng) * 1e-3;
  std::vector<std::pair<double, double>> pts;
  for (double x : {1024.0, 4096.0 * u(rng), 65536.0 * u(rng), 131072.0 * u(rng)}) pts.emplace_back(x, a + b * x);
  std::sort(pts.begin(), pts.end());
  for (double x : {0.0, 1500.0, 30000.0, 100000.0, 300000.0})
    EXPECT_NEAR(dsa::interpolate_linear(pts, x), a + b * x, 1e-9 * (a + b * x)) << x;
  EXPECT_EQ(dsa::interpolate_linear({{10.0, 3.0}}, 1e6), 3.0);  // one point: constant
  EXPECT_EQ(dsa::interpolate_linear({{10.0, 1.0}, {20.0, 5.0}}, 0.0), 0.0);  // clamped at 0, not -3
  // a kink: exact at the nodes, linear between them
  const std::vector<std::pair<double, double>> k = {{0, 1}, {2048, 3}, {131072, 4}};
  EXPECT_DOUBLE_EQ(dsa::interpolate_linear(k, 1024), 2.0);
  EXPECT_DOUBLE_EQ(dsa::interpolate_linear(k, 2048), 3.0);
}

TEST(CostModel, DollarsPerMillionTokens) {
  // 61 layers x 10 µs = 610 µs per token; a million tokens = 610 GPU-seconds = $0.3389 at $2 per hour.
  dsa::CostOptions o;
  EXPECT_NEAR(dsa::dollars_per_million_tokens(10.0, o), 610.0 * 2.0 / 3600.0, 1e-12);
  const CostMeasurements m = CostMeasurements::parse(
      "phase,attention,position,us_per_token\ndecode,dsa,0,2\ndecode,dsa,131072,4\ndecode,rest,0,1\n"
      "prefill,dense,0,1\nprefill,dense,1024,2\n",
      "m.csv");
  o.layers = 10;
  o.price_per_gpu_hour = 3.6;  // $0.001 per GPU-second
  const auto rows = dsa::cost_table(m, o, {0, 65536, 131072});
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_NEAR(rows[1].decode_dsa, 10 * (3.0 + 1.0) * 1e-3, 1e-12);  // attention 3 µs at 64K + rest 1 µs
  EXPECT_NEAR(rows[2].prefill_dense, 10 * 129.0 * 1e-3, 1e-9);      // extrapolated: 1 + 128 µs, no prefill rest
  EXPECT_LT(rows[0].decode_dense, 0);                                // not measured
  EXPECT_LT(rows[0].prefill_dsa, 0);
}

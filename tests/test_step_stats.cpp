// StepStats (runtime/step_stats.h): the step kinds, the report dsa bench and dsa serve print, the
// percentile both use.
#include <gtest/gtest.h>

#include <thread>

#include "runtime/step_stats.h"

namespace dsa::test {

namespace {
StepTiming timing(int64_t seqs, int64_t decode_rows, int64_t tokens, double fwd, double sample) {
  StepTiming t;
  t.seqs = seqs;
  t.decode_rows = decode_rows;
  t.tokens = tokens;
  t.forward_s = fwd;
  t.sample_s = sample;
  return t;
}
}  // namespace

TEST(StepStats, KindsSumsAndReport) {
  StepStats s;
  s.add(timing(4, 0, 400, 0.08, 0.01), 0.1);  // prefill-only
  s.add_between(0.002);
  for (int i = 0; i < 3; ++i) {
    s.add(timing(4, 4, 4, 0.006, 0.002), 0.010);  // decode-only: host 2 ms
    s.add_between(0.001);
  }
  s.add(timing(5, 4, 104, 0.03, 0.002), 0.04);  // mixed: 4 decode rows + 100 prefill tokens
  s.add(timing(0, 0, 0, 0, 0), 0.0);            // cancellations only
  EXPECT_EQ(s.steps(), 6);
  EXPECT_EQ(s.sum[StepStats::kDecode].steps, 3);
  EXPECT_EQ(s.sum[StepStats::kMixed].steps, 1);
  EXPECT_EQ(s.sum[StepStats::kPrefill].steps, 1);
  EXPECT_EQ(s.sum[StepStats::kEmpty].steps, 1);
  EXPECT_NEAR(s.sum[StepStats::kDecode].host_s(), 0.006, 1e-12);
  EXPECT_NEAR(s.sum[StepStats::kDecode].between_s, 0.003, 1e-12);
  EXPECT_NEAR(s.sum[StepStats::kPrefill].between_s, 0.002, 1e-12);
  const std::string r = s.report("  ");
  EXPECT_NE(r.find("  decode-only steps: 3, 10.00 ms each = forward (enqueue) 6.00 + sample/sync 2.00 + host 2.000 ms (20.0%), "
                   "then 1.000 ms between steps; 4.0 rows each\n"),
            std::string::npos)
      << r;
  EXPECT_NE(r.find("mixed 1, 40.00 ms each (4.0 decode rows + 100 prefill tokens)"), std::string::npos) << r;
  EXPECT_NE(r.find("prefill-only 1, 100.00 ms each (400 tokens), then 2.000 ms between;"), std::string::npos) << r;
  EXPECT_NE(r.find("empty 1\n"), std::string::npos) << r;
  EXPECT_EQ(r.find("stepping thread"), std::string::npos) << r;  // no thread usage recorded
}

TEST(StepStats, ThreadUsageCountsThisThreadsCpuAndWall) {
  StepStats s;
  const ThreadUsage u0 = ThreadUsage::now();
  volatile double x = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(30);
  while (std::chrono::steady_clock::now() < until) x = x + 1;  // on a CPU
  std::this_thread::sleep_for(std::chrono::milliseconds(30));   // off it
  u0.add_since(s);
  EXPECT_GE(s.thread_wall_s, 0.059);
  EXPECT_GE(s.thread_cpu_s, 0.02);
  EXPECT_LT(s.thread_cpu_s, s.thread_wall_s - 0.02);
  EXPECT_GE(s.involuntary_switches, 0);
  s.add(timing(1, 1, 1, 0, 0), 0.001);
  EXPECT_NE(s.report("").find("stepping thread: "), std::string::npos);
}

TEST(StepStats, PercentileInterpolatesAsDsaBench) {
  EXPECT_EQ(percentile({}, 50), 0);
  EXPECT_EQ(percentile({3}, 99), 3);
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 99), 4.96);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 0), 1);
}

}  // namespace dsa::test

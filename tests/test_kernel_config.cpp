// The CUDA backend's KernelConfig (backends/cuda/kernel_config.h), which every build compiles: defaults, the
// DSA_CUDA_* environment variables with their historical meanings, and bad values / unknown names as errors
// naming the variable and what it takes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "backends/cuda/kernel_config.h"
#include "core/error.h"

namespace dsa::cuda {
namespace {

using Env = std::map<std::string, std::string>;

// The message of the Error that from_env(env) throws ("" when it does not throw).
std::string error_of(const Env& env) {
  try {
    KernelConfig::from_env(env);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(KernelConfig, Defaults) {
  const KernelConfig c = KernelConfig::from_env({});
  EXPECT_TRUE(c.pdl);
  EXPECT_TRUE(c.graphs);
  EXPECT_EQ(c.fp8_gemm, Fp8Path::Auto);
  EXPECT_FALSE(c.indexer.exact);
  EXPECT_FALSE(c.indexer.fp8);
  EXPECT_TRUE(c.indexer.wgmma);
  EXPECT_EQ(c.indexer.sm90_fp8_stages, 4);
  EXPECT_EQ(c.indexer.score_tile_floats, int64_t(64) << 20);
  EXPECT_TRUE(c.topk.onchip);
  EXPECT_EQ(c.topk.force_kpt, 0);
  EXPECT_FALSE(c.topk.lane_histogram);
  EXPECT_EQ(c.topk.hist0, -1);
  EXPECT_TRUE(c.topk.cand_final);
  EXPECT_FALSE(c.topk.trace);
  EXPECT_EQ(c.mqa.path, 0);
  EXPECT_FALSE(c.mqa.simple);
  EXPECT_EQ(c.mqa.force_splits, 0);
  EXPECT_TRUE(c.mqa.wgmma);
  EXPECT_FALSE(c.mqa.scores_only);
  EXPECT_EQ(c.mqa.max_scratch, int64_t(512) << 20);
  // A default-constructed config is the same as one from an empty environment.
  EXPECT_EQ(KernelConfig{}.describe(), c.describe());
}

TEST(KernelConfig, EveryVariable) {
  const KernelConfig c = KernelConfig::from_env({{"DSA_CUDA_PDL", "0"},
                                                 {"DSA_CUDA_GRAPHS", "0"},
                                                 {"DSA_CUDA_FP8_GEMM", "mma64"},
                                                 {"DSA_CUDA_FP8_WGMMA", "0"},
                                                 {"DSA_CUDA_INDEXER_EXACT", "1"},
                                                 {"DSA_CUDA_INDEXER_FP8", "1"},
                                                 {"DSA_CUDA_INDEXER_WGMMA", "0"},
                                                 {"DSA_CUDA_INDEXER_WGMMA_FP8", "0"},
                                                 {"DSA_CUDA_TOPK_ONCHIP", "0"},
                                                 {"DSA_CUDA_TOPK_SCORE_HIST", "1"},
                                                 {"DSA_CUDA_TOPK_CAND_FINAL", "0"},
                                                 {"DSA_CUDA_MQA_PATH", "2"},
                                                 {"DSA_CUDA_MQA_SIMPLE", "1"},
                                                 {"DSA_CUDA_MQA_SPLITS", "17"},
                                                 {"DSA_CUDA_MQA_WGMMA", "0"},
                                                 {"DSA_CUDA_MQA_SCORES_ONLY", "1"}});
  EXPECT_FALSE(c.pdl);
  EXPECT_FALSE(c.graphs);
  EXPECT_EQ(c.fp8_gemm, Fp8Path::Mma64);
  EXPECT_FALSE(c.fp8_wgmma);
  EXPECT_TRUE(c.indexer.exact);
  EXPECT_TRUE(c.indexer.fp8);
  EXPECT_FALSE(c.indexer.wgmma);
  EXPECT_EQ(c.indexer.sm90_fp8_stages, 0);
  EXPECT_FALSE(c.topk.onchip);
  EXPECT_EQ(c.topk.hist0, 1);
  EXPECT_FALSE(c.topk.cand_final);
  EXPECT_EQ(c.mqa.path, 2);
  EXPECT_TRUE(c.mqa.simple);
  EXPECT_EQ(c.mqa.force_splits, 17);
  EXPECT_FALSE(c.mqa.wgmma);
  EXPECT_TRUE(c.mqa.scores_only);
  // Every documented variable was set above.
  EXPECT_EQ(kernel_env_vars().size(), size_t(16));
  const std::string d = c.describe();
  for (const char* part : {"pdl off", "graphs off", "fp8 mma64", "fast-numerics wgmma off", "f16", "exact on", "on-chip off", "first histogram on",
                           "candidate exchange off", "CUDA cores (simple)", "splits 17", "wgmma scores off", "scores only"})
    EXPECT_NE(d.find(part), std::string::npos) << part << " in\n" << d;
}

TEST(KernelConfig, ValuesKeepTheirMeanings) {
  // Empty values count as unset (the old parsers' behaviour for every switch).
  EXPECT_TRUE(KernelConfig::from_env({{"DSA_CUDA_PDL", ""}}).pdl);
  EXPECT_TRUE(KernelConfig::from_env({{"DSA_CUDA_GRAPHS", ""}}).graphs);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_INDEXER_WGMMA_FP8", "1"}}).indexer.sm90_fp8_stages, 4);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_TOPK_SCORE_HIST", "0"}}).topk.hist0, 0);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_TOPK_SCORE_HIST", "auto"}}).topk.hist0, -1);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_MQA_PATH", "3"}}).mqa.path, 3);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_MQA_SPLITS", "0"}}).mqa.force_splits, 0);
  EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_MQA_SPLITS", "65535"}}).mqa.force_splits, 65535);
  for (Fp8Path p : {Fp8Path::Auto, Fp8Path::Mma, Fp8Path::Mma64, Fp8Path::Mma32, Fp8Path::Gemv})
    EXPECT_EQ(KernelConfig::from_env({{"DSA_CUDA_FP8_GEMM", fp8_path_name(p)}}).fp8_gemm, p);
  // Variables of other programs are not the backend's business.
  EXPECT_TRUE(KernelConfig::from_env({{"DSA_PROFILE_OPS", "1"}, {"DSA_CUDA", "OFF"}, {"CUDA_FORCE_PTX_JIT", "1"}}).pdl);
}

TEST(KernelConfig, BadValuesNameTheVariableAndTheAllowedValues) {
  struct Bad { const char* name; const char* value; const char* allowed; };
  for (const Bad& b : {Bad{"DSA_CUDA_PDL", "yes", "0 or 1"}, Bad{"DSA_CUDA_GRAPHS", "2", "0 or 1"},
                       Bad{"DSA_CUDA_FP8_GEMM", "mma", "auto, mma128, mma64, mma32 or gemv"},
                       Bad{"DSA_CUDA_INDEXER_EXACT", "true", "0 or 1"}, Bad{"DSA_CUDA_INDEXER_WGMMA_FP8", "4", "0 or 1"},
                       Bad{"DSA_CUDA_TOPK_SCORE_HIST", "on", "0, 1 or auto"}, Bad{"DSA_CUDA_MQA_PATH", "4", "0, 1, 2 or 3"},
                       Bad{"DSA_CUDA_MQA_PATH", "-1", "0, 1, 2 or 3"}, Bad{"DSA_CUDA_MQA_PATH", "1x", "0, 1, 2 or 3"},
                       Bad{"DSA_CUDA_MQA_SPLITS", "65536", "[0, 65535]"}, Bad{"DSA_CUDA_MQA_SPLITS", " 3", "[0, 65535]"},
                       Bad{"DSA_CUDA_MQA_SCORES_ONLY", "2", "0 or 1"}}) {
    const std::string e = error_of({{b.name, b.value}});
    SCOPED_TRACE(std::string(b.name) + "=" + b.value + ": " + e);
    EXPECT_NE(e.find(b.name), std::string::npos);
    EXPECT_NE(e.find(std::string("'") + b.value + "'"), std::string::npos);
    EXPECT_NE(e.find(b.allowed), std::string::npos);
  }
}

TEST(KernelConfig, UnknownVariableIsAnError) {
  // A typo or a removed knob (DSA_CUDA_MQA_V went with the first MLA decode kernels) must not be ignored silently.
  for (const char* name : {"DSA_CUDA_PDl", "DSA_CUDA_MQA_V", "DSA_CUDA_TOPK"}) {
    const std::string e = error_of({{name, "1"}});
    EXPECT_NE(e.find(std::string("unknown environment variable ") + name), std::string::npos) << e;
    EXPECT_NE(e.find("DSA_CUDA_MQA_SPLITS"), std::string::npos) << "lists the known names: " << e;
  }
}

TEST(KernelConfig, ProcessEnvironment) {
  ::setenv("DSA_CUDA_MQA_SPLITS", "5", 1);
  EXPECT_EQ(KernelConfig::from_process_env().mqa.force_splits, 5);
  ::setenv("DSA_CUDA_MQA_SPLITS", "five", 1);
  EXPECT_THROW(KernelConfig::from_process_env(), Error);
  ::unsetenv("DSA_CUDA_MQA_SPLITS");
  ::setenv("DSA_CUDA_NO_SUCH_SWITCH", "1", 1);
  EXPECT_THROW(KernelConfig::from_process_env(), Error);
  ::unsetenv("DSA_CUDA_NO_SUCH_SWITCH");
}

TEST(KernelConfig, ValidateChecksSetterRanges) {
  KernelConfig c;
  EXPECT_NO_THROW(c.validate());
  c.indexer.sm90_fp8_stages = 7;
  EXPECT_THROW(c.validate(), Error);
  c = KernelConfig{};
  c.topk.force_kpt = 5;
  EXPECT_THROW(c.validate(), Error);
  c = KernelConfig{};
  c.mqa.path = 4;
  EXPECT_THROW(c.validate(), Error);
  c = KernelConfig{};
  c.topk.hist0 = -2;
  EXPECT_THROW(c.validate(), Error);
}

TEST(KernelConfig, Hist0Resolution) {
  TopkConfig t;
  EXPECT_TRUE(t.hist0_for(kTopkHist0AutoRows, kTopkHist0AutoMinLength));
  EXPECT_FALSE(t.hist0_for(kTopkHist0AutoRows + 1, kTopkHist0AutoMinLength));
  EXPECT_FALSE(t.hist0_for(1, kTopkHist0AutoMinLength - 1));
  t.hist0 = 1;
  EXPECT_TRUE(t.hist0_for(1000, 100));
  t.hist0 = 0;
  EXPECT_FALSE(t.hist0_for(1, 1 << 20));
}

}  // namespace
}  // namespace dsa::cuda

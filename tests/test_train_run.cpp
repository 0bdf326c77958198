// dsa train-indexer end to end on the tiny random model (issue 14): a short run lowers the loss,
// the written checkpoint differs from the input only in the indexer tensors and loads, a resumed
// run equals an uninterrupted one, and the sparse stage runs.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "io/safetensors.h"
#include "runtime/engine.h"
#include "test_models.h"
#include "train/indexer_ckpt.h"
#include "train/trainer.h"

namespace dsa::train {
namespace {

namespace fs = std::filesystem;

std::string tmp_dir(const std::string& name) {
  const std::string d = (fs::temp_directory_path() / ("dsa-train-" + name + "-" + std::to_string(::getpid()))).string();
  fs::remove_all(d);
  return d;
}

TrainOptions tiny_opts(const std::string& out, int64_t ctx, int64_t span) {
  TrainOptions o;
  o.model = test::tiny_model_dir();
  o.out = out;
  o.init_random = true;
  o.ctx = ctx;
  o.steps = 10;
  o.lr = 1e-2;
  o.warmup = 1;
  o.threads = 2;
  std::mt19937 g(3);
  for (int64_t i = 0; i < ctx + span - 1; ++i) o.tokens.push_back(int32_t(g() % 512));
  return o;
}

double total(const StepLog& s) {
  double t = 0;
  for (double l : s.loss) t += l;
  return t;
}

TEST(TrainIndexerRun, TenStepsLowerTheLossOnAFixedWindow) {
  TrainOptions o = tiny_opts(tmp_dir("loss"), 96, 1);  // one window: every step sees the same batch
  const TrainResult r = train_indexer(o);
  ASSERT_EQ(r.log.size(), 10u);
  EXPECT_LT(total(r.log.back()), 0.7 * total(r.log.front())) << total(r.log.front()) << " -> " << total(r.log.back());
  fs::remove_all(o.out);
}

TEST(TrainIndexerRun, CheckpointDiffersOnlyInTheIndexerAndLoads) {
  TrainOptions o = tiny_opts(tmp_dir("ckpt"), 64, 50);
  o.steps = 3;
  const TrainResult r = train_indexer(o);
  const Checkpoint in = Checkpoint::open(o.model), out = Checkpoint::open(o.out);
  ASSERT_EQ(in.names(), out.names());
  int changed = 0;
  for (const auto& n : in.names()) {
    const Tensor a = in.get(n), b = out.get(n);
    ASSERT_EQ(a.dtype, b.dtype) << n;
    ASSERT_EQ(a.shape, b.shape) << n;
    const bool same = std::memcmp(a.data, b.data, a.nbytes()) == 0;
    if (n.find(".indexer.") == std::string::npos) EXPECT_TRUE(same) << n << " changed";
    else changed += !same;
  }
  EXPECT_GT(changed, 0);
  // The stored indexer is the trained fp32 master up to FP8 / bf16 rounding.
  const ModelConfig cfg = ModelConfig::from_file(o.out + "/config.json");
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const IndexerParams<float> back = read_indexer(out, cfg, l);
    auto pa = back.parts();
    auto pb = r.params[size_t(l)].parts();
    for (size_t k = 0; k < pa.size(); ++k) {
      double num = 0, den = 0;
      for (size_t i = 0; i < pa[k]->size(); ++i) {
        num += std::pow(double((*pa[k])[i]) - (*pb[k])[i], 2);
        den += std::pow(double((*pb[k])[i]), 2);
      }
      EXPECT_LT(std::sqrt(num / den), 0.07) << "layer " << l << " part " << k;  // e4m3: 3 mantissa bits
    }
  }
  EngineOptions eo;
  auto eng = Engine::load(o.out, eo);  // loads and runs sparse
  Sequence s;
  const auto logits = eng->feed(s, std::vector<int32_t>(o.tokens.begin(), o.tokens.begin() + 40));
  EXPECT_EQ(int64_t(logits.size()), cfg.vocab_size);
  fs::remove_all(o.out);
}

TEST(TrainIndexerRun, ResumeEqualsUninterrupted) {
  TrainOptions a = tiny_opts(tmp_dir("full"), 48, 40), b = a;
  a.steps = b.steps = 6;
  b.out = tmp_dir("resumed");
  const TrainResult ra = train_indexer(a);
  b.stop_after = 3;
  const TrainResult rb1 = train_indexer(b);
  EXPECT_EQ(rb1.step, 3);
  b.stop_after = 0;
  b.resume = true;
  const TrainResult rb = train_indexer(b);
  EXPECT_EQ(rb.step, 6);
  ASSERT_EQ(rb.log.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(rb.log[i].loss, ra.log[i + 3].loss) << "step " << i + 4;
  for (size_t l = 0; l < ra.params.size(); ++l) {
    auto pa = ra.params[l].parts();
    auto pb = rb.params[l].parts();
    for (size_t k = 0; k < pa.size(); ++k) EXPECT_EQ(*pa[k], *pb[k]) << "layer " << l << " part " << k;
  }
  fs::remove_all(a.out);
  fs::remove_all(b.out);
}

TEST(TrainIndexerRun, TimeLimitStopsAfterTheStepThatPassesItAndSaves) {
  TrainOptions o = tiny_opts(tmp_dir("time-limit"), 48, 40);
  o.steps = 50;
  o.time_limit_s = 1e-9;  // every step ends past it: the first one stops the run
  const TrainResult r = train_indexer(o);
  EXPECT_EQ(r.step, 1);
  EXPECT_TRUE(fs::exists(o.out + "/train_state.bin"));
  EXPECT_TRUE(fs::exists(o.out + "/config.json"));
  fs::remove_all(o.out);
}

TEST(TrainIndexerRun, SparseStageRuns) {
  TrainOptions o = tiny_opts(tmp_dir("sparse"), 96, 1);
  o.sparse = true;
  o.topk = 16;
  o.init_random = false;
  o.steps = 4;
  const TrainResult r = train_indexer(o);
  ASSERT_EQ(r.log.size(), 4u);
  for (double x : r.log.back().loss) EXPECT_TRUE(std::isfinite(x));
  EXPECT_LT(total(r.log.back()), total(r.log.front()));
  fs::remove_all(o.out);
}

}  // namespace
}  // namespace dsa::train

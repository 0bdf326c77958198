#pragma once
// dsa train-indexer (issue 14, docs/training.md): the main model frozen and run forward only (its FP8
// weights as loaded, dense attention), each layer's indexer trained on its own KL loss with AdamW
// (fp32 masters), warm-up + cosine schedule, per-layer gradient clipping, random windows of ctx
// tokens, checkpoints and resume.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "train/indexer_grad.h"

namespace dsa::train {

struct TrainOptions {
  std::string model, data, out;  // model dir, MANIFEST.txt, output dir
  bool sparse = false;           // --stage sparse
  int64_t topk = 0;              // stage 2 k and the recall statistic's k (0: the config's index_topk)
  bool init_random = false;      // --init-indexer random (else keep the checkpoint's)
  bool add_indexer = false;
  int64_t add_heads = 64;        // --add-indexer: index_n_heads
  int64_t ctx = 1024, steps = 100, warmup = -1;  // warmup < 0: steps / 20 (at least 1)
  double lr = 1e-3, min_lr_ratio = 0.1, clip = 1.0, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double init_std = 0.02;
  uint64_t seed = 0;
  int64_t save_every = 0;        // 0: only at the end
  bool resume = false;
  int64_t stop_after = 0;        // stop (after saving) once this many steps are done: tests, time slices
  double time_limit_s = 0;       // stop (after saving) after the first step that ends past this many seconds (0: none)
  int threads = 0;
  std::string device = "cpu";    // cpu | cuda: the backbone and the indexer loss + gradient (AdamW on the host)
  bool exact_fp32 = false;       // cuda: the T^2 products in exact fp32 instead of TF32 (docs/training.md, "CUDA")
  bool profile = false;          // per-step time per phase in StepLog::phases
  bool absorbed_backbone = false;  // --backbone-form mqa: the frozen model's attention in the absorbed form
                                   // (tensor-core decode kernels; the tap still gets the MHA-form keys)
  std::vector<int32_t> tokens;   // if not empty: the token stream itself instead of --data (tests)
};

struct StepLog {
  int64_t step = 0, steps = 0, tokens = 0;
  double lr = 0, step_s = 0, tok_s = 0, eta_s = 0;
  std::vector<double> loss, recall, grad_norm;  // per layer
  std::vector<std::pair<std::string, double>> phases;  // --profile: seconds per phase of the step
};

struct TrainResult {
  int64_t step = 0;  // steps done
  std::vector<IndexerParams<float>> params;
  std::vector<StepLog> log;  // steps run by this call
};

double lr_at(const TrainOptions& o, int64_t step);  // step 1-based
TrainResult train_indexer(const TrainOptions& o, const std::function<void(const StepLog&)>& on_step = {});
std::string format_step(const StepLog& s);

}  // namespace dsa::train

// dsa train-indexer: train the lightning indexer of a frozen model (issue 14, docs/training.md):
// stage 1 (dense KL warm-up) or stage 2 (KL on the indexer's top-k), AdamW with warm-up + cosine,
// checkpoints and --resume; writes the HF checkpoint with only the indexer tensors changed.
#include <cstdio>

#include "tools/commands.h"
#include "tools/common.h"
#include "train/trainer.h"

namespace {

int run(int argc, char** argv) {
  using namespace dsa;
  CLI::App app{"Train the lightning indexer (model frozen): dense KL warm-up or sparse stage"};
  train::TrainOptions o;
  std::string stage = "dense", init = "keep";
  app.add_option("-m,--model", o.model, "model directory (HF checkpoint)")->required();
  app.add_option("--data", o.data, "MANIFEST.txt listing the training text files")->required();
  app.add_option("--out", o.out, "output directory: the checkpoint with the trained indexer, train_state.bin")->required();
  app.add_option("--stage", stage, "dense: KL to the dense attention over the prefix (stage 1); sparse: KL on the "
                 "indexer's top-k set (stage 2)")->check(CLI::IsMember({"dense", "sparse"}))->capture_default_str();
  app.add_option("--topk", o.topk, "stage 2's k, and the k of the recall statistic (0: the config's index_topk)");
  app.add_option("--init-indexer", init, "keep: start from the checkpoint's indexer; random: normal init")
      ->check(CLI::IsMember({"keep", "random"}))->capture_default_str();
  app.add_flag("--add-indexer", o.add_indexer, "the checkpoint has no indexer (V3.1-style): add the tensors and config "
               "fields (random init), then train");
  app.add_option("--index-heads", o.add_heads, "--add-indexer: index_n_heads")->capture_default_str();
  app.add_option("--ctx", o.ctx, "tokens per training window")->capture_default_str();
  app.add_option("--steps", o.steps, "optimiser steps (one window each)")->capture_default_str();
  app.add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr-ratio", o.min_lr_ratio, "cosine floor as a share of --lr")->capture_default_str();
  app.add_option("--warmup", o.warmup, "linear warm-up steps (default: steps / 20)");
  app.add_option("--clip", o.clip, "gradient clipping: max L2 norm per layer (0: off)")->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (matrices)")->capture_default_str();
  app.add_option("--init-std", o.init_std, "std of the random init of wq_b, wk, weights_proj")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of the init and of the window draws")->capture_default_str();
  app.add_option("--save-every", o.save_every, "write train_state.bin + the checkpoint every N steps (0: at the end)");
  app.add_flag("--resume", o.resume, "continue from --out/train_state.bin (same options)");
  app.add_option("--stop-after", o.stop_after, "stop (after saving) once this many steps have run in this call");
  app.add_option("--time-limit", o.time_limit_s,
                 "stop (after saving) after the first step that ends past this many seconds of training (0: none); "
                 "--resume continues the same schedule")
      ->check(CLI::NonNegativeNumber);
  app.add_option("-t,--threads", o.threads, "CPU threads (0: all cores)");
  app.add_option("--device", o.device, "cpu or cuda: the backbone forward and the indexer loss + gradient")
      ->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  std::string precision = "tf32";
  app.add_option("--precision", precision, "cuda: the products over the (query, key) pairs on TF32 tensor cores "
                 "(fp32 accumulation) or in exact fp32 (docs/training.md)")
      ->check(CLI::IsMember({"tf32", "fp32"}))->capture_default_str();
  std::string backbone_form = "mha";
  app.add_option("--backbone-form", backbone_form, "the frozen model's attention: mha (the reference form) or mqa "
                 "(absorbed, as decode runs it; much faster on CUDA for long windows; docs/training.md)")
      ->check(CLI::IsMember({"mha", "mqa"}))->capture_default_str();
  app.add_flag("--profile", o.profile, "print each step's time per phase (backbone, indexer pieces, optimizer)");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  o.exact_fp32 = precision == "fp32";
  o.absorbed_backbone = backbone_form == "mqa";
  o.sparse = stage == "sparse";
  o.init_random = init == "random";
  const train::TrainResult r = train::train_indexer(o, [](const train::StepLog& s) {
    std::printf("%s\n", train::format_step(s).c_str());
    std::fflush(stdout);
  });
  std::printf("done: %ld steps; checkpoint in %s\n", long(r.step), o.out.c_str());
  return 0;
}
dsa::tools::Register reg("train-indexer", "train the lightning indexer of a frozen model (KL to dense attention)", run);
}  // namespace

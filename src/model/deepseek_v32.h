#pragma once
// The DeepSeek-V3.2 graph (architecture.md §2–§6) written as calls on a Backend.
// No arithmetic here: every number is computed by a backend op.
#include <functional>
#include <memory>
#include <vector>

#include "backends/backend.h"
#include "io/model_config.h"
#include "model/weights.h"
#include "runtime/kv_cache.h"

namespace dsa {

// How prompt tokens compute attention (the runtime sets BatchSeq::absorbed from it).
enum class PrefillForm {
  Mha,  // the reference's prefill: per-head keys and values expanded by wkv_b (architecture.md §3.2)
  Mqa,  // the absorbed form of decode over the FP8 cache, token by token (architecture.md §3.3): the
        // same numbers as feeding the tokens one at a time; rounds differently from the reference's
        // prefill, and on CUDA runs on the tensor-core decode kernels instead of the MHA kernel
};

enum class AttentionMode {
  Sparse,  // DSA: lightning indexer + top-k, attention over the gathered rows only
  Dense,   // dense causal MLA for comparison — NOT DSA (the indexer does not run)
};

// What one layer's MHA-form attention saw (training and evaluation observers, src/train/): every
// tensor on the backend, token rows of the run; kv_up / pe are the run's context rows.
struct AttentionTap {
  int64_t layer = 0;
  const Tensor *x, *qr;      // attn_norm output BF16 [T, D]; q_norm(wq_a x) BF16 [T, q_lora]
  const Tensor *q;           // MLA queries BF16 [T, H, 192] (RoPE applied)
  const Tensor *kv_up, *pe;  // BF16 [n_ctx, H, 256] (k_nope | v), BF16 [n_ctx, 64] (rotated)
  const Tensor* topk;        // I32 [T, K] the indexer's selection, or null (dense / all selected)
  const Batch* batch;
};

class DeepseekV32 {
 public:
  DeepseekV32(ModelConfig cfg, ModelWeights w, Backend& be);
  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  Backend& backend() { return be_; }

  // One forward step over a ragged batch: writes every layer's caches for the new tokens and
  // returns fp32 logits [rows, vocab] on the backend for the requested token rows (indices into
  // the batch's packed tokens; e.g. the last token of each sequence, or all for perplexity).
  // ids: I32 [T] on the host (the model stages them) or already on the backend. Each sequence's attention runs in its own form (BatchSeq::absorbed):
  // a step that mixes decode rows with prefill chunks runs the projections, norms and experts once
  // over all tokens and the attention core once per run of sequences of one form.
  Tensor forward(const Tensor& ids, Batch& b, KvCache& kv, AttentionMode mode,
                 const std::vector<int32_t>& logit_rows);
  // Observer called after each layer's MHA-form attention (null: none). For training/evaluation.
  void set_attention_tap(std::function<void(const AttentionTap&)> f) { tap_ = std::move(f); }
  // Override index_topk (evaluation at another k); 0 keeps the config's.
  void set_index_topk(int64_t k) { if (k > 0) cfg_.index_topk = k; }

 private:
  // A run of consecutive sequences of one attention form: token rows [t0, t1) of the step, and the
  // run as a batch of its own (the step's batch itself when the whole step is one run).
  struct FormRun {
    bool absorbed = false;
    int64_t t0 = 0, t1 = 0;
    const Batch* batch = nullptr;
  };
  void attention(int64_t l, const Tensor& x, Batch& b, const std::vector<FormRun>& runs, KvLayer& kv,
                 AttentionMode mode, Tensor& out);
  ModelConfig cfg_;
  ModelWeights w_;
  Backend& be_;
  Tensor rope_;  // F32 [max_pos, 32, 2] on the backend
  std::function<void(const AttentionTap&)> tap_;
};

}  // namespace dsa

#include "backends/backend.h"

namespace dsa {

int64_t Batch::n_ctx() const {
  int64_t n = 0;
  for (auto& s : seqs) n += s.end_pos();
  return n;
}
void check_sample_args(const Tensor& logits, size_t n_params, const Tensor& tokens, const Tensor& logprobs,
                       const Tensor* top_ids, const Tensor* top_lp) {
  const int64_t R = logits.dim(0), V = logits.dim(1);
  DSA_CHECK(int64_t(n_params) == R && tokens.numel() == R && logprobs.numel() == R, "sample: ", R,
            " rows of logits, ", n_params, " parameter sets, ", tokens.str(), ", ", logprobs.str());
  DSA_CHECK(!top_ids == !top_lp && (!top_ids || (top_ids->dim(0) == R && top_lp->dim(0) == R &&
                                                 top_lp->dim(1) == top_ids->dim(1) && top_ids->dim(1) <= V)),
            "sample: top-logprob outputs must be given together as [", R, ", n <= ", V, "]");
}

void check_token_logprobs_args(const Tensor& logits, const Tensor& targets, const Tensor& lp) {
  const int64_t R = logits.dim(0);
  DSA_CHECK(targets.numel() == R && lp.numel() == R && lp.dtype == DType::F64, "token_logprobs: ", logits.str(), ", ",
            targets.str(), " -> ", lp.str());
}

bool Batch::all_single_token() const {
  for (auto& s : seqs)
    if (s.n_new != 1) return false;
  return !seqs.empty();
}
bool Batch::all_absorbed() const {
  for (auto& s : seqs)
    if (!s.absorbed) return false;
  return !seqs.empty();
}

void mlp_forward(Backend& be, const Tensor& x, const MlpWeights& w, Tensor& out) {
  const int64_t T = x.dim(0), I = w.gate.n();
  Tensor g = be.alloc(DType::BF16, {T, I}), u = be.alloc(DType::BF16, {T, I});
  be.linear_fp8(x, w.gate, g);
  be.linear_fp8(x, w.up, u);
  be.silu_mul(g, u, g);
  be.linear_fp8(g, w.down, out);
}

}  // namespace dsa

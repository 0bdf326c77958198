#include "backends/backend.h"

namespace dsa {

int64_t Batch::n_ctx() const {
  int64_t n = 0;
  for (auto& s : seqs) n += s.end_pos();
  return n;
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

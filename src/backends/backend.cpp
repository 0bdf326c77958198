#include "backends/backend.h"

namespace dsa {

void mlp_forward(Backend& be, const Tensor& x, const MlpWeights& w, Tensor& out) {
  const int64_t T = x.dim(0), I = w.gate.n();
  Tensor g = be.alloc(DType::BF16, {T, I}), u = be.alloc(DType::BF16, {T, I});
  be.linear_fp8(x, w.gate, g);
  be.linear_fp8(x, w.up, u);
  be.silu_mul(g, u, g);
  be.linear_fp8(g, w.down, out);
}

}  // namespace dsa

#pragma once
// cuBLASLt matmuls of the CUDA backend (docs/fp8-gemm-cuda.md, "cuBLASLt"): the bf16 products that
// have no FP8 weight (lm_head, the per-head MLA absorb products) on tensor cores, and in `fast`
// numerics the 1x128 / 128x128 block-scaled FP8 linears. One object per CudaBackend: its handle,
// workspace and plan cache (descriptors + chosen algorithm per shape) live and die with it.
#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

struct cublasLtContext;

namespace dsa::cuda {

// Row-major view of one (batched) product, z = 0..batch-1:
//   D[z](m, n) = sum_k X[z](m, k) * W[z](n, k)
//   X(m, k) = x[z*stride_x + m*ldx + k]                       (activations, M rows)
//   W(n, k) = w[z*stride_w + n*ldw + k], or with w_kn: w[z*stride_w + k*ldw + n]
//   D(m, n) = d[z*stride_d + m*ldd + n]
// Bf16: x, w bf16; fp32 accumulation; d fp32 or bf16 (round to nearest even).
// Fp8: x, w e4m3 with w_kn false; d bf16; x_scale the 1x128 activation scales stored M-major
// (x_scale[kb*M + m]), w_scale the checkpoint's 128x128 weight scales ([ceil(N/128)][K/128] with
// K/128 a multiple of 4); partial sums are promoted to fp32 per 128-K block with the two scales.
struct LtGemm {
  enum class Kind { Bf16, Fp8 } kind = Kind::Bf16;
  bool out_f32 = false;
  const void* x = nullptr; int64_t ldx = 0, stride_x = 0;
  const void* w = nullptr; int64_t ldw = 0, stride_w = 0; bool w_kn = false;
  void* d = nullptr; int64_t ldd = 0, stride_d = 0;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  const float* x_scale = nullptr;
  const float* w_scale = nullptr;
  bool fp8_unscaled = false;  // Fp8 without block scales (benchmarks: cuBLAS's plain FP8 GEMM as the peer)
};

class BlasLt {
 public:
  BlasLt();
  ~BlasLt();
  BlasLt(const BlasLt&) = delete;
  BlasLt& operator=(const BlasLt&) = delete;
  // Enqueue g on the per-thread default stream. False (nothing enqueued) when cuBLASLt has no
  // algorithm for it on this GPU (e.g. block-scaled FP8 before sm_90); the caller then runs its own kernel.
  bool run(const LtGemm& g);
  // Whether block-scaled FP8 matmuls can run here at all (sm_90 and cuBLASLt 12.9+).
  bool fp8_blockscaled_possible() const { return fp8_possible_; }
  // Matmuls enqueued so far, per kind (tests check that a path really ran).
  int64_t runs(LtGemm::Kind k) const { return runs_[int(k)]; }

 private:
  struct Plan;
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int, int, int>;
  Plan* plan(const LtGemm& g, int align);
  cublasLtContext* handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool fp8_possible_ = false;
  int64_t runs_[2] = {0, 0};
  std::map<Key, Plan*> plans_;
};

}  // namespace dsa::cuda

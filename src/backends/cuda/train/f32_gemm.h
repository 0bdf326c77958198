#pragma once
// fp32 matmuls on cuBLASLt for indexer training (docs/training.md, "CUDA"): exact fp32 (CUDA cores)
// or TF32 tensor cores with fp32 accumulation, chosen per product. The bf16/FP8 wrapper of the
// inference path (gemm/blas_lt.h) has no fp32 inputs and no transposed activations; training needs both.
#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

struct cublasLtContext;

namespace dsa::cuda {

// Row-major product, z = 0..batch-1:
//   D[z](m, n) = alpha * sum_k A[z](m, k) * B[z](k, n) + beta * D[z](m, n)
//   A(m, k) = a[z*stride_a + m*lda + k], or with trans_a: a[z*stride_a + k*lda + m]
//   B(k, n) = b[z*stride_b + k*ldb + n], or with trans_b: b[z*stride_b + n*ldb + k]
//   D(m, n) = d[z*stride_d + m*ldd + n]
struct F32Gemm {
  const float* a = nullptr; int64_t lda = 0, stride_a = 0; bool trans_a = false;
  const float* b = nullptr; int64_t ldb = 0, stride_b = 0; bool trans_b = false;
  float* d = nullptr; int64_t ldd = 0, stride_d = 0;
  int64_t M = 0, N = 0, K = 0, batch = 1;
  float alpha = 1.f, beta = 0.f;
  bool tf32 = false;  // TF32 inputs (10-bit mantissa), fp32 accumulation; false: exact fp32
};

class F32Blas {
 public:
  F32Blas();
  ~F32Blas();
  F32Blas(const F32Blas&) = delete;
  F32Blas& operator=(const F32Blas&) = delete;
  // Enqueue g on the per-thread default stream; fails (dsa::Error) when cuBLASLt has no algorithm.
  void run(const F32Gemm& g);

 private:
  struct Plan;
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                         int, int, int, int, int>;
  Plan* plan(const F32Gemm& g, int align);
  cublasLtContext* handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan*> plans_;
};

}  // namespace dsa::cuda

#include "backends/cuda/train/f32_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <utility>

#include "backends/cuda/gemm/lt_common.h"
#include "core/error.h"

namespace dsa::cuda {

namespace {

// Largest power of two (<= 256) dividing every address and leading dimension in bytes, so the
// heuristic never picks an algorithm that assumes more alignment than the operands have.
int alignment_of(const F32Gemm& g) {
  uint64_t bits = reinterpret_cast<uintptr_t>(g.a) | reinterpret_cast<uintptr_t>(g.b) |
                  reinterpret_cast<uintptr_t>(g.d) | uint64_t(g.lda * 4) | uint64_t(g.ldb * 4) | uint64_t(g.ldd * 4);
  if (g.batch > 1) bits |= uint64_t(g.stride_a * 4) | uint64_t(g.stride_b * 4) | uint64_t(g.stride_d * 4);
  return lt_alignment(bits, 4);
}

}  // namespace

struct F32Blas::Plan : LtPlan {};

F32Blas::F32Blas() {
  cublasLtHandle_t h = nullptr;
  lt_check(cublasLtCreate(&h), "handle creation");
  handle_ = h;
  workspace_bytes_ = size_t(32) << 20;
  const cudaError_t e = cudaMalloc(&workspace_, workspace_bytes_);
  DSA_CHECK(e == cudaSuccess, "cuBLASLt workspace (", workspace_bytes_ >> 20, " MiB): ", cudaGetErrorString(e));
}

F32Blas::~F32Blas() {
  for (auto& [k, p] : plans_) delete p;
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

F32Blas::Plan* F32Blas::plan(const F32Gemm& g, int align) {
  const Key key{g.M, g.N, g.K, g.batch, g.lda, g.ldb, g.ldd, g.stride_a, g.stride_b, g.stride_d,
                int(g.trans_a), int(g.trans_b), int(g.tf32), align, int(g.beta != 0.f)};
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  auto* p = new Plan;
  plans_[key] = p;
  // cuBLASLt is column-major: the row-major D [M, N] is the column-major D^T [N, M] = B^T A^T. So
  // cuBLAS's first operand is B (stored [N, K] column-major when B is row-major (k, n), i.e. op N;
  // [K, N] with op T when trans_b) and its second is A ([K, M] op N, or [M, K] op T when trans_a).
  const cublasComputeType_t ct = g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  lt_check(cublasLtMatmulDescCreate(&p->op, ct, CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  // (p->la / p->lb are cuBLAS's operands A and B: our B and A.)
  if (g.trans_b) lt_check(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_32F, g.K, g.N, g.ldb), "B layout");
  else lt_check(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_32F, g.N, g.K, g.ldb), "B layout");
  if (g.trans_a) lt_check(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_32F, g.M, g.K, g.lda), "A layout");
  else lt_check(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_32F, g.K, g.M, g.lda), "A layout");
  lt_check(cublasLtMatrixLayoutCreate(&p->ld, CUDA_R_32F, g.N, g.M, g.ldd), "D layout");
  lt_set_batch(g.batch, p->la, g.stride_b, p->lb, g.stride_a, p->ld, g.stride_d);
  // No split-K reduction through atomics: a step gives the same bits every run (resume == uninterrupted).
  lt_choose_algo(handle_, *p, workspace_bytes_, align);
  return p;
}

void F32Blas::run(const F32Gemm& g) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  DSA_CHECK(g.K > 0, "F32Blas: K = 0");
  Plan* p = plan(g, alignment_of(g));
  DSA_CHECK(p->ok, "F32Blas: no cuBLASLt algorithm for M ", g.M, " N ", g.N, " K ", g.K, " batch ", g.batch,
            g.tf32 ? " (tf32)" : " (fp32)");
  const cublasStatus_t s = cublasLtMatmul(handle_, p->op, &g.alpha, g.b, p->la, g.a, p->lb, &g.beta, g.d, p->ld, g.d,
                                          p->ld, &p->algo, workspace_, workspace_bytes_, cudaStreamPerThread);
  lt_check(s, "matmul");
}

}  // namespace dsa::cuda

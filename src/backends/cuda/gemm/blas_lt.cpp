#include "backends/cuda/gemm/blas_lt.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "backends/cuda/gemm/lt_common.h"
#include "core/error.h"

namespace dsa::cuda {

namespace {

// Largest power of two (<= 256) dividing every address and leading dimension in bytes: the heuristic
// must not pick an algorithm that assumes more alignment than the operands have.
int alignment_of(const LtGemm& g) {
  const int64_t el_x = g.kind == LtGemm::Kind::Fp8 ? 1 : 2, el_d = g.out_f32 ? 4 : 2;
  uint64_t bits = reinterpret_cast<uintptr_t>(g.x) | reinterpret_cast<uintptr_t>(g.w) |
                  reinterpret_cast<uintptr_t>(g.d) | uint64_t(g.ldx * el_x) | uint64_t(g.ldw * el_x) |
                  uint64_t(g.ldd * el_d);
  if (g.batch > 1) bits |= uint64_t(g.stride_x * el_x) | uint64_t(g.stride_w * el_x) | uint64_t(g.stride_d * el_d);
  return lt_alignment(bits, 1);
}

}  // namespace

struct BlasLt::Plan : LtPlan {
  bool x_is_a = false;  // block-scaled FP8 with the activations as operand A (D in row order), see plan()
};

BlasLt::BlasLt() {
  cublasLtHandle_t h = nullptr;
  lt_check(cublasLtCreate(&h), "handle creation");
  handle_ = h;
  // 32 MiB: what NVIDIA recommends for Hopper (split-K and stream-K algorithms need it).
  workspace_bytes_ = size_t(32) << 20;
  const cudaError_t e = cudaMalloc(&workspace_, workspace_bytes_);
  DSA_CHECK(e == cudaSuccess, "cuBLASLt workspace (", workspace_bytes_ >> 20, " MiB): ", cudaGetErrorString(e));
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  fp8_possible_ = major == 9 && cublasLtGetVersion() >= 120900;
}

BlasLt::~BlasLt() {
  for (auto& [k, p] : plans_) delete p;
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

namespace {

// Descriptors of one configuration of g, and the heuristic's first algorithm for it.
// x_is_a false: the column-major view D^T [N, M] = op(W') [N, K] . X' [K, M] (X' is X read column-major,
//   [K, M] with ld ldx; W' is W read column-major: [K, N], transposed by the op, or with w_kn [N, K]).
// x_is_a true (block-scaled FP8 only): D [M, N] in row order = op(X') [M, K] . W' [K, N]: cuBLASLt's
//   Hopper block-scaled kernels take the 1x128 (VEC128) scales on A and the 128x128 (BLK) ones on B.
void build_plan(cublasLtHandle_t handle, const LtGemm& g, int align, bool x_is_a, size_t workspace_bytes, LtPlan& p) {
  const bool fp8 = g.kind == LtGemm::Kind::Fp8;
  const cudaDataType_t tin = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF, tout = g.out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  cublasLtMatmulDesc_t& op = p.op;
  lt_check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
  const cublasOperation_t ta = (g.w_kn && !x_is_a) ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  if (fp8 && !g.fp8_unscaled) {
    const int32_t vec = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, blk = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    const int32_t ma = x_is_a ? vec : blk, mb = x_is_a ? blk : vec;
    lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma), "A scale mode");
    lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb), "B scale mode");
    const int8_t fast_accum = 0;  // promote every block: fp32 outside the 128-K partial sums
    lt_check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof fast_accum),
             "fast accum");
  }
  cublasLtMatrixLayout_t lw = nullptr, lx = nullptr;
  if (g.w_kn) lt_check(cublasLtMatrixLayoutCreate(&lw, tin, g.N, g.K, g.ldw), "W layout");
  else lt_check(cublasLtMatrixLayoutCreate(&lw, tin, g.K, g.N, g.ldw), "W layout");
  lt_check(cublasLtMatrixLayoutCreate(&lx, tin, g.K, g.M, g.ldx), "X layout");
  if (x_is_a) {
    lt_check(cublasLtMatrixLayoutCreate(&p.ld, tout, g.M, g.N, g.ldd), "D layout");
    const int32_t order = CUBLASLT_ORDER_ROW;
    lt_check(cublasLtMatrixLayoutSetAttribute(p.ld, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order), "D order");
    p.la = lx;
    p.lb = lw;
  } else {
    lt_check(cublasLtMatrixLayoutCreate(&p.ld, tout, g.N, g.M, g.ldd), "D layout");
    p.la = lw;
    p.lb = lx;
  }
  lt_set_batch(g.batch, lw, g.stride_w, lx, g.stride_x, p.ld, g.stride_d);
  lt_choose_algo(handle, p, workspace_bytes, align);
}

}  // namespace

BlasLt::Plan* BlasLt::plan(const LtGemm& g, int align) {
  const Key key{int(g.kind), int(g.out_f32), g.M, g.N, g.K, g.batch, g.ldx, g.ldw, g.ldd, g.stride_x, g.stride_w,
                g.stride_d, int(g.w_kn), align, int(g.fp8_unscaled)};
  if (auto it = plans_.find(key); it != plans_.end()) return it->second;
  auto* p = new Plan;
  plans_[key] = p;
  const bool blockscaled = g.kind == LtGemm::Kind::Fp8 && !g.fp8_unscaled;
  // Block-scaled FP8: weights as A first (no transposed output needed), then activations as A with the
  // output in row order, which is the assignment the library's Hopper kernels document.
  for (bool x_is_a : blockscaled ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
    p->reset();
    build_plan(handle_, g, align, x_is_a, workspace_bytes_, *p);
    p->x_is_a = x_is_a;
    if (p->ok) break;
  }
  return p;
}

bool BlasLt::run(const LtGemm& g) {
  if (g.M == 0 || g.N == 0) return true;
  const bool fp8 = g.kind == LtGemm::Kind::Fp8;
  if (fp8 && (g.w_kn || g.out_f32)) return false;
  if (fp8 && !g.fp8_unscaled && (!fp8_possible_ || g.K % 512 != 0 || !g.x_scale || !g.w_scale)) return false;
  Plan* p = plan(g, alignment_of(g));
  if (!p->ok) return false;
  const void* a = p->x_is_a ? g.x : g.w;
  const void* b = p->x_is_a ? g.w : g.x;
  if (fp8 && !g.fp8_unscaled) {  // the scale pointers change from call to call; the plan's descriptor is ours alone
    const float* as = p->x_is_a ? g.x_scale : g.w_scale;
    const float* bs = p->x_is_a ? g.w_scale : g.x_scale;
    lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &as, sizeof as), "A scale");
    lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bs, sizeof bs), "B scale");
  }
  const float alpha = 1.f, beta = 0.f;
  const cublasStatus_t s = cublasLtMatmul(handle_, p->op, &alpha, a, p->la, b, p->lb, &beta, g.d, p->ld, g.d,
                                          p->ld, &p->algo, workspace_, workspace_bytes_, cudaStreamPerThread);
  lt_check(s, "matmul");
  ++runs_[int(g.kind)];
  return true;
}

}  // namespace dsa::cuda

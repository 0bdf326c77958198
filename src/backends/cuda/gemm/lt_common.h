#pragma once
// What the cuBLASLt wrappers share (gemm/blas_lt.cpp for inference, train/f32_gemm.cpp for indexer
// training): status checks, one plan's descriptors, batching, and the algorithm choice under the
// project's rules (workspace cap, the operands' real alignment, no split-K through atomics).
#include <cublasLt.h>

#include <cstddef>
#include <cstdint>

#include "core/error.h"

namespace dsa::cuda {

inline void lt_check(cublasStatus_t s, const char* what) {
  DSA_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt ", what, " failed (status ", int(s), ")");
}

// Largest power of two in [floor, 256] dividing `bits` (every address, leading dimension and batch
// stride in bytes, or-ed): the heuristic must not pick an algorithm that assumes more alignment.
inline int lt_alignment(uint64_t bits, int floor) {
  int a = floor;
  while (a < 256 && !(bits & uint64_t(a))) a <<= 1;
  return a;
}

// One matmul's descriptors (cuBLAS operands A, B and D) and the algorithm chosen for them.
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  void reset() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    ld = lb = la = nullptr;
    op = nullptr;
    ok = false;
  }
  ~LtPlan() { reset(); }
};

// Strided batch of `batch` products: each layout with its batch stride (elements).
inline void lt_set_batch(int64_t batch, cublasLtMatrixLayout_t a, int64_t stride_a, cublasLtMatrixLayout_t b,
                         int64_t stride_b, cublasLtMatrixLayout_t d, int64_t stride_d) {
  if (batch <= 1) return;
  const int32_t n = int32_t(batch);
  for (auto [l, st] : {std::pair{a, stride_a}, {b, stride_b}, {d, stride_d}}) {
    lt_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n), "batch count");
    lt_check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st),
             "batch stride");
  }
}

// The heuristic's first algorithm for p's descriptors (D also as C) into p.algo; p.ok says whether
// there is one. No in-place split-K reductions: every output's sum is formed the same way on every run.
inline void lt_choose_algo(cublasLtHandle_t handle, LtPlan& p, size_t workspace_bytes, int align) {
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = workspace_bytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  const uint32_t al = uint32_t(align);
  for (auto a : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                 CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, a, &al, sizeof al);
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.la, p.lb, p.ld, p.ld, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = hs == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
  if (p.ok) p.algo = res.algo;
}

}  // namespace dsa::cuda

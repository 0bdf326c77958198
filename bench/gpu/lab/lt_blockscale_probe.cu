// Lab: which cuBLASLt block-scaled FP8 configurations have an algorithm on this GPU and library.
// Enumerates the operand roles (weight as A or as B), the scale mode of each (1x128 VEC128 or 128x128
// BLK128x128), FAST_ACCUM and the reduction-scheme restriction; prints the heuristic's answer for
// each at one V3.2 shape. Usage: dsa_lt_blockscale_probe [M N K]
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  const int64_t M = argc > 3 ? std::atoll(argv[1]) : 512, N = argc > 3 ? std::atoll(argv[2]) : 2048,
                K = argc > 3 ? std::atoll(argv[3]) : 7168;
  cublasLtHandle_t h;
  cublasLtCreate(&h);
  std::printf("cuBLASLt %zu; M=%ld N=%ld K=%ld\n", cublasLtGetVersion(), long(M), long(N), long(K));
  const int32_t modes[2] = {CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F};
  const char* mname[2] = {"VEC128", "BLK128"};
  void* ws = nullptr;
  const uint64_t wsb = 32u << 20;
  cudaMalloc(&ws, wsb);
  for (int wa = 0; wa < 2; ++wa)            // 1: weight is A (D^T[N,M] = W X^T), 0: activations are A (D'[M,N])
    for (int ma = 0; ma < 2; ++ma)
      for (int mb = 0; mb < 2; ++mb)
        for (int fa = 0; fa < 2; ++fa)
          for (int red = 0; red < 2; ++red)
            for (int drow = 0; drow < 2; ++drow) {  // D in row order: [rowsA, rowsB] row-major (cuBLASLt ORDER_ROW)
            cublasLtMatmulDesc_t op;
            cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
            const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &modes[ma], sizeof(int32_t));
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &modes[mb], sizeof(int32_t));
            const int8_t fast = int8_t(fa);
            cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast);
            const int64_t rowsA = wa ? N : M, rowsB = wa ? M : N;  // op(A) [rowsA, K], op(B) [K, rowsB]
            cublasLtMatrixLayout_t la, lb, ld;
            cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, rowsA, K);
            cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, rowsB, K);
            cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, rowsA, rowsB, drow ? rowsB : rowsA);
            if (drow) {
              const int32_t order = CUBLASLT_ORDER_ROW;
              cublasLtMatrixLayoutSetAttribute(ld, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, sizeof order);
            }
            cublasLtMatmulPreference_t pref;
            cublasLtMatmulPreferenceCreate(&pref);
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
            if (red) {
              const uint32_t s = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE | CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
              cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &s, sizeof s);
            }
            cublasLtMatmulHeuristicResult_t res[4] = {};
            int found = 0;
            const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 4, res, &found);
            std::printf("A=%s scaleA=%s scaleB=%s fast_accum=%d reduction_mask=%d D=%s: status %d, %d algorithms\n",
                        wa ? "weight" : "activ", mname[ma], mname[mb], fa, red, drow ? "row" : "col", int(st), found);
            cublasLtMatmulPreferenceDestroy(pref);
            cublasLtMatrixLayoutDestroy(la);
            cublasLtMatrixLayoutDestroy(lb);
            cublasLtMatrixLayoutDestroy(ld);
            cublasLtMatmulDescDestroy(op);
          }
  cudaFree(ws);
  cublasLtDestroy(h);
  return 0;
}

#pragma once
// FP8 block-scaled GEMM of the CUDA backend (docs/fp8-gemm-cuda.md): internal entry points that
// gemm.cu, the tests and the benchmark share. The public launchers (launch_linear_fp8,
// launch_linear_fp8_grouped) are declared in cuda_backend.h.
#include <cstdint>

namespace dsa::cuda {

// Which kernel launch_linear_fp8{,_grouped} use. Auto: the GEMV kernel for at most 16 rows (per
// expert when grouped), the tensor-core kernel above. The others force one (tests, benchmarks);
// Mma64/Mma32 force the tensor-core kernel with 64- / 32-row tiles.
enum class Fp8Path : int { Auto = 0, Mma = 1, Gemv = 2, Mma64 = 3, Mma32 = 4 };
void set_fp8_gemm_path(Fp8Path p);
Fp8Path fp8_gemm_path();
// Short label for tables and test traces ("auto", "mma128", "mma64", "mma32", "gemv").
inline const char* fp8_path_name(Fp8Path p) {
  switch (p) {
    case Fp8Path::Auto: return "auto";
    case Fp8Path::Mma: return "mma128";
    case Fp8Path::Mma64: return "mma64";
    case Fp8Path::Mma32: return "mma32";
    default: return "gemv";
  }
}

// out[T, N] (fp32) = fp32(x[T, K] bf16) . W[N, K]^T (bf16 or f32 weights): the small-T (decode,
// lm_head) form. Returns false (nothing enqueued) when the shape is not one it handles (T > 8 or
// K not a multiple of 8); the caller then runs the tiled kernel.
bool launch_linear_f32_gemv(const uint16_t* x, int64_t T, int64_t K, const void* w, bool w_f32, int64_t N,
                            float* out);

}  // namespace dsa::cuda

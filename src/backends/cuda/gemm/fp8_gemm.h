#pragma once
// FP8 block-scaled GEMM of the CUDA backend (docs/fp8-gemm-cuda.md): internal entry points that
// gemm.cu, the tests and the benchmark share. The public launchers (launch_linear_fp8,
// launch_linear_fp8_grouped) are declared in cuda_backend.h.
#include <cstdint>

#include "backends/cuda/kernel_config.h"

namespace dsa::cuda {

// Which kernel launch_linear_fp8{,_grouped} use: KernelConfig::fp8_gemm (Fp8Path, kernel_config.h; env
// DSA_CUDA_FP8_GEMM), read from the context passed to the launcher.

// out[T, N] (fp32) = fp32(x[T, K] bf16) . W[N, K]^T (bf16 or f32 weights): the small-T (decode,
// lm_head) form. Returns false (nothing enqueued) when the shape is not one it handles (T > 8 or
// K not a multiple of 8); the caller then runs the tiled kernel.
bool launch_linear_f32_gemv(const uint16_t* x, int64_t T, int64_t K, const void* w, bool w_f32, int64_t N,
                            float* out);

}  // namespace dsa::cuda

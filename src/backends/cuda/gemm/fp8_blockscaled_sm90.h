#pragma once
// The sm_90a block-scaled FP8 GEMM (TMA + wgmma, gemm/fp8_blockscaled_sm90.cu): what `--numerics fast` runs
// for the FP8 linears above 16 rows (docs/fp8-gemm-cuda.md, "sm_90a block-scaled wgmma (fast numerics)").
//
//   out[m, n] = bf16( sum_kb wgmma_dot128(a[m, kb], w[n, kb]) * (as[m, kb] * ws[n / 128, kb]) )
//
// Same arguments as launch_linear_fp8 (Fp8GemmArgs: e4m3 activations [M, K] with row-major 1x128 scales
// [M][K/128], e4m3 weight [N, K] with the checkpoint's 128x128 scales [ceil(N/128)][K/128], bf16 out [M, ldo]).
// Numerics differ from launch_linear_fp8 inside each 128-K block: Hopper's FP8 wgmma sums a block with ~14
// significant bits, not fp32 (the tests' bound, tests/gpu/test_gpu_gemm.cpp); the promotion across blocks is
// the reference chain (fp32 fma, ascending kb) and the output rounding is round-to-nearest-even.
#include "backends/cuda/cuda_backend.h"

namespace dsa::cuda {

// Whether launch_fp8_blockscaled_sm90 takes this product: the device probe (DeviceFacts::fp8_sm90), K a
// positive multiple of 128, activations and weight 16-byte aligned (TMA), ldo >= N, sizes within int32.
// Host-only; enqueues nothing.
bool fp8_blockscaled_sm90_supports(const CudaContext& ctx, const Fp8GemmArgs& a);

// Enqueue the GEMM on the per-thread default stream. False (nothing enqueued) when it does not take the
// product (see above) or a tensor map cannot be encoded; the caller then runs another kernel.
bool launch_fp8_blockscaled_sm90(const CudaContext& ctx, const Fp8GemmArgs& a);

}  // namespace dsa::cuda

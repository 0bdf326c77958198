#pragma once
// MLA decode scores kernel on Hopper tensor cores (wgmma, sm_90a). See decode_sm90.cu and
// docs/mla-decode-cuda.md.
#include <cuda_runtime.h>

#include "backends/cuda/context.h"

namespace dsa::cuda {
namespace mqa {
struct DecP;
}

// Whether it runs: CudaContext::mqa_sm90() — the sm_90a SASS runs on this GPU and the kernel's shared memory was
// granted (DeviceFacts::mqa_sm90, probe_mqa at context construction), and MqaConfig::wgmma (env
// DSA_CUDA_MQA_WGMMA=0: the portable kernel).
// Same outputs as mqa_score_kernel (decode.cu): scores S, per-split (max, sum) ms, the slot table.
void launch_mqa_score_sm90(const CudaContext& ctx, const mqa::DecP& p, dim3 grid);

}  // namespace dsa::cuda

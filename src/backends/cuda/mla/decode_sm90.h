#pragma once
// MLA decode scores kernel on Hopper tensor cores (wgmma, sm_90a). See decode_sm90.cu and
// docs/mla-decode-cuda.md.
#include <cuda_runtime.h>

namespace dsa::cuda {
namespace mqa {
struct DecP;
}

// True when the sm_90a SASS runs on this GPU (sm90a_sass_runs) and the kernel's shared memory could
// be granted; the launcher also honours MqaTuning::wgmma (env DSA_CUDA_MQA_WGMMA=0: portable kernel).
bool mqa_score_sm90_available();
// Same outputs as mqa_score_kernel (decode.cu): scores S, per-split (max, sum) ms, the slot table.
void launch_mqa_score_sm90(const mqa::DecP& p, dim3 grid);

}  // namespace dsa::cuda

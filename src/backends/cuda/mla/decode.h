#pragma once
// MLA decode (absorbed MQA form) on CUDA: path selection knobs, for tests and benchmarks.
// Host-only header (included by the GPU tests).
#include <cstdint>

namespace dsa::cuda {

struct MqaTuning {
  // 0: automatic; 1: stored-scores kernels (scores + P.V, the default); 2: the two-pass recompute
  // kernel (mma.sync, scores never stored); 3: the CUDA-core kernel (as DSA_CUDA_MQA_SIMPLE=1).
  int path = 0;
  int force_splits = 0;
  // Hopper: the wgmma scores kernel (decode_sm90.cu) when the sm_90a SASS runs; 0 (env
  // DSA_CUDA_MQA_WGMMA=0): the portable mma.sync kernel everywhere.
  int wgmma = 1;
  bool scores_only = false;     // profiling (DSA_CUDA_MQA_SCORES_ONLY=1): run the scores kernel only
  int64_t max_scratch = 512 << 20;  // bytes of bf16 scores per launch; more tokens are processed in chunks
};
// Process-wide knobs (not thread-safe; tests set and restore them).
MqaTuning& mqa_tuning();

}  // namespace dsa::cuda

#pragma once
// Indexer scores on Hopper tensor cores (wgmma), one query token per CTA. See scores_sm90.cu.
#include <cstdint>

namespace dsa::cuda {

struct Sm90ScoreArgs {
  const uint8_t* q; const float* w; const uint8_t* cache;   // q e4m3 [T, Hi, 128]; w fp32 [T, Hi]; paged cache
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int Hi;                                                    // <= 64
  int64_t t0, rows;                                          // tokens [t0, t0 + rows)
  float* out; int64_t ld;                                    // row (t - t0) of out, ld columns
  int fill_ninf;                                             // -inf from the last computed block up to ld
};

// True when the sm_90a wgmma kernel is what runs on this GPU (not the compute_80 PTX, e.g. under
// CUDA_FORCE_PTX_JIT=1) and DSA_CUDA_INDEXER_WGMMA is not 0.
bool sm90_scores_available();
// Benchmarks and tests: switch the sm_90a kernel off (portable kernel) or back on, overriding the env.
void set_sm90_scores_enabled(bool on);
void launch_scores_sm90(const Sm90ScoreArgs& a, int64_t max_nblk, int sms);

}  // namespace dsa::cuda

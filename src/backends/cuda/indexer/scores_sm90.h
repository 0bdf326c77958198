#pragma once
// Indexer scores on Hopper tensor cores (wgmma). See scores_sm90.cu. Two kernels: e4m3 x e4m3 wgmma
// straight from the cache bytes (default; one or two query tokens of a sequence per CTA) and the f16 one
// (keys converted to f16, exact products, fp32 accumulation; DSA_CUDA_INDEXER_WGMMA_FP8=0).
#include <cstdint>

namespace dsa::cuda {

struct Sm90ScoreArgs {
  const uint8_t* q; const float* w; const uint8_t* cache;   // q e4m3 [T, Hi, 128]; w fp32 [T, Hi]; paged cache
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int Hi;                                                    // <= 64
  int64_t t0, rows;                                          // tokens [t0, t0 + rows)
  float* out; int64_t ld;                                    // row (t - t0) of out, ld columns
  int fill_ninf;                                             // -inf from the last computed block up to ld
  int* hist;  // optional: [rows][2048] first top-k digit histograms of the rows' keys, added to (FP8 kernel)
};

// True when the sm_90a wgmma kernel is what runs on this GPU (not the compute_80 PTX, e.g. under
// CUDA_FORCE_PTX_JIT=1) and DSA_CUDA_INDEXER_WGMMA is not 0.
bool sm90_scores_available();
// Benchmarks and tests: switch the sm_90a kernel off (portable kernel) or back on, overriding the env.
void set_sm90_scores_enabled(bool on);
// Which sm_90a kernel runs: 0 = f16, 3..6 = FP8 with that cp.async ring depth (benchmarks sweep it);
// the default comes from DSA_CUDA_INDEXER_WGMMA_FP8 (0: f16; otherwise FP8 at the default depth).
void set_sm90_scores_mode(int mode);
// Back to the environment's choices (both the on/off switch and the mode).
void reset_sm90_scores_selection();
int sm90_scores_mode();
// True when the sm_90a path also takes token pairs of one sequence (nq = 2: the FP8 kernel does).
bool sm90_scores_pairs();
// nq = 2: tokens t0 + 2g and t0 + 2g + 1 belong to the same sequence (only when sm90_scores_pairs()).
// Returns whether a.hist was filled (the FP8 kernel where it costs no occupancy; otherwise untouched).
bool launch_scores_sm90(const Sm90ScoreArgs& a, int64_t max_nblk, int sms, int nq);

}  // namespace dsa::cuda

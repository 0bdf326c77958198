#pragma once
// Indexer scores on Hopper tensor cores (wgmma). See scores_sm90.cu. Two kernels: e4m3 x e4m3 wgmma
// straight from the cache bytes (default; one or two query tokens of a sequence per CTA) and the f16 one
// (keys converted to f16, exact products, fp32 accumulation; DSA_CUDA_INDEXER_WGMMA_FP8=0).
#include <cstdint>

#include "backends/cuda/context.h"

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

// Whether these kernels run is a fact of the device (DeviceFacts::indexer_sm90: the sm_90a SASS runs and their
// shared memory was granted, probed at context construction) and the configuration (IndexerConfig::wgmma,
// ::sm90_fp8_stages: 0 the f16 kernel, 3..6 the FP8 kernel's ring depth): CudaContext::indexer_sm90(),
// ::indexer_sm90_pairs().
// nq = 2: tokens t0 + 2g and t0 + 2g + 1 belong to the same sequence (only when ctx.indexer_sm90_pairs()).
// Returns whether a.hist was filled (the FP8 kernel where it costs no occupancy; otherwise untouched).
bool launch_scores_sm90(const CudaContext& ctx, const Sm90ScoreArgs& a, int64_t max_nblk, int nq);

}  // namespace dsa::cuda

#pragma once
// Top-k path selection knobs (host-only header, for tests and benchmarks). See topk.cu.
namespace dsa::cuda {

struct TopkTuning {
  // On-chip path (whole row in registers: one CTA for rows <= 16K keys, a thread-block cluster of
  // up to 16 CTAs on sm_90 for rows <= 256K). -1: from DSA_CUDA_TOPK_ONCHIP (default on); 0: off
  // (the multi-CTA / one-CTA global-memory paths); 1: on.
  int onchip = -1;
  int force_kpt = 0;          // keys per thread of the on-chip path (4, 8, 16); 0: automatic
  // Digits 8/12/12 with a per-lane first histogram (no same-address atomics within a warp) instead
  // of 11/11/10 with plain shared atomics. Slower on the bench's indexer scores (H200: 128K b=1
  // 31.6 vs 27.5 us); kept to re-measure on scores concentrated in a few exponent bins.
  bool lane_histogram = false;
  // First radix digit's histogram built by the indexer's FP8 score kernel in its epilogue (indexer_topk on
  // sm_90a; the on-chip top-k then skips its first pass). -1: from DSA_CUDA_TOPK_SCORE_HIST (default off:
  // measured a wash, -1.2 to +2.5 us at b=1 and up to +4% at b=32/128, H200 session 4); 0: off; 1: on.
  int hist0 = -1;
  // Set by every top-k launch (for tests): keys per thread and cluster size of the on-chip kernel that ran,
  // 0 / 0 when a global-memory path ran; whether it took the score kernel's first histogram.
  int last_kpt = 0, last_cluster = 0;
  bool last_hist0 = false;
};
// Process-wide knobs (not thread-safe; tests set and restore them).
TopkTuning& topk_tuning();
// Largest thread-block cluster the on-chip top-k may use on this GPU and build (1: no clusters).
int topk_cluster_max();
// TopkTuning::hist0 resolved.
bool topk_hist0_enabled();

}  // namespace dsa::cuda

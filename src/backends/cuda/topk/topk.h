#pragma once
// Top-k path selection knobs (host-only header, for tests and benchmarks). See topk.cu.
namespace dsa::cuda {

struct TopkTuning {
  // On-chip path (whole row in registers: one CTA for rows <= 16K keys, a thread-block cluster of
  // up to 16 CTAs on sm_90 for rows <= 256K). -1: from DSA_CUDA_TOPK_ONCHIP (default on); 0: off
  // (the multi-CTA / one-CTA global-memory paths); 1: on.
  int onchip = -1;
  int force_kpt = 0;          // keys per thread of the on-chip path (4, 8, 16); 0: automatic
  bool warp_aggregated_atomics = false;  // histograms: one atomic per distinct digit per warp
                                         // (match_any) instead of plain shared atomics
};
// Process-wide knobs (not thread-safe; tests set and restore them).
TopkTuning& topk_tuning();
// Largest thread-block cluster the on-chip top-k may use on this GPU and build (1: no clusters).
int topk_cluster_max();

}  // namespace dsa::cuda

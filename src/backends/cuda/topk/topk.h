#pragma once
// Top-k path selection knobs (host-only header, for tests and benchmarks). See topk.cu.
namespace dsa::cuda {

struct TopkTuning {
  // On-chip path (whole row in registers: one CTA for rows <= 16K keys, a thread-block cluster of
  // up to 8 CTAs on sm_90 for rows <= 128K). -1: from DSA_CUDA_TOPK_ONCHIP (default on); 0: off
  // (the multi-CTA / one-CTA global-memory paths); 1: on.
  int onchip = -1;
  int force_kpt = 0;          // keys per thread of the on-chip path (4, 8, 16); 0: automatic
  bool plain_atomics = false; // histograms with plain shared atomics instead of warp-aggregated ones
};
// Process-wide knobs (not thread-safe; tests set and restore them).
TopkTuning& topk_tuning();
// True when thread-block clusters (DSMEM) work for the on-chip top-k on this GPU and build.
bool topk_clusters_available();

}  // namespace dsa::cuda

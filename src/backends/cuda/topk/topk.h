#pragma once
#include <cstdint>
#include <vector>
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
  // sm_90a; the on-chip top-k then skips its first pass). -1: from DSA_CUDA_TOPK_SCORE_HIST ("0" off, "1" on),
  // else automatic (-2): on for at most kTopkHist0AutoRows rows per launch of rows of at least
  // kTopkHist0AutoMinLength keys. Measured on the H200 (sessions 4-5, bench/results/2026-11-29-h200-*-kernels.md,
  // rows "indexer + top-k, 1st hist. in ..."): b=1 0.5-3.6 us faster at 64K and 128K, a wash or up to 2 us slower
  // at 4K-32K; b=32 0-1.6 us slower (the epilogue's atomics cost more than the pass they save once many rows
  // share the GPU). 0: off; 1: on.
  int hist0 = -1;
  // Last radix digit of cluster rows by exchanging the candidates when at most 1024 share the threshold bin
  // after the second pass (topk.cu, onchip_candidate_threshold). -1: from DSA_CUDA_TOPK_CAND_FINAL (default
  // on); 0: off (a third histogram pass); 1: on.
  int cand_final = -1;
  // Profiling aid: the on-chip kernel's first CTA records %globaltimer at its phase boundaries (topk_trace_read).
  bool trace = false;
  // Set by every top-k launch (for tests): keys per thread and cluster size of the on-chip kernel that ran,
  // 0 / 0 when a global-memory path ran; whether it took the score kernel's first histogram.
  int last_kpt = 0, last_cluster = 0;
  bool last_hist0 = false;
};
// Process-wide knobs (not thread-safe; tests set and restore them).
TopkTuning& topk_tuning();
// Largest thread-block cluster the on-chip top-k may use on this GPU and build (1: no clusters).
int topk_cluster_max();
// The on-chip kernel's phase stamps of its last traced launch (ns of %globaltimer; 0 where a phase did not
// run), then cleared: 0 entry, 1 after the wait for the score kernel, 2 keys loaded, 3 after pass 0, 4 after
// pass 1, 5 threshold known, 6 compaction counts scanned, 7 written, 8 exit; entry 9 (not a time): 1 when the
// last digit was resolved by the candidate exchange, 2 by a third histogram pass, 0 when settled before.
constexpr int kTopkTraceStamps = 10;
std::vector<long long> topk_trace_read();
// TopkTuning::hist0 resolved for a launch of `rows` rows of `ld` keys.
bool topk_hist0_enabled(int64_t rows, int64_t ld);
constexpr int64_t kTopkHist0AutoRows = 4, kTopkHist0AutoMinLength = 65536;

}  // namespace dsa::cuda

// Exact top-k over score rows (portable sm_80+). Keys: floats mapped to order-preserving uint32
// (NaN ranks as -inf, -0 == +0). Selection = radix select of the k-th largest key, then an ordered
// compaction that emits the selected positions in ascending order; ties at the threshold go to the
// lower positions. Rows with n <= k give 0..n-1 then -1.
// Default: the on-chip path (topk_onchip_kernel, below): the row lives in the registers of one
// 1024-thread CTA (rows <= 16K) or of a thread-block cluster (sm_90, rows <= 128K, 256K with
// 16-CTA clusters), all radix passes on chip, one launch. docs/indexer-topk-cuda.md has the cost
// model and the measured numbers. The global-memory paths below are the fallback (sm_80/86/89 rows
// > 16K, longer rows, DSA_CUDA_TOPK_ONCHIP=0):
// Rows <= 8192 (topk_kernel): one CTA per row, digits of 12/10/10 bits over the row in global
// memory (the bin holding the k-th key found by a parallel scan of the histogram), ordered
// compaction by per-thread segments + two block scans.
// Longer rows take the multi-CTA path: (1) every CTA of a row adds the 4096-bin histogram of
// the top 12 key bits of its chunk into the row's global histogram; (2) likewise for bits 8..19 of
// the keys in the bin that holds the k-th largest key (scores are often concentrated: one 12-bit
// bin can hold most of a row); (3) every CTA finds the 24-bit prefix of the k-th largest key from
// the two histograms and appends the keys and positions of its chunk at or above it (ascending
// positions) to the row's candidate list (a slot range reserved with one atomic per CTA; the
// per-chunk ranges are recorded); (4) one CTA per row re-orders the chunks' ranges by chunk, so the
// candidates are in ascending position order, and selects the k largest among them in shared
// memory with the top 24 bits already fixed (one 8-bit radix pass). If the candidates overflow their
// buffer (e.g. a huge run of exact ties at the threshold), (3) selects from the row itself instead.
#include "backends/cuda/topk/topk.h"

#include <algorithm>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/topk/topk_key.cuh"

namespace dsa::cuda {

namespace {

constexpr int TK_THREADS = 1024;


// Exclusive block scan of one int per thread; returns the block total in *total.
__device__ int block_excl_scan(int v, int* warp_tot, int* total) {
  const int l = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (l >= o) x += y;
  }
  __syncthreads();
  if (l == 31) warp_tot[w] = x;
  __syncthreads();
  // lane i of every warp reads warp i's total (blockDim <= 1024: at most 32 warps); two warp reductions
  // instead of a serial loop over the warp totals
  const int wt = l < nw ? warp_tot[l] : 0;
  *total = __reduce_add_sync(0xffffffffu, wt);
  return __reduce_add_sync(0xffffffffu, l < w ? wt : 0) + x - v;
}

constexpr int NBIN = 4096;  // first digit: 12 bits
constexpr int kMcThreads = 512;
constexpr int kMcChunkMax = 8192;
constexpr int kCandCap = 16384;
// The on-chip kernel resolves the last radix digit by exchanging the candidates themselves (instead of a third
// histogram pass and a separate offset exchange) when at most this many keys of the cluster share the
// threshold bin after the second pass: one per thread.
constexpr int kCandFinalMax = 1024;
constexpr int kOnchipCandFinal = 1;  // topk_onchip_kernel flags: the candidate exchange allowed

__device__ __forceinline__ long long globaltimer_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The bin holding the krem-th largest key of a histogram hist_at(b), b < nb (counted from the top):
// *s_bin = that bin, *s_above = keys in higher bins. Every thread of the block must call it.
template <typename HistFn>
__device__ void find_bin(HistFn hist_at, int nb, int krem, int* warp_tot, int* s_bin, int* s_above) {
  const int per = (nb + int(blockDim.x) - 1) / int(blockDim.x);
  const int hi = max(0, nb - int(threadIdx.x) * per), lo = max(0, hi - per);  // bins [lo, hi), descending
  int local = 0;
  for (int b = hi - 1; b >= lo; --b) local += hist_at(b);
  int tot;
  const int excl = block_excl_scan(local, warp_tot, &tot);
  if (hi > lo && excl < krem && excl + local >= krem) {
    int cum = excl;
    for (int b = hi - 1; b >= lo; --b) {
      const int h = hist_at(b);
      if (cum + h >= krem) {
        *s_bin = b;
        *s_above = cum;
        break;
      }
      cum += h;
    }
  }
  __syncthreads();
}

// One radix pass over the keys matching (prefix, mask): digit = bits [shift, shift + bits).
template <typename KeyFn>
__device__ void radix_pass(KeyFn key_of, int64_t n, int shift, int bits, uint32_t& prefix, uint32_t& mask, int& krem,
                           int* hist, int* warp_tot, int* s_bin, int* s_above) {
  const int nb = 1 << bits, tid = threadIdx.x;
  for (int i = tid; i < nb; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  constexpr int U = 8;  // 8 loads in flight per thread, then the warp-aggregated atomics
  for (int64_t i0 = 0; i0 < n; i0 += int64_t(blockDim.x) * U) {
    uint32_t keys[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + int64_t(u) * blockDim.x + tid;
      keys[u] = i < n ? key_of(i) : 0u;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + int64_t(u) * blockDim.x + tid;
      const bool match = i < n && (keys[u] & mask) == prefix;
      const unsigned bal = __ballot_sync(0xffffffffu, match);
      if (match) {
        const uint32_t digit = (keys[u] >> shift) & uint32_t(nb - 1);
        const unsigned peers = __match_any_sync(bal, digit);
        if ((threadIdx.x % 32) == unsigned(__ffs(peers) - 1)) atomicAdd(&hist[digit], __popc(peers));
      }
    }
  }
  __syncthreads();
  find_bin([&](int b) { return hist[b]; }, nb, krem, warp_tot, s_bin, s_above);
  prefix |= uint32_t(*s_bin) << shift;
  mask |= uint32_t(nb - 1) << shift;
  krem -= *s_above;
  __syncthreads();
}

// Select the k largest of key(0..n-1) (n > k), calling emit(out_position, i) for each, positions
// ascending. Every thread of the block must call it. (prefix, mask, krem): the state after the top
// 24 bits if the caller already knows them (mask == 0xffffff00), else (0, 0, k).
template <typename KeyFn, typename EmitFn>
__device__ void select_core(KeyFn key_of, int64_t n, int64_t k, EmitFn emit, uint32_t prefix = 0, uint32_t mask = 0,
                            int krem = -1) {
  __shared__ int hist[NBIN];
  __shared__ int warp_tot[TK_THREADS / 32];
  __shared__ int s_bin, s_above;
  const int tid = threadIdx.x;
  if (krem < 0) krem = int(k);
  if (mask == 0) radix_pass(key_of, n, 20, 12, prefix, mask, krem, hist, warp_tot, &s_bin, &s_above);
  if (mask == 0xfff00000u) {
    radix_pass(key_of, n, 10, 10, prefix, mask, krem, hist, warp_tot, &s_bin, &s_above);
    radix_pass(key_of, n, 0, 10, prefix, mask, krem, hist, warp_tot, &s_bin, &s_above);
  } else {  // 24 bits known (multi-CTA path)
    radix_pass(key_of, n, 0, 8, prefix, mask, krem, hist, warp_tot, &s_bin, &s_above);
  }
  const uint32_t thr = prefix;  // exact key of the k-th largest; take krem of the keys equal to it
  // Ordered compaction: each thread owns a contiguous segment of positions; two block scans give
  // how many tied keys precede it (the lowest positions win the ties) and where its output starts.
  const int64_t seg = (n + blockDim.x - 1) / blockDim.x;
  const int64_t b0 = min(n, int64_t(tid) * seg), b1 = min(n, b0 + seg);
  int gt = 0, eq = 0;
  for (int64_t i = b0; i < b1; i += 8) {
    uint32_t x[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) x[u] = i + u < b1 ? key_of(i + u) : 0u;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (i + u < b1) {
        gt += x[u] > thr;
        eq += x[u] == thr;
      }
  }
  int tot;
  const int eq_before = block_excl_scan(eq, warp_tot, &tot);
  const int take_eq = max(0, min(eq, krem - eq_before));
  int pos = block_excl_scan(gt + take_eq, warp_tot, &tot);
  int taken = 0;
  for (int64_t i = b0; i < b1; i += 8) {
    uint32_t x[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) x[u] = i + u < b1 ? key_of(i + u) : 0u;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (i + u < b1 && (x[u] > thr || (x[u] == thr && taken < take_eq))) {
        emit(pos++, i + u);
        taken += x[u] == thr;
      }
  }
}

__global__ void __launch_bounds__(TK_THREADS) topk_kernel(const float* scores, int64_t ld, const int32_t* narr,
                                                          int n_add, int64_t row_base, int64_t k, int32_t* out) {
  const int64_t r = blockIdx.x;
  const int64_t n = int64_t(narr[row_base + r]) + n_add;
  const float* row = scores + r * ld;
  int32_t* o = out + (row_base + r) * k;
  if (n <= k) {
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < n ? int32_t(i) : -1;
    return;
  }
  select_core([&](int64_t i) { return order_key(row[i]); }, n, k,
              [&](int pos, int64_t i) { o[pos] = int32_t(i); });
}

// ---- on-chip path: the whole row in registers --------------------------------------------------
// One 1024-thread CTA holds up to 1024 * KPT keys in registers (thread t: keys t, t + 1024, ...:
// coalesced loads at any row alignment). Longer rows are split over a thread-block cluster (sm_90):
// each CTA builds the histogram of its own keys in shared memory and reads the other CTAs' bins
// through distributed shared memory (DSMEM) — one cluster barrier per radix pass, no global atomics,
// no scratch, one launch. Three radix passes over the register-resident keys (digits 11/11/10; or
// 8/12/12 with a per-lane first histogram, a knob), with an early exit once the threshold bin is
// taken whole. Then the ordered compaction: per (key slot j, warp) counts of the keys above and
// equal to the threshold (ballots), one block scan over them (slot-major order = position order),
// per-CTA totals through DSMEM, and every selected key written straight to its output position.
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r = 0;
#if __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
  return r;
}
// Full cluster barrier in two halves: arrive (release: my shared-memory writes become visible) and
// wait (acquire).
__device__ __forceinline__ void cluster_arrive() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#else
  __trap();  // never launched with clusters: DeviceFacts::topk_cluster_max is 1 for this build
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// The shared variable at p in CTA `rank` of the cluster, read through DSMEM.
__device__ __forceinline__ uint32_t dsmem_addr(const void* p, uint32_t rank) {
  uint32_t r = 0;
#if __CUDA_ARCH__ >= 900
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(uint32_t(__cvta_generic_to_shared(p))), "r"(rank));
#endif
  return r;
}
__device__ __forceinline__ int ld_dsmem_int(uint32_t addr) {
  int v = 0;
#if __CUDA_ARCH__ >= 900
  asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
#endif
  return v;
}

__global__ void topk_cluster_probe_kernel(int* out) {
#if __CUDA_ARCH__ >= 900
  *out = 1;
#else
  *out = 0;
#endif
}

// Loads BPT consecutive ints (BPT = 1, 2, 4; aligned) from local shared memory or from CTA `rank`.
template <int BPT>
__device__ __forceinline__ void ld_bins(const int* p, int* v) {
  if constexpr (BPT == 4) {
    const int4 x = *reinterpret_cast<const int4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  } else if constexpr (BPT == 2) {
    const int2 x = *reinterpret_cast<const int2*>(p);
    v[0] = x.x, v[1] = x.y;
  } else {
    v[0] = *p;
  }
}
template <int BPT>
__device__ __forceinline__ void ld_bins_remote(const int* p, uint32_t rank, int* v) {
#if __CUDA_ARCH__ >= 900
  const uint32_t a = dsmem_addr(p, rank);
  if constexpr (BPT == 4) {
    asm volatile("ld.shared::cluster.v4.s32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(a) : "memory");
  } else if constexpr (BPT == 2) {
    asm volatile("ld.shared::cluster.v2.s32 {%0, %1}, [%2];" : "=r"(v[0]), "=r"(v[1]) : "r"(a) : "memory");
  } else {
    asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v[0]) : "r"(a) : "memory");
  }
#else
  for (int i = 0; i < BPT; ++i) v[i] = 0;
#endif
}

// The bin of histogram h[NB] (summed over the csize CTAs of the cluster) that holds the krem-th
// largest key: sel = {bin, keys in higher bins, keys in the bin}. Thread t owns BPT bins, thread 0
// the top ones; one block scan. Every thread calls it after the barrier that completes h.
template <int NB>
__device__ __forceinline__ void find_threshold_bin(const int* h, int csize, int rank, int krem, int* warp_tot,
                                                   int* sel) {
  constexpr int BPT = NB >= TK_THREADS ? NB / TK_THREADS : 1;
  constexpr int G = BPT == 4 ? 4 : 8;  // remote loads in flight per group (registers)
  const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
  const bool owner = tid * BPT < NB;
  const int b0 = NB - BPT * (tid + 1);  // my lowest bin
  int v[BPT];
#pragma unroll
  for (int i = 0; i < BPT; ++i) v[i] = 0;
  if (owner) {
    ld_bins<BPT>(h + b0, v);
    for (int cb = 0; cb < csize && csize > 1; cb += G) {
      int u[G][BPT];
#pragma unroll
      for (int c = 0; c < G; ++c) {
        if (cb + c < csize && cb + c != rank) ld_bins_remote<BPT>(h + b0, uint32_t(cb + c), u[c]);
        else
#pragma unroll
          for (int i = 0; i < BPT; ++i) u[c][i] = 0;
      }
#pragma unroll
      for (int c = 0; c < G; ++c)
#pragma unroll
        for (int i = 0; i < BPT; ++i) v[i] += u[c][i];
    }
  }
  int local = 0;
#pragma unroll
  for (int i = 0; i < BPT; ++i) local += v[i];
  int x = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, off);
    if (lane >= off) x += y;
  }
  if (lane == 31) warp_tot[w] = x;
  __syncthreads();
  const int excl = __reduce_add_sync(0xffffffffu, lane < w ? warp_tot[lane] : 0) + x - local;
  if (owner && excl < krem && excl + local >= krem) {
    int cum = excl;
#pragma unroll
    for (int i = BPT - 1; i >= 0; --i) {
      if (cum + v[i] >= krem) {
        sel[0] = b0 + i, sel[1] = cum, sel[2] = v[i];
        break;
      }
      cum += v[i];
    }
  }
  __syncthreads();
}

__device__ __forceinline__ void cluster_sync_or_block(int csize) {
  if (csize > 1) {
    cluster_arrive();
    cluster_wait();
  } else {
    __syncthreads();
  }
}

// Shared memory of the on-chip kernel: 8192 ints of histogram space, used as
//  - digits 11/11/10 (LANE1 = false): pass 0 in [0, 2048), pass 1 in [2048, 4096), pass 2 in [0, 2048)
//    again (zeroed once pass 1's barrier guarantees the other CTAs read pass 0's);
//  - digits 8/12/12 (LANE1 = true): pass 0 per lane, [256 digits][32 lanes] (a lane's atomics never
//    collide with another lane's: scores concentrate in a few exponent bins, where same-address
//    atomics of one warp serialise), reduced into tot1[256]; pass 1 in [0, 4096), pass 2 in
//    [4096, 8192).
struct OnchipSmem {
  int hist[8192];
  int tot1[256];
  int warp_tot[TK_THREADS / 32];
  int sel[3];
  int cta_tot;
  // The candidate exchange (onchip_candidate_threshold): this CTA's keys in the threshold bin and its count of
  // keys above the bin, read by the other CTAs of the cluster.
  uint32_t cand[kCandFinalMax];
  int cta_nc, cta_gt;
};

// One radix pass P over the register-resident keys matching (prefix, mask). Returns true when the
// threshold is settled (the whole threshold bin is selected: no need to resolve it further).
template <int KPT, bool LANE1, int P>
__device__ __forceinline__ bool onchip_pass(const uint32_t* key, int nv, int nvw, uint32_t& prefix, uint32_t& mask,
                                            int& krem, OnchipSmem& sm, int csize, int rank, bool hist0_given = false) {
  constexpr int SHIFT = LANE1 ? (P == 0 ? 24 : P == 1 ? 12 : 0) : (P == 0 ? 21 : P == 1 ? 10 : 0);
  constexpr int BITS = LANE1 ? (P == 0 ? 8 : 12) : (P == 2 ? 10 : 11);
  constexpr uint32_t DMASK = (1u << BITS) - 1u;
  const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
  int* h = LANE1 ? (P == 0 ? sm.hist : P == 1 ? sm.hist : sm.hist + 4096) : (P == 1 ? sm.hist + 2048 : sm.hist);
  if (!LANE1 && P == 0 && hist0_given) {
    // The row's whole first histogram came from the score kernel (already in h, made visible by the
    // kernel's first barrier): no atomics, no cluster exchange.
    find_threshold_bin<2048>(h, 1, rank, krem, sm.warp_tot, sm.sel);
    prefix |= uint32_t(sm.sel[0]) << SHIFT;
    mask |= DMASK << SHIFT;
    krem -= sm.sel[1];
    return sm.sel[2] == krem;
  }
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    if (j >= nvw) break;
    if (j < nv && (key[j] & mask) == prefix) {
      const uint32_t d = (key[j] >> SHIFT) & DMASK;
      if (LANE1 && P == 0) atomicAdd(&h[d * 32 + lane], 1);
      else atomicAdd(&h[d], 1);
    }
  }
  if constexpr (LANE1 && P == 0) {
    __syncthreads();
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // warp w: digits 8w .. 8w + 7
      const int s = __reduce_add_sync(0xffffffffu, h[(8 * w + i) * 32 + lane]);
      if (lane == 0) sm.tot1[8 * w + i] = s;
    }
    cluster_sync_or_block(csize);
    // the per-lane histogram is dead (local only): clear all of hist for passes 1 and 2 (the
    // scan's barriers below order this before their atomics)
    for (int i = tid; i < 8192; i += TK_THREADS) sm.hist[i] = 0;
    find_threshold_bin<256>(sm.tot1, csize, rank, krem, sm.warp_tot, sm.sel);
  } else {
    cluster_sync_or_block(csize);
    if (!LANE1 && P == 1)  // pass 2 reuses pass 0's half (all CTAs have read it: they passed this barrier)
      for (int i = tid; i < 2048; i += TK_THREADS) sm.hist[i] = 0;
    find_threshold_bin<(1 << BITS) >= 2048 ? (1 << BITS) : 2048>(h, csize, rank, krem, sm.warp_tot, sm.sel);
  }
  prefix |= uint32_t(sm.sel[0]) << SHIFT;
  mask |= DMASK << SHIFT;
  krem -= sm.sel[1];
  return sm.sel[2] == krem;
}

// Last digit of a cluster row by exchanging candidates (sm_90 clusters only, csize > 1). On entry the radix
// passes have fixed the key bits in mask (all but the lowest 10) to prefix, and C = sel[2] <= kCandFinalMax keys
// of the whole cluster share them, krem (< C) of which are taken. Each CTA publishes its candidates and its count
// of keys above the prefix; after one cluster barrier every CTA gathers all C candidates (one per thread),
// finds the exact threshold key T with a local 10-bit histogram, and derives from the gathered keys what the
// ordered compaction needs from the lower-ranked CTAs: their counts of keys > T and == T. That replaces the
// third histogram pass (cluster barrier + DSMEM histogram reads) and the compaction's own offset exchange.
// Leaves an arrived, not yet waited, cluster barrier (the caller waits before exiting: peers read this CTA's
// list). Returns (gt_off, eq_off) and updates prefix (= T), mask (all bits) and krem.
template <int KPT>
__device__ __forceinline__ int2 onchip_candidate_threshold(const uint32_t* key, int nv, int nvw, uint32_t& prefix,
                                                           uint32_t& mask, int& krem, OnchipSmem& sm, int csize,
                                                           int rank) {
  const int tid = threadIdx.x, lane = tid % 32;
  const int C = sm.sel[2];
  int gt = 0;
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    if (j >= nvw) break;
    const uint32_t mk = key[j] & mask;
    if (j < nv && mk == prefix) sm.cand[atomicAdd(&sm.cta_nc, 1)] = key[j];  // < C <= kCandFinalMax in all
    gt += j < nv && mk > prefix;
  }
  gt = __reduce_add_sync(0xffffffffu, gt);
  if (lane == 0 && gt) atomicAdd(&sm.cta_gt, gt);
  cluster_arrive();  // release: the list and the counts
  cluster_wait();
  // Lane c (< csize) of every warp holds CTA c's candidate count and count above; inclusive scan over lanes.
  const int nc = lane < csize ? ld_dsmem_int(dsmem_addr(&sm.cta_nc, uint32_t(lane))) : 0;
  const int g = lane < csize ? ld_dsmem_int(dsmem_addr(&sm.cta_gt, uint32_t(lane))) : 0;
  int inc = nc;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  const int gt_lower = __reduce_add_sync(0xffffffffu, lane < rank ? g : 0);
  // Candidate tid: CTA ce = number of CTAs whose lists end at or before it (lists in rank order), starting at
  // `start` of the concatenation.
  const bool has = tid < C;
  int ce = 0, start = 0;
  for (int c = 0; c < csize; ++c) {
    const int end = __shfl_sync(0xffffffffu, inc, c);
    if (end <= tid) ce = c + 1, start = end;
  }
  uint32_t ck = 0;
  if (has) {
    ck = uint32_t(ld_dsmem_int(dsmem_addr(&sm.cand[tid - start], uint32_t(ce))));
    atomicAdd(&sm.hist[ck & 1023u], 1);  // zeroed after the second pass's barrier (onchip_pass<.., 1>)
  }
  cluster_arrive();  // done with the peers' shared memory (the caller waits before exiting)
  __syncthreads();
  find_threshold_bin<2048>(sm.hist, 1, rank, krem, sm.warp_tot, sm.sel);
  const uint32_t T = prefix | uint32_t(sm.sel[0]);
  krem -= sm.sel[1];
  prefix = T;
  mask = 0xffffffffu;
  const int gt_c = __syncthreads_count(has && ce < rank && ck > T);
  const int eq_c = __syncthreads_count(has && ce < rank && ck == T);
  return make_int2(gt_lower + gt_c, eq_c);
}

// Rows r = blockIdx.x / csize; CTA rank c of the row's cluster holds keys [c * per, (c + 1) * per).
template <int KPT, bool LANE1>
__global__ void __launch_bounds__(TK_THREADS, 1)
    topk_onchip_kernel(const float* __restrict__ scores, int64_t ld, const int32_t* __restrict__ narr, int n_add,
                       int64_t row_base, int64_t k, int32_t* __restrict__ out, int csize, int* hist0, int flags,
                       long long* trace) {
  __shared__ __align__(16) OnchipSmem sm;
  __shared__ int tab[KPT * 32];
  // Profiling aid (TopkConfig::trace): the first CTA's thread 0 records %globaltimer at the phase boundaries.
  const bool tr = trace && blockIdx.x == 0 && threadIdx.x == 0;
  auto stamp = [&](int i) {
    if (tr) trace[i] = globaltimer_ns();
  };
  stamp(0);
  pdl_wait();  // launched through launch_chained (launch.cuh)
  stamp(1);
  pdl_launch_next();
  const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
  const int rank = csize > 1 ? int(cluster_ctarank()) : 0;
  const int64_t r = blockIdx.x / csize;
  // This CTA's share of the row follows the row stride, not the row's length, so the key loads need not wait
  // for the length (one L2 round trip less); keys at or beyond n are masked below (slots j >= nv).
  const int64_t per = ((ld + csize - 1) / csize + TK_THREADS - 1) / TK_THREADS * TK_THREADS;  // <= KPT * 1024
  const int64_t c0 = rank * per;
  const float* row = scores + r * ld + c0;
  // hist0 (LANE1 = false only): [rows][2048] first-digit histograms of the rows' n keys, built by the score
  // kernel (indexer/scores_sm90.cu); rank 0 zeroes the row's when the cluster is done with it, so the buffer
  // is all zero between calls (CudaBackend::topk_hist0).
  int* h0row = hist0 ? hist0 + r * kTopkDigit0Bins : nullptr;
  uint32_t key[KPT];
  int2 g0 = make_int2(0, 0);
  if (!LANE1 && h0row) g0 = reinterpret_cast<const int2*>(h0row)[tid];  // in flight with the keys
#pragma unroll
  for (int j = 0; j < KPT; ++j) key[j] = c0 + j * TK_THREADS + tid < ld ? order_key(row[j * TK_THREADS + tid]) : 0u;
  const int64_t n = int64_t(narr[row_base + r]) + n_add;
  int32_t* o = out + (row_base + r) * k;
  if (n <= k) {  // the same for the whole cluster: no CTA reaches a cluster barrier
    if (rank == 0) {
      for (int64_t i = tid; i < k; i += TK_THREADS) o[i] = i < n ? int32_t(i) : -1;
      if (h0row)  // (the other CTAs may still be reading it: they exit without using it)
        for (int i = tid; i < kTopkDigit0Bins; i += TK_THREADS) h0row[i] = 0;
    }
    return;
  }
  const int len = int(max(int64_t(0), min(n, c0 + per) - c0));
  const int nv = len > tid ? (len - tid + TK_THREADS - 1) / TK_THREADS : 0;  // my keys: slots j < nv
  const int nvw = __shfl_sync(0xffffffffu, nv, 0);  // slots with any key in this warp (warp-uniform skips)
  static_assert(2 * TK_THREADS == kTopkDigit0Bins, "one int2 of the given first histogram per thread");
  if (!LANE1 && h0row) {  // pass 0's bins given; pass 1's zeroed
    reinterpret_cast<int2*>(sm.hist)[tid] = g0;
    for (int i = 2048 + tid; i < 4096; i += TK_THREADS) sm.hist[i] = 0;
  } else {
    for (int i = tid; i < (LANE1 ? 8192 : 4096); i += TK_THREADS) sm.hist[i] = 0;
  }
  if (tid == 0) sm.cta_nc = sm.cta_gt = 0;
  __syncthreads();
  stamp(2);

  uint32_t prefix = 0, mask = 0;
  int krem = int(k);
  bool offsets_known = false;  // gt_off / eq_off below already exchanged (candidate exchange)
  int2 offs = make_int2(0, 0);
  if (!onchip_pass<KPT, LANE1, 0>(key, nv, nvw, prefix, mask, krem, sm, csize, rank, h0row != nullptr)) {
    stamp(3);
    if (!onchip_pass<KPT, LANE1, 1>(key, nv, nvw, prefix, mask, krem, sm, csize, rank)) {
      stamp(4);
      if (!LANE1 && csize > 1 && (flags & kOnchipCandFinal) && sm.sel[2] <= kCandFinalMax) {
        offs = onchip_candidate_threshold<KPT>(key, nv, nvw, prefix, mask, krem, sm, csize, rank);
        offsets_known = true;
      } else {
        onchip_pass<KPT, LANE1, 2>(key, nv, nvw, prefix, mask, krem, sm, csize, rank);
      }
      if (tr) trace[9] = offsets_known ? 1 : 2;  // how the last digit was resolved
    }
  }
  stamp(5);

  // Ordered compaction. Selected: masked key > prefix, and the first krem (by position) == prefix.
  const unsigned lt = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    if (j >= nvw) {
      if (lane == 0) tab[j * 32 + w] = 0;
      continue;
    }
    const uint32_t mk = key[j] & mask;
    const unsigned gtb = __ballot_sync(0xffffffffu, j < nv && mk > prefix);
    const unsigned eqb = __ballot_sync(0xffffffffu, j < nv && mk == prefix);
    if (lane == 0) tab[j * 32 + w] = int(__popc(gtb) << 16 | __popc(eqb));  // <= 16384 each: no carry
  }
  __syncthreads();
  int tot;
  const int ex = block_excl_scan(tid < KPT * 32 ? tab[tid] : 0, sm.warp_tot, &tot);
  if (tid < KPT * 32) tab[tid] = ex;
  // tab is complete for the compaction below. (The cluster barrier would order it too, but
  // compute-sanitizer's racecheck does not model it as a CTA barrier.)
  __syncthreads();
  stamp(6);
  int gt_off = offs.x, eq_off = offs.y;  // selected keys of the lower-ranked CTAs of the cluster
  if (csize > 1 && !offsets_known) {
    if (tid == 0) sm.cta_tot = tot;
    cluster_arrive();
    cluster_wait();
    const int t = lane < rank ? ld_dsmem_int(dsmem_addr(&sm.cta_tot, lane)) : 0;
    gt_off = __reduce_add_sync(0xffffffffu, t >> 16);
    eq_off = __reduce_add_sync(0xffffffffu, t & 0xffff);
    cluster_arrive();  // done with the other CTAs' shared memory (waited for before exiting)
  }
#pragma unroll
  for (int j = 0; j < KPT; ++j) {
    if (j >= nvw) break;
    const uint32_t mk = key[j] & mask;
    const bool is_gt = j < nv && mk > prefix, is_eq = j < nv && mk == prefix;
    const unsigned gtb = __ballot_sync(0xffffffffu, is_gt);
    const unsigned eqb = __ballot_sync(0xffffffffu, is_eq);
    if ((gtb | eqb) == 0) continue;  // most (slot, warp) pairs hold no selected key: k of n
    const int base = tab[j * 32 + w];
    const int gb = gt_off + (base >> 16) + __popc(gtb & lt), eb = eq_off + (base & 0xffff) + __popc(eqb & lt);
    const int32_t pos = int32_t(c0) + j * TK_THREADS + tid;
    if (is_gt) o[gb + min(eb, krem)] = pos;
    else if (is_eq && eb < krem) o[gb + eb] = pos;
  }
  stamp(7);
  if (csize > 1) cluster_wait();  // every CTA of the cluster has read the given histogram (at its start)
  if (h0row && rank == 0)
    for (int i = tid; i < kTopkDigit0Bins; i += TK_THREADS) h0row[i] = 0;
  stamp(8);
}

// ---- multi-CTA path for long rows --------------------------------------------------------------
struct McArgs {
  const float* scores; int64_t ld;
  const int32_t* narr; int n_add; int64_t row_base; int64_t k;
  int chunk, nch;
  int* hist;        // [rows][NBIN] (zeroed): top 12 key bits
  int* hist2;       // [rows][NBIN] (zeroed): bits 8..19 of the keys in the threshold bin of hist
  int* meta;        // [rows][2 + 2 * nch] (zeroed): total, -, chunk offsets, chunk counts
  uint32_t* ckey;   // [rows][kCandCap]
  int32_t* cpos;
  int32_t* out;
};

__device__ __forceinline__ int64_t mc_len(const McArgs& a, int64_t r) { return int64_t(a.narr[a.row_base + r]) + a.n_add; }

// Shared-memory histogram h of digit(key) over the keys of row[c0, c1) that pass select(key): each
// warp counts equal digits with match_any and adds them with one atomic per distinct digit.
template <class Select, class Digit>
__device__ __forceinline__ void chunk_histogram(const float* row, int64_t c0, int64_t c1, int* h, Select select,
                                                Digit digit_of) {
  constexpr int U = 4;
  for (int64_t i0 = c0; i0 < c1; i0 += int64_t(blockDim.x) * U) {
    uint32_t keys[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + int64_t(u) * blockDim.x + threadIdx.x;
      keys[u] = i < c1 ? order_key(row[i]) : 0u;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i = i0 + int64_t(u) * blockDim.x + threadIdx.x;
      const bool ok = i < c1 && select(keys[u]);
      const unsigned bal = __ballot_sync(0xffffffffu, ok);
      if (ok) {
        const uint32_t digit = digit_of(keys[u]);
        const unsigned peers = __match_any_sync(bal, digit);
        if ((threadIdx.x % 32) == unsigned(__ffs(peers) - 1)) atomicAdd(&h[digit], __popc(peers));
      }
    }
  }
}

__global__ void __launch_bounds__(kMcThreads) topk_mc_hist_kernel(McArgs a) {
  __shared__ int h[NBIN];
  const int64_t r = blockIdx.y, n = mc_len(a, r), c0 = int64_t(blockIdx.x) * a.chunk;
  if (n <= a.k || c0 >= n) return;
  const int64_t c1 = min(n, c0 + a.chunk);
  const float* row = a.scores + r * a.ld;
  for (int i = threadIdx.x; i < NBIN; i += blockDim.x) h[i] = 0;
  __syncthreads();
  chunk_histogram(row, c0, c1, h, [](uint32_t) { return true; }, [](uint32_t key) { return key >> 20; });
  __syncthreads();
  int* gh = a.hist + r * NBIN;
  for (int i = threadIdx.x; i < NBIN; i += blockDim.x)
    if (h[i]) atomicAdd(&gh[i], h[i]);
}

// Copy n ints (global -> shared) with many loads in flight (find_bin's sequential per-thread reads
// of a global histogram would pay one L2 latency per bin).
__device__ __forceinline__ void load_shared(int* dst, const int* src, int n) {
#pragma unroll 8
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Level 2: the next 12 bits of the keys in the level-1 threshold bin.
__global__ void __launch_bounds__(kMcThreads) topk_mc_hist2_kernel(McArgs a) {
  __shared__ int h[NBIN];
  __shared__ int g1[NBIN];
  __shared__ int warp_tot[kMcThreads / 32];
  __shared__ int s_bin, s_above;
  const int64_t r = blockIdx.y, n = mc_len(a, r), c0 = int64_t(blockIdx.x) * a.chunk;
  if (n <= a.k || c0 >= n) return;
  const int64_t c1 = min(n, c0 + a.chunk);
  const float* row = a.scores + r * a.ld;
  load_shared(g1, a.hist + r * NBIN, NBIN);
  for (int i = threadIdx.x; i < NBIN; i += blockDim.x) h[i] = 0;
  __syncthreads();
  find_bin([&](int b) { return g1[b]; }, NBIN, int(a.k), warp_tot, &s_bin, &s_above);
  const uint32_t b1 = uint32_t(s_bin);
  chunk_histogram(row, c0, c1, h, [b1](uint32_t key) { return (key >> 20) == b1; },
                  [](uint32_t key) { return (key >> 8) & 0xfffu; });
  __syncthreads();
  int* gh = a.hist2 + r * NBIN;
  for (int i = threadIdx.x; i < NBIN; i += blockDim.x)
    if (h[i]) atomicAdd(&gh[i], h[i]);
}

// The 24-bit prefix of the k-th largest key of row r and the keys above it (both levels).
// sh: 2 * NBIN ints of shared scratch.
__device__ void mc_threshold(const McArgs& a, int64_t r, int* sh, int* warp_tot, int* s_bin, int* s_above,
                             uint32_t* thr24, int* above) {
  int* g1 = sh;
  int* g2 = sh + NBIN;
  load_shared(g1, a.hist + r * NBIN, NBIN);
  load_shared(g2, a.hist2 + r * NBIN, NBIN);
  __syncthreads();
  find_bin([&](int b) { return g1[b]; }, NBIN, int(a.k), warp_tot, s_bin, s_above);
  const uint32_t b1 = uint32_t(*s_bin);
  const int above1 = *s_above;
  __syncthreads();
  find_bin([&](int b) { return g2[b]; }, NBIN, int(a.k) - above1, warp_tot, s_bin, s_above);
  *thr24 = (b1 << 12) | uint32_t(*s_bin);
  *above = above1 + *s_above;
  __syncthreads();
}

__global__ void __launch_bounds__(kMcThreads) topk_mc_collect_kernel(McArgs a) {
  __shared__ uint32_t buf[kMcChunkMax];  // this chunk's keys
  __shared__ int warp_tot[kMcThreads / 32];
  __shared__ int s_bin, s_above, s_base;
  const int64_t r = blockIdx.y, n = mc_len(a, r), c0 = int64_t(blockIdx.x) * a.chunk;
  if (n <= a.k || c0 >= n) return;
  const int64_t c1 = min(n, c0 + a.chunk);
  const int m = int(c1 - c0);
  const float* row = a.scores + r * a.ld + c0;
  uint32_t bin;
  int above;
  mc_threshold(a, r, reinterpret_cast<int*>(buf), warp_tot, &s_bin, &s_above, &bin, &above);
  int cnt = 0;
  for (int i = threadIdx.x; i < m; i += blockDim.x) {
    const uint32_t key = order_key(row[i]);
    buf[i] = key;
    cnt += (key >> 8) >= bin;
  }
  int tot;
  block_excl_scan(cnt, warp_tot, &tot);
  int* meta = a.meta + r * (2 + 2 * int64_t(a.nch));
  if (threadIdx.x == 0) {
    s_base = atomicAdd(&meta[0], tot);
    meta[2 + blockIdx.x] = s_base;
    meta[2 + a.nch + blockIdx.x] = tot;
  }
  __syncthreads();
  const int base = s_base;
  if (base + tot > kCandCap) return;  // overflow: the final pass selects from the row itself
  uint32_t* ok = a.ckey + r * kCandCap;
  int32_t* op = a.cpos + r * kCandCap;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  int run = base;
  for (int i0 = 0; i0 < m; i0 += blockDim.x) {
    const int i = i0 + threadIdx.x;
    const uint32_t key = i < m ? buf[i] : 0u;
    const bool f = i < m && (key >> 8) >= bin;
    const unsigned bal = __ballot_sync(0xffffffffu, f);
    __syncthreads();
    if (lane == 0) warp_tot[w] = __popc(bal);
    __syncthreads();
    int before = 0, all = 0;
    for (int j = 0; j < nw; ++j) {
      before += j < w ? warp_tot[j] : 0;
      all += warp_tot[j];
    }
    if (f) {
      const int o = run + before + __popc(bal & ((1u << lane) - 1u));
      ok[o] = key;
      op[o] = int32_t(c0 + i);
    }
    run += all;
  }
}

__global__ void __launch_bounds__(TK_THREADS) topk_mc_final_kernel(McArgs a) {
  extern __shared__ __align__(16) uint32_t cand[];  // keys [kCandCap], positions [kCandCap]
  __shared__ int ordoff[1024];
  __shared__ int warp_tot[TK_THREADS / 32];
  __shared__ int s_bin, s_above;
  const int64_t r = blockIdx.x, n = mc_len(a, r);
  int32_t* o = a.out + (a.row_base + r) * a.k;
  if (n <= a.k) {
    for (int64_t i = threadIdx.x; i < a.k; i += blockDim.x) o[i] = i < n ? int32_t(i) : -1;
    return;
  }
  uint32_t thr24;
  int above;
  mc_threshold(a, r, reinterpret_cast<int*>(cand), warp_tot, &s_bin, &s_above, &thr24, &above);
  const uint32_t prefix = thr24 << 8, mask = 0xffffff00u;
  const int krem = int(a.k) - above;
  const int* meta = a.meta + r * (2 + 2 * int64_t(a.nch));
  const int total = meta[0];
  if (total > kCandCap) {
    const float* row = a.scores + r * a.ld;
    select_core([&](int64_t i) { return order_key(row[i]); }, n, a.k, [&](int pos, int64_t i) { o[pos] = int32_t(i); },
                prefix, mask, krem);
    return;
  }
  const int c = threadIdx.x;
  const int cnt = c < a.nch ? meta[2 + a.nch + c] : 0;
  int tot;
  const int off = block_excl_scan(cnt, warp_tot, &tot);
  if (c < a.nch) ordoff[c] = off;
  __syncthreads();
  uint32_t* skey = cand;
  int32_t* spos = reinterpret_cast<int32_t*>(cand + kCandCap);
  const uint32_t* gk = a.ckey + r * kCandCap;
  const int32_t* gp = a.cpos + r * kCandCap;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  for (int ch = w; ch < a.nch; ch += TK_THREADS / 32) {
    const int src = meta[2 + ch], dst = ordoff[ch], m = meta[2 + a.nch + ch];
    for (int j = lane; j < m; j += 32) {
      skey[dst + j] = gk[src + j];
      spos[dst + j] = gp[src + j];
    }
  }
  __syncthreads();
  select_core([&](int64_t i) { return skey[i]; }, total, a.k, [&](int pos, int64_t i) { o[pos] = spos[i]; }, prefix,
              mask, krem);
}

}  // namespace

namespace {

// Device buffer of the on-chip kernel's phase stamps (TopkConfig::trace) on this context; allocated on first use.
long long* topk_trace_buffer(CudaContext& ctx) {
  long long*& d = ctx.topk_state().trace;
  if (!d) {
    DSA_CUDA_CHECK(cudaMalloc(&d, kTopkTraceStamps * sizeof(long long)));
    DSA_CUDA_CHECK(cudaMemset(d, 0, kTopkTraceStamps * sizeof(long long)));
  }
  return d;
}

template <int KPT, bool LANE1>
bool launch_onchip(CudaContext& ctx, const float* scores, int64_t ld, const int32_t* narr, int n_add, int64_t row_base,
                   int64_t rows, int64_t k, int32_t* out, int csize, int* hist0) {
  DSA_CHECK(rows * csize <= 2147483647, "top-k: too many rows");
  const TopkConfig& tun = ctx.config().topk;
  const int flags = tun.cand_final ? kOnchipCandFinal : 0;
  const cudaError_t e = try_launch_chained(ctx, topk_onchip_kernel<KPT, LANE1>, dim3(unsigned(rows * csize)), dim3(TK_THREADS), 0,
                                           unsigned(csize), scores, ld, narr, n_add, row_base, k, out, csize,
                                           LANE1 ? nullptr : hist0, flags, tun.trace ? topk_trace_buffer(ctx) : nullptr);
  if (e == cudaSuccess) return true;
  const bool cluster_unschedulable = csize > 1 && (e == cudaErrorInvalidClusterSize || e == cudaErrorLaunchOutOfResources ||
                                                   e == cudaErrorInvalidConfiguration);
  if (!cluster_unschedulable) DSA_CUDA_CHECK(e);
  cudaGetLastError();  // clear the launch error
  int& cap = ctx.topk_state().cluster_cap;
  cap = std::min(cap, csize / 2);
  return false;
}

template <bool LANE1>
bool launch_onchip_kpt(CudaContext& ctx, int kpt, const float* scores, int64_t ld, const int32_t* narr, int n_add,
                       int64_t row_base, int64_t rows, int64_t k, int32_t* out, int csize, int* hist0) {
  if (kpt == 4) return launch_onchip<4, LANE1>(ctx, scores, ld, narr, n_add, row_base, rows, k, out, csize, hist0);
  if (kpt == 8) return launch_onchip<8, LANE1>(ctx, scores, ld, narr, n_add, row_base, rows, k, out, csize, hist0);
  return launch_onchip<16, LANE1>(ctx, scores, ld, narr, n_add, row_base, rows, k, out, csize, hist0);
}

}  // namespace


std::vector<long long> topk_trace_read(CudaContext& ctx) {
  std::vector<long long> h(kTopkTraceStamps, 0);
  DSA_CUDA_CHECK(cudaMemcpy(h.data(), topk_trace_buffer(ctx), h.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  DSA_CUDA_CHECK(cudaMemset(topk_trace_buffer(ctx), 0, h.size() * sizeof(long long)));
  return h;
}

namespace {

// Whether clusters of `size` one-per-SM CTAs of the on-chip kernels can be scheduled (GPCs with
// that many free SMs); sizes above 8 need the non-portable attribute (sm_90: up to 16).
bool cluster_fits(int size) {
  using Fn = void (*)(const float*, int64_t, const int32_t*, int, int64_t, int64_t, int32_t*, int, int*, int, long long*);
  for (Fn fn : {Fn(topk_onchip_kernel<4, false>), Fn(topk_onchip_kernel<8, false>), Fn(topk_onchip_kernel<16, false>),
                Fn(topk_onchip_kernel<4, true>), Fn(topk_onchip_kernel<8, true>), Fn(topk_onchip_kernel<16, true>)}) {
    if (size > 8 && cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(size));
    cfg.blockDim = dim3(TK_THREADS);
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = unsigned(size);
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int nc = 0;
    if (cudaOccupancyMaxActiveClusters(&nc, fn, &cfg) != cudaSuccess || nc < 1) {
      cudaGetLastError();
      return false;
    }
  }
  return true;
}

// The largest cluster the on-chip top-k may use on this device and build (1: no clusters).
int probe_cluster_max(const DeviceFacts& f) {
  if (f.cc_major < 9) return 1;
  int* d = nullptr;
  if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  int h = 0;
  topk_cluster_probe_kernel<<<1, 1>>>(d);  // 0 when the compute_80 PTX runs (e.g. CUDA_FORCE_PTX_JIT=1)
  const bool launched = cudaGetLastError() == cudaSuccess && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d);
  cudaGetLastError();
  if (!launched || h != 1) return 1;
  return cluster_fits(16) ? 16 : cluster_fits(8) ? 8 : 1;
}

}  // namespace

void probe_topk(CudaContext& ctx, DeviceFacts& f) {
  (void)ctx;
  f.topk_cluster_max = probe_cluster_max(f);
  // The multi-CTA path's final kernel needs kCandCap x 8 bytes of dynamic shared memory on top of its static
  // arrays: 164 KB, beyond sm_86/89 (99 KB) and just beyond sm_80 (163 KB) — they keep the one-CTA-per-row kernel.
  cudaFuncAttributes fa{};
  if (cudaFuncGetAttributes(&fa, topk_mc_final_kernel) != cudaSuccess) {
    cudaGetLastError();
    f.topk_mc_fits = false;
  } else {
    f.topk_mc_fits = fa.sharedSizeBytes + size_t(kCandCap) * 8 <= f.smem_optin;
  }
}

// The on-chip configuration launch_topk takes for rows of ld keys: keys per thread and cluster size; false
// where it takes a global-memory path.
bool CudaBackend::topk_onchip_plan(int64_t ld, int64_t rows, int64_t k, int* kpt_out, int* csize_out) const {
  const TopkConfig& tun = config().topk;
  if (!tun.onchip || k > 65535) return false;
  // Keys per thread and cluster size (measured, H200, docs/indexer-topk-cuda.md): at batch 1 more
  // SMs per row pay off up to a point — per-key work is instruction bound, but each extra CTA
  // adds DSMEM reads to every histogram exchange — so 4 keys per thread only up to 4-CTA clusters,
  // 8 up to 8 (a 16-CTA cluster with 8 keys per thread is slower than 8 CTAs with 16), 16-CTA
  // clusters only for rows > 128K. Large batches: fewer, fuller CTAs (rows x cluster within half
  // the SMs).
  const int cmax = std::min(context().facts().topk_cluster_max, context().topk_state().cluster_cap);
  const int sms = sm_count();
  int kpt = 0, csize = 0;
  for (int cand : {4, 8, 16}) {
    if (tun.force_kpt && cand != tun.force_kpt) continue;
    int64_t c = 1;  // a power of two (cluster shapes that surely schedule)
    while (c * cand * TK_THREADS < ld) c *= 2;
    if (c > (tun.force_kpt ? cmax : std::min(cmax, cand == 4 ? 4 : cand == 8 ? 8 : 16))) continue;
    if (kpt && c == csize) break;  // more keys per thread only where that means fewer CTAs
    kpt = cand, csize = int(c);
    if (tun.force_kpt || 2 * rows * c <= sms) break;
  }
  *kpt_out = kpt;
  *csize_out = csize;
  return kpt != 0;
}

bool CudaBackend::topk_takes_hist0(int64_t ld, int64_t rows, int64_t k) const {
  int kpt = 0, csize = 0;
  const TopkConfig& tun = config().topk;
  return tun.hist0_for(rows, ld) && !tun.lane_histogram && topk_onchip_plan(ld, rows, k, &kpt, &csize);
}

void CudaBackend::launch_topk(const float* scores, int64_t ld, const int32_t* narr, int n_add, int64_t row_base,
                              int64_t rows, int64_t k, int32_t* out, int* hist0) {
  if (rows == 0) return;
  CudaContext& ctx = context();
  TopkState& st = ctx.topk_state();
  st.last_hist0 = false;
  int kpt = 0, csize = 0;
  if (topk_onchip_plan(ld, rows, k, &kpt, &csize)) {
    const TopkConfig& tun = config().topk;
    const bool launched = tun.lane_histogram ? launch_onchip_kpt<true>(ctx, kpt, scores, ld, narr, n_add, row_base, rows, k, out, csize, nullptr)
                                             : launch_onchip_kpt<false>(ctx, kpt, scores, ld, narr, n_add, row_base, rows, k, out, csize, hist0);
    if (launched) {
      st.last_kpt = kpt;
      st.last_cluster = csize;
      st.last_hist0 = hist0 != nullptr && !tun.lane_histogram;
      if (hist0 && tun.lane_histogram) DSA_CUDA_CHECK(cudaMemsetAsync(hist0, 0, size_t(rows) * kTopkDigit0Bins * 4));
      return;
    }  // otherwise (a cluster that no longer schedules) a global-memory path below
  }
  // A given first histogram that no kernel consumed goes back to zero (the buffer's invariant).
  if (hist0) DSA_CUDA_CHECK(cudaMemsetAsync(hist0, 0, size_t(rows) * kTopkDigit0Bins * 4));
  st.last_kpt = st.last_cluster = 0;
  const int sms = sm_count();
  // The multi-CTA path's final kernel needs more shared memory than sm_80/86/89 have (probe_topk).
  if (ld > kMcChunkMax && k <= kCandCap && ctx.facts().topk_mc_fits) {
    // Rows go in groups so that the scratch (histograms + a kCandCap candidate buffer, ~160 KB per row)
    // stays within 64 MB whatever the tile: indexer_topk may pass thousands of rows of prefill.
    const int64_t per_row_bytes = (2 * NBIN + 2 + 2 * 1024) * 4 + 2 * int64_t(kCandCap) * 4;
    const int64_t group = std::clamp<int64_t>((int64_t(64) << 20) / per_row_bytes, 1, 65535);
    // Long rows: chunks of 1024..8192 keys, about 2 CTAs per SM in all.
    const int64_t per_row = std::max<int64_t>(1, (2 * int64_t(sms) + std::min(rows, group) - 1) / std::min(rows, group));
    int64_t chunk = (ld + per_row - 1) / per_row;
    chunk = std::clamp<int64_t>((chunk + 1023) / 1024 * 1024, 1024, kMcChunkMax);
    const int64_t nch = (ld + chunk - 1) / chunk;
    if (nch <= 1024) {
      const size_t smem = size_t(kCandCap) * 8;
      ctx.smem_attr(topk_mc_final_kernel, smem);
      for (int64_t r0 = 0; r0 < rows; r0 += group) {
        const int64_t g = std::min(group, rows - r0);
        const int64_t meta_n = 2 + 2 * nch;
        Tensor hdr = alloc(DType::I32, {g, 2 * NBIN + meta_n});
        Tensor cand = alloc(DType::I32, {g, 2 * kCandCap});
        DSA_CUDA_CHECK(cudaMemsetAsync(hdr.data, 0, hdr.nbytes()));
        McArgs a{};
        a.scores = scores + r0 * ld; a.ld = ld; a.narr = narr; a.n_add = n_add; a.row_base = row_base + r0; a.k = k;
        a.chunk = int(chunk); a.nch = int(nch);
        a.hist = hdr.ptr<int32_t>();
        a.hist2 = hdr.ptr<int32_t>() + g * NBIN;
        a.meta = hdr.ptr<int32_t>() + 2 * g * NBIN;
        a.ckey = reinterpret_cast<uint32_t*>(cand.data);
        a.cpos = cand.ptr<int32_t>() + g * kCandCap;
        a.out = out;
        topk_mc_hist_kernel<<<dim3(unsigned(nch), unsigned(g)), kMcThreads>>>(a);
        DSA_LAUNCH_CHECK();
        topk_mc_hist2_kernel<<<dim3(unsigned(nch), unsigned(g)), kMcThreads>>>(a);
        DSA_LAUNCH_CHECK();
        topk_mc_collect_kernel<<<dim3(unsigned(nch), unsigned(g)), kMcThreads>>>(a);
        DSA_LAUNCH_CHECK();
        topk_mc_final_kernel<<<unsigned(g), TK_THREADS, smem>>>(a);
        DSA_LAUNCH_CHECK();
      }
      return;
    }
  }
  DSA_CHECK(rows <= 2147483647, "top-k: too many rows");
  topk_kernel<<<unsigned(rows), TK_THREADS>>>(scores, ld, narr, n_add, row_base, k, out);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::topk_rows(const Tensor& scores, const int32_t* d_n, int64_t k, Tensor& out) {
  launch_topk(scores.ptr<float>(), scores.dim(1), d_n, 0, 0, scores.dim(0), k, out.ptr<int32_t>());
}

}  // namespace dsa::cuda

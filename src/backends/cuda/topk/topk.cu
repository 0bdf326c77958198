// Exact top-k over score rows (portable sm_80+). Core: one block selects the k largest of n keys —
// a 4-pass 8-bit radix select finds the k-th largest key, then an ordered compaction (per-thread
// segments + two block scans) emits the selected positions in ascending order. Ties at the
// threshold go to the lower positions; NaN ranks as -inf; -0 == +0 (as the CPU's float
// comparisons). Rows with n <= k give 0..n-1 then -1.
// Few long rows (decode at small batch): each row is cut into chunks, one block per chunk keeps
// the chunk's exact top-k (keys and positions), and a second pass selects the row's top-k among
// those candidates — exact, because every member of the row's top-k is in its chunk's top-k under
// the same (key, lower position) order, and candidates stay in ascending position order.
#include "backends/cuda/cuda_backend.h"

namespace dsa::cuda {

namespace {

constexpr int TK_THREADS = 1024;

__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) v = -INFINITY;  // NaN ranks as -inf
  if (v == 0.f) v = 0.f;      // -0 == +0
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Padding candidates rank below every real key (the smallest real key, -inf, is 0x007fffff).
constexpr uint32_t kPadKey = 0u;

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
  int off = 0, tot = 0;
  for (int i = 0; i < nw; ++i) {
    if (i < w) off += warp_tot[i];
    tot += warp_tot[i];
  }
  *total = tot;
  return off + x - v;
}

// Select the k largest of key(0..n-1) (n > k), calling emit(out_position, i) for each, positions
// ascending. Every thread of the block must call it.
template <typename KeyFn, typename EmitFn>
__device__ void select_core(KeyFn key_of, int64_t n, int64_t k, EmitFn emit) {
  __shared__ int hist[256];
  __shared__ int warp_tot[TK_THREADS / 32];
  __shared__ uint32_t s_prefix;
  __shared__ int s_krem;
  const int tid = threadIdx.x;
  uint32_t prefix = 0, mask = 0;
  int krem = int(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
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
          const uint32_t digit = (keys[u] >> shift) & 0xff;
          const unsigned peers = __match_any_sync(bal, digit);
          if ((threadIdx.x % 32) == unsigned(__ffs(peers) - 1)) atomicAdd(&hist[digit], __popc(peers));
        }
      }
    }
    __syncthreads();
    if (tid == 0) {
      int cum = 0, bin = 255;
      for (; bin > 0; --bin) {
        if (cum + hist[bin] >= krem) break;
        cum += hist[bin];
      }
      s_prefix = prefix | (uint32_t(bin) << shift);
      s_krem = krem - cum;
    }
    __syncthreads();
    prefix = s_prefix;
    krem = s_krem;
    mask |= 0xffu << shift;
    __syncthreads();
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

// Pass 1 of the chunked path: chunk blockIdx.x of row blockIdx.y keeps its top-k (ascending
// positions), padded with kPadKey / -1.
__global__ void __launch_bounds__(TK_THREADS) topk_chunk_kernel(const float* scores, int64_t ld, const int32_t* narr,
                                                                int n_add, int64_t row_base, int64_t k, int64_t chunk,
                                                                uint32_t* ckey, int32_t* cidx) {
  const int64_t r = blockIdx.y, c = blockIdx.x, nch = gridDim.x;
  const int64_t n = int64_t(narr[row_base + r]) + n_add;
  const int64_t c0 = c * chunk, hi = min(n, c0 + chunk), m = hi > c0 ? hi - c0 : 0;
  const float* row = scores + r * ld + c0;
  uint32_t* ok = ckey + (r * nch + c) * k;
  int32_t* oi = cidx + (r * nch + c) * k;
  if (m <= k) {
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      ok[i] = i < m ? order_key(row[i]) : kPadKey;
      oi[i] = i < m ? int32_t(c0 + i) : -1;
    }
    return;
  }
  select_core([&](int64_t i) { return order_key(row[i]); }, m, k, [&](int pos, int64_t i) {
    ok[pos] = order_key(row[i]);
    oi[pos] = int32_t(c0 + i);
  });
}

// Pass 2: the row's top-k among its nch * k candidates.
__global__ void __launch_bounds__(TK_THREADS) topk_merge_kernel(const uint32_t* ckey, const int32_t* cidx,
                                                                int64_t nch, const int32_t* narr, int n_add,
                                                                int64_t row_base, int64_t k, int32_t* out) {
  const int64_t r = blockIdx.x;
  const int64_t n = int64_t(narr[row_base + r]) + n_add;
  int32_t* o = out + (row_base + r) * k;
  if (n <= k) {
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < n ? int32_t(i) : -1;
    return;
  }
  const uint32_t* keys = ckey + r * nch * k;
  const int32_t* idx = cidx + r * nch * k;
  select_core([&](int64_t i) { return keys[i]; }, nch * k, k, [&](int pos, int64_t i) { o[pos] = idx[i]; });
}

}  // namespace

void CudaBackend::launch_topk(const float* scores, int64_t ld, const int32_t* narr, int n_add, int64_t row_base,
                              int64_t rows, int64_t k, int32_t* out) {
  if (rows == 0) return;
  // Few long rows: spread each row over several blocks (pass 1), then merge (pass 2).
  const int64_t want = (2 * int64_t(sms_) + rows - 1) / rows;  // blocks per row to fill the GPU twice
  int64_t chunk = std::max<int64_t>(4 * k, 8192);
  chunk = std::max(chunk, (ld + want - 1) / want);
  const int64_t nch = (ld + chunk - 1) / chunk;
  if (nch >= 2 && nch <= 64 && rows <= 65535) {
    Tensor ck = alloc(DType::I32, {rows, nch, k}), ci = alloc(DType::I32, {rows, nch, k});
    topk_chunk_kernel<<<dim3(unsigned(nch), unsigned(rows)), TK_THREADS>>>(
        scores, ld, narr, n_add, row_base, k, chunk, reinterpret_cast<uint32_t*>(ck.data), ci.ptr<int32_t>());
    DSA_LAUNCH_CHECK();
    topk_merge_kernel<<<unsigned(rows), TK_THREADS>>>(reinterpret_cast<const uint32_t*>(ck.data), ci.ptr<int32_t>(),
                                                      nch, narr, n_add, row_base, k, out);
    DSA_LAUNCH_CHECK();
    return;
  }
  topk_kernel<<<unsigned(rows), TK_THREADS>>>(scores, ld, narr, n_add, row_base, k, out);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::topk_rows(const Tensor& scores, const int32_t* d_n, int64_t k, Tensor& out) {
  launch_topk(scores.ptr<float>(), scores.dim(1), d_n, 0, 0, scores.dim(0), k, out.ptr<int32_t>());
}

}  // namespace dsa::cuda

// Sampling on the device (docs/sampling.md): Backend::sample and token_logprobs, the CUDA side of
// backends/cpu/cpu_sample.cpp, which is the reference. Only the drawn tokens, their log-probabilities
// and the asked-for top logprobs cross PCIe, never the [rows, vocab] logits.
//
// One CTA per row. The log-sum-exp, the greedy argmax and the Gumbel-max draw are block reductions
// in float64 over the row. Rows that need the order of their logits (top-k / top-p filters, top
// logprobs) are first sorted by a CUB segmented radix sort — descending and stable, so equal logits
// keep ascending ids, the reference's tie rule — and the filters then read prefixes of the sorted row.
// The draw's noise is sample_noise.h, the same function of (seed, counter, id) as on the CPU, so a
// draw gives the reference's token unless a top-p boundary falls within float64 rounding of the
// cumulative sum (the sums run in a different order).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_backend.h"
#include "backends/sample_noise.h"

namespace dsa::cuda {

namespace {

constexpr int kThreads = 512;

// The better of two candidates: larger key, ties to the lower id (ids < 0 never win).
struct Cand {
  double key;
  int32_t id;
};
struct CandBetter {
  __device__ Cand operator()(const Cand& a, const Cand& b) const {
    if (a.id < 0) return b;
    if (b.id < 0) return a;
    return (a.key > b.key || (a.key == b.key && a.id < b.id)) ? a : b;
  }
};
struct DoubleMax {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};

using Reduce = cub::BlockReduce<double, kThreads>;
using CandReduce = cub::BlockReduce<Cand, kThreads>;
using Scan = cub::BlockScan<double, kThreads>;
union Smem {
  typename Reduce::TempStorage reduce;
  typename CandReduce::TempStorage cand;
  typename Scan::TempStorage scan;
};

// Block-wide sum / max / best candidate, broadcast to every thread.
__device__ double block_sum(double v, Smem& sm, double* bcast) {
  const double s = Reduce(sm.reduce).Sum(v);
  __syncthreads();
  if (threadIdx.x == 0) *bcast = s;
  __syncthreads();
  return *bcast;
}
__device__ double block_max(double v, Smem& sm, double* bcast) {
  const double s = Reduce(sm.reduce).Reduce(v, DoubleMax());
  __syncthreads();
  if (threadIdx.x == 0) *bcast = s;
  __syncthreads();
  return *bcast;
}
__device__ Cand block_best(Cand c, Smem& sm, Cand* bcast) {
  const Cand s = CandReduce(sm.cand).Reduce(c, CandBetter());
  __syncthreads();
  if (threadIdx.x == 0) *bcast = s;
  __syncthreads();
  return *bcast;
}

// log(sum_v exp(l_v - m)) + m with m the row's max: the reference's formula (cpu_sample.cpp).
__device__ double row_logsumexp(const float* l, int64_t V, Smem& sm, double* bcast) {
  double m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = fmax(m, double(l[v]));
  m = block_max(m, sm, bcast);
  double s = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) s += exp(double(l[v]) - m);
  s = block_sum(s, sm, bcast);
  return log(s) + m;
}

__device__ __forceinline__ double gumbel_key(float logit, double T, const SampleParams& p, int32_t id) {
  return double(logit) / T - log(-log(sample_uniform(p.seed, p.counter, uint32_t(id))));
}

// Sort keys of the rows that need an order: the logits with -0 made +0 (the reference compares
// values, and the radix order puts -0 below +0), and their ids.
__global__ void order_prep_kernel(const float* __restrict__ logits, int64_t V, const uint8_t* __restrict__ ordered,
                                  float* __restrict__ keys, int32_t* __restrict__ ids) {
  const int64_t r = blockIdx.y;
  if (!ordered[r]) return;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < V; v += int64_t(gridDim.x) * blockDim.x) {
    const float x = logits[r * V + v];
    keys[r * V + v] = x == 0.0f ? 0.0f : x;
    ids[r * V + v] = int32_t(v);
  }
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits, int64_t V,
                                                          const SampleParams* __restrict__ params,
                                                          const uint8_t* __restrict__ ordered,
                                                          const float* __restrict__ skeys,
                                                          const int32_t* __restrict__ sids, int n_top,
                                                          int32_t* __restrict__ tokens, float* __restrict__ logprobs,
                                                          int32_t* __restrict__ top_ids, float* __restrict__ top_lp) {
  __shared__ Smem sm;
  __shared__ double dbc;
  __shared__ Cand cbc;
  __shared__ int64_t keep_s;
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  const SampleParams p = params[r];
  const bool has_order = ordered[r] != 0;
  const float* sk = skeys + r * V;
  const int32_t* si = sids + r * V;
  const bool greedy = !(p.temperature > 0.0f);
  int32_t tok = 0;
  if (greedy) {
    Cand c{-INFINITY, -1};
    for (int64_t v = threadIdx.x; v < V; v += kThreads) c = CandBetter()(c, Cand{double(l[v]), int32_t(v)});
    c = block_best(c, sm, &cbc);
    tok = c.id >= 0 ? c.id : 0;
  } else {
    const double T = double(p.temperature);
    int64_t n = p.top_k > 0 && int64_t(p.top_k) < V ? int64_t(p.top_k) : V;
    const bool filtered = n < V || p.top_p < 1.0f;  // then has_order
    if (filtered && p.top_p < 1.0f) {
      // Smallest prefix of the order whose tempered mass reaches top_p of the top-k's.
      const double zmax = double(sk[0]) / T;
      double s = 0;
      for (int64_t i = threadIdx.x; i < n; i += kThreads) s += exp(double(sk[i]) / T - zmax);
      const double target = double(p.top_p) * block_sum(s, sm, &dbc);
      if (threadIdx.x == 0) keep_s = n;
      __syncthreads();
      double carry = 0;
      for (int64_t base = 0; base < n; base += kThreads) {
        const int64_t i = base + threadIdx.x;
        const double x = i < n ? exp(double(sk[i]) / T - zmax) : 0.0;
        double inc, total;
        Scan(sm.scan).InclusiveSum(x, inc, total);
        __syncthreads();
        if (i < n && carry + inc >= target) atomicMin(reinterpret_cast<unsigned long long*>(&keep_s),
                                                      static_cast<unsigned long long>(i + 1));
        __syncthreads();
        if (keep_s < n) break;
        carry += total;
      }
      n = keep_s;
    }
    Cand c{-INFINITY, -1};
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int32_t v = filtered ? si[i] : int32_t(i);
      const double key = gumbel_key(l[v], T, p, v);
      if (key > -INFINITY) c = CandBetter()(c, Cand{key, v});
    }
    c = block_best(c, sm, &cbc);
    tok = c.id >= 0 ? c.id : (has_order ? si[0] : 0);  // -inf everywhere: the reference's fallback
  }
  const double lse = row_logsumexp(l, V, sm, &dbc);
  if (threadIdx.x == 0) {
    tokens[r] = tok;
    logprobs[r] = float(double(l[tok]) - lse);
  }
  for (int i = threadIdx.x; i < n_top; i += kThreads) {
    top_ids[r * n_top + i] = si[i];
    top_lp[r * n_top + i] = float(double(l[si[i]]) - lse);
  }
}

__global__ void __launch_bounds__(kThreads) token_logprobs_kernel(const float* __restrict__ logits, int64_t V,
                                                                  const int32_t* __restrict__ targets,
                                                                  double* __restrict__ lp, int* err) {
  __shared__ Smem sm;
  __shared__ double dbc;
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  const double lse = row_logsumexp(l, V, sm, &dbc);
  if (threadIdx.x == 0) {
    const int32_t t = targets[r];
    if (t < 0 || t >= V) {
      atomicOr(err, kErrTokenId);
      lp[r] = NAN;
    } else {
      lp[r] = double(l[t]) - lse;
    }
  }
}

}  // namespace

}  // namespace dsa::cuda

namespace dsa {

using namespace dsa::cuda;

void CudaBackend::sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens,
                         Tensor& logprobs, Tensor* top_ids, Tensor* top_lp) {
  const int64_t R = logits.dim(0), V = logits.dim(1);
  const int64_t NT = top_ids ? top_ids->dim(1) : 0;
  check_sample_args(logits, params.size(), tokens, logprobs, top_ids, top_lp);
  DSA_CHECK(V < (int64_t(1) << 31) && R * V < (int64_t(1) << 31), "sample: ", R, " x ", V, " logits exceed the sort's 32-bit offsets");
  if (R == 0) return;
  // Which rows need their order: filtered draws and top logprobs (the same rule as the reference).
  std::vector<uint8_t> ord_h(static_cast<size_t>(R));
  std::vector<int32_t> seg_h(static_cast<size_t>(2 * R));
  bool any = false;
  for (int64_t r = 0; r < R; ++r) {
    const SampleParams& p = params[size_t(r)];
    ord_h[size_t(r)] = p.filtered(V) || NT > 0;
    any |= ord_h[size_t(r)] != 0;
    seg_h[size_t(r)] = int32_t(r * V);
    seg_h[size_t(R + r)] = int32_t(r * V + (ord_h[size_t(r)] ? V : 0));  // empty segments are skipped
  }
  Tensor par = upload(Tensor{const_cast<SampleParams*>(params.data()), DType::U8, {int64_t(R * sizeof(SampleParams))}});
  Tensor ord = upload(Tensor{ord_h.data(), DType::U8, {R}});
  Tensor keys_out, ids_out;
  if (any) {
    Tensor seg = upload(Tensor{seg_h.data(), DType::I32, {2 * R}});
    Tensor keys_in = alloc(DType::F32, {R, V}), ids_in = alloc(DType::I32, {R, V});
    keys_out = alloc(DType::F32, {R, V});
    ids_out = alloc(DType::I32, {R, V});
    order_prep_kernel<<<dim3(cdiv(V, 1024 * 4), unsigned(R)), 1024>>>(logits.ptr<float>(), V, ord.ptr<uint8_t>(),
                                                                       keys_in.ptr<float>(), ids_in.ptr<int32_t>());
    DSA_LAUNCH_CHECK();
    const int32_t* beg = seg.ptr<int32_t>();
    const int32_t* end = beg + R;
    size_t tmp_bytes = 0;
    DSA_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, tmp_bytes, keys_in.ptr<float>(), keys_out.ptr<float>(), ids_in.ptr<int32_t>(), ids_out.ptr<int32_t>(),
        int(R * V), int(R), beg, end, 0, 32, cudaStreamPerThread));
    Tensor tmp = alloc(DType::U8, {int64_t(std::max<size_t>(tmp_bytes, 1))});
    DSA_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        tmp.data, tmp_bytes, keys_in.ptr<float>(), keys_out.ptr<float>(), ids_in.ptr<int32_t>(), ids_out.ptr<int32_t>(),
        int(R * V), int(R), beg, end, 0, 32, cudaStreamPerThread));
  } else {
    keys_out = alloc(DType::F32, {1});
    ids_out = alloc(DType::I32, {1});
  }
  sample_kernel<<<unsigned(R), kThreads>>>(logits.ptr<float>(), V, static_cast<const SampleParams*>(par.data),
                                           ord.ptr<uint8_t>(), keys_out.ptr<float>(), ids_out.ptr<int32_t>(), int(NT),
                                           tokens.ptr<int32_t>(), logprobs.ptr<float>(),
                                           NT ? top_ids->ptr<int32_t>() : nullptr, NT ? top_lp->ptr<float>() : nullptr);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) {
  const int64_t R = logits.dim(0), V = logits.dim(1);
  check_token_logprobs_args(logits, targets, lp);
  if (R == 0) return;
  token_logprobs_kernel<<<unsigned(R), kThreads>>>(logits.ptr<float>(), V, targets.ptr<int32_t>(), lp.ptr<double>(),
                                                   err_flag());
  DSA_LAUNCH_CHECK();
}

}  // namespace dsa

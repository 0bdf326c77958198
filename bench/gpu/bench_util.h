#pragma once
// Shared by the CUDA bench drivers: error check and CUDA-event timing (median of repeated calls).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace dsa::bench {

// The measured H200 roofline the reports are relative to (kernels.md): copy bandwidth (TB/s), cuBLAS bf16
// and FP8 dense GEMM (TFLOP/s).
constexpr double kCopyTBs = 4.2, kBf16TF = 750, kFp8TF = 1300;

inline void chk(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Median time in ms of fn(rep) after `warmup` untimed calls; stops early once `budget_ms` of timed
// calls have run (at least 3). fn gets the call index, so callers can rotate inputs out of L2.
inline double time_ms(const std::function<void(int)>& fn, int max_reps = 30, int warmup = 1, float budget_ms = 3000) {
  cudaEvent_t a, b;
  chk(cudaEventCreate(&a), "event");
  chk(cudaEventCreate(&b), "event");
  for (int w = 0; w < warmup; ++w) fn(w);
  chk(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> ts;
  float total = 0;
  for (int r = 0; r < max_reps; ++r) {
    cudaEventRecord(a);
    fn(r + warmup);
    cudaEventRecord(b);
    chk(cudaEventSynchronize(b), "timed call");
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms);
    total += ms;
    if (total > budget_ms && r >= 2) break;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

}  // namespace dsa::bench

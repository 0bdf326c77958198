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

// Per-call time in ms of fn as a CUDA graph replays it: fn(v) for each v < variants is captured into its own
// graph (after one eager call, so that one-time allocations and uploads happen outside the capture), then
// `reps` graph launches go back to back (variant r % variants: callers rotate inputs out of L2) in one timed
// span; the median span of `rounds`, divided by reps. time_ms above times one call on an idle GPU, so it also
// pays the host's submission latency of that call's first kernel (several us); a decode step replayed as one
// graph pays it once per step, not per layer. Both are reported. Returns -1 if a capture fails (the reason
// printed).
inline double time_graph_ms(const std::function<void(int)>& fn, int variants, int reps = 24, int rounds = 5) {
  std::vector<cudaGraphExec_t> execs;
  for (int v = 0; v < variants; ++v) {
    fn(v);
    chk(cudaStreamSynchronize(cudaStreamPerThread), "graph warm-up");
    cudaGraph_t g = nullptr;
    chk(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed), "begin capture");
    fn(v);
    const cudaError_t e = cudaStreamEndCapture(cudaStreamPerThread, &g);
    cudaGraphExec_t x = nullptr;
    if (e != cudaSuccess || !g || cudaGraphInstantiate(&x, g, 0) != cudaSuccess) {
      std::fprintf(stderr, "graph timing: capture failed (%s)\n", cudaGetErrorString(e != cudaSuccess ? e : cudaGetLastError()));
      cudaGetLastError();
      if (g) cudaGraphDestroy(g);
      for (cudaGraphExec_t y : execs) cudaGraphExecDestroy(y);
      return -1;
    }
    cudaGraphDestroy(g);
    execs.push_back(x);
  }
  cudaEvent_t a, b;
  chk(cudaEventCreate(&a), "event");
  chk(cudaEventCreate(&b), "event");
  for (cudaGraphExec_t x : execs) chk(cudaGraphLaunch(x, cudaStreamPerThread), "graph launch");  // warm-up
  chk(cudaStreamSynchronize(cudaStreamPerThread), "graph warm-up");
  std::vector<float> ts;
  for (int round = 0; round < rounds; ++round) {
    chk(cudaEventRecord(a, cudaStreamPerThread), "event");
    for (int r = 0; r < reps; ++r) chk(cudaGraphLaunch(execs[size_t(r) % execs.size()], cudaStreamPerThread), "graph launch");
    chk(cudaEventRecord(b, cudaStreamPerThread), "event");
    chk(cudaEventSynchronize(b), "timed graphs");
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms / float(reps));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  for (cudaGraphExec_t x : execs) cudaGraphExecDestroy(x);
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

}  // namespace dsa::bench

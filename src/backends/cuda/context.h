#pragma once
// CudaContext: one per device and CudaBackend. It holds what the kernels' host launchers need to know
// and would otherwise cache in process-wide statics (docs/cuda-context.md):
//  - the device index and its properties (compute capability, SMs, shared memory per block, L2, memory);
//  - the probes run once at construction, outside any graph capture: whether the sm_90a SASS runs (and not
//    the compute_80 PTX, e.g. under CUDA_FORCE_PTX_JIT=1), the largest top-k cluster, whether the sm_90a
//    indexer / MLA kernels get their shared memory, the indexer kernels' occupancies;
//  - the kernel configuration (KernelConfig: defaults <- DSA_CUDA_* environment <- explicit setters);
//  - per-device kernel state: the dynamic shared-memory limits already raised (cudaFuncSetAttribute is
//    per device), the top-k's cluster-size cap and last-launch record, its trace buffer;
//  - the launch stream (the per-thread default stream: everything is built with --default-stream per-thread).
// Launchers take the context as a parameter; nothing reads the environment or a static after construction.
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/kernel_config.h"

namespace dsa::cuda {

// Device properties and probe results, fixed after construction.
struct DeviceFacts {
  int device = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sms = 1;
  size_t smem_optin = 48 * 1024;  // largest dynamic + static shared memory per block (sm_80 163 KB, sm_86/89 99 KB, sm_90 227 KB)
  size_t l2_bytes = 0;
  size_t global_mem = 0;
  // ---- probes ----
  bool sm90a_sass = false;   // the sm_90a machine code runs (a probe kernel reports its build)
  bool pdl_possible = false; // cc >= 9 and sm90a_sass: griddepcontrol exists in the running code
  int topk_cluster_max = 1;  // largest thread-block cluster of the on-chip top-k (1: no clusters)
  bool topk_mc_fits = false; // the multi-CTA top-k's final kernel fits the shared memory per block
  // Indexer: the sm_90a wgmma kernels got their shared memory and schedule (all ring depths, both query
  // counts), and CTAs per SM of the kernels whose grids follow it (-1: the attribute could not be set).
  bool indexer_sm90 = false;
  int indexer_pipe_occ[2] = {-1, -1};         // portable pipelined kernel, 1 / 2 queries per CTA
  int indexer_fp8_occ[2][4] = {{0}};          // sm_90a FP8 kernel, 1 / 2 queries, ring depth 3..6
  int indexer_fp8_hist_occ[2] = {0, 0};       // the same at the default depth with the first-histogram epilogue
  int indexer_f16_occ = 0;                    // sm_90a f16 kernel
  bool mqa_sm90 = false;     // the sm_90a MLA scores kernel got its shared memory
  // The sm_90a block-scaled FP8 GEMM (gemm/fp8_blockscaled_sm90.cu) runs here: sm_90a SASS, its shared memory
  // granted, and the driver's tensor-map encoder (cuTensorMapEncodeTiled, reached through the runtime) found.
  bool fp8_sm90 = false;
  void* tma_encode_tiled = nullptr;  // that encoder (a CUresult(*)(CUtensorMap*, ...)), or nullptr
};

// Record of the last top-k launch (tests read which kernel ran) and its per-device state.
struct TopkState {
  int last_kpt = 0, last_cluster = 0;  // keys per thread / cluster size of the on-chip kernel; 0 / 0: a global path
  bool last_hist0 = false;             // it took the score kernel's first histogram
  // Largest cluster size still tried: one that fails to launch at run time (fewer SMs than at the probe, e.g.
  // under MPS or in a green context) halves it for later calls, and the failing call takes a global path.
  int cluster_cap = 1 << 30;
  long long* trace = nullptr;  // device buffer of the on-chip kernel's phase stamps (TopkConfig::trace), lazily
};

class CudaContext {
 public:
  // Makes `device` current on the calling thread, reads its properties, runs the probes. The configuration comes
  // from the process environment (KernelConfig::from_process_env: a bad DSA_CUDA_* value throws) or is given.
  explicit CudaContext(int device);
  CudaContext(int device, const KernelConfig& config);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return facts_.device; }
  const DeviceFacts& facts() const { return facts_; }
  // The live configuration: launchers read it at every call, tests and tools write it.
  KernelConfig& config() { return config_; }
  const KernelConfig& config() const { return config_; }
  // As resolved at construction (defaults + environment): what tests and benches restore.
  const KernelConfig& initial_config() const { return initial_; }
  cudaStream_t stream() const { return cudaStreamPerThread; }
  // cudaSetDevice(device()) on the calling thread (the constructor does it for the constructing thread).
  void make_current() const;

  // ---- effective switches: the configuration where the device allows it ----
  bool pdl() const { return config_.pdl && facts_.pdl_possible; }
  bool indexer_sm90() const { return config_.indexer.wgmma && facts_.indexer_sm90; }
  // The sm_90a indexer path also takes token pairs of one sequence (the FP8 kernel does, the f16 one not).
  bool indexer_sm90_pairs() const { return indexer_sm90() && config_.indexer.sm90_fp8_stages > 0; }
  bool mqa_sm90() const { return config_.mqa.wgmma && facts_.mqa_sm90; }

  // Raise fn's dynamic shared-memory limit to `bytes` on this device, once per (kernel, bytes); throws with
  // the CUDA error when the device refuses. try_: false instead of throwing.
  void smem_attr(const void* fn, size_t bytes) const;
  bool try_smem_attr(const void* fn, size_t bytes) const;
  template <class... A>
  void smem_attr(void (*fn)(A...), size_t bytes) const { smem_attr(reinterpret_cast<const void*>(fn), bytes); }
  template <class... A>
  bool try_smem_attr(void (*fn)(A...), size_t bytes) const { return try_smem_attr(reinterpret_cast<const void*>(fn), bytes); }

  TopkState& topk_state() { return topk_; }
  const TopkState& topk_state() const { return topk_; }

  // Start-up description, one line per group, each ending in '\n': the device and its probes, then the
  // configuration with the kernels it selects on this device (KernelConfig::describe's groups).
  std::string describe() const;

 private:
  void init(int device);
  DeviceFacts facts_;
  KernelConfig config_, initial_;
  TopkState topk_;
  mutable std::mutex mu_;
  mutable std::map<const void*, size_t> smem_set_;  // kernels whose dynamic shared-memory limit was raised
};

// ---- probes, run by the CudaContext constructor (implemented next to their kernels) ----
bool probe_sm90a_sass();                     // indexer/scores_sm90.cu (a launch + a synchronous copy)
void probe_topk(CudaContext& ctx, DeviceFacts& f);     // topk/topk.cu: cluster sizes, multi-CTA fit
void probe_indexer(CudaContext& ctx, DeviceFacts& f);  // indexer/indexer.cu + scores_sm90.cu: occupancies
void probe_indexer_sm90(CudaContext& ctx, DeviceFacts& f);  // indexer/scores_sm90.cu
void probe_mqa(CudaContext& ctx, DeviceFacts& f);      // mla/decode_sm90.cu
void probe_fp8_sm90(CudaContext& ctx, DeviceFacts& f); // gemm/fp8_blockscaled_sm90.cu

}  // namespace dsa::cuda

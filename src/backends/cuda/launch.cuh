#pragma once
// Kernel launches with programmatic dependent launch (PDL, sm_90+) for the decode attention chain,
// on by default where the sm_90a SASS runs (CudaContext::pdl(): KernelConfig::pdl, DSA_CUDA_PDL=0: plain
// launches).
//
// Why: at batch 1 a layer's attention is a chain of small dependent kernels (indexer scores -> top-k ->
// MLA scores -> P.V -> split sum), each a wave or less, and between two of them the GPU waits for the
// next grid's launch. With PDL the next grid is launched while the previous one still runs; its CTAs
// first execute griddepcontrol.wait (pdl_wait(), the first statement of every kernel launched through
// launch_chained), which returns once the previous grid has completed and its memory is visible — so
// every kernel sees exactly what plain stream order gives it (transitively: each grid completes only
// after its own wait). Without the attribute griddepcontrol.wait returns at once.
// Measured (H200, session 4, bench/RESULTS.md): the b=1 chain at 128K 65.4 -> 61.6 us; the decode tests
// give the same bytes with and without it (GpuMla/GpuIndexer.ChainedLaunchesMatchPlainBitForBit), and
// gpu_check runs the decode tests once more with DSA_CUDA_PDL=0.
#include <cuda_runtime.h>

#include <utility>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/context.h"

namespace dsa::cuda {

#if defined(__CUDACC__)
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// The next grid of the stream may launch now (it still waits in pdl_wait for this one to complete).
__device__ __forceinline__ void pdl_launch_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem>>>(args...) on the launch stream, with the PDL attribute when ctx.pdl() and a
// thread-block cluster of cluster_x CTAs when cluster_x > 1; returns the launch's error. The kernel must
// call pdl_wait() before it reads anything the previous kernel writes (most start with it). Work before
// it may read only what kernels before the previous one wrote, and only if the previous kernel calls
// pdl_launch_next() after its own pdl_wait() (then every earlier kernel has completed when this grid
// starts): the MLA P.V kernel (mla/decode.cu) gathers its first tiles that way while the scores kernel runs.
template <class... KArgs, class... Args>
cudaError_t try_launch_chained(const CudaContext& ctx, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                               unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = 0;  // the per-thread default stream (built with --default-stream per-thread), as <<<>>>
  cudaLaunchAttribute at[2]{};
  unsigned n = 0;
  if (cluster_x > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = cluster_x;
    at[n].val.clusterDim.y = at[n].val.clusterDim.z = 1;
    ++n;
  }
  if (ctx.pdl()) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = at;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
// The same; a failed launch raises a dsa::Error.
template <class... KArgs, class... Args>
void launch_chained(const CudaContext& ctx, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                    unsigned cluster_x, Args&&... args) {
  DSA_CUDA_CHECK(try_launch_chained(ctx, kernel, grid, block, smem, cluster_x, std::forward<Args>(args)...));
}
#endif

}  // namespace dsa::cuda

#pragma once
#include <cstdint>
#include <vector>

#include "backends/cuda/context.h"
// Top-k path selection: TopkConfig (kernel_config.h) in CudaContext::config().topk; which kernel the last launch
// took: CudaContext::topk_state(). Host-only header, for tests and benchmarks. See topk.cu.
namespace dsa::cuda {

// The on-chip kernel's phase stamps of its last traced launch on this context (ns of %globaltimer; 0 where a
// phase did not run), then cleared: 0 entry, 1 after the wait for the score kernel, 2 keys loaded, 3 after pass
// 0, 4 after pass 1, 5 threshold known, 6 compaction counts scanned, 7 written, 8 exit; entry 9 (not a time): 1
// when the last digit was resolved by the candidate exchange, 2 by a third histogram pass, 0 when settled before.
constexpr int kTopkTraceStamps = 10;
std::vector<long long> topk_trace_read(CudaContext& ctx);

}  // namespace dsa::cuda

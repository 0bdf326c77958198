// CudaContext: device properties, the one-time probes, the kernel configuration, per-device kernel state.
#include "backends/cuda/context.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "backends/cuda/common.cuh"

namespace dsa::cuda {

CudaContext::CudaContext(int device) : config_(KernelConfig::from_process_env()), initial_(config_) { init(device); }

CudaContext::CudaContext(int device, const KernelConfig& config) : config_(config), initial_(config) {
  config_.validate();
  init(device);
}

void CudaContext::init(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    fail("device 'cuda': no CUDA GPU is available on this machine");
  }
  DSA_CHECK(device >= 0 && device < n, "device 'cuda:", device, "': this machine has ", n, " CUDA GPU",
            n == 1 ? "" : "s", " (cuda:0", n > 1 ? concat("..cuda:", n - 1) : std::string(), ")");
  DSA_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  DSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DSA_CHECK(prop.major >= 8, "device 'cuda': ", prop.name, " is sm_", prop.major, prop.minor,
            "; the CUDA backend needs sm_80 or newer");
  DeviceFacts& f = facts_;
  f.device = device;
  f.name = prop.name;
  f.cc_major = prop.major;
  f.cc_minor = prop.minor;
  f.sms = std::max(prop.multiProcessorCount, 1);
  f.smem_optin = prop.sharedMemPerBlockOptin > 0 ? prop.sharedMemPerBlockOptin : 48 * 1024;
  f.l2_bytes = size_t(prop.l2CacheSize);
  f.global_mem = prop.totalGlobalMem;
  // One-time probes with synchronous copies happen here, never inside a decode step (graph capture).
  f.sm90a_sass = f.cc_major >= 9 && probe_sm90a_sass();
  // PDL only where the sm_90a machine code runs: kernels JIT-compiled from the compute_80 PTX (sm_100/120 with
  // the default build, or CUDA_FORCE_PTX_JIT=1) have no griddepcontrol instructions, so a PDL launch would let
  // them start before their predecessor's writes are guaranteed visible.
  f.pdl_possible = f.cc_major >= 9 && f.sm90a_sass;
  probe_topk(*this, f);
  probe_indexer(*this, f);
  probe_mqa(*this, f);
  probe_fp8_sm90(*this, f);
}

CudaContext::~CudaContext() {
  if (topk_.trace) {
    cudaSetDevice(facts_.device);
    cudaFree(topk_.trace);
  }
}

void CudaContext::make_current() const { DSA_CUDA_CHECK(cudaSetDevice(facts_.device)); }

bool CudaContext::try_smem_attr(const void* fn, size_t bytes) const {
  std::lock_guard<std::mutex> g(mu_);
  auto it = smem_set_.find(fn);
  if (it != smem_set_.end() && it->second == bytes) return true;
  if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  smem_set_[fn] = bytes;
  return true;
}

void CudaContext::smem_attr(const void* fn, size_t bytes) const {
  std::lock_guard<std::mutex> g(mu_);
  auto it = smem_set_.find(fn);
  if (it != smem_set_.end() && it->second == bytes) return;
  DSA_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  smem_set_[fn] = bytes;
}

namespace {
std::string onoff(bool b) { return b ? "on" : "off"; }
// " (<why>)" where the device overrides a switch that is on.
std::string unless(bool requested, bool effective, const std::string& why) {
  return requested && !effective ? " (" + why + ")" : std::string();
}
}  // namespace

std::string CudaContext::describe() const {
  const DeviceFacts& f = facts_;
  const KernelConfig& c = config_;
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "cuda:%d %s, sm_%d%d, %d SMs, %zu KB shared memory per block, %.0f MB L2, %.1f GiB",
                f.device, f.name.c_str(), f.cc_major, f.cc_minor, f.sms, f.smem_optin / 1024,
                double(f.l2_bytes) / (1024.0 * 1024.0), double(f.global_mem) / (1024.0 * 1024.0 * 1024.0));
  os << "device: " << buf << "\n";
  os << "probes: sm_90a SASS " << (f.sm90a_sass ? "runs" : "does not run") << ", top-k clusters up to "
     << f.topk_cluster_max << ", multi-CTA top-k " << (f.topk_mc_fits ? "fits" : "does not fit") << ", indexer wgmma "
     << (f.indexer_sm90 ? "ok" : "unavailable") << ", MLA wgmma " << (f.mqa_sm90 ? "ok" : "unavailable")
     << ", FP8 block-scaled wgmma " << (f.fp8_sm90 ? "ok" : "unavailable") << "\n";
  const std::string no_sass = "needs the sm_90a SASS";
  os << "launch: pdl " << onoff(pdl()) << unless(c.pdl, pdl(), "PDL " + no_sass) << ", graphs " << onoff(c.graphs) << "\n";
  os << "gemm: fp8 " << fp8_path_name(c.fp8_gemm) << "\n";
  std::string idx;
  if (c.indexer.exact) idx = "exact CUDA-core kernel";
  else if (indexer_sm90())
    idx = c.indexer.sm90_fp8_stages ? "sm_90a FP8 wgmma (ring " + std::to_string(c.indexer.sm90_fp8_stages) + ")"
                                    : std::string("sm_90a f16 wgmma");
  else idx = std::string("portable mma.sync, ") + (c.indexer.fp8 ? "e4m3" : "f16") + " operands" +
             unless(c.indexer.wgmma, false, f.sm90a_sass ? "wgmma kernels: shared memory not granted" : "wgmma " + no_sass);
  os << "indexer: " << idx << " (heads <= 64), score tile " << c.indexer.score_tile_floats << " floats\n";
  os << "top-k: on-chip " << onoff(c.topk.onchip) << " (keys/thread "
     << (c.topk.force_kpt ? std::to_string(c.topk.force_kpt) : std::string("auto")) << "), first histogram "
     << (c.topk.hist0 < 0 ? std::string("auto") : onoff(c.topk.hist0 == 1)) << ", candidate exchange "
     << onoff(c.topk.cand_final) << ", lane histogram " << onoff(c.topk.lane_histogram)
     << (c.topk.trace ? ", trace on" : "") << "\n";
  static const char* const kPaths[] = {"auto", "stored scores", "two-pass", "CUDA cores"};
  os << "mla decode: path " << (c.mqa.simple ? "CUDA cores (simple)" : kPaths[c.mqa.path & 3]) << ", splits "
     << (c.mqa.force_splits ? std::to_string(c.mqa.force_splits) : std::string("auto")) << ", scores kernel "
     << (mqa_sm90() ? "sm_90a wgmma" : "mma.sync") << unless(c.mqa.wgmma, mqa_sm90(), f.sm90a_sass ? "wgmma kernel: shared memory not granted" : "wgmma " + no_sass)
     << (c.mqa.scores_only ? ", scores only" : "") << "\n";
  return os.str();
}

}  // namespace dsa::cuda

#pragma once
// The CUDA backend's kernel configuration: every switch and tunable of its launchers in one struct,
// resolved once — defaults, then the DSA_CUDA_* environment variables, then explicit setters (CLI,
// tests, benchmarks write the fields of CudaContext::config()). docs/cuda-context.md lists the fields.
//
// Host-only and CUDA-free: compiled into every build (the CPU tests check the parsing).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dsa::cuda {

// Which kernel launch_linear_fp8{,_grouped} use (gemm/fp8_gemm.cu). Auto: the GEMV kernel for at most 16
// rows (per expert when grouped), the tensor-core kernel above with the row tile chosen by shape. The others
// force one (tests, benchmarks); Mma64/Mma32 force the tensor-core kernel with 64- / 32-row tiles.
enum class Fp8Path : int { Auto = 0, Mma = 1, Gemv = 2, Mma64 = 3, Mma32 = 4 };
// Short label for tables, test traces and DSA_CUDA_FP8_GEMM ("auto", "mma128", "mma64", "mma32", "gemv").
const char* fp8_path_name(Fp8Path p);

// Lightning indexer scores (indexer/indexer.cu, indexer/scores_sm90.cu).
struct IndexerConfig {
  bool exact = false;  // DSA_CUDA_INDEXER_EXACT=1: CUDA-core kernel in the CPU's summation order (reference)
  bool fp8 = false;    // DSA_CUDA_INDEXER_FP8=1: e4m3 operands in the portable mma.sync kernel (default f16)
  bool wgmma = true;   // DSA_CUDA_INDEXER_WGMMA=0: the portable kernel even where the sm_90a wgmma kernels run
  // The sm_90a kernel: 0 = f16 wgmma (exact products; DSA_CUDA_INDEXER_WGMMA_FP8=0), 3..6 = the FP8 wgmma kernel
  // with that cp.async ring depth (benchmarks sweep it; 4 is the measured best and the default).
  int sm90_fp8_stages = 4;
  int64_t score_tile_floats = int64_t(64) << 20;  // indexer_topk's score tile: 256 MiB of fp32 at most
};

// Top-k selection (topk/topk.cu).
constexpr int64_t kTopkHist0AutoRows = 4, kTopkHist0AutoMinLength = 65536;
struct TopkConfig {
  // On-chip path (whole row in registers: one CTA for rows <= 16K keys, a thread-block cluster of up to 16
  // CTAs on sm_90 for rows <= 256K). DSA_CUDA_TOPK_ONCHIP=0: the multi-CTA / one-CTA global-memory paths.
  bool onchip = true;
  int force_kpt = 0;  // keys per thread of the on-chip path (4, 8, 16); 0: automatic
  // Digits 8/12/12 with a per-lane first histogram (no same-address atomics within a warp) instead of 11/11/10
  // with plain shared atomics. Slower on the bench's indexer scores (H200: 128K b=1 31.6 vs 27.5 us); kept to
  // re-measure on scores concentrated in a few exponent bins.
  bool lane_histogram = false;
  // First radix digit's histogram built by the indexer's FP8 score kernel in its epilogue (indexer_topk on
  // sm_90a; the on-chip top-k then skips its first pass). DSA_CUDA_TOPK_SCORE_HIST: 0 off, 1 on, auto (-1, the
  // default): on for at most kTopkHist0AutoRows rows per launch of rows of at least kTopkHist0AutoMinLength keys.
  // Measured on the H200 (sessions 4-5, bench/results/2026-11-29-h200-*-kernels.md, rows "indexer + top-k, 1st
  // hist. in ..."): b=1 0.5-3.6 us faster at 64K and 128K, a wash or up to 2 us slower at 4K-32K; b=32 0-1.6 us
  // slower (the epilogue's atomics cost more than the pass they save once many rows share the GPU).
  int hist0 = -1;
  // Last radix digit of cluster rows by exchanging the candidates when at most 1024 share the threshold bin after
  // the second pass (topk.cu, onchip_candidate_threshold). DSA_CUDA_TOPK_CAND_FINAL=0: a third histogram pass.
  bool cand_final = true;
  // Profiling aid: the on-chip kernel's first CTA records %globaltimer at its phase boundaries (topk_trace_read).
  bool trace = false;
  // hist0 resolved for a launch of `rows` rows of `ld` keys.
  bool hist0_for(int64_t rows, int64_t ld) const {
    return hist0 == 1 || (hist0 < 0 && rows <= kTopkHist0AutoRows && ld >= kTopkHist0AutoMinLength);
  }
};

// MLA decode, absorbed MQA form (mla/mla.cu, mla/decode.cu, mla/decode_sm90.cu).
struct MqaConfig {
  // DSA_CUDA_MQA_PATH: 0 automatic (= 1 where it fits); 1 stored-scores kernels (scores + P.V); 2 the two-pass
  // recompute kernel (mma.sync, scores never stored); 3 the CUDA-core kernel. Kernels that need more shared
  // memory than the GPU has fall back 1 -> 2 -> 3.
  int path = 0;
  bool simple = false;     // DSA_CUDA_MQA_SIMPLE=1: the CUDA-core kernel whatever `path` says
  int force_splits = 0;    // DSA_CUDA_MQA_SPLITS: candidate splits per (token, head group); 0: automatic
  // Hopper: the wgmma scores kernel (decode_sm90.cu) where the sm_90a SASS runs; DSA_CUDA_MQA_WGMMA=0: the
  // portable mma.sync scores kernel everywhere (kernel B is shared).
  bool wgmma = true;
  bool scores_only = false;  // profiling (DSA_CUDA_MQA_SCORES_ONLY=1): run the scores kernel only (output unwritten)
  int64_t max_scratch = int64_t(512) << 20;  // bytes of bf16 scores per launch; more tokens go in chunks
};

struct KernelConfig {
  // DSA_CUDA_PDL=0: plain launches for the decode attention chain. On (the default) where the device can
  // (sm_90+ running the sm_90a SASS): programmatic dependent launch (launch.cuh).
  bool pdl = true;
  // Decode steps captured once per key and replayed as CUDA graphs (docs/decode-graphs.md); DSA_CUDA_GRAPHS=0:
  // eager launches. On by default: 2.1x faster steps at dsa-mini batch 1, equal at real scale batch 128 (H100).
  bool graphs = true;
  Fp8Path fp8_gemm = Fp8Path::Auto;  // DSA_CUDA_FP8_GEMM=auto|mma128|mma64|mma32|gemv
  // DSA_CUDA_FP8_WGMMA=0: fast numerics' FP8 linears skip the sm_90a block-scaled wgmma GEMM
  // (gemm/fp8_blockscaled_sm90.cu) and take the next path (cuBLASLt block-scaled, else mma.sync).
  bool fp8_wgmma = true;
  IndexerConfig indexer;
  TopkConfig topk;
  MqaConfig mqa;

  // Defaults, then the DSA_CUDA_* variables of `env` (name -> value; empty values count as unset). A bad value
  // or an unknown DSA_CUDA_* name throws a dsa::Error naming the variable and the values it takes.
  static KernelConfig from_env(const std::map<std::string, std::string>& env);
  // The same over the process environment (every DSA_CUDA_* variable of environ).
  static KernelConfig from_process_env();
  // Throws a dsa::Error naming the field when a value is outside its range (setters bypass the parser).
  void validate() const;
  // One line per group ("launch: ...", "gemm: ...", "indexer: ...", "top-k: ...", "mla decode: ..."), each
  // ending in '\n'.
  std::string describe() const;
};

// The environment variables from_env reads: name, the values it takes, what it selects.
struct KernelEnvVar {
  const char* name;
  const char* values;
  const char* meaning;
};
const std::vector<KernelEnvVar>& kernel_env_vars();

}  // namespace dsa::cuda

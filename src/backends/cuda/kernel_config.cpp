// KernelConfig: defaults, the DSA_CUDA_* environment variables (strict: a bad value or an unknown name is
// an error naming the variable and what it takes), range checks, the start-up description.
#include "backends/cuda/kernel_config.h"

#include <unistd.h>  // environ

#include <cstring>
#include <sstream>

#include "core/error.h"

extern char** environ;

namespace dsa::cuda {

const char* fp8_path_name(Fp8Path p) {
  switch (p) {
    case Fp8Path::Auto: return "auto";
    case Fp8Path::Mma: return "mma128";
    case Fp8Path::Mma64: return "mma64";
    case Fp8Path::Mma32: return "mma32";
    default: return "gemv";
  }
}

const std::vector<KernelEnvVar>& kernel_env_vars() {
  static const std::vector<KernelEnvVar> vars = {
      {"DSA_CUDA_PDL", "0 or 1 (default 1)",
       "programmatic dependent launch for the decode attention chain (where the sm_90a SASS runs)"},
      {"DSA_CUDA_GRAPHS", "0 or 1 (default 1)", "decode steps captured once per key and replayed as CUDA graphs"},
      {"DSA_CUDA_FP8_GEMM", "auto, mma128, mma64, mma32 or gemv (default auto)", "FP8 block-scaled GEMM kernel"},
      {"DSA_CUDA_FP8_WGMMA", "0 or 1 (default 1)",
       "fast numerics: the sm_90a block-scaled FP8 wgmma GEMM where it runs (0: the next path)"},
      {"DSA_CUDA_INDEXER_EXACT", "0 or 1 (default 0)", "indexer scores on CUDA cores in the CPU's summation order"},
      {"DSA_CUDA_INDEXER_FP8", "0 or 1 (default 0)", "e4m3 operands in the portable mma.sync indexer kernel"},
      {"DSA_CUDA_INDEXER_WGMMA", "0 or 1 (default 1)", "sm_90a wgmma indexer kernels where they run (0: portable)"},
      {"DSA_CUDA_INDEXER_WGMMA_FP8", "0 or 1 (default 1)", "sm_90a indexer: FP8 wgmma kernel (0: exact f16 wgmma)"},
      {"DSA_CUDA_TOPK_ONCHIP", "0 or 1 (default 1)", "on-chip top-k (0: the global-memory paths)"},
      {"DSA_CUDA_TOPK_SCORE_HIST", "0, 1 or auto (default auto)",
       "first top-k histogram built by the FP8 indexer score kernel"},
      {"DSA_CUDA_TOPK_CAND_FINAL", "0 or 1 (default 1)",
       "last top-k digit by the candidate exchange (0: a third radix pass)"},
      {"DSA_CUDA_MQA_PATH", "0, 1, 2 or 3 (default 0)",
       "MLA decode: 0 automatic, 1 stored scores, 2 two-pass mma.sync, 3 CUDA cores"},
      {"DSA_CUDA_MQA_SIMPLE", "0 or 1 (default 0)", "MLA decode on the CUDA-core kernel whatever the path"},
      {"DSA_CUDA_MQA_SPLITS", "an integer in [0, 65535] (default 0: automatic)", "MLA decode candidate splits"},
      {"DSA_CUDA_MQA_WGMMA", "0 or 1 (default 1)", "MLA decode: sm_90a wgmma scores kernel where it runs"},
      {"DSA_CUDA_MQA_SCORES_ONLY", "0 or 1 (default 0)", "MLA decode: scores kernel only (profiling; no output)"},
  };
  return vars;
}

namespace {

using Env = std::map<std::string, std::string>;

const char* values_of(const char* name) {
  for (const KernelEnvVar& v : kernel_env_vars())
    if (std::strcmp(v.name, name) == 0) return v.values;
  return "?";
}

[[noreturn]] void bad_value(const char* name, const std::string& v) {
  fail("environment variable ", name, "='", v, "': expected ", values_of(name));
}

// The value of `name`, or nullptr when unset or empty.
const std::string* lookup(const Env& env, const char* name) {
  auto it = env.find(name);
  return it == env.end() || it->second.empty() ? nullptr : &it->second;
}

void read_bool(const Env& env, const char* name, bool& out) {
  const std::string* v = lookup(env, name);
  if (!v) return;
  if (*v == "0") out = false;
  else if (*v == "1") out = true;
  else bad_value(name, *v);
}

void read_int(const Env& env, const char* name, int lo, int hi, int& out) {
  const std::string* v = lookup(env, name);
  if (!v) return;
  const std::string& s = *v;
  long long x = 0;
  bool ok = !s.empty() && s.size() <= 9;
  for (char c : s) {
    if (c < '0' || c > '9') {
      ok = false;
      break;
    }
    x = x * 10 + (c - '0');
  }
  if (!ok || x < lo || x > hi) bad_value(name, s);
  out = int(x);
}

std::string onoff(bool b) { return b ? "on" : "off"; }

}  // namespace

KernelConfig KernelConfig::from_env(const Env& env) {
  for (const auto& [name, value] : env) {
    if (name.rfind("DSA_CUDA_", 0) != 0) continue;
    bool known = false;
    for (const KernelEnvVar& v : kernel_env_vars()) known |= name == v.name;
    if (!known) {
      std::string all;
      for (const KernelEnvVar& v : kernel_env_vars()) all += std::string(all.empty() ? "" : ", ") + v.name;
      fail("unknown environment variable ", name, " (the CUDA backend reads ", all, "; docs/cuda-context.md)");
    }
  }
  KernelConfig c;
  read_bool(env, "DSA_CUDA_PDL", c.pdl);
  read_bool(env, "DSA_CUDA_GRAPHS", c.graphs);
  if (const std::string* v = lookup(env, "DSA_CUDA_FP8_GEMM")) {
    bool found = false;
    for (Fp8Path p : {Fp8Path::Auto, Fp8Path::Mma, Fp8Path::Mma64, Fp8Path::Mma32, Fp8Path::Gemv})
      if (*v == fp8_path_name(p)) c.fp8_gemm = p, found = true;
    if (!found) bad_value("DSA_CUDA_FP8_GEMM", *v);
  }
  read_bool(env, "DSA_CUDA_FP8_WGMMA", c.fp8_wgmma);
  read_bool(env, "DSA_CUDA_INDEXER_EXACT", c.indexer.exact);
  read_bool(env, "DSA_CUDA_INDEXER_FP8", c.indexer.fp8);
  read_bool(env, "DSA_CUDA_INDEXER_WGMMA", c.indexer.wgmma);
  {
    bool fp8 = true;
    read_bool(env, "DSA_CUDA_INDEXER_WGMMA_FP8", fp8);
    c.indexer.sm90_fp8_stages = fp8 ? IndexerConfig{}.sm90_fp8_stages : 0;
  }
  read_bool(env, "DSA_CUDA_TOPK_ONCHIP", c.topk.onchip);
  if (const std::string* v = lookup(env, "DSA_CUDA_TOPK_SCORE_HIST")) {
    if (*v == "0") c.topk.hist0 = 0;
    else if (*v == "1") c.topk.hist0 = 1;
    else if (*v == "auto") c.topk.hist0 = -1;
    else bad_value("DSA_CUDA_TOPK_SCORE_HIST", *v);
  }
  read_bool(env, "DSA_CUDA_TOPK_CAND_FINAL", c.topk.cand_final);
  read_int(env, "DSA_CUDA_MQA_PATH", 0, 3, c.mqa.path);
  read_bool(env, "DSA_CUDA_MQA_SIMPLE", c.mqa.simple);
  read_int(env, "DSA_CUDA_MQA_SPLITS", 0, 65535, c.mqa.force_splits);
  read_bool(env, "DSA_CUDA_MQA_WGMMA", c.mqa.wgmma);
  read_bool(env, "DSA_CUDA_MQA_SCORES_ONLY", c.mqa.scores_only);
  c.validate();
  return c;
}

KernelConfig KernelConfig::from_process_env() {
  Env env;
  for (char** e = environ; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (!eq || std::strncmp(*e, "DSA_CUDA_", 9) != 0) continue;
    env.emplace(std::string(*e, size_t(eq - *e)), std::string(eq + 1));
  }
  return from_env(env);
}

void KernelConfig::validate() const {
  const int fp = int(fp8_gemm);
  DSA_CHECK(fp >= 0 && fp <= 4, "kernel config: fp8_gemm ", fp, " is not a path (0..4)");
  const int st = indexer.sm90_fp8_stages;
  DSA_CHECK(st == 0 || (st >= 3 && st <= 6), "kernel config: indexer.sm90_fp8_stages ", st,
            ": expected 0 (f16 wgmma kernel) or a ring depth 3..6");
  DSA_CHECK(indexer.score_tile_floats >= 1, "kernel config: indexer.score_tile_floats ", indexer.score_tile_floats,
            " must be positive");
  DSA_CHECK(topk.force_kpt == 0 || topk.force_kpt == 4 || topk.force_kpt == 8 || topk.force_kpt == 16,
            "kernel config: topk.force_kpt ", topk.force_kpt, ": expected 0 (automatic), 4, 8 or 16");
  DSA_CHECK(topk.hist0 >= -1 && topk.hist0 <= 1, "kernel config: topk.hist0 ", topk.hist0,
            ": expected -1 (auto), 0 or 1");
  DSA_CHECK(mqa.path >= 0 && mqa.path <= 3, "kernel config: mqa.path ", mqa.path, ": expected 0..3");
  DSA_CHECK(mqa.force_splits >= 0 && mqa.force_splits <= 65535, "kernel config: mqa.force_splits ", mqa.force_splits,
            ": expected 0..65535");
  DSA_CHECK(mqa.max_scratch >= 1, "kernel config: mqa.max_scratch ", mqa.max_scratch, " must be positive");
}

std::string KernelConfig::describe() const {
  std::ostringstream os;
  os << "launch: pdl " << onoff(pdl) << ", graphs " << onoff(graphs) << "\n";
  os << "gemm: fp8 " << fp8_path_name(fp8_gemm) << ", fast-numerics wgmma " << onoff(fp8_wgmma) << "\n";
  os << "indexer: wgmma " << onoff(indexer.wgmma) << " ("
     << (indexer.sm90_fp8_stages ? "fp8, ring " + std::to_string(indexer.sm90_fp8_stages) : std::string("f16"))
     << "), portable operands " << (indexer.fp8 ? "e4m3" : "f16") << ", exact " << onoff(indexer.exact)
     << ", score tile " << indexer.score_tile_floats << " floats\n";
  os << "top-k: on-chip " << onoff(topk.onchip) << " (keys/thread "
     << (topk.force_kpt ? std::to_string(topk.force_kpt) : std::string("auto")) << "), first histogram "
     << (topk.hist0 < 0 ? std::string("auto") : onoff(topk.hist0 == 1)) << ", candidate exchange "
     << onoff(topk.cand_final) << ", lane histogram " << onoff(topk.lane_histogram)
     << (topk.trace ? ", trace on" : "") << "\n";
  static const char* const kPaths[] = {"auto", "stored scores", "two-pass", "CUDA cores"};
  os << "mla decode: path " << (mqa.simple ? "CUDA cores (simple)" : kPaths[mqa.path & 3]) << ", splits "
     << (mqa.force_splits ? std::to_string(mqa.force_splits) : std::string("auto")) << ", wgmma scores "
     << onoff(mqa.wgmma) << (mqa.scores_only ? ", scores only" : "") << "\n";
  return os.str();
}

}  // namespace dsa::cuda

// dsa_gpu_gemm_bench: the FP8 block-scaled GEMM (gemm/fp8_gemm.cu) on the real DeepSeek-V3.2 shapes,
// plain and grouped (MoE, 256 experts, top-8), and the fp32 lm_head GEMV. CUDA events, median of
// several calls after a warm-up; weights rotate among copies when one copy would sit in L2.
// TFLOP/s = 2MNK / t; GB/s = (weights + activations + scales + output) / t; "roof" is the share of
// the binding roofline (H200: copy 4.2 TB/s, FP8 1300 TFLOP/s measured with cuBLAS):
// max(bytes / 4.2 TB/s, flop / 1300 TFLOP/s) / t.
// Rows per shape and M > 16: our reference kernel (auto / mma128 / mma64 / mma32), `wgmma-bs` (the sm_90a
// block-scaled wgmma GEMM of fast numerics, gemm/fp8_blockscaled_sm90.cu), cuBLASLt's block-scaled FP8 (lt-blk,
// where it has an algorithm) and plain FP8 (lt-fp8, the peer); a closing table gives wgmma-bs as % of lt-fp8.
// Usage: dsa_gpu_gemm_bench [--quick] [--md FILE] [--cost-csv FILE]
//   --cost-csv: append `dsa cost`'s position-independent rows (runtime/cost_model.h): one V3.2 MoE layer's
//   linears per token, from the fastest path measured per shape at 128 rows (decode) and 4096 (prefill).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "bench_util.h"
#include "backends/cuda/gemm/blas_lt.h"
#include "backends/cuda/gemm/fp8_blockscaled_sm90.h"
#include "backends/cuda/gemm/fp8_gemm.h"

using namespace dsa;

namespace {

using dsa::bench::chk;
using dsa::bench::kCopyTBs;
using dsa::bench::kFp8TF;

__global__ void fill_codes(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    uint8_t c = uint8_t(x);
    if ((c & 0x7f) == 0x7f) c = 0x3f;  // no NaN
    p[i] = c;
  }
}
__global__ void fill_f32(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) p[i] = v;
}
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = uint16_t(0x3c00 + (x & 0x3ff)) ^ uint16_t((x >> 16) & 0x8000);
  }
}

template <typename T> T* dalloc(size_t n) {
  void* p = nullptr;
  chk(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

// Two warm-up calls, at most `reps` timed ones within 1.5 s.
double time_ms(const std::function<void(int)>& fn, int reps) { return dsa::bench::time_ms(fn, reps, 2, 1500); }

std::vector<std::string> md;
std::map<std::pair<std::string, int64_t>, double> best_ms;  // (shape, M) -> fastest path (--cost-csv)
// (shape, M) -> wgmma-bs and lt-fp8 times (the closing comparison), in the order measured
std::vector<std::pair<std::string, int64_t>> cmp_order;
std::map<std::pair<std::string, int64_t>, std::pair<double, double>> cmp_ms;
FILE* md_out = nullptr;  // --md: written line by line (a killed run keeps what it measured)
void report(const std::string& what, const std::string& path, int64_t M, int64_t N, int64_t K, double ms, double flop,
            double bytes) {
  auto [it, fresh] = best_ms.try_emplace({what, M}, ms);
  if (!fresh) it->second = std::min(it->second, ms);
  const double us = ms * 1e3, tf = flop / (ms * 1e-3) / 1e12, gbs = bytes / (ms * 1e-3) / 1e9;
  const double roof = std::max(bytes / (kCopyTBs * 1e12), flop / (kFp8TF * 1e12)) / (ms * 1e-3) * 100.0;
  char line[256];
  std::snprintf(line, sizeof line, "| %-14s | %-6s | %5lld | %5lld | %5lld | %9.1f | %7.1f | %7.0f | %5.1f%% |", what.c_str(),
                path.c_str(), (long long)M, (long long)N, (long long)K, us, tf, gbs, roof);
  std::printf("%s\n", line);
  std::fflush(stdout);
  md.push_back(line);
  if (md_out) {
    std::fprintf(md_out, "%s\n", line);
    std::fflush(md_out);
  }
}


}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string md_file, cost_csv;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--md") && i + 1 < argc) md_file = argv[++i];
    else if (!std::strcmp(argv[i], "--cost-csv") && i + 1 < argc) cost_csv = argv[++i];
  }
  constexpr int64_t kCostDecodeRows = 128, kCostPrefillRows = 4096;
  if (!md_file.empty()) md_out = std::fopen(md_file.c_str(), "w");
  cuda::CudaContext ctx(0);  // device 0: its facts and the kernel configuration (the FP8 path is set per row below)
  std::fprintf(stderr, "%s", ctx.describe().c_str());
  cuda::BlasLt blas;
  int dev = 0;
  cudaDeviceProp prop{};
  chk(cudaGetDeviceProperties(&prop, dev), "props");
  std::printf("# dsa_gpu_gemm_bench on %s (%d SMs, L2 %d MiB)\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  const int reps = quick ? 5 : 9;
  const std::string hdr = "| shape          | path   |     M |     N |     K |   time us | TFLOP/s |    GB/s |  roof  |";
  const std::string sep = "|---|---|---|---|---|---|---|---|---|";
  std::printf("%s\n%s\n", hdr.c_str(), sep.c_str());
  md.push_back(hdr);
  md.push_back(sep);
  if (md_out) std::fprintf(md_out, "%s\n%s\n", hdr.c_str(), sep.c_str());

  struct Shape { const char* name; int64_t N, K; };
  const Shape shapes[] = {{"q_b", 24576, 1536},      {"q_a", 1536, 7168},      {"kv_a", 576, 7168},
                          {"o_proj", 7168, 16384},   {"wkv_b", 32768, 512},    {"idx_wq_b", 8192, 1536},
                          {"exp_gate_up", 2048, 7168}, {"exp_down", 7168, 2048}, {"ffn_gate_up", 18432, 7168},
                          {"ffn_down", 7168, 18432}};
  std::vector<int64_t> Ms = {1, 8, 64, 512, 4096, 16384};
  if (quick) Ms = {1, 8, 512, 4096};
  if (!cost_csv.empty() && std::find(Ms.begin(), Ms.end(), kCostDecodeRows) == Ms.end()) {
    Ms.push_back(kCostDecodeRows);
    std::sort(Ms.begin(), Ms.end());
  }
  // (--cost-csv: room for the grouped MoE at 4096 tokens, 8 experts each)
  const int64_t Mmax = cost_csv.empty() ? Ms.back() : std::max<int64_t>(Ms.back(), 16384);
  const size_t l2 = size_t(prop.l2CacheSize);

  // activations / output buffers sized for the largest shape
  int64_t maxK = 0, maxN = 0;
  for (const Shape& s : shapes) maxK = std::max(maxK, s.K), maxN = std::max(maxN, s.N);
  uint8_t* a = dalloc<uint8_t>(size_t(Mmax * maxK));
  float* as = dalloc<float>(size_t(Mmax * (maxK / 128)));
  uint16_t* out = dalloc<uint16_t>(size_t(Mmax * maxN));
  fill_codes<<<4096, 256>>>(a, size_t(Mmax * maxK), 7u);
  fill_f32<<<1024, 256>>>(as, size_t(Mmax * (maxK / 128)), 0.0078125f);

  for (const Shape& s : shapes) {
    const size_t wbytes = size_t(s.N * s.K);
    const int copies = int(std::clamp<size_t>((3 * l2 + wbytes - 1) / wbytes, 1, 64));
    std::vector<uint8_t*> ws_codes;
    std::vector<float*> ws_scale;
    const size_t nsc = size_t((s.N + 127) / 128 * (s.K / 128));
    for (int c = 0; c < copies; ++c) {
      ws_codes.push_back(dalloc<uint8_t>(wbytes));
      ws_scale.push_back(dalloc<float>(nsc));
      fill_codes<<<4096, 256>>>(ws_codes.back(), wbytes, 100u + c);
      fill_f32<<<256, 256>>>(ws_scale.back(), nsc, 0.0009765625f);
    }
    chk(cudaDeviceSynchronize(), "fill");
    // One block-scaled FP8 product of M rows: its FLOPs, and its bytes (weights + scales, e4m3 activations and
    // their 1x128 scales, bf16 output).
    const auto fp8_flop = [&](int64_t M) { return 2.0 * double(M) * double(s.N) * double(s.K); };
    const auto fp8_bytes = [&](int64_t M, bool scaled = true) {
      return double(wbytes) + double(M) * s.K * 1.0 + double(M) * s.N * 2.0 +
             (scaled ? double(nsc) * 4 + double(M) * (s.K / 128) * 4 : 0.0);
    };
    for (int64_t M : Ms) {
      // <= 16 rows: the GEMV (auto) and the tensor-core kernel for comparison; above: every row tile
      std::vector<cuda::Fp8Path> paths = {cuda::Fp8Path::Auto, cuda::Fp8Path::Mma32};
      if (M > 16) paths = {cuda::Fp8Path::Mma, cuda::Fp8Path::Mma64, cuda::Fp8Path::Mma32};
      if (M > 16 && quick) paths = {cuda::Fp8Path::Auto};
      for (cuda::Fp8Path path : paths) {
        ctx.config().fp8_gemm = path;
        const double ms = time_ms(
            [&](int r) {
              const int c = r % copies;
              cuda::launch_linear_fp8(ctx, {a, as, M, s.K, ws_codes[size_t(c)], ws_scale[size_t(c)], s.N, out, s.N});
            },
            reps);
        chk(cudaGetLastError(), "launch");
        report(s.name, cuda::fp8_path_name(path), M, s.N, s.K, ms, fp8_flop(M), fp8_bytes(M));
      }
    }
    ctx.config().fp8_gemm = cuda::Fp8Path::Auto;
    // The sm_90a block-scaled wgmma GEMM (fast numerics above 16 rows): same inputs, row-major scales.
    for (int64_t M : Ms) {
      if (M <= 16) continue;
      const bool ok = cuda::fp8_blockscaled_sm90_supports(ctx, {a, as, M, s.K, ws_codes[0], ws_scale[0], s.N, out, s.N});
      if (!ok) {
        std::printf("| %-14s | %-6s | %5lld | %5lld | %5lld | not available (%s) |\n", s.name, "wgmma-bs", (long long)M,
                    (long long)s.N, (long long)s.K, ctx.facts().fp8_sm90 ? "shape" : "probe: needs the sm_90a SASS");
        continue;
      }
      const double ms = time_ms(
          [&](int r) {
            const int c = r % copies;
            cuda::launch_fp8_blockscaled_sm90(ctx, {a, as, M, s.K, ws_codes[size_t(c)], ws_scale[size_t(c)], s.N, out, s.N});
          },
          reps);
      chk(cudaGetLastError(), "wgmma-bs launch");
      report(s.name, "wgmma-bs", M, s.N, s.K, ms, fp8_flop(M), fp8_bytes(M));
      cmp_order.emplace_back(s.name, M);
      cmp_ms[{s.name, M}] = {ms, -1.0};
    }
    // cuBLASLt: the block-scaled FP8 GEMM (lt-blk, fast numerics' second choice) and, as the peer, its plain
    // FP8 GEMM without block scales (lt-fp8, what "cuBLAS FP8" figures measure).
    for (int64_t M : Ms) {
      if (M <= 16) continue;
      for (bool unscaled : {false, true}) {
        cuda::LtGemm g;
        g.kind = cuda::LtGemm::Kind::Fp8;
        g.fp8_unscaled = unscaled;
        g.x = a; g.ldx = s.K; g.d = out; g.ldd = s.N; g.ldw = s.K;
        g.M = M; g.N = s.N; g.K = s.K;
        g.x_scale = as;
        bool ok = true;
        const double ms = time_ms(
            [&](int r) {
              const int c = r % copies;
              g.w = ws_codes[size_t(c)];
              g.w_scale = ws_scale[size_t(c)];
              ok = ok && blas.run(g);
            },
            reps);
        chk(cudaGetLastError(), "cuBLASLt");
        if (!ok) {
          std::printf("| %-14s | %-6s | %5lld | %5lld | %5lld | no cuBLASLt algorithm |\n", s.name,
                      unscaled ? "lt-fp8" : "lt-blk", (long long)M, (long long)s.N, (long long)s.K);
          continue;
        }
        report(s.name, unscaled ? "lt-fp8" : "lt-blk", M, s.N, s.K, ms, fp8_flop(M), fp8_bytes(M, !unscaled));
        if (unscaled) {
          auto it = cmp_ms.find({s.name, M});
          if (it != cmp_ms.end()) it->second.second = ms;
        }
      }
    }
    for (int c = 0; c < copies; ++c) {
      cudaFree(ws_codes[size_t(c)]);
      cudaFree(ws_scale[size_t(c)]);
    }
  }

  // ---- grouped MoE: 256 experts, top-8 routing (random distinct experts per token) --------------
  {
    const int64_t E = 256, TOPK = 8, I = 2048, D = 7168;
    const size_t wbytes = size_t(I * D);  // gate/up [I, D] and down [D, I] have the same size
    std::vector<uint8_t*> wc(static_cast<size_t>(E), nullptr);
    float* wsc = dalloc<float>(size_t(E) * 56 * 16);
    fill_f32<<<256, 256>>>(wsc, size_t(E) * 56 * 16, 0.0009765625f);
    for (int64_t e = 0; e < E; ++e) {
      wc[size_t(e)] = dalloc<uint8_t>(wbytes);
      fill_codes<<<2048, 256>>>(wc[size_t(e)], wbytes, 500u + uint32_t(e));
    }
    std::vector<const void*> table(size_t(6 * E));
    for (int64_t e = 0; e < E; ++e)
      for (int wh = 0; wh < 3; ++wh) {
        table[size_t(6 * e + 2 * wh)] = wc[size_t(e)];
        table[size_t(6 * e + 2 * wh + 1)] = wsc + e * 56 * 16;
      }
    const void** dtab = dalloc<const void*>(table.size());
    chk(cudaMemcpy(dtab, table.data(), table.size() * sizeof(void*), cudaMemcpyHostToDevice), "table");
    int32_t* doffs = dalloc<int32_t>(size_t(E + 1));
    std::mt19937 rng(123);
    std::vector<int64_t> Ts = {1, 8, 64, 512, 4096};
    if (quick) Ts = {1, 64, 4096};
    if (!cost_csv.empty() && std::find(Ts.begin(), Ts.end(), kCostDecodeRows) == Ts.end()) {
      Ts.push_back(kCostDecodeRows);
      std::sort(Ts.begin(), Ts.end());
    }
    for (int64_t T : Ts) {
      std::vector<int> cnt(size_t(E), 0);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<int> pick;
        while (int64_t(pick.size()) < TOPK) {
          const int e = int(rng() % E);
          if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
        }
        for (int e : pick) ++cnt[size_t(e)];
      }
      std::vector<int32_t> offs(size_t(E + 1), 0);
      int64_t active = 0;
      for (int64_t e = 0; e < E; ++e) {
        offs[size_t(e + 1)] = offs[size_t(e)] + cnt[size_t(e)];
        active += cnt[size_t(e)] > 0;
      }
      const int64_t rows = offs[size_t(E)];
      chk(cudaMemcpy(doffs, offs.data(), offs.size() * 4, cudaMemcpyHostToDevice), "offs");
      for (int which = 0; which < 3; which += 2) {  // gate (N=I, K=D) and down (N=D, K=I)
        const int64_t N = which == 0 ? I : D, K = which == 0 ? D : I;
        if (rows * K > Mmax * maxK || rows * N > Mmax * maxN) continue;
        const double ms = time_ms(
            [&](int) {
              cuda::launch_linear_fp8_grouped(ctx, a, as, T, K, dtab, which, doffs, E, N, out);
            },
            reps);
        chk(cudaGetLastError(), "grouped launch");
        const double flop = 2.0 * double(rows) * double(N) * double(K);
        const double bytes = double(active) * double(wbytes) + double(rows) * (K + 2.0 * N);
        report(which == 0 ? "moe_gate T" : "moe_down T", "auto", T, N, K, ms, flop, bytes);
      }
    }
    for (uint8_t* p : wc) cudaFree(p);
  }

  // ---- fp32 lm_head GEMV: [T, 7168] x [129280, 7168]^T, bf16 weights ----------------------------
  {
    const int64_t N = 129280, K = 7168;
    uint16_t* w = dalloc<uint16_t>(size_t(N * K));
    uint16_t* x = dalloc<uint16_t>(size_t(8 * K));
    float* o = dalloc<float>(size_t(8 * N));
    fill_bf16<<<4096, 256>>>(w, size_t(N * K), 9u);
    fill_bf16<<<64, 256>>>(x, size_t(8 * K), 10u);
    for (int64_t T : {int64_t(1), int64_t(8)}) {
      const double ms = time_ms([&](int) { cuda::launch_linear_f32_gemv(x, T, K, w, false, N, o); }, reps);
      report("lm_head bf16", "gemv", T, N, K, ms, 2.0 * T * N * K, double(N) * K * 2 + double(T) * N * 4);
    }
    // Above 8 rows (decode batches, prefill's last rows): cuBLASLt bf16 with fp32 accumulation.
    uint16_t* xb = dalloc<uint16_t>(size_t(128 * K));
    float* ob = dalloc<float>(size_t(128 * N));
    fill_bf16<<<256, 256>>>(xb, size_t(128 * K), 11u);
    for (int64_t T : {int64_t(16), int64_t(32), int64_t(128)}) {
      cuda::LtGemm g;
      g.out_f32 = true;
      g.x = xb; g.ldx = K; g.w = w; g.ldw = K; g.d = ob; g.ldd = N;
      g.M = T; g.N = N; g.K = K;
      bool ok = true;
      const double ms = time_ms([&](int) { ok = ok && blas.run(g); }, reps);
      if (ok) report("lm_head bf16", "lt-bf16", T, N, K, ms, 2.0 * T * N * K, double(N) * K * 2 + double(T) * N * 4);
    }
    cudaFree(xb);
    cudaFree(ob);
    cudaFree(w);
  }

  // ---- wgmma-bs against cuBLASLt's plain FP8 GEMM (the goal: >= 60% at M >= 512) -------------------
  if (!cmp_order.empty()) {
    std::vector<std::string> lines = {
        "", "| shape          |     M | wgmma-bs TFLOP/s | lt-fp8 TFLOP/s | wgmma-bs / lt-fp8 |", "|---|---|---|---|---|"};
    for (const auto& key : cmp_order) {
      const auto [ours, lt] = cmp_ms[key];
      const Shape* sh = nullptr;
      for (const Shape& x : shapes)
        if (key.first == x.name) sh = &x;
      const double flop = 2.0 * double(key.second) * double(sh->N) * double(sh->K);
      char line[256];
      if (lt > 0)
        std::snprintf(line, sizeof line, "| %-14s | %5lld | %16.1f | %14.1f | %16.1f%% |", key.first.c_str(),
                      (long long)key.second, flop / (ours * 1e-3) / 1e12, flop / (lt * 1e-3) / 1e12, 100.0 * lt / ours);
      else
        std::snprintf(line, sizeof line, "| %-14s | %5lld | %16.1f | %14s | %17s |", key.first.c_str(),
                      (long long)key.second, flop / (ours * 1e-3) / 1e12, "-", "-");
      lines.push_back(line);
    }
    for (const std::string& l : lines) {
      std::printf("%s\n", l.c_str());
      md.push_back(l);
      if (md_out) std::fprintf(md_out, "%s\n", l.c_str());
    }
    std::fflush(stdout);
  }

  if (md_out) std::fclose(md_out);
  if (!cost_csv.empty()) {
    // One MoE layer of V3.2 at T tokens: the attention-side linears (wkv_b's GEMM stands in for the
    // absorbed per-head products: the same FLOPs), the shared expert, the 8 routed experts (grouped;
    // up runs as gate does). Left out: indexer wk / weights_proj and the router (< 1% of the FLOPs),
    // norms, and lm_head (per token, not per layer; decode only).
    auto layer_us_per_token = [&](int64_t T) {
      double ms = 0;
      bool all = true;
      auto add = [&](const char* name, double times) {
        auto it = best_ms.find({name, T});
        if (it == best_ms.end()) all = false;
        else ms += times * it->second;
      };
      for (const char* n : {"q_a", "q_b", "kv_a", "o_proj", "wkv_b", "idx_wq_b"}) add(n, 1);
      add("exp_gate_up", 2);
      add("exp_down", 1);
      add("moe_gate T", 2);
      add("moe_down T", 1);
      return all ? ms * 1e3 / double(T) : -1.0;
    };
    const double dec = layer_us_per_token(kCostDecodeRows), pre = layer_us_per_token(kCostPrefillRows);
    if (FILE* f = std::fopen(cost_csv.c_str(), "a")) {
      std::fprintf(f, "# rest: dsa_gpu_gemm_bench on %s: one V3.2 MoE layer's linears per token, fastest path per shape, "
                      "decode at %ld rows, prefill at %ld\nphase,attention,position,us_per_token\n",
                   prop.name, long(kCostDecodeRows), long(kCostPrefillRows));
      if (dec >= 0) std::fprintf(f, "decode,rest,0,%.4f\n", dec);
      if (pre >= 0) std::fprintf(f, "prefill,rest,0,%.4f\n", pre);
      std::fclose(f);
    }
    std::printf("cost rows (us per token per layer): decode %.3f, prefill %.3f -> %s\n", dec, pre, cost_csv.c_str());
  }
  return 0;
}

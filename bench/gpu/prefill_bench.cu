// dsa_gpu_prefill_bench: per-layer attention PREFILL latency on the CUDA backend, dense vs DSA.
// One sequence of context L whose last S tokens are the chunk being prefilled (positions L-S..L-1),
// h = 128 MHA-form heads (q 192 = 128 nope + 64 rope, v 128), index_topk 2048, the 64x128 FP8
// indexer. Dense: attention_mha over every position <= the token's own. DSA: indexer_topk (scores over
// the 132-byte cache + exact top-k, tiled) then attention_mha over the selected rows only.
// Random data; CUDA events; median of a few calls. Projections (wq_b, wkv_b, wo) are excluded.
// Usage: dsa_gpu_prefill_bench [--chunk S] [--ctxs 4096,16384] [--md FILE] [--cost-csv FILE]
//   --cost-csv: append `dsa cost`'s prefill rows (runtime/cost_model.h): per-layer attention per chunk token,
//   at the chunk's mean position, dense and DSA.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "bench_util.h"

using namespace dsa;
using dsa::bench::chk;

namespace {

__global__ void fill_bytes(uint8_t* p, size_t n, uint32_t seed, bool fp8) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    uint8_t c = uint8_t(x);
    if (fp8) {
      if ((c & 0x7f) == 0x7f) c = 0x3f;  // no e4m3 NaN
      if ((c & 0x78) >= 0x60) c &= 0xb7;  // moderate magnitudes
    }
    p[i] = c;
  }
}
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = uint16_t(0x3c00 + (x & 0x3ff)) ^ uint16_t((x >> 16) & 0x8000);
  }
}
__global__ void fix_indexer_scales(uint8_t* cache, size_t blocks) {
  for (size_t b = blockIdx.x * size_t(blockDim.x) + threadIdx.x; b < blocks * kKvBlock; b += size_t(gridDim.x) * blockDim.x)
    reinterpret_cast<float*>(cache + (b / kKvBlock) * kKvBlock * kIndexTokenBytes + kKvBlock * kIndexDim)[b % kKvBlock] =
        0.015625f;
}
__global__ void fill_f32(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) p[i] = v;
}

std::string kfmt(int64_t L) { return L >= 1024 ? std::to_string(L / 1024) + "K" : std::to_string(L); }

std::vector<int64_t> parse_list(const char* s) {
  std::vector<int64_t> v;
  for (const char* p = s; *p;) {
    char* e = nullptr;
    v.push_back(std::strtoll(p, &e, 10));
    p = e;
    if (*p == ',') ++p;
    else break;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t S = 1024;
  std::vector<int64_t> ctxs = {4096, 16384, 65536, 131072};
  std::string md, cost_csv;
  double dense_max_flop = 6e12;  // skip dense shapes slower than this many FLOPs (CUDA-core MHA kernel)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--chunk") && i + 1 < argc) S = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--ctxs") && i + 1 < argc) ctxs = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--md") && i + 1 < argc) md = argv[++i];
    else if (!std::strcmp(argv[i], "--dense-max-flop") && i + 1 < argc) dense_max_flop = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--cost-csv") && i + 1 < argc) cost_csv = argv[++i];
  }
  std::string cost_rows;
  cuda::CudaBackend be(0);
  std::fprintf(stderr, "%s", be.describe().c_str());  // the device's probes and the kernel configuration
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s; prefill chunk S = %ld tokens at the end of a context of L, h = 128, topk = 2048\n", prop.name,
              long(S));
  const int64_t H = 128, DQK = 192, NOPE = 128, DV = 128, TOPK = 2048, HI = 64;
  const float scale = 0.1352f;
  std::string table =
      "| context | chunk | dense MLA prefill (ms) | DSA indexer+top-k (ms) | DSA sparse MLA (ms) | DSA total (ms) | dense / DSA | "
      "sparse MLA TFLOP/s | indexer TFLOP/s |\n|---|---|---|---|---|---|---|---|---|\n";
  for (int64_t L : ctxs) {
    const int64_t s = std::min(S, L);
    Batch B;
    BatchSeq q;
    q.start_pos = L - s;
    q.n_new = s;
    B.seqs.push_back(q);
    for (int64_t j = 0; j < s; ++j) B.positions.push_back(int32_t(L - s + j)), B.token_seq.push_back(0);
    const int64_t nb = (L + kKvBlock - 1) / kKvBlock;
    B.max_blocks = nb;
    for (int64_t k = 0; k < nb; ++k) B.block_table.push_back(int32_t(k));
    be.prepare_batch(B);
    KvLayer kv;
    kv.mla = be.alloc(DType::U8, {1, kKvBlock * kMlaTokenBytes});
    kv.indexer = be.alloc(DType::U8, {nb, kKvBlock * kIndexTokenBytes});
    fill_bytes<<<4096, 256>>>(kv.indexer.ptr<uint8_t>(), kv.indexer.nbytes(), 91u, true);
    fix_indexer_scales<<<1024, 256>>>(kv.indexer.ptr<uint8_t>(), size_t(nb));
    Tensor qm = be.alloc(DType::BF16, {s, H, DQK}), kvu = be.alloc(DType::BF16, {L, H, NOPE + DV}),
           pe = be.alloc(DType::BF16, {L, 64}), out = be.alloc(DType::BF16, {s, H, DV});
    fill_bf16<<<4096, 256>>>(qm.ptr<uint16_t>(), size_t(qm.numel()), 1);
    fill_bf16<<<4096, 256>>>(kvu.ptr<uint16_t>(), size_t(kvu.numel()), 2);
    fill_bf16<<<4096, 256>>>(pe.ptr<uint16_t>(), size_t(pe.numel()), 3);
    Tensor iq = be.alloc(DType::E4M3, {s, HI, 128}), iw = be.alloc(DType::F32, {s, HI}), tk = be.alloc(DType::I32, {s, TOPK});
    fill_bytes<<<1024, 256>>>(iq.ptr<uint8_t>(), iq.nbytes(), 7u, true);
    fill_f32<<<64, 256>>>(iw.ptr<float>(), size_t(iw.numel()), 0.0115f);
    chk(cudaDeviceSynchronize(), "fill");
    double pairs = 0;  // sum over chunk tokens of (position + 1)
    for (int64_t j = 0; j < s; ++j) pairs += double(L - s + j + 1);
    const double dense_flop = 2.0 * H * pairs * (DQK + DV);
    double dense_ms = -1;
    if (dense_flop <= dense_max_flop)
      dense_ms = bench::time_ms([&](int) { be.attention_mha(qm, kvu, pe, B, nullptr, scale, out); }, 3);
    const double idx_ms = bench::time_ms([&](int) { be.indexer_topk(iq, iw, kv, B, TOPK, tk); }, 3);
    const double sp_ms = bench::time_ms([&](int) { be.attention_mha(qm, kvu, pe, B, &tk, scale, out); }, 3);
    double sel = 0;
    for (int64_t j = 0; j < s; ++j) sel += double(std::min<int64_t>(TOPK, L - s + j + 1));
    const double sp_flop = 2.0 * H * sel * (DQK + DV), idx_flop = 2.0 * HI * 128 * pairs;
    const double dsa = idx_ms + sp_ms;
    char line[512];
    std::snprintf(line, sizeof line, "| %s | %ld | %s | %.2f | %.2f | %.2f | %s | %.1f | %.1f |\n", kfmt(L).c_str(), long(s),
                  dense_ms < 0 ? "skipped" : std::to_string(dense_ms).substr(0, 8).c_str(), idx_ms, sp_ms, dsa,
                  dense_ms < 0 ? "-" : (std::to_string(dense_ms / dsa).substr(0, 5) + "x").c_str(),
                  sp_flop / (sp_ms * 1e-3) / 1e12, idx_flop / (idx_ms * 1e-3) / 1e12);
    std::printf("%s", line);
    std::fflush(stdout);
    table += line;
    {  // per chunk token, at the chunk's mean position
      const double pos = double(L) - double(s) / 2.0;
      char row[160];
      if (dense_ms >= 0) {
        std::snprintf(row, sizeof row, "prefill,dense,%.0f,%.4f\n", pos, dense_ms * 1e3 / double(s));
        cost_rows += row;
      }
      std::snprintf(row, sizeof row, "prefill,dsa,%.0f,%.4f\n", pos, dsa * 1e3 / double(s));
      cost_rows += row;
    }
    be.synchronize();
  }
  if (!cost_csv.empty())
    if (FILE* f = std::fopen(cost_csv.c_str(), "a")) {
      std::fprintf(f, "# prefill: dsa_gpu_prefill_bench on %s: per-layer attention (MHA form, h=128, topk=2048), chunks of "
                      "%ld tokens, per token; projections in the rest row\nphase,attention,position,us_per_token\n%s",
                   prop.name, long(S), cost_rows.c_str());
      std::fclose(f);
    }
  if (!md.empty())
    if (FILE* f = std::fopen(md.c_str(), "w")) {
      std::fprintf(f, "device: %s; per-layer attention prefill, chunk of %ld tokens at the end of the context\n\n%s",
                   prop.name, long(S), table.c_str());
      std::fclose(f);
    }
  return 0;
}

// dsa_gpu_bench: CUDA-event timings of the CUDA backend's DSA kernels on random data.
//   copy roofline (device-to-device), sparse MLA decode (FlashMLA's FLOP convention, kernels.md
//   §1.7), dense MLA decode, indexer decode (scores + top-k), and per-layer attention decode
//   latency dense vs DSA at contexts 4K..128K and batch 1/32/128.
// Each number: warm-up, then the median of several timed calls; inputs rotate among copies when
// they would fit in L2. Usage: dsa_gpu_bench [--quick] [--md FILE] [--only mla|layer|topk]
//   [--batches 1,32] [--ctxs 16384,65536]   (--only: one section; the lists override the layer sweep)
//   [--cost-csv FILE]: append `dsa cost`'s decode rows (runtime/cost_model.h): per-layer attention per token
//   (graph replay / batch) at each context, dense and DSA, for the largest batch of the sweep.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "bench_util.h"
#include "backends/cuda/indexer/scores_sm90.h"
#include "backends/cuda/mla/decode.h"
#include "backends/cuda/topk/topk.h"

using namespace dsa;
using dsa::bench::chk;
using dsa::bench::kBf16TF;
using dsa::bench::kCopyTBs;
using dsa::bench::time_ms;
using dsa::bench::time_graph_ms;

namespace {


__global__ void fill_random(uint8_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    uint8_t c = uint8_t(x);
    if ((c & 0x7f) == 0x7f) c = 0x3f;       // no e4m3 NaN
    if ((c & 0x78) >= 0x60) c &= 0xb7;      // keep magnitudes moderate
    p[i] = c;
  }
}
// Fix the MLA cache's per-token scales (4 fp32 after 512 bytes) and RoPE part (64 bf16).
__global__ void fix_mla(uint8_t* cache, size_t tokens) {
  for (size_t t = blockIdx.x * size_t(blockDim.x) + threadIdx.x; t < tokens; t += size_t(gridDim.x) * blockDim.x) {
    float* s = reinterpret_cast<float*>(cache + t * kMlaTokenBytes + 512);
    for (int i = 0; i < 4; ++i) s[i] = 0.0078125f;
    uint16_t* pe = reinterpret_cast<uint16_t*>(cache + t * kMlaTokenBytes + 528);
    for (int i = 0; i < 64; ++i) pe[i] = uint16_t(0x3c00 + ((t * 7 + i * 13) & 0xff)) ^ ((i & 1) << 15);
  }
}
__global__ void fix_indexer(uint8_t* cache, size_t blocks) {
  for (size_t b = blockIdx.x * size_t(blockDim.x) + threadIdx.x; b < blocks * 64; b += size_t(gridDim.x) * blockDim.x)
    reinterpret_cast<float*>(cache + (b / 64) * kKvBlock * kIndexTokenBytes + kKvBlock * kIndexDim)[b % 64] = 0.015625f;
}
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
    p[i] = uint16_t(0x3c00 + (x & 0x3ff)) ^ uint16_t((x >> 16) & 0x8000);  // ~[0.0078, 0.03) with random sign
  }
}

struct Row {
  std::string what, shape;
  double us, tflops, gbs, pct;
};
std::vector<Row> rows;
void report(const std::string& what, const std::string& shape, double ms, double flop, double bytes, double pct) {
  Row r{what, shape, ms * 1e3, flop / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, pct};
  rows.push_back(r);
  std::printf("%-28s %-40s %10.1f us %8.2f TFLOP/s %8.1f GB/s %6.1f%%\n", what.c_str(), shape.c_str(), r.us, r.tflops,
              r.gbs, pct);
  std::fflush(stdout);
}

// A decode batch: b sequences of L context tokens each (the last s_q are new), contiguous blocks.
Batch decode_batch(int64_t b, int64_t L, int64_t s_q, int64_t* blocks_used) {
  Batch B;
  const int64_t nb = (L + kKvBlock - 1) / kKvBlock;
  B.max_blocks = nb;
  int64_t tok = 0;
  for (int64_t s = 0; s < b; ++s) {
    BatchSeq q;
    q.start_pos = L - s_q;
    q.n_new = s_q;
    q.token_offset = tok;
    B.seqs.push_back(q);
    for (int64_t j = 0; j < s_q; ++j) B.positions.push_back(int32_t(L - s_q + j)), B.token_seq.push_back(int32_t(s));
    tok += s_q;
    for (int64_t k = 0; k < nb; ++k) B.block_table.push_back(int32_t(s * nb + k));
  }
  *blocks_used = b * nb;
  return B;
}

struct Caches {
  std::vector<KvLayer> kv;  // rotating copies
};
Caches make_caches(cuda::CudaBackend& be, int64_t blocks, bool mla, bool idx) {
  Caches c;
  const double bytes = double(blocks) * kKvBlock * ((mla ? kMlaTokenBytes : 0) + (idx ? kIndexTokenBytes : 0));
  const int copies = int(std::clamp(std::ceil(256e6 / std::max(bytes, 1.0)), 1.0, 8.0));
  for (int i = 0; i < copies; ++i) {
    KvLayer k;
    k.mla = be.alloc(DType::U8, {mla ? blocks : 1, kKvBlock * kMlaTokenBytes});
    k.indexer = be.alloc(DType::U8, {idx ? blocks : 1, kKvBlock * kIndexTokenBytes});
    fill_random<<<4096, 256>>>(k.mla.ptr<uint8_t>(), k.mla.nbytes(), 17u + i);
    fix_mla<<<4096, 256>>>(k.mla.ptr<uint8_t>(), size_t(k.mla.dim(0)) * kKvBlock);
    fill_random<<<4096, 256>>>(k.indexer.ptr<uint8_t>(), k.indexer.nbytes(), 91u + i);
    fix_indexer<<<4096, 256>>>(k.indexer.ptr<uint8_t>(), size_t(k.indexer.dim(0)));
    c.kv.push_back(k);
  }
  chk(cudaDeviceSynchronize(), "fill caches");
  return c;
}

Tensor rand_bf16_dev(cuda::CudaBackend& be, Shape s, uint32_t seed) {
  Tensor t = be.alloc(DType::BF16, s);
  fill_bf16<<<2048, 256>>>(t.ptr<uint16_t>(), size_t(t.numel()), seed);
  return t;
}

// Random distinct positions in [0, L) per token row (sorted), -1 padded if L < k.
Tensor rand_topk(cuda::CudaBackend& be, int64_t T, int64_t k, const Batch& B) {
  std::mt19937 rng(5);
  Tensor h = host_tensor(DType::I32, {T, k});
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = B.positions[size_t(t)] + 1;
    std::vector<int32_t> pick;
    if (n <= k) {
      pick.resize(size_t(n));
      std::iota(pick.begin(), pick.end(), 0);
    } else {
      std::vector<char> used(size_t(n), 0);
      while (int64_t(pick.size()) < k) {
        int32_t j = int32_t(rng() % uint32_t(n));
        if (!used[size_t(j)]) used[size_t(j)] = 1, pick.push_back(j);
      }
      std::sort(pick.begin(), pick.end());
    }
    for (int64_t i = 0; i < k; ++i) h.ptr<int32_t>()[t * k + i] = i < int64_t(pick.size()) ? pick[size_t(i)] : -1;
  }
  return be.upload(h);
}

// Score rows compared with a reference row: max |x - ref| and max |ref| over the reference's finite entries.
std::pair<double, double> max_abs_diff(const std::vector<float>& x, const std::vector<float>& ref) {
  double dmax = 0, amax = 0;
  for (size_t j = 0; j < ref.size(); ++j)
    if (std::isfinite(ref[j])) {
      dmax = std::max(dmax, double(std::fabs(x[j] - ref[j])));
      amax = std::max(amax, double(std::fabs(ref[j])));
    }
  return {dmax, amax};
}

std::string kfmt(int64_t L) { return L >= 1024 ? std::to_string(L / 1024) + "K" : std::to_string(L); }

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string md, only, cost_csv;
  std::vector<int64_t> batch_list, ctx_list;
  auto parse_list = [](const char* s) {
    std::vector<int64_t> v;
    for (const char* p = s; *p;) {
      v.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
      if (*p == ',') ++p;
      else if (*p) break;
    }
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--md") && i + 1 < argc) md = argv[++i];
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--batches") && i + 1 < argc) batch_list = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--ctxs") && i + 1 < argc) ctx_list = parse_list(argv[++i]);
    else if (!std::strcmp(argv[i], "--cost-csv") && i + 1 < argc) cost_csv = argv[++i];
  }
  cuda::CudaBackend be(0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, %.0f MB L2\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6);
  std::fprintf(stderr, "%s", be.describe().c_str());  // the device's probes and the kernel configuration
  cuda::CudaContext& ctx = be.context();
  cuda::KernelConfig& cfg = be.config();

  {  // copy roofline: 2 GiB device-to-device, bytes read + written
    const size_t n = size_t(2) << 30;
    Tensor a = be.alloc(DType::U8, {int64_t(n)}), b = be.alloc(DType::U8, {int64_t(n)});
    cudaMemset(a.data, 1, n);
    const double ms = time_ms([&](int) { cudaMemcpyAsync(b.data, a.data, n, cudaMemcpyDeviceToDevice, 0); }, 20);
    report("copy (roofline)", "2 GiB d2d", ms, 0, 2.0 * double(n), 100.0 * 2.0 * n / (ms * 1e-3) / 1e12 / kCopyTBs);
  }

  const int64_t H = 128, TOPK = 2048;
  const float scale = 0.1352f;
  if (only == "topk") {  // the top-k paths side by side, on indexer scores of decode rows (k = 2048)
    for (int64_t b : batch_list.empty() ? std::vector<int64_t>{1, 32, 128} : batch_list)
      for (int64_t L : ctx_list.empty() ? std::vector<int64_t>{4096, 16384, 32768, 65536, 131072} : ctx_list) {
        int64_t blocks;
        Batch B = decode_batch(b, L, 1, &blocks);
        Caches c = make_caches(be, blocks, false, true);
        be.prepare_batch(B);
        Tensor iq = be.alloc(DType::E4M3, {b, 64, 128}), iw = be.alloc(DType::F32, {b, 64}), sc = be.alloc(DType::F32, {b, L});
        Tensor tk = be.alloc(DType::I32, {b, TOPK});
        fill_random<<<256, 256>>>(iq.ptr<uint8_t>(), iq.nbytes(), 7);
        cudaMemset(iw.data, 0x3c, iw.nbytes());
        be.indexer_scores(iq, iw, c.kv[0], B, sc);
        Tensor nn_h = host_tensor(DType::I32, {b});
        for (int64_t i = 0; i < b; ++i) nn_h.ptr<int32_t>()[i] = int32_t(L);
        Tensor nn = be.upload(nn_h);
        cuda::TopkConfig& tun = cfg.topk;
        const cuda::TopkConfig saved = tun;
        struct V { int onchip, kpt; bool lane; const char* name; };
        for (const V& v : {V{1, 0, false, "auto"}, V{1, 4, false, "on-chip kpt=4"}, V{1, 8, false, "on-chip kpt=8"},
                           V{1, 16, false, "on-chip kpt=16"}, V{1, 0, true, "auto, lane-hist"},
                           V{1, 4, true, "kpt=4, lane-hist"}, V{1, 8, true, "kpt=8, lane-hist"},
                           V{1, 16, true, "kpt=16, lane-hist"}, V{0, 0, false, "global-memory paths"}}) {
          tun.onchip = v.onchip, tun.force_kpt = v.kpt, tun.lane_histogram = v.lane;
          const double ms = time_ms([&](int) { be.topk_rows(sc, nn.ptr<int32_t>(), TOPK, tk); }, 20);
          report(std::string("top-k ") + v.name, "b=" + std::to_string(b) + " L=" + kfmt(L), ms, 0, double(b) * L * 4,
                 100.0 * double(b) * L * 4 / (ms * 1e-3) / 1e12 / kCopyTBs);
        }
        tun = saved;
        be.synchronize();
      }
    return 0;
  }
  // ---- sparse MLA decode (FlashMLA shape: h=128, s_q=2, topk=2048, s_kv=32K) ----------------
  for (int64_t b : only == "layer" ? std::vector<int64_t>{} : quick ? std::vector<int64_t>{128} : std::vector<int64_t>{2, 64, 128}) {
    const int64_t L = 32768, s_q = 2, T = b * s_q;
    int64_t blocks;
    Batch B = decode_batch(b, L, s_q, &blocks);
    Caches c = make_caches(be, blocks, true, false);
    be.prepare_batch(B);
    Tensor ql = rand_bf16_dev(be, {T, H, 512}, 1), qp = rand_bf16_dev(be, {T, H, 64}, 2), o = be.alloc(DType::BF16, {T, H, 512});
    Tensor tk = rand_topk(be, T, TOPK, B);
    const double ms = time_ms([&](int r) { be.attention_mqa(ql, qp, c.kv[size_t(r) % c.kv.size()], B, &tk, scale, o); });
    const double flop = 2.0 * H * double(T) * TOPK * (576 + 512);
    const double bytes = double(T) * H * (576 + 512) * 2 + double(b) * TOPK * 2 * kMlaTokenBytes;  // upper bound on unique
    report("sparse MLA decode", "b=" + std::to_string(b) + " h=128 s_q=2 topk=2048 s_kv=32K", ms, flop, bytes,
           100.0 * flop / (ms * 1e-3) / 1e12 / kBf16TF);
  }
  be.synchronize();

  // ---- per-layer decode attention: dense MLA vs DSA (indexer + top-k + sparse MLA) ------------
  struct Lat { int64_t b, L; double dense_us, idx_us, sparse_us, chain_us, dense_g_us, chain_g_us; };
  // Graph replay (time_graph_ms) of a call that takes single_ms alone: enough back-to-back launches for a
  // ~2 ms span, at least 3.
  auto graph_ms = [](const std::function<void(int)>& fn, int variants, double single_ms) {
    const int reps = int(std::clamp(2.0 / std::max(single_ms, 1e-3), 3.0, 24.0));
    return time_graph_ms(fn, variants, reps, reps >= 12 ? 5 : 3);
  };
  std::vector<Lat> lat;
  std::vector<int64_t> ctxs = quick ? std::vector<int64_t>{16384, 65536} : std::vector<int64_t>{4096, 16384, 32768, 65536, 131072};
  std::vector<int64_t> batches = quick ? std::vector<int64_t>{32} : std::vector<int64_t>{1, 32, 128};
  if (!ctx_list.empty()) ctxs = ctx_list;
  if (!batch_list.empty()) batches = batch_list;
  if (only == "mla") batches.clear();
  for (int64_t b : batches)
    for (int64_t L : ctxs) {
      const int64_t T = b;  // s_q = 1
      int64_t blocks;
      Batch B = decode_batch(b, L, 1, &blocks);
      Caches c = make_caches(be, blocks, true, true);
      be.prepare_batch(B);
      Tensor ql = rand_bf16_dev(be, {T, H, 512}, 3), qp = rand_bf16_dev(be, {T, H, 64}, 4), o = be.alloc(DType::BF16, {T, H, 512});
      // dense decode over the whole context (skip the slowest shapes of the CUDA-core kernel)
      double dense_ms = -1, dense_g_ms = -1;
      const double dense_flop = 2.0 * H * double(T) * L * (576 + 512);
      if (dense_flop < 6e12) {
        dense_ms = time_ms([&](int r) { be.attention_mqa(ql, qp, c.kv[size_t(r) % c.kv.size()], B, nullptr, scale, o); }, 10);
        report("dense MLA decode", "b=" + std::to_string(b) + " h=128 L=" + kfmt(L), dense_ms, dense_flop,
               double(b) * L * kMlaTokenBytes, 100.0 * dense_flop / (dense_ms * 1e-3) / 1e12 / kBf16TF);
        dense_g_ms = graph_ms([&](int r) { be.attention_mqa(ql, qp, c.kv[size_t(r) % c.kv.size()], B, nullptr, scale, o); },
                              int(c.kv.size()), dense_ms);
        report("dense MLA decode, graph replay", "b=" + std::to_string(b) + " h=128 L=" + kfmt(L), dense_g_ms, dense_flop,
               double(b) * L * kMlaTokenBytes, 100.0 * dense_flop / (dense_g_ms * 1e-3) / 1e12 / kBf16TF);
      }
      // indexer: scores over the 132-byte cache + exact top-2048
      Tensor iq = be.alloc(DType::E4M3, {T, 64, 128}), iw = be.alloc(DType::F32, {T, 64}), tk = be.alloc(DType::I32, {T, TOPK});
      fill_random<<<256, 256>>>(iq.ptr<uint8_t>(), iq.nbytes(), 7);
      fill_random<<<256, 256>>>(static_cast<uint8_t*>(iw.data), iw.nbytes(), 8);  // arbitrary finite-ish floats
      cudaMemset(iw.data, 0x3c, iw.nbytes());                                      // w = 0.0115 (finite)
      const double idx_ms = time_ms([&](int r) { be.indexer_topk(iq, iw, c.kv[size_t(r) % c.kv.size()], B, TOPK, tk); }, 10);
      const double idx_bytes = double(b) * L * kIndexTokenBytes;
      report("indexer decode + top-k", "b=" + std::to_string(b) + " Hi=64 L=" + kfmt(L), idx_ms, 2.0 * 64 * 128 * double(b) * L,
             idx_bytes, 100.0 * idx_bytes / (idx_ms * 1e-3) / 1e12 / kCopyTBs);
      {  // the other choice of where the top-k's first histogram comes from (automatic by batch, topk.h): the
         // score kernel's epilogue vs the top-k's own first pass
        cuda::TopkConfig& tt = cfg.topk;
        const int was = tt.hist0;
        const bool dflt = tt.hist0_for(b, L);
        tt.hist0 = dflt ? 0 : 1;
        const double m0 = time_ms([&](int r) { be.indexer_topk(iq, iw, c.kv[size_t(r) % c.kv.size()], B, TOPK, tk); }, 10);
        tt.hist0 = was;
        report(dflt ? "indexer + top-k, 1st hist. in top-k" : "indexer + top-k, 1st hist. in scores",
               "b=" + std::to_string(b) + " Hi=64 L=" + kfmt(L), m0, 2.0 * 64 * 128 * double(b) * L, idx_bytes,
               100.0 * idx_bytes / (m0 * 1e-3) / 1e12 / kCopyTBs);
      }
      {  // the two stages apart: scores alone (into a [b, L] buffer: benchmark only) and top-k alone
        Tensor sc = be.alloc(DType::F32, {T, L});
        const double s_ms = time_ms([&](int r) { be.indexer_scores(iq, iw, c.kv[size_t(r) % c.kv.size()], B, sc); }, 10);
        report("indexer scores only", "b=" + std::to_string(b) + " Hi=64 L=" + kfmt(L), s_ms, 2.0 * 64 * 128 * double(b) * L,
               idx_bytes + double(b) * L * 4, 100.0 * (idx_bytes + double(b) * L * 4) / (s_ms * 1e-3) / 1e12 / kCopyTBs);
        if (ctx.indexer_sm90()) {  // the portable kernel on the same data, and how far apart they are
          std::vector<float> r_h(static_cast<size_t>(L)), r_p(static_cast<size_t>(L));
          be.download(sc.rows(0, 1), r_h.data());
          cfg.indexer.wgmma = false;
          Tensor scp = be.alloc(DType::F32, {T, L});
          const double p_ms = time_ms([&](int r) { be.indexer_scores(iq, iw, c.kv[size_t(r) % c.kv.size()], B, scp); }, 10);
          be.indexer_scores(iq, iw, c.kv[0], B, scp);
          be.indexer_scores(iq, iw, c.kv[0], B, sc);  // (portable too; the Hopper one is restored below)
          be.download(scp.rows(0, 1), r_p.data());
          cfg.indexer.wgmma = true;
          be.indexer_scores(iq, iw, c.kv[0], B, sc);
          be.download(sc.rows(0, 1), r_h.data());
          const auto [dmax, amax] = max_abs_diff(r_h, r_p);
          std::printf("  (row 0: Hopper vs portable scores max |diff| %.3g of max |score| %.3g)\n", dmax, amax);
          report("indexer scores (portable)", "b=" + std::to_string(b) + " Hi=64 L=" + kfmt(L), p_ms,
                 2.0 * 64 * 128 * double(b) * L, idx_bytes + double(b) * L * 4,
                 100.0 * (idx_bytes + double(b) * L * 4) / (p_ms * 1e-3) / 1e12 / kCopyTBs);
        }
        {  // MTP form: s_q = 2 queries per sequence share each key load (same cache)
          int64_t blocks2;
          Batch B2 = decode_batch(b, L, 2, &blocks2);
          be.prepare_batch(B2);
          Tensor iq2 = be.alloc(DType::E4M3, {2 * b, 64, 128}), iw2 = be.alloc(DType::F32, {2 * b, 64});
          Tensor sc2 = be.alloc(DType::F32, {2 * b, L});
          fill_random<<<256, 256>>>(iq2.ptr<uint8_t>(), iq2.nbytes(), 9);
          cudaMemset(iw2.data, 0x3c, iw2.nbytes());
          const double s2_ms = time_ms([&](int r) { be.indexer_scores(iq2, iw2, c.kv[size_t(r) % c.kv.size()], B2, sc2); }, 10);
          const double b2 = idx_bytes + double(2 * b) * L * 4;
          report("indexer scores s_q=2", "b=" + std::to_string(b) + " Hi=64 L=" + kfmt(L), s2_ms, 2.0 * 64 * 128 * double(2 * b) * L,
                 b2, 100.0 * b2 / (s2_ms * 1e-3) / 1e12 / kCopyTBs);
          const char* sweep = std::getenv("DSA_BENCH_INDEXER_SWEEP");
          if (sweep && *sweep == '1' && ctx.indexer_sm90()) {
            // every sm_90a score kernel on the same data: f16 wgmma (0) and FP8 wgmma at ring depths 3..6;
            // row 0 of each against the portable kernel's (exact up to fp32 summation order)
            std::vector<float> r_p(static_cast<size_t>(L)), r_x(static_cast<size_t>(L));
            cfg.indexer.wgmma = false;
            be.indexer_scores(iq, iw, c.kv[0], B, sc);
            be.download(sc.rows(0, 1), r_p.data());
            cfg.indexer.wgmma = true;
            for (int mode : {0, 3, 4, 5, 6}) {
              cfg.indexer.sm90_fp8_stages = mode;
              const std::string nm = mode ? "FP8 S=" + std::to_string(mode) : std::string("f16");
              const double m1 = time_ms([&](int r) { be.indexer_scores(iq, iw, c.kv[size_t(r) % c.kv.size()], B, sc); }, 10);
              report("idx sweep " + nm + " s_q=1", "b=" + std::to_string(b) + " L=" + kfmt(L), m1, 2.0 * 64 * 128 * double(b) * L,
                     idx_bytes + double(b) * L * 4, 100.0 * (idx_bytes + double(b) * L * 4) / (m1 * 1e-3) / 1e12 / kCopyTBs);
              be.indexer_scores(iq, iw, c.kv[0], B, sc);
              be.download(sc.rows(0, 1), r_x.data());
              const auto [dmax, amax] = max_abs_diff(r_x, r_p);
              std::printf("  (%s row 0 vs portable: max |diff| %.3g of max |score| %.3g)\n", nm.c_str(), dmax, amax);
              if (mode) {
                const double m2 = time_ms([&](int r) { be.indexer_scores(iq2, iw2, c.kv[size_t(r) % c.kv.size()], B2, sc2); }, 10);
                report("idx sweep " + nm + " s_q=2", "b=" + std::to_string(b) + " L=" + kfmt(L), m2,
                       2.0 * 64 * 128 * double(2 * b) * L, b2, 100.0 * b2 / (m2 * 1e-3) / 1e12 / kCopyTBs);
              }
            }
            cfg.indexer = ctx.initial_config().indexer;  // back to the defaults and the environment's choice
          }
        }
        Tensor nn_h = host_tensor(DType::I32, {T});
        for (int64_t i = 0; i < T; ++i) nn_h.ptr<int32_t>()[i] = int32_t(L);
        Tensor nn = be.upload(nn_h);
        const double k_ms = time_ms([&](int) { be.topk_rows(sc, nn.ptr<int32_t>(), TOPK, tk); }, 10);
        report("top-k only (k=2048)", "b=" + std::to_string(b) + " L=" + kfmt(L), k_ms, 0, double(b) * L * 4,
               100.0 * double(b) * L * 4 / (k_ms * 1e-3) / 1e12 / kCopyTBs);
        if (b == 1 && L >= 32768) {
          cuda::TopkConfig& tt = cfg.topk;
          const bool was = tt.cand_final;
          tt.cand_final = false;  // the third histogram pass instead of the candidate exchange (topk.h)
          const double k3_ms = time_ms([&](int) { be.topk_rows(sc, nn.ptr<int32_t>(), TOPK, tk); }, 10);
          tt.cand_final = was;
          report("top-k only, 3rd radix pass", "b=" + std::to_string(b) + " L=" + kfmt(L), k3_ms, 0, double(b) * L * 4,
                 100.0 * double(b) * L * 4 / (k3_ms * 1e-3) / 1e12 / kCopyTBs);
          // Phase stamps of one launch of the on-chip kernel (first CTA), alone and after the score kernel.
          auto phases = [&](const char* what) {
            const std::vector<long long> st = cuda::topk_trace_read(ctx);
            std::printf("  top-k phases, %s (us after entry: wait, keys, pass0, pass1, threshold, scan, written, exit):", what);
            for (int i = 1; i < 9; ++i) std::printf(" %.2f", st[size_t(i)] ? double(st[size_t(i)] - st[0]) * 1e-3 : -1.0);
            std::printf("; last digit by %s\n", st[9] == 1 ? "candidate exchange" : st[9] == 2 ? "3rd pass" : "none");
          };
          tt.trace = true;
          be.topk_rows(sc, nn.ptr<int32_t>(), TOPK, tk);
          be.synchronize();
          phases("top-k alone");
          be.indexer_topk(iq, iw, c.kv[0], B, TOPK, tk);
          be.synchronize();
          phases("in indexer_topk");
          tt.trace = false;
        }
      }
      // sparse attention on the indexer's selection
      be.indexer_topk(iq, iw, c.kv[0], B, TOPK, tk);
      const double sp_ms = time_ms([&](int r) { be.attention_mqa(ql, qp, c.kv[size_t(r) % c.kv.size()], B, &tk, scale, o); }, 10);
      const double sp_flop = 2.0 * H * double(T) * std::min<int64_t>(TOPK, L) * (576 + 512);
      report("sparse MLA decode", "b=" + std::to_string(b) + " h=128 s_q=1 L=" + kfmt(L), sp_ms, sp_flop,
             double(T) * std::min<int64_t>(TOPK, L) * kMlaTokenBytes, 100.0 * sp_flop / (sp_ms * 1e-3) / 1e12 / kBf16TF);
      auto chain = [&](int r) {  // one layer's DSA attention
        const KvLayer& kv = c.kv[size_t(r) % c.kv.size()];
        be.indexer_topk(iq, iw, kv, B, TOPK, tk);
        be.attention_mqa(ql, qp, kv, B, &tk, scale, o);
      };
      if (b == 1) {  // small batch: how the split count of the candidates trades parallelism for overhead
        cuda::MqaConfig& tun = cfg.mqa;
        const int saved = tun.force_splits;
        for (int ns : {2, 4, 8, 16}) {
          tun.force_splits = ns;
          const double ms = time_ms([&](int r) { be.attention_mqa(ql, qp, c.kv[size_t(r) % c.kv.size()], B, &tk, scale, o); }, 10);
          report("sparse MLA decode NS=" + std::to_string(ns), "b=1 h=128 s_q=1 L=" + kfmt(L), ms, sp_flop,
                 double(T) * std::min<int64_t>(TOPK, L) * kMlaTokenBytes, 100.0 * sp_flop / (ms * 1e-3) / 1e12 / kBf16TF);
        }
        tun.force_splits = saved;
        // The chain below with plain launches (programmatic dependent launch off), for comparison with the
        // default (PDL on sm_90+, launch.cuh) timed for every batch.
        const bool pdl_was = cfg.pdl;
        cfg.pdl = false;
        report("DSA chain, plain launches", "b=1 h=128 s_q=1 L=" + kfmt(L), time_ms(chain, 10), 0, 0, 0);
        cfg.pdl = pdl_was;
      }
      // The DSA chain as a layer runs it: indexer + top-k, then sparse MLA on that selection, one timed call
      // in the default launch mode (the kernels of one part may overlap the next part's launch). This is the
      // layer's DSA time in the table below; the parts above are timed one at a time.
      const double ch_ms = time_ms(chain, 10);
      report(std::string("DSA chain (indexer+top-k+MLA)") + (ctx.pdl() ? ", PDL" : ""),
             "b=" + std::to_string(b) + " h=128 s_q=1 L=" + kfmt(L), ch_ms, 0, 0, 0);
      // The same chain as a decode graph replays it (no per-call host submission latency; time_graph_ms).
      const double chg_ms = graph_ms(chain, int(c.kv.size()), ch_ms);
      report(std::string("DSA chain, graph replay") + (ctx.pdl() ? ", PDL" : ""),
             "b=" + std::to_string(b) + " h=128 s_q=1 L=" + kfmt(L), chg_ms, 0, 0, 0);
      lat.push_back({b, L, dense_ms * 1e3, idx_ms * 1e3, sp_ms * 1e3, ch_ms * 1e3, dense_g_ms * 1e3, chg_ms * 1e3});
      be.synchronize();
    }

  std::printf("\nper-layer attention decode latency (us), h=128, topk=2048 (projections excluded)\n");
  // Two timings of the same work: one call on an idle GPU (time_ms: includes the host's submission latency of
  // its first kernel) and graph replay (time_graph_ms: the per-layer cost inside a decode graph).
  std::string table =
      "| batch | context | dense MLA (us) | DSA indexer+top-k (us) | DSA sparse MLA (us) | DSA parts sum (us) | DSA chain (us) | "
      "dense / DSA chain | dense MLA, graph (us) | DSA chain, graph (us) | dense / DSA chain, graph |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  auto ratio = [](double d, double s) { return d < 0 || s <= 0 ? std::string("-") : std::to_string(d / s).substr(0, 5) + "x"; };
  auto us = [](double v) { return v < 0 ? std::string("skipped") : std::to_string(int64_t(v)); };
  for (const Lat& l : lat) {
    char line[320];
    std::snprintf(line, sizeof line, "| %ld | %s | %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %.1f | %s |\n", long(l.b),
                  kfmt(l.L).c_str(), us(l.dense_us).c_str(), l.idx_us, l.sparse_us, l.idx_us + l.sparse_us, l.chain_us,
                  ratio(l.dense_us, l.chain_us).c_str(), us(l.dense_g_us).c_str(), l.chain_g_us,
                  ratio(l.dense_g_us, l.chain_g_us).c_str());
    table += line;
  }
  std::printf("%s", table.c_str());
  if (!cost_csv.empty() && !lat.empty()) {
    int64_t bmax = 0;
    for (const Lat& l : lat) bmax = std::max(bmax, l.b);
    if (FILE* f = std::fopen(cost_csv.c_str(), "a")) {
      std::fprintf(f, "# decode: dsa_gpu_bench on %s: per-layer attention (h=128, topk=2048) by graph replay at batch %ld, "
                      "per token; projections in the rest row\nphase,attention,position,us_per_token\n",
                   prop.name, long(bmax));
      for (const Lat& l : lat) {
        if (l.b != bmax) continue;
        if (l.dense_g_us >= 0) std::fprintf(f, "decode,dense,%ld,%.4f\n", long(l.L), l.dense_g_us / double(l.b));
        std::fprintf(f, "decode,dsa,%ld,%.4f\n", long(l.L), l.chain_g_us / double(l.b));
      }
      std::fclose(f);
    }
  }
  if (!md.empty()) {
    FILE* f = std::fopen(md.c_str(), "w");
    if (f) {
      std::fprintf(f, "device: %s\n\n| kernel | shape | us | TFLOP/s | GB/s | %% of roofline |\n|---|---|---|---|---|---|\n", prop.name);
      for (const Row& r : rows)
        std::fprintf(f, "| %s | %s | %.1f | %.2f | %.1f | %.1f |\n", r.what.c_str(), r.shape.c_str(), r.us, r.tflops, r.gbs, r.pct);
      std::fprintf(f, "\n%s", table.c_str());
      std::fclose(f);
    }
  }
  be.synchronize();
  return 0;
}

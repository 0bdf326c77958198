// CPU op benchmarks (docs/cpu-kernels.md): the machine's memory bandwidth, then the hot ops with
// GB/s (weight / key-cache streaming) and GFLOP/s counters, at dsa-mini and larger shapes.
//   ./build-cpu/bench/dsa_bench --benchmark_filter='Mem|Cpu'
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/simd.h"

namespace {
using namespace dsa;

CpuBackend& be() {
  static CpuBackend b(0);
  return b;
}
std::mt19937& gen() {
  static std::mt19937 g(42);
  return g;
}
Tensor rand_bf16(Shape s, float scale = 1.f) {
  Tensor t = host_tensor(DType::BF16, s);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<uint16_t>()[i] = f32_to_bf16(u(gen()));
  return t;
}
Tensor rand_e4m3(Shape s) {
  Tensor t = host_tensor(DType::E4M3, s);
  for (int64_t i = 0; i < t.numel(); ++i) {
    uint8_t c = uint8_t(gen()() & 0xff);
    t.ptr<uint8_t>()[i] = (c & 0x7f) == 0x7f ? 0 : c;
  }
  return t;
}
Tensor rand_f32(Shape s, float scale = 1.f) {
  Tensor t = host_tensor(DType::F32, s);
  std::uniform_real_distribution<float> u(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = u(gen());
  return t;
}
Batch one_seq(int64_t start, int64_t n, int64_t nblocks) {
  Batch b;
  b.seqs.push_back({start, n, 0, 0});
  for (int64_t i = 0; i < n; ++i) {
    b.positions.push_back(int32_t(start + i));
    b.token_seq.push_back(0);
  }
  b.max_blocks = nblocks;
  for (int64_t i = 0; i < nblocks; ++i) b.block_table.push_back(int32_t(i));
  return b;
}

// ---- memory bandwidth (all threads) ------------------------------------------------------------
void BM_MemRead(benchmark::State& st) {
  const int64_t n = int64_t(512) << 20 >> 3;  // 512 MiB of 64-bit words (integer sum: vectorised)
  std::vector<uint64_t> a(size_t(n), 1);
  for (auto _ : st) {
    uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += a[size_t(i)];
    benchmark::DoNotOptimize(s);
  }
  st.SetBytesProcessed(st.iterations() * n * 8);
}
BENCHMARK(BM_MemRead)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_MemCopy(benchmark::State& st) {
  const int64_t n = int64_t(256) << 20;  // 256 MiB
  std::vector<char> a(size_t(n), 1), b(size_t(n), 0);
  for (auto _ : st) {
#pragma omp parallel
    {
      const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num(), c = n / nt;
      std::memcpy(b.data() + id * c, a.data() + id * c, size_t(id == nt - 1 ? n - id * c : c));
    }
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * n * 2);  // read + write
}
BENCHMARK(BM_MemCopy)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- FP8 linear: args T, N, K, layout (0: row-major as in the file; 1: prepare_weight's panels,
// what the model uses). GB/s counts weight bytes (the decode bound). ---------------------------
void BM_CpuLinearFp8(benchmark::State& st) {
  const int64_t T = st.range(0), N = st.range(1), K = st.range(2);
  Fp8Weight w{rand_e4m3({N, K}), rand_f32({(N + 127) / 128, K / 128}, 0.01f)};
  if (st.range(3)) be().prepare_weight(w);
  Tensor x = rand_bf16({T, K}), out = host_tensor(DType::BF16, {T, N});
  for (auto _ : st) be().linear_fp8(x, w, out);
  st.SetBytesProcessed(st.iterations() * N * K);
  st.counters["GFLOP/s"] = benchmark::Counter(double(st.iterations()) * 2.0 * T * N * K * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CpuLinearFp8)
    ->Args({1, 3072, 128, 1})      // dsa-mini wq_b, decode
    ->Args({1, 4096, 512, 1})      // dsa-mini wkv_b
    ->Args({1, 8192, 8192, 0})     // 64 MiB weight, decode (bandwidth), row-major
    ->Args({1, 8192, 8192, 1})     //   ... panels
    ->Args({1, 16384, 16384, 0})   // 256 MiB weight, decode (DRAM bandwidth), row-major
    ->Args({1, 16384, 16384, 1})   //   ... panels
    ->Args({4, 16384, 16384, 1})
    ->Args({1024, 4096, 512, 1})   // dsa-mini wkv_b, prefill
    ->Args({1024, 2048, 2048, 1})  // prefill, compute bound
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_CpuLinearF32(benchmark::State& st) {  // lm_head (bf16 weight, fp32 out)
  const int64_t T = st.range(0), N = st.range(1), K = st.range(2);
  Tensor w = rand_bf16({N, K}), x = rand_bf16({T, K}), out = host_tensor(DType::F32, {T, N});
  for (auto _ : st) be().linear_f32(x, w, out);
  st.SetBytesProcessed(st.iterations() * N * K * 2);
  st.counters["GFLOP/s"] = benchmark::Counter(double(st.iterations()) * 2.0 * T * N * K * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CpuLinearF32)->Args({1, 8192, 384})->Args({1024, 8192, 384})->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- indexer: args T (new tokens at the end of the context), L (context). --------------------
void BM_CpuIndexerTopk(benchmark::State& st) {
  const int64_t T = st.range(0), L = st.range(1), Hi = 64, nb = (L + kKvBlock - 1) / kKvBlock;
  KvLayer kv{host_tensor(DType::U8, {nb, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {nb, kKvBlock * kIndexTokenBytes})};
  Batch all = one_seq(0, L, nb);
  be().indexer_cache_write(rand_bf16({L, kIndexDim}), kv, all);
  Batch b = one_seq(L - T, T, nb);
  Tensor q = rand_e4m3({T, Hi, kIndexDim}), w = rand_f32({T, Hi}, 0.01f), topk = host_tensor(DType::I32, {T, 256});
  for (auto _ : st) be().indexer_topk(q, w, kv, b, 256, topk);
  double pairs = 0;
  for (int64_t t = 0; t < T; ++t) pairs += double(L - T + t + 1);
  st.SetBytesProcessed(int64_t(st.iterations() * pairs * kIndexTokenBytes));  // key bytes scored
  st.counters["GFLOP/s"] = benchmark::Counter(double(st.iterations()) * pairs * Hi * kIndexDim * 2 * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CpuIndexerTopk)->Args({1, 8192})->Args({1, 65536})->Args({256, 8192})->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- MHA prefill attention: args T = context (one sequence from 0), sparse (0/1). -------------
void BM_CpuAttentionMha(benchmark::State& st) {
  const int64_t T = st.range(0), H = 16, K = 256;
  const bool sparse = st.range(1) != 0;
  Batch b = one_seq(0, T, (T + 63) / 64);
  Tensor q = rand_bf16({T, H, 192}), kv = rand_bf16({T, H, 256}), pe = rand_bf16({T, 64}), out = host_tensor(DType::BF16, {T, H, 128});
  Tensor topk = host_tensor(DType::I32, {T, K});
  double pairs = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = sparse ? std::min<int64_t>(K, t + 1) : t + 1;
    pairs += double(n);
    for (int64_t i = 0; i < K; ++i)
      topk.ptr<int32_t>()[t * K + i] = i < n ? int32_t(t + 1 <= K ? i : (i * 7919 + t) % (t + 1)) : -1;
    if (t + 1 > K) std::sort(topk.ptr<int32_t>() + t * K, topk.ptr<int32_t>() + (t + 1) * K);
  }
  for (auto _ : st) be().attention_mha(q, kv, pe, b, sparse ? &topk : nullptr, 0.135f, out);
  st.counters["GFLOP/s"] = benchmark::Counter(double(st.iterations()) * pairs * H * (192 + 128) * 2 * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CpuAttentionMha)->Args({1024, 0})->Args({4096, 0})->Args({4096, 1})->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- MQA decode attention over the FP8 cache: arg L (context), dense. -------------------------
void BM_CpuAttentionMqa(benchmark::State& st) {
  const int64_t L = st.range(0), H = 16, nb = (L + 63) / 64;
  KvLayer kv{host_tensor(DType::U8, {nb, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {nb, kKvBlock * kIndexTokenBytes})};
  be().mla_cache_write(rand_bf16({L, 512}), rand_bf16({L, 64}), kv, one_seq(0, L, nb));
  Batch b = one_seq(L - 1, 1, nb);
  Tensor ql = rand_bf16({1, H, 512}), qp = rand_bf16({1, H, 64}), out = host_tensor(DType::BF16, {1, H, 512});
  for (auto _ : st) be().attention_mqa(ql, qp, kv, b, nullptr, 0.135f, out);
  st.SetBytesProcessed(st.iterations() * L * kMlaTokenBytes);
  st.counters["GFLOP/s"] = benchmark::Counter(double(st.iterations()) * L * H * (576 + 512) * 2 * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CpuAttentionMqa)->Arg(256)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CpuIsa(benchmark::State& st) {  // reports the dispatched kernel set
  for (auto _ : st) benchmark::DoNotOptimize(cpu::kernels().name);
  st.SetLabel(cpu::kernels().name);
}
BENCHMARK(BM_CpuIsa)->Iterations(1);

}  // namespace

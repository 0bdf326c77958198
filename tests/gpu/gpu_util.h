#pragma once
// Helpers for the GPU tests: the two backends side by side, poisoned device outputs, comparisons.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cuda/cuda_backend.h"
#include "test_util.h"

namespace dsa::test {

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define REQUIRE_GPU() \
  if (!::dsa::test::have_gpu()) GTEST_SKIP() << "no CUDA GPU"

struct Both {
  CpuBackend cpu{4};
  cuda::CudaBackend gpu{0};
  // Device copy of a host tensor.
  Tensor up(const Tensor& h) { return gpu.upload(h); }
  // Device tensor filled with 0xff bytes (NaN for floats, -1 for ints).
  Tensor poisoned(DType t, Shape s) {
    Tensor d = gpu.alloc(t, s);
    if (d.nbytes()) cudaMemset(d.data, 0xff, d.nbytes());
    return d;
  }
  Tensor down(const Tensor& d) {
    Tensor h = host_tensor(d.dtype, d.shape);
    gpu.download(d, h.data);
    return h;
  }
  // A device KV layer whose bytes equal the host one's.
  KvLayer up(const KvLayer& h) { return KvLayer{up(h.mla), up(h.indexer)}; }
};

// Programmatic dependent launch (launch.cuh) for one test on one backend: available() turns it on where the
// GPU has it; the previous setting (KernelConfig::pdl) comes back at scope exit.
struct PdlScope {
  cuda::CudaContext& ctx;
  bool was;
  explicit PdlScope(cuda::CudaBackend& be) : ctx(be.context()), was(be.config().pdl) {}
  ~PdlScope() { ctx.config().pdl = was; }
  bool available() {
    ctx.config().pdl = true;
    return ctx.pdl();
  }
  void set(bool on) { ctx.config().pdl = on; }
};
inline KvLayer host_kv(int64_t nb) {
  KvLayer kv{host_tensor(DType::U8, {nb, kKvBlock * kMlaTokenBytes}), host_tensor(DType::U8, {nb, kKvBlock * kIndexTokenBytes})};
  std::memset(kv.mla.data, 0, kv.mla.nbytes());
  std::memset(kv.indexer.data, 0, kv.indexer.nbytes());
  return kv;
}

inline std::vector<double> as_f64(const Tensor& h) {
  std::vector<double> v(size_t(h.numel()));
  for (int64_t i = 0; i < h.numel(); ++i) {
    switch (h.dtype) {
      case DType::BF16: v[size_t(i)] = bf(h.ptr<uint16_t>()[i]); break;
      case DType::F32: v[size_t(i)] = h.ptr<float>()[i]; break;
      case DType::I32: v[size_t(i)] = h.ptr<int32_t>()[i]; break;
      case DType::E4M3: v[size_t(i)] = e4m3_to_f32(h.ptr<uint8_t>()[i]); break;
      default: ADD_FAILURE() << "as_f64: dtype"; break;
    }
  }
  return v;
}

inline int64_t count_nan(const Tensor& h) {
  int64_t n = 0;
  for (double x : as_f64(h)) n += std::isnan(x);
  return n;
}

// Bytes equal.
inline void expect_same_bytes(const Tensor& gpu_h, const Tensor& cpu_h, const char* what) {
  ASSERT_EQ(gpu_h.nbytes(), cpu_h.nbytes()) << what;
  int64_t diff = 0, first = -1;
  const uint8_t* a = gpu_h.ptr<uint8_t>();
  const uint8_t* b = cpu_h.ptr<uint8_t>();
  for (size_t i = 0; i < gpu_h.nbytes(); ++i)
    if (a[i] != b[i]) {
      if (first < 0) first = int64_t(i);
      ++diff;
    }
  EXPECT_EQ(diff, 0) << what << ": " << diff << " bytes differ, first at byte " << first;
}

// ||gpu - cpu|| / ||cpu|| below tol, no NaN in the GPU result (every element written).
inline double expect_close(const Tensor& gpu_h, const Tensor& cpu_h, double tol, const char* what) {
  EXPECT_EQ(count_nan(gpu_h), count_nan(cpu_h)) << what << ": NaN (unwritten?) elements";
  std::vector<double> a = as_f64(gpu_h), b = as_f64(cpu_h);
  for (size_t i = 0; i < a.size(); ++i)
    if (std::isnan(a[i]) || std::isnan(b[i]) || std::isinf(b[i])) a[i] = b[i] = 0;  // compared above / below
  const double e = rel_l2(a, b);
  EXPECT_LT(e, tol) << what;
  return e;
}

// Both MLA absorb products (q_nope . W_UK and o_lat . W_UV^T, q stride 192) on fresh random inputs, GPU vs CPU.
inline void expect_absorb_matches(Both& be, int64_t T, int64_t H) {
  const int64_t QS = 192;
  Tensor q = rand_bf16({T, H, QS}), w = rand_bf16({H, 256, 512}, 0.05f), ol = rand_bf16({T, H, 512});
  Tensor qc = host_tensor(DType::BF16, {T, H, 512}), qg = be.poisoned(DType::BF16, {T, H, 512});
  be.cpu.mla_absorb_q(q, w, qc);
  be.gpu.mla_absorb_q(be.up(q), be.up(w), qg);
  expect_close(be.down(qg), qc, 2e-3, "mla_absorb_q");
  Tensor oc = host_tensor(DType::BF16, {T, H, 128}), og = be.poisoned(DType::BF16, {T, H, 128});
  be.cpu.mla_absorb_out(ol, w, oc);
  be.gpu.mla_absorb_out(be.up(ol), be.up(w), og);
  expect_close(be.down(og), oc, 2e-3, "mla_absorb_out");
}

// bf16 results that should differ from the CPU's by at most one bf16 ulp in a few elements
// (fp32 summation order only): max |gpu - cpu| <= ulp(|cpu|) and few mismatches.
inline void expect_bf16_near(const Tensor& gpu_h, const Tensor& cpu_h, double max_mismatch_frac, const char* what) {
  ASSERT_EQ(gpu_h.numel(), cpu_h.numel());
  int64_t mism = 0, far = 0, nan = 0;
  for (int64_t i = 0; i < gpu_h.numel(); ++i) {
    const uint16_t a = gpu_h.ptr<uint16_t>()[i], b = cpu_h.ptr<uint16_t>()[i];
    if (a == b) continue;
    const float fa = bf16_to_f32(a), fb = bf16_to_f32(b);
    if (std::isnan(fa) || std::isnan(fb)) { ++nan; continue; }
    ++mism;
    const float ulp = std::max(std::fabs(fb), 1e-30f) * (1.0f / 128.0f);
    if (std::fabs(fa - fb) > ulp * 1.01f) ++far;
  }
  EXPECT_EQ(nan, 0) << what << ": NaN mismatch";
  EXPECT_EQ(far, 0) << what << ": elements more than one bf16 ulp away";
  EXPECT_LE(double(mism), max_mismatch_frac * double(gpu_h.numel()) + 0.5) << what << ": " << mism << " of "
                                                                            << gpu_h.numel() << " differ by one ulp";
}

// Indexer queries (e4m3 [T, Hi, 128]) and head weights (fp32 [T, Hi]); small_ints: q in {-1, 0, 1} with
// dim 0 zero and power-of-two weights, so scores are exact small numbers with many ties.
inline void random_indexer_queries(int64_t T, int64_t Hi, bool small_ints, Tensor& q, Tensor& w) {
  q = rand_e4m3({T, Hi, kIndexDim});
  w = rand_f32({T, Hi}, 0.01f);
  if (!small_ints) return;
  for (int64_t i = 0; i < q.numel(); ++i) {
    const int d = int(i % kIndexDim);
    q.ptr<uint8_t>()[i] = d == 0 ? 0 : f32_to_e4m3(float(int(rng()() % 3) - 1));
  }
  for (int64_t i = 0; i < w.numel(); ++i) w.ptr<float>()[i] = std::ldexp(1.0f, int(rng()() % 4) - 6) * ((rng()() & 1) ? 1 : -1);
}

}  // namespace dsa::test

// CPU linears: act_quant (1x128, ue8m0), the FP8 block-scaled GEMM with per-128 promotion
// (architecture.md §5.1–5.2), fp32 linears and weight dequantisation.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_backend.h"

namespace dsa {

float cpu::quant_group128(const float* x, uint8_t* q) {
  float amax = 0.f;
  for (int i = 0; i < 128; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = ue8m0_scale(amax);
  const float inv = 1.0f / s;  // exact: s is a power of two
  for (int i = 0; i < 128; ++i) q[i] = f32_to_e4m3(std::clamp(x[i] * inv, -kE4m3Max, kE4m3Max));
  return s;
}

void CpuBackend::act_quant(const Tensor& x, Tensor& q, Tensor& s) {
  const int64_t K = x.dim(-1), R = x.numel() / K;
  DSA_CHECK(K % 128 == 0, "act_quant: last dim ", K, " is not a multiple of 128");
  const int64_t G = K / 128;
#pragma omp parallel for if (R * G > 64)
  for (int64_t g = 0; g < R * G; ++g) {
    float v[128];
    const uint16_t* xp = x.ptr<uint16_t>() + g * 128;
    for (int i = 0; i < 128; ++i) v[i] = bf16_to_f32(xp[i]);
    s.ptr<float>()[g] = cpu::quant_group128(v, q.ptr<uint8_t>() + g * 128);
  }
}

namespace {

DSA_KERNEL float dot128(const float* a, const float* b) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < 128; ++i) s += a[i] * b[i];
  return s;
}

DSA_KERNEL float dot_n(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void decode_e4m3_row(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = e4m3_to_f32(src[i]);
}

}  // namespace

void CpuBackend::linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.n();
  DSA_CHECK(w.k() == K, "linear_fp8: input ", x.str(), " does not match weight ", w.w.str());
  DSA_CHECK(K % 128 == 0, "linear_fp8: K = ", K, " is not a multiple of 128");
  const int64_t KB = K / 128;
  // 1. Activations: per-token 1x128 ue8m0 quantisation, decoded back to exact fp32 values.
  std::vector<float> af(static_cast<size_t>(T * K)), as(static_cast<size_t>(T * KB));
  {
    std::vector<uint8_t> aq(static_cast<size_t>(T * K));
    Tensor q{aq.data(), DType::E4M3, {T, K}}, s{as.data(), DType::F32, {T, KB}};
    act_quant(x.view({T, K}), q, s);
#pragma omp parallel for if (T * K > 65536)
    for (int64_t i = 0; i < T * K; ++i) af[i] = e4m3_to_f32(aq[i]);
  }
  // 2. Blocked GEMM: rows of W in chunks, decoded once per chunk and reused for every token.
  const uint8_t* wq = w.w.ptr<uint8_t>();
  const float* ws = w.scale.ptr<float>();
  uint16_t* o = out.ptr<uint16_t>();
  constexpr int64_t NB = 16;
  const int64_t chunks = (N + NB - 1) / NB;
#pragma omp parallel
  {
    std::vector<float> wf(static_cast<size_t>(NB * K));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * NB, n1 = std::min(N, n0 + NB);
      for (int64_t n = n0; n < n1; ++n) decode_e4m3_row(wq + n * K, K, wf.data() + (n - n0) * K);
      for (int64_t t = 0; t < T; ++t) {
        const float* a = af.data() + t * K;
        const float* sa = as.data() + t * KB;
        for (int64_t n = n0; n < n1; ++n) {
          const float* wr = wf.data() + (n - n0) * K;
          const float* sw = ws + (n / 128) * KB;
          float acc = 0.f;
          for (int64_t kb = 0; kb < KB; ++kb)  // promotion: each 128-K partial is scaled, then added
            acc += dot128(a + kb * 128, wr + kb * 128) * (sa[kb] * sw[kb]);
          o[t * N + n] = f32_to_bf16(acc);
        }
      }
    }
  }
}

void CpuBackend::linear_f32(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.dim(0);
  DSA_CHECK(w.dim(1) == K, "linear_f32: input ", x.str(), " does not match weight ", w.str());
  std::vector<float> xf(static_cast<size_t>(T * K));
  for (int64_t i = 0; i < T * K; ++i) xf[i] = bf16_to_f32(x.ptr<uint16_t>()[i]);
  float* o = out.ptr<float>();
  constexpr int64_t NB = 16;
  const int64_t chunks = (N + NB - 1) / NB;
#pragma omp parallel
  {
    std::vector<float> wf(static_cast<size_t>(NB * K));
#pragma omp for schedule(dynamic, 4)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * NB, n1 = std::min(N, n0 + NB);
      for (int64_t n = n0; n < n1; ++n) {
        float* dst = wf.data() + (n - n0) * K;
        if (w.dtype == DType::F32) std::copy_n(w.ptr<float>() + n * K, K, dst);
        else for (int64_t k = 0; k < K; ++k) dst[k] = bf16_to_f32(w.ptr<uint16_t>()[n * K + k]);
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = n0; n < n1; ++n) o[t * N + n] = dot_n(xf.data() + t * K, wf.data() + (n - n0) * K, K);
    }
  }
}

void CpuBackend::dequant_fp8(const Fp8Weight& w, Tensor& out) {
  const int64_t N = w.n(), K = w.k(), KB = w.scale.dim(1);
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      out.ptr<uint16_t>()[n * K + k] =
          f32_to_bf16(e4m3_to_f32(w.w.ptr<uint8_t>()[n * K + k]) * w.scale.ptr<float>()[(n / 128) * KB + k / 128]);
}

}  // namespace dsa

// CPU linears: act_quant (1x128, ue8m0), the FP8 block-scaled GEMM with per-128 promotion
// (architecture.md §5.1–5.2), fp32 linears and weight dequantisation.
// The GEMMs run on the dispatched kernels of simd.h (docs/cpu-kernels.md): one OpenMP region per
// call; work items are (row block, 64-column panel); the weights of a panel are decoded from e4m3
// once per item (packed, k-major) or, for 1..4 rows (decode), streamed straight from the weight.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/simd.h"

namespace dsa {

float cpu::quant_group128(const float* x, uint8_t* q) { return cpu::kernels().quant128_f32_codes(x, q); }

void CpuBackend::act_quant(const Tensor& x, Tensor& q, Tensor& s) {
  const int64_t K = x.dim(-1), R = x.numel() / K;
  DSA_CHECK(K % 128 == 0, "act_quant: last dim ", K, " is not a multiple of 128");
  const int64_t G = K / 128;
  const auto& kn = cpu::kernels();
  const uint16_t* xp = x.ptr<uint16_t>();
  uint8_t* qp = q.ptr<uint8_t>();
  float* sp = s.ptr<float>();
#pragma omp parallel for schedule(static) if (R * G > 4096)
  for (int64_t g = 0; g < R * G; ++g) sp[g] = kn.quant128_bf16_codes(xp + g * 128, qp + g * 128);
}

namespace cpu {
float* thread_work(int64_t floats) {
  static thread_local std::vector<float> buf;
  if (int64_t(buf.size()) < floats + 16) buf.resize(size_t(floats + 16));
  float* p = buf.data();
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}
}  // namespace cpu

namespace {

// Below this many multiply-adds an op runs on the calling thread: a parallel region costs a wake-up
// and a barrier, which on a loaded machine can be a whole scheduler slice (decode steps are full of
// small ops).
constexpr int64_t kParMacs = int64_t(1) << 22;

// Rows per GEMM work item: all of them when few (decode streams every weight once), otherwise
// blocks of 192 (a multiple of every micro-kernel's row count).
int64_t row_block(int64_t T) { return T <= 4 ? T : std::min<int64_t>(T, 192); }

// Runs the GEMM items of out = A . W^T inside an enclosing parallel region (omp for, no wait).
void gemm_items(const cpu::GemmItem& proto, int64_t T, int64_t N) {
  const auto& kn = cpu::kernels();
  const int64_t mb = row_block(T), nmb = (T + mb - 1) / mb, np = (N + 63) / 64;
  float* work = cpu::thread_work(cpu::gemm_work_floats(mb));
#pragma omp for schedule(dynamic, 1) nowait
  for (int64_t item = 0; item < nmb * np; ++item) {
    const int64_t p = item % np, b = item / np;  // consecutive items share a row block
    cpu::GemmItem it = proto;
    const int64_t r0 = b * mb;
    it.m = std::min(mb, T - r0);
    it.a = proto.a + r0 * proto.lda;
    if (it.as) it.as = proto.as + r0 * proto.ldas;
    if (it.out_bf16) it.out_bf16 = proto.out_bf16 + r0 * proto.ldo;
    if (it.out_f32) it.out_f32 = proto.out_f32 + r0 * proto.ldo;
    it.n0 = p * 64;
    it.nc = std::min<int64_t>(64, N - it.n0);
    kn.gemm(it, work);
  }
}

}  // namespace

void CpuBackend::linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.n();
  DSA_CHECK(w.k() == K, "linear_fp8: input ", x.str(), " does not match weight ", w.w.str());
  DSA_CHECK(K % 128 == 0, "linear_fp8: K = ", K, " is not a multiple of 128");
  const int64_t KB = K / 128;
  const auto& kn = cpu::kernels();
  // Activations: per-token 1x128 ue8m0 quantisation, kept as the exact fp32 values of the codes.
  std::vector<float> af(static_cast<size_t>(T * K)), as(static_cast<size_t>(T * KB));
  cpu::GemmItem proto;
  proto.a = af.data();
  proto.lda = K;
  proto.as = as.data();
  proto.ldas = KB;
  proto.w = w.w.ptr<uint8_t>();
  proto.wtype = cpu::WType::E4M3;
  proto.w_panels = w.layout == cpu::kLayoutPanels64;
  proto.K = K;
  proto.ws = w.scale.ptr<float>();
  proto.ldws = w.scale.dim(1);
  proto.out_bf16 = out.ptr<uint16_t>();
  proto.ldo = N;
  const uint16_t* xp = x.ptr<uint16_t>();
#pragma omp parallel if (T * N * K > kParMacs)
  {
#pragma omp for schedule(static)
    for (int64_t g = 0; g < T * KB; ++g) as[size_t(g)] = kn.quant128_bf16_vals(xp + g * 128, af.data() + g * 128);
    gemm_items(proto, T, N);
  }
}

void CpuBackend::linear_f32(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.dim(0);
  DSA_CHECK(w.dim(1) == K, "linear_f32: input ", x.str(), " does not match weight ", w.str());
  const auto& kn = cpu::kernels();
  std::vector<float> xf(static_cast<size_t>(T * K));
  cpu::GemmItem proto;
  proto.a = xf.data();
  proto.lda = K;
  proto.w = w.data;
  proto.wtype = w.dtype == DType::F32 ? cpu::WType::F32 : cpu::WType::BF16;
  proto.K = K;
  proto.out_f32 = out.ptr<float>();
  proto.ldo = N;
  const uint16_t* xp = x.ptr<uint16_t>();
#pragma omp parallel if (T * N * K > kParMacs)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) kn.bf16_to_f32(xp + t * K, xf.data() + t * K, K);
    gemm_items(proto, T, N);
  }
}

void CpuBackend::prepare_weight(Fp8Weight& w) {
  if (w.layout == cpu::kLayoutPanels64) return;
  const int64_t N = w.n(), K = w.k(), NP = (N + 63) / 64;
  Tensor p = host_tensor(DType::E4M3, {NP * 64, K});
  const uint8_t* src = w.w.ptr<uint8_t>();
  uint8_t* dst = p.ptr<uint8_t>();
#pragma omp parallel for if (N * K > kParMacs)
  for (int64_t pb = 0; pb < NP; ++pb)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < 64; ++j) {
        const int64_t n = pb * 64 + j;
        dst[(pb * K + k) * 64 + j] = n < N ? src[n * K + k] : 0;
      }
  p.shape = w.w.shape;  // the logical shape stays [n, k]
  w.w = p;
  w.layout = cpu::kLayoutPanels64;
}

// Element (n, k) of an FP8 weight in either layout.
static inline uint8_t fp8_code(const Fp8Weight& w, int64_t n, int64_t k) {
  const int64_t K = w.k();
  return w.layout == cpu::kLayoutPanels64 ? w.w.ptr<uint8_t>()[((n / 64) * K + k) * 64 + n % 64]
                                          : w.w.ptr<uint8_t>()[n * K + k];
}

void CpuBackend::dequant_fp8(const Fp8Weight& w, Tensor& out) {
  const int64_t N = w.n(), K = w.k(), KB = w.scale.dim(1);
  const auto& kn = cpu::kernels();
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(K));
    std::vector<uint8_t> codes(static_cast<size_t>(K));
#pragma omp for
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* src = w.w.ptr<uint8_t>() + n * K;
      if (w.layout != 0) {
        for (int64_t k = 0; k < K; ++k) codes[size_t(k)] = fp8_code(w, n, k);
        src = codes.data();
      }
      for (int64_t kb = 0; kb * 128 < K; ++kb) {
        const int64_t k0 = kb * 128, kc = std::min<int64_t>(128, K - k0);
        kn.e4m3_to_f32(src + k0, row.data() + k0, kc, w.scale.ptr<float>()[(n / 128) * KB + kb]);
      }
      kn.f32_to_bf16(row.data(), out.ptr<uint16_t>() + n * K, K);
    }
  }
}

}  // namespace dsa

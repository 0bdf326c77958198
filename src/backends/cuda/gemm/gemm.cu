// Linears: act_quant (1x128 ue8m0), fp32 linears, weight dequantisation and the per-head MLA absorb
// products on CUDA cores (one tiled kernel template: 64x64 output tiles, K in chunks of 32 through
// shared memory, fp32 accumulation, each output's K order fixed). The FP8 block-scaled GEMM itself
// (tensor cores / GEMV) lives in fp8_gemm.cu, fast numerics' sm_90a wgmma form in fp8_blockscaled_sm90.cu;
// the small-T fp32 linear (lm_head) in fp8_gemm.cu too.
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/gemm/fp8_blockscaled_sm90.h"
#include "backends/cuda/gemm/fp8_gemm.h"

namespace dsa::cuda {

namespace {

constexpr int BM = 64, BN = 64, BK = 32, NT = 256;

// One warp per 1x128 group g = row * KB + kb; mmajor: the scale goes to s[kb * rows + row].
__global__ void act_quant_kernel(const uint16_t* x, int64_t groups, uint8_t* q, float* s, int64_t KB, int64_t rows,
                                 bool mmajor) {
  const int64_t g = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (g >= groups) return;
  const int l = threadIdx.x;
  const uint2 raw = *reinterpret_cast<const uint2*>(x + g * 128 + l * 4);
  float v[4] = {bf2f(raw.x & 0xffff), bf2f(raw.x >> 16), bf2f(raw.y & 0xffff), bf2f(raw.y >> 16)};
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  amax = warp_max(amax);
  const float sc = ue8m0_scale_dev(amax);
  const float inv = 1.0f / sc;
  const uint32_t packed = uint32_t(quant_e4m3(v[0], inv)) | (uint32_t(quant_e4m3(v[1], inv)) << 8) |
                          (uint32_t(quant_e4m3(v[2], inv)) << 16) | (uint32_t(quant_e4m3(v[3], inv)) << 24);
  *reinterpret_cast<uint32_t*>(q + g * 128 + l * 4) = packed;
  if (l == 0) s[mmajor ? (g % KB) * rows + g / KB : g] = sc;
}

template <typename T> __device__ __forceinline__ float ld(const T* p);
template <> __device__ __forceinline__ float ld<uint16_t>(const uint16_t* p) { return bf2f(*p); }
template <> __device__ __forceinline__ float ld<float>(const float* p) { return *p; }

struct GemmP {
  const void* a; int64_t sAz, sAm;             // A(m, k) = a[z*sAz + m*sAm + k]
  const void* b; int64_t sBz, sBn, sBk;        // B(n, k) = b[z*sBz + n*sBn + k*sBk]
  void* c; int64_t sCz, sCm;                   // C(m, n) = c[z*sCz + m*sCm + n]
  int64_t M, N, K;
  // FP8 promotion: as[m*KB + kb], ws[(n/128)*KB + kb]
  const float* as; const float* ws; int64_t KB;
  // grouped (MoE): rows of group z are [offs[z], offs[z+1]); table[2z] = w, table[2z+1] = ws
  const int32_t* offs; const void* const* table; int which;
};

template <typename AT, typename BT, bool OUT_BF16, bool SCALED>
__global__ void __launch_bounds__(NT) gemm_kernel(GemmP p) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t z = blockIdx.z;
  int64_t m_begin = 0, m_end = p.M;
  const AT* A = static_cast<const AT*>(p.a) + z * p.sAz;
  const BT* B = static_cast<const BT*>(p.b) + z * p.sBz;
  const float* ws = p.ws;
  if (p.offs) {  // grouped: expert z
    m_begin = p.offs[z];
    m_end = p.offs[z + 1];
    A = static_cast<const AT*>(p.a);
    B = static_cast<const BT*>(p.table[6 * z + 2 * p.which]);
    ws = static_cast<const float*>(p.table[6 * z + 2 * p.which + 1]);
  }
  const int64_t m0 = m_begin + int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  if (m0 >= m_end) return;
  float acc[4][4] = {}, part[4][4] = {};
  const bool b_ncontig = p.sBn == 1 && p.sBk != 1;
  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    for (int e = 0; e < BM * BK / NT; ++e) {
      const int idx = tid + e * NT, r = idx / BK, kk = idx % BK;
      const int64_t m = m0 + r, k = k0 + kk;
      As[kk][r] = (m < m_end && k < p.K) ? ld<AT>(A + m * p.sAm + k) : 0.f;
    }
    for (int e = 0; e < BN * BK / NT; ++e) {
      const int idx = tid + e * NT;
      const int r = b_ncontig ? idx % BN : idx / BK, kk = b_ncontig ? idx / BN : idx % BK;
      const int64_t n = n0 + r, k = k0 + kk;
      Bs[kk][r] = (n < p.N && k < p.K) ? ld<BT>(B + n * p.sBn + k * p.sBk) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (SCALED) part[i][j] = fmaf(a[i], b[j], part[i][j]);
          else acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
    }
    __syncthreads();
    if (SCALED && ((k0 + BK) % 128 == 0 || k0 + BK >= p.K)) {  // promotion at the end of each 128-block
      const int64_t kb = k0 / 128;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + ty + 16 * i;
        const float sa = m < m_end ? p.as[m * p.KB + kb] : 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + tx + 16 * j;
          const float sw = n < p.N ? ws[(n / 128) * p.KB + kb] : 0.f;
          acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(part[i][j], __fmul_rn(sa, sw)));
          part[i][j] = 0.f;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= m_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= p.N) continue;
      if (OUT_BF16) static_cast<uint16_t*>(p.c)[z * p.sCz + m * p.sCm + n] = f2bf(acc[i][j]);
      else static_cast<float*>(p.c)[z * p.sCz + m * p.sCm + n] = acc[i][j];
    }
  }
}

__global__ void dequant_kernel(const uint8_t* w, const float* s, int64_t N, int64_t K, int64_t KB, uint16_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * K; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i % K;
    out[i] = f2bf(__fmul_rn(e4m3_to_float(w[i]), s[(n / 128) * KB + k / 128]));
  }
}

template <typename AT, typename BT, bool OUT_BF16, bool SCALED>
void run_gemm(const GemmP& p, int64_t Z, int64_t mtiles) {
  if (p.M == 0 || p.N == 0 || mtiles == 0) return;
  DSA_CHECK(mtiles <= 65535 && Z <= 65535, "gemm: too many tiles (", mtiles, " x ", Z, ")");
  dim3 grid(cdiv(p.N, BN), unsigned(mtiles), unsigned(Z));
  gemm_kernel<AT, BT, OUT_BF16, SCALED><<<grid, NT>>>(p);
  DSA_LAUNCH_CHECK();
}

// A bf16 product for cuBLASLt (blas_lt.h has the meaning of each stride).
LtGemm bf16_gemm(const void* x, int64_t ldx, int64_t sx, const void* w, int64_t ldw, int64_t sw, bool w_kn, void* d,
                 int64_t ldd, int64_t sd, int64_t M, int64_t N, int64_t K, int64_t batch, bool out_f32) {
  LtGemm g;
  g.kind = LtGemm::Kind::Bf16;
  g.out_f32 = out_f32;
  g.x = x; g.ldx = ldx; g.stride_x = sx;
  g.w = w; g.ldw = ldw; g.stride_w = sw; g.w_kn = w_kn;
  g.d = d; g.ldd = ldd; g.stride_d = sd;
  g.M = M; g.N = N; g.K = K; g.batch = batch;
  return g;
}

}  // namespace

void launch_act_quant(const uint16_t* x, int64_t rows, int64_t K, uint8_t* q, float* s, bool s_mmajor) {
  const int64_t groups = rows * (K / 128);
  if (groups == 0) return;
  act_quant_kernel<<<cdiv(groups, 8), dim3(32, 8)>>>(x, groups, q, s, K / 128, rows, s_mmajor);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::act_quant(const Tensor& x, Tensor& q, Tensor& s) {
  const int64_t K = x.dim(-1), R = x.numel() / K;
  DSA_CHECK(K % 128 == 0, "act_quant: last dim ", K, " is not a multiple of 128");
  launch_act_quant(x.ptr<uint16_t>(), R, K, q.ptr<uint8_t>(), s.ptr<float>());
}

void CudaBackend::linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.n();
  DSA_CHECK(w.k() == K, "linear_fp8: input ", x.str(), " does not match weight ", w.w.str());
  DSA_CHECK(K % 128 == 0, "linear_fp8: K = ", K, " is not a multiple of 128");
  if (T == 0) return;
  Tensor q = alloc(DType::E4M3, {T, K}), s = alloc(DType::F32, {T, K / 128});
  const Fp8GemmArgs args{q.ptr<uint8_t>(), s.ptr<float>(), T, K, w.w.ptr<uint8_t>(), w.scale.ptr<float>(), N,
                         out.ptr<uint16_t>(), N};
  bool quantised = false;  // q and s hold the row-major (default) quantisation
  // Fast numerics above the GEMV's 16 rows (Numerics in backend.h): a block-scaled FP8 tensor-core GEMM.
  // First our sm_90a TMA + wgmma kernel (gemm/fp8_blockscaled_sm90.cu), where the device probe says it runs;
  // then cuBLASLt's block-scaled FP8 (no algorithm for it in cuBLASLt 13.1 on H100, newer libraries may have).
  if (numerics_ == Numerics::Fast && T > 16) {
    if (config().fp8_wgmma && fp8_blockscaled_sm90_supports(context(), args)) {
      launch_act_quant(x.ptr<uint16_t>(), T, K, q.ptr<uint8_t>(), s.ptr<float>());
      quantised = true;
      if (launch_fp8_blockscaled_sm90(context(), args)) {
        ++fp8_sm90_runs;
        return;
      }
    } else if (blas_->fp8_blockscaled_possible() && K % 512 == 0) {
      launch_act_quant(x.ptr<uint16_t>(), T, K, q.ptr<uint8_t>(), s.ptr<float>(), true);  // M-major for VEC128
      LtGemm g;
      g.kind = LtGemm::Kind::Fp8;
      g.x = q.data; g.ldx = K;
      g.w = w.w.data; g.ldw = K;
      g.d = out.data; g.ldd = N;
      g.M = T; g.N = N; g.K = K;
      g.x_scale = s.ptr<float>(); g.w_scale = w.scale.ptr<float>();
      if (blas_->run(g)) return;
    }
  }
  if (!quantised) launch_act_quant(x.ptr<uint16_t>(), T, K, q.ptr<uint8_t>(), s.ptr<float>());
  launch_linear_fp8(context(), args);
}

void CudaBackend::linear_f32(const Tensor& x, const Tensor& w, Tensor& out) {
  const int64_t K = x.dim(-1), T = x.numel() / K, N = w.dim(0);
  DSA_CHECK(w.dim(1) == K, "linear_f32: input ", x.str(), " does not match weight ", w.str());
  GemmP p{};
  p.a = x.data; p.sAm = K;
  p.b = w.data; p.sBn = K; p.sBk = 1;
  p.c = out.data; p.sCm = N;
  p.M = T; p.N = N; p.K = K;
  if (T == 0 || N == 0) return;
  if (launch_linear_f32_gemv(x.ptr<uint16_t>(), T, K, w.data, w.dtype == DType::F32, N, out.ptr<float>())) return;
  // bf16 weights: the products are exact in fp32, so tensor cores with fp32 accumulation compute the
  // contract (only the order of the fp32 adds differs), ~50x the CUDA-core kernel's rate (lm_head).
  if (w.dtype == DType::BF16 && blas_->run(bf16_gemm(x.data, K, 0, w.data, K, 0, false, out.data, N, 0, T, N, K, 1, true)))
    return;
  if (w.dtype == DType::F32) run_gemm<uint16_t, float, false, false>(p, 1, cdiv(T, BM));
  else run_gemm<uint16_t, uint16_t, false, false>(p, 1, cdiv(T, BM));
}

void CudaBackend::dequant_fp8(const Fp8Weight& w, Tensor& out) {
  const int64_t N = w.n(), K = w.k(), KB = w.scale.dim(1);
  if (N * K == 0) return;
  dequant_kernel<<<cdiv(std::min<int64_t>(N * K, int64_t(1) << 24), 256), 256>>>(
      w.w.ptr<uint8_t>(), w.scale.ptr<float>(), N, K, KB, out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

void CudaBackend::mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) {
  const int64_t T = q.dim(0), H = q.dim(1), QS = q.dim(2), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2);
  GemmP p{};
  p.a = q.data; p.sAz = QS; p.sAm = H * QS;
  p.b = wkv_b.data; p.sBz = 2 * NOPE * C; p.sBn = 1; p.sBk = C;
  p.c = q_lat.data; p.sCz = C; p.sCm = H * C;
  p.M = T; p.N = C; p.K = NOPE;
  if (blas_->run(bf16_gemm(q.data, H * QS, QS, wkv_b.data, C, 2 * NOPE * C, true, q_lat.data, H * C, C, T, C, NOPE, H,
                           false)))
    return;
  run_gemm<uint16_t, uint16_t, true, false>(p, H, cdiv(T, BM));
}

void CudaBackend::mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) {
  const int64_t T = o_lat.dim(0), H = o_lat.dim(1), NOPE = wkv_b.dim(1) / 2, C = wkv_b.dim(2), DV = NOPE;
  GemmP p{};
  p.a = o_lat.data; p.sAz = C; p.sAm = H * C;
  p.b = static_cast<const uint16_t*>(wkv_b.data) + NOPE * C; p.sBz = 2 * NOPE * C; p.sBn = C; p.sBk = 1;
  p.c = out.data; p.sCz = DV; p.sCm = H * DV;
  p.M = T; p.N = DV; p.K = C;
  if (blas_->run(bf16_gemm(o_lat.data, H * C, C, p.b, C, 2 * NOPE * C, false, out.data, H * DV, DV, T, DV, C, H, false)))
    return;
  run_gemm<uint16_t, uint16_t, true, false>(p, H, cdiv(T, BM));
}

}  // namespace dsa::cuda

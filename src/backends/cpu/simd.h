#pragma once
// Runtime-dispatched CPU kernels (docs/cpu-kernels.md).
//
// One generic kernel source (simd_kernels.inc) is compiled three times, each in its own translation
// unit with its own target (simd_avx512.cpp: AVX-512F/BW/VL/DQ + FMA + F16C; simd_avx2.cpp:
// AVX2 + FMA + F16C; simd_scalar.cpp: baseline x86-64 / any CPU), inside an anonymous namespace so
// no code compiled for a wider ISA can leak into another unit. simd.cpp picks one table at start-up
// with __builtin_cpu_supports (override: DSA_CPU_ISA=avx512|avx2|scalar).
//
// Numerics: every kernel computes exactly what the scalar reference ops compute, up to the order of
// fp32 summation; the bf16 / e4m3 rounding points are kept (backends/backend.h).
#include <cstdint>

namespace dsa::cpu {

// Weight element type of a packed GEMM operand.
enum class WType : uint8_t { E4M3, BF16, F32 };

constexpr uint8_t kLayoutPanels64 = 1;  // Fp8Weight::layout of CpuBackend::prepare_weight

// One GEMM work item: rows [0, m) of A against output columns [n0, n0 + nc) (nc <= 64), all of K.
//   out[r, n] = sum over 128-K blocks kb of  (sum_k a[r,k] * w[n,k]) * (as[r,kb] * ws[n/128, kb])
// for E4M3 weights (the per-128 promotion of architecture.md §5.2; as/ws may not be null), and
//   out[r, n] = sum_k a[r,k] * w[n,k]  for BF16 / F32 weights (as/ws ignored).
// a: fp32 [m][lda] (for E4M3: the exact values of the quantised activations).
// Output bf16 (out_bf16) for E4M3, fp32 (out_f32) otherwise; row stride ldo.
struct GemmItem {
  const float* a = nullptr;
  int64_t lda = 0, m = 0;
  const float* as = nullptr;
  int64_t ldas = 0;
  const void* w = nullptr;
  WType wtype = WType::E4M3;
  bool w_panels = false;  // E4M3 only: w is in 64-row k-major panels, P[n/64][K][64]
  int64_t K = 0;
  const float* ws = nullptr;
  int64_t ldws = 0;
  int64_t n0 = 0, nc = 0;
  uint16_t* out_bf16 = nullptr;
  float* out_f32 = nullptr;
  int64_t ldo = 0;
};

struct Kernels {
  const char* name;
  // Conversions (n arbitrary).
  void (*bf16_to_f32)(const uint16_t* s, float* d, int64_t n);
  void (*f32_to_bf16)(const float* s, uint16_t* d, int64_t n);   // RNE, NaN -> quiet NaN
  void (*e4m3_to_f32)(const uint8_t* s, float* d, int64_t n, float mul);  // d = e4m3(s) * mul
  // act_quant of one 128-group (ue8m0 scale, returned). *_vals writes the exact fp32 values of the
  // e4m3 codes (not multiplied by the scale); *_codes writes the e4m3 bytes.
  float (*quant128_bf16_vals)(const uint16_t* x, float* q);
  float (*quant128_bf16_codes)(const uint16_t* x, uint8_t* q);
  float (*quant128_f32_codes)(const float* x, uint8_t* q);
  // GEMM work item; work must hold gemm_work_floats(m) floats (64-byte aligned).
  void (*gemm)(const GemmItem& it, float* work);
  // Indexer: decode one cache block (64 keys x 128 e4m3 codes) to kt [128][64] fp32 (exact).
  void (*idx_decode_block)(const uint8_t* keys, float* kt);
  // Indexer scores of one query against one decoded block: out[j] = ks[j] * sum_h w[h] *
  // relu(q[h,:] . kt[:, j]) for j < 64. q fp32 [hi][128], w [hi].
  void (*idx_score_block)(const float* q, const float* w, int64_t hi, const float* kt, const float* ks, float* out);
  // Attention (MHA prefill, dense): S[r][j] = bf16(bf16(q[r] . kt[:, j]) * scale) for r < m, j < nk
  // (nk a multiple of 16). q fp32 [m][ldq] (d dims used), kt fp32 [d][ldk].
  void (*att_scores)(const float* q, int64_t ldq, int64_t m, const float* kt, int64_t ldk, int64_t d, int64_t nk,
                     float scale, float* S, int64_t lds);
  // Softmax of one row in place: s[j] (j < n) -> bf16(exp(s - max) / sum); s[j] = 0 for n <= j < npad.
  void (*softmax_bf16)(float* s, int64_t n, int64_t npad);
  // O[r][0:dv] = sum_j P[r][j] * v_j[0:dv] (fp32, one sequential chain over j per output),
  // v_j = v + idx[j] * ldv (idx null: j); r < m, j < nk; dv a multiple of 64.
  void (*att_pv)(const float* P, int64_t ldp, int64_t m, const float* v, int64_t ldv, const int32_t* idx, int64_t nk,
                 int64_t dv, float* O, int64_t ldo);
  // Dot products: out[i] = a . b_i for rows b_i = b + idx[i] * ldb (idx null: i), length n.
  void (*dots)(const float* a, const float* b, int64_t ldb, const int32_t* idx, int64_t cnt, int64_t n, float* out);
  // y[0:n] += sum_i p[i] * x_i  with x_i = x + idx[i] * ldx (idx null: i); n a multiple of 16.
  void (*axpys)(const float* p, const float* x, int64_t ldx, const int32_t* idx, int64_t cnt, int64_t n, float* y);
  // MQA: scores of one token for all heads against cnt dequantised rows r_i = rows + i*576
  // (512 latent | 64 rope): S[h][i] = bf16(bf16(bf16(ql[h].lat) + bf16(qp[h].pe)) * scale).
  void (*mqa_scores)(const float* ql, const float* qp, int64_t H, const float* rows, int64_t cnt, float scale,
                     float* S, int64_t lds);
  // Same with bf16 rows (contiguous, stride ldb / ldx): out[i] = a . b_i;  y += sum_i p[i] * x_i.
  void (*dots_bf16)(const float* a, const uint16_t* b, int64_t ldb, int64_t cnt, int64_t n, float* out);
  void (*axpys_bf16)(const float* p, const uint16_t* x, int64_t ldx, int64_t cnt, int64_t n, float* y);
  // Transposed gather: dst[k][i] = base[idx[i] * ld + k] for k < d (d % 16 == 0), i < cnt rounded
  // up to 16 (zero for i >= cnt).
  void (*gather_t)(const float* base, int64_t ld, const int32_t* idx, int64_t cnt, int64_t d, float* dst, int64_t ldd);
};

const Kernels& kernels();
inline int64_t gemm_work_floats(int64_t m) { return 128 * 64 + 64 * 64 + m * 64 + 64; }

namespace avx512 { const Kernels* table(); }
namespace avx2 { const Kernels* table(); }
namespace scalar { const Kernels* table(); }

}  // namespace dsa::cpu

// AVX-512 (F/BW/VL/DQ) + FMA + F16C instance of the CPU kernels (simd.h).
// Standard headers come first so that nothing from them is compiled for this target.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "backends/cpu/simd.h"
#include "core/dtype.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2")
#include <immintrin.h>

namespace dsa::cpu::avx512 {
namespace {

constexpr int W = 16;
struct V {
  __m512 v;
};
inline V vz() { return {_mm512_setzero_ps()}; }
inline V vset(float f) { return {_mm512_set1_ps(f)}; }
inline V vld(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vst(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline V vadd(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V vsub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V vmul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
// max(a, b) with the NaN rule of std::max(b, a): returns b when either is NaN... (x86 MAXPS:
// the second operand is returned when either is NaN).
inline V vmax(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V vmin(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
inline V vabs(V a) { return {_mm512_abs_ps(a.v)}; }
inline float vhsum(V a) { return _mm512_reduce_add_ps(a.v); }
inline float vhmax(V a) { return _mm512_reduce_max_ps(a.v); }
inline V vld_bf16(const uint16_t* p) {
  __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(x, 16))};
}
// RNE bf16 rounding of the bits (NaN -> quiet NaN), result as 32-bit words with the bf16 in bits 16..31.
inline __m512i bf16_bits(V a) {
  __m512i u = _mm512_castps_si512(a.v);
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                    _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  __mmask16 nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
  return _mm512_and_si512(r, _mm512_set1_epi32(int(0xffff0000u)));
}
inline void vst_bf16(uint16_t* p, V a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_bits(a), 16)));
}
inline V vround_bf16(V a) { return {_mm512_castsi512_ps(bf16_bits(a))}; }
// 16 e4m3 codes -> their values / 256 (exact, via f16 bits; the NaN code decodes as 480/256).
inline V vld_e4m3(const uint8_t* p) {
  __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m256i h = _mm256_slli_epi16(b, 7);
  h = _mm256_add_epi16(h, _mm256_and_si256(h, _mm256_set1_epi16(0x4000)));
  return {_mm512_cvtph_ps(h)};
}
inline V vroundeven(V a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V vselect_lt(V a, V b, V x, V y) {  // a < b ? x : y
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)};
}
inline V vselect_nan(V a, V x, V y) {  // isnan(a) ? x : y
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), y.v, x.v)};
}
inline V vbits_op_round_e4m3(V a) {  // a >= 2^-6, finite, <= 448: RNE to 3 mantissa bits
  __m512i u = _mm512_castps_si512(a.v);
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7ffff),
                                                    _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1))));
  return {_mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(int(0xfff00000u))))};
}
inline V vcopysign(V mag, V sgn) {
  return {_mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag.v), _mm512_castps_si512(sgn.v),
                                                         _mm512_set1_epi32(int(0x80000000u)), 0xd8))};
}
// e4m3 codes of values r already rounded to the e4m3 grid (|r| <= 448, NaN -> 0x7f).
inline void vst_codes(uint8_t* p, V r) {
  __m512 a = _mm512_abs_ps(r.v);
  __m512i u = _mm512_castps_si512(a);
  __m512i normal = _mm512_sub_epi32(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(960));
  __m512i sub = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(512.0f)));
  __mmask16 is_sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ);
  __m512i c = _mm512_mask_blend_epi32(is_sub, normal, sub);
  __mmask16 neg = _mm512_cmp_epi32_mask(_mm512_castps_si512(r.v), _mm512_setzero_si512(), _MM_CMPINT_LT);
  c = _mm512_mask_or_epi32(c, neg, c, _mm512_set1_epi32(0x80));
  c = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(r.v, r.v, _CMP_UNORD_Q), c, _mm512_set1_epi32(0x7f));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(c));
}
// exp(x) for x <= 0 (cephes expf polynomial, ~1 ulp); x < -87.3 (and -inf) -> 0.
inline V vexp(V x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f);
  __mmask16 under = _mm512_cmp_ps_mask(x.v, lo, _CMP_LT_OQ);
  __m512 xv = _mm512_max_ps(x.v, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xv);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  p = _mm512_scalef_ps(p, n);
  return {_mm512_maskz_mov_ps(__mmask16(~under), p)};
}
// In-register transpose of W x W.
inline void vtranspose(V* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  __m512 s[16];
  for (int i = 0; i < 4; ++i) {
    s[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_f32x4(s[c], s[4 + c], 0x88);
    t[c + 4] = _mm512_shuffle_f32x4(s[c], s[4 + c], 0xDD);
    t[c + 8] = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0x88);
    t[c + 12] = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0xDD);
  }
  for (int c = 0; c < 4; ++c) {
    r[c].v = _mm512_shuffle_f32x4(t[c], t[c + 8], 0x88);
    r[c + 8].v = _mm512_shuffle_f32x4(t[c], t[c + 8], 0xDD);
    r[c + 4].v = _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0x88);
    r[c + 12].v = _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0xDD);
  }
}

// Register blocking: GEMM MR rows x NV vectors, indexer HB heads x IV key vectors,
// attention scores AR rows x AV key vectors, P.V PR rows x PV vectors.
constexpr int MR = 6, NV = 4, HB = 6, IV = 4, AR = 6, AV = 4, PR = 6, PV = 4;
constexpr const char* kName = "avx512";

#include "backends/cpu/simd_kernels.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace dsa::cpu::avx512

#pragma GCC pop_options
#else
namespace dsa::cpu::avx512 {
const Kernels* table() { return nullptr; }
}
#endif

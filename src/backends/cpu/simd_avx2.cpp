// AVX2 + FMA + F16C instance of the CPU kernels (simd.h).
// Standard headers come first so that nothing from them is compiled for this target.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "backends/cpu/simd.h"
#include "core/dtype.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#include <immintrin.h>

namespace dsa::cpu::avx2 {
namespace {

constexpr int W = 8;
struct V {
  __m256 v;
};
inline V vz() { return {_mm256_setzero_ps()}; }
inline V vset(float f) { return {_mm256_set1_ps(f)}; }
inline V vld(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vst(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline V vfma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V vadd(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V vsub(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline V vmul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V vmax(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }  // second operand when either is NaN
inline V vmin(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }
inline V vabs(V a) { return {_mm256_and_ps(a.v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)))}; }
inline float vhsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(V a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V vld_bf16(const uint16_t* p) {
  __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(x, 16))};
}
inline __m256i bf16_bits(V a) {
  __m256i u = _mm256_castps_si256(a.v);
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                    _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
  return _mm256_and_si256(r, _mm256_set1_epi32(int(0xffff0000u)));
}
inline void vst_bf16(uint16_t* p, V a) {
  __m256i h = _mm256_srli_epi32(bf16_bits(a), 16);
  __m256i pk = _mm256_packus_epi32(h, h);
  pk = _mm256_permute4x64_epi64(pk, 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(pk));
}
inline V vround_bf16(V a) { return {_mm256_castsi256_ps(bf16_bits(a))}; }
inline V vld_e4m3(const uint8_t* p) {
  __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  __m128i h = _mm_slli_epi16(b, 7);
  h = _mm_add_epi16(h, _mm_and_si128(h, _mm_set1_epi16(0x4000)));
  return {_mm256_cvtph_ps(h)};
}
inline V vroundeven(V a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V vselect_lt(V a, V b, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))}; }
inline V vselect_nan(V a, V x, V y) { return {_mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q))}; }
inline V vbits_op_round_e4m3(V a) {
  __m256i u = _mm256_castps_si256(a.v);
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7ffff),
                                                    _mm256_and_si256(_mm256_srli_epi32(u, 20), _mm256_set1_epi32(1))));
  return {_mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(int(0xfff00000u))))};
}
inline V vcopysign(V mag, V sgn) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)));
  return {_mm256_or_ps(_mm256_andnot_ps(m, mag.v), _mm256_and_ps(m, sgn.v))};
}
inline void vst_codes(uint8_t* p, V r) {
  alignas(32) float f[8];
  vst(f, r);
  for (int i = 0; i < 8; ++i) p[i] = f32_to_e4m3(f[i]);  // exact: r is on the e4m3 grid
}
inline V vexp(V x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  __m256 under = _mm256_cmp_ps(x.v, lo, _CMP_LT_OQ);
  __m256 xv = _mm256_max_ps(x.v, lo);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xv, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xv);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n for n in [-126, 0]: exponent bits; p * 2^n in two steps keeps subnormal results exact.
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i h1 = _mm256_srai_epi32(ni, 1);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h1, _mm256_set1_epi32(127)), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h1), _mm256_set1_epi32(127)), 23));
  p = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  return {_mm256_andnot_ps(under, p)};
}
inline void vtranspose(V* r) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c].v = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[c + 4].v = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}

constexpr int MR = 6, NV = 2, HB = 6, IV = 2, AR = 6, AV = 2, PR = 6, PV = 2;
constexpr const char* kName = "avx2";

#include "backends/cpu/simd_kernels.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace dsa::cpu::avx2

#pragma GCC pop_options
#else
namespace dsa::cpu::avx2 {
const Kernels* table() { return nullptr; }
}
#endif

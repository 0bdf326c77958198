#pragma once
// Scalar types and their exact conversions.
//   bf16  : round-to-nearest-even from fp32 (as torch's .to(bfloat16)).
//   e4m3  : float8_e4m3fn (no infinities, 0x7f/0xff are NaN, max finite 448), RNE with
//           saturation applied by the caller's clamp (architecture.md §5.1).
//   ue8m0 : power-of-two fp32 scales, s = 2^ceil(log2(amax/448)) (architecture.md §5.1, §10.9).
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace dsa {

enum class DType : uint8_t { F32, F64, BF16, F16, E4M3, I8, U8, I16, I32, I64, BOOL };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);           // safetensors spelling: "F32", "BF16", "F8_E4M3", ...
bool dtype_from_name(std::string_view s, DType* out);

// ---- bf16 -----------------------------------------------------------------------------
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // RNE
  return uint16_t(u >> 16);
}
// Round an fp32 value through bf16 and back (the reference's bf16 rounding points).
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// ---- f16 (loader only) ----------------------------------------------------------------
float f16_to_f32(uint16_t h);

// ---- e4m3 (float8_e4m3fn) -------------------------------------------------------------
extern const float kE4m3ToF32[256];           // exact decode table
inline float e4m3_to_f32(uint8_t b) { return kE4m3ToF32[b]; }
uint8_t f32_to_e4m3(float f);                 // RNE; |f| > 448 saturates to ±448; NaN -> 0x7f
constexpr float kE4m3Max = 448.0f;

// ---- ue8m0 power-of-two scales --------------------------------------------------------
// s = 2^ceil(log2(v)) for v > 0, computed on the float bits exactly like the reference's
// act_quant kernel: exponent - 127, plus one when the mantissa is nonzero.
inline float pow2_ceil(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  int e = int((u >> 23) & 0xff) - 127 + ((u & 0x7fffff) != 0 ? 1 : 0);
  uint32_t r = uint32_t(e + 127) << 23;
  float s;
  std::memcpy(&s, &r, 4);
  return s;
}
// Scale for one 128-group with the given absolute maximum (amax clamped at 1e-4 first).
inline float ue8m0_scale(float amax) {
  if (amax < 1e-4f) amax = 1e-4f;
  return pow2_ceil(amax * (1.0f / 448.0f));
}

}  // namespace dsa

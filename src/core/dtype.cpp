#include "core/dtype.h"

#include <array>
#include <cmath>

namespace dsa {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: case DType::I16: return 2;
    case DType::E4M3: case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

namespace {
struct NameEntry { DType t; std::string_view name; };
constexpr NameEntry kNames[] = {
    {DType::F32, "F32"}, {DType::F64, "F64"}, {DType::BF16, "BF16"}, {DType::F16, "F16"},
    {DType::E4M3, "F8_E4M3"}, {DType::I8, "I8"}, {DType::U8, "U8"}, {DType::I16, "I16"},
    {DType::I32, "I32"}, {DType::I64, "I64"}, {DType::BOOL, "BOOL"},
};
}  // namespace

std::string_view dtype_name(DType t) {
  for (auto& e : kNames)
    if (e.t == t) return e.name;
  return "?";
}

bool dtype_from_name(std::string_view s, DType* out) {
  for (auto& e : kNames)
    if (e.name == s) { *out = e.t; return true; }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(float(man), -24);
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = std::ldexp(float(man | 0x400), int(exp) - 25);
  return sign ? -v : v;
}

static std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) {
    int sign = b >> 7, exp = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (exp == 15 && man == 7) v = NAN;
    else if (exp == 0) v = std::ldexp(float(man), -9);       // subnormal: man/8 * 2^-6
    else v = std::ldexp(float(8 + man), exp - 7 - 3);
    t[b] = sign ? -v : v;
  }
  return t;
}
static const std::array<float, 256> kTable = make_e4m3_table();
const float kE4m3ToF32[256] = {
#define R(i) kTable[i]
#define R8(i) R(i), R(i + 1), R(i + 2), R(i + 3), R(i + 4), R(i + 5), R(i + 6), R(i + 7)
    R8(0),   R8(8),   R8(16),  R8(24),  R8(32),  R8(40),  R8(48),  R8(56),
    R8(64),  R8(72),  R8(80),  R8(88),  R8(96),  R8(104), R8(112), R8(120),
    R8(128), R8(136), R8(144), R8(152), R8(160), R8(168), R8(176), R8(184),
    R8(192), R8(200), R8(208), R8(216), R8(224), R8(232), R8(240), R8(248),
#undef R8
#undef R
};

uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7e;                       // saturate (callers clamp first)
  if (a < 0.015625f) {                                       // below 2^-6: subnormal grid 2^-9
    int q = int(std::nearbyint(a * 512.0f));                 // RNE; q == 8 is the min normal
    return sign | uint8_t(q);
  }
  int e;
  std::frexp(a, &e);                                         // a = m * 2^e, m in [0.5, 1)
  e -= 1;                                                    // a in [2^e, 2^(e+1))
  int q = int(std::nearbyint(std::ldexp(a, 3 - e)));         // in [8, 16]
  if (q == 16) { q = 8; e += 1; }
  if (e > 8 || (e == 8 && q > 14)) return sign | 0x7e;
  return sign | uint8_t(((e + 7) << 3) | (q - 8));
}

}  // namespace dsa

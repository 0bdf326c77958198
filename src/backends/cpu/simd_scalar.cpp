// Portable instance of the CPU kernels (simd.h): an 8-lane "vector" of plain floats, compiled for
// the baseline ISA (the compiler vectorises the lane loops with SSE2). Used on CPUs without AVX2.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "backends/cpu/simd.h"
#include "core/dtype.h"

namespace dsa::cpu::scalar {
namespace {

constexpr int W = 8;
struct V {
  float v[W];
};
#define DSA_LANES(expr) \
  V o;                  \
  for (int i = 0; i < W; ++i) o.v[i] = (expr); \
  return o
inline V vz() { DSA_LANES(0.f); }
inline V vset(float f) { DSA_LANES(f); }
inline V vld(const float* p) { DSA_LANES(p[i]); }
inline void vst(float* p, V a) { for (int i = 0; i < W; ++i) p[i] = a.v[i]; }
inline V vfma(V a, V b, V c) { DSA_LANES(a.v[i] * b.v[i] + c.v[i]); }
inline V vadd(V a, V b) { DSA_LANES(a.v[i] + b.v[i]); }
inline V vsub(V a, V b) { DSA_LANES(a.v[i] - b.v[i]); }
inline V vmul(V a, V b) { DSA_LANES(a.v[i] * b.v[i]); }
inline V vmax(V a, V b) { DSA_LANES(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }  // b when either is NaN
inline V vmin(V a, V b) { DSA_LANES(a.v[i] < b.v[i] ? a.v[i] : b.v[i]); }
inline V vabs(V a) { DSA_LANES(std::fabs(a.v[i])); }
inline float vhsum(V a) { float s = 0.f; for (int i = 0; i < W; ++i) s += a.v[i]; return s; }
inline float vhmax(V a) { float s = a.v[0]; for (int i = 1; i < W; ++i) s = a.v[i] > s ? a.v[i] : s; return s; }
inline V vld_bf16(const uint16_t* p) { DSA_LANES(bf16_to_f32(p[i])); }
inline void vst_bf16(uint16_t* p, V a) { for (int i = 0; i < W; ++i) p[i] = f32_to_bf16(a.v[i]); }
inline V vround_bf16(V a) { DSA_LANES(round_bf16(a.v[i])); }
inline V vld_e4m3(const uint8_t* p) { DSA_LANES(e4m3_to_f32(p[i]) * (1.0f / 256.0f)); }
inline V vroundeven(V a) { DSA_LANES(std::nearbyint(a.v[i])); }
inline V vselect_lt(V a, V b, V x, V y) { DSA_LANES(a.v[i] < b.v[i] ? x.v[i] : y.v[i]); }
inline V vselect_nan(V a, V x, V y) { DSA_LANES(std::isnan(a.v[i]) ? x.v[i] : y.v[i]); }
inline V vbits_op_round_e4m3(V a) {
  V o;
  for (int i = 0; i < W; ++i) {
    uint32_t u;
    std::memcpy(&u, &a.v[i], 4);
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    std::memcpy(&o.v[i], &u, 4);
  }
  return o;
}
inline V vcopysign(V mag, V sgn) { DSA_LANES(std::copysign(mag.v[i], sgn.v[i])); }
inline void vst_codes(uint8_t* p, V r) { for (int i = 0; i < W; ++i) p[i] = f32_to_e4m3(r.v[i]); }
inline V vexp(V x) { DSA_LANES(std::exp(x.v[i])); }
inline void vtranspose(V* r) {
  for (int i = 0; i < W; ++i)
    for (int j = i + 1; j < W; ++j) {
      const float t = r[i].v[j];
      r[i].v[j] = r[j].v[i];
      r[j].v[i] = t;
    }
}
#undef DSA_LANES

constexpr int MR = 4, NV = 1, HB = 4, IV = 1, AR = 4, AV = 1, PR = 4, PV = 1;
constexpr const char* kName = "scalar";

#include "backends/cpu/simd_kernels.inc"

}  // namespace
const Kernels* table() { return &kTable; }
}  // namespace dsa::cpu::scalar

// Start-up choice of the CPU kernel table (simd.h).
#include "backends/cpu/simd.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace dsa::cpu {

namespace {
const Kernels* choose() {
  const char* env = std::getenv("DSA_CPU_ISA");
  const std::string_view want = env ? env : "";
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (want != "scalar" && want != "avx2" && has512 && avx512::table()) return avx512::table();
  if (want != "scalar" && has2 && avx2::table()) return avx2::table();
#endif
  return scalar::table();
}
}  // namespace

const Kernels& kernels() {
  static const Kernels* k = choose();
  return *k;
}

}  // namespace dsa::cpu

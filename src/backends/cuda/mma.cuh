#pragma once
// Warp-level tensor-core and async-copy helpers shared by the CUDA kernels (PTX available on sm_80+):
// ldmatrix, mma.sync m16n8k16 bf16 with fp32 accumulation, cp.async 16-byte copies.
#include <cstdint>

namespace dsa::cuda::mma {

__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// c += a (16x16, row) * b (16x8, col)
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// One k16 step of a 16 x 32 warp tile, c[n] += A (16 x 16) * B^T (32 rows, stride LDB): a, b and b16 (= b
// + 16 rows) are the ldmatrix addresses (the caller's lane-dependent bases plus the step's offset).
__device__ __forceinline__ void mma_16x32_k16(float (&c)[4][4], const uint16_t* a, const uint16_t* b, const uint16_t* b16) {
  uint32_t fa[4], fb[4], fb2[4];
  ldsm4(fa, a);
  ldsm4(fb, b);
  ldsm4(fb2, b16);
  mma16816(c[0], fa, fb[0], fb[1]);
  mma16816(c[1], fa, fb[2], fb[3]);
  mma16816(c[2], fa, fb2[0], fb2[1]);
  mma16816(c[3], fa, fb2[2], fb2[3]);
}
__device__ __forceinline__ void cp16(void* smem, const void* gmem) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

}  // namespace dsa::cuda::mma

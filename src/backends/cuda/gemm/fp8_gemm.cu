// FP8 block-scaled GEMM (architecture.md §5.2): out[m,n] = bf16(sum_kb dot128(a, w) * (as[m,kb] * ws[n/128,kb]))
// on tensor cores, plain and grouped (MoE), plus the small-T fp32 linear (lm_head GEMV).
// Design and numbers: docs/fp8-gemm-cuda.md.
//
// Numerics (the CPU reference's, cpu/simd_kernels.inc): each 128-wide K block is an exact-product,
// fp32-accumulated dot product ("part"); the promotion is acc = part * s for the first block and
// acc = fma(part, s, acc) after, s = as * ws (one fp32 product), in ascending kb; bf16 once at the end.
// The tensor-core path multiplies e4m3 values converted to f16 (exact: every e4m3 is an f16) with
// mma.sync m16n8k16 f16 -> f32. On Hopper this *is* what mma.sync e4m3 compiles to (the legacy FP8
// mma is emulated through the f16 tensor cores), and unlike the FP8 wgmma (whose accumulator keeps
// ~22 bits, SageAttention2 / DeepSeek-V3 §3.5.2) it accumulates in fp32. Only the order of the fp32
// adds inside a 128 block differs from the CPU.
//
// Kernels:
//   fp8_mma_kernel<MI>  BM = 32*MI rows x 128 columns per CTA (8 warps, 2 x 4, warp tile 16*MI x 32),
//                       K step 128 = one promotion block, 4-stage cp.async pipeline, XOR-swizzled
//                       128-byte smem rows read with ldmatrix (conflict-free), e4m3 -> f16 in registers.
//   fp8_gemv_kernel     <= 16 rows: weights streamed once with 16-byte loads straight into mma
//                       fragments (the k order inside a block is free), 8 warps split the K blocks of
//                       8*nt columns; per-block partial sums and the promotion scales go to smem and
//                       one thread per output runs the promotion chain in ascending kb from smem
//                       (deterministic, same chain as above).
// Grouped (MoE) launches are persistent: each CTA scans offs once, then walks the (expert row tile,
// column tile) items, so experts without rows cost nothing.
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/gemm/fp8_gemm.h"

#include <algorithm>

namespace dsa::cuda {

namespace {

struct Fp8P {
  const uint8_t* a; const float* as;   // e4m3 [rows, K], scales [rows, KB]
  const uint8_t* w; const float* ws;   // plain: weight [N, K], scales [ceil(N/128), KB]
  uint16_t* out; int64_t ldo;
  int64_t M, N, K; int KB;
  // grouped: rows [offs[e], offs[e+1]) use table[6e + 2which] (w), table[6e + 2which + 1] (ws)
  const int32_t* offs; const void* const* table; int which, E;
};

// ---- small PTX wrappers ----------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool full) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(full ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint4 ld_stream16(const void* p) {  // weights: read once, keep L1 for the rest
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Four e4m3 codes (bytes 0..3) -> two f16x2: lo = (byte0, byte1), hi = (byte2, byte3). Exact.
// sm_89+: the hardware conversion (true values). Older targets (the compute_80 PTX): bit moves that
// give the values times 2^-8 — the f16 exponent bias is 8 more than e4m3's — so a product is
// 2^-16 of the true one, exactly (no f16/fp32 underflow for e4m3 inputs); kPartScale undoes it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define DSA_FP8_PART_SCALE 1.0f
#else
#define DSA_FP8_PART_SCALE 65536.0f
#endif
__device__ __forceinline__ void e4m3x4_to_f16x2(uint32_t x, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
      : "=r"(lo), "=r"(hi) : "r"(x));
#else
  const uint32_t u0 = __byte_perm(x, 0, 0x4140), u1 = __byte_perm(x, 0, 0x4342);  // each byte in a 16-bit half
  lo = (u0 + (u0 & 0x00800080u)) << 7;  // sign to bit 15, exponent|mantissa to bits 7..13
  hi = (u1 + (u1 & 0x00800080u)) << 7;
#endif
}

// Persistent grouped scheduling: prefix[e] = row tiles (of bm rows) of experts < e, in smem.
// Called by all threads; ends with a barrier.
__device__ void group_prefix(const int32_t* offs, int E, int bm, int* prefix) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x, per = (E + 31) / 32;
    int cnt = 0;
    for (int i = 0; i < per; ++i) {
      const int e = lane * per + i;
      if (e < E) cnt += (offs[e + 1] - offs[e] + bm - 1) / bm;
    }
    int inc = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += v;
    }
    int run = inc - cnt;
    for (int i = 0; i < per; ++i) {
      const int e = lane * per + i;
      if (e < E) {
        prefix[e] = run;
        run += (offs[e + 1] - offs[e] + bm - 1) / bm;
      }
    }
    if (lane == 31) prefix[E] = inc;
  }
  __syncthreads();
}
// The expert owning row tile `slot` (prefix[e] <= slot < prefix[e+1], skipping empty experts).
__device__ __forceinline__ int group_of(const int* prefix, int E, int slot) {
  int lo = 0, hi = E - 1;  // last e with prefix[e] <= slot
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= slot) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

constexpr int kMaxE = 256;

// ---- tensor-core kernel ----------------------------------------------------------------------
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr int kGroupM = 8;  // plain: row tiles per rasterisation group (A and W tiles of a wave stay in L2)

template <int MI> constexpr int mma_smem_bytes() { return kStages * (32 * MI + 128) * 128; }

template <int MI>
__global__ void __launch_bounds__(kThreads, MI == 4 ? 1 : 2) fp8_mma_kernel(Fp8P p, int items) {
  constexpr int BM = 32 * MI;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int prefix[kMaxE + 1];
  uint8_t* sA = smem;                          // [kStages][BM][128] e4m3, 16-byte chunks XOR-swizzled by row
  uint8_t* sB = smem + kStages * BM * 128;     // [kStages][128][128]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 1, wn = warp >> 1, g = lane >> 2, t4 = lane & 3;
  const int KB = p.KB;
  const int64_t K = p.K, N = p.N;
  const int ntn = int((N + 127) / 128);
  int total = items;
  if (p.offs) {
    group_prefix(p.offs, p.E, BM, prefix);
    total = prefix[p.E] * ntn;
  }
  for (int item = blockIdx.x; item < total; item += gridDim.x) {
    int64_t m0, m_end, n0;
    const uint8_t* W = p.w;
    const float* WS = p.ws;
    if (p.offs) {
      const int slot = item / ntn, e = group_of(prefix, p.E, slot);
      n0 = int64_t(item % ntn) * 128;
      m0 = p.offs[e] + int64_t(slot - prefix[e]) * BM;
      m_end = p.offs[e + 1];
      W = static_cast<const uint8_t*>(p.table[6 * e + 2 * p.which]);
      WS = static_cast<const float*>(p.table[6 * e + 2 * p.which + 1]);
    } else {  // grouped rasterisation: kGroupM row tiles x all column tiles, rows fastest
      const int mtiles = int((p.M + BM - 1) / BM);
      const int grp = item / (kGroupM * ntn), first = grp * kGroupM;
      const int gm = min(kGroupM, mtiles - first), r = item - grp * kGroupM * ntn;
      m0 = int64_t(first + r % gm) * BM;
      n0 = int64_t(r / gm) * 128;
      m_end = p.M;
    }
    const float* WSr = WS + (n0 / 128) * KB;

    auto load_stage = [&](int stage, int kb) {
      const int64_t k0 = int64_t(kb) * 128;
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int idx = tid + i * kThreads, row = idx >> 3, c = idx & 7;
        const bool ok = m0 + row < m_end;
        const uint8_t* src = p.a + (ok ? (m0 + row) * K + k0 + c * 16 : 0);
        cp_async16(smem_u32(sA + (stage * BM + row) * 128 + ((c ^ (row & 7)) << 4)), src, ok);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int idx = tid + i * kThreads, row = idx >> 3, c = idx & 7;
        const bool ok = n0 + row < N;
        const uint8_t* src = W + (ok ? (n0 + row) * K + k0 + c * 16 : 0);
        cp_async16(smem_u32(sB + (stage * 128 + row) * 128 + ((c ^ (row & 7)) << 4)), src, ok);
      }
    };

    float acc[MI][4][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int nj = 0; nj < 4; ++nj)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mi][nj][q] = 0.f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < KB) load_stage(s, s);
      cp_async_commit();
    }
    for (int kb = 0; kb < KB; ++kb) {
      cp_async_wait<kStages - 2>();
      __syncthreads();
      {
        const int nk = kb + kStages - 1;
        if (nk < KB) load_stage(nk % kStages, nk);
        cp_async_commit();
      }
      // promotion scales of this block (loaded early, used after the MMAs)
      float sa[MI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = m0 + wm * (16 * MI) + mi * 16 + g + 8 * h;
          sa[mi][h] = row < m_end ? p.as[row * KB + kb] : 0.f;
        }
      const float sw = WSr[kb];

      float part[MI][4][4];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int nj = 0; nj < 4; ++nj)
#pragma unroll
          for (int q = 0; q < 4; ++q) part[mi][nj][q] = 0.f;

      const int stage = kb % kStages;
      const uint32_t a_base = smem_u32(sA + stage * BM * 128), b_base = smem_u32(sB + stage * 128 * 128);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {  // 32 K per step: two m16n8k16 per (mi, nj)
        uint32_t bh[4][2][2];           // [nj][k half][b0/b1]
#pragma unroll
        for (int nj2 = 0; nj2 < 2; ++nj2) {
          const int row = wn * 32 + nj2 * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int c = ks * 2 + ((lane >> 3) & 1);
          uint32_t r0, r1, r2, r3;
          ldsm_x4(b_base + row * 128 + ((c ^ (row & 7)) << 4), r0, r1, r2, r3);
          e4m3x4_to_f16x2(r0, bh[2 * nj2][0][0], bh[2 * nj2][0][1]);
          e4m3x4_to_f16x2(r1, bh[2 * nj2][1][0], bh[2 * nj2][1][1]);
          e4m3x4_to_f16x2(r2, bh[2 * nj2 + 1][0][0], bh[2 * nj2 + 1][0][1]);
          e4m3x4_to_f16x2(r3, bh[2 * nj2 + 1][1][0], bh[2 * nj2 + 1][1][1]);
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
          const int row = wm * (16 * MI) + mi * 16 + (lane & 15);
          const int c = ks * 2 + (lane >> 4);
          uint32_t r0, r1, r2, r3;  // A[g][c], A[g+8][c], A[g][c+1], A[g+8][c+1] (4 codes each)
          ldsm_x4(a_base + row * 128 + ((c ^ (row & 7)) << 4), r0, r1, r2, r3);
          uint32_t l0, h0, l1, h1, l2, h2, l3, h3;
          e4m3x4_to_f16x2(r0, l0, h0);
          e4m3x4_to_f16x2(r1, l1, h1);
          e4m3x4_to_f16x2(r2, l2, h2);
          e4m3x4_to_f16x2(r3, l3, h3);
          // k permutation shared by A and B: mma k (2t, 2t+1) <- codes 4t, 4t+1; (2t+8, 2t+9) <- 4t+2, 4t+3
#pragma unroll
          for (int nj = 0; nj < 4; ++nj) {
            mma16816(part[mi][nj], l0, l1, h0, h1, bh[nj][0][0], bh[nj][0][1]);
            mma16816(part[mi][nj], l2, l3, h2, h3, bh[nj][1][0], bh[nj][1][1]);
          }
        }
      }
      // promotion: acc = part * s (first block), fma(part, s, acc) after — the CPU's chain
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const float s0 = __fmul_rn(__fmul_rn(sa[mi][0], sw), DSA_FP8_PART_SCALE);
        const float s1 = __fmul_rn(__fmul_rn(sa[mi][1], sw), DSA_FP8_PART_SCALE);
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
          if (kb == 0) {
            acc[mi][nj][0] = __fmul_rn(part[mi][nj][0], s0);
            acc[mi][nj][1] = __fmul_rn(part[mi][nj][1], s0);
            acc[mi][nj][2] = __fmul_rn(part[mi][nj][2], s1);
            acc[mi][nj][3] = __fmul_rn(part[mi][nj][3], s1);
          } else {
            acc[mi][nj][0] = __fmaf_rn(part[mi][nj][0], s0, acc[mi][nj][0]);
            acc[mi][nj][1] = __fmaf_rn(part[mi][nj][1], s0, acc[mi][nj][1]);
            acc[mi][nj][2] = __fmaf_rn(part[mi][nj][2], s1, acc[mi][nj][2]);
            acc[mi][nj][3] = __fmaf_rn(part[mi][nj][3], s1, acc[mi][nj][3]);
          }
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next item's prologue overwrites the stages

    // epilogue: bf16, two columns per store where aligned
    const bool pair_ok = (p.ldo % 2) == 0;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + wm * (16 * MI) + mi * 16 + g + 8 * h;
        if (row >= m_end) continue;
        uint16_t* orow = p.out + row * p.ldo;
#pragma unroll
        for (int nj = 0; nj < 4; ++nj) {
          const int64_t col = n0 + wn * 32 + nj * 8 + 2 * t4;
          const uint16_t v0 = f2bf(acc[mi][nj][2 * h]), v1 = f2bf(acc[mi][nj][2 * h + 1]);
          if (pair_ok && col + 1 < N) {
            *reinterpret_cast<uint32_t*>(orow + col) = uint32_t(v0) | (uint32_t(v1) << 16);
          } else {
            if (col < N) orow[col] = v0;
            if (col + 1 < N) orow[col + 1] = v1;
          }
        }
      }
  }
}

// ---- GEMV kernel (<= 16 rows) ------------------------------------------------------------------
// One 64-wide K chunk of one 8-column tile: lane (g, t) holds codes [16t, 16t+16) of weight row g and
// of activation rows g (x) and g+8 (y); four m16n8k16 cover the chunk.
template <bool M16>
__device__ __forceinline__ void gemv_chunk(float (&c)[4], const uint4& w, const uint4& x, const uint4& y) {
  const uint32_t wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w}, yv[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t bl, bh, al, ah, yl = 0, yh = 0;
    e4m3x4_to_f16x2(wv[j], bl, bh);
    e4m3x4_to_f16x2(xv[j], al, ah);
    if (M16) e4m3x4_to_f16x2(yv[j], yl, yh);
    mma16816(c, al, yl, ah, yh, bl, bh);
  }
}

template <bool M16>
__global__ void __launch_bounds__(kThreads) fp8_gemv_kernel(Fp8P p, int nt, int rmax, int items_n) {
  extern __shared__ float tsm[];  // [KB][rmax][8*nt] per-block partial sums, then ssm [rmax][KB] scales
  __shared__ int prefix[kMaxE + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int S = 8 / nt, tile = warp % nt, split = warp / nt, W8 = 8 * nt;
  const int KB = p.KB;
  const int64_t K = p.K, N = p.N;
  float* ssm = tsm + size_t(KB) * rmax * W8;
  int total = items_n;
  if (p.offs) {
    group_prefix(p.offs, p.E, 16, prefix);
    total = prefix[p.E] * items_n;
  }
  for (int item = blockIdx.x; item < total; item += gridDim.x) {
    int64_t m0 = 0, m_end = p.M, n_cta;
    const uint8_t* W = p.w;
    const float* WS = p.ws;
    if (p.offs) {
      const int slot = item / items_n, e = group_of(prefix, p.E, slot);
      n_cta = int64_t(item % items_n) * W8;
      m0 = p.offs[e] + int64_t(slot - prefix[e]) * 16;
      m_end = p.offs[e + 1];
      W = static_cast<const uint8_t*>(p.table[6 * e + 2 * p.which]);
      WS = static_cast<const float*>(p.table[6 * e + 2 * p.which + 1]);
    } else {
      n_cta = int64_t(item) * W8;
    }
    const int R = int(m_end - m0 < (M16 ? 16 : 8) ? m_end - m0 : (M16 ? 16 : 8));
    {  // promotion scales of the CTA's rows (its 8*nt columns share one 128-row weight-scale block)
      const float* wsb = WS + (n_cta / 128) * KB;
      for (int idx = threadIdx.x; idx < R * KB; idx += kThreads) {
        const int r = idx / KB, kb = idx - r * KB;
        ssm[idx] = __fmul_rn(__fmul_rn(p.as[(m0 + r) * KB + kb], wsb[kb]), DSA_FP8_PART_SCALE);
      }
    }
    const int64_t n = n_cta + tile * 8 + g;
    const bool nok = n < N, xok = g < R, yok = M16 && g + 8 < R;
    const uint8_t* wr = W + (nok ? n * K : 0) + t4 * 16;
    const uint8_t* xr = p.a + (m0 + (xok ? g : 0)) * K + t4 * 16;
    const uint8_t* yr = p.a + (m0 + (yok ? g + 8 : 0)) * K + t4 * 16;
    const uint4 z = make_uint4(0, 0, 0, 0);
    // two blocks in flight per warp: loads of block kb + S are issued before block kb's MMAs
    uint4 w0 = z, w1 = z, x0 = z, x1 = z, y0 = z, y1 = z;
    auto load = [&](int kb, uint4& a, uint4& b, uint4& c, uint4& d, uint4& e, uint4& f) {
      const int64_t k = int64_t(kb) * 128;
      a = nok ? ld_stream16(wr + k) : z;
      b = nok ? ld_stream16(wr + k + 64) : z;
      c = xok ? __ldg(reinterpret_cast<const uint4*>(xr + k)) : z;
      d = xok ? __ldg(reinterpret_cast<const uint4*>(xr + k + 64)) : z;
      if (M16) {
        e = yok ? __ldg(reinterpret_cast<const uint4*>(yr + k)) : z;
        f = yok ? __ldg(reinterpret_cast<const uint4*>(yr + k + 64)) : z;
      }
    };
    if (split < KB) load(split, w0, w1, x0, x1, y0, y1);
    for (int kb = split; kb < KB; kb += S) {
      uint4 nw0 = z, nw1 = z, nx0 = z, nx1 = z, ny0 = z, ny1 = z;
      if (kb + S < KB) load(kb + S, nw0, nw1, nx0, nx1, ny0, ny1);
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      gemv_chunk<M16>(c, w0, x0, y0);
      gemv_chunk<M16>(c, w1, x1, y1);
      float* ts = tsm + size_t(kb) * rmax * W8 + tile * 8 + 2 * t4;
      if (xok) { ts[g * W8] = c[0]; ts[g * W8 + 1] = c[1]; }
      if (yok) { ts[(g + 8) * W8] = c[2]; ts[(g + 8) * W8 + 1] = c[3]; }
      w0 = nw0; w1 = nw1; x0 = nx0; x1 = nx1; y0 = ny0; y1 = ny1;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < R * W8; idx += kThreads) {
      const int r = idx / W8, col = idx - r * W8;
      const int64_t nn = n_cta + col;
      if (nn >= N) continue;
      const float* sp = ssm + r * KB;
      const float* tp = tsm + size_t(r) * W8 + col;
      float acc = __fmul_rn(tp[0], sp[0]);
#pragma unroll 8
      for (int kb = 1; kb < KB; ++kb) acc = __fmaf_rn(tp[size_t(kb) * rmax * W8], sp[kb], acc);
      p.out[(m0 + r) * p.ldo + nn] = f2bf(acc);
    }
    __syncthreads();  // tsm is reused by the next item
  }
}

// ---- fp32 GEMV (lm_head, gate, indexer weights_proj at decode) --------------------------------
template <bool WF32, int MR>
__global__ void __launch_bounds__(kThreads) f32_gemv_kernel(const uint16_t* x, int T, int64_t K, const void* w,
                                                            int64_t N, float* out) {
  const int64_t n = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  float acc[MR];
#pragma unroll
  for (int r = 0; r < MR; ++r) acc[r] = 0.f;
  for (int64_t k = int64_t(lane) * 8; k < K; k += 256) {
    float wv[8];
    if (WF32) {
      const float* wr = static_cast<const float*>(w) + n * K + k;
      const uint4 a = ld_stream16(wr), b = ld_stream16(wr + 4);
      const uint32_t u[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) wv[i] = __uint_as_float(u[i]);
    } else {
      const uint4 a = ld_stream16(static_cast<const uint16_t*>(w) + n * K + k);
      const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wv[2 * i] = __uint_as_float(u[i] << 16);
        wv[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
      }
    }
#pragma unroll
    for (int r = 0; r < MR; ++r) {
      if (r >= T) break;
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(x + int64_t(r) * K + k));
      const uint32_t u[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[r] = __fmaf_rn(__uint_as_float(u[i] << 16), wv[2 * i], acc[r]);
        acc[r] = __fmaf_rn(__uint_as_float(u[i] & 0xffff0000u), wv[2 * i + 1], acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    if (r >= T) break;
    const float s = warp_sum(acc[r]);
    if (lane == 0) out[int64_t(r) * N + n] = s;
  }
}

// ---- host side -----------------------------------------------------------------------------
template <int MI>
void run_mma(const CudaContext& ctx, const Fp8P& p, int64_t T_bound) {
  ctx.smem_attr(fp8_mma_kernel<MI>, size_t(mma_smem_bytes<MI>()));
  constexpr int BM = 32 * MI;
  const int64_t ntn = (p.N + 127) / 128;
  int64_t grid, items = 0;
  if (p.offs) {  // persistent: enough CTAs to fill the GPU, never more than the items can be
    const int64_t bound = int64_t(p.E) * ((T_bound + BM - 1) / BM) * ntn;
    grid = std::min<int64_t>(bound, int64_t(ctx.facts().sms) * (MI == 4 ? 1 : 2));
  } else {
    items = ((p.M + BM - 1) / BM) * ntn;
    grid = items;
  }
  if (grid <= 0) return;
  DSA_CHECK(grid < (int64_t(1) << 31) && items < (int64_t(1) << 31), "fp8 gemm: too many tiles");
  fp8_mma_kernel<MI><<<unsigned(grid), kThreads, mma_smem_bytes<MI>()>>>(p, int(items));
  DSA_LAUNCH_CHECK();
}

// GEMV launch if the shape fits it (rows <= 16, smem for the partial sums); false otherwise.
bool run_gemv(const CudaContext& ctx, const Fp8P& p, int64_t rows) {
  const size_t optin = ctx.facts().smem_optin;
  if (rows > 16 || rows <= 0) return false;
  const int KB = p.KB;
  int S = 8;
  while (S > 1 && S > KB) S /= 2;  // K splits per column tile: no more than there are blocks
  const int nt = 8 / S;
  const int rmax = int(rows);
  const size_t smem = (size_t(KB) * rmax * 8 * nt + size_t(rmax) * KB) * sizeof(float);
  if (smem > optin - 2048) return false;
  const int64_t items_n = (p.N + 8 * nt - 1) / (8 * nt);
  int64_t grid = items_n;
  if (p.offs) grid = std::min<int64_t>(int64_t(p.E) * items_n, int64_t(ctx.facts().sms) * 8);
  if (grid <= 0) return true;
  DSA_CHECK(items_n < (int64_t(1) << 24), "fp8 gemv: N too large");
  auto go = [&](auto kern) {
    ctx.smem_attr(kern, optin - 2048);  // the dynamic smem cap, raised once per instantiation and device
    kern<<<unsigned(grid), kThreads, smem>>>(p, nt, rmax, int(items_n));
    DSA_LAUNCH_CHECK();
  };
  if (rows > 8) go(fp8_gemv_kernel<true>);
  else go(fp8_gemv_kernel<false>);
  return true;
}

void run_fp8(const CudaContext& ctx, Fp8P p, int64_t rows_bound) {
  if (p.N == 0 || rows_bound == 0 || p.K == 0) return;
  DSA_CHECK(p.K % 128 == 0, "fp8 gemm: K = ", p.K, " is not a multiple of 128");
  DSA_CHECK(!p.offs || p.E <= kMaxE, "fp8 gemm: ", p.E, " groups (at most ", kMaxE, ")");
  Fp8Path path = ctx.config().fp8_gemm;
  if (path == Fp8Path::Auto) path = rows_bound <= 16 ? Fp8Path::Gemv : Fp8Path::Mma;
  if (path == Fp8Path::Gemv && run_gemv(ctx, p, rows_bound)) return;
  if (path == Fp8Path::Mma64) return run_mma<2>(ctx, p, rows_bound);
  if (path == Fp8Path::Mma32) return run_mma<1>(ctx, p, rows_bound);
  // The largest row tile whose pipeline fits this GPU's shared memory per block (sm_86/89: 99 KB
  // rules out the 128-row tile; sm_80 and sm_90 take all three).
  const size_t optin = ctx.facts().smem_optin;
  const int mi_max = size_t(mma_smem_bytes<4>()) + 1024 <= optin ? 4 : size_t(mma_smem_bytes<2>()) + 1024 <= optin ? 2 : 1;
  auto run_mi = [&](int mi) {
    mi = std::min(mi, mi_max);
    if (mi == 4) return run_mma<4>(ctx, p, rows_bound);
    if (mi == 2) return run_mma<2>(ctx, p, rows_bound);
    return run_mma<1>(ctx, p, rows_bound);
  };
  if (p.offs) {  // grouped: by the expected rows per expert (top-8 routing), so short experts waste little
    const int64_t avg = rows_bound * 8 / std::max(p.E, 1);
    return run_mi(avg <= 32 ? 1 : avg <= 64 ? 2 : 4);
  }
  // Row tile: 128 when that still gives every SM work, else 64 / 32 (more CTAs for short M).
  const int64_t ntn = (p.N + 127) / 128, sms = ctx.facts().sms;
  auto tiles = [&](int64_t bm) { return (rows_bound + bm - 1) / bm * ntn; };
  if (tiles(128) >= 2 * sms) return run_mi(4);
  if (tiles(64) >= sms) return run_mi(2);
  return run_mi(1);
}

}  // namespace

void launch_linear_fp8(const CudaContext& ctx, const Fp8GemmArgs& a) {
  Fp8P p{};
  p.a = a.a; p.as = a.as; p.w = a.w; p.ws = a.ws;
  p.out = a.out; p.ldo = a.ldo;
  p.M = a.M; p.N = a.N; p.K = a.K; p.KB = int(a.K / 128);
  run_fp8(ctx, p, a.M);
}

void launch_linear_fp8_grouped(const CudaContext& ctx, const uint8_t* a, const float* as, int64_t M, int64_t K, const void* const* table,
                               int which, const int32_t* offs, int64_t E, int64_t N, uint16_t* out) {
  if (E == 0) return;
  Fp8P p{};
  p.a = a; p.as = as;
  p.out = out; p.ldo = N;
  p.M = M; p.N = N; p.K = K; p.KB = int(K / 128);
  p.offs = offs; p.table = table; p.which = which; p.E = int(E);
  run_fp8(ctx, p, M);  // M: the most rows any one expert has (moe_experts: tokens)
}

bool launch_linear_f32_gemv(const uint16_t* x, int64_t T, int64_t K, const void* w, bool w_f32, int64_t N,
                            float* out) {
  if (T < 1 || T > 8 || K % 8 != 0 || N == 0) return false;
  const unsigned grid = cdiv(N, 8);
  const int t = int(T);
#define DSA_F32_GEMV(MR)                                                                           \
  do {                                                                                             \
    if (w_f32) f32_gemv_kernel<true, MR><<<grid, kThreads>>>(x, t, K, w, N, out);                  \
    else f32_gemv_kernel<false, MR><<<grid, kThreads>>>(x, t, K, w, N, out);                       \
  } while (0)
  if (T == 1) DSA_F32_GEMV(1);
  else if (T <= 2) DSA_F32_GEMV(2);
  else if (T <= 4) DSA_F32_GEMV(4);
  else DSA_F32_GEMV(8);
#undef DSA_F32_GEMV
  DSA_LAUNCH_CHECK();
  return true;
}

}  // namespace dsa::cuda

// MLA decode scores (kernel A of the stored-scores design, docs/mla-decode-cuda.md) on Hopper
// tensor cores: wgmma with both operands in 128B-swizzled shared memory, warp-specialised.
//
// Why: the portable mqa_score_kernel (mma.sync + ldmatrix, 16 x 32 warp tiles) is bound by
// shared-memory operand traffic and by its barrier-separated phases (gather -> dequantise -> mma ->
// epilogue, ~13k cycles per 64 x 64 tile). Here the phases overlap:
//  - warp groups 1-2 (256 threads, "producers") gather the 656-byte FP8 rows of the candidates
//    straight into registers (one tile ahead), dequantise them (exact e4m3 x 2^k -> bf16) into one
//    of two swizzled K tiles and hand it over through a named barrier (FULL[b]); the slot
//    resolution (top-k index -> block table) runs two tiles ahead, off the critical path;
//  - warp group 0 ("consumer") keeps Q (64 heads x 576 bf16) in shared memory and runs
//    wgmma m64n32k16 over the two 32-candidate halves of each tile into separate accumulators
//    (latent 32 k-steps and RoPE 4 k-steps apart: the reference rounds each product), so the exact
//    epilogue of one half (bf16 rounding steps, mask, online max / sum, bf16 score store) runs
//    while the tensor cores multiply the other half or the next tile's first half.
// Same grid and outputs as mqa_score_kernel: CTA = one token x 64 heads x one split; S [T, H, KP],
// ms [T, H, NS, 2], error bits.
#include <cuda_bf16.h>

#include "backends/cuda/launch.cuh"
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mla/decode_common.cuh"
#include "backends/cuda/mla/decode_sm90.h"
#include "backends/cuda/wgmma.cuh"

namespace dsa::cuda {

namespace {

using namespace mqa;

constexpr int kThreads = 384;  // warp group 0: wgmma + epilogue; warp groups 1-2: gather + dequantise
constexpr int kTileBytes = 9 * 8192;  // 64 rows x 576 bf16: 9 swizzle atoms of 64 x 128 bytes
constexpr size_t kSmem = 1024 /*align slack*/ + 3 * size_t(kTileBytes) /*Q, K x 2*/ + 2 * 64 * 4 /*slots*/;

#if DSA_WGMMA
constexpr int kBarFull = 1, kBarEmpty = 3, kBarQ = 5;  // named barriers (+ buffer index)

// S(half) = Q . K(half)^T: 32 latent k-steps into al, 4 RoPE k-steps into ar; one commit group.
__device__ __forceinline__ void issue_scores(float (&al)[16], float (&ar)[16], uint64_t dq, uint64_t dk) {
  wgmma::fence_operand(al);
  wgmma::fence_operand(ar);
  wgmma::fence();
#pragma unroll
  for (int ks = 0; ks < 32; ++ks) {
    const uint64_t off = uint64_t((ks >> 2) * 8192 + (ks & 3) * 32) >> 4;  // descriptor address unit: 16 B
    wgmma::m64n32k16_bf16(al, dq + off, dk + off, ks > 0);
  }
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const uint64_t off = uint64_t(8 * 8192 + ks * 32) >> 4;
    wgmma::m64n32k16_bf16(ar, dq + off, dk + off, ks > 0);
  }
  wgmma::commit();  // no register access to al / ar until the matching wait (ptxas would serialise)
}

__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);  // cvt.rn.bf16x2.f32: = f2bf for non-NaN values
  return *reinterpret_cast<const uint32_t*>(&b);
}
__device__ __forceinline__ float bf_lo(uint32_t b) { return __uint_as_float(b << 16); }
__device__ __forceinline__ float bf_hi(uint32_t b) { return __uint_as_float(b & 0xffff0000u); }

// Exact scores of one 64 x 32 half from its accumulators (d[4j + e]: head row gid (+8 for e >= 2),
// candidate 8j + 2tq + (e & 1)): s = bf16(bf16(bf16(lat) + bf16(rope)) * scale), -inf where the
// candidate has no slot (bit 2j + (e & 1) of valid clear); online (max, sum) of the thread's two
// rows; bf16 pairs stored to the score rows s0 / s1 (already offset to this half and 2tq).
__device__ __forceinline__ void score_epilogue(const float (&al)[16], const float (&ar)[16], uint32_t valid, float scale,
                                               float (&m)[2], float (&su)[2], uint16_t* s0, uint16_t* s1, bool ok0,
                                               bool ok1) {
  float x[16];
  uint32_t bits[8];
#pragma unroll
  for (int v = 0; v < 16; v += 2) {
    const uint32_t l = bf16x2_bits(al[v], al[v + 1]), r = bf16x2_bits(ar[v], ar[v + 1]);
    const uint32_t sum = bf16x2_bits(__fadd_rn(bf_lo(l), bf_lo(r)), __fadd_rn(bf_hi(l), bf_hi(r)));
    uint32_t s = bf16x2_bits(__fmul_rn(bf_lo(sum), scale), __fmul_rn(bf_hi(sum), scale));
    const int j = v / 4;
    if (!(valid >> (2 * j) & 1)) s = (s & 0xffff0000u) | 0xff80u;
    if (!(valid >> (2 * j + 1) & 1)) s = (s & 0x0000ffffu) | 0xff800000u;
    bits[v / 2] = s;
    x[v] = bf_lo(s);
    x[v + 1] = bf_hi(s);
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float tm = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) tm = fmaxf(tm, fmaxf(x[4 * j + 2 * hf], x[4 * j + 2 * hf + 1]));
    if (tm > -INFINITY) {  // exp(-inf - finite) = 0: masked candidates and an empty running max add 0
      const float mn = fmaxf(m[hf], tm);
      float acc = su[hf] * expf(m[hf] - mn);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc += expf(x[4 * j + 2 * hf] - mn) + expf(x[4 * j + 2 * hf + 1] - mn);
      }
      su[hf] = acc;
      m[hf] = mn;
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (ok0) *reinterpret_cast<uint32_t*>(s0 + 8 * j) = bits[2 * j];
    if (ok1) *reinterpret_cast<uint32_t*>(s1 + 8 * j) = bits[2 * j + 1];
  }
}

// Producer: one row's share (4 threads per row, quarter q) of a gathered cache row: latent chunks
// q + 4i (i < 8; 16 e4m3 each, lanes read 64 contiguous bytes per row), the 4 scales, RoPE bytes
// 32q .. 32q + 31.
__device__ __forceinline__ void load_row_part(uint4 (&v)[11], const uint8_t* cache, int slot, int q) {
  if (slot < 0) return;
  const uint4* src = reinterpret_cast<const uint4*>(cache + int64_t(slot) * kMlaTokenBytes);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __ldg(src + q + 4 * i);
  v[8] = __ldg(src + kScalesOff / 16);
  v[9] = __ldg(src + kRopeOff / 16 + 2 * q);
  v[10] = __ldg(src + kRopeOff / 16 + 2 * q + 1);
}
#endif  // DSA_WGMMA

__global__ void __launch_bounds__(kThreads, 1) mqa_score_sm90_kernel(DecP p) {
  pdl_wait();  // launched through launch_chained (launch.cuh)
  pdl_launch_next();  // after the wait: the P.V kernel reads the top-k indices before its own wait
#if DSA_WGMMA
  extern __shared__ uint8_t smraw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smraw) + 1023) & ~uintptr_t(1023));
  uint8_t* qt = base;                                              // Q tile
  uint8_t* kt = base + kTileBytes;                                 // [2] K tiles
  int* slots = reinterpret_cast<int*>(base + 3 * kTileBytes);      // [2][64] slot of each tile row
  const int t = blockIdx.x, h0 = blockIdx.y * 64, split = blockIdx.z, tid = threadIdx.x;
  const int posn = p.pos[t];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  const int64_t c_begin = int64_t(split) * p.tiles_per * 64, c_end = min(n, c_begin + int64_t(p.tiles_per) * 64);
  const int ntiles = c_begin < c_end ? int((c_end - c_begin + 63) / 64) : 0;

  if (tid >= 128) {  // ---- producers -------------------------------------------------------------
    const int pt = tid - 128, r = pt >> 2, q = pt & 3;
    // Slot pipeline in which no instruction waits on a load issued in the same tile: during tile
    // j the top-k index of tile j + 3 is loaded, the index of tile j + 2 (loaded during j - 1) is
    // checked and its block-table entry loaded, and the slot of tile j + 1 is formed from the
    // entry loaded during j - 1 (then its gather is issued). Branching on the block-table value
    // right after loading it (as cand_resolve does) stalled the producers two L2 round trips per tile.
    const int32_t* bt_row = p.bt + int64_t(p.tseq[t]) * p.mb;
    auto idx_of = [&](int j) { return cand_idx(p, t, c_begin + int64_t(j) * 64 + r, c_end); };
    auto checked = [&](int idx) {  // -1: no candidate
      if (idx < -1 || idx > posn) {
        atomicOr(p.err, kErrTopk);
        return -1;
      }
      return idx;
    };
    auto blk_of = [&](int idx) { return idx >= 0 ? __ldg(bt_row + idx / int(kKvBlock)) : -1; };
    auto slot_from = [&](int idx, int blk) {
      if (idx < 0) return -1;
      if (blk < 0) {
        atomicOr(p.err, kErrBlock);
        return -1;
      }
      return blk * int(kKvBlock) + idx % int(kKvBlock);
    };
    const int i0 = checked(idx_of(0));
    int s_cur = slot_from(i0, blk_of(i0));
    int i1 = checked(idx_of(1)), b1 = blk_of(i1);  // tile j + 1 during iteration j
    int i2 = idx_of(2);                            // tile j + 2, not checked yet
    uint4 cur[11];
    load_row_part(cur, p.cache, s_cur, q);
    const uint4 z = make_uint4(0, 0, 0, 0);
    for (int j = 0; j < ntiles; ++j) {
      const int s_nxt = slot_from(i1, b1);
      uint4 nxt[11];
#pragma unroll
      for (int i = 0; i < 11; ++i) nxt[i] = z;
      if (j + 1 < ntiles) load_row_part(nxt, p.cache, s_nxt, q);  // in flight during this tile
      i1 = checked(i2);
      b1 = blk_of(i1);
      i2 = idx_of(j + 3);
      const int buf = j & 1;
      if (j >= 2) wgmma::bar_sync(kBarEmpty + buf, kThreads);      // the consumer is done with tile j - 2
      uint8_t* tile = kt + buf * kTileBytes;
      const float* sc = reinterpret_cast<const float*>(&cur[8]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {  // latent dims 16 (q + 4i) .. +15: atom i, 16-byte chunks 2q, 2q + 1
        uint4 lo = z, hi = z;
        if (s_cur >= 0) {
          const float s = sc[i >> 1];
          lo = make_uint4(deq2(cur[i].x, s), deq2(cur[i].x >> 16, s), deq2(cur[i].y, s), deq2(cur[i].y >> 16, s));
          hi = make_uint4(deq2(cur[i].z, s), deq2(cur[i].z >> 16, s), deq2(cur[i].w, s), deq2(cur[i].w >> 16, s));
        }
        *reinterpret_cast<uint4*>(tile + wgmma::sw128_offset(r, 8 * i + 2 * q)) = lo;
        *reinterpret_cast<uint4*>(tile + wgmma::sw128_offset(r, 8 * i + 2 * q + 1)) = hi;
      }
      *reinterpret_cast<uint4*>(tile + wgmma::sw128_offset(r, 64 + 2 * q)) = s_cur >= 0 ? cur[9] : z;
      *reinterpret_cast<uint4*>(tile + wgmma::sw128_offset(r, 65 + 2 * q)) = s_cur >= 0 ? cur[10] : z;
      if (q == 0) slots[buf * 64 + r] = s_cur;
      wgmma::fence_proxy_async();  // generic stores -> the consumer's wgmma reads
      wgmma::bar_arrive(kBarFull + buf, kThreads);
#pragma unroll
      for (int i = 0; i < 11; ++i) cur[i] = nxt[i];
      s_cur = s_nxt;
    }
    return;
  }

  // ---- consumer (warp group 0) ------------------------------------------------------------------
  const int warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  // Q (heads >= H zero) -> swizzled bf16 tile by cp.async: all 36 copies of a thread in flight at once.
  // (Loads into registers went one L2 round trip per 16 bytes — load, branch, store: ~15 us of fixed cost
  // per CTA, measured at b=1 where every CTA holds one tile.)
  q_tile_async<128>(p, t, h0, tid, [&](int h, int c) { return qt + wgmma::sw128_offset(h, c); });
  mma::cp_commit();
  mma::cp_wait<0>();
  wgmma::fence_proxy_async();
  wgmma::bar_sync(kBarQ, 128);
  const uint64_t dq = wgmma::desc_sw128(qt), dk0 = wgmma::desc_sw128(kt);
  constexpr uint64_t kTileDesc = kTileBytes >> 4, kHalfDesc = (32 * 128) >> 4;  // rows 32..63 of a tile
  float al0[16], ar0[16], al1[16], ar1[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) al0[i] = ar0[i] = al1[i] = ar1[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, su[2] = {0.f, 0.f};  // rows 16 warp + gid, + 8
  const int row0 = 16 * warp + gid;
  const bool ok0 = h0 + row0 < p.H, ok1 = h0 + row0 + 8 < p.H;
  uint16_t* srow0 = p.S + (int64_t(t) * p.H + h0 + row0) * p.KP + c_begin + 2 * tq;
  uint16_t* srow1 = srow0 + 8 * p.KP;
  auto tile_valid = [&](int buf) {  // bit 8 half + 2 jj + e: candidate 32 half + 8 jj + 2 tq + e has a slot
    uint32_t v = 0;
#pragma unroll
    for (int b = 0; b < 16; ++b) v |= uint32_t(slots[buf * 64 + (b >> 3) * 32 + ((b >> 1) & 3) * 8 + 2 * tq + (b & 1)] >= 0) << b;
    return v;
  };
  // Pipeline: half 1 of a tile runs while half 0's epilogue executes; the next tile's half 0 is
  // issued before half 1's epilogue but waited for (wait<0>): with both epilogues overlapped (two
  // wait<1>), ptxas 13 serialises every wgmma of the kernel (C7514). Peeled last tile: no
  // data-dependent branch between an issue and its wait.
  if (ntiles > 0) {
    wgmma::bar_sync(kBarFull, kThreads);
    issue_scores(al0, ar0, dq, dk0);
    issue_scores(al1, ar1, dq, dk0 + kHalfDesc);
    for (int j = 0; j + 1 < ntiles; ++j) {
      const int buf = j & 1;
      const uint32_t valid = tile_valid(buf);
      const int64_t c0 = int64_t(j) * 64;
      wgmma::wait<1>();  // half 0 of tile j done
      wgmma::fence_operand(al0);
      wgmma::fence_operand(ar0);
      score_epilogue(al0, ar0, valid, p.scale, m, su, srow0 + c0, srow1 + c0, ok0, ok1);
      wgmma::bar_sync(kBarFull + (buf ^ 1), kThreads);
      issue_scores(al0, ar0, dq, dk0 + (buf ^ 1) * kTileDesc);
      wgmma::wait<0>();
      wgmma::fence_operand(al1);
      wgmma::fence_operand(ar1);
      if (j + 2 < ntiles) wgmma::bar_arrive(kBarEmpty + buf, kThreads);  // tile j's buffer is free
      score_epilogue(al1, ar1, valid >> 8, p.scale, m, su, srow0 + c0 + 32, srow1 + c0 + 32, ok0, ok1);
      issue_scores(al1, ar1, dq, dk0 + (buf ^ 1) * kTileDesc + kHalfDesc);
    }
    const uint32_t valid = tile_valid((ntiles - 1) & 1);
    const int64_t c0 = int64_t(ntiles - 1) * 64;
    wgmma::wait<1>();
    wgmma::fence_operand(al0);
    wgmma::fence_operand(ar0);
    score_epilogue(al0, ar0, valid, p.scale, m, su, srow0 + c0, srow1 + c0, ok0, ok1);
    wgmma::wait<0>();
    wgmma::fence_operand(al1);
    wgmma::fence_operand(ar1);
    score_epilogue(al1, ar1, valid >> 8, p.scale, m, su, srow0 + c0 + 32, srow1 + c0 + 32, ok0, ok1);
  }
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[hf], o), so = __shfl_xor_sync(0xffffffffu, su[hf], o);
      stat_merge(m[hf], su[hf], mo, so);
    }
  if (tq == 0)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      if (hf ? ok1 : ok0) {
        float* o = p.ms + ((int64_t(t) * p.H + h0 + row0 + 8 * hf) * p.NS + split) * 2;
        o[0] = m[hf];
        o[1] = su[hf];
      }
#else
  __trap();  // never launched: DeviceFacts::mqa_sm90 is false for this build of the kernel
#endif
}

}  // namespace

void probe_mqa(CudaContext& ctx, DeviceFacts& f) {
  f.mqa_sm90 = f.sm90a_sass && ctx.try_smem_attr(mqa_score_sm90_kernel, size_t(kSmem));
}

void launch_mqa_score_sm90(const CudaContext& ctx, const DecP& p, dim3 grid) {
  DSA_CHECK(ctx.facts().mqa_sm90, "MLA decode (sm90): the wgmma scores kernel does not run on this device");
  launch_chained(ctx, mqa_score_sm90_kernel, grid, dim3(kThreads), kSmem, 1, p);
  DSA_LAUNCH_CHECK();
}

}  // namespace dsa::cuda

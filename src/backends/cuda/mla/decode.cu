// MLA decode (absorbed MQA form) straight from the 656-byte FP8 cache, on tensor cores (mma.sync,
// portable sm_80+), with stored scores: docs/mla-decode-cuda.md.
//
// The reference rounds the probabilities to bf16 *after* normalisation, so P.V needs each row's
// final max and sum before it can start. Instead of recomputing Q.K in a second pass, kernel A
// computes the exact bf16 scores once, writes them to a global scratch [T, H, KP] and the per-split
// (max, sum of exp) of each head; kernel B combines the split statistics, turns the stored scores
// into bf16 P = bf16(exp(s - m) / l) and accumulates O = P.V. Splits of B produce plain fp32
// partial sums (P is already normalised), added by a small reduce kernel. Tensor work = the
// counted FLOPs (576 + 512 per head and candidate).
//
// Both kernels: CTA = one token x 64 heads (heads >= H masked) x one split of the candidates,
// 8 warps, 64-candidate tiles gathered with cp.async into a raw staging buffer (the next tile in
// flight while the current one is multiplied) and dequantised once into bf16 shared memory
// (exact: e4m3 x 2^k is a bf16 value).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mla/decode.h"
#include "backends/cuda/mla/decode_common.cuh"
#include "backends/cuda/mla/decode_sm90.h"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/launch.cuh"

namespace dsa::cuda {

namespace {

using namespace mma;
using namespace mqa;

constexpr int TM = 64;    // heads per CTA
constexpr int TN = 64;    // candidates per tile
constexpr int QLD = 584;  // halves: 1168-byte rows (73 x 16 B, odd: ldmatrix conflict-free)
constexpr int VLD = 520;  // halves: 1040-byte rows (65 x 16 B)
constexpr int PLD = 72;   // halves: 144-byte rows (9 x 16 B)
constexpr int RAW_A = int(kMlaTokenBytes);  // 656 = 41 x 16 B: latent, scales, RoPE
constexpr int RAW_B = int(kMlaLatent) + 16; // 528 = 33 x 16 B: latent, scales
constexpr uint16_t kNegInfBf = 0xff80;


// The 512 latent dims of a tile's TN gathered rows (raw stride rs bytes) -> bf16 rows of dst (stride
// ld halves); rows without a slot become zeros. Both kernels dequantise through this.
// Chunk i (row i / 32, dims 16 (i % 32) ..) of that: one 16-byte e4m3 chunk -> two 16-byte bf16 stores.
__device__ __forceinline__ void deq_latent_chunk(const uint8_t* raw, int rs, const int* sl, uint16_t* dst, int ld, int i) {
  const int r = i / 32, c = i % 32;
  uint16_t* d = dst + r * ld + c * 16;
  if (sl[r] >= 0) {
    const uint8_t* row = raw + r * rs;
    deq16(row + c * 16, reinterpret_cast<const float*>(row + kScalesOff)[c / 8], d);
  } else {
    reinterpret_cast<uint4*>(d)[0] = make_uint4(0, 0, 0, 0);
    reinterpret_cast<uint4*>(d)[1] = make_uint4(0, 0, 0, 0);
  }
}
template <int NT>
__device__ __forceinline__ void deq_latent_tile(const uint8_t* raw, int rs, const int* sl, uint16_t* dst, int ld,
                                                int tid) {
#pragma unroll 2
  for (int i = tid; i < TN * 32; i += NT) deq_latent_chunk(raw, rs, sl, dst, ld, i);
}

// ---- kernel A: scores + per-split statistics ----------------------------------------------
// Kernel A: 16 warps, warp w: heads 16 (w % 4).. and candidates 32 (w / 4 % 2).. of each 64 x 64 score
// tile; warps 0-7 multiply latent dims 0..287, warps 8-15 dims 288..511 and the RoPE part;
//  - the slots of tile j + 1 resolved from registers (top-k loaded a tile ahead) and written to a
//    global slot table [T, KP] (head group 0) that kernel B reads instead of resolving them again;
//  - both sets finish half of the score tile each (set 0: candidates nt 0-1 of its warp tile, set 1:
//    nt 2-3), exchanging partial sums through shared memory in both directions;
//  - the score tile of j is stored to global memory while tile j + 1 is dequantised (one barrier less);
//  - the online (max, sum) is updated once per row and tile (max of the tile's values first).
__global__ void __launch_bounds__(512, 1) mqa_score_kernel(DecP p) {
  constexpr int NT = 512;
  extern __shared__ __align__(16) uint8_t smraw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smraw);  // [TM][QLD]
  uint16_t* ks = qs + TM * QLD;                       // [TN][QLD]
  uint8_t* raw = reinterpret_cast<uint8_t*>(ks + TN * QLD);  // [TN][656]
  uint16_t* ss = reinterpret_cast<uint16_t*>(raw + TN * RAW_A);  // [TM][PLD]
  int* slots = reinterpret_cast<int*>(ss + TM * PLD);             // [2][TN]
  float* redm = reinterpret_cast<float*>(slots + 2 * TN);        // [4][TM]
  float* reds = redm + 4 * TM;                                   // [4][TM]
  float4* kredA = reinterpret_cast<float4*>(reds + 4 * TM);      // set 1 -> set 0: [8 warps][4][32 lanes]
  float4* kredB = kredA + 8 * 4 * 32;                            // set 0 -> set 1: [8 warps][2][32 lanes]
  const int t = blockIdx.x, h0 = blockIdx.y * TM, split = blockIdx.z, tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int posn = p.pos[t];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  const int64_t c_begin = int64_t(split) * p.tiles_per * TN, c_end = min(n, c_begin + int64_t(p.tiles_per) * TN);
  static_assert(TM == 64, "q_tile_async loads 64 heads");
  q_tile_async<NT>(p, t, h0, tid, [&](int h, int c) { return qs + h * QLD + c * 8; });
  auto gather = [&](const int* sl) {
    for (int i = tid; i < TN * (RAW_A / 16); i += NT) {
      const int r = i / (RAW_A / 16), c = i - r * (RAW_A / 16);
      const int s = sl[r];
      if (s >= 0) cp16(raw + r * RAW_A + c * 16, p.cache + int64_t(s) * kMlaTokenBytes + c * 16);
    }
  };
  int nidx = -1;  // tid < TN: candidate index of the next tile
  if (tid < TN) {
    const int s = cand_resolve(p, t, cand_idx(p, t, c_begin + tid, c_end), posn);
    slots[tid] = s;
    nidx = cand_idx(p, t, c_begin + TN + tid, c_end);
  }
  __syncthreads();
  if (c_begin < c_end) gather(slots);
  cp_commit();
  const int ws = warp / 8, w8 = warp % 8;  // k-set, warp within the set
  const int wh = (w8 % 4) * 16, wk = (w8 / 4) * 32;
  float m0 = -INFINITY, s0 = 0.f, m1 = -INFINITY, s1 = 0.f;  // rows gid, gid + 8 of this warp (its columns)
  int cur = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += TN, cur ^= 1) {
    const int64_t c1 = c0 + TN;
    int nslot = -1;
    if (tid < TN) {  // block-table load of the next tile now, the top-k load of the one after
      nslot = cand_resolve(p, t, nidx, posn);
      nidx = cand_idx(p, t, c1 + TN + tid, c_end);
    }
    cp_wait<0>();
    __syncthreads();  // raw holds this tile; every reader of ks / ss / slots[cur ^ 1] is done
    if (c0 > c_begin)  // the previous score tile: 64 heads x 8 chunks of 8 scores, coalesced
      for (int i = tid; i < TM * 8; i += NT) {
        const int h = i / 8, c = i % 8;
        if (h0 + h < p.H)
          *reinterpret_cast<uint4*>(p.S + (int64_t(t) * p.H + h0 + h) * p.KP + c0 - TN + c * 8) =
              *reinterpret_cast<const uint4*>(ss + h * PLD + c * 8);
      }
    {  // dequantise: 64 rows x 32 chunks of 16 latents, then 64 rows x 8 chunks of RoPE
      const int* sl = slots + cur * TN;
      deq_latent_tile<NT>(raw, RAW_A, sl, ks, QLD, tid);
      for (int i = tid; i < TN * 8; i += NT) {
        const int r = i / 8, c = i % 8;
        *reinterpret_cast<uint4*>(ks + r * QLD + 512 + c * 8) =
            sl[r] >= 0 ? *reinterpret_cast<const uint4*>(raw + r * RAW_A + kRopeOff + c * 16) : make_uint4(0, 0, 0, 0);
      }
    }
    if (tid < TN && c1 < c_end) slots[(cur ^ 1) * TN + tid] = nslot;
    __syncthreads();  // ks holds this tile, raw is free, the next tile's slots are known, ss was stored
    if (c1 < c_end) gather(slots + (cur ^ 1) * TN);
    cp_commit();
    float cl[4][4] = {}, cr[4][4] = {};
    {
      const uint16_t* qa = qs + (wh + lane % 16) * QLD + (lane / 16) * 8;
      const uint16_t* kb = ks + (wk + lane % 8 + 8 * (lane / 16)) * QLD + ((lane / 8) % 2) * 8;
      const int klo = ws == 0 ? 0 : 18, khi = ws == 0 ? 18 : 32;
#pragma unroll 2
      for (int kk = klo; kk < khi; ++kk)
        mma_16x32_k16(cl, qa + kk * 16, kb + kk * 16, kb + 16 * QLD + kk * 16);
      if (ws == 1)
#pragma unroll
        for (int kk = 32; kk < 36; ++kk)
          mma_16x32_k16(cr, qa + kk * 16, kb + kk * 16, kb + 16 * QLD + kk * 16);
    }
    // Exchange: set 0 finishes nt 0-1 (needs set 1's latent and RoPE sums), set 1 nt 2-3.
    if (ws == 1) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        kredA[(w8 * 4 + nt) * 32 + lane] = make_float4(cl[nt][0], cl[nt][1], cl[nt][2], cl[nt][3]);
        kredA[(w8 * 4 + 2 + nt) * 32 + lane] = make_float4(cr[nt][0], cr[nt][1], cr[nt][2], cr[nt][3]);
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) kredB[(w8 * 2 + nt) * 32 + lane] = make_float4(cl[2 + nt][0], cl[2 + nt][1], cl[2 + nt][2], cl[2 + nt][3]);
    }
    __syncthreads();
    float x[2][2][2];  // [nt of this set][hf][e]: the final scores (bf16 values as float)
    if (ws == 0) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float4 o = kredA[(w8 * 4 + nt) * 32 + lane], r = kredA[(w8 * 4 + 2 + nt) * 32 + lane];
        const float l4[4] = {cl[nt][0] + o.x, cl[nt][1] + o.y, cl[nt][2] + o.z, cl[nt][3] + o.w};
        const float r4[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int v = 0; v < 4; ++v)
          x[nt][v / 2][v % 2] = rbf(__fmul_rn(rbf(__fadd_rn(rbf(l4[v]), rbf(r4[v]))), p.scale));
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float4 o = kredB[(w8 * 2 + nt) * 32 + lane];
        const float l4[4] = {o.x + cl[2 + nt][0], o.y + cl[2 + nt][1], o.z + cl[2 + nt][2], o.w + cl[2 + nt][3]};
#pragma unroll
        for (int v = 0; v < 4; ++v)
          x[nt][v / 2][v % 2] = rbf(__fmul_rn(rbf(__fadd_rn(rbf(l4[v]), rbf(cr[2 + nt][v]))), p.scale));
      }
    }
    // Exact rounding steps of the reference done above; mask, online (max, sum) per row, bf16 to ss.
    const int nb = wk + ws * 16;  // first candidate of this warp's 16 columns
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = wh + gid + 8 * hf;
      float& m = hf ? m1 : m0;
      float& su = hf ? s1 : s0;
      float tm = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = nb + nt * 8 + 2 * tq + e;
          if (slots[cur * TN + key] < 0) x[nt][hf][e] = -INFINITY;
          tm = fmaxf(tm, x[nt][hf][e]);
        }
      if (tm > -INFINITY) {
        const float mn = fmaxf(m, tm);
        float acc = m > -INFINITY ? su * expf(m - mn) : 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (x[nt][hf][e] > -INFINITY) acc += expf(x[nt][hf][e] - mn);
        su = acc;
        m = mn;
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
        *reinterpret_cast<uint32_t*>(ss + row * PLD + nb + nt * 8 + 2 * tq) =
            uint32_t(f2bf(x[nt][hf][0])) | (uint32_t(f2bf(x[nt][hf][1])) << 16);
    }
  }
  cp_wait<0>();
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const float mo0 = __shfl_xor_sync(0xffffffffu, m0, o), so0 = __shfl_xor_sync(0xffffffffu, s0, o);
    const float mo1 = __shfl_xor_sync(0xffffffffu, m1, o), so1 = __shfl_xor_sync(0xffffffffu, s1, o);
    stat_merge(m0, s0, mo0, so0);
    stat_merge(m1, s1, mo1, so1);
  }
  __syncthreads();  // the last score tile is complete
  if (c_begin < c_end)
    for (int i = tid; i < TM * 8; i += NT) {
      const int h = i / 8, c = i % 8;
      const int64_t cl0 = c_begin + (c_end - c_begin - 1) / TN * TN;
      if (h0 + h < p.H)
        *reinterpret_cast<uint4*>(p.S + (int64_t(t) * p.H + h0 + h) * p.KP + cl0 + c * 8) =
            *reinterpret_cast<const uint4*>(ss + h * PLD + c * 8);
    }
  if (tq == 0) {
    const int q = ws * 2 + w8 / 4;
    redm[q * TM + wh + gid] = m0;
    reds[q * TM + wh + gid] = s0;
    redm[q * TM + wh + gid + 8] = m1;
    reds[q * TM + wh + gid + 8] = s1;
  }
  __syncthreads();
  if (tid < TM && h0 + tid < p.H) {
    float m = redm[tid], su = reds[tid];
    for (int q = 1; q < 4; ++q) stat_merge(m, su, redm[q * TM + tid], reds[q * TM + tid]);
    float* o = p.ms + ((int64_t(t) * p.H + h0 + tid) * p.NS + split) * 2;
    o[0] = m;
    o[1] = su;
  }
}
constexpr size_t kSmemA = size_t(TM + TN) * QLD * 2 + size_t(TN) * RAW_A + size_t(TM) * PLD * 2 + 2 * TN * 4 +
                           8 * TM * 4 + 8 * 6 * 32 * 16;

// ---- kernel B: P = bf16(exp(s - m) / l), O += P.V -----------------------------------------
// 16 warps; warp w: all 64 heads x latent dims 32w..32w+31 (4 x 4 mma tiles, 64 fp32 accumulators).
// Software pipeline, one barrier per 64-candidate tile: while the warps multiply tile j (bf16 V and P
// in buffer j % 2), they dequantise tile j + 1 (gathered one tile earlier) into the other buffer and
// form its P, one quarter per k16 step, so the tensor pipe and the conversion ALU work overlap inside
// every warp instead of alternating CTA-wide; tile j + 2 is gathered (cp.async) meanwhile. The slots
// come from kernel A's table through a 3-entry ring filled from registers loaded a tile ahead.
constexpr int kPvThreads = 512;
constexpr size_t kSmemB = 2 * size_t(TN) * VLD * 2 + 2 * size_t(TN) * RAW_B + 2 * size_t(TM) * PLD * 2 + 2 * TM * 4 + 3 * TN * 4;
__global__ void __launch_bounds__(kPvThreads, 1) mqa_pv_kernel(DecP p) {
  // With programmatic dependent launch this grid starts while kernel A runs (A triggers after its own
  // wait, so the top-k indices, block table and cache — all written before A — are complete): the slot
  // resolution, the gather of the first two tiles and the dequantisation of tile 0 happen before
  // pdl_wait(); only A's outputs (scores S, split statistics) are read after it. At b=1 that takes the
  // gather's dependent round trips off the critical path (A and B run on different SMs).
  // Triggered before this grid's own wait: the next grid may start before kernel A completes, so it must not do
  // work before its pdl_wait() (the split sum and every other chained kernel start with it).
  pdl_launch_next();
  extern __shared__ __align__(16) uint8_t smraw[];
  uint16_t* vs = reinterpret_cast<uint16_t*>(smraw);                // [2][TN][VLD]
  uint8_t* raw = reinterpret_cast<uint8_t*>(vs + 2 * TN * VLD);     // [2][TN][528]
  uint16_t* ps = reinterpret_cast<uint16_t*>(raw + 2 * TN * RAW_B); // [2][TM][PLD]
  float* rowM = reinterpret_cast<float*>(ps + 2 * TM * PLD);
  float* rowI = rowM + TM;
  int* slots = reinterpret_cast<int*>(rowI + TM);                  // [3][TN]
  const int t = blockIdx.x, h0 = blockIdx.y * TM, split = blockIdx.z, tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int posn = p.pos[t];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  const int64_t c_begin = int64_t(split) * p.tiles_per * TN, c_end = min(n, c_begin + int64_t(p.tiles_per) * TN);
  // Cache slot of candidate c (-1: none; kernel A raised the error flags for bad indices / blocks).
  auto slot_at = [&](int64_t c) { return cand_slot(p, t, cand_idx(p, t, c, c_end), posn); };
  int nsl = -1;  // tid < TN: slot of candidate tid of tile j + 3 (stored into the ring during tile j)
  if (tid < TN) {
    slots[tid] = slot_at(c_begin + tid);
    slots[TN + tid] = slot_at(c_begin + TN + tid);
    slots[2 * TN + tid] = slot_at(c_begin + 2 * TN + tid);
    nsl = slot_at(c_begin + 3 * TN + tid);
  }
  __syncthreads();
  auto gather = [&](int buf, const int* sl) {
    for (int i = tid; i < TN * (RAW_B / 16); i += kPvThreads) {
      const int r = i / (RAW_B / 16), c = i - r * (RAW_B / 16);
      const int s = sl[r];
      if (s >= 0) cp16(raw + (buf * TN + r) * RAW_B + c * 16, p.cache + int64_t(s) * kMlaTokenBytes + c * 16);
    }
  };
  if (c_begin < c_end) gather(0, slots);
  cp_commit();
  if (c_begin + TN < c_end) gather(1, slots + TN);
  cp_commit();
  // One quarter (k16 step q) of a tile's dequantisation: item i = tid + 512 q of the TN x 32 chunks.
  auto deq_quarter = [&](const uint8_t* rb, const int* sl, uint16_t* dst, int q) {
    deq_latent_chunk(rb, RAW_B, sl, dst, VLD, tid + kPvThreads * q);
  };
  static_assert(TN * 32 == 4 * kPvThreads, "one dequantisation item per thread and k16 step");
  cp_wait<1>();
  __syncthreads();  // tile 0's rows have landed
  if (c_begin < c_end)
#pragma unroll
    for (int q = 0; q < 4; ++q) deq_quarter(raw, slots, vs, q);

  pdl_wait();  // kernel A has completed: S and the split statistics are visible
  {  // combine the split statistics of head h0 + tid / 8: 8 lanes per head, splits l8, l8 + 8, ...
     // (one thread per head made NS dependent L2 round trips: ~9 us at b = 1 with 32 splits)
    static_assert(kPvThreads == 8 * TM, "8 threads per head");
    const int hh = tid / 8, l8 = tid % 8;
    const bool hv = h0 + hh < p.H;
    // (max, sum) pairs of splits l8 + 8k, 4 per round: the loads of a round are all in flight (a plain
    // loop issued one, waited, then the next: 2 NS / 8 dependent round trips). Same order of operations.
    const float2* ms = reinterpret_cast<const float2*>(p.ms) + (int64_t(t) * p.H + h0 + (hv ? hh : 0)) * p.NS;
    auto load_round = [&](int i0, float2 (&v)[4]) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = i0 + l8 + 8 * k;
        v[k] = hv && i < p.NS ? ms[i] : make_float2(-INFINITY, 0.f);
      }
    };
    float m = -INFINITY, su = 0.f;
    for (int i0 = 0; i0 < p.NS; i0 += 32) {
      float2 v[4];
      load_round(i0, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) m = fmaxf(m, v[k].x);
    }
#pragma unroll
    for (int o = 4; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    for (int i0 = 0; i0 < p.NS; i0 += 32) {
      float2 v[4];
      load_round(i0, v);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (v[k].x > -INFINITY) su += v[k].y * expf(v[k].x - m);
    }
#pragma unroll
    for (int o = 4; o; o >>= 1) su += __shfl_xor_sync(0xffffffffu, su, o);
    if (l8 == 0) {
      rowM[hh] = m;
      rowI[hh] = su > 0.f ? 1.0f / su : 0.f;
    }
  }
  // this thread's score chunk: head sh, candidates sc8 .. sc8 + 7
  const int sh = tid / 8, sc8 = (tid % 8) * 8;
  const uint16_t* srow = p.S + (int64_t(t) * p.H + h0 + sh) * p.KP + sc8;
  const bool hok = h0 + sh < p.H;
  const uint4 ninf4 = make_uint4(0xff80ff80u, 0xff80ff80u, 0xff80ff80u, 0xff80ff80u);
  auto load_scores = [&](int64_t c) { return hok && c < c_end ? *reinterpret_cast<const uint4*>(srow + c) : ninf4; };
  // P of one tile: bf16(exp(s - M) * (1 / l)) exactly as the CPU (k_softmax_bf16); -inf scores -> 0.
  auto form_p = [&](const uint4& sv, uint16_t* pdst) {
    const float M = rowM[sh], I = rowI[sh];
    const uint32_t w[4] = {sv.x, sv.y, sv.z, sv.w};
    uint32_t o[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      uint32_t pr = 0;
#pragma unroll
      for (int hl = 0; hl < 2; ++hl) {
        const uint16_t bits = uint16_t(w[e] >> (16 * hl));
        const float pv = bits == kNegInfBf ? 0.f : __fmul_rn(expf(__fsub_rn(bf2f(bits), M)), I);
        pr |= uint32_t(f2bf(pv)) << (16 * hl);
      }
      o[e] = pr;
    }
    *reinterpret_cast<uint4*>(pdst + sh * PLD + sc8) = make_uint4(o[0], o[1], o[2], o[3]);
  };
  uint4 sv = load_scores(c_begin);
  __syncthreads();  // rowM / rowI are set
  if (c_begin < c_end) form_p(sv, ps);
  sv = load_scores(c_begin + TN);
  float acc[4][4][4] = {};
  const int wd = warp * 32;
  int j = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += TN, ++j) {
    const int cur = j & 1, nxt = cur ^ 1;
    cp_wait<0>();
    __syncthreads();  // tile j + 1 has landed; buffer cur holds tile j; every reader of buffer nxt, raw[cur]
                      // and ring entry j % 3 (tile j) is done
    if (c0 + 2 * TN < c_end) gather(cur, slots + ((j + 2) % 3) * TN);
    cp_commit();
    const bool more = c0 + TN < c_end;
    const int* sl1 = slots + ((j + 1) % 3) * TN;
    const uint8_t* rb1 = raw + nxt * TN * RAW_B;
    uint16_t* vs1 = vs + nxt * TN * VLD;
    if (more) form_p(sv, ps + nxt * TM * PLD);
    if (tid < TN) {
      slots[(j % 3) * TN + tid] = nsl;  // tile j + 3
      nsl = slot_at(c0 + 4 * TN + tid);
    }
    sv = load_scores(c0 + 2 * TN);
    const uint16_t* pa = ps + cur * TM * PLD + (lane % 16) * PLD + (lane / 16) * 8;
    const uint16_t* vb = vs + cur * TN * VLD + (lane % 8 + 8 * ((lane / 8) % 2)) * VLD + wd + 8 * (lane / 16);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) ldsm4(a[mt], pa + mt * 16 * PLD + kk * 16);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t b[4];
        ldsm4t(b, vb + kk * 16 * VLD + np * 16);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          mma16816(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma16816(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
      if (more) deq_quarter(rb1, sl1, vs1, kk);  // overlaps the mma just issued
    }
  }
  cp_wait<0>();
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int h = h0 + mt * 16 + gid + 8 * hf;
      if (h >= p.H) continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int d = wd + nt * 8 + 2 * tq;
        const float x0 = acc[mt][nt][2 * hf], x1 = acc[mt][nt][2 * hf + 1];
        if (p.NS == 1) {
          *reinterpret_cast<uint32_t*>(p.out + (int64_t(t) * p.H + h) * 512 + d) = uint32_t(f2bf(x0)) | (uint32_t(f2bf(x1)) << 16);
        } else {
          *reinterpret_cast<float2*>(p.part + ((int64_t(t) * p.H + h) * p.NS + split) * 512 + d) = make_float2(x0, x1);
        }
      }
    }
}

// out = bf16(sum over splits). Four threads per 4 output dims, each summing a contiguous quarter of the
// splits (all of its loads in flight: b=1 has 32 splits, 8 per thread, one L2 round trip), then
// ((q0 + q1) + (q2 + q3)) by two xor shuffles: a fixed order, the same bytes on every run.
constexpr int kSumGroup = 4;
__global__ void mqa_split_sum_kernel(const float* part, int64_t rows, int NS, uint16_t* out) {
  pdl_wait();  // launched through launch_chained (launch.cuh)
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t o = i / kSumGroup;  // output float4; rows * 128 of them (blockDim is a multiple of 32)
  const int g = int(i % kSumGroup);
  const bool live = o < rows * 128;
  const int64_t r = live ? o / 128 : 0, d = (o % 128) * 4;
  const int per = (NS + kSumGroup - 1) / kSumGroup, k0 = g * per, k1 = min(NS, k0 + per);
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  if (live) {
#pragma unroll 8
    for (int k = k0; k < k1; ++k) {
      const float4 v = *reinterpret_cast<const float4*>(part + (r * NS + k) * 512 + d);
      s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
    }
  }
#pragma unroll
  for (int m = 1; m < kSumGroup; m <<= 1) {  // a + b == b + a bit for bit: every lane of a group ends equal
    s.x += __shfl_xor_sync(0xffffffffu, s.x, m);
    s.y += __shfl_xor_sync(0xffffffffu, s.y, m);
    s.z += __shfl_xor_sync(0xffffffffu, s.z, m);
    s.w += __shfl_xor_sync(0xffffffffu, s.w, m);
  }
  if (live && g == 0)
    *reinterpret_cast<uint2*>(out + r * 512 + d) =
        make_uint2(uint32_t(f2bf(s.x)) | (uint32_t(f2bf(s.y)) << 16), uint32_t(f2bf(s.z)) | (uint32_t(f2bf(s.w)) << 16));
}

}  // namespace

size_t mqa_stored_smem_bytes() { return std::max(kSmemA, kSmemB); }

// Stored-scores decode (called by CudaBackend::attention_mqa). n_max: the largest candidate count
// of any token (topk: K; dense: the batch's max end position).
void mqa_decode_stored(CudaBackend& be, const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache,
                       const DevBatch& d, const Tensor* topk, float scale, Tensor& out_lat) {
  const int64_t T = q_lat.dim(0), H = q_lat.dim(1);
  const int64_t n_max = topk ? topk->dim(1) : int64_t(d.max_end);
  const int64_t ntiles = std::max<int64_t>(1, (n_max + TN - 1) / TN), KP = ntiles * TN;
  const int64_t HG = (H + TM - 1) / TM;
  const CudaContext& ctx = be.context();
  const MqaConfig& tun = ctx.config().mqa;
  ctx.smem_attr(mqa_score_kernel, size_t(kSmemA));
  ctx.smem_attr(mqa_pv_kernel, size_t(kSmemB));
  // Hopper: kernel A on wgmma (decode_sm90.cu, same outputs); kernel B and the split sum are shared.
  const bool use_wgmma = ctx.mqa_sm90();
  // Tokens per launch: the bf16 score scratch stays under tun.max_scratch bytes.
  const int64_t TC = std::clamp<int64_t>(tun.max_scratch / std::max<int64_t>(1, H * KP * 2), 1, T);
  // Splits: one CTA per SM at least (1 CTA/SM fits), whole 64-candidate tiles per split.
  const auto splits = [&](int64_t Tc, int64_t* tiles_per) {
    int64_t NS = tun.force_splits > 0 ? tun.force_splits : (be.sm_count() + Tc * HG - 1) / (Tc * HG);
    NS = std::clamp<int64_t>(NS, 1, ntiles);
    *tiles_per = (ntiles + NS - 1) / NS;
    return (ntiles + *tiles_per - 1) / *tiles_per;
  };
  // One scratch for every chunk, sized for the largest (a smaller last chunk may take more splits): chunks run
  // in stream order, and a decode step's workspace then holds one chunk's scratch, not all of them.
  int64_t tp_unused = 0;
  const int64_t NSmax = std::max(splits(TC, &tp_unused), splits(T - (T - 1) / TC * TC, &tp_unused));
  Tensor S = be.alloc(DType::BF16, {TC, H, KP});
  Tensor ms = be.alloc(DType::F32, {TC, H, NSmax, 2});
  Tensor part;
  if (NSmax > 1) part = be.alloc(DType::F32, {TC, H, NSmax, 512});
  for (int64_t t0 = 0; t0 < T; t0 += TC) {
    const int64_t Tc = std::min(TC, T - t0);
    int64_t tiles_per = 0;
    const int64_t NS = splits(Tc, &tiles_per);
    DecP p{};
    p.qlat = q_lat.ptr<uint16_t>() + t0 * H * 512; p.qpe = q_pe.ptr<uint16_t>() + t0 * H * 64;
    p.cache = cache.mla.ptr<uint8_t>();
    p.topk = topk ? topk->ptr<int32_t>() + t0 * topk->dim(1) : nullptr; p.K = topk ? topk->dim(1) : 0;
    p.pos = d.positions + t0; p.tseq = d.token_seq + t0; p.bt = d.block_table; p.mb = d.max_blocks;
    p.H = int(H); p.NS = int(NS); p.tiles_per = int(tiles_per); p.KP = KP; p.scale = scale;
    p.S = S.ptr<uint16_t>(); p.ms = ms.ptr<float>(); p.part = NS > 1 ? part.ptr<float>() : nullptr;
    p.out = out_lat.ptr<uint16_t>() + t0 * H * 512; p.err = be.err_flag();
    const dim3 grid{unsigned(Tc), unsigned(HG), unsigned(NS)};
    if (use_wgmma) {
      launch_mqa_score_sm90(ctx, p, grid);
    } else {
      mqa_score_kernel<<<grid, 512, kSmemA>>>(p);
      DSA_LAUNCH_CHECK();
    }
    if (tun.scores_only) continue;  // profiling only: the output is not written
    launch_chained(ctx, mqa_pv_kernel, grid, dim3(kPvThreads), kSmemB, 1, p);
    DSA_LAUNCH_CHECK();
    if (NS > 1) {
      // 128-thread CTAs, 4 threads per 4 output dims: 512 CTAs at b=1 (128 heads).
      launch_chained(ctx, mqa_split_sum_kernel, dim3(unsigned(cdiv(Tc * H * 128 * kSumGroup, 128))), dim3(128), 0, 1, static_cast<const float*>(p.part),
                     int64_t(Tc * H), int(NS), p.out);
      DSA_LAUNCH_CHECK();
    }
  }
}

}  // namespace dsa::cuda

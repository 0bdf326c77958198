// MLA on CUDA (portable sm_80+, CUDA cores): the 656-byte FP8 latent cache, the decode (absorbed
// MQA) form straight from the cache — dense or sparse, split over the candidates with a combine
// step (the prefill MHA form is in prefill.cu). Numerics as the CPU reference: bf16(q.kv) and bf16(q_pe.pe)
// rounded separately, their bf16 sum, the bf16 scale multiply, an fp32 softmax whose probabilities
// are rounded to bf16 *after* normalisation, and an fp32 P.V rounded to bf16. Because P is rounded
// after normalising, the kernels make two passes over the candidates: pass 1 finds each row's max
// and sum, pass 2 recomputes the scores and accumulates P.V (scores are never stored).
#include <cfloat>
#include <cstdio>
#include <cstdlib>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/mla/decode.h"

namespace dsa::cuda {

size_t mqa_stored_smem_bytes();  // decode.cu
void mqa_decode_stored(CudaBackend& be, const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache,
                       const DevBatch& d, const Tensor* topk, float scale, Tensor& out_lat);  // decode.cu

namespace {

constexpr int kScalesOff = int(kMlaLatent), kRopeOff = int(kMlaLatent) + 16;

__global__ void mla_cache_write_kernel(const uint16_t* kv, const uint16_t* kpe, uint8_t* cache, const int32_t* pos,
                                       const int32_t* tseq, const int32_t* bt, int mb, int* err) {
  const int t = blockIdx.x, g = threadIdx.x / 32, l = threadIdx.x % 32;
  const int64_t slot = slot_of(bt, mb, tseq[t], pos[t]);
  if (slot < 0) {
    if (threadIdx.x == 0) atomicOr(err, kErrBlock);
    return;
  }
  uint8_t* row = cache + slot * kMlaTokenBytes;
  const uint2 raw = *reinterpret_cast<const uint2*>(kv + int64_t(t) * kMlaLatent + g * 128 + l * 4);
  float v[4] = {bf2f(raw.x & 0xffff), bf2f(raw.x >> 16), bf2f(raw.y & 0xffff), bf2f(raw.y >> 16)};
  const float amax = warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
  const float sc = ue8m0_scale_dev(amax), inv = 1.0f / sc;
  *reinterpret_cast<uint32_t*>(row + g * 128 + l * 4) =
      uint32_t(quant_e4m3(v[0], inv)) | (uint32_t(quant_e4m3(v[1], inv)) << 8) |
      (uint32_t(quant_e4m3(v[2], inv)) << 16) | (uint32_t(quant_e4m3(v[3], inv)) << 24);
  if (l == 0) reinterpret_cast<float*>(row + kScalesOff)[g] = sc;
  if (threadIdx.x < 64)
    reinterpret_cast<uint16_t*>(row + kRopeOff)[threadIdx.x] = kpe[int64_t(t) * kMlaRope + threadIdx.x];
}

// One warp per context row j of sequence blockIdx.y.
__global__ void mla_cache_read_kernel(const uint8_t* cache, const int32_t* bt, int mb, const int32_t* start,
                                      const int32_t* nnew, const int32_t* ctx, uint16_t* kv, uint16_t* pe, int* err) {
  const int s = blockIdx.y;
  const int j = blockIdx.x * 4 + threadIdx.x / 32, l = threadIdx.x % 32;
  if (j >= start[s] + nnew[s]) return;
  const int64_t slot = slot_of(bt, mb, s, j);
  const int64_t r = int64_t(ctx[s]) + j;
  if (slot < 0) {
    if (l == 0) atomicOr(err, kErrBlock);
    return;
  }
  const uint8_t* row = cache + slot * kMlaTokenBytes;
  const float sc = reinterpret_cast<const float*>(row + kScalesOff)[l / 8];  // lane covers bytes 16l..16l+15
  const uint4 q = *reinterpret_cast<const uint4*>(row + l * 16);
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
  uint16_t o[16];
  for (int i = 0; i < 16; ++i) o[i] = f2bf(__fmul_rn(e4m3_to_float((w[i / 4] >> (8 * (i % 4))) & 0xff), sc));
  uint4* dst = reinterpret_cast<uint4*>(kv + r * kMlaLatent + l * 16);
  dst[0] = *reinterpret_cast<const uint4*>(o);
  dst[1] = *reinterpret_cast<const uint4*>(o + 8);
  reinterpret_cast<uint32_t*>(pe + r * kMlaRope)[l] = reinterpret_cast<const uint32_t*>(row + kRopeOff)[l];
}

// ---- decode (MQA form) ------------------------------------------------------------------------
constexpr int HB = 16;   // heads per block
constexpr int RC = 16;   // candidate rows per chunk
constexpr int QLD = 576 + 2, KLD = 576 + 2;  // bf16 row strides in shared memory (conflict-free)

struct MqaP {
  const uint16_t* qlat; const uint16_t* qpe;  // [T, H, 512], [T, H, 64]
  const uint8_t* cache;
  const int32_t* topk; int64_t K;             // nullptr: dense causal
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int H, NS;
  float scale;
  float* ms;        // [T, H, NS, 2]: pass-1 partial (max, sum)
  float* stat;      // [T, H, 2]: combined (max, 1/sum)
  float* part;      // [T, H, NS, 512] partial P.V (NS > 1)
  uint16_t* out;    // [T, H, 512]
  int* err;
};

// Candidate i of token t: its cache slot, or -1 if none.
__device__ __forceinline__ int64_t mqa_slot(const MqaP& p, int t, int64_t i, int posn) {
  int idx;
  if (p.topk) {
    idx = p.topk[int64_t(t) * p.K + i];
    if (idx < -1 || idx > posn) {
      atomicOr(p.err, kErrTopk);
      return -1;
    }
    if (idx < 0) return -1;
  } else {
    idx = int(i);
  }
  const int64_t s = slot_of(p.bt, p.mb, p.tseq[t], idx);
  if (s < 0) atomicOr(p.err, kErrBlock);
  return s;
}

template <int PASS>
__global__ void __launch_bounds__(256) mqa_kernel(MqaP p) {
  __shared__ __align__(16) uint16_t qs[HB * QLD];
  __shared__ __align__(16) uint16_t kvs[RC * KLD];
  __shared__ float sc[HB][RC];
  __shared__ int64_t slots[RC];
  __shared__ float run_m[HB], run_s[HB];
  const int t = blockIdx.x, h0 = blockIdx.y * HB, split = blockIdx.z, tid = threadIdx.x;
  const int posn = p.pos[t];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  const int64_t per = (n + p.NS - 1) / p.NS;
  const int64_t c_begin = split * per, c_end = min(n, c_begin + per);
  // q for HB heads (bf16, zero for heads >= H)
  for (int i = tid; i < HB * 576; i += 256) {
    const int h = i / 576, d = i % 576;
    uint16_t v = 0;
    if (h0 + h < p.H) v = d < 512 ? p.qlat[(int64_t(t) * p.H + h0 + h) * 512 + d] : p.qpe[(int64_t(t) * p.H + h0 + h) * 64 + d - 512];
    qs[h * QLD + d] = v;
  }
  if (tid < HB) {
    run_m[tid] = -INFINITY;
    run_s[tid] = 0.f;
  }
  float M = 0.f, inv = 0.f;
  const int sh = tid / RC, sr = tid % RC;  // score pair (head, row)
  // PV mapping: heads (tid/64)*4 .. +3, dims (tid%64)*2 + 128*i, i < 4
  const int ph = (tid / 64) * 4, pd = (tid % 64) * 2;
  float acc[4][8] = {};
  if (PASS == 2 && sh < HB) {
    // each thread needs M, inv of its score head
    if (h0 + sh < p.H) {
      M = p.stat[(int64_t(t) * p.H + h0 + sh) * 2];
      inv = p.stat[(int64_t(t) * p.H + h0 + sh) * 2 + 1];
    }
  }
  for (int64_t c0 = c_begin; c0 < c_end; c0 += RC) {
    __syncthreads();
    if (tid < RC) slots[tid] = c0 + tid < c_end ? mqa_slot(p, t, c0 + tid, posn) : -1;
    __syncthreads();
    {  // gather + dequantise: 16 threads per row, each 32 latent bytes + 4 rope values
      const int r = tid / 16, l = tid % 16;
      const int64_t slot = slots[r];
      uint16_t* dst = kvs + r * KLD;
      if (slot >= 0) {
        const uint8_t* row = p.cache + slot * kMlaTokenBytes;
        const float s = reinterpret_cast<const float*>(row + kScalesOff)[l / 4];
        const uint4 a = reinterpret_cast<const uint4*>(row)[2 * l], b = reinterpret_cast<const uint4*>(row)[2 * l + 1];
        const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const uint32_t lo = f2bf(__fmul_rn(e4m3_to_float((w[i / 2] >> (16 * (i % 2))) & 0xff), s));
          const uint32_t hi = f2bf(__fmul_rn(e4m3_to_float((w[i / 2] >> (16 * (i % 2) + 8)) & 0xff), s));
          reinterpret_cast<uint32_t*>(dst + l * 32)[i] = lo | (hi << 16);
        }
        const uint2 pe = reinterpret_cast<const uint2*>(row + kRopeOff)[l];
        reinterpret_cast<uint32_t*>(dst + 512 + l * 4)[0] = pe.x;
        reinterpret_cast<uint32_t*>(dst + 512 + l * 4)[1] = pe.y;
      } else {
        for (int i = 0; i < 16; ++i) reinterpret_cast<uint32_t*>(dst + l * 32)[i] = 0;
        reinterpret_cast<uint32_t*>(dst + 512 + l * 4)[0] = 0;
        reinterpret_cast<uint32_t*>(dst + 512 + l * 4)[1] = 0;
      }
    }
    __syncthreads();
    {  // scores: one (head, row) pair per thread
      float a = 0.f, c = 0.f;
      const uint32_t* qrow = reinterpret_cast<const uint32_t*>(qs + sh * QLD);
      const uint32_t* krow = reinterpret_cast<const uint32_t*>(kvs + sr * KLD);
#pragma unroll 8
      for (int d = 0; d < 256; ++d) {
        const uint32_t qq = qrow[d], kk = krow[d];
        a = fmaf(bf2f(qq & 0xffff), bf2f(kk & 0xffff), a);
        a = fmaf(bf2f(qq >> 16), bf2f(kk >> 16), a);
      }
#pragma unroll 8
      for (int d = 256; d < 288; ++d) {
        const uint32_t qq = qrow[d], kk = krow[d];
        c = fmaf(bf2f(qq & 0xffff), bf2f(kk & 0xffff), c);
        c = fmaf(bf2f(qq >> 16), bf2f(kk >> 16), c);
      }
      float s = rbf(__fmul_rn(rbf(__fadd_rn(rbf(a), rbf(c))), p.scale));
      if (slots[sr] < 0) s = -INFINITY;
      if (PASS == 2) s = slots[sr] < 0 ? 0.f : rbf(__fmul_rn(expf(__fsub_rn(s, M)), inv));
      sc[sh][sr] = s;
    }
    __syncthreads();
    if (PASS == 1) {
      if (tid < HB) {
        float m = run_m[tid], sum = run_s[tid];
        float cm = m;
        for (int r = 0; r < RC; ++r) cm = fmaxf(cm, sc[tid][r]);
        if (cm > -INFINITY) {
          sum = m > -INFINITY ? sum * expf(m - cm) : 0.f;
          for (int r = 0; r < RC; ++r)
            if (sc[tid][r] > -INFINITY) sum += expf(sc[tid][r] - cm);
          run_m[tid] = cm;
          run_s[tid] = sum;
        }
      }
    } else {
#pragma unroll 4
      for (int r = 0; r < RC; ++r) {
        const uint32_t* krow = reinterpret_cast<const uint32_t*>(kvs + r * KLD);
        float kvv[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t kk = krow[(pd + 128 * i) / 2];
          kvv[2 * i] = bf2f(kk & 0xffff);
          kvv[2 * i + 1] = bf2f(kk >> 16);
        }
#pragma unroll
        for (int hh = 0; hh < 4; ++hh) {
          const float pr = sc[ph + hh][r];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[hh][i] = fmaf(pr, kvv[i], acc[hh][i]);
        }
      }
    }
  }
  __syncthreads();
  if (PASS == 1) {
    if (tid < HB && h0 + tid < p.H) {
      float* o = p.ms + ((int64_t(t) * p.H + h0 + tid) * p.NS + split) * 2;
      o[0] = run_m[tid];
      o[1] = run_s[tid];
    }
  } else {
#pragma unroll
    for (int hh = 0; hh < 4; ++hh) {
      const int h = h0 + ph + hh;
      if (h >= p.H) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int d = pd + 128 * i;
        if (p.NS == 1) {
          reinterpret_cast<uint32_t*>(p.out + (int64_t(t) * p.H + h) * 512 + d)[0] =
              uint32_t(f2bf(acc[hh][2 * i])) | (uint32_t(f2bf(acc[hh][2 * i + 1])) << 16);
        } else {
          float* o = p.part + ((int64_t(t) * p.H + h) * p.NS + split) * 512 + d;
          o[0] = acc[hh][2 * i];
          o[1] = acc[hh][2 * i + 1];
        }
      }
    }
  }
}


// ---- decode on tensor cores (mma.sync m16n8k16 bf16, fp32 accumulate; sm_80+) -----------------
// Same two passes and rounding points as mqa_kernel. CTA: one token x 64 heads x one split, 8 warps.
// Per 64-candidate chunk: gather + dequantise into shared memory (bf16 is exact for e4m3 x 2^k);
// S = Q K^T with warp w owning heads 16(w%4).. and keys 32(w/4)..; pass 2 writes bf16 P to shared
// memory and computes O = P V with warp w owning heads 16(w%4).. and dims 256(w/4)...
constexpr int MH = 64, MK = 64, SLD = 584, PLD = 72;  // row strides in halves (16-byte aligned, conflict-free)
constexpr size_t kMqaMmaSmem = size_t(MH + MK) * SLD * 2 + size_t(MH) * PLD * 2 + 6 * MH * 4 + 2 * MK * 8;

using mma::ldsm4;
using mma::ldsm4t;
using mma::mma16816;
using mma::mma_16x32_k16;
__device__ __forceinline__ void stat_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;
  s = (m > -INFINITY ? s * expf(m - mm) : 0.f) + (m2 > -INFINITY ? s2 * expf(m2 - mm) : 0.f);
  m = mm;
}

template <int PASS>
__global__ void __launch_bounds__(256, 1) mqa_mma_kernel(MqaP p) {
  extern __shared__ __align__(16) uint8_t smraw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smraw);
  uint16_t* kvs = qs + MH * SLD;
  uint16_t* ps = kvs + MK * SLD;
  float* rowM = reinterpret_cast<float*>(ps + MH * PLD);
  float* rowI = rowM + MH;
  float* redm = rowI + MH;   // [2][MH]
  float* reds = redm + 2 * MH;
  int64_t* slots = reinterpret_cast<int64_t*>(reds + 2 * MH);
  const int t = blockIdx.x, h0 = blockIdx.y * MH, split = blockIdx.z, tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int posn = p.pos[t];
  const int64_t n = p.topk ? p.K : int64_t(posn) + 1;
  const int64_t per = ((n + p.NS - 1) / p.NS + MK - 1) / MK * MK;
  const int64_t c_begin = split * per, c_end = min(n, c_begin + per);
  for (int i = tid; i < MH * 72; i += 256) {  // Q: 72 x 16 bytes per head row
    const int h = i / 72, c = i % 72;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h0 + h < p.H) {
      const int64_t row = int64_t(t) * p.H + h0 + h;
      v = c < 64 ? reinterpret_cast<const uint4*>(p.qlat + row * 512)[c] : reinterpret_cast<const uint4*>(p.qpe + row * 64)[c - 64];
    }
    *reinterpret_cast<uint4*>(qs + h * SLD + c * 8) = v;
  }
  if (PASS == 2 && tid < MH) {
    const bool ok = h0 + tid < p.H;
    rowM[tid] = ok ? p.stat[(int64_t(t) * p.H + h0 + tid) * 2] : 0.f;
    rowI[tid] = ok ? p.stat[(int64_t(t) * p.H + h0 + tid) * 2 + 1] : 0.f;
  }
  const int wh = (warp % 4) * 16, wk = (warp / 4) * 32, wd = (warp / 4) * 256;
  float m0 = -INFINITY, s0 = 0.f, m1 = -INFINITY, s1 = 0.f;  // pass 1: rows gid, gid + 8
  float acc[PASS == 2 ? 32 : 1][4] = {};
  // Software pipeline: the next chunk's rows are loaded into registers (10 x 16 bytes per thread)
  // while the current chunk is multiplied; thread (r = tid/4, g = tid%4) owns latent group g and 16
  // RoPE values of row r.
  const int gr = tid / 4, gg = tid % 4;
  uint4 v[8], pe0 = make_uint4(0, 0, 0, 0), pe1 = make_uint4(0, 0, 0, 0);
  float gsc = 0.f;
  bool have = false;
  auto fetch = [&](int64_t slot) {
    have = slot >= 0;
    if (have) {
      const uint8_t* row = p.cache + slot * kMlaTokenBytes;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = reinterpret_cast<const uint4*>(row + gg * 128)[e];
      pe0 = reinterpret_cast<const uint4*>(row + kRopeOff + gg * 32)[0];
      pe1 = reinterpret_cast<const uint4*>(row + kRopeOff + gg * 32)[1];
      gsc = reinterpret_cast<const float*>(row + kScalesOff)[gg];
    }
  };
  if (c_begin < c_end) {
    if (tid < MK) slots[tid] = c_begin + tid < c_end ? mqa_slot(p, t, c_begin + tid, posn) : -1;
    __syncthreads();
    fetch(slots[gr]);
  }
  int cur = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += MK, cur ^= 1) {
    __syncthreads();  // every reader of the previous chunk (kvs, ps, slots) is done
    {  // dequantise the fetched row part into shared memory (bf16 is exact for e4m3 x 2^k)
      uint16_t* dst = kvs + gr * SLD;
      if (have) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const uint32_t w[4] = {v[e].x, v[e].y, v[e].z, v[e].w};
          uint32_t o[8];
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const uint32_t lo = f2bf(__fmul_rn(e4m3_to_float((w[i / 2] >> (16 * (i % 2))) & 0xff), gsc));
            const uint32_t hi = f2bf(__fmul_rn(e4m3_to_float((w[i / 2] >> (16 * (i % 2) + 8)) & 0xff), gsc));
            o[i] = lo | (hi << 16);
          }
          *reinterpret_cast<uint4*>(dst + gg * 128 + e * 16) = make_uint4(o[0], o[1], o[2], o[3]);
          *reinterpret_cast<uint4*>(dst + gg * 128 + e * 16 + 8) = make_uint4(o[4], o[5], o[6], o[7]);
        }
        *reinterpret_cast<uint4*>(dst + 512 + gg * 16) = pe0;
        *reinterpret_cast<uint4*>(dst + 512 + gg * 16 + 8) = pe1;
      } else {
        for (int e = 0; e < 16; ++e) *reinterpret_cast<uint4*>(dst + gg * 128 + e * 8) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dst + 512 + gg * 16) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dst + 512 + gg * 16 + 8) = make_uint4(0, 0, 0, 0);
      }
    }
    const int64_t c1 = c0 + MK;
    if (tid < MK) slots[(cur ^ 1) * MK + tid] = c1 + tid < c_end ? mqa_slot(p, t, c1 + tid, posn) : -1;
    __syncthreads();  // kvs holds chunk c0; the next chunk's slots are known
    if (c1 < c_end) fetch(slots[(cur ^ 1) * MK + gr]);
    float cl[4][4] = {}, cp[4][4] = {};
    {
      const uint16_t* qa = qs + (wh + lane % 16) * SLD + (lane / 16) * 8;
      const uint16_t* kb = kvs + (wk + lane % 8 + 8 * (lane / 16)) * SLD + ((lane / 8) % 2) * 8;
#pragma unroll 4
      for (int ks = 0; ks < 32; ++ks)
        mma_16x32_k16(cl, qa + ks * 16, kb + ks * 16, kb + 16 * SLD + ks * 16);
#pragma unroll
      for (int ks = 32; ks < 36; ++ks)
        mma_16x32_k16(cp, qa + ks * 16, kb + ks * 16, kb + 16 * SLD + ks * 16);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = wk + nt * 8 + 2 * tq + (e & 1), row = gid + 8 * (e >> 1);
        const bool valid = slots[cur * MK + key] >= 0;
        const float sc = rbf(__fmul_rn(rbf(__fadd_rn(rbf(cl[nt][e]), rbf(cp[nt][e]))), p.scale));
        if (PASS == 1) {
          if (valid) {
            float& m = (e >> 1) ? m1 : m0;   // rows gid (e = 0, 1) and gid + 8 (e = 2, 3)
            float& su = (e >> 1) ? s1 : s0;
            if (sc > m) {
              su = (m > -INFINITY ? su * expf(m - sc) : 0.f) + 1.0f;
              m = sc;
            } else {
              su += expf(sc - m);
            }
          }
        } else {
          const float pr = valid ? rbf(__fmul_rn(expf(__fsub_rn(sc, rowM[wh + row])), rowI[wh + row])) : 0.f;
          ps[(wh + row) * PLD + key] = f2bf(pr);
        }
      }
    if (PASS == 2) {
      __syncthreads();
      const uint16_t* pa = ps + (wh + lane % 16) * PLD + (lane / 16) * 8;
      const uint16_t* vb = kvs + (lane % 8 + 8 * ((lane / 8) % 2)) * SLD + wd + 8 * (lane / 16);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        ldsm4(a, pa + kk * 16);
#pragma unroll
        for (int np = 0; np < 16; ++np) {
          uint32_t b[4];
          ldsm4t(b, vb + kk * 16 * SLD + np * 16);
          mma16816(acc[(2 * np) % (PASS == 2 ? 32 : 1)], a, b[0], b[1]);
          mma16816(acc[(2 * np + 1) % (PASS == 2 ? 32 : 1)], a, b[2], b[3]);
        }
      }
    }
  }
  if (PASS == 1) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      const float mo0 = __shfl_xor_sync(0xffffffffu, m0, o), so0 = __shfl_xor_sync(0xffffffffu, s0, o);
      const float mo1 = __shfl_xor_sync(0xffffffffu, m1, o), so1 = __shfl_xor_sync(0xffffffffu, s1, o);
      stat_merge(m0, s0, mo0, so0);
      stat_merge(m1, s1, mo1, so1);
    }
    __syncthreads();
    if (tq == 0) {
      redm[(warp / 4) * MH + wh + gid] = m0;
      reds[(warp / 4) * MH + wh + gid] = s0;
      redm[(warp / 4) * MH + wh + gid + 8] = m1;
      reds[(warp / 4) * MH + wh + gid + 8] = s1;
    }
    __syncthreads();
    if (tid < MH && h0 + tid < p.H) {
      float m = redm[tid], su = reds[tid];
      stat_merge(m, su, redm[MH + tid], reds[MH + tid]);
      float* o = p.ms + ((int64_t(t) * p.H + h0 + tid) * p.NS + split) * 2;
      o[0] = m;
      o[1] = su;
    }
  } else {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int h = h0 + wh + gid + 8 * half;
      if (h >= p.H) continue;
#pragma unroll
      for (int nt = 0; nt < 32; ++nt) {
        const int d = wd + nt * 8 + 2 * tq;
        const float x0 = acc[nt % (PASS == 2 ? 32 : 1)][2 * half], x1 = acc[nt % (PASS == 2 ? 32 : 1)][2 * half + 1];
        if (p.NS == 1) {
          *reinterpret_cast<uint32_t*>(p.out + (int64_t(t) * p.H + h) * 512 + d) = uint32_t(f2bf(x0)) | (uint32_t(f2bf(x1)) << 16);
        } else {
          float* o = p.part + ((int64_t(t) * p.H + h) * p.NS + split) * 512 + d;
          o[0] = x0;
          o[1] = x1;
        }
      }
    }
  }
}

__global__ void mqa_stat_kernel(const float* ms, int64_t rows, int NS, float* stat) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float m = -INFINITY;
  for (int i = 0; i < NS; ++i) m = fmaxf(m, ms[(r * NS + i) * 2]);
  float s = 0.f;
  for (int i = 0; i < NS; ++i) {
    const float mi = ms[(r * NS + i) * 2];
    if (mi > -INFINITY) s += ms[(r * NS + i) * 2 + 1] * expf(mi - m);
  }
  stat[r * 2] = m;
  stat[r * 2 + 1] = s > 0.f ? 1.0f / s : 0.f;
}

__global__ void mqa_reduce_kernel(const float* part, int64_t rows, int NS, uint16_t* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * 512) return;
  const int64_t r = i / 512, d = i % 512;
  float s = 0.f;
  for (int k = 0; k < NS; ++k) s += part[(r * NS + k) * 512 + d];
  out[i] = f2bf(s);
}

}  // namespace

void CudaBackend::mla_cache_write(const Tensor& kv, const Tensor& k_pe, KvLayer& cache, const Batch& b) {
  const int64_t T = b.n_tokens();
  if (T == 0) return;
  const DevBatch& d = dev(b);
  mla_cache_write_kernel<<<unsigned(T), 128>>>(kv.ptr<uint16_t>(), k_pe.ptr<uint16_t>(), cache.mla.ptr<uint8_t>(),
                                               d.positions, d.token_seq, d.block_table, d.max_blocks, err_);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) {
  const DevBatch& d = dev(b);
  if (d.max_end == 0 || d.n_seqs == 0) return;
  mla_cache_read_kernel<<<dim3(cdiv(d.max_end, 4), unsigned(d.n_seqs)), 128>>>(
      cache.mla.ptr<uint8_t>(), d.block_table, d.max_blocks, d.seq_start, d.seq_nnew, d.seq_ctx, kv.ptr<uint16_t>(),
      pe.ptr<uint16_t>(), err_);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                                const Tensor* topk, float scale, Tensor& out_lat) {
  const int64_t T = q_lat.dim(0), H = q_lat.dim(1);
  DSA_CHECK(q_lat.dim(2) == kMlaLatent && q_pe.dim(2) == kMlaRope, "attention_mqa: shapes ", q_lat.str(), " ",
            q_pe.str());
  if (T == 0) return;
  if (topk) DSA_CHECK(topk->dim(0) == T, "top-k rows ", topk->dim(0), " != batch tokens ", T);
  const DevBatch& d = dev(b);
  const MqaConfig& tun = config().mqa;
  const int asked = tun.simple ? 3 : tun.path;
  int path = asked;
  // Kernels that need more shared memory per block than this GPU has fall back, in order: stored
  // scores (223 KB: sm_90) -> two-pass recompute (158 KB: sm_80, sm_90) -> CUDA cores (any sm_80+).
  if ((path == 0 || path == 1) && mqa_stored_smem_bytes() > smem_optin_) path = 2;
  if (path == 2 && kMqaMmaSmem > smem_optin_) path = 3;
  if (path != asked) {
    if (!mla_fallback_said_)
      std::fprintf(stderr, "dsa: MLA decode: this GPU allows %zu bytes of shared memory per block; using the %s kernel\n",
                   smem_optin_, path == 2 ? "two-pass mma.sync" : "CUDA-core");
    mla_fallback_said_ = true;
  }
  if (path == 0 || path == 1) {  // stored scores, no recompute (decode.cu)
    mqa_decode_stored(*this, q_lat, q_pe, cache, d, topk, scale, out_lat);
    return;
  }
  const int64_t n_max = topk ? topk->dim(1) : int64_t(d.max_end);
  const bool mma = path != 3;
  const int64_t hb = mma ? MH : HB;
  const int64_t HG = (H + hb - 1) / hb;
  // Splits: enough blocks to fill the GPU twice over, at least 64 candidates per split.
  int64_t NS = std::max<int64_t>(1, (2 * int64_t(sm_count()) + T * HG - 1) / (T * HG));
  if (tun.force_splits > 0) NS = tun.force_splits;
  NS = std::min<int64_t>(NS, std::max<int64_t>(1, n_max / 64));  // at least one 64-candidate chunk per split
  NS = std::min<int64_t>(NS, 64);
  Tensor ms = alloc(DType::F32, {T, H, NS, 2}), stat = alloc(DType::F32, {T, H, 2});
  Tensor part;
  if (NS > 1) part = alloc(DType::F32, {T, H, NS, 512});
  MqaP p{};
  p.qlat = q_lat.ptr<uint16_t>(); p.qpe = q_pe.ptr<uint16_t>();
  p.cache = cache.mla.ptr<uint8_t>();
  p.topk = topk ? topk->ptr<int32_t>() : nullptr; p.K = topk ? topk->dim(1) : 0;
  p.pos = d.positions; p.tseq = d.token_seq; p.bt = d.block_table; p.mb = d.max_blocks;
  p.H = int(H); p.NS = int(NS); p.scale = scale;
  p.ms = ms.ptr<float>(); p.stat = stat.ptr<float>(); p.part = NS > 1 ? part.ptr<float>() : nullptr;
  p.out = out_lat.ptr<uint16_t>(); p.err = err_;
  const dim3 grid{unsigned(T), unsigned(HG), unsigned(NS)};
  if (mma) {
    context().smem_attr(mqa_mma_kernel<1>, size_t(kMqaMmaSmem));
    context().smem_attr(mqa_mma_kernel<2>, size_t(kMqaMmaSmem));
    mqa_mma_kernel<1><<<grid, 256, kMqaMmaSmem>>>(p);
  } else {
    mqa_kernel<1><<<grid, 256>>>(p);
  }
  DSA_LAUNCH_CHECK();
  mqa_stat_kernel<<<cdiv(T * H, 128), 128>>>(p.ms, T * H, int(NS), p.stat);
  DSA_LAUNCH_CHECK();
  if (mma) mqa_mma_kernel<2><<<grid, 256, kMqaMmaSmem>>>(p);
  else mqa_kernel<2><<<grid, 256>>>(p);
  DSA_LAUNCH_CHECK();
  if (NS > 1) {
    mqa_reduce_kernel<<<cdiv(T * H * 512, 256), 256>>>(p.part, T * H, int(NS), p.out);
    DSA_LAUNCH_CHECK();
  }
}

}  // namespace dsa::cuda

// Lightning indexer on CUDA (portable sm_80+, CUDA cores): the 132-byte FP8 key cache, the scores
//   I[t, j] = k_scale[j] * sum_h w[t, h] * relu(q[t, h, :] . k[j, :])
// computed by tensor cores (mma.sync, f16 operands exact for e4m3, fp32 accumulation) — or, with
// DSA_CUDA_INDEXER_EXACT=1, on CUDA cores in the CPU reference's order (per head a sequential fma chain over the 128 dims, heads
// summed in order with fma, the key scale applied after the sum) — so the scores match the CPU's
// bit for bit where its compiler fuses multiply-adds (x86-64-v3/v4) — and exact top-k over tiles of
// at most score_tile_floats_ scores: never a full [T x L] matrix beyond that bound.
#include <algorithm>
#include <cstdlib>

#include "backends/cuda/cuda_backend.h"

namespace dsa::cuda {

namespace {

constexpr int64_t kBlockKeyBytes = kKvBlock * kIndexDim;
constexpr int KLDF = 132;  // float stride of a key row in shared memory (16-byte aligned, conflict-free)

__global__ void indexer_cache_write_kernel(const uint16_t* k, uint8_t* cache, const int32_t* pos, const int32_t* tseq,
                                           const int32_t* bt, int mb, int64_t T, int* err) {
  const int64_t t = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (t >= T) return;
  const int l = threadIdx.x, p = pos[t];
  const int blk = bt[int64_t(tseq[t]) * mb + p / kKvBlock], off = p % kKvBlock;
  if (blk < 0) {
    if (l == 0) atomicOr(err, kErrBlock);
    return;
  }
  uint8_t* base = cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
  const uint2 raw = *reinterpret_cast<const uint2*>(k + t * kIndexDim + l * 4);
  float v[4] = {bf2f(raw.x & 0xffff), bf2f(raw.x >> 16), bf2f(raw.y & 0xffff), bf2f(raw.y >> 16)};
  const float amax = warp_max(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
  const float sc = ue8m0_scale_dev(amax), inv = 1.0f / sc;
  *reinterpret_cast<uint32_t*>(base + off * kIndexDim + l * 4) =
      uint32_t(quant_e4m3(v[0], inv)) | (uint32_t(quant_e4m3(v[1], inv)) << 8) |
      (uint32_t(quant_e4m3(v[2], inv)) << 16) | (uint32_t(quant_e4m3(v[3], inv)) << 24);
  if (l == 0) reinterpret_cast<float*>(base + kBlockKeyBytes)[off] = sc;
}

struct ScoreP {
  const uint8_t* q;   // [T, Hi, 128] e4m3
  const float* w;     // [T, Hi]
  const uint8_t* cache;
  const int32_t* pos; const int32_t* tseq; const int32_t* bt; int mb;
  int Hi;
  int64_t t0;         // first token of this tile
  float* out; int64_t ld;  // row r = token t0 + r; column j
  int fill_ninf;      // write -inf for p < j < ld (indexer_scores)
};

// Block: one token (blockIdx.y) x a strided set of 64-key cache blocks; thread j = key j.
__global__ void __launch_bounds__(64) indexer_score_kernel(ScoreP p) {
  extern __shared__ __align__(16) float sm[];
  float* qf = sm;                            // [Hi][128]
  float* wf = qf + p.Hi * 128;               // [Hi]
  float* kf = wf + ((p.Hi + 3) / 4) * 4;     // [64][KLDF]
  float* ksc = kf + 64 * KLDF;               // [64]
  const int64_t t = p.t0 + blockIdx.y;
  const int j = threadIdx.x;
  const int posn = p.pos[t], s = p.tseq[t];
  const int nblk = (posn + kKvBlock) / kKvBlock;
  float* orow = p.out + int64_t(blockIdx.y) * p.ld;
  if (p.fill_ninf)
    for (int64_t c = int64_t(posn) + 1 + int64_t(blockIdx.x) * 64 + j; c < p.ld; c += int64_t(gridDim.x) * 64)
      orow[c] = -INFINITY;
  if (int(blockIdx.x) >= nblk) return;
  for (int i = j; i < p.Hi * 128; i += 64) qf[i] = e4m3_to_float(p.q[t * p.Hi * 128 + i]);
  for (int i = j; i < p.Hi; i += 64) wf[i] = p.w[t * p.Hi + i];
  for (int kb = blockIdx.x; kb < nblk; kb += gridDim.x) {
    const int blk = p.bt[int64_t(s) * p.mb + kb];
    __syncthreads();
    if (blk >= 0) {
      const uint8_t* base = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
      // 64 keys x 128 bytes: each thread converts 128 bytes (8 x 16-byte loads, coalesced by rows)
      for (int i = j; i < 64 * 8; i += 64) {
        const int r = i / 8, c = (i % 8) * 16;
        const uint4 v = *reinterpret_cast<const uint4*>(base + r * 128 + c);
        const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
        float* dst = kf + r * KLDF + c;
#pragma unroll
        for (int e = 0; e < 16; ++e) dst[e] = e4m3_to_float((wv[e / 4] >> (8 * (e % 4))) & 0xff);
      }
      ksc[j] = reinterpret_cast<const float*>(base + kBlockKeyBytes)[j];
    }
    __syncthreads();
    const int64_t col = int64_t(kb) * 64 + j;
    if (blk < 0) {
      if (col <= posn) orow[col] = -INFINITY;
      continue;
    }
    if (col > posn) {
      if (col < p.ld) orow[col] = -INFINITY;
      continue;
    }
    const float4* krow = reinterpret_cast<const float4*>(kf + j * KLDF);
    float tot = 0.f;
    int h = 0;
    for (; h + 4 <= p.Hi; h += 4) {
      const float4* q0 = reinterpret_cast<const float4*>(qf + (h + 0) * 128);
      const float4* q1 = reinterpret_cast<const float4*>(qf + (h + 1) * 128);
      const float4* q2 = reinterpret_cast<const float4*>(qf + (h + 2) * 128);
      const float4* q3 = reinterpret_cast<const float4*>(qf + (h + 3) * 128);
      float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 8
      for (int d = 0; d < 32; ++d) {
        const float4 kv = krow[d], x0 = q0[d], x1 = q1[d], x2 = q2[d], x3 = q3[d];
        a0 = fmaf(x0.x, kv.x, a0); a0 = fmaf(x0.y, kv.y, a0); a0 = fmaf(x0.z, kv.z, a0); a0 = fmaf(x0.w, kv.w, a0);
        a1 = fmaf(x1.x, kv.x, a1); a1 = fmaf(x1.y, kv.y, a1); a1 = fmaf(x1.z, kv.z, a1); a1 = fmaf(x1.w, kv.w, a1);
        a2 = fmaf(x2.x, kv.x, a2); a2 = fmaf(x2.y, kv.y, a2); a2 = fmaf(x2.z, kv.z, a2); a2 = fmaf(x2.w, kv.w, a2);
        a3 = fmaf(x3.x, kv.x, a3); a3 = fmaf(x3.y, kv.y, a3); a3 = fmaf(x3.z, kv.z, a3); a3 = fmaf(x3.w, kv.w, a3);
      }
      tot = fmaf(wf[h + 0], fmaxf(a0, 0.f), tot);
      tot = fmaf(wf[h + 1], fmaxf(a1, 0.f), tot);
      tot = fmaf(wf[h + 2], fmaxf(a2, 0.f), tot);
      tot = fmaf(wf[h + 3], fmaxf(a3, 0.f), tot);
    }
    for (; h < p.Hi; ++h) {
      const float4* q0 = reinterpret_cast<const float4*>(qf + h * 128);
      float a0 = 0.f;
      for (int d = 0; d < 32; ++d) {
        const float4 kv = krow[d], x0 = q0[d];
        a0 = fmaf(x0.x, kv.x, a0); a0 = fmaf(x0.y, kv.y, a0); a0 = fmaf(x0.z, kv.z, a0); a0 = fmaf(x0.w, kv.w, a0);
      }
      tot = fmaf(wf[h], fmaxf(a0, 0.f), tot);
    }
    orow[col] = __fmul_rn(tot, ksc[j]);
  }
}


// ---- tensor-core scores (mma.sync m16n8k16, f16 operands, fp32 accumulate; sm_80+) -----------
// e4m3 values are exact in f16 and their products exact in fp32, so only the fp32 summation order
// differs from the CPU (the exact CUDA-core kernel above stays available: DSA_CUDA_INDEXER_EXACT=1).
// Block: 4 warps = one 64-key cache block per step; warp w owns keys 16w..16w+15 as the A operand
// (keys x dims), the token's heads are the B operand (dims x heads) from shared memory; ReLU, the
// head weights and the sum over heads run on the accumulators in registers, then across the quad.
constexpr int QW = 68;    // words per f16 head row in shared memory (64 + 4 pad: conflict-free)
constexpr int KB = 144;   // bytes per key row in shared memory (128 + 16 pad)

__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint16_t v) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(v), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

__global__ void __launch_bounds__(128) indexer_score_mma_kernel(ScoreP p) {
  extern __shared__ __align__(16) uint8_t smraw[];
  const int HP = (p.Hi + 7) / 8 * 8;
  uint32_t* qh = reinterpret_cast<uint32_t*>(smraw);          // [HP][QW] f16 pairs
  float* wf = reinterpret_cast<float*>(qh + HP * QW);          // [HP]
  uint8_t* ks = reinterpret_cast<uint8_t*>(wf + HP);           // [64][KB] e4m3
  float* ksc = reinterpret_cast<float*>(ks + 64 * KB);         // [64]
  const int64_t t = p.t0 + blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tq = lane % 4;
  const int posn = p.pos[t], s = p.tseq[t];
  const int nblk = (posn + kKvBlock) / kKvBlock;
  float* orow = p.out + int64_t(blockIdx.y) * p.ld;
  if (p.fill_ninf)
    for (int64_t c = int64_t(posn) + 1 + int64_t(blockIdx.x) * 128 + tid; c < p.ld; c += int64_t(gridDim.x) * 128)
      orow[c] = -INFINITY;
  if (int(blockIdx.x) >= nblk) return;
  const uint8_t* qsrc = p.q + t * p.Hi * 128;
  for (int i = tid; i < HP * 64; i += 128) {
    const int h = i / 64, c = i % 64;
    qh[h * QW + c] = h < p.Hi ? e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(qsrc + h * 128 + 2 * c)) : 0u;
  }
  for (int i = tid; i < HP; i += 128) wf[i] = i < p.Hi ? p.w[t * p.Hi + i] : 0.f;
  // Software pipeline: the next cache block's 8 KB of keys (4 x 16 bytes per thread) and scales are
  // loaded into registers while the current block is multiplied.
  uint4 kr[4];
  float kscale = 0.f;
  auto fetch = [&](int kb) -> int {
    const int blk = p.bt[int64_t(s) * p.mb + kb];
    if (blk >= 0) {
      const uint8_t* base = p.cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = tid + 128 * e, r = i / 8, c = (i % 8) * 16;
        kr[e] = *reinterpret_cast<const uint4*>(base + r * 128 + c);
      }
      if (tid < 64) kscale = reinterpret_cast<const float*>(base + kBlockKeyBytes)[tid];
    }
    return blk;
  };
  int next_blk = fetch(blockIdx.x);
  for (int kb = blockIdx.x; kb < nblk; kb += gridDim.x) {
    const int blk = next_blk;
    __syncthreads();
    if (blk >= 0) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = tid + 128 * e, r = i / 8, c = (i % 8) * 16;
        *reinterpret_cast<uint4*>(ks + r * KB + c) = kr[e];
      }
      if (tid < 64) ksc[tid] = kscale;
    }
    if (kb + int(gridDim.x) < nblk) next_blk = fetch(kb + gridDim.x);
    __syncthreads();
    const int j0 = warp * 16 + gid, j1 = j0 + 8;
    const int64_t col0 = int64_t(kb) * 64 + j0, col1 = int64_t(kb) * 64 + j1;
    if (blk < 0) {
      if (tq == 0) {
        if (col0 <= posn) orow[col0] = -INFINITY;
        if (col1 <= posn) orow[col1] = -INFINITY;
      }
      continue;
    }
    if (int64_t(kb) * 64 + warp * 16 > posn) {  // the whole warp's keys are in the future
      if (tq == 0) {
        if (col0 < p.ld) orow[col0] = -INFINITY;
        if (col1 < p.ld) orow[col1] = -INFINITY;
      }
      continue;
    }
    uint32_t a[8][4];
    const uint8_t* r0 = ks + j0 * KB + 2 * tq;
    const uint8_t* r1 = ks + j1 * KB + 2 * tq;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      a[k][0] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r0 + 16 * k));
      a[k][1] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r1 + 16 * k));
      a[k][2] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r0 + 16 * k + 8));
      a[k][3] = e4m3x2_to_f16x2(*reinterpret_cast<const uint16_t*>(r1 + 16 * k + 8));
    }
    float lo = 0.f, hi = 0.f;
    for (int nt = 0; nt < HP / 8; ++nt) {
      float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
      const uint32_t* qb = qh + (nt * 8 + gid) * QW + tq;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const uint32_t b0 = qb[8 * k], b1 = qb[8 * k + 4];
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
            : "r"(a[k][0]), "r"(a[k][1]), "r"(a[k][2]), "r"(a[k][3]), "r"(b0), "r"(b1));
      }
      const float w0 = wf[nt * 8 + 2 * tq], w1 = wf[nt * 8 + 2 * tq + 1];
      lo = fmaf(w0, fmaxf(c0, 0.f), lo);
      lo = fmaf(w1, fmaxf(c1, 0.f), lo);
      hi = fmaf(w0, fmaxf(c2, 0.f), hi);
      hi = fmaf(w1, fmaxf(c3, 0.f), hi);
    }
    lo += __shfl_xor_sync(0xffffffffu, lo, 1);
    lo += __shfl_xor_sync(0xffffffffu, lo, 2);
    hi += __shfl_xor_sync(0xffffffffu, hi, 1);
    hi += __shfl_xor_sync(0xffffffffu, hi, 2);
    if (tq == 0) {
      if (col0 < p.ld) orow[col0] = col0 <= posn ? __fmul_rn(lo, ksc[j0]) : -INFINITY;
      if (col1 < p.ld) orow[col1] = col1 <= posn ? __fmul_rn(hi, ksc[j1]) : -INFINITY;
    }
  }
}

size_t score_mma_smem(int Hi) {
  const int HP = (Hi + 7) / 8 * 8;
  return size_t(HP) * QW * 4 + size_t(HP) * 4 + 64 * KB + 64 * 4;
}

bool use_exact_indexer() {
  static const bool exact = [] {
    const char* e = std::getenv("DSA_CUDA_INDEXER_EXACT");
    return e && *e && *e != '0';
  }();
  return exact;
}

size_t score_smem(int Hi) { return size_t(Hi * 128 + ((Hi + 3) / 4) * 4 + 64 * KLDF + 64) * 4; }

void launch_scores(const ScoreP& p, int64_t rows, int64_t max_nblk, int sms) {
  if (rows == 0) return;
  const size_t smem = score_smem(p.Hi);
  static bool attr = false;
  if (!attr) {
    DSA_CUDA_CHECK(cudaFuncSetAttribute(indexer_score_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    attr = true;
  }
  DSA_CHECK(smem <= 200 * 1024, "indexer: ", p.Hi, " heads need too much shared memory");
  // Key blocks per token: enough CTAs to fill the GPU a few times, at least 2 key blocks per CTA.
  int64_t gx = std::max<int64_t>(1, (8 * int64_t(sms) + rows - 1) / rows);
  gx = std::min<int64_t>(gx, std::max<int64_t>(1, (max_nblk + 1) / 2));
  DSA_CHECK(rows <= 65535, "indexer: tile of ", rows, " rows");
  if (use_exact_indexer()) {
    indexer_score_kernel<<<dim3(unsigned(gx), unsigned(rows)), 64, smem>>>(p);
  } else {
    static bool attr2 = false;
    if (!attr2) {
      DSA_CUDA_CHECK(cudaFuncSetAttribute(indexer_score_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
      attr2 = true;
    }
    indexer_score_mma_kernel<<<dim3(unsigned(gx), unsigned(rows)), 128, score_mma_smem(p.Hi)>>>(p);
  }
  DSA_LAUNCH_CHECK();
}

__global__ void indexer_weights_kernel(float* w, const float* qs, int64_t n, float hs, float ss) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) w[i] = __fmul_rn(__fmul_rn(__fmul_rn(w[i], hs), qs[i]), ss);
}

}  // namespace

void CudaBackend::indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) {
  const int64_t T = b.n_tokens();
  if (T == 0) return;
  const DevBatch& d = dev(b);
  indexer_cache_write_kernel<<<cdiv(T, 8), dim3(32, 8)>>>(k.ptr<uint16_t>(), cache.indexer.ptr<uint8_t>(),
                                                          d.positions, d.token_seq, d.block_table, d.max_blocks, T,
                                                          err_);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) {
  const int64_t n = w.numel();
  if (n == 0) return;
  indexer_weights_kernel<<<cdiv(n, 256), 256>>>(w.ptr<float>(), q_scale.ptr<float>(), n, head_scale, softmax_scale);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                                 Tensor& scores) {
  const int64_t T = b.n_tokens(), L = scores.dim(1);
  if (T == 0) return;
  const DevBatch& d = dev(b);
  DSA_CHECK(d.max_end <= L, "indexer_scores: ", L, " columns for positions up to ", d.max_end);
  ScoreP p{};
  p.q = q.ptr<uint8_t>(); p.w = w.ptr<float>(); p.cache = cache.indexer.ptr<uint8_t>();
  p.pos = d.positions; p.tseq = d.token_seq; p.bt = d.block_table; p.mb = d.max_blocks;
  p.Hi = int(q.dim(1)); p.out = scores.ptr<float>(); p.ld = L; p.fill_ninf = 1;
  for (int64_t t0 = 0; t0 < T; t0 += 65535) {
    p.t0 = t0;
    p.out = scores.ptr<float>() + t0 * L;
    launch_scores(p, std::min<int64_t>(65535, T - t0), (d.max_end + kKvBlock - 1) / kKvBlock, sms_);
  }
}

void CudaBackend::indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                               Tensor& topk) {
  const int64_t T = b.n_tokens(), Hi = q.dim(1);
  DSA_CHECK(q.dim(2) == kIndexDim && topk.dim(1) == k, "indexer_topk: shapes ", q.str(), " ", topk.str());
  if (T == 0) return;
  const DevBatch& d = dev(b);
  const int64_t max_nblk = (d.max_end + kKvBlock - 1) / kKvBlock, ld = std::max<int64_t>(64, max_nblk * kKvBlock);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(T, score_tile_floats_ / ld), 65535));
  Tensor tile = alloc(DType::F32, {rows, ld});  // the bounded score tile, reused for every chunk of tokens
  ScoreP p{};
  p.q = q.ptr<uint8_t>(); p.w = w.ptr<float>(); p.cache = cache.indexer.ptr<uint8_t>();
  p.pos = d.positions; p.tseq = d.token_seq; p.bt = d.block_table; p.mb = d.max_blocks;
  p.Hi = int(Hi); p.out = tile.ptr<float>(); p.ld = ld; p.fill_ninf = 0;
  for (int64_t t0 = 0; t0 < T; t0 += rows) {
    const int64_t r = std::min(rows, T - t0);
    p.t0 = t0;
    launch_scores(p, r, max_nblk, sms_);
    launch_topk(tile.ptr<float>(), ld, d.positions, 1, t0, r, k, topk.ptr<int32_t>());
  }
}

}  // namespace dsa::cuda

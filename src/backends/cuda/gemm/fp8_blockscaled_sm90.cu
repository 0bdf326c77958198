// Block-scaled FP8 GEMM on Hopper tensor cores (sm_90a): TMA loads into a shared-memory ring, warpgroup
// wgmma e4m3 x e4m3 -> fp32, promotion of each 128-K block with its two scales, bf16 epilogue. This is the
// `--numerics fast` FP8 linear above 16 rows (gemm.cu, CudaBackend::linear_fp8); DeepGEMM's recipe for the
// DeepSeek checkpoints (1x128 activation scales, 128x128 weight scales). Design: docs/fp8-gemm-cuda.md,
// "sm_90a block-scaled wgmma (fast numerics)".
//
// Why not the reference kernel (fp8_gemm.cu): it converts e4m3 to f16 and runs mma.sync so that a block's
// sum is fp32, which caps it near 300 TFLOP/s on H100 (the f16 mma.sync rate, minus the conversions). The
// native FP8 path is wgmma reading e4m3 straight from shared memory, ~4x the rate, but it sums a k32 step
// with ~14 significant bits. DeepSeek-V3 (§3.3.2) keeps that error to one 128-K block by promoting each
// block's partial sum into fp32 with its scales, which is what fast numerics accept (docs/numerics.md).
//
// CTA (288 threads, one per SM, persistent over output tiles):
//   warps 0-7  two consumer warpgroups; warpgroup g owns rows [64g, 64g + 64) of the 128 x 128 tile and
//              runs wgmma m64n128k32 (4 per 128-K block) into `part`, then promotes it into `acc`;
//   warp 8     the producer: lane 0 issues the TMA copies of each stage (A 128 x 128 e4m3 and W 128 x 128
//              e4m3, 16 KB each) and arms the stage's "full" barrier with their 32 KB; it waits on the
//              stage's "empty" barrier (one arrival per consumer warp) before refilling it.
// Shared memory: kStages x (A tile, W tile), each tile 128 rows x 128 bytes in TMA's 128B swizzle (16-byte
// chunk c of row r at chunk c ^ (r % 8), 1024-aligned), which is the K-major layout the wgmma descriptors
// of wgmma.cuh read; one e4m3 row of a 128-K block is exactly one 128-byte swizzle row.
//
// Numerics, per output (m, n), kb ascending:
//   part_kb = wgmma sum of the block's 128 exact products (four k32 steps, ~14-bit accumulation)
//   acc     = fma(part_kb, as[m, kb] * ws[n / 128, kb], acc)       fp32, acc starting at 0
//   out     = bf16(acc), round to nearest even
// The scale product is one fp32 multiply and the chain is the reference's (fp8_gemm.cu), so the only
// difference from `reference` is the accumulation inside a block.
//
// Tails: rows past M and weight rows past N are zero-filled by TMA (out-of-bounds fill) and masked at the
// store, so any M >= 1 and N >= 1 work (N = 576 = 4.5 tiles, dsa-mini's N = 384); K must be a multiple of 128.
#include "backends/cuda/gemm/fp8_blockscaled_sm90.h"

#include <cuda.h>  // CUtensorMap and the encoder's types only: the driver is reached through the runtime
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "backends/cuda/wgmma.cuh"

namespace dsa::cuda {

namespace {

// ---- tunables ------------------------------------------------------------------------------------
constexpr int kBM = 128;           // tile rows: two consumer warpgroups x the wgmma's 64
constexpr int kBN = 128;           // tile columns: one weight-scale block, so one weight scale per (tile, kb)
constexpr int kBK = 128;           // K per stage: one promotion block (and one 128-byte swizzle row of e4m3)
constexpr int kStages = 4;         // ring depth: 4 x 32 KB; each stage is ~512 tensor-core cycles of work
constexpr int kConsumerWarpgroups = 2;
[[maybe_unused]] constexpr int kGroupM = 8;  // rasterisation: 8 row tiles x all column tiles per group (A and W in L2)

constexpr int kConsumerWarps = 4 * kConsumerWarpgroups;
constexpr int kThreads = 32 * kConsumerWarps + 32;  // + the producer warp
constexpr int kTileABytes = kBM * kBK, kTileWBytes = kBN * kBK;
constexpr int kStageBytes = kTileABytes + kTileWBytes;
constexpr size_t kSmem = 1024 /*alignment slack*/ + size_t(kStages) * kStageBytes + 2 * kStages * sizeof(uint64_t);
static_assert(kBM == 64 * kConsumerWarpgroups, "each consumer warpgroup owns 64 rows (the wgmma M)");
static_assert(kBN == 128, "one weight scale per (tile, kb) needs the tile to be one 128-row scale block");
static_assert(kBK == 128, "a stage is one promotion block of 128 e4m3 = one 128-byte swizzle row");
static_assert(kStageBytes % 1024 == 0, "stages keep the 1024-byte alignment of the 128B swizzle");

struct Params {
  const float* as;  // [M][KB] activation scales (row-major: launch_act_quant's default)
  const float* ws;  // [ceil(N/128)][KB] weight scales
  uint16_t* out;    // bf16 [M][ldo]
  int64_t ldo;
  int M, N, KB;
  int mtiles, ntiles;
  int pair_stores;  // ldo even and out 4-byte aligned: two bf16 per store
};

#if DSA_WGMMA
// Output tile t -> (row tile, column tile): groups of kGroupM row tiles, rows fastest inside a group, so the
// CTAs running at the same time share a few A row blocks and a band of W column blocks (as fp8_gemm.cu).
__device__ __forceinline__ void tile_coords(const Params& p, int t, int& mt, int& nt) {
  const int per_group = kGroupM * p.ntiles;
  const int group = t / per_group, first = group * kGroupM;
  const int rows = min(kGroupM, p.mtiles - first), r = t - group * per_group;
  mt = first + r % rows;
  nt = r / rows;
}
#endif

__global__ void __launch_bounds__(kThreads, 1)
    fp8_blockscaled_sm90_kernel(const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_w,
                                Params p) {
#if DSA_WGMMA
  extern __shared__ __align__(1024) uint8_t smraw[];  // the 128B swizzle needs 1024-byte stage bases
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smraw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(base + size_t(kStages) * kStageBytes);  // TMA bytes landed
  uint64_t* empty = full + kStages;                                                      // consumers done
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int tiles = p.mtiles * p.ntiles;

  if (tid == 32 * kConsumerWarps) {
    for (int s = 0; s < kStages; ++s) {
      tma::mbar_init(&full[s], 1);                 // the producer's arrive_expect_tx (+ the copies' bytes)
      tma::mbar_init(&empty[s], kConsumerWarps);   // lane 0 of every consumer warp
    }
    tma::mbar_init_fence();
    wgmma::fence_proxy_async();  // the initialised barriers visible to the async proxy (TMA completes on them)
  }
  __syncthreads();  // the only CTA-wide barrier: the producer warp leaves the block below when it is done

  if (warp == kConsumerWarps) {
    // ---- producer: one thread walks the same (tile, kb) sequence as the consumers -------------------
    if (lane == 0) {
      tma::prefetch_map(&tm_a);
      tma::prefetch_map(&tm_w);
      int s = 0;
      uint32_t phase = 0;
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int mt, nt;
        tile_coords(p, t, mt, nt);
        for (int kb = 0; kb < p.KB; ++kb) {
          tma::mbar_wait(&empty[s], phase ^ 1);  // the stage's previous block was read (fresh ring: at once)
          uint8_t* st = base + size_t(s) * kStageBytes;
          tma::mbar_arrive_expect_tx(&full[s], kStageBytes);  // out-of-bounds rows are zero-filled and counted
          tma::load_2d(st, &tm_a, kb * kBK, mt * kBM, &full[s]);
          tma::load_2d(st + kTileABytes, &tm_w, kb * kBK, nt * kBN, &full[s]);
          if (++s == kStages) {
            s = 0;
            phase ^= 1;
          }
        }
      }
    }
    return;
  }

  // ---- consumers ------------------------------------------------------------------------------------
  // part[4j + e] / acc[4j + e]: row 16 * (warp % 4) + gid (+8 for e >= 2) of the warpgroup's 64, column
  // 8j + 2tq (+1 for odd e) of the tile (the wgmma accumulator layout, wgmma.cuh).
  const int wg = warp / 4, gid = lane / 4, tq = lane % 4;
  int s = 0;
  uint32_t phase = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int mt, nt;
    tile_coords(p, t, mt, nt);
    const int64_t row0 = int64_t(mt) * kBM + wg * 64 + (warp % 4) * 16 + gid, row1 = row0 + 8;
    const bool ok0 = row0 < p.M, ok1 = row1 < p.M;
    const float* as0 = p.as + (ok0 ? row0 : 0) * p.KB;
    const float* as1 = p.as + (ok1 ? row1 : 0) * p.KB;
    const float* wsr = p.ws + int64_t(nt) * p.KB;

    float acc[64], part[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    // Scales are read one block ahead, so their loads overlap the previous block's MMAs.
    float sa0 = ok0 ? __ldg(as0) : 0.f, sa1 = ok1 ? __ldg(as1) : 0.f, sw = __ldg(wsr);
    for (int kb = 0; kb < p.KB; ++kb) {
      const bool more = kb + 1 < p.KB;
      const float na0 = ok0 && more ? __ldg(as0 + kb + 1) : 0.f;
      const float na1 = ok1 && more ? __ldg(as1 + kb + 1) : 0.f;
      const float nw = more ? __ldg(wsr + kb + 1) : 0.f;

      tma::mbar_wait(&full[s], phase);
      const uint8_t* st = base + size_t(s) * kStageBytes;
      const uint64_t da = wgmma::desc_sw128(st + wg * 64 * kBK), dw = wgmma::desc_sw128(st + kTileABytes);
      wgmma::fence_operand(part);
      wgmma::fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 32; ++ks)  // k32 step ks: 32 bytes into every swizzled row (descriptor unit 16 B)
        wgmma::m64n128k32_e4m3(part, da + 2 * ks, dw + 2 * ks, ks > 0);
      wgmma::commit();
      wgmma::wait<0>();
      wgmma::fence_operand(part);
      if (lane == 0) tma::mbar_arrive(&empty[s]);  // this warp's wgmma reads of the stage are complete
      if (++s == kStages) {
        s = 0;
        phase ^= 1;
      }

      // Promotion: the reference chain (fp32 fma per block, kb ascending); the scale product rounds once.
      const float s0 = __fmul_rn(sa0, sw), s1 = __fmul_rn(sa1, sw);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        acc[4 * j + 0] = __fmaf_rn(part[4 * j + 0], s0, acc[4 * j + 0]);
        acc[4 * j + 1] = __fmaf_rn(part[4 * j + 1], s0, acc[4 * j + 1]);
        acc[4 * j + 2] = __fmaf_rn(part[4 * j + 2], s1, acc[4 * j + 2]);
        acc[4 * j + 3] = __fmaf_rn(part[4 * j + 3], s1, acc[4 * j + 3]);
      }
      sa0 = na0;
      sa1 = na1;
      sw = nw;
    }

    // Epilogue: bf16 (round to nearest even) straight from registers; rows past M and columns past N masked.
    // (A shared-memory staged / TMA store is a tuning step: a quad writes 16 contiguous bytes per row here.)
    const int64_t col0 = int64_t(nt) * kBN + 2 * tq;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = h ? row1 : row0;
      if (row >= p.M) continue;
      uint16_t* orow = p.out + row * p.ldo;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int64_t col = col0 + 8 * j;
        const uint16_t v0 = f2bf(acc[4 * j + 2 * h]), v1 = f2bf(acc[4 * j + 2 * h + 1]);
        if (p.pair_stores && col + 1 < p.N) {
          *reinterpret_cast<uint32_t*>(orow + col) = uint32_t(v0) | (uint32_t(v1) << 16);
        } else {
          if (col < p.N) orow[col] = v0;
          if (col + 1 < p.N) orow[col + 1] = v1;
        }
      }
    }
  }
#else
  __trap();  // never launched: DeviceFacts::fp8_sm90 is false where the sm_90a SASS does not run
#endif
}

// ---- host side ---------------------------------------------------------------------------------------

// cuTensorMapEncodeTiled's signature (cuda.h); the pointer comes from the runtime's driver entry-point query,
// so nothing links libcuda directly.
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

void* driver_encode_tiled() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q);
#else
  const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &q);
#endif
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return fn;
}

// A row-major e4m3 matrix [rows, K] as a 2-D tensor (K innermost, rows K bytes apart) read in boxes of 128
// rows x 128 bytes with the 128B swizzle; rows past the end read as zero.
bool encode_rows(void* fn, CUtensorMap* map, const void* p, int64_t rows, int64_t K) {
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(K)};
  const cuuint32_t box[2] = {cuuint32_t(kBK), cuuint32_t(kBM)};
  static_assert(kBM == kBN, "one box shape for both operands");
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = reinterpret_cast<EncodeTiledFn>(fn)(
      map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(p), dims, strides, box, elem_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void probe_fp8_sm90(CudaContext& ctx, DeviceFacts& f) {
  f.fp8_sm90 = false;
  f.tma_encode_tiled = nullptr;
  if (!f.sm90a_sass) return;  // the kernel body exists only in the sm_90a SASS
  void* fn = driver_encode_tiled();
  if (!fn) return;
  if (!ctx.try_smem_attr(fp8_blockscaled_sm90_kernel, kSmem)) return;
  f.tma_encode_tiled = fn;
  f.fp8_sm90 = true;
}

bool fp8_blockscaled_sm90_supports(const CudaContext& ctx, const Fp8GemmArgs& a) {
  const int64_t lim = INT_MAX - 2 * kBM;  // TMA coordinates and the tile counters are 32-bit
  return ctx.facts().fp8_sm90 && a.K > 0 && a.K % kBK == 0 && a.M >= 0 && a.N >= 0 && a.ldo >= a.N &&
         a.M <= lim && a.N <= lim && a.K <= lim && aligned16(a.a) && aligned16(a.w) &&
         (a.M + kBM - 1) / kBM * ((a.N + kBN - 1) / kBN) <= lim;
}

bool launch_fp8_blockscaled_sm90(const CudaContext& ctx, const Fp8GemmArgs& a) {
  if (!fp8_blockscaled_sm90_supports(ctx, a)) return false;
  if (a.M == 0 || a.N == 0) return true;
  CUtensorMap tm_a, tm_w;
  void* fn = ctx.facts().tma_encode_tiled;
  if (!encode_rows(fn, &tm_a, a.a, a.M, a.K) || !encode_rows(fn, &tm_w, a.w, a.N, a.K)) return false;
  Params p{};
  p.as = a.as;
  p.ws = a.ws;
  p.out = a.out;
  p.ldo = a.ldo;
  p.M = int(a.M);
  p.N = int(a.N);
  p.KB = int(a.K / kBK);
  p.mtiles = int((a.M + kBM - 1) / kBM);
  p.ntiles = int((a.N + kBN - 1) / kBN);
  p.pair_stores = a.ldo % 2 == 0 && (reinterpret_cast<uintptr_t>(a.out) & 3u) == 0;
  const int tiles = p.mtiles * p.ntiles;
  const int grid = std::min(tiles, ctx.facts().sms);  // persistent: one CTA per SM walks tiles with stride grid
  ctx.smem_attr(fp8_blockscaled_sm90_kernel, kSmem);  // set by the probe; a map lookup here
  fp8_blockscaled_sm90_kernel<<<unsigned(grid), kThreads, kSmem>>>(tm_a, tm_w, p);
  DSA_LAUNCH_CHECK();
  return true;
}

}  // namespace dsa::cuda

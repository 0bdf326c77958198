// Indexer scores and top-k on CUDA vs the CPU reference: ragged multi-sequence batches (s_q 1 and
// 2, contexts across 64-token block edges, L < k, L = k, k + 1), long rows (128K) that take the
// multi-CTA top-k, exact ties, NaN / -0 / -inf rows, the candidate-overflow fallback, and the tiled
// prefill path; on sm_90a every score kernel (FP8 wgmma at each ring depth, f16 wgmma, and the portable
// mma.sync one) in the ragged-batch and exact-ties tests.
// Tolerances. f16 / mma.sync kernels: the scores differ from the CPU only by fp32 summation order (e4m3
// products are exact in f16 operands / fp32), so relative L2 1e-5. FP8 wgmma kernel: Hopper's FP8 tensor
// cores sum each k32 step (32 exact products + the accumulator) after aligning every addend to the largest
// one's exponent and truncating to ~13 fraction bits, so a head's dot product q.k (4 steps) is off by at most
// (4 x 32 + 3) x 2^-13 x M = 131 x 2^-13 x M, M = sum_d |q_d k_d| (every addend, accumulator included, is at
// most M); ReLU is 1-Lipschitz, so |score error| <= 131 x 2^-13 x scale x sum_h |w_h| M_h (checked per element, rigorous for that
// model) — and relative L2 1e-3, far above what random data shows but far below a layout bug's error.
// Top-k must be bit-identical to the CPU selection over the GPU's own scores, and to the CPU end to end
// when every score is exact (small integers, power-of-two weights: exact in every kernel); with random
// scores a key may be swapped only for one whose CPU score is within the error bound of the k-th (a
// near-tie).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <numeric>

#include "backends/cuda/indexer/scores_sm90.h"
#include "gpu_util.h"
#include "backends/cuda/topk/topk.h"

namespace dsa::test {
namespace {

struct MCase {
  KvLayer hkv, dkv;
  Batch b;  // the decode / prefill batch (queries)
  Tensor q, w;
  std::vector<int32_t> qpos;
  int64_t max_end = 0;
};

// Sequences with context lengths ends[s], the last nq[s] positions of each being the queries.
MCase multi_case(Both& be, const std::vector<int64_t>& ends, const std::vector<int64_t>& nq, int64_t Hi, bool small_ints) {
  MCase c;
  const int64_t S = int64_t(ends.size());
  int64_t mb = 0, tot_blocks = 3, tot_keys = 0;
  for (int64_t e : ends) {
    mb = std::max(mb, (e + 63) / 64);
    tot_blocks += (e + 63) / 64;
    tot_keys += e;
    c.max_end = std::max(c.max_end, e);
  }
  std::vector<int32_t> perm(static_cast<size_t>(tot_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng());
  std::vector<int32_t> bt(static_cast<size_t>(S * mb), -1);
  size_t used = 0;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t j = 0; j < (ends[size_t(s)] + 63) / 64; ++j) bt[size_t(s * mb + j)] = perm[used++];
  c.hkv = host_kv(tot_blocks);
  Batch wb;
  wb.max_blocks = mb;
  wb.block_table = bt;
  for (int64_t s = 0, off = 0; s < S; ++s) {
    BatchSeq q;
    q.start_pos = 0;
    q.n_new = ends[size_t(s)];
    q.token_offset = off;
    wb.seqs.push_back(q);
    for (int64_t p = 0; p < ends[size_t(s)]; ++p) wb.positions.push_back(int32_t(p)), wb.token_seq.push_back(int32_t(s));
    off += ends[size_t(s)];
  }
  Tensor k = rand_bf16({tot_keys, kIndexDim});
  if (small_ints)  // amax 448 -> scale 1, values integers in [-3, 3] (exact e4m3)
    for (int64_t i = 0; i < tot_keys; ++i)
      for (int64_t d = 0; d < kIndexDim; ++d)
        k.ptr<uint16_t>()[i * kIndexDim + d] = f32_to_bf16(d == 0 ? 448.f : float(int(rng()() % 7) - 3));
  be.cpu.indexer_cache_write(k, c.hkv, wb);
  c.dkv = be.up(c.hkv);
  c.b.max_blocks = mb;
  c.b.block_table = bt;
  for (int64_t s = 0, off = 0; s < S; ++s) {
    const int64_t n = std::min(nq[size_t(s)], ends[size_t(s)]);
    BatchSeq q;
    q.start_pos = ends[size_t(s)] - n;
    q.n_new = n;
    q.token_offset = off;
    c.b.seqs.push_back(q);
    for (int64_t p = q.start_pos; p < ends[size_t(s)]; ++p) {
      c.b.positions.push_back(int32_t(p));
      c.b.token_seq.push_back(int32_t(s));
      c.qpos.push_back(int32_t(p));
    }
    off += n;
  }
  const int64_t T = int64_t(c.qpos.size());
  random_indexer_queries(T, Hi, small_ints, c.q, c.w);
  return c;
}

// The score kernels to cover on this GPU: FP8 wgmma at every ring depth (3..6), f16 wgmma (0), then the
// portable kernel (-1); only the portable one where the sm_90a code does not run.
std::vector<int> score_kernels(Both& be) {
  if (!be.gpu.context().indexer_sm90()) return {-1};
  return {4, 3, 5, 6, 0, -1};
}
// Select one of them (-2: back to the configuration the backend started with: defaults and environment).
void select_score_kernel(Both& be, int k) {
  cuda::IndexerConfig& ic = be.gpu.config().indexer;
  const cuda::IndexerConfig& start = be.gpu.context().initial_config().indexer;
  if (k == -2) {
    ic.wgmma = start.wgmma;
    ic.sm90_fp8_stages = start.sm90_fp8_stages;
    return;
  }
  ic.wgmma = k != -1;
  ic.sm90_fp8_stages = k >= 0 ? k : start.sm90_fp8_stages;
}
bool fp8_scores_now(Both& be, int64_t Hi) {
  const cuda::CudaContext& ctx = be.gpu.context();
  return !ctx.config().indexer.exact && Hi <= 64 && ctx.indexer_sm90() && ctx.config().indexer.sm90_fp8_stages > 0;
}

// Per element: scale_j x sum_h |w_h| sum_d |q_hd k_jd| (the magnitude the FP8 error bound scales with).
std::vector<double> score_magnitudes(const MCase& c, int64_t LL) {
  const int64_t T = int64_t(c.qpos.size()), Hi = c.q.dim(1);
  std::vector<double> m(size_t(T * LL), 0.0);
  const uint8_t* cache = c.hkv.indexer.ptr<uint8_t>();
  std::vector<float> qa(size_t(Hi * kIndexDim)), ka(kIndexDim);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < Hi * kIndexDim; ++i) qa[size_t(i)] = std::fabs(e4m3_to_f32(c.q.ptr<uint8_t>()[t * Hi * kIndexDim + i]));
    const int s = c.b.token_seq[size_t(t)];
    for (int64_t j = 0; j <= c.qpos[size_t(t)]; ++j) {
      const int blk = c.b.block_table[size_t(s * c.b.max_blocks + j / 64)];
      const uint8_t* base = cache + int64_t(blk) * kKvBlock * kIndexTokenBytes;
      for (int d = 0; d < kIndexDim; ++d) ka[size_t(d)] = std::fabs(e4m3_to_f32(base[(j % 64) * kIndexDim + d]));
      double acc = 0;
      for (int64_t h = 0; h < Hi; ++h) {
        double dot = 0;
        for (int d = 0; d < kIndexDim; ++d) dot += double(qa[size_t(h * kIndexDim + d)]) * ka[size_t(d)];
        acc += std::fabs(double(c.w.ptr<float>()[t * Hi + h])) * dot;
      }
      m[size_t(t * LL + j)] = acc * reinterpret_cast<const float*>(base + kKvBlock * kIndexDim)[j % 64];
    }
  }
  return m;
}

// GPU scores vs CPU (tolerance), GPU top-k vs the CPU selection over the GPU scores (exact), and
// vs the CPU end to end (exact if exact_scores, else up to near-ties).
void check_case(Both& be, MCase& c, int64_t k, bool exact_scores, const char* what) {
  SCOPED_TRACE(what);
  const int64_t T = int64_t(c.qpos.size()), LL = c.max_end + 70;
  const bool fp8 = fp8_scores_now(be, c.q.dim(1));
  Tensor qg = be.up(c.q), wg = be.up(c.w);
  Tensor sc = host_tensor(DType::F32, {T, LL}), sg = be.poisoned(DType::F32, {T, LL});
  be.cpu.indexer_scores(c.q, c.w, c.hkv, c.b, sc);
  be.gpu.indexer_scores(qg, wg, c.dkv, c.b, sg);
  Tensor sh = be.down(sg);
  int64_t inf_mismatch = 0;
  for (int64_t i = 0; i < T * LL; ++i) inf_mismatch += std::isinf(sh.ptr<float>()[i]) != std::isinf(sc.ptr<float>()[i]);
  EXPECT_EQ(inf_mismatch, 0) << "-inf pattern (j > position)";
  // allowed |gpu - cpu| per element (FP8 only; used by the near-tie rule below)
  std::vector<double> allow(size_t(T * LL), 0.0);
  if (exact_scores) {
    expect_same_bytes(sh, sc, "indexer_scores (exact)");
  } else if (!fp8) {
    expect_close(sh, sc, 1e-5, "indexer_scores");
    for (int64_t i = 0; i < T * LL; ++i) allow[size_t(i)] = 1e-5 * std::fabs(double(sc.ptr<float>()[i]));
  } else {
    const double e = expect_close(sh, sc, 1e-3, "indexer_scores (FP8 wgmma)");
    const std::vector<double> mag = score_magnitudes(c, LL);
    int64_t over = 0;
    double worst = 0;  // max |gpu - cpu| / magnitude
    for (int64_t i = 0; i < T * LL; ++i) {
      const double a = sh.ptr<float>()[i], b = sc.ptr<float>()[i];
      if (std::isinf(b) || std::isnan(a)) continue;
      allow[size_t(i)] = 131.0 * std::ldexp(mag[size_t(i)], -13) + 1e-6 * std::fabs(b);
      if (std::fabs(a - b) > allow[size_t(i)]) ++over;
      if (mag[size_t(i)] > 0) worst = std::max(worst, std::fabs(a - b) / mag[size_t(i)]);
    }
    EXPECT_EQ(over, 0) << "scores beyond the FP8 accumulation bound";
    std::printf("  [%s] FP8 scores: relative L2 %.3g, max |gpu - cpu| / magnitude %.3g (bound 131 x 2^-13 = %.3g)\n", what, e,
                worst, 131.0 * std::ldexp(1.0, -13));
  }
  Tensor tg = be.poisoned(DType::I32, {T, k});
  be.gpu.indexer_topk(qg, wg, c.dkv, c.b, k, tg);
  Tensor th = be.down(tg);
  Tensor ref = host_tensor(DType::I32, {T, k});
  for (int64_t t = 0; t < T; ++t) cpu::topk_select(sh.ptr<float>() + t * LL, c.qpos[size_t(t)] + 1, k, ref.ptr<int32_t>() + t * k);
  expect_same_bytes(th, ref, "indexer_topk vs selection over the GPU scores");
  Tensor tc = host_tensor(DType::I32, {T, k});
  be.cpu.indexer_topk(c.q, c.w, c.hkv, c.b, k, tc);
  if (exact_scores) {
    expect_same_bytes(th, tc, "indexer_topk vs CPU (exact scores)");
  } else {
    // A key in one selection but not the other must be a near-tie: its CPU score within the two keys'
    // allowed errors of the CPU's k-th score.
    int64_t bad = 0, swapped_rows = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int32_t* g = th.ptr<int32_t>() + t * k;
      const int32_t* cc = tc.ptr<int32_t>() + t * k;
      if (std::equal(g, g + k, cc)) continue;
      ++swapped_rows;
      const float* row = sc.ptr<float>() + t * LL;
      const double* al = allow.data() + t * LL;
      double kth = INFINITY, amax = 0;
      for (int64_t i = 0; i < k; ++i)
        if (cc[i] >= 0) kth = std::min(kth, double(row[cc[i]]));
      for (int64_t j = 0; j <= c.qpos[size_t(t)]; ++j) amax = std::max(amax, al[j]);
      std::vector<int32_t> a(g, g + k), b(cc, cc + k), d;
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(d));
      for (int32_t j : d)
        if (j < 0 || std::fabs(double(row[j]) - kth) > al[j] + amax) ++bad;
    }
    EXPECT_EQ(bad, 0) << "keys selected differently from the CPU that are not near-ties (" << swapped_rows << " rows differ)";
  }
}

}  // namespace

TEST(GpuIndexer, ScoresAndTopkRaggedBatch) {
  REQUIRE_GPU();
  Both be;
  for (int kern : score_kernels(be)) {
    select_score_kernel(be, kern);
    for (int64_t sq : {int64_t(1), int64_t(2)})
      for (int64_t Hi : {int64_t(64), int64_t(32), int64_t(7), int64_t(128)}) {
        // every sequence has s_q new tokens (s_q = 2: the paired-query kernels)
        const std::vector<int64_t> ends = {sq == 2 ? 2 : 1, 63, 64, 65, 130, 1000, 5000, 3333};
        MCase c = multi_case(be, ends, std::vector<int64_t>(ends.size(), sq), Hi, false);
        check_case(be, c, 256, false,
                   ("kernel " + std::to_string(kern) + " s_q=" + std::to_string(sq) + " Hi=" + std::to_string(Hi)).c_str());
      }
  }
  select_score_kernel(be, -2);
}

TEST(GpuIndexer, TopkExactTiesAroundK) {
  REQUIRE_GPU();
  Both be;
  for (int kern : score_kernels(be)) {
    select_score_kernel(be, kern);
    for (int64_t k : {int64_t(64), int64_t(2048)})
      for (int64_t sq : {int64_t(1), int64_t(2)}) {
        const std::vector<int64_t> ends = {k - 1, k, k + 1, k + 2, 9000, 20000};
        MCase c = multi_case(be, ends, std::vector<int64_t>(ends.size(), sq), 64, true);
        check_case(be, c, k, true,
                   ("kernel " + std::to_string(kern) + " k=" + std::to_string(k) + " s_q=" + std::to_string(sq)).c_str());
      }
  }
  select_score_kernel(be, -2);
}

// 128K contexts: the multi-CTA top-k at b = 1 and b = 3, s_q 1 and 2; exact scores.
TEST(GpuIndexer, LongContextDecodeExact) {
  REQUIRE_GPU();
  Both be;
  {
    MCase c = multi_case(be, {131072}, {1}, 64, true);
    check_case(be, c, 2048, true, "b=1 s_q=1 128K");
  }
  {
    MCase c = multi_case(be, {131072}, {2}, 64, true);
    check_case(be, c, 2048, true, "b=1 s_q=2 128K");
  }
  {
    MCase c = multi_case(be, {131072, 100003, 70000}, {1, 1, 1}, 64, true);
    check_case(be, c, 2048, true, "b=3 s_q=1 up to 128K");
  }
}

// The selection alone on long adversarial rows (multi-CTA path): random values, few distinct
// values, zeros of both signs, NaN, -inf, all-NaN, and a huge run of ties at the threshold that
// overflows the candidate buffer (fallback).
TEST(GpuIndexer, TopkRowsLongAdversarial) {
  REQUIRE_GPU();
  Both be;
  const int64_t ld = 131072;
  for (int64_t k : {int64_t(2048), int64_t(64)}) {
    const int64_t R = 7;
    Tensor s = host_tensor(DType::F32, {R, ld});
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < ld; ++i) {
        float v = randn();
        const uint64_t u = rng()() % 100;
        if (r == 1) v = float(int(rng()() % 5));                                    // few distinct values
        if (r == 2) v = u < 30 ? 0.f : u < 35 ? -0.f : u < 37 ? std::nanf("") : u < 39 ? -INFINITY : randn();
        if (r == 3) v = std::nanf("");                                              // all NaN
        if (r == 4) v = u < 1 ? 1.0f + randu(0, 1) : u < 95 ? 0.f : -1.f;          // ~120K ties at the threshold
        if (r == 5) v = std::ldexp(1.0f + float(rng()() % 8) / 8, -int(rng()() % 3));  // dense near-ties
        s.ptr<float>()[r * ld + i] = v;
      }
    Tensor nn = host_tensor(DType::I32, {R});
    const int32_t lens[R] = {131072, 131072, 131000, 131072, 131072, 65537, int32_t(k)};  // last: n <= k
    for (int64_t r = 0; r < R; ++r) nn.ptr<int32_t>()[r] = lens[r];
    Tensor ref = host_tensor(DType::I32, {R, k}), og = be.poisoned(DType::I32, {R, k});
    for (int64_t r = 0; r < R; ++r) cpu::topk_select(s.ptr<float>() + r * ld, lens[r], k, ref.ptr<int32_t>() + r * k);
    Tensor ng = be.up(nn);
    be.gpu.topk_rows(be.up(s), ng.ptr<int32_t>(), k, og);
    SCOPED_TRACE("k=" + std::to_string(k));
    expect_same_bytes(be.down(og), ref, "topk_rows long");
    // b = 1 (most CTAs per row)
    Tensor og1 = be.poisoned(DType::I32, {1, k});
    Tensor s1 = host_tensor(DType::F32, {1, ld});
    std::memcpy(s1.data, s.ptr<float>() + 4 * ld, size_t(ld) * 4);  // the overflow row
    Tensor n1 = host_tensor(DType::I32, {1});
    n1.ptr<int32_t>()[0] = int32_t(ld);
    Tensor n1g = be.up(n1);
    be.gpu.topk_rows(be.up(s1), n1g.ptr<int32_t>(), k, og1);
    Tensor ref1 = host_tensor(DType::I32, {1, k});
    std::memcpy(ref1.data, ref.ptr<int32_t>() + 4 * k, size_t(k) * 4);
    expect_same_bytes(be.down(og1), ref1, "topk_rows b=1 overflow row");
  }
}

// Every top-k path on the same adversarial rows, at the path boundaries: the on-chip path with each
// register width (4/8/16 keys per thread: one CTA up to 16K, clusters beyond), both digit schedules
// (11/11/10; 8/12/12 with a per-lane first histogram), and the global-memory paths (on-chip off, or rows > 256K).
// Rows of one launch have different lengths (the cluster size follows the longest).
TEST(GpuIndexer, TopkRowsAllPathsAtBoundaries) {
  REQUIRE_GPU();
  Both be;
  cuda::TopkConfig& tun = be.gpu.config().topk;
  const cuda::TopkConfig saved = tun;
  const cuda::TopkState& last = be.gpu.context().topk_state();
  const int cluster_max = be.gpu.context().facts().topk_cluster_max;
  bool used_exchange = false;
  for (int64_t k : {int64_t(2048), int64_t(64)})
    for (int64_t ld : {int64_t(2049), int64_t(4096), int64_t(4097), int64_t(8193), int64_t(16384), int64_t(16385),
                       int64_t(40000), int64_t(131072), int64_t(131073), int64_t(262145)}) {
      if (k == 64 && ld != 4097 && ld != 131072) continue;
      const int64_t R = 7;
      const int32_t lens[R] = {int32_t(ld), int32_t(ld - 1), int32_t(k + 1), int32_t(k), int32_t(k - 1),
                               int32_t(std::max<int64_t>(k + 1, ld / 2 + 3)), int32_t(ld)};
      Tensor s = host_tensor(DType::F32, {R, ld});
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < ld; ++i) {
          const uint64_t u = rng()() % 100;
          // row 0: normal values on a grid of 1/64, so that tens of exact ties share the k-th value and the
          // threshold bin after two radix passes holds < 1024 keys (the candidate exchange, topk.h)
          float v = r == 0 ? std::round(randn() * 64.f) / 64.f : randn();
          if (r == 1) v = float(int(rng()() % 5));                                                 // few distinct
          if (r == 2) v = u < 30 ? 0.f : u < 35 ? -0.f : u < 37 ? std::nanf("") : u < 39 ? -INFINITY : randn();
          if (r == 5) v = 1.0f;                                                                    // all equal
          if (r == 6) v = u < 1 ? 2.0f : u < 90 ? (u & 1 ? 0.f : -0.f) : std::ldexp(1.0f + float(u % 4) / 4, -3);
          s.ptr<float>()[r * ld + i] = v;
        }
      Tensor nn = host_tensor(DType::I32, {R});
      for (int64_t r = 0; r < R; ++r) nn.ptr<int32_t>()[r] = lens[r];
      Tensor ref = host_tensor(DType::I32, {R, k});
      for (int64_t r = 0; r < R; ++r) cpu::topk_select(s.ptr<float>() + r * ld, lens[r], k, ref.ptr<int32_t>() + r * k);
      Tensor sg = be.up(s), ng = be.up(nn);
      struct Cfg { int onchip, kpt; bool lane; int cand; const char* name; };
      for (const Cfg& c : {Cfg{1, 0, false, 1, "auto"}, Cfg{1, 0, false, 0, "auto, 3rd radix pass"},
                           Cfg{1, 4, false, 1, "kpt4"}, Cfg{1, 8, false, 1, "kpt8"}, Cfg{1, 16, false, 1, "kpt16"},
                           Cfg{1, 0, true, 1, "auto lane-hist"}, Cfg{1, 4, true, 1, "kpt4 lane-hist"},
                           Cfg{1, 8, true, 1, "kpt8 lane-hist"}, Cfg{1, 16, true, 1, "kpt16 lane-hist"},
                           Cfg{0, 0, false, 1, "global-memory paths"}}) {
        tun.onchip = c.onchip;
        tun.force_kpt = c.kpt;
        tun.lane_histogram = c.lane;
        tun.cand_final = c.cand;
        Tensor og = be.poisoned(DType::I32, {R, k});
        be.gpu.topk_rows(sg, ng.ptr<int32_t>(), k, og);
        // Which kernel ran: a forced keys-per-thread count runs on chip when its cluster (the smallest power
        // of two of CTAs that holds the row) fits this GPU, else a global-memory path; so does "off".
        // (Automatic: 16 keys per thread is the widest choice.)
        int64_t need = 1;
        while (need * (c.kpt ? c.kpt : 16) * 1024 < ld) need *= 2;
        const bool want_onchip = c.onchip && need <= cluster_max;
        const std::string ran = last.last_kpt ? "on chip, " + std::to_string(last.last_kpt) + " keys/thread x " +
                                                   std::to_string(last.last_cluster) + " CTAs"
                                             : std::string("global-memory path");
        SCOPED_TRACE("k=" + std::to_string(k) + " ld=" + std::to_string(ld) + " " + c.name + " (ran: " + ran + ")");
        EXPECT_EQ(last.last_kpt != 0, want_onchip) << "path taken";
        if (c.kpt && last.last_kpt) {
          EXPECT_EQ(last.last_kpt, c.kpt) << "forced keys per thread";
        }
        expect_same_bytes(be.down(og), ref, "topk_rows");
        // batch 1 (the widest cluster per row): the first row alone
        Tensor o1 = be.poisoned(DType::I32, {1, k});
        tun.trace = true;  // which way the last digit went (topk_trace_read's entry 9)
        be.gpu.topk_rows(sg.rows(0, 1), ng.ptr<int32_t>(), k, o1);
        be.gpu.synchronize();
        const std::vector<long long> st = last.last_kpt ? cuda::topk_trace_read(be.gpu.context()) : std::vector<long long>(10, 0);
        tun.trace = false;
        Tensor r1 = host_tensor(DType::I32, {1, k});
        std::memcpy(r1.data, ref.data, size_t(k) * 4);
        expect_same_bytes(be.down(o1), r1, "topk_rows b=1");
        // The grid row at 40K / 128K on a cluster with the 11/11/10 digits: tens of ties in the threshold bin,
        // resolved by the candidate exchange when it is on, by the third pass when off (0: settled by the
        // second pass, when k ends exactly at the end of a tie group).
        if (k == 2048 && ld >= 40000 && last.last_cluster > 1 && !c.lane && st[9] != 0) {
          EXPECT_EQ(st[9], c.cand ? 1 : 2) << "last digit: 1 candidate exchange, 2 third pass";
          used_exchange |= st[9] == 1;
        }
      }
      tun = saved;
    }
  if (cluster_max > 1) {
    EXPECT_TRUE(used_exchange) << "the candidate exchange never ran";
  }
}

// Prefill in tiles: pairs of tokens share a CTA (even T) or not (odd T); tiles of 7 (-> 6) rows.
TEST(GpuIndexer, TiledPrefillPairs) {
  REQUIRE_GPU();
  Both be;
  for (int64_t T : {int64_t(40), int64_t(41)}) {
    MCase c = multi_case(be, {3000}, {T}, 64, false);
    const int64_t k = 512;
    be.gpu.set_score_tile_floats(7 * 3008);
    check_case(be, c, k, false, ("T=" + std::to_string(T)).c_str());
    be.gpu.set_score_tile_floats(int64_t(64) << 20);
  }
}

// Programmatic dependent launch (DSA_CUDA_PDL=1, launch.cuh): the score kernel and the on-chip top-k
// launched back to back with the PDL attribute give exactly the bytes of plain launches (b=1 at 128K: a
// 16-CTA cluster; a ragged batch with s_q = 2: the paired-query kernel).
TEST(GpuIndexer, ChainedLaunchesMatchPlainBitForBit) {
  REQUIRE_GPU();
  Both be;
  PdlScope pdl(be.gpu);
  if (!pdl.available()) GTEST_SKIP() << "programmatic dependent launch needs compute capability 9.0";
  const std::vector<std::pair<std::vector<int64_t>, int64_t>> cases = {{{131072}, 1}, {{5000, 3333, 65, 20000}, 2}};
  for (const auto& [ends, sq] : cases) {
    MCase c = multi_case(be, ends, std::vector<int64_t>(ends.size(), sq), 64, false);
    const int64_t T = int64_t(c.qpos.size()), k = 2048;
    Tensor qg = be.up(c.q), wg = be.up(c.w);
    Tensor out[2];
    for (int on = 0; on < 2; ++on) {
      pdl.set(on == 1);
      out[on] = be.poisoned(DType::I32, {T, k});
      for (int rep = 0; rep < 3; ++rep) be.gpu.indexer_topk(qg, wg, c.dkv, c.b, k, out[on]);
    }
    pdl.set(false);
    expect_same_bytes(be.down(out[1]), be.down(out[0]), "indexer_topk with PDL vs plain launches");
  }
}

// The first radix digit's histogram built in the FP8 score kernel's epilogue (CudaBackend::topk_hist0,
// opt-in DSA_CUDA_TOPK_SCORE_HIST=1 on sm_90a): the on-chip top-k that starts from it gives exactly the bytes of the top-k that builds it
// itself. Three calls in a row check that the buffer is zero again after each (the top-k zeroes it), also
// after rows with n <= k (early exit) and an unmapped block inside a row (its keys are -inf, counted apart).
TEST(GpuIndexer, TopkFirstHistogramFromScoresMatches) {
  REQUIRE_GPU();
  Both be;
  cuda::TopkConfig& tun = be.gpu.config().topk;
  const cuda::TopkConfig saved = tun;
  struct C { std::vector<int64_t> ends; int64_t sq; int64_t hole; };  // hole: an unmapped block of sequence 0
  const std::vector<C> cases = {{{131072}, 1, -1}, {{5000, 3333, 65, 20000}, 2, -1},
                                {{2047, 2048, 2049, 4096, 17000}, 1, -1}, {{70000, 100}, 1, 300}, {{40000}, 1, 17}};
  bool used = false;
  for (const C& cs : cases) {
    MCase c = multi_case(be, cs.ends, std::vector<int64_t>(cs.ends.size(), cs.sq), 64, false);
    if (cs.hole >= 0) c.b.block_table[size_t(cs.hole)] = -1;  // before the batch's first use on the device
    const int64_t T = int64_t(c.qpos.size()), k = 2048;
    Tensor qg = be.up(c.q), wg = be.up(c.w);
    Tensor out[2];
    for (int on = 0; on < 2; ++on) {
      tun.hist0 = on;
      for (int rep = 0; rep < 3; ++rep) {
        Tensor o = be.poisoned(DType::I32, {T, k});
        be.gpu.indexer_topk(qg, wg, c.dkv, c.b, k, o);
        if (on) used |= be.gpu.context().topk_state().last_hist0;
        if (rep == 0) out[on] = o;
        else expect_same_bytes(be.down(o), be.down(out[on]), on ? "indexer_topk again (first histogram from the scores)" : "indexer_topk again");
      }
    }
    tun = saved;
    expect_same_bytes(be.down(out[1]), be.down(out[0]), "indexer_topk: first histogram from the score kernel vs the top-k's own");
  }
  tun = saved;
  if (fp8_scores_now(be, 64) && be.gpu.context().facts().topk_cluster_max > 1) {
    EXPECT_TRUE(used) << "the score kernel's histogram was never taken";
  }
}

}  // namespace dsa::test

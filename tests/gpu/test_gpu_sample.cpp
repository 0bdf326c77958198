// Device sampling (backends/cuda/sampling/sample.cu) against the CPU reference (cpu_sample.cpp):
// the same tokens for the same (seed, counter) noise — except where a top-p boundary falls within
// float64 rounding of the cumulative mass, which the test verifies before it accepts a difference —
// the same top-logprob ids and log-probabilities to float32 rounding, and the float64 token_logprobs.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "gpu_util.h"

namespace dsa::test {

namespace {

struct Out {
  std::vector<int32_t> tok, top_ids;
  std::vector<float> lp, top_lp;
};

Out run_sample(Backend& be, Both& b, const Tensor& logits_h, const std::vector<SampleParams>& sp, int n_top, bool gpu) {
  const int64_t R = logits_h.dim(0);
  Out o;
  o.tok.resize(size_t(R));
  o.lp.resize(size_t(R));
  o.top_ids.resize(size_t(R * n_top));
  o.top_lp.resize(size_t(R * n_top));
  if (gpu) {
    Tensor l = b.up(logits_h);
    Tensor tok = b.poisoned(DType::I32, {R}), lp = b.poisoned(DType::F32, {R});
    Tensor ti = b.poisoned(DType::I32, {R, n_top}), tl = b.poisoned(DType::F32, {R, n_top});
    be.sample(l, sp, tok, lp, n_top ? &ti : nullptr, n_top ? &tl : nullptr);
    be.download(tok, o.tok.data());
    be.download(lp, o.lp.data());
    if (n_top) be.download(ti, o.top_ids.data()), be.download(tl, o.top_lp.data());
  } else {
    Tensor tok = host_tensor(DType::I32, {R}), lp = host_tensor(DType::F32, {R});
    Tensor ti = host_tensor(DType::I32, {R, n_top}), tl = host_tensor(DType::F32, {R, n_top});
    be.sample(logits_h, sp, tok, lp, n_top ? &ti : nullptr, n_top ? &tl : nullptr);
    std::memcpy(o.tok.data(), tok.data, tok.nbytes());
    std::memcpy(o.lp.data(), lp.data, lp.nbytes());
    if (n_top) std::memcpy(o.top_ids.data(), ti.data, ti.nbytes()), std::memcpy(o.top_lp.data(), tl.data, tl.nbytes());
  }
  return o;
}

// Whether the top-p cut of this row lies within float64 rounding of the cumulative mass (the only
// place where the CPU's sequential sum and the device's tree sum may choose differently).
bool top_p_boundary_is_a_near_tie(const float* l, int64_t V, const SampleParams& p) {
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  const int64_t n = p.top_k > 0 ? std::min<int64_t>(p.top_k, V) : V;
  const double T = p.temperature, zmax = l[ids[0]] / T;
  double total = 0, acc = 0;
  for (int64_t i = 0; i < n; ++i) total += std::exp(l[ids[size_t(i)]] / T - zmax);
  for (int64_t i = 0; i < n; ++i) {
    acc += std::exp(l[ids[size_t(i)]] / T - zmax);
    if (std::abs(acc - p.top_p * total) <= 1e-12 * total) return true;
  }
  return false;
}

}  // namespace

TEST(GpuSample, MatchesCpuReference) {
  REQUIRE_GPU();
  Both b;
  for (int64_t V : {int64_t(8192), int64_t(129280), int64_t(1000)}) {
    const int64_t R = 48;
    Tensor l = host_tensor(DType::F32, {R, V});
    for (int64_t i = 0; i < l.numel(); ++i) l.ptr<float>()[i] = randn(V == 1000 ? 0.2f : 3.0f);
    // Ties across the top (same value at several ids), -0 / +0, -inf entries.
    for (int64_t r = 0; r < R; r += 5) {
      float* row = l.ptr<float>() + r * V;
      const float top = 40.0f;
      row[V - 1] = row[3] = row[V / 2] = top;
      row[7] = -0.0f, row[8] = 0.0f, row[9] = -INFINITY;
    }
    std::vector<SampleParams> sp(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      SampleParams& p = sp[size_t(r)];
      p.seed = uint64_t(r) * 31 + 7, p.counter = uint64_t(r % 3);
      switch (r % 6) {
        case 0: break;  // greedy
        case 1: p.temperature = 1.0f; break;
        case 2: p.temperature = 0.7f, p.top_k = 50; break;
        case 3: p.temperature = 1.2f, p.top_p = 0.9f; break;
        case 4: p.temperature = 0.5f, p.top_k = 1000, p.top_p = 0.5f; break;
        case 5: p.temperature = 2.0f, p.top_k = 1; break;
      }
    }
    for (int n_top : {0, 5}) {
      SCOPED_TRACE("V " + std::to_string(V) + ", top logprobs " + std::to_string(n_top));
      const Out c = run_sample(b.cpu, b, l, sp, n_top, false), g = run_sample(b.gpu, b, l, sp, n_top, true);
      int near_ties = 0;
      for (int64_t r = 0; r < R; ++r) {
        if (g.tok[size_t(r)] != c.tok[size_t(r)]) {
          const bool tie = sp[size_t(r)].top_p < 1.0f && top_p_boundary_is_a_near_tie(l.ptr<float>() + r * V, V, sp[size_t(r)]);
          EXPECT_TRUE(tie) << "row " << r << ": gpu " << g.tok[size_t(r)] << ", cpu " << c.tok[size_t(r)];
          near_ties += tie;
          continue;
        }
        // float(double) of the same float64 expression summed in another order: equal or one ulp apart.
        EXPECT_NEAR(g.lp[size_t(r)], c.lp[size_t(r)], 2e-6f * std::max(1.0f, std::abs(c.lp[size_t(r)]))) << "row " << r;
      }
      if (near_ties) std::printf("[ %d near-tie top-p boundaries ]\n", near_ties);
      EXPECT_EQ(g.top_ids, c.top_ids);
      for (size_t i = 0; i < c.top_lp.size(); ++i)
        EXPECT_NEAR(g.top_lp[i], c.top_lp[i], 2e-6f * std::max(1.0f, std::abs(c.top_lp[i]))) << "top entry " << i;
    }
  }
}

TEST(GpuSample, TokenLogprobsMatchCpuInFloat64) {
  REQUIRE_GPU();
  Both b;
  const int64_t R = 37, V = 129280;
  Tensor l = host_tensor(DType::F32, {R, V});
  for (int64_t i = 0; i < l.numel(); ++i) l.ptr<float>()[i] = randn(4.0f);
  Tensor tg = host_tensor(DType::I32, {R});
  for (int64_t r = 0; r < R; ++r) tg.ptr<int32_t>()[r] = int32_t(rng()() % uint64_t(V));
  Tensor lc = host_tensor(DType::F64, {R});
  b.cpu.token_logprobs(l, tg, lc);
  Tensor lg = b.poisoned(DType::F64, {R});
  b.gpu.token_logprobs(b.up(l), b.up(tg), lg);
  Tensor h = b.down(lg);
  for (int64_t r = 0; r < R; ++r) EXPECT_NEAR(h.ptr<double>()[r], lc.ptr<double>()[r], 1e-11) << "row " << r;
  tg.ptr<int32_t>()[3] = int32_t(V);  // out of range: a clear error, not garbage
  b.gpu.token_logprobs(b.up(l), b.up(tg), lg);
  EXPECT_DSA_ERROR(b.gpu.synchronize(), "token id out of range");
}

}  // namespace dsa::test

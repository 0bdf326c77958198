// MoE on CUDA: sigmoid + bias group-limited routing (one thread per token, the CPU's selection
// order exactly), and the experts as grouped FP8 GEMMs over rows sorted by expert on the device
// (no host round trip: each expert's tiles read their row range from device memory and exit when
// past it). The combine sums each token's experts in ascending expert id in fp32, then the shared
// expert, and rounds once — as the reference.
#include <cstring>

#include "backends/cuda/cuda_backend.h"

namespace dsa::cuda {

namespace {

constexpr int kMaxExperts = 256, kMaxGroups = 64;

__global__ void moe_route_kernel(const float* logits, const float* bias, int64_t T, int E, int n_group, int topk_group,
                                 int topk, int norm, float route_scale, int32_t* ids, float* weights) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  float sc[kMaxExperts], biased[kMaxExperts];
  for (int e = 0; e < E; ++e) {
    sc[e] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-logits[t * E + e])));
    biased[e] = __fadd_rn(sc[e], bias ? bias[e] : 0.0f);
  }
  if (n_group > 1) {
    const int G = E / n_group;
    float gs[kMaxGroups];
    for (int g = 0; g < n_group; ++g) {
      float v0 = -INFINITY, v1 = -INFINITY;  // two largest
      for (int e = g * G; e < (g + 1) * G; ++e) {
        const float v = biased[e];
        if (v > v0) { v1 = v0; v0 = v; }
        else if (v > v1) { v1 = v; }
      }
      gs[g] = bias ? __fadd_rn(v0, G > 1 ? v1 : 0.f) : v0;
    }
    // keep topk_group groups: repeated argmax, lowest index on ties (= stable sort, descending)
    uint64_t keep = 0;
    for (int r = 0; r < topk_group; ++r) {
      int best = -1;
      for (int g = 0; g < n_group; ++g)
        if (!((keep >> g) & 1) && (best < 0 || gs[g] > gs[best])) best = g;
      keep |= uint64_t(1) << best;
    }
    for (int g = 0; g < n_group; ++g)
      if (!((keep >> g) & 1))
        for (int e = g * G; e < (g + 1) * G; ++e) biased[e] = -INFINITY;
  }
  uint32_t picked[kMaxExperts / 32] = {};
  float sum = 0.f;
  int sel[16];
  for (int i = 0; i < topk; ++i) {
    int best = -1;
    for (int e = 0; e < E; ++e)
      if (!((picked[e / 32] >> (e % 32)) & 1) && (best < 0 || biased[e] > biased[best])) best = e;
    picked[best / 32] |= 1u << (best % 32);
    sel[i] = best;
    sum = __fadd_rn(sum, sc[best]);
  }
  for (int i = 0; i < topk; ++i) {
    ids[t * topk + i] = sel[i];
    float wv = sc[sel[i]];
    if (norm) wv = __fdiv_rn(wv, sum);
    weights[t * topk + i] = __fmul_rn(wv, route_scale);
  }
}

// Sort (token, slot) pairs by expert: offs[E+1], row_of[T*K], src_tok[rows]. Row order inside an
// expert is arbitrary (atomics); every output row depends only on its own input row.
__global__ void moe_plan_kernel(const int32_t* ids, int64_t TK, int K, int E, int32_t* offs, int32_t* row_of,
                                int32_t* src_tok, int* err) {
  __shared__ int cnt[kMaxExperts + 1], cur[kMaxExperts];
  for (int e = threadIdx.x; e <= E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < TK; i += blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < E) atomicAdd(&cnt[e], 1);
    else atomicOr(err, kErrExpert);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int e = 0; e < E; ++e) {
      const int c = cnt[e];
      cnt[e] = s;
      cur[e] = s;
      s += c;
    }
    cnt[E] = s;
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) offs[e] = cnt[e];
  for (int64_t i = threadIdx.x; i < TK; i += blockDim.x) {
    const int e = ids[i];
    if (e < 0 || e >= E) {
      row_of[i] = -1;
      continue;
    }
    const int r = atomicAdd(&cur[e], 1);
    row_of[i] = r;
    src_tok[r] = int32_t(i / K);
  }
}

__global__ void moe_gather_kernel(const uint8_t* xq, const float* xs, int64_t D, const int32_t* src_tok,
                                  const int32_t* offs, int E, uint8_t* aq, float* as) {
  const int64_t r = blockIdx.x;
  if (r >= offs[E]) return;
  const int64_t t = src_tok[r];
  for (int64_t i = threadIdx.x * 16; i < D; i += blockDim.x * 16)
    *reinterpret_cast<uint4*>(aq + r * D + i) = *reinterpret_cast<const uint4*>(xq + t * D + i);
  for (int64_t i = threadIdx.x; i < D / 128; i += blockDim.x) as[r * (D / 128) + i] = xs[t * (D / 128) + i];
}

__global__ void moe_combine_kernel(const uint16_t* y, const int32_t* row_of, const int32_t* ids, const float* w,
                                   const uint16_t* shared, int64_t D, int K, uint16_t* out) {
  const int64_t t = blockIdx.x;
  int ord[16];
  int n = 0;
  for (int i = 0; i < K; ++i) {  // slots in ascending expert id (insertion sort)
    if (row_of[t * K + i] < 0) continue;
    int j = n++;
    while (j > 0 && ids[t * K + ord[j - 1]] > ids[t * K + i]) {
      ord[j] = ord[j - 1];
      --j;
    }
    ord[j] = i;
  }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < n; ++i) {
      const int slot = ord[i];
      acc = __fadd_rn(acc, __fmul_rn(bf2f(y[int64_t(row_of[t * K + slot]) * D + d]), w[t * K + slot]));
    }
    if (shared) acc = __fadd_rn(acc, bf2f(shared[t * D + d]));
    out[t * D + d] = f2bf(acc);
  }
}

}  // namespace

void CudaBackend::moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group,
                            int64_t topk, bool norm, float route_scale, Tensor& ids, Tensor& weights) {
  const int64_t T = logits.dim(0), E = logits.dim(1);
  DSA_CHECK(E <= kMaxExperts && n_group <= kMaxGroups && topk <= 16 && topk <= E && n_group >= 1 && E % n_group == 0,
            "moe_route: unsupported routing (", E, " experts, ", n_group, " groups, top-", topk, ")");
  if (T == 0) return;
  moe_route_kernel<<<cdiv(T, 64), 64>>>(logits.ptr<float>(), bias ? bias->ptr<float>() : nullptr, T, int(E),
                                        int(n_group), int(topk_group), int(topk), norm ? 1 : 0, route_scale,
                                        ids.ptr<int32_t>(), weights.ptr<float>());
  DSA_LAUNCH_CHECK();
}

const Tensor& CudaBackend::expert_table(const std::vector<MlpWeights>& experts) {
  std::vector<const void*> h;
  for (const MlpWeights& m : experts)
    for (const Fp8Weight* f : {&m.gate, &m.up, &m.down}) {
      h.push_back(f->w.data);
      h.push_back(f->scale.data);
    }
  auto& entry = expert_tables_[experts.data()];
  if (!entry.second.data || entry.first != h) {
    Tensor htab{h.data(), DType::I64, {int64_t(h.size())}};
    entry.second = upload(htab);  // once per expert set (a synchronous copy, outside the forward's hot path)
    entry.first = h;
  }
  return entry.second;
}

void CudaBackend::moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                              const std::vector<MlpWeights>& experts, const MlpWeights* shared, Tensor& out) {
  const int64_t T = x.dim(0), D = x.dim(1), K = ids.dim(1), E = int64_t(experts.size());
  DSA_CHECK(E >= 1 && E <= kMaxExperts && K <= 16, "moe_experts: ", E, " experts, ", K, " per token");
  DSA_CHECK(D % 128 == 0, "moe_experts: hidden size ", D, " is not a multiple of 128");
  if (T == 0) return;
  const int64_t I = experts[0].gate.n();
  for (const MlpWeights& m : experts)
    DSA_CHECK(m.gate.n() == I && m.up.n() == I && m.gate.k() == D && m.down.n() == D && m.down.k() == I,
              "moe_experts: experts of different shapes");
  DSA_CHECK(I % 128 == 0, "moe_experts: expert width ", I, " is not a multiple of 128");
  const Tensor& table = expert_table(experts);
  const int64_t TK = T * K;
  Tensor offs = alloc(DType::I32, {E + 1}), row_of = alloc(DType::I32, {TK}), src_tok = alloc(DType::I32, {TK});
  moe_plan_kernel<<<1, 1024>>>(ids.ptr<int32_t>(), TK, int(K), int(E), offs.ptr<int32_t>(), row_of.ptr<int32_t>(),
                               src_tok.ptr<int32_t>(), err_);
  DSA_LAUNCH_CHECK();
  Tensor xq = alloc(DType::E4M3, {T, D}), xs = alloc(DType::F32, {T, D / 128});
  launch_act_quant(x.ptr<uint16_t>(), T, D, xq.ptr<uint8_t>(), xs.ptr<float>());
  Tensor aq = alloc(DType::E4M3, {TK, D}), as = alloc(DType::F32, {TK, D / 128});
  moe_gather_kernel<<<unsigned(TK), 128>>>(xq.ptr<uint8_t>(), xs.ptr<float>(), D, src_tok.ptr<int32_t>(),
                                           offs.ptr<int32_t>(), int(E), aq.ptr<uint8_t>(), as.ptr<float>());
  DSA_LAUNCH_CHECK();
  const void* const* tab = static_cast<const void* const*>(table.data);
  Tensor g = alloc(DType::BF16, {TK, I}), u = alloc(DType::BF16, {TK, I});
  // An expert gets at most T rows (a token picks an expert once): T / 64 row tiles per expert.
  launch_linear_fp8_grouped(context(), aq.ptr<uint8_t>(), as.ptr<float>(), T, D, tab, 0, offs.ptr<int32_t>(), E, I, g.ptr<uint16_t>());
  launch_linear_fp8_grouped(context(), aq.ptr<uint8_t>(), as.ptr<float>(), T, D, tab, 1, offs.ptr<int32_t>(), E, I, u.ptr<uint16_t>());
  silu_mul(g, u, g);
  Tensor hq = alloc(DType::E4M3, {TK, I}), hs = alloc(DType::F32, {TK, I / 128});
  launch_act_quant(g.ptr<uint16_t>(), TK, I, hq.ptr<uint8_t>(), hs.ptr<float>());
  Tensor y = alloc(DType::BF16, {TK, D});
  launch_linear_fp8_grouped(context(), hq.ptr<uint8_t>(), hs.ptr<float>(), T, I, tab, 2, offs.ptr<int32_t>(), E, D, y.ptr<uint16_t>());
  Tensor ys;
  if (shared) {
    ys = alloc(DType::BF16, {T, D});
    mlp_forward(*this, x, *shared, ys);
  }
  moe_combine_kernel<<<unsigned(T), 128>>>(y.ptr<uint16_t>(), row_of.ptr<int32_t>(), ids.ptr<int32_t>(),
                                           weights.ptr<float>(), shared ? ys.ptr<uint16_t>() : nullptr, D, int(K),
                                           out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

}  // namespace dsa::cuda

#include "backends/op_profiler.h"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace dsa {

template <class F>
void OpProfiler::timed(const char* op, F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  be_->synchronize();
  Stat& s = stats_[op];
  ++s.calls;
  s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

OpProfiler::~OpProfiler() { report(); }

void OpProfiler::report() const {
  std::vector<std::pair<std::string, Stat>> v(stats_.begin(), stats_.end());
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (auto& [n, s] : v) total += s.seconds;
  std::fprintf(stderr, "\nop profile (%s backend; each op synchronised, so launch + device time, nothing overlapped)\n",
               be_->name().c_str());
  std::fprintf(stderr, "%-22s %9s %12s %10s %7s\n", "op", "calls", "total ms", "us/call", "share");
  for (auto& [n, s] : v)
    std::fprintf(stderr, "%-22s %9ld %12.2f %10.1f %6.1f%%\n", n.c_str(), long(s.calls), s.seconds * 1e3,
                 s.seconds * 1e6 / double(s.calls), total > 0 ? 100.0 * s.seconds / total : 0.0);
  std::fprintf(stderr, "%-22s %9s %12.2f\n", "total", "", total * 1e3);
}

Tensor OpProfiler::upload(const Tensor& host) {
  Tensor r;
  timed("upload", [&] { r = be_->upload(host); });
  return r;
}
void OpProfiler::download(const Tensor& t, void* host) { timed("download", [&] { be_->download(t, host); }); }
void OpProfiler::fill_zero(Tensor& t) { timed("fill_zero", [&] { be_->fill_zero(t); }); }
void OpProfiler::copy(const Tensor& src, Tensor& dst) { timed("copy", [&] { be_->copy(src, dst); }); }
void OpProfiler::copy_cols(const Tensor& src, int64_t col0, Tensor& dst) {
  timed("copy_cols", [&] { be_->copy_cols(src, col0, dst); });
}
void OpProfiler::prepare_batch(Batch& b) { timed("prepare_batch", [&] { be_->prepare_batch(b); }); }
void OpProfiler::embed(const Tensor& ids, const Tensor& table, Tensor& out) {
  timed("embed", [&] { be_->embed(ids, table, out); });
}
void OpProfiler::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  timed("rms_norm", [&] { be_->rms_norm(x, w, eps, out); });
}
void OpProfiler::add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) {
  timed("add_rms_norm", [&] { be_->add_rms_norm(x, residual, w, eps, out); });
}
void OpProfiler::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) {
  timed("layer_norm", [&] { be_->layer_norm(x, w, b, eps, out); });
}
void OpProfiler::silu_mul(const Tensor& g, const Tensor& u, Tensor& out) {
  timed("silu_mul", [&] { be_->silu_mul(g, u, out); });
}
void OpProfiler::rope(Tensor& x, int64_t col, const Batch& b, const Tensor& freqs, RopeLayout layout) {
  timed("rope", [&] { be_->rope(x, col, b, freqs, layout); });
}
void OpProfiler::hadamard128(Tensor& x) { timed("hadamard128", [&] { be_->hadamard128(x); }); }
void OpProfiler::act_quant(const Tensor& x, Tensor& q, Tensor& s) { timed("act_quant", [&] { be_->act_quant(x, q, s); }); }
void OpProfiler::linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) {
  timed("linear_fp8", [&] { be_->linear_fp8(x, w, out); });
}
void OpProfiler::linear_f32(const Tensor& x, const Tensor& w, Tensor& out) {
  timed("linear_f32", [&] { be_->linear_f32(x, w, out); });
}
void OpProfiler::dequant_fp8(const Fp8Weight& w, Tensor& out) { timed("dequant_fp8", [&] { be_->dequant_fp8(w, out); }); }
void OpProfiler::mla_cache_write(const Tensor& kv, const Tensor& k_pe, KvLayer& cache, const Batch& b) {
  timed("mla_cache_write", [&] { be_->mla_cache_write(kv, k_pe, cache, b); });
}
void OpProfiler::mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) {
  timed("mla_cache_read", [&] { be_->mla_cache_read(cache, b, kv, pe); });
}
void OpProfiler::attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out) {
  timed(topk ? "attention_mha sparse" : "attention_mha dense", [&] { be_->attention_mha(q, kv_up, pe, b, topk, scale, out); });
}
void OpProfiler::attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                               const Tensor* topk, float scale, Tensor& out_lat) {
  timed(topk ? "attention_mqa sparse" : "attention_mqa dense",
        [&] { be_->attention_mqa(q_lat, q_pe, cache, b, topk, scale, out_lat); });
}
void OpProfiler::mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) {
  timed("mla_absorb_q", [&] { be_->mla_absorb_q(q, wkv_b, q_lat); });
}
void OpProfiler::mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) {
  timed("mla_absorb_out", [&] { be_->mla_absorb_out(o_lat, wkv_b, out); });
}
void OpProfiler::indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) {
  timed("indexer_cache_write", [&] { be_->indexer_cache_write(k, cache, b); });
}
void OpProfiler::indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                              Tensor& topk) {
  timed("indexer_topk", [&] { be_->indexer_topk(q, w, cache, b, k, topk); });
}
void OpProfiler::indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) {
  timed("indexer_weights", [&] { be_->indexer_weights(w, q_scale, head_scale, softmax_scale); });
}
void OpProfiler::indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, Tensor& scores) {
  timed("indexer_scores", [&] { be_->indexer_scores(q, w, cache, b, scores); });
}
void OpProfiler::moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group, int64_t topk,
                           bool norm, float route_scale, Tensor& ids, Tensor& weights) {
  timed("moe_route", [&] { be_->moe_route(logits, bias, n_group, topk_group, topk, norm, route_scale, ids, weights); });
}
void OpProfiler::moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                             const std::vector<MlpWeights>& experts, const MlpWeights* shared, Tensor& out) {
  timed("moe_experts", [&] { be_->moe_experts(x, ids, weights, experts, shared, out); });
}

void OpProfiler::sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens,
                        Tensor& logprobs, Tensor* top_ids, Tensor* top_lp) {
  timed("sample", [&] { be_->sample(logits, params, tokens, logprobs, top_ids, top_lp); });
}
void OpProfiler::token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) {
  timed("token_logprobs", [&] { be_->token_logprobs(logits, targets, lp); });
}

}  // namespace dsa

#pragma once
// OpProfiler: a Backend that forwards every op to another backend and measures it. Each op is
// followed by synchronize(), so the time of an op is its launch plus its device execution with
// nothing overlapped — the sum is an upper bound on the step time, and the table shows where a
// step goes. Enabled for any backend by DSA_PROFILE_OPS=1 (make_backend wraps the backend); the
// table is printed to stderr when the backend is destroyed, or by report().
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "backends/backend.h"

namespace dsa {

class OpProfiler : public Backend {
 public:
  explicit OpProfiler(std::unique_ptr<Backend> inner) : be_(std::move(inner)) {}
  ~OpProfiler() override;
  Backend& inner() { return *be_; }
  void report() const;  // per-op calls, total ms, share (stderr)
  void reset() { stats_.clear(); }  // e.g. after a prefill, to profile the decode steps alone
  int64_t calls(const std::string& op) const {
    auto it = stats_.find(op);
    return it == stats_.end() ? 0 : it->second.calls;
  }

  std::string name() const override { return be_->name(); }
  Device device() const override { return be_->device(); }
  std::string memory_report() const override { return be_->memory_report(); }
  std::string describe() const override { return be_->describe(); }
  size_t free_memory() const override { return be_->free_memory(); }

  Tensor alloc(DType t, Shape s) override { return be_->alloc(t, s); }
  Tensor upload(const Tensor& host) override;
  void download(const Tensor& t, void* host) override;
  void fill_zero(Tensor& t) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void copy_cols(const Tensor& src, int64_t col0, Tensor& dst) override;
  void synchronize() override { be_->synchronize(); }
  void prepare_batch(Batch& b) override;
  void prepare_weight(Fp8Weight& w) override { be_->prepare_weight(w); }
  // No graphs while profiling: every op is synchronised on its own.

  void embed(const Tensor& ids, const Tensor& table, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) override;
  void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) override;
  void silu_mul(const Tensor& g, const Tensor& u, Tensor& out) override;
  void rope(Tensor& x, int64_t col, const Batch& b, const Tensor& freqs, RopeLayout layout) override;
  void hadamard128(Tensor& x) override;
  void act_quant(const Tensor& x, Tensor& q, Tensor& s) override;
  void linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) override;
  void linear_f32(const Tensor& x, const Tensor& w, Tensor& out) override;
  void dequant_fp8(const Fp8Weight& w, Tensor& out) override;
  void mla_cache_write(const Tensor& kv, const Tensor& k_pe, KvLayer& cache, const Batch& b) override;
  void mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) override;
  void attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b, const Tensor* topk,
                     float scale, Tensor& out) override;
  void attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                     const Tensor* topk, float scale, Tensor& out_lat) override;
  void mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) override;
  void mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) override;
  void indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) override;
  void indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                    Tensor& topk) override;
  void indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) override;
  void indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, Tensor& scores) override;
  void moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group, int64_t topk,
                 bool norm, float route_scale, Tensor& ids, Tensor& weights) override;
  void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const std::vector<MlpWeights>& experts,
                   const MlpWeights* shared, Tensor& out) override;
  void sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens, Tensor& logprobs,
              Tensor* top_ids, Tensor* top_lp) override;
  void token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) override;

 private:
  struct Stat { int64_t calls = 0; double seconds = 0; };
  // Runs f, synchronises, and charges the wall time to `op`.
  template <class F> void timed(const char* op, F&& f);
  std::unique_ptr<Backend> be_;
  std::map<std::string, Stat> stats_;
};

}  // namespace dsa

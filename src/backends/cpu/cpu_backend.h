#pragma once
// CPU backend: the reference implementation of every op in backends/backend.h, multi-threaded with
// OpenMP. The hot loops live in the runtime-dispatched kernel tables of simd.h (AVX-512 / AVX2 /
// scalar, docs/cpu-kernels.md).
#include <vector>

#include "backends/backend.h"
#include "backends/step_arena.h"

namespace dsa {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(int threads);
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::CPU; }
  int threads() const { return threads_; }
  size_t free_memory() const override;  // MemAvailable of /proc/meminfo

  Tensor alloc(DType t, Shape s) override;
  Tensor upload(const Tensor& host) override { return host; }
  // Decode steps allocate from the step workspace (docs/decode-graphs.md); they always run (no replay).
  StepMode begin_decode_step(const DecodeStepKey&) override;
  void end_decode_step(const Tensor&) override { arena_.end(), scopes_.clear(); }
  void cancel_decode_step() override { arena_.end(), scopes_.clear(); }
  void push_step_scope() override { if (arena_.in_step()) scopes_.push_back(arena_.mark()); }
  void pop_step_scope() override {
    if (arena_.in_step() && !scopes_.empty()) arena_.release(scopes_.back()), scopes_.pop_back();
  }
  const StepArena& step_arena() const { return arena_; }
  void download(const Tensor& t, void* host) override;
  void fill_zero(Tensor& t) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void copy_cols(const Tensor& src, int64_t col0, Tensor& dst) override;
  // FP8 weights are re-laid out as k-major panels of 64 output rows, P[n/64][k][64] (rows past n
  // zero), so the GEMM streams them without transposes (docs/cpu-kernels.md).
  void prepare_weight(Fp8Weight& w) override;

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
  void attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                     const Tensor* topk, float scale, Tensor& out) override;
  void attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                     const Tensor* topk, float scale, Tensor& out_lat) override;
  void mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) override;
  void mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) override;

  void indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) override;
  void indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b, int64_t k,
                    Tensor& topk) override;
  void indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) override;
  void indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                      Tensor& scores) override;

  void moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group, int64_t topk,
                 bool norm, float route_scale, Tensor& ids, Tensor& weights) override;
  void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const std::vector<MlpWeights>& experts,
                   const MlpWeights* shared, Tensor& out) override;

  void sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens, Tensor& logprobs,
              Tensor* top_ids, Tensor* top_lp) override;
  void token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) override;

 private:
  int threads_;
  StepArena arena_;
  std::vector<StepArena::Mark> scopes_;
};

// ---- helpers shared by the CPU op files ----------------------------------------------------
namespace cpu {
// Physical cache slot of position `pos` of sequence `s` (block * kKvBlock + offset).
inline int64_t slot_of(const Batch& b, int64_t s, int64_t pos) {
  int64_t blk = b.block_table[size_t(s * b.max_blocks + pos / kKvBlock)];
  return blk * kKvBlock + pos % kKvBlock;
}
// Quantise one 128-group of fp32 values per act_quant (ue8m0). Returns the scale.
float quant_group128(const float* x, uint8_t* q);
// Select the top k of scores[0..n) (ties -> lower index); writes indices ascending, -1 padded to k.
void topk_select(const float* scores, int64_t n, int64_t k, int32_t* out);
// Per-thread scratch of at least `floats` floats, 64-byte aligned (reused across calls).
float* thread_work(int64_t floats);
}  // namespace cpu

}  // namespace dsa

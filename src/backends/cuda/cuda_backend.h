#pragma once
// CUDA backend: every op of backends/backend.h on an NVIDIA GPU (sm_80+), matching the CPU
// reference's rounding points. All work is enqueued on one stream (the per-thread default stream);
// ops never synchronise with the host. Host round trips happen only in upload/download,
// prepare_batch (one small copy of the batch metadata) and synchronize(). Device facts, probes and the
// kernel configuration live in the backend's CudaContext (context.h, docs/cuda-context.md).
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backends/backend.h"
#include "backends/step_arena.h"
#include "backends/cuda/common.cuh"
#include "backends/cuda/context.h"
#include "backends/cuda/gemm/blas_lt.h"

namespace dsa::cuda {

// Caching device allocator: freed blocks go back to size-class free lists and are reused by later
// allocations. Everything runs on one stream, so stream order makes reuse safe without events.
class DevicePool {
 public:
  ~DevicePool();
  void* get(size_t bytes);
  void put(void* p, size_t bytes);
  size_t in_use() const { return in_use_; }
  size_t cached() const { return cached_; }
  size_t peak() const { return peak_; }
  void trim();  // cudaFree every cached block

 private:
  static size_t round(size_t bytes);
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t in_use_ = 0, cached_ = 0, peak_ = 0;
};

class CudaBackend : public Backend {
 public:
  // The device's context with the configuration from the process environment (a bad DSA_CUDA_* value throws),
  // or with the one given.
  explicit CudaBackend(int device);
  CudaBackend(int device, const KernelConfig& config);
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::CUDA; }
  std::string describe() const override { return ctx_->describe(); }
  CudaContext& context() { return *ctx_; }
  const CudaContext& context() const { return *ctx_; }
  KernelConfig& config() { return ctx_->config(); }
  const KernelConfig& config() const { return ctx_->config(); }

  Tensor alloc(DType t, Shape s) override;
  Tensor upload(const Tensor& host) override;
  void download(const Tensor& t, void* host) override;
  void fill_zero(Tensor& t) override;
  void copy(const Tensor& src, Tensor& dst) override;
  void copy_cols(const Tensor& src, int64_t col0, Tensor& dst) override;
  void synchronize() override;
  std::string memory_report() const override;
  size_t free_memory() const override;  // cudaMemGetInfo's free bytes plus this backend's cached blocks
  void prepare_batch(Batch& b) override;
  // Decode steps (docs/decode-graphs.md): tensors and staged inputs from the step workspace; with graphs on
  // (KernelConfig::graphs: DSA_CUDA_GRAPHS=1 or set_graphs(true)) each step key is captured once as a CUDA
  // graph and replayed from then on.
  int64_t decode_ctx_bucket(int64_t max_end) const override;
  StepMode begin_decode_step(const DecodeStepKey& key) override;
  Tensor stage(const Tensor& host) override;
  Tensor replay_decode_step() override;
  void end_decode_step(const Tensor& logits) override;
  void cancel_decode_step() override;
  void push_step_scope() override { if (step_ != Step::None) scopes_.push_back(dev_arena_.mark()); }
  void pop_step_scope() override {
    if (step_ != Step::None && !scopes_.empty()) dev_arena_.release(scopes_.back()), scopes_.pop_back();
  }
  void set_graphs(bool on) { config().graphs = on; }
  // Counters for tests: steps captured (and kept), replayed, captured but not kept (the workspace
  // overflowed: run once), graphs dropped (workspace replaced, LRU, a buffer they read re-allocated).
  struct GraphStats { int64_t captured = 0, replayed = 0, run_once = 0, dropped = 0; };
  const GraphStats& graph_stats() const { return gstats_; }
  size_t decode_graphs() const { return graphs_.size(); }
  const StepArena& step_arena() const { return dev_arena_; }
  void set_graph_replay_probe(int n) override { replay_probe_ = n; if (n > 0) config().graphs = true; }
  GraphReplayStats graph_replay_stats() const override { return rstats_; }

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
  void indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                      Tensor& scores) override;

  void moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group, int64_t topk,
                 bool norm, float route_scale, Tensor& ids, Tensor& weights) override;
  void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const std::vector<MlpWeights>& experts,
                   const MlpWeights* shared, Tensor& out) override;
  // sampling/sample.cu
  void sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens, Tensor& logprobs,
              Tensor* top_ids, Tensor* top_lp) override;
  void token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) override;

  // ---- extras for tests and benchmarks (not part of the Backend contract) -------------------
  // Top-k of precomputed score rows (F32 [T, ld], row t valid in [0, n[t])) — the selection stage
  // of indexer_topk on its own.
  void topk_rows(const Tensor& scores, const int32_t* d_n, int64_t k, Tensor& out);
  // Max score-tile size (floats) of indexer_topk (KernelConfig::indexer.score_tile_floats); tests shrink it to
  // exercise the tiling.
  void set_score_tile_floats(int64_t n) { config().indexer.score_tile_floats = n; }
  // Raise (and clear) device-side error bits as an exception.
  void check_errors();
  int* err_flag() const { return err_; }
  // Top-k of score rows r = 0..rows-1 (row r at scores + r*ld, valid length narr[row_base + r] + n_add),
  // written to out[(row_base + r) * k ...] (positions ascending, -1 padded). Enqueued only.
  // hist0 (optional): the rows' first-digit histograms built by the score kernel (topk_hist0), consumed
  // and zeroed again.
  void launch_topk(const float* scores, int64_t ld, const int32_t* narr, int n_add, int64_t row_base, int64_t rows,
                   int64_t k, int32_t* out, int* hist0 = nullptr);
  // The on-chip top-k configuration launch_topk takes (false: a global-memory path), and whether that
  // path would take the first histogram from the score kernel.
  bool topk_onchip_plan(int64_t ld, int64_t rows, int64_t k, int* kpt, int* csize) const;
  bool topk_takes_hist0(int64_t ld, int64_t rows, int64_t k) const;
  // Zeroed [rows][2048] int buffer for those histograms (score kernel adds, top-k zeroes after use), or
  // nullptr for tiles of more than 1024 rows (prefill) and where it cannot be grown (graph capture).
  int* topk_hist0(int64_t rows);
  const DevBatch& dev(const Batch& b);  // prepares on first use
  DevicePool& pool() { return *pool_; }
  int sm_count() const { return ctx_->facts().sms; }
  BlasLt& blas() { return *blas_; }
  int64_t fp8_sm90_runs = 0;  // linear_fp8 calls run on the sm_90a block-scaled wgmma GEMM (gemm.cu; tests read it)
  // Largest dynamic + static shared memory one block may use on this GPU (sm_80: 163 KB, sm_86/89:
  // 99 KB, sm_90: 227 KB); kernels that need more fall back to a smaller variant.
  size_t smem_optin() const { return smem_optin_; }
  // Tests: pretend a smaller GPU (e.g. 166912 = sm_80, 101376 = sm_86/89) to exercise the MLA decode
  // fallbacks on a big one (the other launchers read the device's own limit, CudaContext::facts()).
  void set_smem_optin(size_t bytes) { smem_optin_ = bytes; }

 private:
  std::unique_ptr<CudaContext> ctx_;  // first: made current before anything else allocates
  std::shared_ptr<DevicePool> pool_;
  std::unique_ptr<BlasLt> blas_;
  int* err_ = nullptr;
  size_t smem_optin_ = 48 * 1024;
  bool mla_fallback_said_ = false;  // the MLA decode shared-memory fallback was reported (mla.cu)
  int* hist0_ = nullptr;        // topk_hist0's buffer
  int64_t hist0_rows_ = 0;
  // Decode steps (cuda_backend.cu, "decode steps").
  enum class Step : uint8_t { None, Eager, Capture, Replay };
  struct DecodeGraph {
    cudaGraphExec_t exec = nullptr;
    Tensor logits;                                  // where the graph leaves them (in dev_arena_; no owner)
    std::vector<std::pair<size_t, size_t>> staged;  // (workspace offset, bytes) of each staged input, in order
    uint64_t last_use = 0;
  };
  void drop_decode_graphs();
  void time_replays(cudaGraphExec_t exec);
  StepArena dev_arena_, host_arena_;  // device workspace; pinned staging of the step's host inputs
  Step step_ = Step::None;
  DecodeStepKey key_;
  bool step_overflow_ = false;        // something of this step did not fit the workspace: do not keep its graph
  std::vector<std::pair<size_t, size_t>> staged_;
  std::vector<StepArena::Mark> scopes_;
  std::map<DecodeStepKey, DecodeGraph> graphs_;
  uint64_t use_clock_ = 0;
  cudaEvent_t step_done_ = nullptr;   // after the last decode step's work: its staging memory is free again
  bool step_done_pending_ = false;
  int graph_warmup_ = 0;              // eager decode steps seen (first-use uploads happen there)
  GraphStats gstats_;
  int replay_probe_ = 0;
  GraphReplayStats rstats_;
  std::map<const void*, std::pair<std::vector<const void*>, Tensor>> expert_tables_;  // grouped-GEMM weight tables
 public:
  const Tensor& expert_table(const std::vector<MlpWeights>& experts);

 private:
  explicit CudaBackend(std::unique_ptr<CudaContext> ctx);
};

// Kernel entry points shared between op files (host-side launchers).
// s_mmajor: the scales stored [K/128][rows] (what cuBLASLt's VEC128 mode reads) instead of [rows][K/128].
void launch_act_quant(const uint16_t* x, int64_t rows, int64_t K, uint8_t* q, float* s, bool s_mmajor = false);
// out[M,N] = bf16(sum_kb dot128(aq, wq) * (as * ws)); grouped when table != nullptr.
struct Fp8GemmArgs {
  const uint8_t* a; const float* as; int64_t M, K;     // activations e4m3 [M, K], scales [M, K/128]
  const uint8_t* w; const float* ws; int64_t N;        // weight e4m3 [N, K], scales [ceil(N/128), K/128]
  uint16_t* out; int64_t ldo;                          // bf16 [M, ldo]
};
// The kernel follows ctx.config().fp8_gemm and the device's SMs and shared memory (gemm/fp8_gemm.cu).
void launch_linear_fp8(const CudaContext& ctx, const Fp8GemmArgs& a);
// Grouped: experts e = 0..E-1 own rows [offs[e], offs[e+1]) of a (M rows in all); weight pointers
// per expert in a device table: table[6*e + 2*which] = w, table[6*e + 2*which + 1] = ws (gate, up, down).
void launch_linear_fp8_grouped(const CudaContext& ctx, const uint8_t* a, const float* as, int64_t M, int64_t K, const void* const* table,
                               int which, const int32_t* offs, int64_t E, int64_t N, uint16_t* out);

}  // namespace dsa::cuda

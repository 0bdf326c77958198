#pragma once
// The backend contract (design.md "The backend contract").
//
// The model graph (model/deepseek_v32.cpp) is written only as calls on this interface; the CPU
// backend (backends/cpu) is the reference for every other backend, and tests run both on the same
// inputs. Conventions:
//   * Tensors are contiguous row-major views on the backend's device. Activations between ops are
//     bf16 (stored as uint16 bits), reductions run in fp32, and each op rounds exactly where the
//     DeepSeek reference rounds (architecture.md §2.1, §10); an op's comment says where.
//   * Ops work on ragged batches: a Batch lists sequences, each with its own start position, its
//     new tokens and its KV block table; token-major tensors are packed over all new tokens.
//   * Ops never change the model; caches are written only by the *_cache_write ops.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dsa {

// FP8 e4m3 weight W[n, k] with fp32 128x128 block scales S[ceil(n/128), ceil(k/128)];
// the real weight is W_fp8[i,j] * S[i/128, j/128] (the checkpoint's `weight_scale_inv`).
struct Fp8Weight {
  Tensor w;      // E4M3 [n, k] (row-major unless a backend re-laid it out: see prepare_weight)
  Tensor scale;  // F32  [ceil(n/128), ceil(k/128)]
  uint8_t layout = 0;  // 0: row-major; other values are private to the backend that set them
  int64_t n() const { return w.dim(0); }
  int64_t k() const { return w.dim(1); }
};

// SwiGLU MLP: down(bf16(silu(gate x) * up x)), all FP8 linears (architecture.md §6.2).
struct MlpWeights {
  Fp8Weight gate, up, down;
};

enum class RopeLayout : uint8_t {
  Interleaved,  // MLA: pairs (2i, 2i+1)
  HalfSplit,    // indexer: pairs (i, i+32) ("rotate half", non-interleaved) — architecture.md §10.1
};

// ---- KV cache layout (design.md "runtime", architecture.md §3.5) ---------------------------
// Both caches are paged in blocks of kKvBlock tokens, addressed through a per-sequence block table.
//   MLA cache, per token, 656 bytes:  512 x e4m3 latent | 4 x fp32 ue8m0 scales (one per 128) |
//                                      64 x bf16 RoPE key (not quantised).  Tokens are contiguous.
//   Indexer cache, per block: 64 tokens x 128 e4m3 keys, then 64 fp32 scales (132 B per token).
constexpr int64_t kKvBlock = 64;
constexpr int64_t kMlaLatent = 512, kMlaRope = 64;
constexpr int64_t kMlaTokenBytes = kMlaLatent + 4 * 4 + kMlaRope * 2;  // 656
constexpr int64_t kIndexDim = 128;
constexpr int64_t kIndexTokenBytes = kIndexDim + 4;                    // 132

struct KvLayer {
  Tensor mla;      // U8 [num_blocks, kKvBlock * 656]
  Tensor indexer;  // U8 [num_blocks, kKvBlock * 132]
};

// One sequence's slice of a batch.
struct BatchSeq {
  int64_t start_pos = 0;   // tokens already in the cache before this step
  int64_t n_new = 0;       // new tokens of this step (packed in the batch at token_offset)
  int64_t token_offset = 0;
  int64_t ctx_offset = 0;  // row offset of this sequence's [0, start_pos + n_new) context rows
                           // in packed per-context tensors (attention_mha's keys)
  // Attention form of this sequence's new tokens: true = the absorbed MQA form straight over the
  // cache (the reference's decode, architecture.md §3.3); false = the MHA prefill form (§3.2). The
  // runtime decides: prompt tokens take the prefill form, generated tokens the decode form, so a
  // token's numbers never depend on how its step was chunked or batched (§10.12).
  bool absorbed = false;
  int64_t end_pos() const { return start_pos + n_new; }
};

// A ragged batch. Host vectors always; device copies (positions, block_table, seq metadata) are
// made by Backend::prepare_batch for backends that need them.
struct Batch {
  std::vector<BatchSeq> seqs;
  std::vector<int32_t> positions;    // [T] absolute position of each new token
  std::vector<int32_t> token_seq;    // [T] sequence index of each new token
  std::vector<int32_t> block_table;  // [n_seqs, max_blocks] physical block ids (-1 unused)
  int64_t max_blocks = 0;
  // Decode steps: the context length the backend's launch shapes are sized for (>= every end_pos;
  // 0: the batch's own maximum). Set by the model from Backend::decode_ctx_bucket, so that steps of
  // one bucket launch the same grids (replayable graphs) and compute the same numbers whether or not
  // they are replayed.
  int64_t ctx_bucket = 0;
  int64_t n_tokens() const { return int64_t(positions.size()); }
  int64_t n_ctx() const;             // sum of end_pos over sequences
  bool all_single_token() const;     // every sequence has exactly one new token
  bool all_absorbed() const;         // every sequence takes the absorbed (decode) form
  // Backend-owned device mirror (opaque to the model).
  std::shared_ptr<void> device;
};

// How a backend computes (docs/numerics.md). Reference: every op rounds where the DeepSeek reference
// rounds, sums in fp32 (only the order of fp32 adds may differ) — the default and what tests compare.
// Fast: what production engines compute where it is faster; on CUDA the FP8 linears of more than 16
// rows run on a block-scaled FP8 wgmma GEMM (sm_90a; the 128-K partial sums keep about 14 bits before
// the fp32 promotion, docs/numerics.md). A backend without a fast variant of an op runs the reference one.
enum class Numerics : uint8_t { Reference, Fast };
inline const char* numerics_name(Numerics n) { return n == Numerics::Fast ? "fast" : "reference"; }

// Per-row parameters of Backend::sample.
struct SampleParams {
  float temperature = 0.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // >= 1: off
  uint64_t seed = 0;         // the draw's noise is a function of (seed, counter, token id) only,
  uint64_t counter = 0;      // so a request's tokens never depend on the rest of the batch
  bool greedy() const { return !(temperature > 0.0f); }
  // A draw restricted by top-k or top-p: it needs the row's order.
  bool filtered(int64_t vocab) const { return !greedy() && ((top_k > 0 && top_k < vocab) || top_p < 1.0f); }
};
// The shape contracts of Backend::sample and token_logprobs, shared by every backend (throws).
void check_sample_args(const Tensor& logits, size_t n_params, const Tensor& tokens, const Tensor& logprobs,
                       const Tensor* top_ids, const Tensor* top_lp);
void check_token_logprobs_args(const Tensor& logits, const Tensor& targets, const Tensor& lp);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  void set_numerics(Numerics n) { numerics_ = n; }
  Numerics numerics() const { return numerics_; }

  // ---- memory -------------------------------------------------------------------------------
  virtual Tensor alloc(DType t, Shape s) = 0;
  // A tensor on this device with the host tensor's contents (CPU: the same view, zero-copy).
  virtual Tensor upload(const Tensor& host) = 0;
  // Copy a device tensor into host memory of t.nbytes().
  virtual void download(const Tensor& t, void* host) = 0;
  virtual void fill_zero(Tensor& t) = 0;
  virtual void copy(const Tensor& src, Tensor& dst) = 0;  // same dtype and numel
  // dst[r, :] = src[r, col0 : col0 + dst.cols]   (src [R, W], dst [R, n], same dtype)
  virtual void copy_cols(const Tensor& src, int64_t col0, Tensor& dst) = 0;
  virtual void synchronize() {}
  // One line on device memory (allocator in use / peak / cached, device used / total); "" if n/a.
  virtual std::string memory_report() const { return ""; }
  // The device and the kernel configuration, one line per group each ending in '\n', printed by the tools at
  // start-up (CUDA: CudaContext::describe); "" where there is nothing to say (CPU).
  virtual std::string describe() const { return ""; }
  // Bytes this device could still hand out (CPU: the host's available memory; CUDA: free device memory).
  virtual size_t free_memory() const = 0;
  // Make the batch's device mirror (no-op on CPU).
  virtual void prepare_batch(Batch& b) {}
  // ---- decode steps (docs/decode-graphs.md) --------------------------------------------------
  // The model brackets each decode-only step (one new token per sequence, absorbed form, logits of
  // every row) with begin_decode_step and end_decode_step (cancel_decode_step after an exception).
  // In between, alloc() draws from the backend's step workspace (no allocator calls), stage() puts
  // host inputs on the device, and prepare_batch stages the batch's metadata. A backend that keeps
  // the step's launches (CUDA graphs) answers Replay for a key it has captured before: the model
  // then stages the same inputs in the same order and calls replay_decode_step instead of the ops,
  // which must give exactly what running them would. Defaults: always Run, plain allocation.
  struct DecodeStepKey {
    int64_t rows = 0, ctx_bucket = 0;  // sequences (= tokens); Batch::ctx_bucket
    int64_t topk = 0;                  // index_topk when the indexer's top-k runs (some sequence is longer), else 0
    uint8_t mode = 0;                  // AttentionMode
    uint8_t numerics = 0;              // Numerics
    bool operator<(const DecodeStepKey& o) const {
      if (rows != o.rows) return rows < o.rows;
      if (ctx_bucket != o.ctx_bucket) return ctx_bucket < o.ctx_bucket;
      if (topk != o.topk) return topk < o.topk;
      if (mode != o.mode) return mode < o.mode;
      return numerics < o.numerics;
    }
  };
  enum class StepMode : uint8_t { Run, Replay };
  // The context length a decode step with this longest sequence is launched for (>= max_end).
  virtual int64_t decode_ctx_bucket(int64_t max_end) const { return max_end; }
  virtual StepMode begin_decode_step(const DecodeStepKey& key) { return StepMode::Run; }
  // A host tensor on this device for the current step (outside a decode step: upload()).
  virtual Tensor stage(const Tensor& host) { return upload(host); }
  // Replay: the captured step's work on the staged inputs; returns its logits.
  virtual Tensor replay_decode_step() { return Tensor{}; }
  virtual void end_decode_step(const Tensor& logits) {}
  virtual void cancel_decode_step() {}
  // Inside a decode step: what is allocated between push and pop is dead after the pop (a layer's
  // temporaries), so the workspace holds one layer's, not every layer's. No-ops elsewhere.
  virtual void push_step_scope() {}
  virtual void pop_step_scope() {}
  // Bench only: launch each decode step's graph `n` more times, timed. Every temporary of a step
  // is written before it is read and the step's cache writes are idempotent, so a replay recomputes the
  // same step: its time is the step's kernels without host gaps (issue 11: step vs graph-replay sum).
  // Turns decode-step graphs on. No-ops where there are no graphs.
  struct GraphReplayStats { int64_t steps = 0, replays = 0; double ms = 0; };  // ms: sum over replays
  virtual void set_graph_replay_probe(int n) {}
  virtual GraphReplayStats graph_replay_stats() const { return {}; }
  // Once per weight at load time: a backend may re-lay out the e4m3 data for its kernels (same
  // values, same arithmetic). The weight is then only valid for this backend's ops.
  virtual void prepare_weight(Fp8Weight& w) {}

  // ---- elementwise, norms -------------------------------------------------------------------
  // out[t] = table[ids[t]]  (ids I32[T], table BF16[V, D], out BF16[T, D])
  virtual void embed(const Tensor& ids, const Tensor& table, Tensor& out) = 0;
  // out = bf16(w * x * rsqrt(mean(x^2) + eps)), fp32 math (x BF16[T,D], w F32[D]).
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // Fused residual (architecture.md §2.1): s = fp32(x) + fp32(residual); residual = bf16(s);
  // out = bf16(w * s * rsqrt(mean(s^2) + eps)) — normalises the *unrounded* sum.
  virtual void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) = 0;
  // LayerNorm with bias, fp32 math, bf16 out (indexer k_norm).
  virtual void layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) = 0;
  // out = bf16(silu(fp32 g) * fp32 u)   (g, u, out BF16[T, I])
  virtual void silu_mul(const Tensor& g, const Tensor& u, Tensor& out) = 0;
  // In-place RoPE on columns [col, col+64) of every row of x (BF16 [T, H, W]); token t uses
  // position positions[t] of the fp32 YaRN table freqs (F32 [max_pos, 32, 2] = cos, sin).
  virtual void rope(Tensor& x, int64_t col, const Batch& b, const Tensor& freqs, RopeLayout layout) = 0;
  // In-place x <- bf16((x . H128) / sqrt(128)), Sylvester order, fp32 math (x BF16 [R, 128]).
  virtual void hadamard128(Tensor& x) = 0;

  // ---- quantisation and linears -------------------------------------------------------------
  // Per 1x128 group: s = ue8m0_scale(amax), q = e4m3(clamp(x / s, ±448)).
  // x BF16 [R, K] (K % 128 == 0) -> q E4M3 [R, K], s F32 [R, K/128].
  virtual void act_quant(const Tensor& x, Tensor& q, Tensor& s) = 0;
  // out = bf16(act_quant(x) @ W^T) with fp32 promotion per 128-K block (architecture.md §5.2).
  // x BF16 [T, K], out BF16 [T, N].
  virtual void linear_fp8(const Tensor& x, const Fp8Weight& w, Tensor& out) = 0;
  // out = fp32(x) @ fp32(W)^T, fp32 out (gate, indexer weights_proj, lm_head).
  // x BF16 [T, K]; W BF16 or F32 [N, K]; out F32 [T, N].
  virtual void linear_f32(const Tensor& x, const Tensor& w, Tensor& out) = 0;
  // W_bf16[i, j] = bf16(W_fp8[i, j] * scale[i/128, j/128])  (architecture.md §5.4)
  virtual void dequant_fp8(const Fp8Weight& w, Tensor& out) = 0;

  // ---- MLA ----------------------------------------------------------------------------------
  // Quantise each new token's latent (BF16 [T, 512], after kv_norm) per 128 with ue8m0 scales and
  // store it with its RoPE key (BF16 [T, 64], already rotated) at its position in the cache.
  virtual void mla_cache_write(const Tensor& kv, const Tensor& k_pe, KvLayer& cache, const Batch& b) = 0;
  // Dequantised latents and RoPE keys of every sequence's context [0, end_pos), packed at
  // BatchSeq::ctx_offset: kv BF16 [n_ctx, 512] = bf16(e4m3 * scale), pe BF16 [n_ctx, 64].
  virtual void mla_cache_read(const KvLayer& cache, const Batch& b, Tensor& kv, Tensor& pe) = 0;
  // Prefill ("MHA form", architecture.md §3.2). q BF16 [T, H, 192] (nope | rope); keys per context
  // row: kv_up BF16 [n_ctx, H, 256] (k_nope | v), pe BF16 [n_ctx, 64]. If topk is defined
  // (I32 [T, K], positions, -1 = none) each token attends to exactly those positions; otherwise to
  // all positions <= its own (dense causal). Numerics as the reference: bf16 scores, bf16 scale
  // multiply, fp32 softmax with bf16 probabilities, fp32-accumulated P.V rounded to bf16.
  // out BF16 [T, H, 128].
  virtual void attention_mha(const Tensor& q, const Tensor& kv_up, const Tensor& pe, const Batch& b,
                             const Tensor* topk, float scale, Tensor& out) = 0;
  // Decode ("MQA form", absorbed, architecture.md §3.3) straight from the FP8 cache.
  // q_lat BF16 [T, H, 512], q_pe BF16 [T, H, 64]; scores bf16(bf16(q_lat.kv) + bf16(q_pe.pe)),
  // bf16 scale multiply, fp32 softmax -> bf16 P; out_lat BF16 [T, H, 512] = bf16(sum P kv).
  virtual void attention_mqa(const Tensor& q_lat, const Tensor& q_pe, const KvLayer& cache, const Batch& b,
                             const Tensor* topk, float scale, Tensor& out_lat) = 0;
  // Per-head products with the dequantised wkv_b (BF16 [H, 256, 512]: rows 0..127 W_UK, 128..255 W_UV):
  // absorb_q: q_lat[t,h,:] = bf16(q[t,h,0:128] . W_UK[h])   (q BF16 [T, H, q_stride] nope first)
  // absorb_out: out[t,h,:] = bf16(o_lat[t,h,:] . W_UV[h]^T)  (o_lat BF16 [T,H,512], out BF16 [T,H,128])
  virtual void mla_absorb_q(const Tensor& q, const Tensor& wkv_b, Tensor& q_lat) = 0;
  virtual void mla_absorb_out(const Tensor& o_lat, const Tensor& wkv_b, Tensor& out) = 0;

  // ---- lightning indexer (architecture.md §4) -----------------------------------------------
  // k BF16 [T, 128] (after LayerNorm, RoPE and Hadamard) -> act_quant -> indexer cache.
  virtual void indexer_cache_write(const Tensor& k, KvLayer& cache, const Batch& b) = 0;
  // For every new token t (sequence s, position p): score every cached key j <= p,
  //   I[t, j] = k_scale[j] * sum_h w[t, h] * relu(q[t, h, :] . k[j, :])   (fp32; q, k e4m3),
  // and write the positions of the top min(k, p + 1) scores to topk[t, :] (I32 [T, k]), -1 after.
  // Ties go to the lower position. Scores are computed in bounded tiles, never as [T x L].
  // q E4M3 [T, Hi, 128]; w F32 [T, Hi] (q scale and constants already folded in).
  virtual void indexer_topk(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                            int64_t k, Tensor& topk) = 0;
  // Head weights (architecture.md §4 step 6), in the reference's order of fp32 multiplies:
  // w = ((w * head_scale) * q_scale) * softmax_scale   (w, q_scale F32 [T, Hi])
  virtual void indexer_weights(Tensor& w, const Tensor& q_scale, float head_scale, float softmax_scale) = 0;
  // Diagnostic: the full score rows (F32 [T, max_end_pos], -inf where j > p). Tests only.
  virtual void indexer_scores(const Tensor& q, const Tensor& w, const KvLayer& cache, const Batch& b,
                              Tensor& scores) = 0;

  // ---- MoE (architecture.md §6) -------------------------------------------------------------
  // scores = sigmoid(logits); biased = scores + bias (bias may be undefined); group score = sum of
  // the top-2 biased scores per group; keep topk_group groups; top-k experts by biased score;
  // weights = unbiased scores / their sum * route_scale (if norm) — logits F32 [T, E].
  virtual void moe_route(const Tensor& logits, const Tensor* bias, int64_t n_group, int64_t topk_group,
                         int64_t topk, bool norm, float route_scale, Tensor& ids, Tensor& weights) = 0;
  // out = bf16( sum over the token's experts in ascending expert id of fp32(expert(x)) * w
  //             + fp32(shared(x)) )    (x BF16 [T, D], ids I32 [T, k], weights F32 [T, k])
  virtual void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights,
                           const std::vector<MlpWeights>& experts, const MlpWeights* shared, Tensor& out) = 0;

  // ---- sampling (docs/sampling.md) ----------------------------------------------------------
  // One token per row of logits (F32 [R, V]) with params[r], so the vocabulary never leaves the
  // device. Order: ids by logit descending, ties to the lower id. Greedy: the first id. Otherwise,
  // in float64: z = logit / temperature over the first n ids of the order (n = top_k, or V); if
  // top_p < 1, n shrinks to the shortest prefix whose weights exp(z - z_max), summed in order, reach
  // top_p times their sum over the n; the token is the argmax over that prefix of
  // z + gumbel(seed, counter, id) (sample_noise.h; ties to the lower id): an exact draw from
  // softmax(z) restricted to the prefix. tokens I32 [R]; logprobs F32 [R] = log softmax(logits) at
  // the token (the model's distribution, before temperature and filters); if top_ids/top_lp are
  // given (I32 / F32 [R, n_top]): the first n_top ids of the order and their log-probabilities.
  virtual void sample(const Tensor& logits, const std::vector<SampleParams>& params, Tensor& tokens,
                      Tensor& logprobs, Tensor* top_ids, Tensor* top_lp) = 0;
  // lp[r] = log softmax(logits[r])[targets[r]] in float64, as l[target] - (log(sum_v exp(l_v - m)) + m)
  // with m the row's max (logits F32 [R, V], targets I32 [R], lp F64 [R]). Perplexity, prompt logprobs.
  virtual void token_logprobs(const Tensor& logits, const Tensor& targets, Tensor& lp) = 0;

 protected:
  Numerics numerics_ = Numerics::Reference;
};

// SwiGLU MLP through the backend ops: out = down(silu(gate x) * up x).
void mlp_forward(Backend& be, const Tensor& x, const MlpWeights& w, Tensor& out);

// Factory: "cpu", "cuda" (device 0) or "cuda:N" (throws with a clear message if CUDA was not built, there is
// no such GPU, or a DSA_CUDA_* environment variable has a bad value).
std::unique_ptr<Backend> make_backend(const std::string& name, int threads = 0);
// "cuda" -> 0, "cuda:N" -> N; -1 for names of other devices; throws on "cuda:" without a valid index.
int cuda_device_index(const std::string& name);

}  // namespace dsa

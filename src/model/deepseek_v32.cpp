#include "model/deepseek_v32.h"

#include <algorithm>
#include <cmath>

#include "model/rope_table.h"

namespace dsa {

namespace {
// Sequences [s0, s1) of b as a batch of their own: token and context rows rebased to 0, the same
// block table rows.
Batch sub_batch(const Batch& b, size_t s0, size_t s1) {
  Batch r;
  const int64_t t0 = b.seqs[s0].token_offset, c0 = b.seqs[s0].ctx_offset;
  const int64_t t1 = s1 < b.seqs.size() ? b.seqs[s1].token_offset : b.n_tokens();
  for (size_t i = s0; i < s1; ++i) {
    BatchSeq q = b.seqs[i];
    q.token_offset -= t0;
    q.ctx_offset -= c0;
    r.seqs.push_back(q);
  }
  r.positions.assign(b.positions.begin() + t0, b.positions.begin() + t1);
  for (int64_t t = t0; t < t1; ++t) r.token_seq.push_back(b.token_seq[size_t(t)] - int32_t(s0));
  r.max_blocks = b.max_blocks;
  r.block_table.assign(b.block_table.begin() + int64_t(s0) * b.max_blocks, b.block_table.begin() + int64_t(s1) * b.max_blocks);
  return r;
}
}  // namespace

DeepseekV32::DeepseekV32(ModelConfig cfg, ModelWeights w, Backend& be) : cfg_(std::move(cfg)), w_(std::move(w)), be_(be) {
  rope_ = be_.upload(rope_table(cfg_, cfg_.max_position_embeddings));
}

// MLA with DSA for layer l (architecture.md §3, §4). x: attn_norm output BF16 [T, D].
void DeepseekV32::attention(int64_t l, const Tensor& x, Batch& b, const std::vector<FormRun>& runs, KvLayer& kv,
                            AttentionMode mode, Tensor& out) {
  const LayerWeights& w = w_.layers[size_t(l)];
  const int64_t T = x.dim(0), H = cfg_.num_attention_heads, QK = cfg_.qk_head_dim();
  const int64_t NOPE = cfg_.qk_nope_head_dim, DV = cfg_.v_head_dim, R = cfg_.kv_lora_rank, RO = cfg_.qk_rope_head_dim;
  const float scale = float(cfg_.mla_softmax_scale());

  // Shared front-end: qr = q_norm(wq_a x) feeds both MLA and the indexer.
  Tensor qa = be_.alloc(DType::BF16, {T, cfg_.q_lora_rank}), qr = be_.alloc(DType::BF16, {T, cfg_.q_lora_rank});
  be_.linear_fp8(x, w.wq_a, qa);
  be_.rms_norm(qa, w.q_norm, float(cfg_.rms_norm_eps), qr);
  Tensor q = be_.alloc(DType::BF16, {T, H, QK});
  { Tensor q2 = q.view({T, H * QK}); be_.linear_fp8(qr, w.wq_b, q2); }
  be_.rope(q, NOPE, b, rope_, RopeLayout::Interleaved);  // MLA: the last 64 dims, interleaved

  Tensor kvf = be_.alloc(DType::BF16, {T, R + RO}), lat = be_.alloc(DType::BF16, {T, R}), kpe = be_.alloc(DType::BF16, {T, 1, RO});
  be_.linear_fp8(x, w.wkv_a, kvf);
  be_.copy_cols(kvf, 0, lat);
  be_.rms_norm(lat, w.kv_norm, float(cfg_.rms_norm_eps), lat);
  { Tensor k2 = kpe.view({T, RO}); be_.copy_cols(kvf, R, k2); }
  be_.rope(kpe, 0, b, rope_, RopeLayout::Interleaved);
  be_.mla_cache_write(lat, kpe.view({T, RO}), kv, b);  // FP8 latent: every later use sees quant-dequant values

  // Lightning indexer. Skipped in dense mode, and when every sequence is within index_topk tokens:
  // then top-k selects every visible position and DSA is exactly dense causal attention
  // (architecture.md §3.4) — the keys are still cached for later steps.
  int64_t max_end = 0;
  for (auto& s : b.seqs) max_end = std::max(max_end, s.end_pos());
  const int64_t K = cfg_.index_topk;
  Tensor topk;
  if (mode == AttentionMode::Sparse) {
    const IndexerWeights& iw = w.indexer;
    const int64_t Hi = cfg_.index_n_heads, Di = cfg_.index_head_dim;
    Tensor ik = be_.alloc(DType::BF16, {T, 1, Di});
    { Tensor k2 = ik.view({T, Di}); be_.linear_fp8(x, iw.wk, k2); be_.layer_norm(k2, iw.k_norm_w, iw.k_norm_b, 1e-6f, k2); }
    be_.rope(ik, 0, b, rope_, RopeLayout::HalfSplit);  // indexer: the first 64 dims, half-split
    { Tensor k2 = ik.view({T, Di}); be_.hadamard128(k2); be_.indexer_cache_write(k2, kv, b); }
    if (max_end > K) {
      Tensor iq = be_.alloc(DType::BF16, {T, Hi, Di});
      { Tensor q2 = iq.view({T, Hi * Di}); be_.linear_fp8(qr, iw.wq_b, q2); }
      be_.rope(iq, 0, b, rope_, RopeLayout::HalfSplit);
      { Tensor q2 = iq.view({T * Hi, Di}); be_.hadamard128(q2); }
      Tensor iq8 = be_.alloc(DType::E4M3, {T, Hi, Di}), iqs = be_.alloc(DType::F32, {T, Hi});
      { Tensor a = iq.view({T * Hi, Di}), q8 = iq8.view({T * Hi, Di}), qs = iqs.view({T * Hi, 1}); be_.act_quant(a, q8, qs); }
      Tensor wts = be_.alloc(DType::F32, {T, Hi});
      be_.linear_f32(x, iw.weights_proj, wts);
      be_.indexer_weights(wts, iqs, float(1.0 / std::sqrt(double(Hi))), float(1.0 / std::sqrt(double(Di))));
      topk = be_.alloc(DType::I32, {T, K});
      be_.indexer_topk(iq8, wts, kv, b, K, topk);
    }
  }
  Tensor o = be_.alloc(DType::BF16, {T, H, DV});
  for (const FormRun& run : runs) {
    const Batch& rb = *run.batch;
    const int64_t Tr = run.t1 - run.t0;
    const Tensor qr_ = q.rows(run.t0, run.t1);
    Tensor orun = o.rows(run.t0, run.t1);
    Tensor sel_rows;
    if (topk.data) sel_rows = topk.rows(run.t0, run.t1);
    const Tensor* sel = topk.data ? &sel_rows : nullptr;
    if (run.absorbed) {
      // Absorbed MQA form straight over the FP8 cache (architecture.md §3.3); every token attends to
      // its own selection (or all positions <= its own).
      Tensor qlat = be_.alloc(DType::BF16, {Tr, H, R}), qpe = be_.alloc(DType::BF16, {Tr, H, RO}),
             olat = be_.alloc(DType::BF16, {Tr, H, R});
      be_.mla_absorb_q(qr_, w.wkv_b_bf16, qlat);
      { Tensor src = qr_.view({Tr * H, QK}), dst = qpe.view({Tr * H, RO}); be_.copy_cols(src, NOPE, dst); }
      be_.attention_mqa(qlat, qpe, kv, rb, sel, scale, olat);
      be_.mla_absorb_out(olat, w.wkv_b_bf16, orun);
      if (tap_) {  // observers (indexer training) get the MHA-form keys whatever form computed the attention
        const int64_t NC = rb.n_ctx();
        Tensor ckv = be_.alloc(DType::BF16, {NC, R}), cpe = be_.alloc(DType::BF16, {NC, RO});
        be_.mla_cache_read(kv, rb, ckv, cpe);
        Tensor kvup = be_.alloc(DType::BF16, {NC, H, NOPE + DV});
        { Tensor k2 = kvup.view({NC, H * (NOPE + DV)}); be_.linear_fp8(ckv, w.wkv_b, k2); }
        const Tensor xr = x.rows(run.t0, run.t1), qrr = qr.rows(run.t0, run.t1);
        tap_(AttentionTap{l, &xr, &qrr, &qr_, &kvup, &cpe, sel, &rb});
      }
    } else {
      // Prefill, MHA form: keys/values expanded from the cached latents of each sequence's context.
      const int64_t NC = rb.n_ctx();
      Tensor ckv = be_.alloc(DType::BF16, {NC, R}), cpe = be_.alloc(DType::BF16, {NC, RO});
      be_.mla_cache_read(kv, rb, ckv, cpe);
      Tensor kvup = be_.alloc(DType::BF16, {NC, H, NOPE + DV});
      { Tensor k2 = kvup.view({NC, H * (NOPE + DV)}); be_.linear_fp8(ckv, w.wkv_b, k2); }
      be_.attention_mha(qr_, kvup, cpe, rb, sel, scale, orun);
      if (tap_) {
        const Tensor xr = x.rows(run.t0, run.t1), qrr = qr.rows(run.t0, run.t1);
        tap_(AttentionTap{l, &xr, &qrr, &qr_, &kvup, &cpe, sel, &rb});
      }
    }
  }
  be_.linear_fp8(o.view({T, H * DV}), w.wo, out);
}

Tensor DeepseekV32::forward(const Tensor& ids_in, Batch& b, KvCache& kv, AttentionMode mode,
                            const std::vector<int32_t>& logit_rows) {
  const int64_t T = b.n_tokens(), D = cfg_.hidden_size;
  DSA_CHECK(ids_in.numel() == T, "forward: ", ids_in.numel(), " ids for a batch of ", T, " tokens");
  int64_t packed = 0, ctx = 0, max_end = 0;
  for (auto& s : b.seqs) {
    DSA_CHECK(s.end_pos() <= cfg_.max_position_embeddings, "sequence of ", s.end_pos(),
              " tokens is longer than the model's context (max_position_embeddings = ", cfg_.max_position_embeddings, ")");
    DSA_CHECK(s.token_offset == packed && s.ctx_offset == ctx && s.n_new > 0,
              "forward: the batch's sequences must be packed in order, each with new tokens");
    packed += s.n_new;
    ctx += s.end_pos();
    max_end = std::max(max_end, s.end_pos());
  }
  bool all_rows = int64_t(logit_rows.size()) == T;
  for (int64_t i = 0; all_rows && i < T; ++i) all_rows = logit_rows[size_t(i)] == i;
  // A decode step (docs/decode-graphs.md): one token per sequence in the absorbed form, every row's logits,
  // no observer. It runs from the backend's step workspace, and the backend may replay it.
  // Host ids only: a replayed step reads its ids from the staged copy, never from a caller's device buffer.
  const bool decode =
      T > 0 && b.all_single_token() && b.all_absorbed() && all_rows && !tap_ && ids_in.device == Device::CPU;
  struct DecodeScope {
    Backend& be;
    bool on = false;
    ~DecodeScope() { if (on) be.cancel_decode_step(); }
  } scope{be_};
  Tensor ids;
  if (decode) {
    b.ctx_bucket = be_.decode_ctx_bucket(max_end);
    Backend::DecodeStepKey key;
    key.rows = T;
    key.ctx_bucket = b.ctx_bucket;
    key.topk = mode == AttentionMode::Sparse && max_end > cfg_.index_topk ? cfg_.index_topk : 0;
    key.mode = uint8_t(mode);
    key.numerics = uint8_t(be_.numerics());
    const Backend::StepMode sm = be_.begin_decode_step(key);
    scope.on = true;
    ids = be_.stage(ids_in);
    be_.prepare_batch(b);
    if (sm == Backend::StepMode::Replay) {
      Tensor logits = be_.replay_decode_step();
      scope.on = false;
      be_.end_decode_step(logits);
      return logits;
    }
  } else {
    ids = ids_in.device == Device::CPU ? be_.upload(ids_in) : ids_in;
    be_.prepare_batch(b);
  }
  // Runs of consecutive sequences of one attention form; with more than one, each is a batch of its own.
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t s0 = 0; s0 < b.seqs.size();) {
    size_t s1 = s0 + 1;
    while (s1 < b.seqs.size() && b.seqs[s1].absorbed == b.seqs[s0].absorbed) ++s1;
    ranges.emplace_back(s0, s1);
    s0 = s1;
  }
  std::vector<Batch> subs;
  std::vector<FormRun> runs;
  if (ranges.size() <= 1) {
    runs.push_back({!b.seqs.empty() && b.seqs[0].absorbed, 0, T, &b});
  } else {
    subs.reserve(ranges.size());
    for (auto [s0, s1] : ranges) {
      subs.push_back(sub_batch(b, s0, s1));
      be_.prepare_batch(subs.back());
      const int64_t t0 = b.seqs[s0].token_offset;
      runs.push_back({b.seqs[s0].absorbed, t0, t0 + subs.back().n_tokens(), &subs.back()});
    }
  }
  const float eps = float(cfg_.rms_norm_eps);
  Tensor h = be_.alloc(DType::BF16, {T, D}), x = be_.alloc(DType::BF16, {T, D}), residual = be_.alloc(DType::BF16, {T, D});
  be_.embed(ids, w_.embed, h);
  struct LayerScope {  // decode steps: a layer's temporaries are dead at its end (Backend::push_step_scope)
    Backend& be;
    explicit LayerScope(Backend& b) : be(b) { be.push_step_scope(); }
    ~LayerScope() { be.pop_step_scope(); }
  };
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const LayerScope scope_l(be_);  // first: destroyed after the layer's other locals
    const LayerWeights& w = w_.layers[size_t(l)];
    if (l == 0) {
      be_.copy(h, residual);
      be_.rms_norm(h, w.attn_norm, eps, x);
    } else {
      be_.add_rms_norm(h, residual, w.attn_norm, eps, x);
    }
    attention(l, x, b, runs, kv.layers[size_t(l)], mode, h);
    be_.add_rms_norm(h, residual, w.ffn_norm, eps, x);
    if (!w.moe) {
      mlp_forward(be_, x, w.mlp, h);
    } else {
      const int64_t E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok;
      Tensor logits = be_.alloc(DType::F32, {T, E}), ids_e = be_.alloc(DType::I32, {T, K}), wts = be_.alloc(DType::F32, {T, K});
      be_.linear_f32(x, w.gate, logits);
      be_.moe_route(logits, w.gate_bias.data ? &w.gate_bias : nullptr, cfg_.n_group, cfg_.topk_group, K,
                    cfg_.norm_topk_prob, float(cfg_.routed_scaling_factor), ids_e, wts);
      be_.moe_experts(x, ids_e, wts, w.experts, w.has_shared ? &w.shared : nullptr, h);
    }
  }
  be_.add_rms_norm(h, residual, w_.norm, eps, x);  // the final norm absorbs the last residual add
  const int64_t NR = int64_t(logit_rows.size());
  Tensor hs = x;
  if (!all_rows) {
    hs = be_.alloc(DType::BF16, {NR, D});
    for (int64_t i = 0; i < NR; ++i) {
      Tensor dst = hs.rows(i, i + 1);
      be_.copy(x.rows(logit_rows[size_t(i)], logit_rows[size_t(i)] + 1), dst);
    }
  }
  Tensor logits = be_.alloc(DType::F32, {NR, cfg_.vocab_size});
  be_.linear_f32(hs, w_.head, logits);
  if (decode) {
    scope.on = false;
    be_.end_decode_step(logits);
  }
  return logits;
}

}  // namespace dsa

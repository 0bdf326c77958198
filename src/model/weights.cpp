#include "model/weights.h"

#include <set>
#include <string>

namespace dsa {

namespace {

struct Loader {
  const Checkpoint& ck;
  const ModelConfig& cfg;
  Backend& be;
  bool check_finite = true;
  size_t bytes = 0;
  std::set<std::string> used;

  Tensor get(const std::string& name, DType t, Shape s) {
    used.insert(name);
    Tensor h = ck.get(name, t, s);
    if (check_finite) ck.check_finite(name);
    return h;
  }
  Tensor put(const Tensor& host) {
    bytes += host.nbytes();
    return be.upload(host);
  }
  Tensor bf16(const std::string& name, Shape s) { return put(get(name, DType::BF16, s)); }
  // Norm weights are fp32 parameters in the reference; the checkpoint may store bf16 or fp32
  // (architecture.md §7.1 note): read the header dtype and upcast.
  Tensor f32(const std::string& name, Shape s) {
    const TensorInfo& info = ck.info(name);
    if (info.dtype == DType::F32) return put(get(name, DType::F32, s));
    Tensor src = get(name, DType::BF16, s);
    Tensor dst = host_tensor(DType::F32, s);
    for (int64_t i = 0; i < src.numel(); ++i) dst.ptr<float>()[i] = bf16_to_f32(src.ptr<uint16_t>()[i]);
    return put(dst);
  }
  Fp8Weight fp8(const std::string& prefix, int64_t n, int64_t k) {
    Fp8Weight w;
    w.w = put(get(prefix + ".weight", DType::E4M3, {n, k}));
    w.scale = put(get(prefix + ".weight_scale_inv", DType::F32,
                         {(n + cfg.weight_block_n - 1) / cfg.weight_block_n, (k + cfg.weight_block_k - 1) / cfg.weight_block_k}));
    be.prepare_weight(w);
    return w;
  }
  MlpWeights mlp(const std::string& prefix, int64_t inter) {
    const int64_t D = cfg.hidden_size;
    return {fp8(prefix + ".gate_proj", inter, D), fp8(prefix + ".up_proj", inter, D), fp8(prefix + ".down_proj", D, inter)};
  }
};

}  // namespace

ModelWeights load_weights(const Checkpoint& ck, const ModelConfig& cfg, Backend& be, bool check_finite) {
  DSA_CHECK(cfg.fp8, ck.dir(), ": only FP8 (quantization_config fp8/e4m3) checkpoints are supported");
  Loader L{ck, cfg, be, check_finite};
  const int64_t D = cfg.hidden_size, H = cfg.num_attention_heads, V = cfg.vocab_size;
  const int64_t QK = cfg.qk_head_dim(), NOPE = cfg.qk_nope_head_dim, DV = cfg.v_head_dim;
  const int64_t R = cfg.kv_lora_rank, RO = cfg.qk_rope_head_dim;
  DSA_CHECK(R == kMlaLatent && RO == kMlaRope, ck.dir(), ": kv_lora_rank/qk_rope_head_dim must be 512/64 for the "
            "656-byte cache layout, found ", R, "/", RO);
  DSA_CHECK(cfg.index_head_dim == kIndexDim, ck.dir(), ": index_head_dim must be 128, found ", cfg.index_head_dim);
  DSA_CHECK(NOPE == DV, ck.dir(), ": qk_nope_head_dim (", NOPE, ") != v_head_dim (", DV, ") is not supported");
  ModelWeights m;
  m.embed = L.bf16("model.embed_tokens.weight", {V, D});
  m.norm = L.f32("model.norm.weight", {D});
  m.head = L.bf16("lm_head.weight", {V, D});
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    LayerWeights w;
    w.attn_norm = L.f32(p + ".input_layernorm.weight", {D});
    w.ffn_norm = L.f32(p + ".post_attention_layernorm.weight", {D});
    const std::string a = p + ".self_attn";
    w.wq_a = L.fp8(a + ".q_a_proj", cfg.q_lora_rank, D);
    w.q_norm = L.f32(a + ".q_a_layernorm.weight", {cfg.q_lora_rank});
    w.wq_b = L.fp8(a + ".q_b_proj", H * QK, cfg.q_lora_rank);
    w.wkv_a = L.fp8(a + ".kv_a_proj_with_mqa", R + RO, D);
    w.kv_norm = L.f32(a + ".kv_a_layernorm.weight", {R});
    w.wkv_b = L.fp8(a + ".kv_b_proj", H * (NOPE + DV), R);
    w.wo = L.fp8(a + ".o_proj", D, H * DV);
    w.wkv_b_bf16 = be.alloc(DType::BF16, {H, NOPE + DV, R});
    {
      Tensor flat = w.wkv_b_bf16.view({H * (NOPE + DV), R});
      be.dequant_fp8(w.wkv_b, flat);
      L.bytes += flat.nbytes();
    }
    const std::string ix = a + ".indexer";
    w.indexer.wq_b = L.fp8(ix + ".wq_b", cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora_rank);
    w.indexer.wk = L.fp8(ix + ".wk", cfg.index_head_dim, D);
    w.indexer.k_norm_w = L.f32(ix + ".k_norm.weight", {cfg.index_head_dim});
    w.indexer.k_norm_b = L.f32(ix + ".k_norm.bias", {cfg.index_head_dim});
    w.indexer.weights_proj = L.bf16(ix + ".weights_proj.weight", {cfg.index_n_heads, D});
    w.moe = cfg.is_moe_layer(l);
    const std::string f = p + ".mlp";
    if (!w.moe) {
      w.mlp = L.mlp(f, cfg.intermediate_size);
    } else {
      const int64_t E = cfg.n_routed_experts;
      w.gate = L.bf16(f + ".gate.weight", {E, D});
      if (ck.has(f + ".gate.e_score_correction_bias"))  // use the bias whenever it is present
        w.gate_bias = L.put(L.get(f + ".gate.e_score_correction_bias", DType::F32, {E}));
      for (int64_t e = 0; e < E; ++e) w.experts.push_back(L.mlp(f + ".experts." + std::to_string(e), cfg.moe_intermediate_size));
      if (cfg.n_shared_experts > 0) {
        w.has_shared = true;
        w.shared = L.mlp(f + ".shared_experts", cfg.n_shared_experts * cfg.moe_intermediate_size);
      }
    }
    m.layers.push_back(std::move(w));
  }
  // Anything left over is a checkpoint/config mismatch — except the num_nextn_predict_layers MTP
  // layers (model.layers.{num_hidden_layers}..), which the reference ignores too.
  const int64_t n_layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
  for (const std::string& name : ck.names()) {
    if (L.used.count(name)) continue;
    const std::string pre = "model.layers.";
    if (name.rfind(pre, 0) == 0) {
      const size_t dot = name.find('.', pre.size());
      const std::string idx = name.substr(pre.size(), dot == std::string::npos ? std::string::npos : dot - pre.size());
      int64_t l = 0;
      bool num = !idx.empty() && idx.size() <= 9;
      for (char c : idx) num = num && c >= '0' && c <= '9';
      if (!num)
        fail(ck.file_of(name), ": unexpected tensor '", name, "': layer index '", idx, "' is not a layer number in [0, ",
             n_layers, ")");
      for (char c : idx) l = l * 10 + (c - '0');
      if (l >= cfg.num_hidden_layers && l < n_layers) continue;
      if (l >= n_layers)
        fail(ck.file_of(name), ": tensor '", name, "' belongs to layer ", l, ", but config.json has num_hidden_layers ",
             cfg.num_hidden_layers, " + num_nextn_predict_layers ", cfg.num_nextn_predict_layers, " = ", n_layers,
             " layers (does config.json belong to this checkpoint?)");
    }
    fail(ck.file_of(name), ": unexpected tensor '", name, "' (not part of a ", cfg.num_hidden_layers,
         "-layer DeepseekV32 model with this config)");
  }
  m.bytes = L.bytes;
  return m;
}

}  // namespace dsa

#include "model/random_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

namespace dsa {

ModelConfig default_model_config() { return preset_model_config("default"); }

ModelConfig preset_model_config(const std::string& name) {
  ModelConfig c;
  c.model_type = "deepseek_v32";
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.fp8 = true;
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  RopeScaling y;
  y.type = "yarn";
  y.beta_fast = 32;
  y.beta_slow = 1;
  y.mscale = 1.0;
  y.mscale_all_dim = 1.0;
  if (name == "default") {
    c.vocab_size = 8192; c.hidden_size = 1024; c.intermediate_size = 2048; c.moe_intermediate_size = 256;
    c.num_hidden_layers = 4; c.first_k_dense_replace = 1; c.num_attention_heads = 32; c.q_lora_rank = 384;
    c.n_routed_experts = 16; c.n_shared_experts = 1; c.num_experts_per_tok = 4; c.n_group = 4; c.topk_group = 2;
    c.index_topk = 256; c.max_position_embeddings = 16384;
    y.factor = 4; y.original_max_position_embeddings = 4096;
  } else if (name == "mini") {
    c.vocab_size = 8192; c.hidden_size = 384; c.intermediate_size = 1536; c.moe_intermediate_size = 128;
    c.num_hidden_layers = 6; c.first_k_dense_replace = 1; c.num_attention_heads = 16; c.q_lora_rank = 128;
    c.n_routed_experts = 8; c.n_shared_experts = 1; c.num_experts_per_tok = 2; c.n_group = 4; c.topk_group = 2;
    c.index_topk = 256; c.max_position_embeddings = 8192;
    y.factor = 4; y.original_max_position_embeddings = 2048;
  } else if (name == "tiny") {  // tests: smallest shapes that keep the real attention geometry
    c.vocab_size = 512; c.hidden_size = 256; c.intermediate_size = 256; c.moe_intermediate_size = 128;
    c.num_hidden_layers = 2; c.first_k_dense_replace = 1; c.num_attention_heads = 4; c.q_lora_rank = 128;
    c.n_routed_experts = 8; c.n_shared_experts = 1; c.num_experts_per_tok = 2; c.n_group = 4; c.topk_group = 2;
    c.index_topk = 32; c.max_position_embeddings = 1024;
    y.factor = 4; y.original_max_position_embeddings = 256;
  } else if (name == "v32-real-attn") {
    c.vocab_size = 129280; c.hidden_size = 7168; c.intermediate_size = 18432; c.moe_intermediate_size = 2048;
    c.num_hidden_layers = 2; c.first_k_dense_replace = 1; c.num_attention_heads = 128; c.q_lora_rank = 1536;
    c.n_routed_experts = 8; c.n_shared_experts = 1; c.num_experts_per_tok = 2; c.n_group = 4; c.topk_group = 2;
    c.index_topk = 2048; c.max_position_embeddings = 163840;
    y.factor = 40; y.original_max_position_embeddings = 4096;
  } else {
    fail("unknown model preset '", name, "' (known: default, mini, tiny, v32-real-attn)");
  }
  c.rope_scaling = y;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  return c;
}

void quantize_fp8_blocks(const float* w, int64_t n, int64_t k, uint8_t* q, float* scales) {
  const int64_t NB = (n + 127) / 128, KB = (k + 127) / 128;
  for (int64_t bn = 0; bn < NB; ++bn)
    for (int64_t bk = 0; bk < KB; ++bk) {
      float amax = 0.f;
      for (int64_t i = bn * 128; i < std::min(n, (bn + 1) * 128); ++i)
        for (int64_t j = bk * 128; j < std::min(k, (bk + 1) * 128); ++j) amax = std::max(amax, std::fabs(w[i * k + j]));
      const float s = pow2_ceil(std::max(amax, 1e-12f) / kE4m3Max);
      scales[bn * KB + bk] = s;
      for (int64_t i = bn * 128; i < std::min(n, (bn + 1) * 128); ++i)
        for (int64_t j = bk * 128; j < std::min(k, (bk + 1) * 128); ++j)
          q[i * k + j] = f32_to_e4m3(std::clamp(w[i * k + j] / s, -kE4m3Max, kE4m3Max));
    }
}

namespace {

// A model is described first (Gen records one Job per tensor, in checkpoint order) and filled
// afterwards in parallel over 128-row blocks. Every block draws from its own generator seeded by
// (seed, tensor, block), so the files are the same for a seed whatever the thread count — and a
// 5 GB real-scale model takes seconds on a many-core machine instead of minutes.
struct Job {
  enum Kind { kBf16, kF32, kFp8 } kind;
  size_t out;  // index of the (first) output tensor
  int64_t n, k;
  float std, mean;
};

struct Gen {
  uint64_t seed;
  std::vector<NamedTensor> out;
  std::vector<Job> jobs;

  void bf16(const std::string& name, Shape s, float std, float mean = 0.f) {
    jobs.push_back({Job::kBf16, out.size(), s[0], s.numel() / s[0], std, mean});
    out.push_back({name, host_tensor(DType::BF16, s)});
  }
  void f32(const std::string& name, Shape s, float std) {
    jobs.push_back({Job::kF32, out.size(), s[0], s.numel() / s[0], std, 0.f});
    out.push_back({name, host_tensor(DType::F32, s)});
  }
  // FP8 linear [n, k] with init std gain/sqrt(k) (keeps activations O(1) through the stack).
  void fp8(const std::string& prefix, int64_t n, int64_t k, float gain = 1.0f) {
    jobs.push_back({Job::kFp8, out.size(), n, k, gain / std::sqrt(float(k)), 0.f});
    out.push_back({prefix + ".weight", host_tensor(DType::E4M3, {n, k})});
    out.push_back({prefix + ".weight_scale_inv", host_tensor(DType::F32, {(n + 127) / 128, (k + 127) / 128})});
  }
  void mlp(const std::string& p, int64_t D, int64_t I) {
    fp8(p + ".gate_proj", I, D);
    fp8(p + ".up_proj", I, D);
    fp8(p + ".down_proj", D, I, 0.5f);
  }

  static uint64_t mix(uint64_t x) {  // splitmix64 finaliser
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  // Rows [128 b, 128 b + 128) of job j.
  void fill_block(size_t j, int64_t b) {
    const Job& jb = jobs[j];
    const int64_t r0 = b * 128, r1 = std::min(jb.n, r0 + 128), cnt = (r1 - r0) * jb.k;
    std::mt19937_64 rng(mix(seed ^ mix(uint64_t(j) * 0x100000001b3ull + uint64_t(b))));
    std::normal_distribution<float> d(0.f, jb.std);
    std::vector<float> v(static_cast<size_t>(cnt));
    for (auto& x : v) x = d(rng) + jb.mean;
    Tensor& t = out[jb.out].tensor;
    if (jb.kind == Job::kBf16) {
      for (int64_t i = 0; i < cnt; ++i) t.ptr<uint16_t>()[r0 * jb.k + i] = f32_to_bf16(v[size_t(i)]);
    } else if (jb.kind == Job::kF32) {
      std::copy(v.begin(), v.end(), t.ptr<float>() + r0 * jb.k);
    } else {  // one 128-row band of 128x128 blocks: codes and that band's scale row
      quantize_fp8_blocks(v.data(), r1 - r0, jb.k, t.ptr<uint8_t>() + r0 * jb.k,
                          out[jb.out + 1].tensor.ptr<float>() + b * ((jb.k + 127) / 128));
    }
  }
  std::vector<NamedTensor> fill() {
    std::vector<std::pair<size_t, int64_t>> blocks;
    for (size_t j = 0; j < jobs.size(); ++j)
      for (int64_t b = 0; b * 128 < jobs[j].n; ++b) blocks.push_back({j, b});
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < blocks.size(); ++i) fill_block(blocks[i].first, blocks[i].second);
    return std::move(out);
  }
};

}  // namespace

std::vector<NamedTensor> random_model_tensors(const ModelConfig& c, uint64_t seed) {
  Gen g{seed, {}, {}};
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  g.bf16("model.embed_tokens.weight", {c.vocab_size, D}, 1.0f);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    g.bf16(p + ".input_layernorm.weight", {D}, 0.02f, 1.0f);
    g.bf16(p + ".post_attention_layernorm.weight", {D}, 0.02f, 1.0f);
    const std::string a = p + ".self_attn";
    g.fp8(a + ".q_a_proj", c.q_lora_rank, D);
    g.bf16(a + ".q_a_layernorm.weight", {c.q_lora_rank}, 0.02f, 1.0f);
    g.fp8(a + ".q_b_proj", H * c.qk_head_dim(), c.q_lora_rank);
    g.fp8(a + ".kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, D);
    g.bf16(a + ".kv_a_layernorm.weight", {c.kv_lora_rank}, 0.02f, 1.0f);
    g.fp8(a + ".kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    g.fp8(a + ".o_proj", D, H * c.v_head_dim, 0.5f);
    const std::string ix = a + ".indexer";
    g.fp8(ix + ".wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank);
    g.fp8(ix + ".wk", c.index_head_dim, D);
    g.bf16(ix + ".k_norm.weight", {c.index_head_dim}, 0.02f, 1.0f);
    g.bf16(ix + ".k_norm.bias", {c.index_head_dim}, 0.02f);
    g.bf16(ix + ".weights_proj.weight", {c.index_n_heads, D}, 1.0f / std::sqrt(float(D)));
    const std::string f = p + ".mlp";
    if (!c.is_moe_layer(l)) {
      g.mlp(f, D, c.intermediate_size);
    } else {
      g.bf16(f + ".gate.weight", {c.n_routed_experts, D}, 1.0f / std::sqrt(float(D)));
      g.f32(f + ".gate.e_score_correction_bias", {c.n_routed_experts}, 0.01f);
      for (int64_t e = 0; e < c.n_routed_experts; ++e) g.mlp(f + ".experts." + std::to_string(e), D, c.moe_intermediate_size);
      if (c.n_shared_experts > 0) g.mlp(f + ".shared_experts", D, c.n_shared_experts * c.moe_intermediate_size);
    }
  }
  g.bf16("model.norm.weight", {D}, 0.02f, 1.0f);
  g.bf16("lm_head.weight", {c.vocab_size, D}, 1.0f / std::sqrt(float(D)));
  return g.fill();
}

void write_random_model(const std::string& dir, const ModelConfig& cfg, uint64_t seed, size_t max_shard_bytes) {
  cfg.validate("make-model");
  std::filesystem::create_directories(dir);
  {
    std::ofstream f(dir + "/config.json");
    DSA_CHECK(f.good(), dir, "/config.json: cannot write");
    f << cfg.to_json().dump(2) << "\n";
  }
  write_sharded_checkpoint(dir, random_model_tensors(cfg, seed), max_shard_bytes);
}

}  // namespace dsa

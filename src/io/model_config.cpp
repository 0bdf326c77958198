#include "io/model_config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsa {

using json = nlohmann::json;

namespace {

std::string show(const json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array() && v.size() > 8) return "an array of " + std::to_string(v.size()) + " elements";
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 80) + "...";
  return s;
}

// Typed access to one JSON object, with errors "<what>: field '<prefix><key>': ...".
struct Fields {
  const json& j;
  const std::string& what;
  std::string prefix;  // "" or "rope_scaling." etc.

  const json* find(const char* key) const {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  [[noreturn]] void bad(const char* key, const std::string& expected, const json& found) const {
    fail(what, ": field '", prefix, key, "': expected ", expected, ", found ", show(found));
  }
  [[noreturn]] void missing(const char* key) const {
    fail(what, ": missing required field '", prefix, key, "'");
  }
  const json& need(const char* key) const {
    const json* v = find(key);
    if (!v) missing(key);
    return *v;
  }
  int64_t to_int(const char* key, const json& v) const {
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) bad(key, "an integer that fits in 64 bits", v);
      return int64_t(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    bad(key, "an integer", v);
  }
  double to_double(const char* key, const json& v) const {
    if (!v.is_number()) bad(key, "a number", v);
    double d = v.get<double>();
    if (!std::isfinite(d)) bad(key, "a finite number", v);
    return d;
  }
  int64_t req_int(const char* key) const { return to_int(key, need(key)); }
  void opt_int(const char* key, int64_t* out) const {
    const json* v = find(key);
    if (v && !v->is_null()) *out = to_int(key, *v);
  }
  double req_double(const char* key) const { return to_double(key, need(key)); }
  void opt_double(const char* key, double* out) const {
    const json* v = find(key);
    if (v && !v->is_null()) *out = to_double(key, *v);
  }
  void opt_bool(const char* key, bool* out) const {
    const json* v = find(key);
    if (!v || v->is_null()) return;
    if (!v->is_boolean()) bad(key, "true or false", *v);
    *out = v->get<bool>();
  }
  std::string req_string(const char* key) const {
    const json& v = need(key);
    if (!v.is_string()) bad(key, "a string", v);
    return v.get<std::string>();
  }
  void opt_string(const char* key, std::string* out) const {
    const json* v = find(key);
    if (!v || v->is_null()) return;
    if (!v->is_string()) bad(key, "a string", *v);
    *out = v->get<std::string>();
  }
};

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& what) {
  if (!j.is_object()) fail(what, ": expected a JSON object, found ", show(j));
  Fields f{j, what, ""};
  ModelConfig c;

  // Identity: model_type deepseek_v32 and/or architectures [DeepseekV32ForCausalLM].
  const json* mt = f.find("model_type");
  const json* arch = f.find("architectures");
  if (!mt && !arch) f.missing("model_type");
  if (mt) {
    if (!mt->is_string()) f.bad("model_type", "\"deepseek_v32\"", *mt);
    c.model_type = mt->get<std::string>();
  }
  if (arch && !arch->is_null()) {
    bool ok = false;
    if (!arch->is_array()) f.bad("architectures", "[\"DeepseekV32ForCausalLM\"]", *arch);
    for (const auto& a : *arch) {
      if (!a.is_string()) f.bad("architectures", "an array of strings", *arch);
      if (a.get<std::string>() == "DeepseekV32ForCausalLM") ok = true;
    }
    if (!ok)
      fail(what, ": field 'architectures': expected [\"DeepseekV32ForCausalLM\"], found ", show(*arch),
           " (only DeepSeek-V3.2 models are supported)");
  }

  c.vocab_size = f.req_int("vocab_size");
  c.hidden_size = f.req_int("hidden_size");
  c.intermediate_size = f.req_int("intermediate_size");
  c.moe_intermediate_size = f.req_int("moe_intermediate_size");
  c.num_hidden_layers = f.req_int("num_hidden_layers");
  c.first_k_dense_replace = f.req_int("first_k_dense_replace");
  f.opt_int("moe_layer_freq", &c.moe_layer_freq);
  c.num_attention_heads = f.req_int("num_attention_heads");
  {
    const json& q = f.need("q_lora_rank");
    if (q.is_null())
      fail(what, ": field 'q_lora_rank' is null (no low-rank query projection): not supported; "
                 "DeepSeek-V3.2 uses q_lora_rank 1536");
    c.q_lora_rank = f.to_int("q_lora_rank", q);
  }
  c.kv_lora_rank = f.req_int("kv_lora_rank");
  c.qk_nope_head_dim = f.req_int("qk_nope_head_dim");
  c.qk_rope_head_dim = f.req_int("qk_rope_head_dim");
  c.v_head_dim = f.req_int("v_head_dim");
  c.n_routed_experts = f.req_int("n_routed_experts");
  {
    const json& s = f.need("n_shared_experts");
    c.n_shared_experts = s.is_null() ? 0 : f.to_int("n_shared_experts", s);
  }
  c.num_experts_per_tok = f.req_int("num_experts_per_tok");
  c.n_group = f.req_int("n_group");
  c.topk_group = f.req_int("topk_group");
  f.opt_string("scoring_func", &c.scoring_func);
  f.opt_string("topk_method", &c.topk_method);
  f.opt_bool("norm_topk_prob", &c.norm_topk_prob);
  c.routed_scaling_factor = f.req_double("routed_scaling_factor");
  c.index_n_heads = f.req_int("index_n_heads");
  c.index_head_dim = f.req_int("index_head_dim");
  c.index_topk = f.req_int("index_topk");
  c.max_position_embeddings = f.req_int("max_position_embeddings");
  f.opt_double("rope_theta", &c.rope_theta);
  f.opt_double("rms_norm_eps", &c.rms_norm_eps);
  f.opt_int("bos_token_id", &c.bos_token_id);
  f.opt_int("eos_token_id", &c.eos_token_id);
  f.opt_bool("tie_word_embeddings", &c.tie_word_embeddings);
  f.opt_int("num_nextn_predict_layers", &c.num_nextn_predict_layers);

  // Fields the engine does not store but whose other values it cannot run.
  {
    std::string act = "silu";
    f.opt_string("hidden_act", &act);
    if (act != "silu") fail(what, ": field 'hidden_act': expected \"silu\", found \"", act, "\" (not supported)");
    bool bias = false;
    f.opt_bool("attention_bias", &bias);
    if (bias) fail(what, ": field 'attention_bias': expected false, found true (not supported)");
  }

  if (const json* rs = f.find("rope_scaling"); rs && !rs->is_null()) {
    if (!rs->is_object()) f.bad("rope_scaling", "an object or null", *rs);
    Fields r{*rs, what, "rope_scaling."};
    RopeScaling s;
    if (r.find("type")) s.type = r.req_string("type");
    else if (r.find("rope_type")) s.type = r.req_string("rope_type");
    else r.missing("type");
    if (s.type != "yarn")
      fail(what, ": field 'rope_scaling.type': unsupported rope_scaling type \"", s.type,
           "\" (only \"yarn\" is supported)");
    s.factor = r.req_double("factor");
    s.original_max_position_embeddings = r.req_int("original_max_position_embeddings");
    r.opt_double("beta_fast", &s.beta_fast);
    r.opt_double("beta_slow", &s.beta_slow);
    r.opt_double("mscale", &s.mscale);
    r.opt_double("mscale_all_dim", &s.mscale_all_dim);
    c.rope_scaling = s;
  }

  if (const json* qc = f.find("quantization_config"); qc && !qc->is_null()) {
    if (!qc->is_object()) f.bad("quantization_config", "an object", *qc);
    Fields q{*qc, what, "quantization_config."};
    std::string method = q.req_string("quant_method");
    if (method != "fp8")
      fail(what, ": field 'quantization_config.quant_method': expected \"fp8\", found \"", method,
           "\" (not supported)");
    c.fp8 = true;
    std::string fmt = "e4m3";
    q.opt_string("fmt", &fmt);
    if (fmt != "e4m3")
      fail(what, ": field 'quantization_config.fmt': expected \"e4m3\", found \"", fmt, "\" (not supported)");
    std::string act = "dynamic";
    q.opt_string("activation_scheme", &act);
    if (act != "dynamic")
      fail(what, ": field 'quantization_config.activation_scheme': expected \"dynamic\", found \"", act,
           "\" (not supported)");
    c.scale_fmt = q.req_string("scale_fmt");
    const json& wb = q.need("weight_block_size");
    if (!wb.is_array() || wb.size() != 2) q.bad("weight_block_size", "[128, 128]", wb);
    c.weight_block_n = q.to_int("weight_block_size", wb[0]);
    c.weight_block_k = q.to_int("weight_block_size", wb[1]);
  }

  c.validate(what);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open config file: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path, ": read error");
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

json ModelConfig::to_json() const {
  json j = {
      {"architectures", {"DeepseekV32ForCausalLM"}},
      {"model_type", model_type},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"moe_intermediate_size", moe_intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"first_k_dense_replace", first_k_dense_replace},
      {"moe_layer_freq", moe_layer_freq},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_attention_heads},
      {"q_lora_rank", q_lora_rank},
      {"kv_lora_rank", kv_lora_rank},
      {"qk_nope_head_dim", qk_nope_head_dim},
      {"qk_rope_head_dim", qk_rope_head_dim},
      {"v_head_dim", v_head_dim},
      {"n_routed_experts", n_routed_experts},
      {"n_shared_experts", n_shared_experts},
      {"num_experts_per_tok", num_experts_per_tok},
      {"n_group", n_group},
      {"topk_group", topk_group},
      {"scoring_func", scoring_func},
      {"topk_method", topk_method},
      {"norm_topk_prob", norm_topk_prob},
      {"routed_scaling_factor", routed_scaling_factor},
      {"index_n_heads", index_n_heads},
      {"index_head_dim", index_head_dim},
      {"index_topk", index_topk},
      {"max_position_embeddings", max_position_embeddings},
      {"rope_theta", rope_theta},
      {"rms_norm_eps", rms_norm_eps},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"tie_word_embeddings", tie_word_embeddings},
      {"num_nextn_predict_layers", num_nextn_predict_layers},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"ep_size", 1},
      {"torch_dtype", "bfloat16"},
  };
  if (rope_scaling) {
    const RopeScaling& s = *rope_scaling;
    j["rope_scaling"] = {{"type", s.type},
                         {"factor", s.factor},
                         {"original_max_position_embeddings", s.original_max_position_embeddings},
                         {"beta_fast", s.beta_fast},
                         {"beta_slow", s.beta_slow},
                         {"mscale", s.mscale},
                         {"mscale_all_dim", s.mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (fp8) {
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"scale_fmt", scale_fmt},
                                {"weight_block_size", {weight_block_n, weight_block_k}}};
  }
  return j;
}

void ModelConfig::validate(const std::string& what) const {
  auto bad = [&](const char* field, auto&&... args) {
    fail(what, ": field '", field, "': ", std::forward<decltype(args)>(args)...);
  };
  if (model_type != "deepseek_v32")
    bad("model_type", "expected \"deepseek_v32\", found \"", model_type, "\" (only DeepSeek-V3.2 is supported)");

#define DSA_POSITIVE(f) \
  if (f <= 0) bad(#f, "expected a positive integer, found ", f)
  DSA_POSITIVE(vocab_size);
  DSA_POSITIVE(hidden_size);
  DSA_POSITIVE(intermediate_size);
  DSA_POSITIVE(num_hidden_layers);
  DSA_POSITIVE(moe_layer_freq);
  DSA_POSITIVE(num_attention_heads);
  DSA_POSITIVE(q_lora_rank);
  DSA_POSITIVE(kv_lora_rank);
  DSA_POSITIVE(qk_nope_head_dim);
  DSA_POSITIVE(qk_rope_head_dim);
  DSA_POSITIVE(v_head_dim);
  DSA_POSITIVE(n_group);
  DSA_POSITIVE(topk_group);
  DSA_POSITIVE(index_n_heads);
  DSA_POSITIVE(index_head_dim);
  DSA_POSITIVE(index_topk);
  DSA_POSITIVE(max_position_embeddings);
#undef DSA_POSITIVE
  // Upper bounds far above any real model (V3.2: 7168 hidden, 128 heads, 61 layers, 163840 context):
  // beyond them a size is a typo, and products of sizes could overflow.
#define DSA_AT_MOST(f, hi) \
  if (f > (hi)) bad(#f, f, " is larger than the ", int64_t(hi), " this engine supports")
  DSA_AT_MOST(vocab_size, int64_t(1) << 22);
  DSA_AT_MOST(hidden_size, int64_t(1) << 18);
  DSA_AT_MOST(intermediate_size, int64_t(1) << 20);
  DSA_AT_MOST(moe_intermediate_size, int64_t(1) << 20);
  DSA_AT_MOST(num_hidden_layers, 4096);
  DSA_AT_MOST(num_nextn_predict_layers, 64);
  DSA_AT_MOST(moe_layer_freq, 4096);
  DSA_AT_MOST(num_attention_heads, 4096);
  DSA_AT_MOST(q_lora_rank, int64_t(1) << 18);
  DSA_AT_MOST(kv_lora_rank, int64_t(1) << 18);
  DSA_AT_MOST(qk_nope_head_dim, 4096);
  DSA_AT_MOST(qk_rope_head_dim, 4096);
  DSA_AT_MOST(v_head_dim, 4096);
  DSA_AT_MOST(n_routed_experts, 65536);
  DSA_AT_MOST(n_shared_experts, 1024);
  DSA_AT_MOST(num_experts_per_tok, 65536);
  DSA_AT_MOST(n_group, 65536);
  DSA_AT_MOST(topk_group, 65536);
  DSA_AT_MOST(index_n_heads, 4096);
  DSA_AT_MOST(index_head_dim, 4096);
  DSA_AT_MOST(max_position_embeddings, int64_t(1) << 24);
  DSA_AT_MOST(index_topk, int64_t(1) << 24);
#undef DSA_AT_MOST
#define DSA_NONNEG(f) \
  if (f < 0) bad(#f, "expected a non-negative integer, found ", f)
  DSA_NONNEG(n_routed_experts);
  DSA_NONNEG(n_shared_experts);
  DSA_NONNEG(num_nextn_predict_layers);
  DSA_NONNEG(first_k_dense_replace);
#undef DSA_NONNEG

  if (first_k_dense_replace > num_hidden_layers)
    bad("first_k_dense_replace", first_k_dense_replace, " exceeds num_hidden_layers (", num_hidden_layers, ")");
  if (bos_token_id < 0 || bos_token_id >= vocab_size)
    bad("bos_token_id", bos_token_id, " is outside the vocabulary [0, ", vocab_size, ")");
  if (eos_token_id < 0 || eos_token_id >= vocab_size)
    bad("eos_token_id", eos_token_id, " is outside the vocabulary [0, ", vocab_size, ")");

  // FP8 block quantisation: every Linear's input width is quantised in 1x128 groups.
  auto mult128 = [&](const char* field, int64_t v) {
    if (v % 128 != 0) bad(field, "expected a multiple of 128 (FP8 block size), found ", v);
  };
  mult128("hidden_size", hidden_size);
  mult128("intermediate_size", intermediate_size);
  mult128("q_lora_rank", q_lora_rank);
  mult128("kv_lora_rank", kv_lora_rank);
  if ((num_attention_heads * v_head_dim) % 128 != 0)
    bad("v_head_dim", "num_attention_heads * v_head_dim (", num_attention_heads * v_head_dim,
        ") must be a multiple of 128");
  if (qk_rope_head_dim % 2 != 0) bad("qk_rope_head_dim", "expected an even number, found ", qk_rope_head_dim);
  if (index_head_dim % 128 != 0 || (index_head_dim & (index_head_dim - 1)) != 0)
    bad("index_head_dim", "expected a power of two that is a multiple of 128 (Hadamard transform, FP8 "
        "blocks), found ", index_head_dim);
  if (qk_rope_head_dim >= index_head_dim)
    bad("qk_rope_head_dim", qk_rope_head_dim, " must be smaller than index_head_dim (", index_head_dim, ")");

  // MoE routing.
  if (n_routed_experts > 0) {
    if (moe_intermediate_size <= 0)
      bad("moe_intermediate_size", "expected a positive integer, found ", moe_intermediate_size);
    mult128("moe_intermediate_size", moe_intermediate_size);
    if (num_experts_per_tok <= 0)
      bad("num_experts_per_tok", "expected a positive integer, found ", num_experts_per_tok);
    if (num_experts_per_tok > n_routed_experts)
      bad("num_experts_per_tok", num_experts_per_tok, " exceeds n_routed_experts (", n_routed_experts, ")");
    if (n_routed_experts % n_group != 0)
      bad("n_group", "n_routed_experts (", n_routed_experts, ") is not divisible by n_group (", n_group, ")");
    if (topk_group > n_group) bad("topk_group", topk_group, " exceeds n_group (", n_group, ")");
    const int64_t per_group = n_routed_experts / n_group;
    if (n_group > 1 && per_group < 2)
      bad("n_group", "each group needs at least 2 experts (group score = sum of its top-2), found ",
          per_group, " (n_routed_experts ", n_routed_experts, " / n_group ", n_group, ")");
    if (num_experts_per_tok > topk_group * per_group)
      bad("num_experts_per_tok", num_experts_per_tok, " exceeds the experts available in topk_group (",
          topk_group, ") groups of ", per_group);
  }
  if (scoring_func != "sigmoid")
    bad("scoring_func", "expected \"sigmoid\", found \"", scoring_func, "\" (not supported)");
  if (topk_method != "noaux_tc")
    bad("topk_method", "expected \"noaux_tc\", found \"", topk_method, "\" (not supported)");
  if (!(routed_scaling_factor > 0) || !std::isfinite(routed_scaling_factor))
    bad("routed_scaling_factor", "expected a positive number, found ", routed_scaling_factor);
  if (!(rope_theta > 0) || !std::isfinite(rope_theta))
    bad("rope_theta", "expected a positive number, found ", rope_theta);
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
    bad("rms_norm_eps", "expected a positive number, found ", rms_norm_eps);

  if (rope_scaling) {
    const RopeScaling& s = *rope_scaling;
    if (s.type != "yarn")
      bad("rope_scaling.type", "unsupported rope_scaling type \"", s.type, "\" (only \"yarn\" is supported)");
    if (!(s.factor >= 1) || !std::isfinite(s.factor))
      bad("rope_scaling.factor", "expected a number >= 1, found ", s.factor);
    if (s.original_max_position_embeddings <= 0)
      bad("rope_scaling.original_max_position_embeddings", "expected a positive integer, found ",
          s.original_max_position_embeddings);
    if (!(s.beta_fast > 0) || !std::isfinite(s.beta_fast))
      bad("rope_scaling.beta_fast", "expected a positive number, found ", s.beta_fast);
    if (!(s.beta_slow > 0) || !std::isfinite(s.beta_slow))
      bad("rope_scaling.beta_slow", "expected a positive number, found ", s.beta_slow);
    if (!std::isfinite(s.mscale) || !std::isfinite(s.mscale_all_dim))
      bad("rope_scaling.mscale", "expected finite numbers, found ", s.mscale, " and ", s.mscale_all_dim);
  }

  if (!fp8)
    bad("quantization_config", "missing: only FP8 (e4m3, 128x128 block) checkpoints are supported");
  if (weight_block_n != 128 || weight_block_k != 128)
    bad("quantization_config.weight_block_size", "expected [128, 128], found [", weight_block_n, ", ",
        weight_block_k, "]");
  if (scale_fmt != "ue8m0")
    bad("quantization_config.scale_fmt", "expected \"ue8m0\", found \"", scale_fmt, "\" (not supported)");
}

bool ModelConfig::yarn_active() const {
  return rope_scaling && rope_scaling->type == "yarn" &&
         max_position_embeddings > rope_scaling->original_max_position_embeddings;
}

double ModelConfig::yarn_mscale() const {
  if (!yarn_active()) return 1.0;
  return 0.1 * rope_scaling->mscale * std::log(rope_scaling->factor) + 1.0;
}

double ModelConfig::mla_softmax_scale() const {
  const double m = yarn_mscale();
  return 1.0 / std::sqrt(double(qk_head_dim())) * m * m;
}

}  // namespace dsa

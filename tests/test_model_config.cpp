// ModelConfig: dsa-mini's config.json, the 671B config, derived constants, and every error case.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"

#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {


// dsa-mini's config.json, inlined so the error tests do not depend on the shared folder.
const char* kMini = R"({
  "architectures": ["DeepseekV32ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 1, "hidden_act": "silu",
  "hidden_size": 384, "index_head_dim": 128, "index_n_heads": 64, "index_topk": 256,
  "initializer_range": 0.02, "intermediate_size": 1536, "kv_lora_rank": 512,
  "max_position_embeddings": 8192, "model_type": "deepseek_v32", "moe_intermediate_size": 128,
  "moe_layer_freq": 1, "n_group": 4, "n_routed_experts": 8, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 16, "num_experts_per_tok": 2, "num_hidden_layers": 6,
  "num_key_value_heads": 16, "num_nextn_predict_layers": 0, "q_lora_rank": 128,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 2048, "type": "yarn"},
  "rope_theta": 10000.0, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
  "tie_word_embeddings": false, "topk_group": 2, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
  "transformers_version": "4.44.2", "use_cache": true, "v_head_dim": 128, "vocab_size": 8192
})";

// architecture.md §1.2 (DeepSeek-V3.2-Exp, 671B).
json config_671b() {
  json j = json::parse(kMini);
  j.update(json{{"hidden_size", 7168}, {"intermediate_size", 18432}, {"moe_intermediate_size", 2048},
                {"num_hidden_layers", 61}, {"first_k_dense_replace", 3}, {"num_attention_heads", 128},
                {"num_key_value_heads", 128}, {"q_lora_rank", 1536}, {"n_routed_experts", 256},
                {"num_experts_per_tok", 8}, {"n_group", 8}, {"topk_group", 4}, {"index_topk", 2048},
                {"max_position_embeddings", 163840}, {"vocab_size", 129280}, {"num_nextn_predict_layers", 1}});
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                       {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  return j;
}

class ModelConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("dsa_cfg_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                                        "_" + std::to_string(::getpid()) + "_" + std::to_string(rd() % 1000000));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) {
    std::string p = (dir_ / name).string();
    std::ofstream(p) << text;
    return p;
  }
  // Write dsa-mini's config with one edit applied to <name>.json and load it.
  dsa::ModelConfig load_edited(const std::string& name, const std::function<void(json&)>& edit) {
    json j = json::parse(kMini);
    edit(j);
    return dsa::ModelConfig::from_file(write(name + ".json", j.dump(2)));
  }
  fs::path dir_;
};

}  // namespace

TEST_F(ModelConfig, DsaMiniValues) {
  const std::string path = std::string(DSA_SHARED_DIR) + "/models/dsa-mini/config.json";
  dsa::ModelConfig c = fs::exists(path) ? dsa::ModelConfig::from_file(path)
                                        : dsa::ModelConfig::from_json(json::parse(kMini), "mini");
  EXPECT_EQ(c.model_type, "deepseek_v32");
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.moe_intermediate_size, 128);
  EXPECT_EQ(c.num_hidden_layers, 6);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.q_lora_rank, 128);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.n_routed_experts, 8);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.index_n_heads, 64);
  EXPECT_EQ(c.index_head_dim, 128);
  EXPECT_EQ(c.index_topk, 256);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling->factor, 4.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rope_scaling->beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling->mscale_all_dim, 1.0);
  EXPECT_TRUE(c.fp8);
  EXPECT_EQ(c.weight_block_n, 128);
  EXPECT_EQ(c.weight_block_k, 128);
  EXPECT_EQ(c.scale_fmt, "ue8m0");
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(5));
}

TEST_F(ModelConfig, SoftmaxScale) {
  auto mini = dsa::ModelConfig::from_json(json::parse(kMini), "mini");
  EXPECT_TRUE(mini.yarn_active());
  EXPECT_NEAR(mini.yarn_mscale(), 0.1 * std::log(4.0) + 1, 1e-15);
  EXPECT_NEAR(mini.mla_softmax_scale(), 0.0935652, 5e-8);
  EXPECT_NEAR(mini.mla_softmax_scale(), std::pow(192.0, -0.5) * std::pow(0.1 * std::log(4.0) + 1, 2), 1e-15);

  auto big = dsa::ModelConfig::from_json(config_671b(), "671b");
  EXPECT_TRUE(big.yarn_active());
  EXPECT_NEAR(big.yarn_mscale(), 1.3688879, 1e-7);
  EXPECT_NEAR(big.mla_softmax_scale(), 0.135234, 5e-7);
  EXPECT_NEAR(big.mla_softmax_scale(), 0.13523378, 1e-8);
  EXPECT_TRUE(big.is_moe_layer(3));
  EXPECT_FALSE(big.is_moe_layer(2));

  // YaRN is off when max_position_embeddings <= original, or without rope_scaling.
  json j = json::parse(kMini);
  j["max_position_embeddings"] = 2048;
  auto off = dsa::ModelConfig::from_json(j, "x");
  EXPECT_FALSE(off.yarn_active());
  EXPECT_EQ(off.yarn_mscale(), 1.0);
  EXPECT_NEAR(off.mla_softmax_scale(), std::pow(192.0, -0.5), 1e-15);
  j["rope_scaling"] = nullptr;
  EXPECT_FALSE(dsa::ModelConfig::from_json(j, "x").rope_scaling.has_value());
  j.erase("rope_scaling");
  auto none = dsa::ModelConfig::from_json(j, "x");
  EXPECT_FALSE(none.yarn_active());
  EXPECT_NEAR(none.mla_softmax_scale(), 0.07216878, 1e-8);
  // mscale_all_dim plays no part (the demo has no counterpart).
  j = json::parse(kMini);
  j["rope_scaling"]["mscale_all_dim"] = 0.7;
  EXPECT_EQ(dsa::ModelConfig::from_json(j, "x").mla_softmax_scale(), mini.mla_softmax_scale());
}

TEST_F(ModelConfig, RoundTripsThroughJson) {
  for (const json& src : {json::parse(kMini), config_671b()}) {
    auto a = dsa::ModelConfig::from_json(src, "a");
    json out = a.to_json();
    auto b = dsa::ModelConfig::from_json(out, "b");
    EXPECT_EQ(b.to_json(), out);
    EXPECT_EQ(out["architectures"], json({"DeepseekV32ForCausalLM"}));
    EXPECT_EQ(out["quantization_config"]["weight_block_size"], json({128, 128}));
    EXPECT_EQ(b.mla_softmax_scale(), a.mla_softmax_scale());
    // Every field from the source config that the engine keeps comes back with the same value.
    for (auto& [k, v] : out.items())
      if (src.contains(k) && k != "rope_scaling" && k != "quantization_config") EXPECT_EQ(src[k], v) << k;
  }
  json j = json::parse(kMini);
  j.erase("rope_scaling");
  auto c = dsa::ModelConfig::from_json(j, "c");
  EXPECT_TRUE(c.to_json()["rope_scaling"].is_null());
  EXPECT_FALSE(dsa::ModelConfig::from_json(c.to_json(), "c").rope_scaling.has_value());
}

TEST_F(ModelConfig, AcceptsVariants) {
  // architectures alone, or model_type alone; rope_type spelling; null n_shared_experts.
  EXPECT_NO_THROW(load_edited("noarch", [](json& j) { j.erase("architectures"); }));
  EXPECT_NO_THROW(load_edited("nomt", [](json& j) { j.erase("model_type"); }));
  EXPECT_NO_THROW(load_edited("ropetype", [](json& j) {
    j["rope_scaling"].erase("type");
    j["rope_scaling"]["rope_type"] = "yarn";
  }));
  EXPECT_EQ(load_edited("nullshared", [](json& j) { j["n_shared_experts"] = nullptr; }).n_shared_experts, 0);
  EXPECT_NO_THROW(load_edited("nofmt", [](json& j) { j["quantization_config"].erase("fmt"); }));
}

TEST_F(ModelConfig, FileErrors) {
  EXPECT_DSA_ERROR(dsa::ModelConfig::from_file((dir_ / "absent.json").string()), "absent.json", "cannot open");
  EXPECT_DSA_ERROR(dsa::ModelConfig::from_file(write("bad.json", "{\"hidden_size\": ")), "bad.json", "not valid JSON");
  EXPECT_DSA_ERROR(dsa::ModelConfig::from_file(write("arr.json", "[1]")), "arr.json", "expected a JSON object");
}

TEST_F(ModelConfig, MissingRequiredFields) {
  for (const char* f : {"vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                        "num_hidden_layers", "first_k_dense_replace", "num_attention_heads", "q_lora_rank",
                        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                        "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor",
                        "index_n_heads", "index_head_dim", "index_topk", "max_position_embeddings"}) {
    SCOPED_TRACE(f);
    std::string name = std::string("missing_") + f;
    EXPECT_DSA_ERROR(load_edited(name, [&](json& j) { j.erase(f); }), name + ".json",
                     std::string("missing required field '") + f + "'");
  }
  EXPECT_DSA_ERROR(load_edited("noid", [](json& j) { j.erase("model_type"); j.erase("architectures"); }),
                   "noid.json", "'model_type'");
  EXPECT_DSA_ERROR(load_edited("rsfactor", [](json& j) { j["rope_scaling"].erase("factor"); }), "rsfactor.json",
                   "'rope_scaling.factor'");
  EXPECT_DSA_ERROR(load_edited("rsorig", [](json& j) { j["rope_scaling"].erase("original_max_position_embeddings"); }),
                   "rsorig.json", "'rope_scaling.original_max_position_embeddings'");
  EXPECT_DSA_ERROR(load_edited("rstype", [](json& j) { j["rope_scaling"].erase("type"); }), "rstype.json",
                   "'rope_scaling.type'");
  EXPECT_DSA_ERROR(load_edited("qcwbs", [](json& j) { j["quantization_config"].erase("weight_block_size"); }),
                   "qcwbs.json", "'quantization_config.weight_block_size'");
  EXPECT_DSA_ERROR(load_edited("qcmethod", [](json& j) { j["quantization_config"].erase("quant_method"); }),
                   "qcmethod.json", "'quantization_config.quant_method'");
}

TEST_F(ModelConfig, WrongTypes) {
  EXPECT_DSA_ERROR(load_edited("t1", [](json& j) { j["hidden_size"] = "abc"; }), "t1.json", "'hidden_size'",
                   "expected an integer", "\"abc\"");
  EXPECT_DSA_ERROR(load_edited("t2", [](json& j) { j["hidden_size"] = 384.5; }), "t2.json", "'hidden_size'",
                   "expected an integer", "384.5");
  EXPECT_DSA_ERROR(load_edited("t3", [](json& j) { j["num_hidden_layers"] = nullptr; }), "t3.json",
                   "'num_hidden_layers'", "expected an integer", "null");
  EXPECT_DSA_ERROR(load_edited("t4", [](json& j) { j["routed_scaling_factor"] = "2.5"; }), "t4.json",
                   "'routed_scaling_factor'", "expected a number");
  EXPECT_DSA_ERROR(load_edited("t5", [](json& j) { j["norm_topk_prob"] = 1; }), "t5.json", "'norm_topk_prob'",
                   "true or false");
  EXPECT_DSA_ERROR(load_edited("t6", [](json& j) { j["scoring_func"] = 3; }), "t6.json", "'scoring_func'",
                   "expected a string");
  EXPECT_DSA_ERROR(load_edited("t7", [](json& j) { j["rope_scaling"] = "yarn"; }), "t7.json", "'rope_scaling'",
                   "an object or null");
  EXPECT_DSA_ERROR(load_edited("t8", [](json& j) { j["quantization_config"] = 1; }), "t8.json",
                   "'quantization_config'", "an object");
  EXPECT_DSA_ERROR(load_edited("t9", [](json& j) { j["vocab_size"] = 18446744073709551615ull; }), "t9.json",
                   "'vocab_size'", "fits in 64 bits");
  EXPECT_DSA_ERROR(load_edited("t10", [](json& j) { j["rope_scaling"]["factor"] = "4"; }), "t10.json",
                   "'rope_scaling.factor'", "expected a number");
  EXPECT_DSA_ERROR(load_edited("t11", [](json& j) { j["architectures"] = "DeepseekV32ForCausalLM"; }), "t11.json",
                   "'architectures'");
  EXPECT_DSA_ERROR(load_edited("t12", [](json& j) { j["quantization_config"]["weight_block_size"] = {128.0, 128}; }),
                   "t12.json", "'quantization_config.weight_block_size'", "expected an integer");
  EXPECT_DSA_ERROR(dsa::ModelConfig::from_json(json::array(), "arr.json"), "arr.json", "expected a JSON object");
}

TEST_F(ModelConfig, NonPositiveDims) {
  for (const char* f : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "moe_layer_freq",
                        "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                        "v_head_dim", "n_group", "topk_group", "index_n_heads", "index_head_dim", "index_topk",
                        "max_position_embeddings"}) {
    for (int v : {0, -128}) {
      SCOPED_TRACE(std::string(f) + " = " + std::to_string(v));
      EXPECT_DSA_ERROR(load_edited("np", [&](json& j) { j[f] = v; }), "np.json", std::string("'") + f + "'",
                       "positive integer", std::to_string(v));
    }
  }
  for (const char* f : {"n_routed_experts", "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"}) {
    SCOPED_TRACE(f);
    EXPECT_DSA_ERROR(load_edited("neg", [&](json& j) { j[f] = -1; }), "neg.json", std::string("'") + f + "'",
                     "non-negative");
  }
  EXPECT_DSA_ERROR(load_edited("moeint", [](json& j) { j["moe_intermediate_size"] = 0; }), "moeint.json",
                   "'moe_intermediate_size'", "positive");
  EXPECT_DSA_ERROR(load_edited("ept", [](json& j) { j["num_experts_per_tok"] = 0; }), "ept.json",
                   "'num_experts_per_tok'", "positive");
  EXPECT_DSA_ERROR(load_edited("eps", [](json& j) { j["rms_norm_eps"] = 0; }), "eps.json", "'rms_norm_eps'");
  EXPECT_DSA_ERROR(load_edited("theta", [](json& j) { j["rope_theta"] = -1; }), "theta.json", "'rope_theta'");
  EXPECT_DSA_ERROR(load_edited("rsf", [](json& j) { j["routed_scaling_factor"] = 0; }), "rsf.json",
                   "'routed_scaling_factor'");
}

TEST_F(ModelConfig, InconsistentValues) {
  auto edit = [&](const std::string& name, std::function<void(json&)> e, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(name);
    try {
      load_edited(name, e);
      ADD_FAILURE() << name << ": no error";
    } catch (const dsa::Error& err) {
      std::string m = err.what();
      EXPECT_NE(m.find(name + ".json"), std::string::npos) << m;
      for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << m << "\nlacks: " << p;
    }
  };
  edit("ept_gt", [](json& j) { j["num_experts_per_tok"] = 9; }, {"'num_experts_per_tok'", "exceeds n_routed_experts (8)"});
  edit("ngroup", [](json& j) { j["n_group"] = 3; }, {"'n_group'", "not divisible"});
  edit("tkg", [](json& j) { j["topk_group"] = 5; }, {"'topk_group'", "exceeds n_group (4)"});
  edit("pergroup", [](json& j) { j["n_group"] = 8; j["topk_group"] = 2; }, {"'n_group'", "at least 2 experts"});
  edit("avail", [](json& j) { j["num_experts_per_tok"] = 5; j["topk_group"] = 2; }, {"'num_experts_per_tok'", "topk_group"});
  edit("kvl", [](json& j) { j["kv_lora_rank"] = 500; }, {"'kv_lora_rank'", "multiple of 128", "500"});
  edit("ql", [](json& j) { j["q_lora_rank"] = 100; }, {"'q_lora_rank'", "multiple of 128"});
  edit("hid", [](json& j) { j["hidden_size"] = 300; }, {"'hidden_size'", "multiple of 128"});
  edit("inter", [](json& j) { j["intermediate_size"] = 1000; }, {"'intermediate_size'", "multiple of 128"});
  edit("moei", [](json& j) { j["moe_intermediate_size"] = 100; }, {"'moe_intermediate_size'", "multiple of 128"});
  edit("vhd", [](json& j) { j["v_head_dim"] = 12; j["num_attention_heads"] = 3; }, {"'v_head_dim'", "multiple of 128"});
  edit("rope_odd", [](json& j) { j["qk_rope_head_dim"] = 63; }, {"'qk_rope_head_dim'", "even"});
  edit("ihd", [](json& j) { j["index_head_dim"] = 192; }, {"'index_head_dim'", "power of two"});
  edit("rope_big", [](json& j) { j["qk_rope_head_dim"] = 128; }, {"'qk_rope_head_dim'", "index_head_dim"});
  edit("fkd", [](json& j) { j["first_k_dense_replace"] = 7; }, {"'first_k_dense_replace'", "num_hidden_layers (6)"});
  edit("bos", [](json& j) { j["bos_token_id"] = 8192; }, {"'bos_token_id'", "vocabulary"});
  edit("eos", [](json& j) { j["eos_token_id"] = -1; }, {"'eos_token_id'", "vocabulary"});
  edit("yfactor", [](json& j) { j["rope_scaling"]["factor"] = 0.5; }, {"'rope_scaling.factor'", ">= 1"});
  edit("yorig", [](json& j) { j["rope_scaling"]["original_max_position_embeddings"] = 0; },
       {"'rope_scaling.original_max_position_embeddings'", "positive"});
  edit("ybeta", [](json& j) { j["rope_scaling"]["beta_fast"] = 0; }, {"'rope_scaling.beta_fast'"});
}

TEST_F(ModelConfig, UnsupportedSettings) {
  EXPECT_DSA_ERROR(load_edited("qnull", [](json& j) { j["q_lora_rank"] = nullptr; }), "qnull.json", "'q_lora_rank'",
                   "not supported");
  EXPECT_DSA_ERROR(load_edited("rope", [](json& j) { j["rope_scaling"]["type"] = "linear"; }), "rope.json",
                   "'rope_scaling.type'", "unsupported rope_scaling type \"linear\"");
  EXPECT_DSA_ERROR(load_edited("ropedyn", [](json& j) {
                     j["rope_scaling"].erase("type");
                     j["rope_scaling"]["rope_type"] = "dynamic";
                   }),
                   "ropedyn.json", "unsupported rope_scaling type \"dynamic\"");
  EXPECT_DSA_ERROR(load_edited("score", [](json& j) { j["scoring_func"] = "softmax"; }), "score.json",
                   "'scoring_func'", "\"softmax\"", "not supported");
  EXPECT_DSA_ERROR(load_edited("topk", [](json& j) { j["topk_method"] = "greedy"; }), "topk.json", "'topk_method'",
                   "\"greedy\"");
  EXPECT_DSA_ERROR(load_edited("qm", [](json& j) { j["quantization_config"]["quant_method"] = "awq"; }), "qm.json",
                   "'quantization_config.quant_method'", "\"awq\"");
  EXPECT_DSA_ERROR(load_edited("fmt", [](json& j) { j["quantization_config"]["fmt"] = "e5m2"; }), "fmt.json",
                   "'quantization_config.fmt'", "expected \"e4m3\"", "\"e5m2\"");
  EXPECT_DSA_ERROR(load_edited("wbs", [](json& j) { j["quantization_config"]["weight_block_size"] = {64, 128}; }),
                   "wbs.json", "'quantization_config.weight_block_size'", "expected [128, 128]", "[64, 128]");
  EXPECT_DSA_ERROR(load_edited("wbs3", [](json& j) { j["quantization_config"]["weight_block_size"] = {128, 128, 1}; }),
                   "wbs3.json", "'quantization_config.weight_block_size'", "[128, 128]");
  EXPECT_DSA_ERROR(load_edited("sfmt", [](json& j) { j["quantization_config"]["scale_fmt"] = "fp32"; }), "sfmt.json",
                   "'quantization_config.scale_fmt'", "\"ue8m0\"");
  EXPECT_DSA_ERROR(load_edited("act", [](json& j) { j["quantization_config"]["activation_scheme"] = "static"; }),
                   "act.json", "'quantization_config.activation_scheme'");
  EXPECT_DSA_ERROR(load_edited("noqc", [](json& j) { j.erase("quantization_config"); }), "noqc.json",
                   "'quantization_config'", "only FP8");
  EXPECT_DSA_ERROR(load_edited("mt", [](json& j) { j["model_type"] = "deepseek_v3"; }), "mt.json", "'model_type'",
                   "\"deepseek_v32\"", "\"deepseek_v3\"");
  EXPECT_DSA_ERROR(load_edited("arch", [](json& j) { j["architectures"] = {"DeepseekV3ForCausalLM"}; }), "arch.json",
                   "'architectures'", "DeepseekV32ForCausalLM");
  EXPECT_DSA_ERROR(load_edited("hact", [](json& j) { j["hidden_act"] = "gelu"; }), "hact.json", "'hidden_act'",
                   "\"gelu\"");
  EXPECT_DSA_ERROR(load_edited("abias", [](json& j) { j["attention_bias"] = true; }), "abias.json", "'attention_bias'");
}

TEST_F(ModelConfig, ValidateCatchesHandBuiltConfigs) {
  auto c = dsa::ModelConfig::from_json(json::parse(kMini), "mini");
  EXPECT_NO_THROW(c.validate("made"));
  auto d = c;
  d.fp8 = false;
  EXPECT_DSA_ERROR(d.validate("made"), "made", "'quantization_config'");
  d = c;
  d.rope_scaling->type = "ntk";
  EXPECT_DSA_ERROR(d.validate("made"), "made", "'rope_scaling.type'", "\"ntk\"");
  d = c;
  d.weight_block_k = 64;
  EXPECT_DSA_ERROR(d.validate("made"), "made", "weight_block_size", "[128, 64]");
}

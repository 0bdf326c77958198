// dsa make-model: write a random model in the exact HF DeepSeek-V3.2 checkpoint format.
#include <cstdio>
#include <filesystem>

#include "model/random_model.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {
int run(int argc, char** argv) {
  CLI::App app{"Write a random DeepSeek-V3.2-format model (FP8 + block scales, sharded safetensors, config.json)"};
  std::string out, preset = "default", tokenizer_from, config_path;
  uint64_t seed = 1234;
  size_t shard_mb = 64;
  app.add_option("-o,--out", out, "output directory")->required();
  app.add_option("--preset", preset, "default | mini | tiny | v32-real-attn")->capture_default_str();
  app.add_option("--config", config_path, "a config.json to use instead of a preset");
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--shard-mb", shard_mb, "maximum shard size in MiB")->capture_default_str();
  app.add_option("--tokenizer-from", tokenizer_from, "copy tokenizer.json/tokenizer_config.json from this directory");
  if (int rc = dsa::tools::parse(app, argc, argv); rc >= 0) return rc;
  dsa::ModelConfig cfg = config_path.empty() ? dsa::preset_model_config(preset) : dsa::ModelConfig::from_file(config_path);
  dsa::write_random_model(out, cfg, seed, shard_mb << 20);
  if (!tokenizer_from.empty()) {
    namespace fs = std::filesystem;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      fs::path src = fs::path(tokenizer_from) / f;
      DSA_CHECK(fs::exists(src), src.string(), ": not found (--tokenizer-from)");
      fs::copy_file(src, fs::path(out) / f, fs::copy_options::overwrite_existing);
      fs::permissions(fs::path(out) / f, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
    }
  }
  std::printf("wrote %s: preset %s, %ld layers, hidden %ld, %ld heads, index_topk %ld, seed %lu\n", out.c_str(),
              config_path.empty() ? preset.c_str() : config_path.c_str(), long(cfg.num_hidden_layers),
              long(cfg.hidden_size), long(cfg.num_attention_heads), long(cfg.index_topk), (unsigned long)seed);
  return 0;
}
dsa::tools::Register reg("make-model", "write a random model in the HF DeepSeek-V3.2 format", run);
}  // namespace

// dsa make-model: write a random model in the exact HF DeepSeek-V3.2 checkpoint format. The model is
// written to a scratch directory beside --out and renamed into place at the end, so a failure never
// leaves a partial model; an existing --out is replaced only with --force.
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "io/tokenizer.h"
#include "model/random_model.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {
namespace fs = std::filesystem;

int run(int argc, char** argv) {
  CLI::App app{"Write a random DeepSeek-V3.2-format model (FP8 + block scales, sharded safetensors, config.json)"};
  std::string out, preset = "default", tokenizer_from, config_path;
  uint64_t seed = 1234;
  int64_t shard_mb = 64;
  bool force = false;
  app.add_option("-o,--out", out, "output directory")->required();
  app.add_option("--preset", preset, "default | mini | tiny | v32-real-attn")->capture_default_str();
  app.add_option("--config", config_path, "a config.json to use instead of a preset");
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--shard-mb", shard_mb, "maximum shard size in MiB (1 .. 1048576)")->capture_default_str();
  app.add_option("--tokenizer-from", tokenizer_from, "copy tokenizer.json/tokenizer_config.json from this directory");
  app.add_flag("-f,--force", force, "replace --out if it exists");
  if (int rc = dsa::tools::parse(app, argc, argv); rc >= 0) return rc;
  dsa::tools::check_range<int64_t>("--shard-mb", shard_mb, 1, int64_t(1) << 20);
  std::error_code ec;
  const fs::path dst = fs::path(out).lexically_normal();
  if (fs::exists(fs::symlink_status(dst, ec))) {
    DSA_USAGE_CHECK(force, "--out '", out, "' exists: pass --force to replace it");
    DSA_CHECK(fs::is_directory(fs::symlink_status(dst, ec)), "--out '", out, "' exists and is not a directory");
  }
  dsa::ModelConfig cfg = config_path.empty() ? dsa::preset_model_config(preset) : dsa::ModelConfig::from_file(config_path);
  if (!tokenizer_from.empty()) {
    // Every id the tokenizer can produce must have an embedding row.
    const dsa::Tokenizer tok = dsa::Tokenizer::from_dir(tokenizer_from);
    DSA_CHECK(tok.vocab_size() <= cfg.vocab_size, "--tokenizer-from ", tokenizer_from, ": the tokenizer has ids up to ",
              tok.vocab_size() - 1, ", but the model's vocab_size is ", cfg.vocab_size,
              " (use a --config with vocab_size >= ", tok.vocab_size(), ")");
  }
  const fs::path parent = dst.has_parent_path() ? dst.parent_path() : fs::path(".");
  const fs::path tmp = parent / (".tmp-" + dst.filename().string() + "-" + std::to_string(::getpid()));
  try {
    dsa::write_random_model(tmp.string(), cfg, seed, size_t(shard_mb) << 20);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      if (tokenizer_from.empty()) break;
      fs::path src = fs::path(tokenizer_from) / f;
      DSA_CHECK(fs::exists(src), src.string(), ": not found (--tokenizer-from)");
      fs::copy_file(src, tmp / f, fs::copy_options::overwrite_existing);
      fs::permissions(tmp / f, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
    }
    if (fs::exists(fs::symlink_status(dst, ec))) fs::remove_all(dst);
    fs::rename(tmp, dst);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  std::printf("wrote %s: preset %s, %ld layers, hidden %ld, %ld heads, index_topk %ld, seed %lu\n", out.c_str(),
              config_path.empty() ? preset.c_str() : config_path.c_str(), long(cfg.num_hidden_layers),
              long(cfg.hidden_size), long(cfg.num_attention_heads), long(cfg.index_topk), (unsigned long)seed);
  return 0;
}
dsa::tools::Register reg("make-model", "write a random model in the HF DeepSeek-V3.2 format", run);
}  // namespace

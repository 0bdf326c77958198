#include "tools/common.h"

#include <cstdio>
#include <filesystem>
#include <sstream>

namespace dsa::tools {

void EngineFlags::add(CLI::App& app) {
  app.add_option("-m,--model", model, "model directory (config.json, safetensors, tokenizer.json)")->required();
  app.add_option("--device", device, "cpu or cuda")->capture_default_str();
  app.add_option("-t,--threads", threads, "CPU threads (0: all cores)");
  app.add_option("--kv-tokens", kv_tokens, "KV pool capacity in tokens (default: --kv-memory, else the model's context)");
  app.add_option("--kv-memory", kv_memory,
                 "KV pool size: bytes (8G, 512M) or a share of the memory free after loading the weights (90%)");
  app.add_option("--prefill-chunk", prefill_chunk, "most prompt tokens of one request per step (0: the step's budget)");
  app.add_option("--max-batch-tokens", max_batch_tokens, "tokens per step (decode rows + prefill chunks)")->capture_default_str();
  app.add_option("--max-seqs", max_seqs, "sequences running at once")->capture_default_str();
  app.add_flag("--no-prefix-cache", no_prefix_cache, "do not reuse cached prompt blocks across requests");
  app.add_option("--attention", attention, "sparse (DSA) or dense (dense MLA, for comparison; not DSA)")
      ->check(CLI::IsMember({"sparse", "dense"}))->capture_default_str();
  app.add_option("--prefill-form", prefill_form,
                 "mha: the reference's prefill attention; mqa: the absorbed decode form for prefill too "
                 "(same numbers as decoding token by token; faster on CUDA; rounds differently from the reference)")
      ->check(CLI::IsMember({"mha", "mqa"}))->capture_default_str();
}

EngineOptions EngineFlags::options() const {
  EngineOptions o;
  o.device = device;
  o.threads = threads;
  o.kv_tokens = kv_tokens;
  o.kv_memory = kv_memory;
  o.prefill_chunk = prefill_chunk;
  o.max_batch_tokens = max_batch_tokens;
  o.max_seqs = max_seqs;
  o.prefix_cache = !no_prefix_cache;
  o.attention = attention == "dense" ? AttentionMode::Dense : AttentionMode::Sparse;
  o.prefill_form = prefill_form == "mqa" ? PrefillForm::Mqa : PrefillForm::Mha;
  return o;
}

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return -1;
}

void EngineFlags::check_model_dir() const {
  namespace fs = std::filesystem;
  DSA_CHECK(fs::is_directory(model), "model directory '", model, "' does not exist or is not a directory");
  DSA_CHECK(fs::exists(fs::path(model) / "config.json"), model, ": no config.json (not a Hugging Face model directory)");
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    size_t used = 0;
    long v = 0;
    try { v = std::stol(cur, &used); } catch (...) { used = 0; }
    DSA_CHECK(used == cur.size(), "bad token id '", cur, "'");
    ids.push_back(int32_t(v));
    cur.clear();
  };
  for (char c : s) {
    if (c == ' ' || c == ',' || c == '\n' || c == '\t') flush();
    else cur += c;
  }
  flush();
  return ids;
}

std::string human_bytes(double b) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) { b /= 1024; ++i; }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, u[i]);
  return buf;
}

std::string run_label(const EngineOptions& o) {
  return attention_label(o.attention) + (o.prefill_form == PrefillForm::Mqa ? ", absorbed-form prefill" : "");
}

std::string attention_label(AttentionMode m) {
  return m == AttentionMode::Sparse ? "DSA (indexer + top-k sparse MLA)" : "dense MLA (comparison; NOT DSA)";
}

}  // namespace dsa::tools

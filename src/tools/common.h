#pragma once
// Shared CLI plumbing: engine options, prompt parsing, memory/speed reporting.
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "runtime/engine.h"

namespace dsa::tools {

struct EngineFlags {
  std::string model;
  std::string device = "cpu";
  int threads = 0;
  int64_t kv_tokens = 0;
  std::string kv_memory;
  int64_t prefill_chunk = 0;
  int64_t max_batch_tokens = 8192;
  int64_t max_seqs = 128;
  bool no_prefix_cache = false;
  std::string attention = "sparse";
  std::string prefill_form = "mha";
  void add(CLI::App& app);
  void check_model_dir() const;  // exists and has a config.json
  EngineOptions options() const;
};

// Run a CLI11 app over argv (argv[0] = subcommand name); returns -1 to continue, else an exit code.
int parse(CLI::App& app, int argc, char** argv);
std::vector<int32_t> parse_ids(const std::string& s);  // "1 2 3" or "1,2,3"
std::string human_bytes(double b);
std::string attention_label(AttentionMode m);    // "DSA (indexer + top-k sparse MLA)" / "dense MLA (...; NOT DSA)"
std::string run_label(const EngineOptions& o);  // the attention label + ", absorbed-form prefill" (--prefill-form mqa)

}  // namespace dsa::tools

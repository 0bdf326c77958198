#pragma once
// Shared CLI plumbing: engine options, prompt parsing, memory/speed reporting.
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "core/error.h"
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
  bool no_check_weights = false;
  std::string attention = "sparse";
  std::string prefill_form = "mha";
  std::string numerics = "reference";
  void add(CLI::App& app);
  // Every option in its range (UsageError naming the option and the range; a warning when --threads
  // exceeds the cores), the model directory present: returns its config.json.
  ModelConfig check() const;
  void check_model_dir() const;  // exists and has a config.json
  EngineOptions options() const;

 private:
  CLI::Option* kv_tokens_opt_ = nullptr;
};

// --temperature / --top-p / --top-k / --seed, shared by generate and chat.
struct SamplingFlags {
  SamplingParams sp;
  uint64_t seed = 0;
  void add(CLI::App& app);
  void validate(int64_t vocab_size) const;  // finite and in range, else UsageError
};

// Most CPU threads accepted for --threads: a few per core (more only oversubscribes; far more
// overflows the OpenMP runtime's thread stacks).
int max_threads();

// UsageError "<opt> <v>: expected <lo>..<hi><note>" unless lo <= v <= hi (NaN is out of range).
template <typename T>
void check_range(const char* opt, T v, T lo, T hi, const char* note = "") {
  if (!(v >= lo && v <= hi)) usage_fail(opt, " ", v, ": expected a value in [", lo, ", ", hi, "]", note);
}

// Loads the engine (after EngineFlags::check) with a progress line on stderr before and after
// ("loading ...", "loaded in 1.2 s: ...").
std::unique_ptr<Engine> load_engine(const EngineFlags& ef, const EngineOptions& opt);
std::unique_ptr<Engine> load_engine(const EngineFlags& ef);
// The backend's start-up description (Backend::describe: CUDA device, probes and kernel configuration) on
// stderr, indented under one header line; nothing for backends without one (CPU). load_engine calls it.
void print_backend_config(const Backend& be);

// An input file the user named: it must exist and be a regular file (or a FIFO/stdin-like stream),
// else Error "<what> '<path>': does not exist / is a directory / ...".
void check_input_file(const std::string& path, const std::string& what);

// Prints a progress line to stderr: "<what> i/n (p%), <elapsed> s elapsed, ETA <eta> s".
void progress_line(const char* what, int64_t done, int64_t total, double elapsed_s);

// Run a CLI11 app over argv (argv[0] = subcommand name); returns -1 to continue, else an exit code
// (0 after --help, 2 for a usage error).
int parse(CLI::App& app, int argc, char** argv);
// Token ids of an option (io/token_ids.h): "1 2 3", "1,2,3" or "[1, 2, 3]", each in [0, vocab_size).
std::vector<int32_t> parse_ids(const std::string& s, int64_t vocab_size, const std::string& what);
std::string human_bytes(double b);
std::string attention_label(AttentionMode m);    // "DSA (indexer + top-k sparse MLA)" / "dense MLA (...; NOT DSA)"
std::string run_label(const EngineOptions& o);  // the attention label + ", absorbed-form prefill" (--prefill-form mqa)

}  // namespace dsa::tools

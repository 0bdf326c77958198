#include "tools/common.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "io/token_ids.h"
#include "runtime/memory_estimate.h"

namespace dsa::tools {

void EngineFlags::add(CLI::App& app) {
  app.add_option("-m,--model", model, "model directory (config.json, safetensors, tokenizer.json)")->required();
  app.add_option("--device", device, "cpu, cuda (device 0) or cuda:N")->capture_default_str();
  app.add_option("-t,--threads", threads, "CPU threads (0: all cores; at most " + std::to_string(max_threads()) + ")");
  kv_tokens_opt_ = app.add_option("--kv-tokens", kv_tokens,
                                  "KV pool capacity in tokens (default: --kv-memory, else the model's context)");
  app.add_option("--kv-memory", kv_memory,
                 "KV pool size: bytes (8G, 512M) or a share of the memory free after loading the weights (90%)");
  app.add_option("--prefill-chunk", prefill_chunk, "most prompt tokens of one request per step (0: the step's budget)");
  app.add_option("--max-batch-tokens", max_batch_tokens, "tokens per step (decode rows + prefill chunks)")->capture_default_str();
  app.add_option("--max-seqs", max_seqs, "sequences running at once")->capture_default_str();
  app.add_flag("--no-prefix-cache", no_prefix_cache, "do not reuse cached prompt blocks across requests");
  app.add_flag("--no-check-weights", no_check_weights, "skip the NaN/Inf scan of the weights at load");
  app.add_option("--attention", attention, "sparse (DSA) or dense (dense MLA, for comparison; not DSA)")
      ->check(CLI::IsMember({"sparse", "dense"}))->capture_default_str();
  app.add_option("--prefill-form", prefill_form,
                 "mha: the reference's prefill attention; mqa: the absorbed decode form for prefill too "
                 "(same numbers as decoding token by token; faster on CUDA; rounds differently from the reference)")
      ->check(CLI::IsMember({"mha", "mqa"}))->capture_default_str();
  app.add_option("--numerics", numerics,
                 "reference: the reference's rounding points (default); fast: production kernels where faster "
                 "(CUDA: cuBLASLt block-scaled FP8 GEMMs; docs/numerics.md)")
      ->check(CLI::IsMember({"reference", "fast"}))->capture_default_str();
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
  o.check_weights = !no_check_weights;
  o.attention = attention == "dense" ? AttentionMode::Dense : AttentionMode::Sparse;
  o.prefill_form = prefill_form == "mqa" ? PrefillForm::Mqa : PrefillForm::Mha;
  o.numerics = numerics == "fast" ? Numerics::Fast : Numerics::Reference;
  return o;
}

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a "success" exit (0); every other parse error is a usage error.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return -1;
}

int max_threads() {
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(16, 4 * cores);
}

ModelConfig EngineFlags::check() const {
  check_range("--threads", threads, 0, max_threads(), " (0: all cores)");
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  if (threads > cores)
    std::fprintf(stderr, "warning: --threads %d is more than the %d cores: the threads share cores and run slower\n",
                 threads, cores);
  if (kv_tokens_opt_ && kv_tokens_opt_->count() > 0)
    check_range<int64_t>("--kv-tokens", kv_tokens, 1, int64_t(1) << 40, " (omit it for the model's context)");
  check_range<int64_t>("--prefill-chunk", prefill_chunk, 0, int64_t(1) << 40, " (0: the step's budget)");
  check_range<int64_t>("--max-batch-tokens", max_batch_tokens, 1, int64_t(1) << 40);
  check_range<int64_t>("--max-seqs", max_seqs, 1, int64_t(1) << 20);
  check_model_dir();
  return ModelConfig::from_file(model + "/config.json");
}

void SamplingFlags::add(CLI::App& app) {
  app.add_option("--temperature", sp.temperature, "0 = greedy; at most 100")->capture_default_str();
  app.add_option("--top-p", sp.top_p, "nucleus sampling, in (0, 1] (1 = off)")->capture_default_str();
  app.add_option("--top-k", sp.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
}

void SamplingFlags::validate(int64_t vocab_size) const {
  check_range("--temperature", sp.temperature, 0.0f, 100.0f, " (0: greedy)");
  if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f))
    usage_fail("--top-p ", sp.top_p, ": expected a value in (0, 1] (1: off)");
  check_range<int64_t>("--top-k", sp.top_k, 0, vocab_size, " (0: off; at most the vocabulary size)");
}

std::unique_ptr<Engine> load_engine(const EngineFlags& ef, const EngineOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "loading %s on %s%s ...\n", ef.model.c_str(), opt.device.c_str(),
               opt.check_weights ? " (with the NaN/Inf scan of the weights)" : "");
  auto eng = Engine::load(ef.model, opt);
  std::fprintf(stderr, "loaded in %.1f s: weights %s, KV pool %ld tokens\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               human_bytes(double(eng->weight_bytes())).c_str(), long(eng->kv().capacity_tokens()));
  print_backend_config(eng->backend());
  return eng;
}

void print_backend_config(const Backend& be) {
  const std::string d = be.describe();
  if (d.empty()) return;
  std::fprintf(stderr, "%s kernel configuration (DSA_CUDA_* variables; docs/cuda-context.md):\n", be.name().c_str());
  size_t i = 0;
  while (i < d.size()) {
    const size_t j = d.find('\n', i);
    const size_t e = j == std::string::npos ? d.size() : j;
    std::fprintf(stderr, "  %.*s\n", int(e - i), d.c_str() + i);
    i = e + 1;
  }
}

std::unique_ptr<Engine> load_engine(const EngineFlags& ef) { return load_engine(ef, ef.options()); }

void check_input_file(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) fail(what, " '", path, "': does not exist");
  if (fs::is_directory(st)) fail(what, " '", path, "': is a directory, not a file");
  if (!fs::is_regular_file(st) && !fs::is_fifo(st) && !fs::is_character_file(st))
    fail(what, " '", path, "': is not a regular file");
}

void progress_line(const char* what, int64_t done, int64_t total, double elapsed_s) {
  const double eta = done > 0 ? elapsed_s / double(done) * double(total - done) : 0;
  std::fprintf(stderr, "%s %ld/%ld (%.0f%%), %.1f s elapsed, ETA %.1f s\n", what, long(done), long(total),
               total > 0 ? 100.0 * double(done) / double(total) : 100.0, elapsed_s, eta);
}

void EngineFlags::check_model_dir() const {
  namespace fs = std::filesystem;
  DSA_CHECK(fs::is_directory(model), "model directory '", model, "' does not exist or is not a directory");
  DSA_CHECK(fs::exists(fs::path(model) / "config.json"), model, ": no config.json (not a Hugging Face model directory)");
}

std::vector<int32_t> parse_ids(const std::string& s, int64_t vocab_size, const std::string& what) {
  try {
    return parse_token_ids(s, vocab_size, what);
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
}

std::string human_bytes(double b) { return format_bytes(b); }

std::string run_label(const EngineOptions& o) {
  return attention_label(o.attention) + (o.prefill_form == PrefillForm::Mqa ? ", absorbed-form prefill" : "") +
         (o.numerics == Numerics::Fast ? ", fast numerics" : "");
}

std::string attention_label(AttentionMode m) {
  return m == AttentionMode::Sparse ? "DSA (indexer + top-k sparse MLA)" : "dense MLA (comparison; NOT DSA)";
}

}  // namespace dsa::tools

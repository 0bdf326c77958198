// dsa perplexity: score text files in fixed windows (method: runtime/perplexity.h, as in the
// dsa-mini README); overall and per-group (file name prefix before "__") perplexity.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "runtime/perplexity.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

int run(int argc, char** argv) {
  using namespace dsa;
  CLI::App app{"Perplexity of text files in fixed windows"};
  tools::EngineFlags ef;
  ef.add(app);
  std::vector<std::string> files;
  std::string manifest;
  int64_t ctx = 8192, max_windows = 0;
  bool verbose = false;
  app.add_option("files", files, "text files (in order)");
  app.add_option("--manifest", manifest, "MANIFEST.txt listing the files (relative to its folder), in order");
  app.add_option("--ctx", ctx, "window length in tokens")->capture_default_str();
  app.add_option("--max-windows", max_windows, "score only the first N windows (0 = all)");
  app.add_flag("-v,--verbose", verbose, "print each window");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  const ModelConfig cfg = ef.check();
  tools::check_range<int64_t>("--ctx", ctx, 2, cfg.max_position_embeddings, " (the model's context)");
  tools::check_range<int64_t>("--max-windows", max_windows, 0, int64_t(1) << 40, " (0: all)");
  if (!manifest.empty())
    for (auto& f : manifest_files(manifest)) files.push_back(f);
  DSA_USAGE_CHECK(!files.empty(), "no input files (give files or --manifest)");
  for (const auto& f : files) {
    tools::check_input_file(f, "input file");
    DSA_CHECK(!std::filesystem::is_regular_file(f) || std::filesystem::file_size(f) > 0, "input file '", f,
              "' is empty: nothing to score");
  }
  Tokenizer tok = Tokenizer::from_dir(ef.model);
  auto eng = tools::load_engine(ef);
  std::fprintf(stderr, "%zu files, windows of %ld, attention: %s, device %s\n", files.size(), long(ctx),
               tools::run_label(ef.options()).c_str(), eng->backend().name().c_str());
  const auto t0 = std::chrono::steady_clock::now();
  double run_nll = 0, last_progress = 0;
  int64_t run_n = 0, total_windows = 0;
  PerplexityResult r = evaluate_perplexity(
      *eng, tok, files, ctx, max_windows,
      [&](int64_t w, int64_t len, double nll) {
        run_nll += nll;
        run_n += len - 1;
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (verbose) {
          std::fprintf(stderr, "window %ld: %ld tokens, ppl %.3f (running %.3f), %.1f s\n", long(w), long(len),
                       std::exp(nll / double(len - 1)), std::exp(run_nll / double(run_n)), el);
        } else if (el - last_progress >= 5 || w == total_windows) {  // a line every few seconds
          last_progress = el;
          tools::progress_line("windows", w, total_windows, el);
        }
      },
      [&](int64_t n) {
        total_windows = n;
        std::fprintf(stderr, "%ld windows to score\n", long(n));
      });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("perplexity %.4f over %ld predicted tokens in %ld windows of <= %ld (%ld tokens in the stream; %s)\n",
              r.ppl(), long(r.tokens), long(r.windows), long(ctx), long(r.stream_tokens),
              tools::run_label(ef.options()).c_str());
  for (const auto& g : r.groups)
    if (g.tokens) std::printf("  %-12s %.4f over %ld tokens\n", g.name.c_str(), g.ppl(), long(g.tokens));
  std::printf("time %.1f s, %.1f tokens/s\n", secs, double(r.tokens + r.windows) / secs);
  return 0;
}
dsa::tools::Register reg("perplexity", "perplexity of text files in fixed windows (dense or DSA)", run);
}  // namespace

// dsa perplexity: score text files in fixed non-overlapping windows (dsa-mini README "Measured
// quality"): each file is wrapped in BOS ... EOS, files are concatenated in order, the stream is
// cut into windows of --ctx tokens (the last one may be shorter), and every window is one fresh
// sequence whose tokens 1..n-1 are predicted. Reports overall and per-group perplexity (group =
// the file name's prefix before "__", e.g. sotu / linux-doc).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "io/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  DSA_CHECK(f.good(), p, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

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
  if (!manifest.empty()) {
    std::istringstream m(read_file(manifest));
    std::string line;
    const auto dir = std::filesystem::path(manifest).parent_path();
    while (std::getline(m, line))
      if (!line.empty()) files.push_back((dir / line).string());
  }
  DSA_CHECK(!files.empty(), "no input files (give files or --manifest)");
  Tokenizer tok = Tokenizer::from_dir(ef.model);
  std::vector<int32_t> stream;
  std::vector<int32_t> group_of;  // per token: index into groups
  std::vector<std::string> groups;
  for (const auto& f : files) {
    std::string name = std::filesystem::path(f).filename().string();
    std::string g = name.substr(0, name.find("__"));
    int32_t gi = int32_t(std::find(groups.begin(), groups.end(), g) - groups.begin());
    if (gi == int32_t(groups.size())) groups.push_back(g);
    std::vector<int32_t> ids = tok.encode(read_file(f));
    stream.push_back(tok.bos_id());
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(tok.eos_id());
    group_of.resize(stream.size(), gi);
  }
  auto eng = Engine::load(ef.model, ef.options());
  const int64_t V = eng->model().config().vocab_size;
  DSA_CHECK(ctx <= eng->model().config().max_position_embeddings, "--ctx ", ctx, " exceeds the model's context");
  std::fprintf(stderr, "%zu files, %zu tokens, windows of %ld, attention: %s, device %s\n", files.size(), stream.size(),
               long(ctx), tools::attention_label(ef.options().attention).c_str(), eng->backend().name().c_str());
  double nll = 0;
  int64_t n = 0, windows = 0;
  std::vector<double> gnll(groups.size(), 0.0);
  std::vector<int64_t> gn(groups.size(), 0);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t off = 0; off + 1 < int64_t(stream.size()); off += ctx) {
    if (max_windows > 0 && windows >= max_windows) break;
    const int64_t len = std::min<int64_t>(ctx, int64_t(stream.size()) - off);
    if (len < 2) break;
    std::vector<int32_t> w(stream.begin() + off, stream.begin() + off + len);
    Sequence seq;
    std::vector<float> logits = eng->feed(seq, w, /*all_logits=*/true);
    seq.release(eng->kv());
    double wn = 0;
    for (int64_t i = 0; i + 1 < len; ++i) {
      const float* row = logits.data() + i * V;
      float m = row[0];
      for (int64_t v = 1; v < V; ++v) m = std::max(m, row[v]);
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
      const double l = (std::log(s) + m) - double(row[w[size_t(i + 1)]]);
      wn += l;
      const int32_t g = group_of[size_t(off + i + 1)];
      gnll[size_t(g)] += l;
      gn[size_t(g)] += 1;
    }
    nll += wn;
    n += len - 1;
    ++windows;
    if (verbose)
      std::fprintf(stderr, "window %ld: %ld tokens, ppl %.3f (running %.3f), %.1f s\n", long(windows), long(len),
                   std::exp(wn / double(len - 1)), std::exp(nll / double(n)),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("perplexity %.4f over %ld predicted tokens in %ld windows of <= %ld (%s)\n", std::exp(nll / double(n)),
              long(n), long(windows), long(ctx), tools::attention_label(ef.options().attention).c_str());
  for (size_t g = 0; g < groups.size(); ++g)
    if (gn[g]) std::printf("  %-12s %.4f over %ld tokens\n", groups[g].c_str(), std::exp(gnll[g] / double(gn[g])), long(gn[g]));
  std::printf("time %.1f s, %.1f tokens/s\n", secs, double(n + windows) / secs);
  return 0;
}
dsa::tools::Register reg("perplexity", "perplexity of text files in fixed windows (dense or DSA)", run);
}  // namespace

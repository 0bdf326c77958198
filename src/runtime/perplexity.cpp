#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace dsa {

double PerplexityGroup::ppl() const { return std::exp(nll / double(tokens)); }
double PerplexityResult::ppl() const { return std::exp(nll / double(tokens)); }

static std::string read_text(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  DSA_CHECK(f.good(), p, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> manifest_files(const std::string& manifest) {
  std::istringstream m(read_text(manifest));
  std::vector<std::string> files;
  const auto dir = std::filesystem::path(manifest).parent_path();
  for (std::string line; std::getline(m, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) files.push_back((dir / line).string());
  }
  DSA_CHECK(!files.empty(), manifest, ": lists no files");
  return files;
}

PerplexityResult evaluate_perplexity(Engine& eng, const Tokenizer& tok, const std::vector<std::string>& files,
                                     int64_t ctx, int64_t max_windows,
                                     const std::function<void(int64_t, int64_t, double)>& on_window) {
  const ModelConfig& cfg = eng.model().config();
  DSA_CHECK(ctx >= 2 && ctx <= cfg.max_position_embeddings, "window of ", ctx, " tokens: must be in [2, ",
            cfg.max_position_embeddings, "] (the model's context)");
  DSA_CHECK(tok.bos_id() >= 0 && tok.eos_id() >= 0, "the tokenizer has no BOS/EOS token (tokenizer_config.json)");
  PerplexityResult r;
  std::vector<int32_t> stream, group_of;
  for (const auto& f : files) {
    const std::string name = std::filesystem::path(f).filename().string();
    const std::string g = name.substr(0, name.find("__"));
    auto it = std::find_if(r.groups.begin(), r.groups.end(), [&](auto& x) { return x.name == g; });
    if (it == r.groups.end()) it = r.groups.insert(r.groups.end(), PerplexityGroup{g});
    const int32_t gi = int32_t(it - r.groups.begin());
    std::vector<int32_t> ids = tok.encode(read_text(f));
    stream.push_back(tok.bos_id());
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(tok.eos_id());
    group_of.resize(stream.size(), gi);
  }
  r.stream_tokens = int64_t(stream.size());
  const int64_t V = cfg.vocab_size;
  for (int64_t off = 0; off + 1 < int64_t(stream.size()); off += ctx) {
    if (max_windows > 0 && r.windows >= max_windows) break;
    const int64_t len = std::min<int64_t>(ctx, int64_t(stream.size()) - off);
    std::vector<int32_t> w(stream.begin() + off, stream.begin() + off + len);
    Sequence seq;
    std::vector<float> logits;
    try {
      logits = eng.feed(seq, w, /*all_logits=*/true);
    } catch (...) {
      seq.release(eng.kv());
      throw;
    }
    seq.release(eng.kv());
    double wn = 0;
    for (int64_t i = 0; i + 1 < len; ++i) {
      const float* row = logits.data() + i * V;
      const float m = *std::max_element(row, row + V);
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(double(row[v]) - m);
      const double l = (std::log(s) + m) - double(row[w[size_t(i + 1)]]);  // -log softmax of the next token
      wn += l;
      PerplexityGroup& g = r.groups[size_t(group_of[size_t(off + i + 1)])];
      g.nll += l;
      g.tokens += 1;
    }
    r.nll += wn;
    r.tokens += len - 1;
    ++r.windows;
    if (on_window) on_window(r.windows, len, wn);
  }
  return r;
}

}  // namespace dsa

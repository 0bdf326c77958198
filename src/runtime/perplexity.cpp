#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
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
                                     const std::function<void(int64_t, int64_t, double)>& on_window,
                                     const std::function<void(int64_t)>& on_plan) {
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
  // Every window is a score-only request (prompt logprobs, nothing generated); the engine runs as
  // many at once as its pool and step budget allow, and the sums are taken in window order.
  struct Window {
    int64_t off = 0, len = 0;
    std::vector<double> lp;
    bool done = false;
  };
  std::vector<Window> win;
  for (int64_t off = 0; off + 1 < int64_t(stream.size()); off += ctx) {
    if (max_windows > 0 && int64_t(win.size()) >= max_windows) break;
    win.push_back({off, std::min<int64_t>(ctx, int64_t(stream.size()) - off), {}, false});
  }
  if (on_plan) on_plan(int64_t(win.size()));
  std::map<RequestId, size_t> of;
  size_t next_submit = 0, next_sum = 0;
  auto submit = [&] {
    // Keep at most as many windows queued as the pool could hold at once (a deep queue buys nothing).
    const int64_t cap = std::max<int64_t>(1, eng.kv().capacity_tokens() / ctx + 1);
    while (next_submit < win.size() && int64_t(of.size()) < cap) {
      RequestParams p;
      p.prompt.assign(stream.begin() + win[next_submit].off, stream.begin() + win[next_submit].off + win[next_submit].len);
      p.max_tokens = 0;
      p.prompt_logprobs = true;
      p.detokenize = false;
      of[eng.add_request(std::move(p))] = next_submit++;
    }
  };
  submit();
  while (next_sum < win.size()) {
    for (RequestOutput& o : eng.step()) {
      auto it = of.find(o.id);
      if (it == of.end()) continue;
      Window& w = win[it->second];
      w.lp.insert(w.lp.end(), o.prompt_logprobs.begin(), o.prompt_logprobs.end());
      if (o.finished) {
        DSA_CHECK(o.finish != FinishReason::Error, "perplexity window ", it->second + 1, ": ", o.error);
        DSA_CHECK(int64_t(w.lp.size()) == w.len - 1, "perplexity window ", it->second + 1, ": ", w.lp.size(),
                  " logprobs for ", w.len, " tokens");
        w.done = true;
        of.erase(it);
      }
    }
    while (next_sum < win.size() && win[next_sum].done) {
      Window& w = win[next_sum++];
      double wn = 0;
      for (int64_t i = 0; i + 1 < w.len; ++i) {
        const double l = -w.lp[size_t(i)];  // -log softmax of the next token
        wn += l;
        PerplexityGroup& g = r.groups[size_t(group_of[size_t(w.off + i + 1)])];
        g.nll += l;
        g.tokens += 1;
      }
      r.nll += wn;
      r.tokens += w.len - 1;
      ++r.windows;
      if (on_window) on_window(r.windows, w.len, wn);
      w.lp = {};
    }
    submit();
  }
  return r;
}

}  // namespace dsa

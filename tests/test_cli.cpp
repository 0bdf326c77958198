// The dsa CLI as a user meets it: each case runs the `dsa` binary and checks the exit code (0 ok,
// 1 runtime error, 2 usage error) and what stderr names. Models: the tiny random model written by
// `dsa make-model` (variants with bad weights or configs written here) and dsa-mini for text.
#include <gtest/gtest.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "io/safetensors.h"
#include "model/random_model.h"
#include "test_models.h"

namespace fs = std::filesystem;
using dsa::test::have_mini_model;
using dsa::test::mini_model_dir;

namespace {

struct Result {
  int rc = -1;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

fs::path scratch() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("dsa-cli-" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// Runs `dsa ARGS` with `input` on stdin; the exit code, stdout and stderr.
Result dsa_run(const std::vector<std::string>& args, const std::string& input = "") {
  static int n = 0;
  const fs::path base = scratch() / ("run" + std::to_string(n++));
  {
    std::ofstream(base.string() + ".in") << input;
  }
  std::string cmd = quote(std::string(DSA_BINARY_DIR) + "/dsa");
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " <" + quote(base.string() + ".in") + " >" + quote(base.string() + ".out") + " 2>" + quote(base.string() + ".err");
  const int st = std::system(cmd.c_str());
  Result r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(base.string() + ".out");
  r.err = slurp(base.string() + ".err");
  return r;
}

#define EXPECT_HAS(hay, needle) EXPECT_NE((hay).find(needle), std::string::npos) << "missing: " << (needle) << "\nin: " << (hay)

// The tiny preset, written once by `dsa make-model`.
const std::string& tiny() {
  static const std::string d = [] {
    const std::string p = (scratch() / "tiny").string();
    Result r = dsa_run({"make-model", "-o", p, "--preset", "tiny", "--shard-mb", "1"});
    EXPECT_EQ(r.rc, 0) << r.err;
    return p;
  }();
  return d;
}

// A tiny model whose tensors (or config) `edit` changes before it is written.
std::string tiny_variant(const std::string& name, const std::function<void(std::vector<dsa::NamedTensor>&)>& edit,
                         const std::function<void(nlohmann::json&)>& edit_config = {}) {
  const std::string d = (scratch() / name).string();
  const dsa::ModelConfig cfg = dsa::preset_model_config("tiny");
  std::vector<dsa::NamedTensor> ts = dsa::random_model_tensors(cfg, 7);
  if (edit) edit(ts);
  fs::create_directories(d);
  dsa::write_sharded_checkpoint(d, ts, 1u << 20);
  nlohmann::json j = cfg.to_json();
  if (edit_config) edit_config(j);
  std::ofstream(d + "/config.json") << j.dump(2);
  return d;
}

dsa::Tensor& tensor_named(std::vector<dsa::NamedTensor>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return t.tensor;
  ADD_FAILURE() << "no tensor " << name;
  return ts.front().tensor;
}

void set_bf16(dsa::Tensor& t, int64_t i, float v) { t.ptr<uint16_t>()[i] = dsa::f32_to_bf16(v); }

std::vector<std::string> gen(const std::string& model, std::vector<std::string> more) {
  std::vector<std::string> a = {"generate", "-m", model};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// `dsa ARGS` as a child process with a pipe to its stdin and one from its stdout (stderr too with
// merge_stderr), read as it comes: for what a user sees over time (streaming, Ctrl-C).
struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;
  std::string got;
  std::vector<std::pair<size_t, double>> arrivals;  // (bytes read so far, seconds since start) per read
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();

  explicit Child(const std::vector<std::string>& args, bool merge_stderr = false) {
    int i[2], o[2];
    if (::pipe(i) != 0 || ::pipe(o) != 0) return;
    const std::string bin = std::string(DSA_BINARY_DIR) + "/dsa";
    std::vector<std::string> a = {bin};
    a.insert(a.end(), args.begin(), args.end());
    pid = ::fork();
    if (pid == 0) {
      ::dup2(i[0], 0);
      ::dup2(o[1], 1);
      if (merge_stderr) ::dup2(o[1], 2);
      ::close(i[1]);
      ::close(o[0]);
      std::vector<char*> argv;
      for (auto& x : a) argv.push_back(x.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(i[0]);
    ::close(o[1]);
    in = i[1];
    out = o[0];
  }
  ~Child() {
    if (in >= 0) ::close(in);
    if (out >= 0) ::close(out);
    if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  double now() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
  // Reads until `what` appears at or after `from`, end of output, or `seconds` pass; whether it appeared.
  bool read_until(const std::string& what, double seconds, size_t from = 0) {
    const double until = now() + seconds;
    char buf[4096];
    while (got.find(what, from) == std::string::npos && now() < until) {
      fd_set fds;
      FD_ZERO(&fds);
      FD_SET(out, &fds);
      timeval tv{0, 20000};
      if (::select(out + 1, &fds, nullptr, nullptr, &tv) > 0) {
        const ssize_t n = ::read(out, buf, sizeof buf);
        if (n <= 0) break;
        got.append(buf, size_t(n));
        arrivals.push_back({got.size(), now()});
      }
    }
    return got.find(what, from) != std::string::npos;
  }
  void read_all(double seconds) { read_until(std::string(1, '\0'), seconds); }
  // When the byte at offset `at` of the output arrived (seconds since start).
  double arrival_of(size_t at) const {
    for (const auto& [n, t] : arrivals)
      if (at < n) return t;
    return -1;
  }
  bool say(const std::string& s) { return ::write(in, s.data(), s.size()) == ssize_t(s.size()); }
  int wait_exit() {  // the exit code, or 128 + the signal
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
};

}  // namespace

// ---- exit codes, --version, -m ------------------------------------------------------------

TEST(Cli, VersionNamesCommitBuildCudaAndIsa) {
  Result r = dsa_run({"--version"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_HAS(r.out, "commit ");
  EXPECT_HAS(r.out, "build");
  EXPECT_HAS(r.out, "CUDA backend");
  EXPECT_HAS(r.out, "CPU kernels");
  // The commit is the one built (taken at build time, not at configure time): it matches the checkout's HEAD.
  FILE* git = popen(("git -C " + quote(DSA_SOURCE_DIR) + " rev-parse --short=12 HEAD 2>/dev/null").c_str(), "r");
  ASSERT_NE(git, nullptr);
  char head[64] = {};
  const bool have_head = std::fgets(head, sizeof head, git) != nullptr;
  const int git_rc = pclose(git);
  if (have_head && git_rc == 0) {
    std::string commit(head);
    while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) commit.pop_back();
    EXPECT_HAS(r.out, "commit " + commit);
  }
}

TEST(Cli, UsageErrorsExit2) {
  EXPECT_EQ(dsa_run({"no-such-command"}).rc, 2);
  EXPECT_EQ(dsa_run({"generate", "--bogus"}).rc, 2);
  EXPECT_EQ(dsa_run({"tokenize"}).rc, 2);  // --model is required
  EXPECT_EQ(dsa_run({"generate", "--help"}).rc, 0);
  // A runtime error (a model directory that does not exist) is 1.
  Result r = dsa_run(gen((scratch() / "nope").string(), {"--prompt-ids", "0"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "does not exist");
}

TEST(Cli, TokenizeTakesDashM) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  Result r = dsa_run({"tokenize", "-m", mini_model_dir()}, "Hello world");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

TEST(Cli, BenchHelpSaysWhereAttentionApplies) {
  Result r = dsa_run({"bench", "--help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_HAS(r.out, "latency mode always runs both");
  Result b = dsa_run({"bench", "-m", tiny(), "--ctx", "64", "--attention", "dense"});
  EXPECT_EQ(b.rc, 2);
  EXPECT_HAS(b.err, "--attention applies to throughput mode");
}

// Throughput mode's step split, and --client-rtt: a finished request's successor waits out its client's
// round trip (4 requests one at a time: 3 round trips of 150 ms in the wall time, none without).
TEST(Cli, BenchThroughputStepSplitAndClientRoundTrip) {
  const std::vector<std::string> base = {"bench", "-m", tiny(), "--requests", "4", "--concurrency", "1", "--input-len", "8",
                                         "--output-len", "4"};
  auto wall = [](const std::string& out) {
    const size_t at = out.find(" s\n", out.find("total tok/s over "));
    const size_t from = out.find("total tok/s over ") + std::strlen("total tok/s over ");
    return at == std::string::npos ? -1.0 : std::stod(out.substr(from, at - from));
  };
  // "<label> N, X ms each": N steps of X ms, in seconds.
  auto steps_s = [](const std::string& out, const std::string& label) {
    const size_t at = out.find(label);
    if (at == std::string::npos) return -1.0;
    size_t used = 0;
    const double n = std::stod(out.substr(at + label.size()), &used);
    const double ms = std::stod(out.substr(at + label.size() + used + 2));
    return n * ms / 1000.0;
  };
  auto idle = [&](const std::string& out) {
    return wall(out) - steps_s(out, "decode-only steps: ") - steps_s(out, "prefill-only ");
  };
  Result a = dsa_run(base);
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_HAS(a.out, "decode-only steps: 12, ");  // 4 requests x (4 tokens - 1 from the prefill)
  EXPECT_HAS(a.out, " between steps; 1.0 rows each");
  EXPECT_HAS(a.out, "other steps: prefill-only 4, ");
  EXPECT_HAS(a.out, "stepping thread: ");
  EXPECT_EQ(a.out.find("client round trip"), std::string::npos) << a.out;
  std::vector<std::string> rtt = base;
  rtt.insert(rtt.end(), {"--client-rtt", "150", "--detokenize"});
  Result b = dsa_run(rtt);
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_HAS(b.out, "client round trip 150 ms");
  EXPECT_HAS(b.out, "decode-only steps: 12, ");
  // The round trips are idle time: the wall time less the steps' own time. Compared that way, not by wall
  // time alone, because a loaded CI machine's steps vary 4x between the two runs.
  EXPECT_GE(wall(b.out), 0.45) << b.out;
  EXPECT_LT(idle(a.out), 0.15) << a.out;
  EXPECT_GT(idle(b.out), 0.35) << b.out;
  // An idle engine takes the request the moment its client sends it: the round trip is not in its TTFT
  // (a request sent while a step runs waits for the next one, and that wait is).
  const size_t t = b.out.find("TTFT p50 ");
  ASSERT_NE(t, std::string::npos);
  // So TTFT is about one prefill step, well short of step + 150 ms. Bounded by the run's own prefill step, not
  // by a fixed time: under a parallel ctest on 2 cores that step alone took 139 ms.
  const double prefill_ms = 1000.0 * steps_s(b.out, "prefill-only ") / 4;
  ASSERT_GT(prefill_ms, 0.0) << b.out;
  EXPECT_LT(std::stod(b.out.substr(t + 9)), prefill_ms + 75.0) << b.out;
  Result c = dsa_run({"bench", "-m", tiny(), "--ctx", "64", "--client-rtt", "1"});
  EXPECT_EQ(c.rc, 2);
  EXPECT_HAS(c.err, "--client-rtt applies to throughput mode");
}

// ---- option ranges --------------------------------------------------------------------------

TEST(Cli, ThreadsAreCapped) {
  Result r = dsa_run(gen(tiny(), {"--prompt-ids", "0 1", "-n", "2", "--threads", "100000"}));
  EXPECT_EQ(r.rc, 2);  // was a stack overflow inside OpenMP
  EXPECT_HAS(r.err, "--threads 100000: expected a value in [0, ");
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  Result w = dsa_run(gen(tiny(), {"--prompt-ids", "0 1", "-n", "2", "--threads", std::to_string(cores + 1)}));
  EXPECT_EQ(w.rc, 0) << w.err;
  EXPECT_HAS(w.err, "warning: --threads");
}

TEST(Cli, OptionValuesOutOfRangeAreUsageErrors) {
  const std::string m = tiny();
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--kv-tokens", "0"}, "--kv-tokens 0"},         {{"--kv-tokens", "-5"}, "--kv-tokens -5"},
      {{"-n", "-5"}, "-n -5: expected a value in [1, 1024]"},
      {{"-n", "2000000000"}, "-n 2000000000"},          {{"-n", "2e9"}, "--max-new = 2e9"},          {{"--top-p", "2"}, "--top-p 2: expected a value in (0, 1]"},
      {{"--top-k", "-1"}, "--top-k -1"},                {{"--temperature", "-1"}, "--temperature -1"},
      {{"--temperature", "inf"}, "--temperature inf"},  {{"--temperature", "nan"}, "--temperature nan"},
      {{"--max-seqs", "0"}, "--max-seqs 0"},            {{"--max-batch-tokens", "0"}, "--max-batch-tokens 0"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> a = {"--prompt-ids", "0 1"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    Result r = dsa_run(gen(m, a));
    EXPECT_EQ(r.rc, 2) << c.names << ": " << r.err;
    EXPECT_HAS(r.err, c.names);
  }
  Result p = dsa_run({"perplexity", "-m", m, "--ctx", "16", "--max-windows", "-1", "x.txt"});
  EXPECT_EQ(p.rc, 2);
  EXPECT_HAS(p.err, "--max-windows -1");
  Result b = dsa_run({"bench", "-m", m, "--ctx", "64", "--batch", "100000"});
  EXPECT_EQ(b.rc, 2);
  EXPECT_HAS(b.err, "--batch 100000");
}

TEST(Cli, PromptAndPromptIdsAreExclusive) {
  Result r = dsa_run(gen(tiny(), {"-p", "x", "--prompt-ids", "0 1"}));
  EXPECT_EQ(r.rc, 2);
  EXPECT_HAS(r.err, "excludes");
}

TEST(Cli, PromptIdsOutsideTheVocabulary) {
  Result r = dsa_run(gen(tiny(), {"--prompt-ids", "0 99999", "-n", "1"}));
  EXPECT_EQ(r.rc, 2);
  EXPECT_HAS(r.err, "token id 99999");
  EXPECT_HAS(r.err, "[0, 512)");
}

TEST(Cli, PromptPlusMaxNewPastTheKvPool) {
  Result r = dsa_run(gen(tiny(), {"--prompt-ids", "0 1 2", "-n", "100", "--kv-tokens", "64"}));
  EXPECT_EQ(r.rc, 2);
  EXPECT_HAS(r.err, "do not fit the KV pool of 64 tokens");
  EXPECT_TRUE(r.out.empty()) << r.out;  // nothing streamed before the error
}

// ---- memory ---------------------------------------------------------------------------------

TEST(Cli, KvPoolLargerThanMemoryIsRefusedUpFront) {
  // 2^40 tokens of KV is petabytes: refused with the numbers before anything is allocated.
  Result r = dsa_run(gen(tiny(), {"--prompt-ids", "0 1", "-n", "1", "--kv-tokens", "1099511627776"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "not enough memory for the KV pool");
  EXPECT_HAS(r.err, "--kv-tokens");
}

// ---- finite checks ----------------------------------------------------------------------------

TEST(Cli, NanInAWeightIsReportedAtLoad) {
  const std::string m = tiny_variant("nan-norm", [](auto& ts) { set_bf16(tensor_named(ts, "model.norm.weight"), 5, NAN); });
  Result r = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "2"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "'model.norm.weight'");
  EXPECT_HAS(r.err, "NaN at element 5");
  // Without the scan the model's logits are NaN: the request stops with an error, not garbage text.
  Result s = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "2", "--no-check-weights"}));
  EXPECT_EQ(s.rc, 1);
  EXPECT_HAS(s.err, "non-finite logit");
}

TEST(Cli, InfInTheHeadIsReportedAtLoad) {
  const std::string m = tiny_variant("inf-head", [](auto& ts) {
    set_bf16(tensor_named(ts, "lm_head.weight"), 3, std::numeric_limits<float>::infinity());
  });
  Result r = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "2"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "'lm_head.weight'");
  EXPECT_HAS(r.err, "an infinity at element 3");
  Result p = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "2", "--no-check-weights"}));
  EXPECT_EQ(p.rc, 1);
  EXPECT_HAS(p.err, "non-finite logit");
}

// ---- config and checkpoint -------------------------------------------------------------------

TEST(Cli, MoreLayersThanTheConfigIsAnError) {
  const std::string m = tiny_variant("layers", {}, [](nlohmann::json& j) { j["num_hidden_layers"] = 1; });
  Result r = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "1"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "belongs to layer 1");
  EXPECT_HAS(r.err, "num_nextn_predict_layers 0");
  // Declared as an MTP layer, the extra layer is ignored (as the reference does).
  const std::string mtp = tiny_variant("layers-mtp", {}, [](nlohmann::json& j) {
    j["num_hidden_layers"] = 1;
    j["num_nextn_predict_layers"] = 1;
  });
  Result ok = dsa_run(gen(mtp, {"--prompt-ids", "0 1", "-n", "1"}));
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

TEST(Cli, TensorWithANonNumericLayerIndex) {
  const std::string m = tiny_variant("abc", [](auto& ts) {
    dsa::Tensor t = dsa::host_tensor(dsa::DType::BF16, {4});
    for (int i = 0; i < 4; ++i) set_bf16(t, i, 1.0f);
    ts.push_back({"model.layers.abc.weight", t});
  });
  Result r = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "1"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "layer index 'abc' is not a layer number");
  EXPECT_EQ(r.err.find("stoll"), std::string::npos);
}

TEST(Cli, MaxPositionEmbeddingsAbsurd) {
  const std::string m = tiny_variant("maxpos", {}, [](nlohmann::json& j) { j["max_position_embeddings"] = int64_t(1) << 40; });
  Result r = dsa_run(gen(m, {"--prompt-ids", "0 1", "-n", "1"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "field 'max_position_embeddings'");
  EXPECT_HAS(r.err, "1099511627776");
}

TEST(Cli, ShardThatIsNotARegularFile) {
  const fs::path src = tiny();
  std::string shard;
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().extension() == ".safetensors") shard = e.path().filename().string();
  ASSERT_FALSE(shard.empty());
  struct Case {
    std::string name, expect;
    std::function<void(const fs::path&)> make;
  };
  const std::vector<Case> cases = {
      {"dir", "is a directory", [](const fs::path& p) { fs::create_directories(p); }},
      {"fifo", "is a FIFO", [](const fs::path& p) { ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0); }},
      {"zero", "is a character device", [](const fs::path& p) { fs::create_symlink("/dev/zero", p); }},
  };
  for (const auto& c : cases) {
    const fs::path d = scratch() / ("shard-" + c.name);
    fs::remove_all(d);
    fs::copy(src, d);
    fs::remove(d / shard);
    c.make(d / shard);
    Result r = dsa_run(gen(d.string(), {"--prompt-ids", "0 1", "-n", "1"}));
    EXPECT_EQ(r.rc, 1) << c.name;
    EXPECT_HAS(r.err, c.expect);
    EXPECT_EQ(r.err.find("does not exist"), std::string::npos) << r.err;
  }
}

// ---- tokenizer files ---------------------------------------------------------------------------

TEST(Cli, CorruptTokenizerConfigIsNamed) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  const fs::path d = scratch() / "tokcfg";
  fs::create_directories(d);
  fs::copy_file(fs::path(mini_model_dir()) / "tokenizer.json", d / "tokenizer.json", fs::copy_options::overwrite_existing);
  std::ofstream(d / "tokenizer_config.json") << "{ \"add_bos_token\": tru";
  Result r = dsa_run({"tokenize", "-m", d.string()}, "hi");
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, (d / "tokenizer_config.json").string());
}

TEST(Cli, AddedTokenWithAHugeIdReportsTheId) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  const fs::path d = scratch() / "tokbig";
  fs::create_directories(d);
  nlohmann::json j = nlohmann::json::parse(slurp(fs::path(mini_model_dir()) / "tokenizer.json"));
  j["added_tokens"].push_back({{"id", int64_t(1000000000000)}, {"content", "<big>"}, {"special", true}});
  std::ofstream(d / "tokenizer.json") << j.dump();
  Result r = dsa_run({"tokenize", "-m", d.string()}, "hi");
  EXPECT_EQ(r.rc, 1);
  EXPECT_HAS(r.err, "1000000000000");
  EXPECT_EQ(r.err.find("negative"), std::string::npos) << r.err;
}

TEST(Cli, TokenizeInputsAndDecodeIds) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  Result dir = dsa_run({"tokenize", "-m", mini_model_dir(), scratch().string()});
  EXPECT_EQ(dir.rc, 1);
  EXPECT_HAS(dir.err, "is a directory");
  Result bad = dsa_run({"tokenize", "-m", mini_model_dir(), "--decode"}, "99999 -5");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_HAS(bad.err, "token id 99999");
  Result neg = dsa_run({"tokenize", "-m", mini_model_dir(), "--decode"}, "5 -5");
  EXPECT_EQ(neg.rc, 1);
  EXPECT_HAS(neg.err, "token id -5");
  Result big = dsa_run({"tokenize", "-m", mini_model_dir(), "--decode"}, "123456789012345678901");
  EXPECT_EQ(big.rc, 1);
  EXPECT_HAS(big.err, "123456789012345678901");
  EXPECT_EQ(big.err.find("stoll"), std::string::npos);
  Result ok = dsa_run({"tokenize", "-m", mini_model_dir(), "--decode"}, "[100, 200]");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_FALSE(ok.out.empty());
}

// ---- generate / perplexity output -------------------------------------------------------------

TEST(Cli, QuietPrintsTheFinalText) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  Result r = dsa_run(gen(mini_model_dir(), {"-p", "The President", "-n", "4", "-q", "--threads", "2"}));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.rfind("The President", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("The President\n").size());
}

TEST(Cli, QuietDoesNotStream) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  // stdout and stderr in one pipe, in order: "... prompt 3 tokens" (stderr) before the first token,
  // then the text, then the stats line "prompt 3 tok | ..." (stderr) after the last one. Streaming,
  // the text starts right after the first line; with -q, it comes in one piece just before the stats.
  // Returns (first text byte - start of generation) / (stats line - start of generation).
  auto text_at = [](bool quiet) {
    std::vector<std::string> a = gen(mini_model_dir(), {"-p", "The President", "-n", "32", "--ignore-eos", "--threads", "2"});
    if (quiet) a.push_back("-q");
    Child c(a, true);
    const std::string start = "prompt 3 tokens\n", stats = "prompt 3 tok |";
    EXPECT_TRUE(c.read_until(stats, 600)) << c.got;
    c.read_all(60);
    EXPECT_EQ(c.wait_exit(), 0) << c.got;
    const size_t s = c.got.find(start), e = c.got.find(stats);
    if (s == std::string::npos || e == std::string::npos) return -1.0;
    EXPECT_HAS(c.got.substr(s + start.size(), e - s - start.size()), "The President");
    const double t0 = c.arrival_of(s + start.size() - 1), t_text = c.arrival_of(s + start.size()), t_end = c.arrival_of(e);
    return (t_text - t0) / std::max(1e-9, t_end - t0);
  };
  const double quiet = text_at(true), streaming = text_at(false);
  EXPECT_GT(quiet, 0.8) << "with -q the text came before the end of generation";
  EXPECT_LT(streaming, 0.5) << "without -q the text did not stream";
}

TEST(Cli, PerplexityOfAnEmptyFileAndProgress) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  const fs::path empty = scratch() / "empty.txt";
  std::ofstream(empty).close();
  Result e = dsa_run({"perplexity", "-m", mini_model_dir(), empty.string()});
  EXPECT_EQ(e.rc, 1);
  EXPECT_HAS(e.err, "is empty");
  const fs::path text = scratch() / "text.txt";
  std::ofstream(text) << "The quick brown fox jumps over the lazy dog. It was the best of times.\n";
  Result p = dsa_run({"perplexity", "-m", mini_model_dir(), "--ctx", "16", "--threads", "2", text.string()});
  EXPECT_EQ(p.rc, 0) << p.err;
  EXPECT_HAS(p.err, "windows to score");
  EXPECT_HAS(p.err, "ETA");
  EXPECT_HAS(p.err, "loaded in");
}

// ---- chat -------------------------------------------------------------------------------------

TEST(Cli, ChatReportsUnknownCommandsAndSuggestsClear) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  const std::string long_msg(400, 'a');
  Result r = dsa_run({"chat", "-m", mini_model_dir(), "--no-color", "--kv-tokens", "64", "-n", "4", "--threads", "2"},
                     "/foo\n/think bogus\n" + long_msg + " " + long_msg + "\n/exit\n");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_HAS(r.out, "[unknown command /foo");
  EXPECT_HAS(r.out, "/think takes on or off");
  EXPECT_HAS(r.out, "/clear");
}

TEST(Cli, ChatCtrlCStopsTheAnswerAndKeepsTheHistory) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  Child c({"chat", "-m", mini_model_dir(), "--no-color", "-n", "8000", "--temperature", "0", "--threads", "2",
           "--kv-tokens", "8192"});
  ASSERT_TRUE(c.read_until("> ", 120)) << c.got;
  ASSERT_TRUE(c.say("Tell me a very long story about the sea\n"));
  // Wait for the answer to start, then interrupt it.
  const size_t answer_from = c.got.size();
  const double t0 = c.now();
  while (c.got.size() < answer_from + 20 && c.now() - t0 < 120) c.read_until("\x01", 0.2);
  const bool finished_early = c.got.find("tokens at", answer_from) != std::string::npos;  // EOS before the signal
  ::kill(c.pid, SIGINT);
  ASSERT_TRUE(c.read_until("tok/s]", 120, answer_from)) << c.got;
  if (!finished_early) EXPECT_HAS(c.got, "stopped;");
  // The chat goes on with the history: the next turn's prompt holds the first turn and its answer.
  auto prompt_tokens = [&](size_t from) {
    const size_t at = c.got.find(" prompt tokens (", from);
    if (at == std::string::npos) return int64_t(-1);
    size_t b = at;
    while (b > 0 && std::isdigit(static_cast<unsigned char>(c.got[b - 1]))) --b;
    return int64_t(std::stoll(c.got.substr(b, at - b)));
  };
  const int64_t p1 = prompt_tokens(answer_from);
  ASSERT_TRUE(c.read_until("> ", 60, answer_from)) << c.got;
  const size_t second = c.got.size();
  ASSERT_TRUE(c.say("And then?\n"));
  const double t1 = c.now();
  while (c.got.size() < second + 20 && c.now() - t1 < 120) c.read_until("\x01", 0.2);
  ::kill(c.pid, SIGINT);  // stop the second answer too
  ASSERT_TRUE(c.read_until("tok/s]", 120, second)) << c.got;
  const int64_t p2 = prompt_tokens(second);
  ASSERT_GT(p1, 0) << c.got;
  EXPECT_GT(p2, p1 + 10) << c.got;
  // Back at the prompt, Ctrl-C leaves (130, as a shell reports SIGINT).
  ASSERT_TRUE(c.read_until("> ", 60, second)) << c.got;
  ::kill(c.pid, SIGINT);
  EXPECT_EQ(c.wait_exit(), 130) << c.got;
}

TEST(Cli, ChatEndOfInputLeaves) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  // Ctrl-D at the prompt (end of input, no /exit): exit 0.
  Result r = dsa_run({"chat", "-m", mini_model_dir(), "--no-color", "--threads", "2"}, "/clear\n");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_HAS(r.out, "[history cleared]");
}

// ---- make-model ---------------------------------------------------------------------------------

TEST(Cli, MakeModelNeverOverwritesOrLeavesAPartialDirectory) {
  const fs::path d = scratch() / "mm";
  fs::remove_all(d);
  EXPECT_EQ(dsa_run({"make-model", "-o", d.string(), "--preset", "tiny"}).rc, 0);
  const auto written = fs::last_write_time(d / "config.json");
  Result again = dsa_run({"make-model", "-o", d.string(), "--preset", "tiny"});
  EXPECT_EQ(again.rc, 2);
  EXPECT_HAS(again.err, "--force");
  EXPECT_EQ(fs::last_write_time(d / "config.json"), written);
  Result forced = dsa_run({"make-model", "-o", d.string(), "--preset", "tiny", "--force", "--seed", "9"});
  EXPECT_EQ(forced.rc, 0) << forced.err;

  const fs::path p = scratch() / "mm-partial";
  Result zero = dsa_run({"make-model", "-o", p.string(), "--preset", "tiny", "--shard-mb", "0"});
  EXPECT_EQ(zero.rc, 2);
  EXPECT_HAS(zero.err, "--shard-mb 0");
  EXPECT_FALSE(fs::exists(p));
  if (have_mini_model()) {  // dsa-mini's 8192-token tokenizer on a 512-token model
    Result tok = dsa_run({"make-model", "-o", p.string(), "--preset", "tiny", "--tokenizer-from", mini_model_dir()});
    EXPECT_EQ(tok.rc, 1);
    EXPECT_HAS(tok.err, "vocab_size is 512");
    EXPECT_FALSE(fs::exists(p));
  }
  for (const auto& e : fs::directory_iterator(scratch()))  // no scratch directories left behind
    EXPECT_EQ(e.path().filename().string().rfind(".tmp-", 0), std::string::npos) << e.path();
}

// ---- dsa eval --------------------------------------------------------------------------------

namespace {
// The numbers after `key` on the line that starts with it.
std::vector<double> numbers_after(const std::string& out, const std::string& key) {
  std::vector<double> v;
  const size_t p = out.find(key);
  if (p == std::string::npos) return v;
  std::istringstream line(out.substr(p + key.size(), out.find('\n', p) - p - key.size()));
  std::string w;
  while (line >> w) {
    char* end = nullptr;
    const double x = std::strtod(w.c_str(), &end);
    if (end != w.c_str()) v.push_back(x);
  }
  return v;
}
}  // namespace

TEST(Cli, EvalSparseVsDenseAndRecall) {
  if (!have_mini_model()) GTEST_SKIP() << "dsa-mini not present";
  const fs::path d = fs::temp_directory_path() / "dsa_cli_eval";
  fs::create_directories(d);
  std::ifstream src(std::string(DSA_SHARED_DIR) + "/data/warmup/MANIFEST.txt");
  std::string first;
  std::getline(src, first);
  {
    std::ofstream m(d / "MANIFEST.txt");
    m << (fs::path(DSA_SHARED_DIR) / "data/warmup" / first).string() << "\n";
  }
  const std::string man = (d / "MANIFEST.txt").string();
  // k = 32 of 400 keys: DSA is really sparse, so the two perplexities differ and recall is below 1.
  Result r = dsa_run({"eval", "-m", mini_model_dir(), "--manifest", man, "--ctx", "400", "--max-windows", "1",
                      "--topk", "32", "--recall-stride", "32", "-t", "2"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<double> ppl = numbers_after(r.out, "perplexity dense");
  ASSERT_GE(ppl.size(), 2u) << r.out;
  EXPECT_TRUE(std::isfinite(ppl[0]) && ppl[0] > 1) << r.out;
  EXPECT_NE(ppl[0], ppl[1]) << r.out;
  const std::vector<double> rec = numbers_after(r.out, "every 32-th row):");
  ASSERT_EQ(rec.size(), 6u) << r.out;
  for (double x : rec) EXPECT_TRUE(x > 0.0 && x < 1.0) << r.out;
  // k >= the window: every key is selected, so sparse is dense exactly (architecture.md §3.4).
  Result all = dsa_run({"eval", "-m", mini_model_dir(), "--manifest", man, "--ctx", "200", "--max-windows", "1",
                        "--topk", "256", "-t", "2"});
  ASSERT_EQ(all.rc, 0) << all.err;
  EXPECT_HAS(all.out, "(+0.00%)");
  EXPECT_HAS(all.out, "per token 0.000000 nats");
  fs::remove_all(d);
}

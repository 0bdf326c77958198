// dsa eval: dense vs sparse (DSA) quality of a checkpoint's indexer on text files (issue 14,
// docs/training.md): perplexity of both, the mean KL(dense || sparse) of the next-token
// distributions, and per layer the recall = share of the dense attention mass (head-averaged,
// architecture.md §9.2) on the indexer's top-k, on the production path (FP8 indexer and MLA caches).
// Windows as dsa perplexity (runtime/perplexity.h): BOS text EOS per file, non-overlapping windows.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "model/rope_table.h"
#include "runtime/perplexity.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "train/layer_tap.h"

namespace {

// log softmax of one logit row at every id (float64).
void log_softmax(const float* l, int64_t V, std::vector<double>& out) {
  double mx = l[0];
  for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
  const double lse = mx + std::log(z);
  out.resize(size_t(V));
  for (int64_t v = 0; v < V; ++v) out[size_t(v)] = double(l[v]) - lse;
}

int run(int argc, char** argv) {
  using namespace dsa;
  CLI::App app{"Dense vs sparse perplexity, KL and per-layer indexer recall"};
  std::string model, manifest;
  int64_t ctx = 2048, max_windows = 0, topk = 0, stride = 64;
  int threads = 0;
  app.add_option("-m,--model", model, "model directory")->required();
  app.add_option("--manifest", manifest, "MANIFEST.txt of the evaluation files")->required();
  app.add_option("--ctx", ctx, "window length")->capture_default_str();
  app.add_option("--max-windows", max_windows, "first N windows only (0: all)");
  app.add_option("--topk", topk, "index top-k (0: the config's index_topk)");
  app.add_option("--recall-stride", stride, "recall measured on every N-th query row (>= k)")->capture_default_str();
  app.add_option("-t,--threads", threads, "CPU threads (0: all)");
  std::string device = "cpu";
  app.add_option("--device", device, "cpu or cuda: the two forward passes (the recall statistic runs on the host)")
      ->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  std::string prefill_form = "mha";
  app.add_option("--prefill-form", prefill_form,
                 "mha: the reference's prefill attention; mqa: the absorbed form (the decode kernels; much faster on "
                 "CUDA at long windows; rounds differently from the reference)")
      ->check(CLI::IsMember({"mha", "mqa"}))->capture_default_str();
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  EngineOptions eo;
  eo.prefill_form = prefill_form == "mqa" ? PrefillForm::Mqa : PrefillForm::Mha;
  eo.device = device;
  eo.threads = threads;
  eo.kv_tokens = ctx;
  eo.max_batch_tokens = std::max<int64_t>(ctx, 8192);
  eo.prefix_cache = false;
  auto eng = Engine::load(model, eo);
  tools::print_backend_config(eng->backend());
  const ModelConfig& cfg = eng->config();
  eng->model().set_index_topk(topk);
  const int64_t K = topk > 0 ? topk : cfg.index_topk, L = cfg.num_hidden_layers, V = cfg.vocab_size;
  Tokenizer tok = Tokenizer::from_dir(model);
  std::vector<int32_t> stream;
  for (const auto& f : manifest_files(manifest)) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    auto ids = tok.encode(ss.str());
    stream.push_back(tok.bos_id());
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(tok.eos_id());
  }
  const Tensor rope = rope_table(cfg, cfg.max_position_embeddings);
  train::LayerTap tap(eng->backend(), cfg);
  std::vector<double> rec(size_t(L), 0.0);
  std::vector<int64_t> rec_n(size_t(L), 0);
  eng->model().set_attention_tap([&](const AttentionTap& a) {
    if (!a.topk) return;  // every position selected: recall 1 by construction
    const train::LayerInputs<float> in = tap.inputs(a, rope.ptr<float>());
    const train::MainAttention<float> main(in.mq, in.mk, in.T, in.H, in.dm, in.scale);
    std::vector<int32_t> sel(size_t(a.topk->numel()));
    eng->backend().download(*a.topk, sel.data());
    // One row per task: each row's dense probabilities cost H x t x 192 MACs (25M at 8K), the bulk of an
    // evaluation window on the host, so the rows run on all threads.
    const int64_t n_rows = in.T > K ? (in.T - K + stride - 1) / stride : 0;
    double sum = 0;
#pragma omp parallel
    {
      std::vector<float> S(size_t(8 * main.ld())), P(size_t(8 * main.ld()));
#pragma omp for schedule(dynamic) reduction(+ : sum)
      for (int64_t i = 0; i < n_rows; ++i) {
        const int64_t t = K + i * stride;
        main.probs(t, 1, S.data(), P.data(), nullptr, nullptr, nullptr);
        double r = 0;
        for (int64_t c = 0; c < K; ++c) {
          const int32_t j = sel[size_t(t * K + c)];
          if (j >= 0) r += P[size_t(j)];
        }
        sum += r;
      }
    }
    rec[size_t(a.layer)] += sum;
    rec_n[size_t(a.layer)] += n_rows;
  });
  double nll_s = 0, nll_d = 0, kl = 0;
  int64_t n = 0, windows = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t off = 0; off + 1 < int64_t(stream.size()); off += ctx) {
    if (max_windows > 0 && windows >= max_windows) break;
    const int64_t len = std::min<int64_t>(ctx, int64_t(stream.size()) - off);
    std::vector<int32_t> win(stream.begin() + off, stream.begin() + off + len);
    eng->set_attention(AttentionMode::Sparse);
    Sequence s1;
    const std::vector<float> lsp = eng->feed(s1, win, true);
    s1.release(eng->kv());
    eng->set_attention(AttentionMode::Dense);
    Sequence s2;
    const std::vector<float> lde = eng->feed(s2, win, true);
    s2.release(eng->kv());
    double w_nll_s = 0, w_nll_d = 0, w_kl = 0;
#pragma omp parallel
    {
      std::vector<double> ls, ld;
#pragma omp for schedule(static) reduction(+ : w_nll_s, w_nll_d, w_kl)
      for (int64_t i = 0; i < len - 1; ++i) {
        log_softmax(lsp.data() + i * V, V, ls);
        log_softmax(lde.data() + i * V, V, ld);
        w_nll_s -= ls[size_t(win[size_t(i + 1)])];
        w_nll_d -= ld[size_t(win[size_t(i + 1)])];
        double k = 0;
        for (int64_t v = 0; v < V; ++v) k += std::exp(ld[size_t(v)]) * (ld[size_t(v)] - ls[size_t(v)]);
        w_kl += k;
      }
    }
    nll_s += w_nll_s;
    nll_d += w_nll_d;
    kl += w_kl;
    n += len - 1;
    ++windows;
    std::fprintf(stderr, "window %ld: running ppl sparse %.4f dense %.4f, %.0f s\n", long(windows), std::exp(nll_s / n),
                 std::exp(nll_d / n), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double ps = std::exp(nll_s / double(n)), pd = std::exp(nll_d / double(n));
  std::printf("ctx %ld, top-%ld, %ld windows, %ld predicted tokens, %s prefill\n", long(ctx), long(K), long(windows), long(n),
              prefill_form.c_str());
  std::printf("perplexity dense %.4f  sparse %.4f  (%+.2f%%)\n", pd, ps, 100.0 * (ps / pd - 1.0));
  std::printf("mean KL(dense || sparse) per token %.6f nats\n", kl / double(n));
  std::printf("recall (dense attention mass on the top-%ld, rows >= k, every %ld-th row):", long(K), long(stride));
  for (int64_t l = 0; l < L; ++l)
    std::printf(" %.4f", rec_n[size_t(l)] ? rec[size_t(l)] / double(rec_n[size_t(l)]) : 1.0);
  std::printf("\n");
  return 0;
}
dsa::tools::Register reg("eval", "dense vs sparse perplexity, KL and per-layer indexer recall", run);
}  // namespace

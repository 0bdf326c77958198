// dsa bench: decode latency with DSA versus dense MLA at a given context, on one model and one
// backend. Prefills the context once (DSA mode, which writes both caches), then for each mode
// decodes --steps tokens from the same cache state and reports per-step latency.
#include <chrono>
#include <cstdio>
#include <random>

#include "tools/commands.h"
#include "tools/common.h"

namespace {
int run(int argc, char** argv) {
  using namespace dsa;
  using clk = std::chrono::steady_clock;
  CLI::App app{"Decode latency: DSA (sparse) vs dense MLA at a given context"};
  tools::EngineFlags ef;
  ef.add(app);
  int64_t ctx = 0, steps = 8, batch = 1;
  app.add_option("--ctx", ctx, "context length (default: 8 x index_topk)");
  app.add_option("--steps", steps, "decode steps per mode")->capture_default_str();
  app.add_option("--batch", batch, "sequences decoded together")->capture_default_str();
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  ef.check_model_dir();
  DSA_CHECK(batch >= 1 && steps >= 1, "--batch and --steps must be at least 1");
  EngineOptions opt = ef.options();
  const ModelConfig cfg = ModelConfig::from_file(ef.model + "/config.json");
  if (ctx == 0) ctx = 8 * cfg.index_topk;
  DSA_CHECK(ctx >= 1 && ctx + steps <= cfg.max_position_embeddings, "--ctx + --steps exceeds the model's context (",
            cfg.max_position_embeddings, ")");
  if (opt.kv_tokens == 0) opt.kv_tokens = batch * (ctx + steps + kKvBlock);  // room for every sequence
  auto eng = Engine::load(ef.model, opt);
  std::mt19937 rng(1);
  std::vector<Sequence> seqs(static_cast<size_t>(batch));
  std::fprintf(stderr, "prefilling %ld x %ld tokens on %s ...\n", long(batch), long(ctx), eng->backend().name().c_str());
  auto tp = clk::now();
  for (auto& s : seqs) {
    std::vector<int32_t> toks(static_cast<size_t>(ctx));
    for (auto& t : toks) t = int32_t(rng() % uint32_t(cfg.vocab_size));
    eng->feed(s, toks);
  }
  eng->backend().synchronize();
  const double prefill_s = std::chrono::duration<double>(clk::now() - tp).count();
  std::printf("prefill: %ld x %ld tokens in %.2f s = %.0f tok/s (%s, chunk %ld)\n", long(batch), long(ctx), prefill_s,
              double(batch * ctx) / prefill_s, tools::run_label(opt).c_str(), long(opt.prefill_chunk));
  std::printf("memory: weights %s, KV cache %s for %ld tokens (%s/token over all layers)\n",
              tools::human_bytes(double(eng->weight_bytes())).c_str(), tools::human_bytes(double(eng->kv().bytes())).c_str(),
              long(opt.kv_tokens), tools::human_bytes(double(eng->kv().bytes()) / double(opt.kv_tokens)).c_str());
  if (std::string m = eng->backend().memory_report(); !m.empty()) std::printf("%s (after prefill)\n", m.c_str());
  std::fflush(stdout);
  double ms[2] = {0, 0};
  const AttentionMode modes[2] = {AttentionMode::Dense, AttentionMode::Sparse};
  for (int m = 0; m < 2; ++m) {
    for (auto& s : seqs) s.len = ctx;  // rewind: both modes decode from the same cache state
    std::vector<Sequence*> ptrs;
    for (auto& s : seqs) ptrs.push_back(&s);
    std::vector<int32_t> ids(size_t(batch), 17), rows;
    for (int64_t i = 0; i < batch; ++i) rows.push_back(int32_t(i));
    double total = 0;
    for (int64_t st = 0; st < steps + 1; ++st) {  // the first step is a warm-up
      Batch b = make_batch(eng->kv(), ptrs, std::vector<int64_t>(size_t(batch), 1));
      Tensor ids_h{ids.data(), DType::I32, {batch}};
      Tensor d_ids = eng->backend().upload(ids_h);
      auto t0 = clk::now();
      Tensor logits = eng->model().forward(d_ids, b, eng->kv(), modes[m], rows);
      eng->backend().synchronize();
      const double dt = std::chrono::duration<double>(clk::now() - t0).count();
      commit_batch(ptrs, b);
      if (st > 0) total += dt;
    }
    ms[m] = total / double(steps) * 1e3;
  }
  std::printf("decode at context %ld, batch %ld, %s, %ld layers, %ld heads, index_topk %ld (prefill %.1f s)\n",
              long(ctx), long(batch), eng->backend().name().c_str(), long(cfg.num_hidden_layers),
              long(cfg.num_attention_heads), long(cfg.index_topk), prefill_s);
  std::printf("  %-36s %10.2f ms/step  %8.1f tok/s\n", tools::attention_label(AttentionMode::Dense).c_str(), ms[0],
              double(batch) * 1e3 / ms[0]);
  std::printf("  %-36s %10.2f ms/step  %8.1f tok/s\n", tools::attention_label(AttentionMode::Sparse).c_str(), ms[1],
              double(batch) * 1e3 / ms[1]);
  std::printf("  DSA decode is %.2fx %s than dense at context %ld (%.1fx index_topk)\n", ms[0] > ms[1] ? ms[0] / ms[1] : ms[1] / ms[0],
              ms[0] > ms[1] ? "faster" : "SLOWER", long(ctx), double(ctx) / double(cfg.index_topk));
  if (std::string m = eng->backend().memory_report(); !m.empty()) std::printf("%s (after decode)\n", m.c_str());
  for (auto& s : seqs) s.release(eng->kv());
  return 0;
}
dsa::tools::Register reg("bench", "decode latency of DSA vs dense MLA at a context (same cache state)", run);
}  // namespace

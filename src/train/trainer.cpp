#include "train/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/tokenizer.h"
#include "model/rope_table.h"
#include "runtime/engine.h"
#include "runtime/perplexity.h"
#include "train/indexer_ckpt.h"
#include "train/layer_tap.h"
#if DSA_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/train/indexer_train.h"
#endif

namespace dsa::train {

namespace fs = std::filesystem;

namespace {

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// BOS text EOS of every manifest file, concatenated in order (the perplexity tool's stream).
std::vector<int32_t> token_stream(const Tokenizer& tok, const std::string& manifest) {
  std::vector<int32_t> s;
  for (const auto& f : manifest_files(manifest)) {
    std::ifstream in(f, std::ios::binary);
    DSA_CHECK(in.good(), f, ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::vector<int32_t> ids = tok.encode(ss.str());
    s.push_back(tok.bos_id());
    s.insert(s.end(), ids.begin(), ids.end());
    s.push_back(tok.eos_id());
  }
  return s;
}

// AdamW state of one layer (fp32, same layout as the parameters).
struct Adam {
  IndexerParams<float> m, v;
};

constexpr char kMagic[8] = {'D', 'S', 'A', 'I', 'T', 'R', 'N', '1'};

struct StateKey {  // what a resumed run must share with the run that saved
  int64_t n_layers, D, QL, Hi, Di, ctx, steps, sparse, topk;
  uint64_t seed;
  bool operator==(const StateKey&) const = default;
};

void save_state(const std::string& path, const StateKey& key, int64_t step, const std::vector<IndexerParams<float>>& P,
                const std::vector<Adam>& A) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    DSA_CHECK(f.good(), tmp, ": cannot write");
    f.write(kMagic, 8);
    f.write(reinterpret_cast<const char*>(&key), sizeof key);
    f.write(reinterpret_cast<const char*>(&step), sizeof step);
    for (size_t l = 0; l < P.size(); ++l)
      for (const IndexerParams<float>* q : {&P[l], &A[l].m, &A[l].v})
        for (const std::vector<float>* v : q->parts())
          f.write(reinterpret_cast<const char*>(v->data()), std::streamsize(v->size() * sizeof(float)));
    DSA_CHECK(f.good(), tmp, ": write failed");
  }
  fs::rename(tmp, path);
}

int64_t load_state(const std::string& path, const StateKey& key, std::vector<IndexerParams<float>>& P, std::vector<Adam>& A) {
  std::ifstream f(path, std::ios::binary);
  DSA_CHECK(f.good(), path, ": cannot open (nothing to resume)");
  char magic[8];
  StateKey k{};
  int64_t step = 0;
  f.read(magic, 8);
  f.read(reinterpret_cast<char*>(&k), sizeof k);
  f.read(reinterpret_cast<char*>(&step), sizeof step);
  DSA_CHECK(f.good() && std::equal(magic, magic + 8, kMagic), path, ": not a train-indexer state file");
  DSA_CHECK(k == key, path, ": saved by a run with other options (model shape, --ctx, --steps, --stage, --topk, --seed)");
  for (size_t l = 0; l < P.size(); ++l)
    for (IndexerParams<float>* q : {&P[l], &A[l].m, &A[l].v})
      for (std::vector<float>* v : q->parts())
        f.read(reinterpret_cast<char*>(v->data()), std::streamsize(v->size() * sizeof(float)));
  DSA_CHECK(f.good(), path, ": truncated");
  return step;
}

void adamw(const TrainOptions& o, double lr, int64_t step, IndexerParams<float>& p, IndexerParams<float>& g, Adam& a,
           double clip_scale) {
  const double b1c = 1.0 - std::pow(o.beta1, double(step)), b2c = 1.0 - std::pow(o.beta2, double(step));
  auto P = p.parts();
  auto G = g.parts();
  auto M = a.m.parts();
  auto V = a.v.parts();
  for (size_t k = 0; k < P.size(); ++k) {
    const bool matrix = k == 0 || k == 1 || k == 4;  // wq_b, wk, weights_proj; no decay on k_norm
    float* pp = P[k]->data();
    const float* gg = G[k]->data();
    float* mm = M[k]->data();
    float* vv = V[k]->data();
    const int64_t n = int64_t(P[k]->size());
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      const float gi = float(gg[i] * clip_scale);
      mm[i] = float(o.beta1) * mm[i] + float(1 - o.beta1) * gi;
      vv[i] = float(o.beta2) * vv[i] + float(1 - o.beta2) * gi * gi;
      const double upd = (mm[i] / b1c) / (std::sqrt(vv[i] / b2c) + o.adam_eps);
      pp[i] = float(pp[i] - lr * (upd + (matrix ? o.weight_decay * pp[i] : 0.0)));
    }
  }
}

}  // namespace

double lr_at(const TrainOptions& o, int64_t step) {
  const int64_t W = o.warmup >= 0 ? o.warmup : std::max<int64_t>(1, o.steps / 20);
  if (step <= W) return o.lr * double(step) / double(std::max<int64_t>(W, 1));
  const double x = double(step - W) / double(std::max<int64_t>(1, o.steps - W));
  const double cosv = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, x)));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosv);
}

std::string format_step(const StepLog& s) {
  std::ostringstream os;
  char b[128];
  std::snprintf(b, sizeof b, "step %ld/%ld lr %.2e loss", long(s.step), long(s.steps), s.lr);
  os << b;
  double tot = 0;
  for (double l : s.loss) { std::snprintf(b, sizeof b, " %.4f", l); os << b; tot += l; }
  std::snprintf(b, sizeof b, " (sum %.4f) recall", tot);
  os << b;
  for (double r : s.recall) { std::snprintf(b, sizeof b, " %.3f", r); os << b; }
  std::snprintf(b, sizeof b, " | %.2f s/step %.0f tok/s ETA %.1f min", s.step_s, s.tok_s, s.eta_s / 60.0);
  os << b;
  if (!s.phases.empty()) {
    os << "\n  time:";
    for (const auto& [name, sec] : s.phases) {
      std::snprintf(b, sizeof b, " %s %.4f s;", name.c_str(), sec);
      os << b;
    }
  }
  return os.str();
}

TrainResult train_indexer(const TrainOptions& o, const std::function<void(const StepLog&)>& on_step) {
  DSA_CHECK(!o.model.empty() && (!o.data.empty() || !o.tokens.empty()) && !o.out.empty(),
            "train-indexer: --model, --data and --out are required");
  DSA_CHECK(o.steps > 0 && o.ctx >= 2, "train-indexer: --steps and --ctx must be positive");
  DSA_CHECK(o.device == "cpu" || o.device == "cuda", "train-indexer: --device ", o.device, ": expected cpu or cuda");
#if !DSA_HAVE_CUDA
  DSA_CHECK(o.device == "cpu", "train-indexer --device cuda: this build has no CUDA backend");
#endif
  // The output checkpoint: a copy of the input (patched with the indexer at every save).
  copy_model_dir(o.model, o.out);
  std::string load_dir = o.model;
  if (o.add_indexer) {
    add_indexer_to_dir(o.out, o.add_heads, o.topk > 0 ? o.topk : 2048, o.seed, o.init_std);
    load_dir = o.out;  // the input has no indexer tensors to load
  }
  EngineOptions eo;
  eo.device = o.device;
  eo.threads = o.threads;
  eo.kv_tokens = o.ctx;
  eo.max_batch_tokens = std::max<int64_t>(o.ctx, 8192);
  eo.prefix_cache = false;
  eo.prefill_form = o.absorbed_backbone ? PrefillForm::Mqa : PrefillForm::Mha;
  eo.attention = AttentionMode::Dense;  // the frozen backbone: dense attention (§9.2); see docs/training.md
  auto eng = Engine::load(load_dir, eo);
  const ModelConfig& cfg = eng->config();
  DSA_CHECK(o.ctx <= cfg.max_position_embeddings, "--ctx ", o.ctx, " exceeds the model's context ", cfg.max_position_embeddings);
  const std::vector<int32_t> stream = o.tokens.empty() ? token_stream(Tokenizer::from_dir(o.model), o.data) : o.tokens;
  DSA_CHECK(int64_t(stream.size()) >= o.ctx, o.data, ": ", stream.size(), " tokens, fewer than one window of ", o.ctx);
  const IndexerShape shape = indexer_shape(cfg);
  const int64_t L = cfg.num_hidden_layers, K = o.topk > 0 ? o.topk : cfg.index_topk;
  std::vector<IndexerParams<float>> P(static_cast<size_t>(L)), G(static_cast<size_t>(L));
  std::vector<Adam> A(static_cast<size_t>(L));
  {
    const Checkpoint ck = Checkpoint::open(load_dir);
    for (int64_t l = 0; l < L; ++l) {
      P[size_t(l)] = o.init_random && !o.add_indexer ? random_indexer(shape, o.seed, l, o.init_std) : read_indexer(ck, cfg, l);
      G[size_t(l)].resize(shape);
      A[size_t(l)].m.resize(shape);
      A[size_t(l)].v.resize(shape);
    }
  }
  const StateKey key{L, shape.D, shape.QL, shape.Hi, shape.Di, o.ctx, o.steps, o.sparse, K, o.seed};
  const std::string state_path = (fs::path(o.out) / "train_state.bin").string();
  int64_t step = 0;
  if (o.resume) step = load_state(state_path, key, P, A);
  const Checkpoint out_ck = Checkpoint::open(o.out);
  auto save = [&] {
    save_state(state_path, key, step, P, A);
    std::vector<NamedTensor> ts;
    for (int64_t l = 0; l < L; ++l)
      for (auto& t : encode_indexer(P[size_t(l)], shape, cfg, l, &out_ck)) ts.push_back(std::move(t));
    patch_checkpoint(o.out, ts);
  };
  const Tensor rope = rope_table(cfg, cfg.max_position_embeddings);
  LossOptions lo;
  lo.sparse = o.sparse;
  lo.topk = K;
  std::vector<LayerStats> stats(static_cast<size_t>(L));
  LayerTap tap(eng->backend(), cfg);
#if DSA_HAVE_CUDA
  // --device cuda: the layer's loss and gradient on the GPU from the tap's device tensors (no host copy of
  // the activations); the gradient comes back to the host masters and AdamW below.
  std::unique_ptr<cuda::IndexerTrainer> gpu;
  if (o.device == "cuda") {
    auto* cb = dynamic_cast<cuda::CudaBackend*>(&eng->backend());
    DSA_CHECK(cb, "train-indexer --device cuda: the engine's backend is not the CUDA backend itself (DSA_PROFILE_OPS?)");
    gpu = std::make_unique<cuda::IndexerTrainer>(*cb, shape, o.exact_fp32 ? cuda::TrainPrecision::Fp32
                                                                          : cuda::TrainPrecision::Tf32);
    gpu->set_profiling(o.profile);
  }
#endif
  using Clock = std::chrono::steady_clock;
  double tap_s = 0;  // host time inside the tap this step (the loss + gradient of every layer)
  eng->model().set_attention_tap([&](const AttentionTap& a) {
    const int64_t l = a.layer;
    if (o.profile) eng->backend().synchronize();  // the backbone's queued work counts as the backbone's
    const auto t0 = Clock::now();
    for (std::vector<float>* v : G[size_t(l)].parts()) std::fill(v->begin(), v->end(), 0.0f);
#if DSA_HAVE_CUDA
    if (gpu) {
      stats[size_t(l)] = gpu->loss_grad(a, cfg, rope.ptr<float>(), rope.dim(0), P[size_t(l)], lo, &G[size_t(l)]);
      tap_s += std::chrono::duration<double>(Clock::now() - t0).count();
      return;
    }
#endif
    const LayerInputs<float> in = tap.inputs(a, rope.ptr<float>());
    stats[size_t(l)] = indexer_loss_grad(shape, P[size_t(l)], in, lo, &G[size_t(l)]);
    tap_s += std::chrono::duration<double>(Clock::now() - t0).count();
  });
  TrainResult res;
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t first = step;
  while (step < o.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    tap_s = 0;
    const int64_t s1 = step + 1;
    // The window of step s: a function of (seed, s) only, so a resumed run sees the same data.
    const uint64_t span = uint64_t(stream.size()) - uint64_t(o.ctx) + 1;
    const int64_t off = int64_t(mix64(o.seed * 0x100000001B3ull ^ mix64(uint64_t(s1))) % span);
    std::vector<int32_t> win(stream.begin() + off, stream.begin() + off + o.ctx);
    Sequence seq;
    eng->feed(seq, win, false);
    seq.release(eng->kv());
    StepLog lg;
    lg.step = s1;
    lg.steps = o.steps;
    lg.tokens = o.ctx;
    lg.lr = lr_at(o, s1);
    const auto t_opt = Clock::now();
    for (int64_t l = 0; l < L; ++l) {
      double n2 = 0;
      for (const std::vector<float>* v : G[size_t(l)].parts())
        for (float x : *v) n2 += double(x) * double(x);
      const double gn = std::sqrt(n2), cs = o.clip > 0 && gn > o.clip ? o.clip / gn : 1.0;
      adamw(o, lg.lr, s1, P[size_t(l)], G[size_t(l)], A[size_t(l)], cs);
      lg.loss.push_back(stats[size_t(l)].loss);
      lg.recall.push_back(stats[size_t(l)].recall);
      lg.grad_norm.push_back(gn);
    }
    step = s1;
    const auto t1 = std::chrono::steady_clock::now();
    lg.step_s = std::chrono::duration<double>(t1 - t0).count();
    if (o.profile) {
      const double opt_s = std::chrono::duration<double>(t1 - t_opt).count();
      lg.phases.push_back({"backbone", lg.step_s - tap_s - opt_s});
#if DSA_HAVE_CUDA
      if (gpu)
        for (auto& ph : gpu->take_profile()) lg.phases.push_back(ph);
      else
#endif
        lg.phases.push_back({"indexer loss+grad", tap_s});
      lg.phases.push_back({"optimizer", opt_s});
    }
    const double el = std::chrono::duration<double>(t1 - t_start).count();
    lg.tok_s = double((step - first) * o.ctx) / el;
    lg.eta_s = el / double(step - first) * double(o.steps - step);
    res.log.push_back(lg);
    if (on_step) on_step(lg);
    const bool stop = (o.stop_after > 0 && step - first >= o.stop_after) || (o.time_limit_s > 0 && el >= o.time_limit_s);
    if (step == o.steps || stop || (o.save_every > 0 && step % o.save_every == 0)) save();
    if (stop) break;
  }
  eng->model().set_attention_tap(nullptr);
  if (step == first) save();  // nothing run (e.g. resumed at the end): still write the checkpoint
  res.step = step;
  res.params = std::move(P);
  return res;
}

}  // namespace dsa::train

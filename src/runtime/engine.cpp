#include "runtime/engine.h"

#include <algorithm>

#include "io/safetensors.h"

namespace dsa {

std::unique_ptr<Engine> Engine::load(const std::string& dir, const EngineOptions& opt) {
  auto e = std::unique_ptr<Engine>(new Engine());
  e->opt_ = opt;
  ModelConfig cfg = ModelConfig::from_file(dir + "/config.json");
  Checkpoint ck = Checkpoint::open(dir);
  e->be_ = make_backend(opt.device, opt.threads);
  ModelWeights w = load_weights(ck, cfg, *e->be_);
  const int64_t kv_tokens = opt.kv_tokens > 0 ? opt.kv_tokens : cfg.max_position_embeddings;
  e->kv_ = std::make_unique<KvCache>(*e->be_, cfg.num_hidden_layers, (kv_tokens + kKvBlock - 1) / kKvBlock);
  e->model_ = std::make_unique<DeepseekV32>(std::move(cfg), std::move(w), *e->be_);
  e->model_->set_prefill_form(opt.prefill_form);
  return e;
}

std::vector<float> Engine::feed(Sequence& s, const std::vector<int32_t>& tokens, bool all_logits) {
  const int64_t V = model_->config().vocab_size, n = int64_t(tokens.size());
  DSA_CHECK(n > 0, "feed: no tokens");
  DSA_CHECK(s.len + n <= model_->config().max_position_embeddings, "prompt too long: ", s.len + n,
            " tokens exceed the model's context of ", model_->config().max_position_embeddings);
  const int64_t chunk = opt_.prefill_chunk > 0 ? opt_.prefill_chunk : n;
  std::vector<float> out;
  for (int64_t off = 0; off < n; off += chunk) {
    const int64_t m = std::min(chunk, n - off);
    std::vector<Sequence*> seqs{&s};
    Batch b = make_batch(*kv_, seqs, {m});
    Tensor ids_h{const_cast<int32_t*>(tokens.data() + off), DType::I32, {m}};
    Tensor ids = be_->upload(ids_h);
    std::vector<int32_t> rows;
    if (all_logits) for (int64_t i = 0; i < m; ++i) rows.push_back(int32_t(i));
    else if (off + m == n) rows.push_back(int32_t(m - 1));
    if (rows.empty()) rows.push_back(int32_t(m - 1));  // a chunk in the middle: logits unused
    Tensor logits = model_->forward(ids, b, *kv_, opt_.attention, rows);
    commit_batch(seqs, b);
    if (all_logits || off + m == n) {
      const size_t base = out.size();
      out.resize(base + rows.size() * size_t(V));
      be_->download(logits, out.data() + base);
    }
  }
  be_->synchronize();
  return out;
}

GenerateStats Engine::generate(const std::vector<int32_t>& prompt, const SamplingParams& sp, int64_t max_new,
                               const std::function<bool(int32_t)>& on_token, bool ignore_eos) {
  using clk = std::chrono::steady_clock;
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  Sequence seq;
  Sampler sampler(sp);
  const int64_t V = model_->config().vocab_size;
  const int32_t eos = int32_t(model_->config().eos_token_id);
  auto t0 = clk::now();
  std::vector<float> logits;
  try {
    logits = feed(seq, prompt);
  } catch (...) {
    seq.release(*kv_);
    throw;
  }
  auto t1 = clk::now();
  st.prefill_s = std::chrono::duration<double>(t1 - t0).count();
  st.ttft_s = st.prefill_s;
  auto td = clk::now();
  try {
    for (int64_t i = 0; i < max_new; ++i) {
      const int32_t tok = sampler.sample(logits.data(), V);
      ++st.new_tokens;
      if (i == 0) td = clk::now();
      const bool more = on_token(tok);
      if (!more || (!ignore_eos && tok == eos) || i + 1 == max_new) break;
      if (seq.len + 1 > model_->config().max_position_embeddings) break;
      logits = feed(seq, {tok});
    }
  } catch (...) {
    seq.release(*kv_);
    throw;
  }
  st.decode_s = std::chrono::duration<double>(clk::now() - td).count();
  seq.release(*kv_);
  return st;
}

}  // namespace dsa

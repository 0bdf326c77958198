// dsa generate: prompt (text or token ids) -> streamed tokens, with speed and memory figures.
#include <cstdio>

#include "io/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {
int run(int argc, char** argv) {
  using namespace dsa;
  CLI::App app{"Generate from a model directory"};
  tools::EngineFlags ef;
  ef.add(app);
  std::string prompt, prompt_ids;
  int64_t max_new = 64;
  tools::SamplingFlags sf;
  bool ignore_eos = false, quiet = false;
  auto* p_opt = app.add_option("-p,--prompt", prompt, "prompt text (needs tokenizer.json in the model directory)");
  app.add_option("--prompt-ids", prompt_ids, "prompt as token ids, e.g. \"0 415 2213\"")->excludes(p_opt);
  app.add_option("-n,--max-new", max_new, "tokens to generate (1 .. the model's context)")->capture_default_str();
  sf.add(app);
  app.add_flag("--ignore-eos", ignore_eos, "keep generating after EOS");
  app.add_flag("-q,--quiet", quiet, "do not stream: print the whole text at the end");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  DSA_USAGE_CHECK(!prompt.empty() || !prompt_ids.empty(), "give --prompt TEXT or --prompt-ids IDS");
  {
    const ModelConfig mc = ef.check();
    tools::check_range<int64_t>("-n", max_new, 1, mc.max_position_embeddings, " (the model's context)");
    sf.validate(mc.vocab_size);
  }
  SamplingParams sp = sf.sp;
  const uint64_t seed = sf.seed;

  auto eng = tools::load_engine(ef);
  const Tokenizer* tok = eng->tokenizer();
  std::vector<int32_t> ids;
  if (!prompt_ids.empty()) {
    ids = tools::parse_ids(prompt_ids, eng->config().vocab_size, "--prompt-ids");
  } else {
    DSA_CHECK(tok, ef.model, ": no tokenizer.json — use --prompt-ids");
    ids = tok->encode_with_bos(prompt);
  }
  DSA_USAGE_CHECK(!ids.empty(), "empty prompt");
  const auto& cfg = eng->config();
  RequestParams p;
  p.prompt = ids;
  p.sampling = sp;
  p.sampling.seed = seed;
  p.max_tokens = std::min<int64_t>(max_new, cfg.max_position_embeddings - int64_t(ids.size()));
  p.ignore_eos = ignore_eos;
  p.skip_special_tokens = false;
  const int64_t kv_cap = eng->kv().capacity_tokens();
  DSA_USAGE_CHECK(int64_t(ids.size()) + p.max_tokens <= kv_cap, "the prompt (", ids.size(), " tokens) + -n ", p.max_tokens,
                  " = ", int64_t(ids.size()) + p.max_tokens, " tokens do not fit the KV pool of ", kv_cap,
                  " tokens: lower -n or raise --kv-tokens");
  const RequestId id = eng->add_request(std::move(p));  // checks the ids and the length
  std::fprintf(stderr, "model %s on %s, attention: %s, prompt %zu tokens\n", ef.model.c_str(), eng->backend().name().c_str(),
               tools::run_label(ef.options()).c_str(), ids.size());
  if (tok && !quiet) std::fputs(prompt.empty() ? "" : prompt.c_str(), stdout);
  RequestOutput fin;
  std::string all;  // -q: printed at the end
  while (!fin.finished) {
    for (RequestOutput& o : eng->step()) {
      if (o.id != id) continue;
      std::string piece = o.text;
      if (!tok)
        for (int32_t t : o.tokens) piece += std::to_string(t) + " ";
      if (quiet) all += piece;
      else std::fputs(piece.c_str(), stdout), std::fflush(stdout);
      if (o.finished) fin = std::move(o);
    }
  }
  if (quiet) std::fputs(((tok ? prompt : std::string()) + all).c_str(), stdout);
  std::printf("\n");
  std::fflush(stdout);  // the text ends before the stats line (stderr) in a combined log
  const int64_t ctx = fin.prompt_tokens + fin.completion_tokens;
  const double ttft = fin.first_token_s > 0 ? fin.first_token_s - fin.arrival_s : 0;
  const double dec = fin.first_token_s > 0 ? fin.finish_s - fin.first_token_s : 0;
  std::fprintf(stderr,
               "prompt %ld tok | generated %ld tok (%s) | TTFT %.3f s | prefill %.1f tok/s | decode %.2f tok/s\n"
               "memory: weights %s, KV pool %s for %ld tokens (%s/token, %s for this %ld-token sequence)\n",
               long(fin.prompt_tokens), long(fin.completion_tokens), finish_reason_name(fin.finish), ttft,
               ttft > 0 ? double(fin.prompt_tokens) / ttft : 0.0,
               dec > 0 && fin.completion_tokens > 1 ? double(fin.completion_tokens - 1) / dec : 0.0,
               tools::human_bytes(double(eng->weight_bytes())).c_str(), tools::human_bytes(double(eng->kv().bytes())).c_str(),
               long(eng->kv().capacity_tokens()),
               tools::human_bytes(double(KvCache::bytes_per_token(cfg.num_hidden_layers))).c_str(),
               tools::human_bytes(double(KvCache::bytes_per_token(cfg.num_hidden_layers) * size_t(ctx))).c_str(), long(ctx));
  DSA_CHECK(fin.finish != FinishReason::Error, "generation stopped after ", fin.completion_tokens, " tokens: ", fin.error);
  return 0;
}
dsa::tools::Register reg("generate", "generate text from a prompt (streams tokens, prints speed and memory)", run);
}  // namespace

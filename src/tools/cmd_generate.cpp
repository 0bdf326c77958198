// dsa generate: prompt (text or token ids) -> streamed tokens, with speed and memory figures.
#include <cstdio>
#include <filesystem>

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
  SamplingParams sp;
  bool ignore_eos = false, quiet = false;
  app.add_option("-p,--prompt", prompt, "prompt text (needs tokenizer.json in the model directory)");
  app.add_option("--prompt-ids", prompt_ids, "prompt as token ids, e.g. \"0 415 2213\"");
  app.add_option("-n,--max-new", max_new, "tokens to generate")->capture_default_str();
  app.add_option("--temperature", sp.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-p", sp.top_p, "nucleus sampling")->capture_default_str();
  app.add_option("--top-k", sp.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--seed", sp.seed, "sampling seed")->capture_default_str();
  app.add_flag("--ignore-eos", ignore_eos, "keep generating after EOS");
  app.add_flag("-q,--quiet", quiet, "do not stream tokens");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  ef.check_model_dir();
  DSA_CHECK(!prompt.empty() || !prompt_ids.empty(), "give --prompt TEXT or --prompt-ids IDS");

  std::unique_ptr<Tokenizer> tok;
  if (std::filesystem::exists(ef.model + "/tokenizer.json")) tok = std::make_unique<Tokenizer>(Tokenizer::from_dir(ef.model));
  std::vector<int32_t> ids;
  if (!prompt_ids.empty()) {
    ids = tools::parse_ids(prompt_ids);
  } else {
    DSA_CHECK(tok, ef.model, ": no tokenizer.json — use --prompt-ids");
    ids = tok->encode_with_bos(prompt);
  }
  DSA_CHECK(!ids.empty(), "empty prompt");
  auto eng = Engine::load(ef.model, ef.options());
  const auto& cfg = eng->model().config();
  for (int32_t id : ids) DSA_CHECK(id >= 0 && id < cfg.vocab_size, "prompt token id ", id, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  DSA_CHECK(int64_t(ids.size()) < cfg.max_position_embeddings, "prompt too long: ", ids.size(),
            " tokens; the model's context is ", cfg.max_position_embeddings, " tokens (max_position_embeddings)");
  std::fprintf(stderr, "model %s on %s, attention: %s, prompt %zu tokens\n", ef.model.c_str(), eng->backend().name().c_str(),
               tools::run_label(ef.options()).c_str(), ids.size());
  std::unique_ptr<StreamDecoder> sd;
  if (tok) sd = std::make_unique<StreamDecoder>(*tok);
  if (tok && !quiet) std::fputs(prompt.empty() ? "" : prompt.c_str(), stdout);
  std::vector<int32_t> out;
  GenerateStats st = eng->generate(ids, sp, max_new, [&](int32_t t) {
    out.push_back(t);
    if (!quiet) {
      if (sd) std::fputs(sd->push(t).c_str(), stdout);
      else std::printf("%d ", t);
      std::fflush(stdout);
    }
    return true;
  }, ignore_eos);
  if (!quiet && sd) std::fputs(sd->flush().c_str(), stdout);
  std::printf("\n");
  std::fflush(stdout);  // the text ends before the stats line (stderr) in a combined log
  const int64_t ctx = st.prompt_tokens + st.new_tokens;
  std::fprintf(stderr,
               "prompt %ld tok | generated %ld tok | TTFT %.3f s | prefill %.1f tok/s | decode %.2f tok/s\n"
               "memory: weights %s, KV cache %s allocated (%s/token, %s for this %ld-token sequence)\n",
               long(st.prompt_tokens), long(st.new_tokens), st.ttft_s, st.prefill_tok_s(), st.decode_tok_s(),
               tools::human_bytes(double(eng->weight_bytes())).c_str(), tools::human_bytes(double(eng->kv().bytes())).c_str(),
               tools::human_bytes(double(KvCache::bytes_per_token(cfg.num_hidden_layers))).c_str(),
               tools::human_bytes(double(KvCache::bytes_per_token(cfg.num_hidden_layers) * size_t(ctx))).c_str(), long(ctx));
  return 0;
}
dsa::tools::Register reg("generate", "generate text from a prompt (streams tokens, prints speed and memory)", run);
}  // namespace

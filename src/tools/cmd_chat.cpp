// dsa chat: an interactive conversation. The history is re-encoded each turn with the model's chat
// format (V3.2 DSML or the V3.1-family template, detected from the model directory, --chat-format
// overrides), and the KV cache is reused for the longest common token prefix, so a turn only
// prefills what is new. Output streams through the output parser: reasoning is shown apart from
// the answer and partial tags never leak. Commands: /clear, /think on|off, /system TEXT, /exit.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "io/chat_encoding.h"
#include "io/output_parser.h"
#include "io/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace {

using namespace dsa;
using clk = std::chrono::steady_clock;

struct ChatSession {
  Engine& eng;
  const Tokenizer& tok;
  chat::ChatFormat fmt;
  SamplingParams sp;
  int64_t max_new = 512;
  bool thinking = false, color = false;
  std::string system;
  std::vector<chat::Message> history;
  Sequence seq;
  std::vector<int32_t> cached;  // tokens whose K/V are in seq

  void clear() {
    history.clear();
    seq.release(eng.kv());
    cached.clear();
  }

  void turn(const std::string& user) {
    std::vector<chat::Message> msgs;
    if (!system.empty()) msgs.push_back({chat::Role::kSystem, system});
    msgs.insert(msgs.end(), history.begin(), history.end());
    msgs.push_back({chat::Role::kUser, user});
    chat::EncodeOptions eo;
    eo.thinking = thinking;
    const std::vector<int32_t> prompt = tok.encode(chat::encode_chat(fmt, msgs, eo));
    const int64_t ctx = eng.model().config().max_position_embeddings;
    if (int64_t(prompt.size()) + 1 > ctx) {
      std::printf("[the conversation is %zu tokens, over the model's context of %ld: /clear to start again]\n",
                  prompt.size(), long(ctx));
      return;
    }
    // Reuse the cache for the common prefix; at least one token must be fed to get logits.
    size_t common = 0;
    while (common < cached.size() && common < prompt.size() && cached[common] == prompt[common]) ++common;
    if (common == prompt.size()) --common;
    seq.len = int64_t(common);
    cached.resize(common);
    auto t0 = clk::now();
    std::vector<int32_t> fresh(prompt.begin() + int64_t(common), prompt.end());
    std::vector<float> logits = eng.feed(seq, fresh);
    cached.insert(cached.end(), fresh.begin(), fresh.end());
    const double ttft = std::chrono::duration<double>(clk::now() - t0).count();

    Sampler sampler(sp);
    StreamDecoder sd(tok, /*skip_special=*/false);
    chat::ParseOptions po;
    po.format = fmt;
    po.thinking = thinking;
    chat::StreamParser parser(po);
    std::string reasoning, content;
    bool in_reasoning = false;
    auto show = [&](const std::vector<chat::StreamEvent>& evs) {
      for (auto& e : evs) {
        if (e.kind == chat::StreamEvent::kReasoning) {
          if (!in_reasoning) std::fputs(color ? "\x1b[2m[thinking] " : "[thinking] ", stdout);
          in_reasoning = true;
          reasoning += e.text;
          std::fputs(e.text.c_str(), stdout);
        } else if (e.kind == chat::StreamEvent::kContent) {
          if (in_reasoning) std::fputs(color ? "\x1b[0m\n" : "\n[answer] ", stdout);
          in_reasoning = false;
          content += e.text;
          std::fputs(e.text.c_str(), stdout);
        } else if (e.kind == chat::StreamEvent::kCallBegin) {
          std::printf("\n[tool call %s(", e.text.c_str());
        } else if (e.kind == chat::StreamEvent::kCallArgs) {
          std::fputs(e.text.c_str(), stdout);
        } else if (e.kind == chat::StreamEvent::kCallEnd) {
          std::fputs(")]\n", stdout);
        }
      }
      std::fflush(stdout);
    };
    const int32_t eos = tok.eos_id();
    int64_t n = 0;
    auto td = clk::now();
    for (; n < max_new; ++n) {
      const int32_t t = sampler.sample(logits.data(), eng.model().config().vocab_size);
      show(parser.feed(sd.push(t)));
      if (t == eos || seq.len + 1 >= ctx) { ++n; break; }
      cached.push_back(t);
      logits = eng.feed(seq, {t});
    }
    show(parser.feed(sd.flush()));
    show(parser.finish());
    if (color && in_reasoning) std::fputs("\x1b[0m", stdout);
    const double dec = std::chrono::duration<double>(clk::now() - td).count();
    std::printf("\n%s[%zu prompt tokens (%zu new), TTFT %.2f s, %ld tokens at %.1f tok/s]%s\n", color ? "\x1b[2m" : "",
                prompt.size(), fresh.size(), ttft, long(n), n > 1 ? double(n - 1) / dec : 0.0, color ? "\x1b[0m" : "");
    chat::Message a{chat::Role::kAssistant, content};
    a.reasoning_content = reasoning;
    history.push_back({chat::Role::kUser, user});
    history.push_back(a);
  }
};

int run(int argc, char** argv) {
  CLI::App app{"Interactive chat (history, /clear, /think on|off, /system TEXT, /exit)"};
  tools::EngineFlags ef;
  ef.add(app);
  std::string format, system;
  SamplingParams sp;
  sp.temperature = 0.7f;
  sp.top_p = 0.95f;
  int64_t max_new = 512;
  bool think = false, no_color = false;
  app.add_option("--chat-format", format, "v32 (DSML) or v31 (V3.1-family template); default: from the model directory");
  app.add_option("--system", system, "system prompt");
  app.add_flag("--think", think, "start with thinking mode on");
  app.add_option("-n,--max-new", max_new, "maximum tokens per answer")->capture_default_str();
  app.add_option("--temperature", sp.temperature)->capture_default_str();
  app.add_option("--top-p", sp.top_p)->capture_default_str();
  app.add_option("--top-k", sp.top_k)->capture_default_str();
  app.add_option("--seed", sp.seed)->capture_default_str();
  app.add_flag("--no-color", no_color, "plain output");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  ef.check_model_dir();
  Tokenizer tok = Tokenizer::from_dir(ef.model);
  const chat::ChatFormat fmt = format.empty() ? chat::detect_chat_format(ef.model) : chat::chat_format_from_name(format);
  auto eng = Engine::load(ef.model, ef.options());
  ChatSession s{*eng, tok, fmt, sp, max_new, think, !no_color && isatty(1), system, {}, {}, {}};
  std::fprintf(stderr, "dsa chat: %s on %s, format %s, attention %s. /help for commands.\n", ef.model.c_str(),
               eng->backend().name().c_str(), chat::chat_format_name(fmt), tools::attention_label(ef.options().attention).c_str());
  std::string line;
  while (true) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/clear") { s.clear(); std::puts("[history cleared]"); continue; }
    if (line == "/think on" || line == "/think off") { s.thinking = line == "/think on"; std::printf("[thinking %s]\n", s.thinking ? "on" : "off"); continue; }
    if (line.rfind("/system ", 0) == 0) { s.system = line.substr(8); std::puts("[system prompt set]"); continue; }
    if (line == "/help") { std::puts("/clear  /think on|off  /system TEXT  /exit"); continue; }
    try {
      s.turn(line);
    } catch (const Error& e) {
      std::printf("\n[error: %s]\n", e.what());
    }
  }
  return 0;
}
dsa::tools::Register reg("chat", "interactive chat with history, thinking on/off and streaming output", run);
}  // namespace

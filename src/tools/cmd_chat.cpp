// dsa chat: an interactive conversation. The history is re-encoded each turn with the model's chat
// format (V3.2 DSML or the V3.1-family template, detected from the model directory, --chat-format
// overrides) and sent as one request; the engine's prefix cache reuses the blocks earlier turns
// computed, so a turn prefills little more than what is new. Output streams through the output
// parser: reasoning is shown apart from the answer and partial tags never leak. Commands: /clear,
// /think on|off, /system TEXT, /exit; Ctrl-C stops the current answer and keeps the history (the
// stopped answer included); at the prompt Ctrl-C (exit 130) or Ctrl-D (exit 0) leaves.
#include <unistd.h>

#include <atomic>
#include <csignal>
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

std::atomic<bool> g_interrupt{false};
std::atomic<bool> g_generating{false};
extern "C" void on_sigint(int) {
  if (!g_generating.load()) {  // at the prompt: Ctrl-C leaves (exit 130, as a shell's 128 + SIGINT)
    (void)!::write(1, "\n", 1);
    _exit(130);
  }
  g_interrupt = true;  // during an answer: stop the answer, keep the history
}

// A turn counts as "answering" from the moment it starts encoding until it returns, so a Ctrl-C in
// that time stops the answer rather than the chat, however the turn ends.
struct Answering {
  Answering() {
    g_interrupt = false;
    g_generating = true;
  }
  ~Answering() { g_generating = false; }
};

struct ChatSession {
  Engine& eng;
  const Tokenizer& tok;
  chat::ChatFormat fmt;
  SamplingParams sp;
  int64_t max_new = 512;
  bool thinking = false, color = false;
  std::string system;
  std::vector<chat::Message> history;
  uint64_t turn_no = 0;

  void clear() { history.clear(); }

  void turn(const std::string& user) {
    Answering answering;
    std::vector<chat::Message> msgs;
    if (!system.empty()) msgs.push_back({chat::Role::kSystem, system});
    msgs.insert(msgs.end(), history.begin(), history.end());
    msgs.push_back({chat::Role::kUser, user});
    chat::EncodeOptions eo;
    eo.thinking = thinking;
    const std::vector<int32_t> prompt = tok.encode(chat::encode_chat(fmt, msgs, eo));
    const int64_t ctx = std::min(eng.config().max_position_embeddings, eng.kv().capacity_tokens());
    if (int64_t(prompt.size()) + 1 > ctx) {
      std::printf("[the conversation is %zu tokens, over the %ld tokens of context (the model's context or the KV pool, "
                  "--kv-tokens): /clear to start again]\n",
                  prompt.size(), long(ctx));
      return;
    }
    // The whole conversation is the prompt; the prefix cache finds the blocks earlier turns computed.
    RequestParams p;
    p.prompt = prompt;
    p.sampling = sp;
    if (sp.seed) p.sampling.seed = *sp.seed + turn_no++;
    p.max_tokens = std::min<int64_t>(max_new, ctx - int64_t(prompt.size()));
    p.skip_special_tokens = false;  // the output parser needs the tags
    const RequestId id = eng.add_request(std::move(p));

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
    RequestOutput fin;
    bool cancelled = false;
    while (!fin.finished) {
      if (g_interrupt && !cancelled) {
        eng.cancel(id);
        cancelled = true;
      }
      for (RequestOutput& o : eng.step()) {
        if (o.id != id) continue;
        show(parser.feed(o.text));
        if (o.finished) fin = std::move(o);
      }
    }
    show(parser.finish());
    if (color && in_reasoning) std::fputs("\x1b[0m", stdout);
    if (fin.finish == FinishReason::Error) {
      std::printf("\n[error: %s; the history is kept, /clear starts a new conversation]\n", fin.error.c_str());
      return;
    }
    const double ttft = fin.first_token_s > 0 ? fin.first_token_s - fin.arrival_s : 0;
    const double dec = fin.first_token_s > 0 ? fin.finish_s - fin.first_token_s : 0;
    const int64_t n = fin.completion_tokens;
    std::printf("\n%s[%s%ld prompt tokens (%ld cached), TTFT %.2f s, %ld tokens at %.1f tok/s]%s\n", color ? "\x1b[2m" : "",
                cancelled ? "stopped; " : "", long(fin.prompt_tokens), long(fin.cached_tokens), ttft, long(n),
                n > 1 && dec > 0 ? double(n - 1) / dec : 0.0, color ? "\x1b[0m" : "");
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
  tools::SamplingFlags sf;
  sf.sp.temperature = 0.7f;
  sf.sp.top_p = 0.95f;
  int64_t max_new = 512;
  bool think = false, no_color = false;
  app.add_option("--chat-format", format, "v32 (DSML) or v31 (V3.1-family template); default: from the model directory");
  app.add_option("--system", system, "system prompt");
  app.add_flag("--think", think, "start with thinking mode on");
  app.add_option("-n,--max-new", max_new, "maximum tokens per answer")->capture_default_str();
  sf.add(app);
  app.add_flag("--no-color", no_color, "plain output");
  if (int rc = tools::parse(app, argc, argv); rc >= 0) return rc;
  {
    const ModelConfig mc = ef.check();
    tools::check_range<int64_t>("-n", max_new, 1, mc.max_position_embeddings, " (the model's context)");
    sf.validate(mc.vocab_size);
  }
  SamplingParams sp = sf.sp;
  sp.seed = sf.seed;  // turn i draws with seed + i
  Tokenizer tok = Tokenizer::from_dir(ef.model);
  const chat::ChatFormat fmt = format.empty() ? chat::detect_chat_format(ef.model) : chat::chat_format_from_name(format);
  auto eng = tools::load_engine(ef);
  ChatSession s{*eng, tok, fmt, sp, max_new, think, !no_color && isatty(1), system, {}, 0};
  std::signal(SIGINT, on_sigint);
  std::fprintf(stderr, "dsa chat: %s on %s, format %s, attention %s. /help for commands.\n", ef.model.c_str(),
               eng->backend().name().c_str(), chat::chat_format_name(fmt), tools::attention_label(ef.options().attention).c_str());
  std::string line;
  while (true) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line)) {  // Ctrl-D (end of input) leaves
      std::puts("");
      break;
    }
    if (line.empty()) continue;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/clear") { s.clear(); std::puts("[history cleared]"); continue; }
    if (line == "/think on" || line == "/think off") { s.thinking = line == "/think on"; std::printf("[thinking %s]\n", s.thinking ? "on" : "off"); continue; }
    if (line.rfind("/system ", 0) == 0) { s.system = line.substr(8); std::puts("[system prompt set]"); continue; }
    if (line.rfind("/think", 0) == 0) { std::printf("[%s: /think takes on or off]\n", line.c_str()); continue; }
    if (line == "/system") { std::puts("[/system takes the prompt text: /system You are ...]"); continue; }
    if (line == "/help") { std::puts("/clear  /think on|off  /system TEXT  /exit   (Ctrl-C stops an answer; at the prompt Ctrl-C or Ctrl-D leaves)"); continue; }
    if (line[0] == '/') { std::printf("[unknown command %s; /help lists them]\n", line.c_str()); continue; }
    try {
      s.turn(line);
    } catch (const Error& e) {
      std::printf("\n[error: %s; the history is kept, /clear starts a new conversation]\n", e.what());
    }
  }
  return 0;
}
dsa::tools::Register reg("chat", "interactive chat with history, thinking on/off and streaming output", run);
}  // namespace

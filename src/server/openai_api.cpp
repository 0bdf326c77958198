#include "server/openai_api.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "core/error.h"

namespace dsa::server {

// ---- errors -------------------------------------------------------------------------------------

static std::string type_for(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string code_, std::string type_)
    : std::runtime_error(message), status(status_), param(std::move(param_)), code(std::move(code_)), type(std::move(type_)) {}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string error_body(int status, const std::string& message, const std::string& param, const std::string& code,
                       const std::string& type) {
  json e = json::object();
  e["message"] = message;
  e["type"] = type.empty() ? type_for(status) : type;
  e["param"] = param.empty() ? json(nullptr) : json(param);
  e["code"] = code.empty() ? json(nullptr) : json(code);
  json b = json::object();
  b["error"] = std::move(e);
  return dump(b);
}

std::string error_body(const ApiError& e) { return error_body(e.status, e.what(), e.param, e.code, e.type); }

// ---- field access with clear messages -----------------------------------------------------------

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg, const std::string& code = "") {
  throw ApiError(400, msg, param, code);
}

std::string shown(const json& v) {
  std::string s = dump(v);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// The member, or nullptr when absent or null (OpenAI treats null as "not given").
const json* field(const json& b, const char* key) {
  auto it = b.find(key);
  return it == b.end() || it->is_null() ? nullptr : &*it;
}

bool get_bool(const json& b, const char* key, bool def) {
  const json* v = field(b, key);
  if (!v) return def;
  if (!v->is_boolean()) bad(key, std::string("`") + key + "` must be a boolean, got " + shown(*v));
  return v->get<bool>();
}

// Integers, also written as 5.0 (what JavaScript and Python clients sometimes send).
std::optional<int64_t> get_int(const json& b, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(b, key);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)) x = INT64_MAX;
    else x = v->get<int64_t>();
  } else if (v->is_number_float() && std::isfinite(v->get<double>()) && v->get<double>() == std::floor(v->get<double>()) &&
             std::fabs(v->get<double>()) < 9.0e18) {
    x = int64_t(v->get<double>());
  } else {
    bad(key, std::string("`") + key + "` must be an integer, got " + shown(*v));
  }
  if (x < lo || x > hi)
    bad(key, std::string("`") + key + "` must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
                 shown(*v));
  return x;
}

std::optional<double> get_number(const json& b, const char* key, double lo, double hi, bool lo_open = false) {
  const json* v = field(b, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(key, std::string("`") + key + "` must be a number, got " + shown(*v));
  const double x = v->get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi)) {
    char range[96];
    std::snprintf(range, sizeof range, "%s%g, %g]", lo_open ? "(" : "[", lo, hi);
    bad(key, std::string("`") + key + "` must be in " + range + ", got " + shown(*v));
  }
  return x;
}

void check_model(const json& b, const ModelInfo& m) {
  const json* v = field(b, "model");
  if (!v) return;  // OpenAI requires it; a single-model server can do without
  if (!v->is_string()) bad("model", "`model` must be a string, got " + shown(*v));
  const std::string s = v->get<std::string>();
  if (s != m.name && s != m.dir)
    throw ApiError(404, "The model `" + s + "` does not exist. This server serves `" + m.name + "`.", "model",
                   "model_not_found");
}

// An unsupported feature with a non-default value gets a 400 rather than being silently ignored.
void reject_nonzero(const json& b, const char* key, double neutral) {
  if (auto x = get_number(b, key, -1e9, 1e9); x && *x != neutral)
    bad(key, std::string("`") + key + "` is not supported by this server (only " + shown(json(neutral)) + ")");
}

void parse_sampling(const json& b, const ModelInfo& m, ApiRequest& r) {
  SamplingParams& s = r.params.sampling;
  s.temperature = float(get_number(b, "temperature", 0, 2).value_or(m.temperature));
  s.top_p = float(get_number(b, "top_p", 0, 1, true).value_or(m.top_p));
  const int64_t k = get_int(b, "top_k", -1, int64_t(1) << 31).value_or(m.top_k);
  s.top_k = k < 0 ? 0 : k;  // vLLM's -1 and 0 both mean "off"
  if (auto seed = get_int(b, "seed", INT64_MIN, INT64_MAX)) s.seed = uint64_t(*seed);
  reject_nonzero(b, "presence_penalty", 0);
  reject_nonzero(b, "frequency_penalty", 0);
  reject_nonzero(b, "repetition_penalty", 1);
  reject_nonzero(b, "min_p", 0);
  if (const json* lb = field(b, "logit_bias")) {
    if (!lb->is_object()) bad("logit_bias", "`logit_bias` must be an object, got " + shown(*lb));
    if (!lb->empty()) bad("logit_bias", "`logit_bias` is not supported by this server");
  }
}

void parse_stop(const json& b, const ModelInfo& m, ApiRequest& r) {
  if (const json* st = field(b, "stop")) {
    std::vector<std::string> v;
    if (st->is_string()) {
      v.push_back(st->get<std::string>());
    } else if (st->is_array()) {
      for (const json& x : *st) {
        if (!x.is_string()) bad("stop", "`stop` must be a string or a list of strings, got an element " + shown(x));
        v.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "`stop` must be a string or a list of strings, got " + shown(*st));
    }
    if (v.size() > m.max_stop) bad("stop", "`stop` has " + std::to_string(v.size()) + " entries; at most " + std::to_string(m.max_stop));
    for (const auto& s : v) {
      if (s.empty()) bad("stop", "`stop` strings must not be empty");
      if (s.size() > 1024) bad("stop", "a `stop` string is longer than 1024 bytes");
    }
    r.params.stop = std::move(v);
  }
  if (const json* ids = field(b, "stop_token_ids")) {
    if (!ids->is_array()) bad("stop_token_ids", "`stop_token_ids` must be a list of token ids");
    for (const json& x : *ids) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= m.vocab)
        bad("stop_token_ids", "`stop_token_ids` entries must be token ids in [0, " + std::to_string(m.vocab) + "), got " + shown(x));
      r.params.stop_token_ids.push_back(int32_t(x.get<int64_t>()));
    }
  }
  r.params.ignore_eos = get_bool(b, "ignore_eos", false);
}

void parse_common(const json& b, const ModelInfo& m, ApiRequest& r) {
  check_model(b, m);
  r.n = int(get_int(b, "n", 1, m.max_n).value_or(1));
  r.stream = get_bool(b, "stream", false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "`stream_options` must be an object, got " + shown(*so));
    if (!r.stream) bad("stream_options", "`stream_options` is only allowed when `stream` is true");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  parse_sampling(b, m, r);
  parse_stop(b, m, r);
}

std::optional<int64_t> parse_max_tokens(const json& b, bool chat, int64_t lo) {
  std::optional<int64_t> mt = get_int(b, "max_tokens", lo, INT64_MAX);
  if (chat)
    if (auto mct = get_int(b, "max_completion_tokens", lo, INT64_MAX)) mt = mct;  // the newer name wins
  return mt;
}

// Prompt length and max_tokens against the context and the pool; fills prompt.max_tokens.
void resolve_length(ApiRequest::Prompt& p, std::optional<int64_t> max_tokens, const ModelInfo& m, const char* what) {
  const int64_t P = int64_t(p.ids.size());
  const int64_t limit = std::min(m.context, m.kv_tokens);
  const std::string where = std::string(what);
  if (P == 0) bad(where, "the prompt is empty");
  if (P >= limit && max_tokens != 0)
    bad(where,
        "This model's maximum context length is " + std::to_string(limit) + " tokens. However, your " + where +
            " resulted in " + std::to_string(P) + " tokens. Please reduce the length of the " + where + ".",
        "context_length_exceeded");
  if (max_tokens) {
    if (P + *max_tokens > m.context)
      bad(max_tokens == 0 ? where : "max_tokens",
          "This model's maximum context length is " + std::to_string(m.context) + " tokens. However, you requested " +
              std::to_string(P + *max_tokens) + " tokens (" + std::to_string(P) + " in the " + where + ", " +
              std::to_string(*max_tokens) + " in the completion). Please reduce the length of the " + where +
              " or the completion.",
          "context_length_exceeded");
    if (P + *max_tokens > m.kv_tokens + 1)  // the last token is never fed back
      bad("max_tokens", "the KV cache holds " + std::to_string(m.kv_tokens) + " tokens; " + std::to_string(P) + " in the " +
                            where + " plus " + std::to_string(*max_tokens) + " to generate do not fit (lower max_tokens, or run the "
                            "server with a larger --kv-memory / --kv-tokens)",
          "context_length_exceeded");
    p.max_tokens = *max_tokens;
  } else {
    p.max_tokens = limit - P;
  }
}

constexpr int kMaxDepth = 100;

json parse_body(const std::string& body) {
  json b;
  try {
    // Deeper nesting is refused while parsing: printing, copying or rendering such a value recurses
    // once per level and would overflow a thread's stack.
    b = json::parse(body, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth)
        throw ApiError(400, "the request body nests JSON deeper than " + std::to_string(kMaxDepth) + " levels");
      return true;
    });
  } catch (const json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, ..." -> "parse error at line 1, ..."
    std::string w = e.what();
    if (size_t p = w.find("] "); p != std::string::npos) w = w.substr(p + 2);
    throw ApiError(400, "the request body is not valid JSON: " + w);
  }
  if (!b.is_object()) throw ApiError(400, "the request body must be a JSON object, got " + std::string(b.type_name()));
  return b;
}

void check_tools(const json& b) {
  const json* tools = field(b, "tools");
  if (!tools) return;
  if (!tools->is_array()) bad("tools", "`tools` must be a list, got " + shown(*tools));
  for (size_t i = 0; i < tools->size(); ++i) {
    const json& t = (*tools)[i];
    const std::string at = "tools[" + std::to_string(i) + "]";
    if (!t.is_object()) bad(at, "`" + at + "` must be an object");
    if (const json* ty = field(t, "type"); !ty || !ty->is_string() || ty->get<std::string>() != "function")
      bad(at + ".type", "`" + at + ".type` must be \"function\"");
    const json* f = field(t, "function");
    if (!f || !f->is_object()) bad(at + ".function", "`" + at + ".function` must be an object");
    const json* name = field(*f, "name");
    if (!name || !name->is_string() || name->get<std::string>().empty())
      bad(at + ".function.name", "`" + at + ".function.name` must be a non-empty string");
    if (const json* d = field(*f, "description"); d && !d->is_string())
      bad(at + ".function.description", "`" + at + ".function.description` must be a string");
    if (const json* p = field(*f, "parameters"); p && !p->is_object())
      bad(at + ".function.parameters", "`" + at + ".function.parameters` must be a JSON Schema object");
  }
}

// tool_choice: "none" | "auto" | "required" | {"type": "function", "function": {"name": N}}. Returns
// the named function ("" otherwise) and sets `required`.
std::string check_tool_choice(const json& b, bool& required) {
  required = false;
  const json* tc = field(b, "tool_choice");
  if (!tc) return "";
  const json* tools = field(b, "tools");
  const bool have = tools && tools->is_array() && !tools->empty();
  if (tc->is_string()) {
    const std::string s = tc->get<std::string>();
    if (s == "none" || s == "auto") return "";
    if (s == "required") {
      if (!have) bad("tool_choice", "`tool_choice` \"required\" needs a non-empty `tools` list");
      required = true;
      return "";
    }
    bad("tool_choice", "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": "
                       "{\"name\": ...}}, got " + shown(*tc));
  }
  if (!tc->is_object()) bad("tool_choice", "`tool_choice` must be a string or an object, got " + shown(*tc));
  const json* f = field(*tc, "function");
  const json* ty = field(*tc, "type");
  if (!ty || !ty->is_string() || ty->get<std::string>() != "function" || !f || !f->is_object() || !field(*f, "name") ||
      !(*f)["name"].is_string())
    bad("tool_choice", "`tool_choice` as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
  const std::string name = (*f)["name"].get<std::string>();
  bool found = false;
  if (have)
    for (const json& t : *tools) found = found || t["function"]["name"] == name;
  if (!found) bad("tool_choice", "`tool_choice` names the function `" + name + "`, which is not in `tools`");
  required = true;
  return name;
}

// The start of an assistant tool call in the model's own format: the prompt ends with it so that
// generation continues inside the call (the model cannot leave it out). Named: the call header too.
std::string forced_call_prefix(chat::ChatFormat f, const std::string& name) {
  if (f == chat::ChatFormat::kV32) {
    std::string s = "\n\n" + std::string(chat::kDsmlCallsOpen) + "\n" + std::string(chat::kDsmlInvokeOpen) + " name=\"";
    if (!name.empty()) s += name + "\">\n";
    return s;
  }
  std::string s = std::string(chat::kToolCallsBegin) + std::string(chat::kToolCallBegin);
  if (!name.empty()) s += name + std::string(chat::kToolSep);
  return s;
}

void check_messages(const json& b, const ModelInfo& m) {
  const json* msgs = field(b, "messages");
  if (!msgs) bad("messages", "`messages` is required");
  if (!msgs->is_array()) bad("messages", "`messages` must be a list, got " + shown(*msgs));
  if (msgs->empty()) bad("messages", "`messages` must not be empty");
  if (msgs->size() > m.max_messages)
    bad("messages", "`messages` has " + std::to_string(msgs->size()) + " entries; at most " + std::to_string(m.max_messages));
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& x = (*msgs)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!x.is_object()) bad(at, "`" + at + "` must be an object, got " + shown(x));
    const json* role = field(x, "role");
    if (!role || !role->is_string()) bad(at + ".role", "`" + at + ".role` must be a string");
    const std::string r = role->get<std::string>();
    if (r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer")
      bad(at + ".role", "`" + at + ".role` must be one of system, user, assistant, tool, developer; got " + shown(*role));
    if (const json* c = field(x, "content"); c && !c->is_string() && !c->is_array())
      bad(at + ".content", "`" + at + ".content` must be a string or a list of content parts, got " + shown(*c));
  }
}

}  // namespace

// ---- requests -----------------------------------------------------------------------------------

std::vector<RequestParams> ApiRequest::engine_requests() const {
  std::vector<RequestParams> out;
  for (const Prompt& p : prompts)
    for (int i = 0; i < n; ++i) {
      RequestParams q = params;
      q.prompt = p.ids;
      q.max_tokens = p.max_tokens;
      // Stop strings are matched on the engine's text; otherwise the choice detokenises on its HTTP
      // thread, off the engine thread's step (docs/server.md "Overhead").
      q.detokenize = !q.stop.empty();
      if (q.sampling.seed) q.sampling.seed = *q.sampling.seed + uint64_t(i);  // n samples, not n copies
      out.push_back(std::move(q));
    }
  return out;
}

ApiRequest parse_chat_request(const std::string& body, const ModelInfo& m) {
  const json b = parse_body(body);
  ApiRequest r;
  r.kind = ApiKind::Chat;
  check_messages(b, m);
  parse_common(b, m, r);
  r.logprobs = get_bool(b, "logprobs", false);
  r.top_logprobs = int(get_int(b, "top_logprobs", 0, 20).value_or(0));
  if (r.top_logprobs > 0 && !r.logprobs) bad("top_logprobs", "`top_logprobs` needs `logprobs` set to true");
  r.params.top_logprobs = r.logprobs ? r.top_logprobs : 0;
  // The output parser needs the tags in the text; EOS never reaches it (the engine stops on it).
  r.params.skip_special_tokens = get_bool(b, "skip_special_tokens", false);
  if (const json* rf = field(b, "response_format")) {
    if (!rf->is_object() || !field(*rf, "type") || !(*rf)["type"].is_string())
      bad("response_format", "`response_format` must be an object with a string `type`");
    if ((*rf)["type"] != "text")
      bad("response_format", "`response_format` " + shown((*rf)["type"]) + " is not supported by this server (only \"text\")");
  }
  if (const json* k = field(b, "chat_template_kwargs")) {
    if (!k->is_object()) bad("chat_template_kwargs", "`chat_template_kwargs` must be an object, got " + shown(*k));
    for (const char* key : {"thinking", "enable_thinking"})
      if (const json* t = field(*k, key); t && !t->is_boolean())
        bad("chat_template_kwargs", std::string("`chat_template_kwargs.") + key + "` must be a boolean, got " + shown(*t));
  }
  if (const json* t = field(b, "thinking")) {
    const bool ok = t->is_boolean() || (t->is_object() && field(*t, "type") && (*t)["type"].is_string() &&
                                        ((*t)["type"] == "enabled" || (*t)["type"] == "disabled"));
    if (!ok) bad("thinking", "`thinking` must be {\"type\": \"enabled\"} or {\"type\": \"disabled\"}, got " + shown(*t));
  }
  check_tools(b);
  bool required = false;
  const std::string named = check_tool_choice(b, required);

  chat::ChatRequest cr;
  std::string text;
  try {
    cr = chat::chat_request_from_openai(b, m.default_thinking);
    chat::EncodeOptions eo;
    eo.thinking = cr.thinking;
    text = chat::encode_chat(m.format, cr.messages, eo);
  } catch (const Error& e) {
    std::string w = e.what();
    if (w.rfind("chat: ", 0) == 0) w = w.substr(6);
    bad("messages", "invalid `messages`: " + w);
  }
  r.thinking = cr.thinking;
  if (required) {
    // A forced call skips the reasoning: the prompt closes it first.
    r.forced = (r.thinking ? std::string(chat::kThinkClose) : "") + forced_call_prefix(m.format, named);
  }
  if (const json* s = field(b, "scripted_reply")) {
    if (!m.allow_scripted) bad("scripted_reply", "`scripted_reply` needs the server flag --allow-scripted-replies (testing only)");
    if (!s->is_string() || s->get<std::string>().empty()) bad("scripted_reply", "`scripted_reply` must be a non-empty string");
    if (r.logprobs) bad("scripted_reply", "`scripted_reply` cannot be combined with `logprobs`");
    r.scripted = s->get<std::string>();
    r.scripted_ids = m.tok->encode(r.scripted);
  }
  ApiRequest::Prompt p;
  p.ids = m.tok->encode(text + r.forced);  // the text starts with BOS already
  resolve_length(p, parse_max_tokens(b, true, 1), m, "messages");
  if (!r.scripted.empty()) {
    // The engine runs as usual; its tokens are replaced by the script's, one for one.
    p.max_tokens = std::min<int64_t>(p.max_tokens, int64_t(r.scripted_ids.size()));
    r.params.ignore_eos = true;
    r.params.stop.clear();
  }
  r.prompts.push_back(std::move(p));
  return r;
}

ApiRequest parse_completion_request(const std::string& body, const ModelInfo& m) {
  const json b = parse_body(body);
  ApiRequest r;
  r.kind = ApiKind::Completion;
  const json* pr = field(b, "prompt");
  if (!pr) bad("prompt", "`prompt` is required");
  parse_common(b, m, r);
  r.echo = get_bool(b, "echo", false);
  if (auto lp = get_int(b, "logprobs", 0, 20)) {
    r.logprobs = true;
    r.top_logprobs = int(*lp);
  }
  r.params.top_logprobs = r.top_logprobs;
  r.params.prompt_logprobs = r.echo && r.logprobs;
  r.params.skip_special_tokens = get_bool(b, "skip_special_tokens", true);
  if (const json* s = field(b, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    bad("suffix", "`suffix` is not supported by this server");
  if (auto bo = get_int(b, "best_of", 1, 1 << 20); bo && *bo != r.n)
    bad("best_of", "`best_of` other than `n` is not supported by this server");

  auto ids_of = [&](const json& a, const std::string& at) {
    std::vector<int32_t> ids;
    for (const json& x : a) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= m.vocab)
        bad(at, "`" + at + "` token ids must be integers in [0, " + std::to_string(m.vocab) + "), got " + shown(x));
      ids.push_back(int32_t(x.get<int64_t>()));
    }
    return ids;
  };
  auto add_text = [&](const std::string& s) {
    ApiRequest::Prompt p;
    p.ids = m.tok->encode_with_bos(s);
    p.text = s;
    r.prompts.push_back(std::move(p));
  };
  auto add_ids = [&](std::vector<int32_t> ids) {
    ApiRequest::Prompt p;
    p.text = m.tok->decode(ids, r.params.skip_special_tokens);
    p.ids = std::move(ids);
    r.prompts.push_back(std::move(p));
  };
  const char* shape = "`prompt` must be a string, a list of strings, a list of token ids or a list of such lists";
  if (pr->is_string()) {
    add_text(pr->get<std::string>());
  } else if (pr->is_array() && !pr->empty()) {
    if ((*pr)[0].is_number()) {
      add_ids(ids_of(*pr, "prompt"));
    } else {
      for (size_t i = 0; i < pr->size(); ++i) {
        const json& x = (*pr)[i];
        if (x.is_string()) add_text(x.get<std::string>());
        else if (x.is_array()) add_ids(ids_of(x, "prompt[" + std::to_string(i) + "]"));
        else bad("prompt", shape);
      }
    }
  } else {
    bad("prompt", pr->is_array() ? "`prompt` must not be an empty list" : shape);
  }
  const int64_t max_choices = std::max<int64_t>(m.max_n, 64);
  if (int64_t(r.prompts.size()) * r.n > max_choices)
    bad("prompt", std::to_string(r.prompts.size()) + " prompts x n = " + std::to_string(r.n) + " is more than the " +
                      std::to_string(max_choices) + " choices one request may ask for");
  // max_tokens 0 is useful only to score the prompt (echo + logprobs).
  const std::optional<int64_t> mt = parse_max_tokens(b, false, r.echo ? 0 : 1);
  for (auto& p : r.prompts) resolve_length(p, mt, m, "prompt");
  return r;
}

// ---- responses ----------------------------------------------------------------------------------

namespace {

json bytes_of(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(int(c));
  return a;
}

std::string lossy(const std::string& s) {
  std::string out;
  utf8_append_lossy(s, out, true);
  return out;
}

json token_entry(const Tokenizer& tok, int32_t id, float lp) {
  const std::string raw = tok.token_bytes(id);
  json e = json::object();
  e["token"] = lossy(raw);
  e["logprob"] = lp;
  e["bytes"] = bytes_of(raw);
  return e;
}

}  // namespace

Choice::Choice(const ApiRequest& r, const ModelInfo& m, int index, int prompt_index)
    : r_(r), m_(m), index_(index), prompt_(prompt_index) {
  if (r.kind == ApiKind::Chat) {
    chat::ParseOptions po;
    po.format = m.format;
    po.thinking = r.thinking;
    parser_ = std::make_unique<chat::StreamParser>(po);
    // The prompt ends inside a tool call: the parser reads that start as if generated.
    if (!r.forced.empty()) forced_events_ = parser_->feed(r.forced);
  }
  if (!r.scripted.empty()) script_dec_ = std::make_unique<StreamDecoder>(*m.tok, false);
  else if (r.params.stop.empty()) dec_ = std::make_unique<StreamDecoder>(*m.tok, r.params.skip_special_tokens);
}

std::vector<json> Choice::opening() const {
  std::vector<json> out;
  if (r_.kind != ApiKind::Chat) return out;
  json d = json::object();
  d["role"] = "assistant";
  d["content"] = "";
  json c = json::object();
  c["index"] = index_;
  c["delta"] = std::move(d);
  c["logprobs"] = nullptr;
  c["finish_reason"] = nullptr;
  out.push_back(std::move(c));
  return out;
}

size_t Choice::text_bytes(int32_t id) const {
  if (r_.params.skip_special_tokens && m_.tok->is_special(id)) return 0;  // BOS, EOS: no text
  return m_.tok->token_bytes(id).size();
}

void Choice::add_logprobs(const RequestOutput& o) {
  if (!r_.logprobs) return;
  const Tokenizer& tok = *m_.tok;
  for (size_t i = 0; i < o.tokens.size(); ++i) {
    const float lp = i < o.logprobs.size() ? o.logprobs[i] : 0.0f;
    if (r_.kind == ApiKind::Chat) {
      json e = token_entry(tok, o.tokens[i], lp);
      json top = json::array();
      if (i < o.top.size())
        for (const TopLogprob& t : o.top[i]) top.push_back(token_entry(tok, t.token, t.logprob));
      e["top_logprobs"] = std::move(top);
      lp_pending_.push_back(e);
      lp_all_.push_back(std::move(e));
    } else {
      const std::string raw = tok.token_bytes(o.tokens[i]);
      c_tokens_.push_back(lossy(raw));
      c_lps_.push_back(lp);
      json top = json::object();
      if (i < o.top.size())
        for (const TopLogprob& t : o.top[i]) top[lossy(tok.token_bytes(t.token))] = t.logprob;
      c_top_.push_back(std::move(top));
      c_offsets_.push_back(c_offset_);
      c_offset_ += text_bytes(o.tokens[i]);
    }
  }
}

json Choice::take_logprobs() {
  if (!r_.logprobs || (r_.kind == ApiKind::Chat ? lp_pending_.empty() : c_tokens_.empty())) return nullptr;
  json out = json::object();
  if (r_.kind == ApiKind::Chat) {
    out["content"] = std::move(lp_pending_);
    lp_pending_ = json::array();
    return out;
  }
  out["tokens"] = std::move(c_tokens_);
  out["token_logprobs"] = std::move(c_lps_);
  out["top_logprobs"] = std::move(c_top_);
  out["text_offset"] = std::move(c_offsets_);
  c_tokens_ = json::array(), c_lps_ = json::array(), c_top_ = json::array(), c_offsets_ = json::array();
  return out;
}

json Choice::completion_logprobs() const {
  json out = json::object();
  out["tokens"] = c_tokens_;
  out["token_logprobs"] = c_lps_;
  out["top_logprobs"] = c_top_;
  out["text_offset"] = c_offsets_;
  return out;
}

void Choice::events(const std::vector<chat::StreamEvent>& evs, std::vector<json>* chunks) {
  // Consecutive events of one kind go out as one delta.
  json delta;
  int kind = -1, call = -1;
  auto flush = [&] {
    if (kind < 0) return;
    if (chunks) {
      json c = json::object();
      c["index"] = index_;
      c["delta"] = std::move(delta);
      c["logprobs"] = take_logprobs();
      c["finish_reason"] = nullptr;
      chunks->push_back(std::move(c));
    }
    delta = json();
    kind = -1;
  };
  for (const chat::StreamEvent& e : evs) {
    switch (e.kind) {
      case chat::StreamEvent::kReasoning:
      case chat::StreamEvent::kContent: {
        const bool rsn = e.kind == chat::StreamEvent::kReasoning;
        (rsn ? reasoning_ : content_) += e.text;
        const char* key = rsn ? "reasoning_content" : "content";
        if (kind != int(e.kind)) {
          flush();
          kind = int(e.kind);
          delta = json::object();
          delta[key] = "";
        }
        delta[key] = delta[key].get<std::string>() + e.text;
        break;
      }
      case chat::StreamEvent::kCallBegin: {
        flush();
        calls_.push_back({chat::make_tool_call_id(), e.text, "", false});
        json f = json::object();
        f["name"] = e.text;
        f["arguments"] = "";
        json tc = json::object();
        tc["index"] = int(calls_.size()) - 1;
        tc["id"] = calls_.back().id;
        tc["type"] = "function";
        tc["function"] = std::move(f);
        delta = json::object();
        delta["tool_calls"] = json::array({std::move(tc)});
        kind = 100;
        call = int(calls_.size()) - 1;
        break;
      }
      case chat::StreamEvent::kCallArgs: {
        if (calls_.empty()) break;
        calls_.back().arguments += e.text;
        const int k = int(calls_.size()) - 1;
        if (kind == 100 && call == k) {  // the header's delta carries the first fragments
          json& f = delta["tool_calls"][0]["function"];
          f["arguments"] = f["arguments"].get<std::string>() + e.text;
        } else if (kind == 101 && call == k) {
          json& f = delta["tool_calls"][0]["function"];
          f["arguments"] = f["arguments"].get<std::string>() + e.text;
        } else {
          flush();
          json f = json::object();
          f["arguments"] = e.text;
          json tc = json::object();
          tc["index"] = k;
          tc["function"] = std::move(f);
          delta = json::object();
          delta["tool_calls"] = json::array({std::move(tc)});
          kind = 101;
          call = k;
        }
        break;
      }
      case chat::StreamEvent::kCallEnd:
        if (!calls_.empty()) calls_.back().complete = true;
        break;
    }
  }
  flush();
}

void Choice::feed(const RequestOutput& o, std::vector<json>* chunks) {
  if (finished_) return;
  std::string text;
  if (script_dec_) {
    for (size_t i = 0; i < o.tokens.size() && script_pos_ < r_.scripted_ids.size(); ++i)
      text += script_dec_->push(r_.scripted_ids[script_pos_++]);
    if (o.finished) text += script_dec_->flush();
  } else if (dec_) {
    // The engine's text rules (Scheduler::emit_token): the token that stops a request (EOS or a stop
    // token id; with no stop strings nothing else stops it) adds no text; a normal end flushes what
    // the decoder holds back, a cancellation or an error does not.
    for (size_t i = 0; i < o.tokens.size(); ++i) {
      const bool stopper = o.finished && o.finish == FinishReason::Stop && i + 1 == o.tokens.size();
      if (!stopper) text += dec_->push(o.tokens[i]);
    }
    if (o.finished && (o.finish == FinishReason::Stop || o.finish == FinishReason::Length)) text += dec_->flush();
  } else {
    text = o.text;
  }
  if (!forced_events_.empty()) {
    events(forced_events_, chunks);
    forced_events_.clear();
  }
  if (r_.kind == ApiKind::Completion && r_.echo && !echoed_) {
    echoed_ = true;
    // The prompt goes first, with its log-probabilities when asked (the first token has none).
    const ApiRequest::Prompt& p = r_.prompts[size_t(prompt_)];
    text_ = p.text;
    if (r_.logprobs) {
      for (size_t i = 0; i < p.ids.size(); ++i) {
        const std::string raw = m_.tok->token_bytes(p.ids[i]);
        c_tokens_.push_back(lossy(raw));
        c_lps_.push_back(i == 0 || i - 1 >= o.prompt_logprobs.size() ? json(nullptr) : json(o.prompt_logprobs[i - 1]));
        c_top_.push_back(nullptr);
        c_offsets_.push_back(c_offset_);
        c_offset_ += text_bytes(p.ids[i]);
      }
    }
    if (chunks) {
      json c = json::object();
      c["index"] = index_;
      c["text"] = p.text;
      c["logprobs"] = take_logprobs();
      c["finish_reason"] = nullptr;
      chunks->push_back(std::move(c));
    }
  }
  completion_tokens += int64_t(o.tokens.size());
  add_logprobs(o);
  if (r_.kind == ApiKind::Chat) {
    events(parser_->feed(text), chunks);
    if (o.finished) events(parser_->finish(), chunks);
  } else {
    text_ += text;
    if (chunks && !text.empty()) {
      json c = json::object();
      c["index"] = index_;
      c["text"] = text;
      c["logprobs"] = take_logprobs();
      c["finish_reason"] = nullptr;
      chunks->push_back(std::move(c));
    }
  }
  if (!o.finished) return;
  finished_ = true;
  finish_ = o.finish;
  error_ = o.error;
  prompt_tokens = o.prompt_tokens;
  completion_tokens = o.completion_tokens;
  cached_tokens = o.cached_tokens;
  const bool script_done = script_dec_ && script_pos_ == r_.scripted_ids.size();
  const bool complete_call = std::any_of(calls_.begin(), calls_.end(), [](const Call& c) { return c.complete; });
  if (o.finish == FinishReason::Length && !script_done) finish_reason_ = "length";
  else if (r_.kind == ApiKind::Chat && complete_call) finish_reason_ = "tool_calls";
  else finish_reason_ = "stop";
  if (chunks && (o.finish == FinishReason::Stop || o.finish == FinishReason::Length)) {
    json c = json::object();
    c["index"] = index_;
    if (r_.kind == ApiKind::Chat) c["delta"] = json::object();
    else c["text"] = "";
    c["logprobs"] = take_logprobs();
    c["finish_reason"] = finish_reason_;
    chunks->push_back(std::move(c));
  }
}

json Choice::final_object() const {
  json c = json::object();
  c["index"] = index_;
  if (r_.kind == ApiKind::Chat) {
    json msg = json::object();
    msg["role"] = "assistant";
    json calls = json::array();
    for (const Call& k : calls_) {
      if (!k.complete) continue;  // a call cut off by the length limit is dropped
      json f = json::object();
      f["name"] = k.name;
      f["arguments"] = k.arguments;
      json tc = json::object();
      tc["id"] = k.id;
      tc["type"] = "function";
      tc["function"] = std::move(f);
      calls.push_back(std::move(tc));
    }
    msg["content"] = content_.empty() && !calls.empty() ? json(nullptr) : json(content_);
    msg["reasoning_content"] = r_.thinking ? json(reasoning_) : json(nullptr);
    if (!calls.empty()) msg["tool_calls"] = std::move(calls);
    c["message"] = std::move(msg);
    if (r_.logprobs) {
      json lp = json::object();
      lp["content"] = lp_all_;
      lp["refusal"] = nullptr;
      c["logprobs"] = std::move(lp);
    } else {
      c["logprobs"] = nullptr;
    }
  } else {
    c["text"] = text_;
    c["logprobs"] = r_.logprobs ? completion_logprobs() : json(nullptr);
  }
  c["finish_reason"] = finish_reason_;
  return c;
}

std::vector<Choice> make_choices(const ApiRequest& r, const ModelInfo& m) {
  std::vector<Choice> out;
  out.reserve(r.prompts.size() * size_t(r.n));
  for (size_t p = 0; p < r.prompts.size(); ++p)
    for (int i = 0; i < r.n; ++i) out.emplace_back(r, m, int(out.size()), int(p));
  return out;
}

json usage(const ApiRequest& r, const std::vector<Choice>& choices) {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (const ApiRequest::Prompt& p : r.prompts) prompt += int64_t(p.ids.size());
  for (const Choice& c : choices) {
    completion += c.completion_tokens;
    if (c.index() == c.prompt_index() * r.n) cached += c.cached_tokens;  // a prompt's first sample
  }
  json u = json::object();
  u["prompt_tokens"] = prompt;
  u["completion_tokens"] = completion;
  u["total_tokens"] = prompt + completion;
  json d = json::object();
  d["cached_tokens"] = cached;
  u["prompt_tokens_details"] = std::move(d);
  return u;
}

json response_object(const ApiRequest& r, const ModelInfo& m, const std::vector<Choice>& choices, const std::string& id,
                     int64_t created) {
  json o = json::object();
  o["id"] = id;
  o["object"] = r.kind == ApiKind::Chat ? "chat.completion" : "text_completion";
  o["created"] = created;
  o["model"] = m.name;
  json cs = json::array();
  for (const Choice& c : choices) cs.push_back(c.final_object());
  o["choices"] = std::move(cs);
  o["usage"] = usage(r, choices);
  return o;
}

json chunk_object(const ApiRequest& r, const ModelInfo& m, json choices, const std::string& id, int64_t created) {
  json o = json::object();
  o["id"] = id;
  o["object"] = r.kind == ApiKind::Chat ? "chat.completion.chunk" : "text_completion";
  o["created"] = created;
  o["model"] = m.name;
  o["choices"] = std::move(choices);
  if (r.include_usage) o["usage"] = nullptr;  // as OpenAI: null on every chunk but the last
  return o;
}

std::string new_response_id(ApiKind kind) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string id = kind == ApiKind::Chat ? "chatcmpl-" : "cmpl-";
  for (int k = 0; k < 2; ++k) {
    const uint64_t v = rng();
    for (int i = 0; i < 12; ++i) id += kHex[(v >> (4 * i)) & 15];
  }
  return id;
}

}  // namespace dsa::server

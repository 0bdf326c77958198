// Output parsing for V3.2 (DSML) and the V3.1 family. Spec: chat-encoding.md §4, §5.4.
#include "io/output_parser.h"

#include <algorithm>
#include <random>

#include "core/error.h"

namespace dsa::chat {

namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Longest proper prefix of `tag` that is a suffix of `buf` (the bytes to hold back).
size_t hold(std::string_view buf, std::string_view tag) {
  size_t k = std::min(buf.size(), tag.size() - 1);
  for (; k > 0; --k)
    if (buf.substr(buf.size() - k) == tag.substr(0, k)) return k;
  return 0;
}

// A proper, non-empty prefix of `tag` (the text so far could still become `tag`).
bool is_proper_prefix(std::string_view buf, std::string_view tag) {
  return !buf.empty() && buf.size() < tag.size() && starts_with(tag, buf);
}

// JSON string escaping without the surrounding quotes; safe to apply piece by piece.
std::string json_escape_body(std::string_view s) {
  std::string q = py_json_string(s);
  return q.substr(1, q.size() - 2);
}

const std::string kStartTag = "\n\n" + std::string(kDsmlCallsOpen.substr(0, kDsmlCallsOpen.size() - 1));

// ---- Reference parser primitives ----------------------------------------------------------------

struct Found {
  std::string_view skipped;
  int stop = -1;  // index into stops, -1: none
  size_t pos = 0;  // just after the match (or end)
};

Found find_first(std::string_view text, size_t pos, std::initializer_list<std::string_view> stops) {
  Found f;
  size_t best = std::string_view::npos;
  int i = 0;
  for (auto s : stops) {
    size_t p = text.find(s, pos);
    if (p != std::string_view::npos && p < best) {
      best = p;
      f.stop = i;
      f.pos = p + s.size();
    }
    ++i;
  }
  if (f.stop < 0) {
    f.skipped = text.substr(pos);
    f.pos = text.size();
  } else {
    f.skipped = text.substr(pos, best - pos);
  }
  return f;
}

}  // namespace

// ================================================================================================
// Strict reference parser (§4.2, §4.3)
// ================================================================================================

ParsedMessage parse_v32_strict(std::string_view text, bool thinking) {
  ParsedMessage out;
  size_t pos = 0;
  if (thinking) {
    Found r = find_first(text, 0, {kThinkClose, kStartTag});
    if (r.stop != 0) fail("Invalid thinking format");
    out.reasoning_content = std::string(r.skipped);
    pos = r.pos;
  }
  Found r = find_first(text, pos, {kEos, kStartTag});
  out.content = std::string(r.skipped);
  pos = r.pos;
  if (r.stop < 0) fail("Invalid summary format");
  bool last_eos_or_none = r.stop == 0;
  if (r.stop == 1) {
    for (;;) {
      Found a = find_first(text, pos, {kDsmlInvokeOpen, kDsmlCallsClose});
      if (a.stop < 0 || a.skipped != ">\n") fail("Invalid function calls format");
      pos = a.pos;
      if (a.stop == 1) break;
      // Invoke head: ^\s*name="(.*?)">\n$ (DOTALL; `$` also before one final "\n").
      std::string_view inv_close = kDsmlInvokeClose.substr(0, kDsmlInvokeClose.size() - 1);
      Found h = find_first(text, pos, {kDsmlParamOpen, inv_close});
      if (h.stop < 0) fail("Invalid function calls format");
      pos = h.pos;
      std::string_view head = h.skipped;
      size_t i = 0;
      while (i < head.size() && is_ws(head[i])) ++i;
      head.remove_prefix(i);
      std::string name;
      if (!starts_with(head, "name=\"")) fail("Invalid function format");
      std::string_view rest = head.substr(6);
      if (rest.size() >= 4 && rest.substr(rest.size() - 4) == "\">\n\n")
        name = std::string(rest.substr(0, rest.size() - 4));
      else if (rest.size() >= 3 && rest.substr(rest.size() - 3) == "\">\n")
        name = std::string(rest.substr(0, rest.size() - 3));
      else
        fail("Invalid function format");
      std::vector<std::pair<std::string, std::string>> params;  // key, JSON value text
      int last = h.stop;
      while (last == 0) {
        std::string_view pclose = kDsmlParamClose.substr(1, kDsmlParamClose.size() - 2);  // "/｜DSML｜parameter"
        Found p = find_first(text, pos, {pclose});
        if (p.stop < 0) fail("Parameter format error");
        pos = p.pos;
        // ^ name="(.*?)" string="(true|false)">(.*?)<$  (DOTALL)
        std::string_view s = p.skipped;
        std::string_view tail;
        if (!s.empty() && s.back() == '<')
          tail = s.substr(0, s.size() - 1);
        else if (s.size() >= 2 && s.substr(s.size() - 2) == "<\n")
          tail = s.substr(0, s.size() - 2);
        else
          fail("Parameter format error");
        if (!starts_with(tail, " name=\"")) fail("Parameter format error");
        std::string key, flag;
        std::string_view value;
        bool ok = false;
        for (size_t k = 7; k <= tail.size() && !ok; ++k) {
          std::string_view after = tail.substr(k);
          for (std::string_view f : {std::string_view("\" string=\"true\">"), std::string_view("\" string=\"false\">")}) {
            if (starts_with(after, f)) {
              key = std::string(tail.substr(7, k - 7));
              flag = f.find("true") != std::string_view::npos ? "true" : "false";
              value = after.substr(f.size());
              ok = true;
              break;
            }
          }
        }
        if (!ok) fail("Parameter format error");
        for (const auto& kv : params)
          if (kv.first == key) fail("Duplicate parameter name: ", key);
        params.emplace_back(key, flag == "true" ? py_json_string(value) : std::string(value));
        Found n = find_first(text, pos, {kDsmlParamOpen, inv_close});
        if (n.stop < 0 || n.skipped != ">\n") fail("Parameter format error");
        pos = n.pos;
        last = n.stop;
      }
      std::string args = "{";
      for (size_t k = 0; k < params.size(); ++k) {
        if (k) args += ", ";
        args += py_json_string(params[k].first) + ": " + params[k].second;
      }
      args += "}";
      out.tool_calls.push_back({std::move(name), std::move(args)});
    }
    Found e = find_first(text, pos, {kEos});
    if (!e.skipped.empty()) fail("Unexpected content after function calls");
    pos = e.pos;
    last_eos_or_none = true;
  }
  if (pos != text.size() || !last_eos_or_none) fail("Unexpected content at end");
  for (std::string_view s : {kBos, kEos, kThinkOpen, kThinkClose, kDsml}) {
    if (out.content.find(s) != std::string::npos || out.reasoning_content.find(s) != std::string::npos)
      fail("Unexpected special token in content or reasoning: ", std::string(s));
  }
  return out;
}

// ================================================================================================
// Streaming / engine-policy parser (§4.4, §4.5)
// ================================================================================================

StreamParser::StreamParser(const ParseOptions& opt)
    : opt_(opt), state_(opt.thinking ? State::kStart : State::kContent) {}

void StreamParser::emit(std::vector<StreamEvent>& ev, StreamEvent::Kind k, std::string text) {
  if (text.empty() && (k == StreamEvent::kReasoning || k == StreamEvent::kContent ||
                       k == StreamEvent::kCallArgs))
    return;
  int index = (k == StreamEvent::kReasoning || k == StreamEvent::kContent) ? -1 : call_index_;
  ev.push_back(StreamEvent{k, index, std::move(text)});
}

void StreamParser::warn(std::string w) { warnings_.push_back(std::move(w)); }

std::vector<StreamEvent> StreamParser::feed(std::string_view delta) {
  if (finished_) fail("StreamParser: feed() after finish()");
  buf_.append(delta);
  std::vector<StreamEvent> ev;
  while (step(ev)) {
  }
  return ev;
}

std::vector<StreamEvent> StreamParser::finish() {
  std::vector<StreamEvent> ev;
  if (finished_) return ev;
  finished_ = true;
  while (step(ev)) {
  }
  switch (state_) {
    case State::kStart:
    case State::kReasoning: emit(ev, StreamEvent::kReasoning, buf_); break;
    case State::kContent: emit(ev, StreamEvent::kContent, buf_); break;
    case State::kAfterTools:
    case State::kDone: break;
    default:
      if (!call_open_) warn("tool-call block not closed at end of generation");
      break;
  }
  if (call_open_) {
    truncated_call_ = true;
    warn("tool call " + std::to_string(call_index_) + " incomplete at end of generation; dropped");
    call_open_ = false;
  }
  buf_.clear();
  state_ = State::kDone;
  return ev;
}

bool StreamParser::step(std::vector<StreamEvent>& ev) {
  const bool v32 = opt_.format == ChatFormat::kV32;
  auto skip_ws = [&] {
    size_t i = 0;
    while (i < buf_.size() && is_ws(buf_[i])) ++i;
    buf_.erase(0, i);
  };
  auto drop_garbage = [&](const char* where) {
    size_t next = buf_.find('<', 1);
    std::string dropped = buf_.substr(0, next);
    warn(std::string("unexpected text ") + where + " ignored: " + dropped.substr(0, 80));
    buf_.erase(0, next);
  };
  // Inside a tool-call block (V3.2 DSML or V3.1 tokens): the next call opens, the block closes, or
  // EOS ends it early; held while the buffer may still become one of those tags; else dropped.
  auto call_block = [&](std::string_view open, State next, std::string_view close, size_t finish_hold) {
    skip_ws();
    if (buf_.empty()) return false;
    if (starts_with(buf_, open)) {
      buf_.erase(0, open.size());
      state_ = next;
      return true;
    }
    if (starts_with(buf_, close)) {
      buf_.erase(0, close.size());
      state_ = State::kAfterTools;
      return true;
    }
    if (starts_with(buf_, kEos)) {
      buf_.erase(0, kEos.size());
      saw_eos_ = true;
      warn("tool-call block not closed before EOS");
      state_ = State::kDone;
      return true;
    }
    if (!finished_ && (is_proper_prefix(buf_, open) || is_proper_prefix(buf_, close) || is_proper_prefix(buf_, kEos)))
      return false;
    if (finished_ && buf_.size() < finish_hold) return false;
    drop_garbage("in tool-call block");
    return true;
  };
  switch (state_) {
    case State::kStart: {
      if (starts_with(buf_, kThinkOpen)) {  // the model repeated the opener (§4.4 item 3)
        buf_.erase(0, kThinkOpen.size());
        state_ = State::kReasoning;
        return true;
      }
      if (!finished_ && (buf_.empty() || is_proper_prefix(buf_, kThinkOpen))) return false;
      state_ = State::kReasoning;
      return true;
    }
    case State::kReasoning: {
      size_t pc = buf_.find(kThinkClose), pe = buf_.find(kEos);
      if (pc != std::string::npos && (pe == std::string::npos || pc < pe)) {
        emit(ev, StreamEvent::kReasoning, buf_.substr(0, pc));
        buf_.erase(0, pc + kThinkClose.size());
        saw_think_close_ = true;
        state_ = State::kContent;
        return true;
      }
      if (pe != std::string::npos) {
        emit(ev, StreamEvent::kReasoning, buf_.substr(0, pe));
        buf_.erase(0, pe + kEos.size());
        saw_eos_ = true;
        state_ = State::kDone;
        return true;
      }
      size_t h = std::max(hold(buf_, kThinkClose), hold(buf_, kEos));
      emit(ev, StreamEvent::kReasoning, buf_.substr(0, buf_.size() - h));
      buf_.erase(0, buf_.size() - h);
      return false;
    }
    case State::kContent: {
      std::string_view tag = v32 ? kDsmlCallsOpen : kToolCallsBegin;
      size_t pt = buf_.find(tag), pe = buf_.find(kEos);
      if (pt != std::string::npos && (pe == std::string::npos || pt < pe)) {
        std::string before = buf_.substr(0, pt);
        if (v32) {
          if (before.size() >= 2 && before.compare(before.size() - 2, 2, "\n\n") == 0)
            before.resize(before.size() - 2);
          else
            warn("tool-call block not preceded by a blank line");
        }
        emit(ev, StreamEvent::kContent, std::move(before));
        buf_.erase(0, pt + tag.size());
        state_ = v32 ? State::kToolBlock : State::kV31Calls;
        return true;
      }
      if (pe != std::string::npos) {
        emit(ev, StreamEvent::kContent, buf_.substr(0, pe));
        buf_.erase(0, pe + kEos.size());
        saw_eos_ = true;
        state_ = State::kDone;
        return true;
      }
      size_t h = std::max(hold(buf_, tag), hold(buf_, kEos));
      if (v32) h = std::max(h, hold(buf_, "\n\n" + std::string(tag)));
      emit(ev, StreamEvent::kContent, buf_.substr(0, buf_.size() - h));
      buf_.erase(0, buf_.size() - h);
      return false;
    }
    case State::kToolBlock:
      return call_block(kDsmlInvokeOpen, State::kInvokeHead, kDsmlCallsClose, kDsmlCallsClose.size());
    case State::kInvokeHead:
    case State::kParamHead: {
      const bool invoke = state_ == State::kInvokeHead;
      size_t i = 0;
      while (i < buf_.size() && is_ws(buf_[i])) ++i;
      std::string_view rest = std::string_view(buf_).substr(i);
      constexpr std::string_view kName = "name=\"";
      bool bad = false;
      if (rest.size() < kName.size()) {
        if (finished_) return false;
        if (!rest.empty() && !starts_with(kName, rest)) bad = true;
        if (!bad) return false;
      } else if (!starts_with(rest, kName)) {
        bad = true;
      }
      size_t name_at = i + kName.size();
      std::string key, flag;
      size_t end = std::string::npos;
      if (!bad && invoke) {
        end = buf_.find("\">", name_at);
        size_t lt = buf_.find('<', name_at);
        if (lt != std::string::npos && (end == std::string::npos || lt < end)) bad = true;
        else if (end == std::string::npos) return false;
        else key = buf_.substr(name_at, end - name_at);
      } else if (!bad) {
        constexpr std::string_view kStr = "\" string=\"";
        size_t ks = buf_.find(kStr, name_at);
        size_t lt = buf_.find('<', name_at);
        if (ks == std::string::npos) {
          // A '">' before any ' string="' is not yet an error: the name is lazy up to the first
          // '" string="' (as in the reference's regex), which may still come. A '<' is.
          if (lt != std::string::npos) bad = true;
          else return false;
        } else {
          end = buf_.find("\">", ks + kStr.size());
          if (lt != std::string::npos && (end == std::string::npos || lt < end)) bad = true;
          else if (end == std::string::npos) return false;
          else {
            key = buf_.substr(name_at, ks - name_at);
            flag = buf_.substr(ks + kStr.size(), end - ks - kStr.size());
          }
        }
      }
      if (bad) {
        warn(invoke ? "malformed invoke tag; call dropped" : "malformed parameter tag; parameter dropped");
        state_ = invoke ? State::kSkipInvoke : State::kSkipParam;
        return true;
      }
      buf_.erase(0, end + 2);
      if (invoke) {
        emit(ev, StreamEvent::kCallBegin, key);
        call_open_ = true;
        keys_.clear();
        state_ = State::kParams;
        return true;
      }
      if (std::find(keys_.begin(), keys_.end(), key) != keys_.end()) {
        warn("duplicate parameter '" + key + "' dropped");
        state_ = State::kSkipParam;
        return true;
      }
      if (flag != "true" && flag != "false")
        warn("parameter '" + key + "' has string=\"" + flag + "\"; value treated as non-string");
      value_is_string_ = flag == "true";
      std::string frag = keys_.empty() ? "{" : ", ";
      frag += py_json_string(key) + ": ";
      if (value_is_string_) frag += "\"";
      keys_.push_back(key);
      emit(ev, StreamEvent::kCallArgs, std::move(frag));
      state_ = State::kValue;
      return true;
    }
    case State::kParams: {
      skip_ws();
      if (buf_.empty()) return false;
      if (starts_with(buf_, kDsmlParamOpen)) {
        buf_.erase(0, kDsmlParamOpen.size());
        state_ = State::kParamHead;
        return true;
      }
      if (starts_with(buf_, kDsmlInvokeClose)) {
        buf_.erase(0, kDsmlInvokeClose.size());
        emit(ev, StreamEvent::kCallArgs, keys_.empty() ? "{}" : "}");
        emit(ev, StreamEvent::kCallEnd, "");
        call_open_ = false;
        ++call_index_;
        state_ = State::kToolBlock;
        return true;
      }
      if (starts_with(buf_, kEos)) {
        buf_.erase(0, kEos.size());
        saw_eos_ = true;
        state_ = State::kDone;
        return true;
      }
      if (!finished_ && (is_proper_prefix(buf_, kDsmlParamOpen) ||
                         is_proper_prefix(buf_, kDsmlInvokeClose) || is_proper_prefix(buf_, kEos)))
        return false;
      if (finished_ && buf_.size() < kDsmlInvokeClose.size()) return false;
      drop_garbage("in invoke");
      return true;
    }
    case State::kValue: {
      size_t pc = buf_.find(kDsmlParamClose, scan_pos_);
      if (pc != std::string::npos) {
        std::string raw = buf_.substr(0, pc);
        buf_.erase(0, pc + kDsmlParamClose.size());
        if (value_is_string_) {
          emit(ev, StreamEvent::kCallArgs, json_escape_body(raw));
          emit(ev, StreamEvent::kCallArgs, "\"");
        } else if (py_json_valid(raw)) {
          emit(ev, StreamEvent::kCallArgs, raw);  // spliced as written, like the reference
        } else {
          warn("parameter '" + keys_.back() + "' is not valid JSON; passed as a string");
          emit(ev, StreamEvent::kCallArgs, py_json_string(raw));
        }
        scan_pos_ = 0;
        state_ = State::kParams;
        return true;
      }
      if (!value_is_string_) {
        // Non-string values are held until their closing tag; resume the search where it stopped.
        scan_pos_ = buf_.size() >= kDsmlParamClose.size() ? buf_.size() - kDsmlParamClose.size() + 1 : 0;
      } else {
        size_t h = hold(buf_, kDsmlParamClose);
        emit(ev, StreamEvent::kCallArgs, json_escape_body(std::string_view(buf_).substr(0, buf_.size() - h)));
        buf_.erase(0, buf_.size() - h);
      }
      return false;
    }
    case State::kSkipInvoke:
    case State::kSkipParam: {
      std::string_view tag = state_ == State::kSkipInvoke ? kDsmlInvokeClose : kDsmlParamClose;
      size_t p = buf_.find(tag);
      if (p == std::string::npos) {
        buf_.erase(0, buf_.size() - hold(buf_, tag));
        return false;
      }
      buf_.erase(0, p + tag.size());
      state_ = state_ == State::kSkipInvoke ? State::kToolBlock : State::kParams;
      return true;
    }
    case State::kV31Calls:
      return call_block(kToolCallBegin, State::kV31Name, kToolCallsEnd, kToolCallBegin.size());
    case State::kV31Name: {
      size_t ps = buf_.find(kToolSep), pe = buf_.find(kToolCallEnd);
      if (pe != std::string::npos && (ps == std::string::npos || pe < ps)) {
        warn("tool call without separator dropped");
        buf_.erase(0, pe + kToolCallEnd.size());
        state_ = State::kV31Calls;
        return true;
      }
      if (ps == std::string::npos) return false;
      std::string name = buf_.substr(0, ps);
      while (!name.empty() && is_ws(name.back())) name.pop_back();
      while (!name.empty() && is_ws(name.front())) name.erase(0, 1);
      buf_.erase(0, ps + kToolSep.size());
      emit(ev, StreamEvent::kCallBegin, name);
      call_open_ = true;
      args_emitted_ = false;
      state_ = State::kV31Args;
      return true;
    }
    case State::kV31Args: {
      size_t pe = buf_.find(kToolCallEnd);
      size_t n = pe == std::string::npos ? buf_.size() - hold(buf_, kToolCallEnd) : pe;
      std::string piece = buf_.substr(0, n);
      if (std::any_of(piece.begin(), piece.end(), [](char c) { return !is_ws(c); })) args_emitted_ = true;
      emit(ev, StreamEvent::kCallArgs, std::move(piece));
      if (pe == std::string::npos) {
        buf_.erase(0, n);
        return false;
      }
      buf_.erase(0, pe + kToolCallEnd.size());
      if (!args_emitted_) emit(ev, StreamEvent::kCallArgs, "{}");
      emit(ev, StreamEvent::kCallEnd, "");
      call_open_ = false;
      ++call_index_;
      state_ = State::kV31Calls;
      return true;
    }
    case State::kAfterTools: {
      skip_ws();
      if (buf_.empty()) return false;
      if (starts_with(buf_, kEos)) {
        buf_.erase(0, kEos.size());
        saw_eos_ = true;
        state_ = State::kDone;
        return true;
      }
      if (!finished_ && is_proper_prefix(buf_, kEos)) return false;
      warn("text after the tool-call block ignored: " + buf_.substr(0, 80));
      warned_done_ = true;
      buf_.clear();
      state_ = State::kDone;
      return true;
    }
    case State::kDone: {
      if (!warned_done_ && std::any_of(buf_.begin(), buf_.end(), [](char c) { return !is_ws(c); })) {
        warn("text after the end of the message ignored: " + buf_.substr(0, 80));
        warned_done_ = true;
      }
      buf_.clear();
      return false;
    }
  }
  return false;
}

// ================================================================================================
// Whole-text policy parse and OpenAI helpers
// ================================================================================================

ParseResult parse_completion(std::string_view text, const ParseOptions& opt) {
  StreamParser p(opt);
  std::vector<StreamEvent> ev = p.feed(text);
  std::vector<StreamEvent> tail = p.finish();
  ev.insert(ev.end(), tail.begin(), tail.end());
  ParseResult r;
  struct Call {
    ParsedToolCall call;
    bool done = false;
  };
  std::vector<Call> calls;
  for (auto& e : ev) {
    switch (e.kind) {
      case StreamEvent::kReasoning: r.message.reasoning_content += e.text; break;
      case StreamEvent::kContent: r.message.content += e.text; break;
      case StreamEvent::kCallBegin: calls.push_back({{e.text, ""}, false}); break;
      case StreamEvent::kCallArgs: calls.back().call.arguments += e.text; break;
      case StreamEvent::kCallEnd: calls.back().done = true; break;
    }
  }
  for (auto& c : calls)
    if (c.done) r.message.tool_calls.push_back(std::move(c.call));
  r.saw_think_close = p.saw_think_close();
  r.saw_eos = p.saw_eos();
  r.truncated_call = p.truncated_call();
  r.warnings = p.warnings();
  return r;
}

std::string finish_reason(const ParseResult& r, bool stopped_by_length) {
  if (stopped_by_length) return "length";
  return r.message.tool_calls.empty() ? "stop" : "tool_calls";
}

std::string make_tool_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string id = "call_";
  uint64_t a = rng(), b = rng();
  for (int i = 0; i < 16; ++i) id += kHex[(a >> (4 * i)) & 15];
  for (int i = 0; i < 8; ++i) id += kHex[(b >> (4 * i)) & 15];
  return id;
}

ojson to_openai_message(const ParsedMessage& m, bool thinking,
                        const std::function<std::string()>& make_id) {
  ojson out = ojson::object();
  out["role"] = "assistant";
  if (m.content.empty() && !m.tool_calls.empty())
    out["content"] = nullptr;
  else
    out["content"] = m.content;
  if (thinking)
    out["reasoning_content"] = m.reasoning_content;
  else
    out["reasoning_content"] = nullptr;
  if (!m.tool_calls.empty()) {
    ojson calls = ojson::array();
    for (const auto& c : m.tool_calls) {
      ojson j = ojson::object();
      j["id"] = make_id ? make_id() : make_tool_call_id();
      j["type"] = "function";
      j["function"] = ojson::object();
      j["function"]["name"] = c.name;
      j["function"]["arguments"] = c.arguments;
      calls.push_back(std::move(j));
    }
    out["tool_calls"] = std::move(calls);
  }
  return out;
}

}  // namespace dsa::chat

// Chat prompt encoding: V3.2 DSML encoder and V3.1-family template. Spec: chat-encoding.md §3, §5.
#include "io/chat_encoding.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsa::chat {

// ================================================================================================
// Python-compatible JSON text (spec §3.7)
// ================================================================================================

std::string py_json_string(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);  // everything else raw (ensure_ascii=False)
        }
    }
  }
  out += '"';
  return out;
}

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v < 0 ? "-Infinity" : "Infinity";
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form, e.g. "1.5e+300", "1e-05", "2.5e+00".
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string sign;
  size_t p = 0;
  if (sci[0] == '-') {
    sign = "-";
    p = 1;
  }
  size_t epos = sci.find('e');
  std::string digits;
  for (size_t i = p; i < epos; ++i)
    if (sci[i] != '.') digits += sci[i];
  int exp = std::stoi(sci.substr(epos + 1));
  // Python repr: positional when -4 <= exp < 16, else exponent notation.
  std::string out = sign;
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), exp + 1));
      while (ip.size() < static_cast<size_t>(exp + 1)) ip += '0';
      std::string fp = digits.size() > static_cast<size_t>(exp + 1) ? digits.substr(exp + 1) : "0";
      out += ip + "." + fp;
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += exp < 0 ? "e-" : "e+";
    std::string e = std::to_string(exp < 0 ? -exp : exp);
    if (e.size() < 2) e = "0" + e;
    out += e;
  }
  return out;
}

std::string py_json_dumps(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return v.get<bool>() ? "true" : "false";
    case ojson::value_t::number_integer: return std::to_string(v.get<int64_t>());
    case ojson::value_t::number_unsigned: return std::to_string(v.get<uint64_t>());
    case ojson::value_t::number_float: return py_float_repr(v.get<double>());
    case ojson::value_t::string: return py_json_string(v.get_ref<const std::string&>());
    case ojson::value_t::array: {
      std::string out = "[";
      bool first = true;
      for (const auto& e : v) {
        if (!first) out += ", ";
        first = false;
        out += py_json_dumps(e);
      }
      return out + "]";
    }
    case ojson::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        out += py_json_string(it.key());
        out += ": ";
        out += py_json_dumps(it.value());
      }
      return out + "}";
    }
    default: fail("chat: cannot serialize a JSON value of type ", v.type_name());
  }
}

namespace {

// A JSON reader with Python json.loads semantics that directly produces json.dumps text.
class PyJsonReader {
 public:
  struct Val {
    bool is_string = false;
    std::string str;   // decoded string (strings only)
    std::string json;  // json.dumps text
  };

  explicit PyJsonReader(std::string_view s) : s_(s) {}

  Val document() {
    ws();
    Val v = value(0);
    ws();
    if (p_ != s_.size()) err("extra data");
    return v;
  }

  std::vector<JsonMember> object_document() {
    ws();
    if (p_ >= s_.size() || s_[p_] != '{') err("expected a JSON object");
    std::vector<JsonMember> members;
    object_members(0, members);
    ws();
    if (p_ != s_.size()) err("extra data");
    return members;
  }

 private:
  [[noreturn]] void err(const char* what) {
    fail("invalid JSON (", what, " at offset ", p_, "): ", std::string(s_.substr(0, 200)));
  }
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r'))
      ++p_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(p_, w.size()) == w) {
      p_ += w.size();
      return true;
    }
    return false;
  }

  Val value(int depth) {
    if (depth > 512) err("nesting too deep");
    if (p_ >= s_.size()) err("expecting value");
    char c = s_[p_];
    Val v;
    if (c == '"') {
      v.is_string = true;
      v.str = string_lit();
      v.json = py_json_string(v.str);
    } else if (c == '{') {
      std::vector<JsonMember> members;
      object_members(depth, members);
      v.json = "{";
      for (size_t i = 0; i < members.size(); ++i) {
        if (i) v.json += ", ";
        v.json += py_json_string(members[i].key) + ": " + members[i].json;
      }
      v.json += "}";
    } else if (c == '[') {
      ++p_;
      ws();
      v.json = "[";
      if (p_ < s_.size() && s_[p_] == ']') {
        ++p_;
      } else {
        for (bool first = true;; first = false) {
          ws();
          Val e = value(depth + 1);
          if (!first) v.json += ", ";
          v.json += e.json;
          ws();
          if (p_ < s_.size() && s_[p_] == ',') {
            ++p_;
            continue;
          }
          if (p_ < s_.size() && s_[p_] == ']') {
            ++p_;
            break;
          }
          err("expecting ',' or ']'");
        }
      }
      v.json += "]";
    } else if (lit("true")) {
      v.json = "true";
    } else if (lit("false")) {
      v.json = "false";
    } else if (lit("null")) {
      v.json = "null";
    } else if (lit("NaN")) {
      v.json = "NaN";
    } else if (lit("Infinity")) {
      v.json = "Infinity";
    } else if (lit("-Infinity")) {
      v.json = "-Infinity";
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.json = number();
    } else {
      err("expecting value");
    }
    return v;
  }

  void object_members(int depth, std::vector<JsonMember>& members) {
    ++p_;  // '{'
    ws();
    if (p_ < s_.size() && s_[p_] == '}') {
      ++p_;
      return;
    }
    for (;;) {
      ws();
      if (p_ >= s_.size() || s_[p_] != '"') err("expecting property name in double quotes");
      std::string key = string_lit();
      ws();
      if (p_ >= s_.size() || s_[p_] != ':') err("expecting ':' delimiter");
      ++p_;
      ws();
      Val v = value(depth + 1);
      JsonMember m{std::move(key), v.is_string, std::move(v.str), std::move(v.json)};
      // Python dict semantics: a repeated key keeps its first position and takes the last value.
      auto it = std::find_if(members.begin(), members.end(),
                             [&](const JsonMember& x) { return x.key == m.key; });
      if (it != members.end())
        *it = std::move(m);
      else
        members.push_back(std::move(m));
      ws();
      if (p_ < s_.size() && s_[p_] == ',') {
        ++p_;
        continue;
      }
      if (p_ < s_.size() && s_[p_] == '}') {
        ++p_;
        return;
      }
      err("expecting ',' delimiter");
    }
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t hex4() {
    if (p_ + 4 > s_.size()) err("invalid \\uXXXX escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[p_ + i];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else err("invalid \\uXXXX escape");
    }
    p_ += 4;
    return v;
  }

  std::string string_lit() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      if (p_ >= s_.size()) err("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[p_]);
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c < 0x20) err("invalid control character");
      if (c != '\\') {
        out += static_cast<char>(c);
        ++p_;
        continue;
      }
      ++p_;
      if (p_ >= s_.size()) err("unterminated string");
      char e = s_[p_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(p_, 2) == "\\u") {
            size_t save = p_;
            p_ += 2;
            uint32_t lo = hex4();
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              p_ = save;  // lone high surrogate; the next escape is read on its own
            }
          }
          put_utf8(out, cp);  // lone surrogates come out as 3-byte sequences (as Python keeps them)
          break;
        }
        default: err("invalid \\escape");
      }
    }
  }

  std::string number() {
    size_t start = p_;
    if (s_[p_] == '-') ++p_;
    if (p_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[p_]))) err("expecting value");
    if (s_[p_] == '0') {
      ++p_;
    } else {
      while (p_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[p_]))) ++p_;
    }
    size_t int_end = p_;
    bool is_float = false;
    if (p_ + 1 < s_.size() && s_[p_] == '.' && std::isdigit(static_cast<unsigned char>(s_[p_ + 1]))) {
      is_float = true;
      p_ += 1;
      while (p_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[p_]))) ++p_;
    }
    if (p_ < s_.size() && (s_[p_] == 'e' || s_[p_] == 'E')) {
      size_t q = p_ + 1;
      if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
      if (q < s_.size() && std::isdigit(static_cast<unsigned char>(s_[q]))) {
        is_float = true;
        p_ = q;
        while (p_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[p_]))) ++p_;
      }
    }
    std::string_view text = s_.substr(start, p_ - start);
    if (!is_float) {
      (void)int_end;
      if (text == "-0") return "0";  // Python int: -0 == 0
      return std::string(text);      // digits kept exactly, any size
    }
    return py_float_repr(parse_double(text));
  }

  static double parse_double(std::string_view text) {
    double d = 0;
    auto r = std::from_chars(text.data(), text.data() + text.size(), d);
    if (r.ec == std::errc::result_out_of_range) {
      // Overflow -> +-inf, underflow -> +-0 (as Python's float()).
      bool neg = text[0] == '-';
      size_t e = text.find_first_of("eE");
      std::string_view mant = text.substr(neg ? 1 : 0, (e == std::string_view::npos ? text.size() : e) - (neg ? 1 : 0));
      long long exp10 = 0;
      if (e != std::string_view::npos) {
        std::string_view es = text.substr(e + 1);
        bool eneg = !es.empty() && es[0] == '-';
        if (!es.empty() && (es[0] == '-' || es[0] == '+')) es.remove_prefix(1);
        for (char c : es) exp10 = std::min<long long>(exp10 * 10 + (c - '0'), 1000000000LL);
        if (eneg) exp10 = -exp10;
      }
      // Order of magnitude of the mantissa.
      size_t dot = mant.find('.');
      std::string_view ip = mant.substr(0, dot);
      long long order = 0;
      size_t nz = ip.find_first_not_of('0');
      if (nz != std::string_view::npos) {
        order = static_cast<long long>(ip.size() - nz);
      } else if (dot != std::string_view::npos) {
        std::string_view fp = mant.substr(dot + 1);
        size_t fnz = fp.find_first_not_of('0');
        order = fnz == std::string_view::npos ? -1000000000LL : -static_cast<long long>(fnz);
      }
      bool big = order + exp10 > 0;
      d = big ? HUGE_VAL : 0.0;
      if (neg) d = -d;
    } else if (r.ec != std::errc()) {
      fail("invalid JSON number: ", std::string(text));
    }
    return d;
  }

  std::string_view s_;
  size_t p_ = 0;
};

}  // namespace

std::string py_json_reformat(std::string_view json_text) {
  return PyJsonReader(json_text).document().json;
}

bool py_json_valid(std::string_view json_text) {
  try {
    PyJsonReader(json_text).document();
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::vector<JsonMember> py_json_object_members(std::string_view json_text) {
  return PyJsonReader(json_text).object_document();
}

// ================================================================================================
// Roles, formats, selection
// ================================================================================================

const char* role_name(Role r) {
  switch (r) {
    case Role::kSystem: return "system";
    case Role::kUser: return "user";
    case Role::kDeveloper: return "developer";
    case Role::kAssistant: return "assistant";
    case Role::kTool: return "tool";
  }
  return "?";
}

Role role_from_name(std::string_view name) {
  if (name == "system") return Role::kSystem;
  if (name == "user") return Role::kUser;
  if (name == "developer") return Role::kDeveloper;
  if (name == "assistant") return Role::kAssistant;
  if (name == "tool") return Role::kTool;
  fail("chat: invalid message role '", std::string(name),
       "' (expected system, user, developer, assistant or tool)");
}

const char* chat_format_name(ChatFormat f) { return f == ChatFormat::kV32 ? "v32" : "v31"; }

ChatFormat chat_format_from_name(std::string_view name) {
  std::string n(name);
  for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (n == "v32" || n == "v3.2" || n == "dsml" || n == "deepseek-v3.2" || n == "deepseek_v32")
    return ChatFormat::kV32;
  if (n == "v31" || n == "v3.1" || n == "v32-exp" || n == "v3.2-exp" || n == "deepseek-v3.1" ||
      n == "deepseek_v31")
    return ChatFormat::kV31;
  fail("chat: unknown chat format '", std::string(name), "' (expected v32 or v31)");
}

ChatFormat detect_chat_format(const std::string& model_dir) {
  namespace fs = std::filesystem;
  fs::path dir(model_dir);
  fs::path cfg = dir / "tokenizer_config.json";
  bool has_encoder = fs::exists(dir / "encoding" / "encoding_dsv32.py");
  if (fs::exists(dir / "chat_template.jinja")) return ChatFormat::kV31;
  if (fs::exists(cfg)) {
    std::ifstream f(cfg);
    if (!f) fail("chat: cannot read ", cfg.string());
    ojson j;
    try {
      j = ojson::parse(f);
    } catch (const std::exception& e) {
      fail("chat: cannot parse ", cfg.string(), ": ", e.what());
    }
    auto it = j.find("chat_template");
    if (it != j.end()) {
      bool has = (it->is_string() && !it->get_ref<const std::string&>().empty()) ||
                 (it->is_array() && !it->empty());
      if (has) return ChatFormat::kV31;
    }
    return ChatFormat::kV32;  // no Jinja template: V3.2 ships the DSML encoder instead
  }
  if (has_encoder) return ChatFormat::kV32;
  fail("chat: cannot choose a chat format for ", model_dir,
       ": no tokenizer_config.json and no encoding/encoding_dsv32.py; pass the format explicitly "
       "(v32 or v31)");
}

// ================================================================================================
// V3.2 DSML encoder (spec §3)
// ================================================================================================

namespace {

constexpr std::string_view kToolsBlockHead = R"TXT(## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<｜DSML｜function_calls>" block like the following as part of your reply to the user:
<｜DSML｜function_calls>
<｜DSML｜invoke name="$FUNCTION_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$FUNCTION_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<｜DSML｜function_calls>
...
</｜DSML｜function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
)TXT";

constexpr std::string_view kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

// Python truthiness of a JSON value (the reference tests `if response_format:`).
bool truthy(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return false;
    case ojson::value_t::boolean: return v.get<bool>();
    case ojson::value_t::number_integer: return v.get<int64_t>() != 0;
    case ojson::value_t::number_unsigned: return v.get<uint64_t>() != 0;
    case ojson::value_t::number_float: return v.get<double>() != 0.0;
    case ojson::value_t::string: return !v.get_ref<const std::string&>().empty();
    case ojson::value_t::array:
    case ojson::value_t::object: return !v.empty();
    default: return true;
  }
}

bool has_tools(const ojson& tools) {
  if (tools.is_null()) return false;
  if (!tools.is_array()) fail("chat: `tools` must be a list of tool objects");
  return !tools.empty();
}

// The `function` member of an OpenAI tool object (a bare function object is accepted too).
const ojson& tool_function(const ojson& tool) {
  if (tool.is_object()) {
    auto it = tool.find("function");
    if (it != tool.end() && it->is_object()) return *it;
    if (tool.contains("name")) return tool;
  }
  fail("chat: a tool must be {\"type\": \"function\", \"function\": {...}}, got ", tool.dump());
}

// "\n\n" + TOOLS_BLOCK / RESPONSE_FORMAT parts shared by system and developer messages.
std::string v32_system_extras(const Message& m) {
  std::string out;
  if (has_tools(m.tools)) out += "\n\n" + v32_tools_block(m.tools);
  if (truthy(m.response_format))
    out += "\n\n" + std::string(kResponseFormatHead) + py_json_dumps(m.response_format);
  return out;
}

}  // namespace

std::string v32_tools_block(const ojson& tools) {
  std::string out(kToolsBlockHead);
  bool first = true;
  for (const auto& t : tools) {
    if (!first) out += "\n";
    first = false;
    out += py_json_dumps(tool_function(t));
  }
  out += "\n</functions>\n";
  return out;
}

std::string v32_dsml_calls(const std::vector<ToolCall>& calls) {
  std::string out(kDsmlCallsOpen);
  for (const auto& c : calls) {
    std::vector<JsonMember> args;
    try {
      args = py_json_object_members(c.arguments);
    } catch (const Error& e) {
      fail("chat: arguments of tool call '", c.name, "' are not a JSON object: ", e.what());
    }
    out += "\n";
    out += kDsmlInvokeOpen;
    out += " name=\"" + c.name + "\">\n";
    for (const auto& a : args) {
      out += kDsmlParamOpen;
      out += " name=\"" + a.key + "\" string=\"" + (a.is_string ? "true" : "false") + "\">";
      out += a.is_string ? a.string_value : a.json;
      out += kDsmlParamClose;
      out += "\n";
    }
    if (args.empty()) out += "\n";
    out += kDsmlInvokeClose;
  }
  out += "\n";
  out += kDsmlCallsClose;
  return out;
}

std::string encode_chat_v32(const std::vector<Message>& msgs, const EncodeOptions& opt) {
  const long n = static_cast<long>(msgs.size());
  if (opt.context_size > msgs.size())
    fail("chat: context_size ", opt.context_size, " exceeds the ", msgs.size(), " messages");
  long last_user = -1;
  for (long i = 0; i < n; ++i)
    if (msgs[i].role == Role::kUser || msgs[i].role == Role::kDeveloper) last_user = i;

  auto think = [&](bool open) { return std::string(open ? kThinkOpen : kThinkClose); };

  std::string out;
  if (opt.add_bos && opt.context_size == 0) out += kBos;
  for (long i = static_cast<long>(opt.context_size); i < n; ++i) {
    const Message& m = msgs[i];
    switch (m.role) {
      case Role::kSystem:
        out += m.content;
        out += v32_system_extras(m);
        break;
      case Role::kUser:
        out += kUser;
        out += m.content;
        out += kAssistant;
        out += think(opt.thinking && i == last_user);
        break;
      case Role::kDeveloper: {
        if (m.content.empty()) fail("chat: a developer message must have non-empty content (index ", i, ")");
        out += kUser;
        out += v32_system_extras(m);
        out += "\n\n# The user's message is: ";
        out += m.content;
        out += kAssistant;
        out += think(opt.thinking && i == last_user);
        break;
      }
      case Role::kAssistant: {
        if (m.prefix && i == n - 1 && m.tool_calls.empty()) {
          out += m.content;  // continuation of a final assistant message: bare content
          break;
        }
        if (opt.thinking && i > last_user) {
          if (m.reasoning_content.empty() && m.tool_calls.empty())
            fail("chat: in thinking mode, assistant message ", i,
                 " after the last user turn needs reasoning_content or tool_calls");
          out += m.reasoning_content;
          out += kThinkClose;
        }
        out += m.content;
        if (!m.tool_calls.empty()) out += "\n\n" + v32_dsml_calls(m.tool_calls);
        out += kEos;
        break;
      }
      case Role::kTool: {
        long a = i - 1;
        while (a >= 0 && msgs[a].role == Role::kTool) --a;
        if (a < 0 || msgs[a].role != Role::kAssistant || msgs[a].tool_calls.empty())
          fail("chat: tool message ", i, " does not follow an assistant message with tool_calls");
        long ncalls = static_cast<long>(msgs[a].tool_calls.size());
        long k = i - a;
        if (k > ncalls)
          fail("chat: tool message ", i, " is result ", k, " but assistant message ", a, " made only ",
               ncalls, " tool call(s)");
        bool last_of_block = (i + 1 == n) || msgs[i + 1].role != Role::kTool;
        if (last_of_block && k < ncalls)
          fail("chat: assistant message ", a, " made ", ncalls, " tool call(s) but only ", k,
               " result(s) follow");
        if (k == 1) out += "\n\n<function_results>";
        out += "\n<result>";
        out += m.content;
        out += "</result>";
        if (k == ncalls) {
          out += "\n</function_results>\n\n";
          out += think(opt.thinking && i >= last_user);
        }
        break;
      }
    }
  }
  return out;
}

// ================================================================================================
// V3.1 family (spec §5)
// ================================================================================================

std::string v31_tool_description(const ojson& tools) {
  std::string out = "## Tools\nYou have access to the following tools:\n\n";
  for (const auto& t : tools) {
    const ojson& f = tool_function(t);
    std::string name = f.contains("name") && f["name"].is_string() ? f["name"].get<std::string>() : "";
    std::string desc = f.contains("description") && f["description"].is_string()
                           ? f["description"].get<std::string>()
                           : "";
    std::string params = f.contains("parameters") ? py_json_dumps(f["parameters"]) : "{}";
    out += "### " + name + "\nDescription: " + desc + "\n\nParameters: " + params + "\n\n";
  }
  out +=
      "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>tool_call_name<｜tool▁sep｜>tool_call_arguments"
      "<｜tool▁call▁end｜>{{additional_tool_calls}}<｜tool▁calls▁end｜>\n"
      "\n"
      "Where:\n"
      "- `tool_call_name` must be an exact match to one of the available tools\n"
      "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
      "- For multiple tool calls, chain them directly without separators or spaces";
  return out;
}

std::string encode_chat_v31(const std::vector<Message>& msgs, const EncodeOptions& opt) {
  const bool rev_exp = !opt.v31_first_revision;
  // 1. System hoisting.
  std::string system;
  bool any_system = false;
  ojson tools;
  for (const auto& m : msgs) {
    if (m.role != Role::kSystem) continue;
    if (any_system) system += "\n\n";
    system += m.content;
    any_system = true;
    if (tools.is_null() && has_tools(m.tools)) tools = m.tools;
  }
  if (opt.v31_render_tools && !tools.is_null()) {
    if (!system.empty()) system += "\n\n";
    system += v31_tool_description(tools);
  }
  std::string out;
  if (opt.add_bos) out += kBos;
  out += system;

  bool is_last_user = false, is_tool = false, is_only_sys = any_system, is_prefix = false;
  for (const auto& m : msgs) {
    switch (m.role) {
      case Role::kSystem: break;
      case Role::kDeveloper: break;  // not part of the V3.1 template
      case Role::kUser:
        is_tool = false;
        is_last_user = true;
        out += kUser;
        out += m.content;
        break;
      case Role::kAssistant:
        if (!m.tool_calls.empty()) {
          if (is_last_user || (rev_exp && is_only_sys)) {
            out += kAssistant;
            out += kThinkClose;
          }
          is_last_user = false;
          is_tool = false;
          out += m.content;
          out += kToolCallsBegin;
          for (const auto& c : m.tool_calls) {
            out += kToolCallBegin;
            out += c.name;
            out += kToolSep;
            out += c.arguments;
            out += kToolCallEnd;
          }
          out += kToolCallsEnd;
          out += kEos;
        } else {
          if (is_last_user) {
            out += kAssistant;
            out += (m.prefix && opt.thinking) ? kThinkOpen : kThinkClose;
          }
          if (m.prefix) is_prefix = true;
          is_last_user = false;
          if (is_tool) {
            out += m.content;
            is_tool = false;
          } else {
            size_t p = m.content.find(kThinkClose);
            out += p == std::string::npos ? m.content : m.content.substr(p + kThinkClose.size());
          }
          out += kEos;
        }
        break;
      case Role::kTool:
        is_last_user = false;
        is_tool = true;
        out += kToolOutputBegin;
        out += m.content;
        out += kToolOutputEnd;
        break;
    }
    if (m.role != Role::kSystem) is_only_sys = false;
  }
  if (opt.add_generation_prompt) {
    bool gen = rev_exp ? (!is_tool && (is_last_user || is_only_sys || !is_prefix))
                       : (is_last_user && !is_tool);
    if (gen) {
      out += kAssistant;
      out += opt.thinking ? kThinkOpen : kThinkClose;
    }
  }
  return out;
}

std::string encode_chat(ChatFormat fmt, const std::vector<Message>& messages, const EncodeOptions& opt) {
  return fmt == ChatFormat::kV32 ? encode_chat_v32(messages, opt) : encode_chat_v31(messages, opt);
}

// ================================================================================================
// OpenAI-style request -> messages (spec §3.11)
// ================================================================================================

namespace {

std::string content_text(const ojson& c, size_t index) {
  if (c.is_null()) return "";
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::string out;
    bool first = true;
    for (const auto& part : c) {
      std::string text;
      if (part.is_string()) {
        text = part.get<std::string>();
      } else if (part.is_object() && part.value("type", std::string("text")) == "text" &&
                 part.contains("text") && part["text"].is_string()) {
        text = part["text"].get<std::string>();
      } else {
        fail("chat: message ", index, " has a content part that is not text (the model is text-only): ",
             part.dump());
      }
      if (!first) out += "\n";
      first = false;
      out += text;
    }
    return out;
  }
  fail("chat: message ", index, " has content that is neither a string, a list of parts nor null");
}

std::string opt_string(const ojson& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "";
  if (!it->is_string()) fail("chat: field '", key, "' must be a string");
  return it->get<std::string>();
}

}  // namespace

std::vector<Message> messages_from_json(const ojson& messages) {
  if (!messages.is_array()) fail("chat: `messages` must be a list");
  std::vector<Message> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& j = messages[i];
    if (!j.is_object() || !j.contains("role") || !j["role"].is_string())
      fail("chat: message ", i, " must be an object with a string `role`");
    Message m;
    m.role = role_from_name(j["role"].get<std::string>());
    if (j.contains("content")) m.content = content_text(j["content"], i);
    m.reasoning_content = opt_string(j, "reasoning_content");
    if (m.reasoning_content.empty()) m.reasoning_content = opt_string(j, "reasoning");
    if (j.contains("tool_calls") && !j["tool_calls"].is_null()) {
      if (!j["tool_calls"].is_array()) fail("chat: message ", i, ": `tool_calls` must be a list");
      for (const auto& tc : j["tool_calls"]) {
        ToolCall c;
        if (!tc.is_object()) fail("chat: message ", i, ": a tool call must be an object");
        c.id = opt_string(tc, "id");
        const ojson& f = tc.contains("function") ? tc["function"] : tc;
        if (!f.is_object() || !f.contains("name") || !f["name"].is_string())
          fail("chat: message ", i, ": a tool call needs function.name");
        c.name = f["name"].get<std::string>();
        if (!f.contains("arguments") || f["arguments"].is_null()) {
          c.arguments = "{}";
        } else if (f["arguments"].is_string()) {
          c.arguments = f["arguments"].get<std::string>();
        } else {
          c.arguments = py_json_dumps(f["arguments"]);  // already-parsed object
        }
        m.tool_calls.push_back(std::move(c));
      }
    }
    if (j.contains("tools")) m.tools = j["tools"];
    if (j.contains("response_format")) m.response_format = j["response_format"];
    if (j.contains("prefix") && j["prefix"].is_boolean()) m.prefix = j["prefix"].get<bool>();
    out.push_back(std::move(m));
  }
  return out;
}

ChatRequest chat_request_from_openai(const ojson& req, bool default_thinking) {
  if (!req.is_object()) fail("chat: the request must be a JSON object");
  if (!req.contains("messages")) fail("chat: the request has no `messages`");
  ChatRequest out;
  out.messages = messages_from_json(req["messages"]);

  // Thinking switch: chat_template_kwargs.{thinking,enable_thinking}, or DeepSeek's
  // "thinking": {"type": "enabled"|"disabled"}.
  out.thinking = default_thinking;
  bool decided = false;
  if (req.contains("chat_template_kwargs") && req["chat_template_kwargs"].is_object()) {
    const ojson& k = req["chat_template_kwargs"];
    for (const char* key : {"thinking", "enable_thinking"}) {
      if (!decided && k.contains(key) && k[key].is_boolean()) {
        out.thinking = k[key].get<bool>();
        decided = true;
      }
    }
  }
  if (!decided && req.contains("thinking")) {
    const ojson& t = req["thinking"];
    if (t.is_object() && t.contains("type") && t["type"].is_string()) {
      out.thinking = t["type"].get<std::string>() == "enabled";
    } else if (t.is_boolean()) {
      out.thinking = t.get<bool>();
    }
  }

  if (req.contains("tool_choice")) {
    const ojson& tc = req["tool_choice"];
    if (tc.is_string()) out.tool_choice = tc.get<std::string>();
  }
  if (out.tool_choice == "none") {
    for (auto& m : out.messages) m.tools = ojson();
    return out;
  }
  if (req.contains("tools") && has_tools(req["tools"])) {
    if (!out.messages.empty() &&
        (out.messages[0].role == Role::kSystem || out.messages[0].role == Role::kDeveloper)) {
      out.messages[0].tools = req["tools"];
    } else {
      Message sys;
      sys.role = Role::kSystem;
      sys.tools = req["tools"];
      out.messages.insert(out.messages.begin(), std::move(sys));
    }
  }
  return out;
}

}  // namespace dsa::chat

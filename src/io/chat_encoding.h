#pragma once
// Chat prompt encoding for DeepSeek-V3.2 (DSML encoder) and the V3.1 family (V3.1, V3.1-Terminus,
// V3.2-Exp), exactly as /work/shared/spec/chat-encoding.md (§3, §5) describes. No Jinja: both
// formats are implemented natively. See docs/chat.md for an overview.
//
// Typical use:
//   ChatFormat fmt = detect_chat_format(model_dir);          // or chat_format_from_name("v32")
//   ChatRequest req = chat_request_from_openai(request_json);  // messages + thinking switch
//   EncodeOptions opt; opt.thinking = req.thinking;
//   std::string prompt = encode_chat(fmt, req.messages, opt);
//   // tokenize `prompt` WITHOUT adding another BOS (spec §1)
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsa::chat {

using ojson = nlohmann::ordered_json;  // keeps object members in document order (spec §3.7)

// Special strings (spec §1). Note the U+FF5C '｜' and U+2581 '▁' characters.
inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kThinkOpen = "<think>";
inline constexpr std::string_view kThinkClose = "</think>";
// V3.2 DSML tags (plain text, not special tokens).
inline constexpr std::string_view kDsml = "｜DSML｜";
inline constexpr std::string_view kDsmlCallsOpen = "<｜DSML｜function_calls>";
inline constexpr std::string_view kDsmlCallsClose = "</｜DSML｜function_calls>";
inline constexpr std::string_view kDsmlInvokeOpen = "<｜DSML｜invoke";
inline constexpr std::string_view kDsmlInvokeClose = "</｜DSML｜invoke>";
inline constexpr std::string_view kDsmlParamOpen = "<｜DSML｜parameter";
inline constexpr std::string_view kDsmlParamClose = "</｜DSML｜parameter>";
// V3.1-family tool tokens (single added tokens).
inline constexpr std::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
inline constexpr std::string_view kToolCallsEnd = "<｜tool▁calls▁end｜>";
inline constexpr std::string_view kToolCallBegin = "<｜tool▁call▁begin｜>";
inline constexpr std::string_view kToolCallEnd = "<｜tool▁call▁end｜>";
inline constexpr std::string_view kToolSep = "<｜tool▁sep｜>";
inline constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
inline constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";

// ---- Message model ------------------------------------------------------------------------------

enum class Role { kSystem, kUser, kDeveloper, kAssistant, kTool };
const char* role_name(Role r);
Role role_from_name(std::string_view name);  // "system", "user", "developer", "assistant", "tool"

struct ToolCall {
  std::string id;         // ignored by both encoders
  std::string name;       // function.name
  std::string arguments;  // function.arguments: JSON *text* of an object
};

struct Message {
  Role role = Role::kUser;
  std::string content;            // null/absent content is "" (spec §3.1, §3.11)
  std::string reasoning_content;  // assistant only; rendered by V3.2 after the last user turn
  std::vector<ToolCall> tool_calls;  // assistant only
  ojson tools;            // system/developer only: array of {"type":"function","function":{...}}
  ojson response_format;  // system/developer only; null when absent (V3.2 only)
  bool prefix = false;    // assistant `prefix: true` (continuation; see encode_* notes)
};

// ---- Formats and selection ----------------------------------------------------------------------

enum class ChatFormat {
  kV32,  // DeepSeek-V3.2 / V3.2-Speciale: DSML encoder (spec §3)
  kV31,  // V3.1 family template, V3.2-Exp revision (spec §5); also dsa-mini's template
};
const char* chat_format_name(ChatFormat f);  // "v32" / "v31"
// "v32" | "v3.2" | "dsml" -> kV32; "v31" | "v3.1" | "v32-exp" | "v3.2-exp" -> kV31 (case-insensitive).
ChatFormat chat_format_from_name(std::string_view name);
// Spec §2: tokenizer_config.json with a non-empty "chat_template" -> kV31; otherwise (no template;
// V3.2 ships encoding/encoding_dsv32.py instead) -> kV32. Fails if the directory has neither a
// tokenizer_config.json nor encoding/encoding_dsv32.py, or the config is unreadable.
ChatFormat detect_chat_format(const std::string& model_dir);

// ---- Encoding -----------------------------------------------------------------------------------

struct EncodeOptions {
  bool thinking = false;  // V3.2: thinking_mode "thinking" vs "chat"; V3.1: template kwarg `thinking`
  bool add_bos = true;
  // V3.2 only (spec §3.10): messages[0, context_size) are context: they take part in the index
  // bookkeeping (last user index, tool-result positions) but are not rendered, and no BOS is written.
  std::size_t context_size = 0;
  // V3.1 family only.
  bool add_generation_prompt = true;
  bool v31_first_revision = false;  // the first published V3.1 template (§5.2) instead of V3.2-Exp's
  bool v31_render_tools = true;     // render the model-card tool description (§5.3) from `tools`
};

// V3.2 DSML encoder (spec §3). Errors (dsa::Error) as in §3.12: developer with empty content,
// tool result without a preceding assistant holding enough tool_calls, fewer results than calls at
// the end of the list, thinking-mode assistant after the last user turn with neither reasoning nor
// tool calls, arguments that are not a JSON object. Not reproduced (quirks): `None` for null content,
// drop_thinking's deletion of developer messages. Engine extension (later vLLM revision): a FINAL
// assistant message with prefix=true and no tool calls renders as its bare content (no reasoning,
// no EOS) so that generation continues it.
std::string encode_chat_v32(const std::vector<Message>& messages, const EncodeOptions& opt = {});

// V3.1-family template (spec §5.1, V3.2-Exp revision; §5.2 first revision with
// opt.v31_first_revision). Tools found on system messages are rendered after the system prompt as
// the V3.1 model card's tool description (§5.3), preceded by "\n\n" when the system prompt is not
// empty (the card leaves the joint open; see docs/chat.md). Developer messages are ignored.
std::string encode_chat_v31(const std::vector<Message>& messages, const EncodeOptions& opt = {});

std::string encode_chat(ChatFormat fmt, const std::vector<Message>& messages,
                        const EncodeOptions& opt = {});

// The V3.2 TOOLS_BLOCK (§3.5) for a list of OpenAI tool objects, and the V3.1 tool description (§5.3).
std::string v32_tools_block(const ojson& tools);
std::string v31_tool_description(const ojson& tools);
// DSML_CALLS (§3.6) for past tool calls.
std::string v32_dsml_calls(const std::vector<ToolCall>& calls);

// ---- OpenAI-style request -> messages (spec §3.11) ---------------------------------------------

struct ChatRequest {
  std::vector<Message> messages;
  bool thinking = false;
  std::string tool_choice;  // "auto", "none", "required", or "" (absent / a named function object)
};

// Converts {"messages": [...], "tools": [...], "tool_choice": ..., "chat_template_kwargs":
// {"thinking"|"enable_thinking": bool}, "thinking": {"type": "enabled"}} into messages:
//  - request-level tools (unless tool_choice is "none") replace the tools of messages[0] when it is a
//    system or developer message; otherwise an empty system message carrying them is inserted first;
//  - tool_choice "none" also removes message-level tools;
//  - content given as a list of parts: the text parts joined with "\n"; null content -> "";
//  - reasoning from "reasoning_content" or "reasoning"; tool_calls[].function.arguments given as an
//    object is serialized (§3.7); "prefix" is kept.
// `default_thinking` applies when the request says nothing. Unknown roles throw dsa::Error.
ChatRequest chat_request_from_openai(const ojson& request, bool default_thinking = false);
// Just the message list (same rules, without request-level tools).
std::vector<Message> messages_from_json(const ojson& messages);

// ---- JSON text exactly as Python json.dumps(value, ensure_ascii=False) (spec §3.7) -------------

// Serializes a JSON value: ", " and ": " separators, members in stored order, Python string
// escaping, integers as digits, floats as Python repr (1.0, 1e-05, 1e+16, Infinity, NaN).
std::string py_json_dumps(const ojson& value);
// A JSON string literal with Python's escaping (quotes included).
std::string py_json_string(std::string_view s);
// Python repr() of a double, as json.dumps prints floats.
std::string py_float_repr(double v);
// Parses JSON text the way Python json.loads does (NaN/Infinity accepted, duplicate keys: last value
// at the first position, integers of any size kept digit-exact) and re-serializes it as json.dumps
// would. Throws dsa::Error on invalid JSON.
std::string py_json_reformat(std::string_view json_text);
bool py_json_valid(std::string_view json_text);

// One member of a JSON object as needed by DSML rendering: for string values `string_value` holds
// the decoded string, otherwise `json` holds the value re-serialized as json.dumps would.
struct JsonMember {
  std::string key;
  bool is_string = false;
  std::string string_value;
  std::string json;
};
// Parses `json_text`, which must be an object; members in document order (duplicates as Python).
std::vector<JsonMember> py_json_object_members(std::string_view json_text);

}  // namespace dsa::chat

#pragma once
// Turning generated text back into reasoning_content, content and tool_calls
// (/work/shared/spec/chat-encoding.md §4 for V3.2, §5.4 for the V3.1 family).
//
//  - parse_v32_strict: the official reference parser (§4.2-4.3): exact, throws on anything odd.
//  - StreamParser: the engine's parser. Feed decoded text deltas, get reasoning / content / tool-call
//    events; bytes that could still be part of a tag are held back (§4.5). It applies the engine
//    policy of §4.4 (EOS optional, truncation, stray <think>, lenient tool blocks, valid JSON
//    arguments). On well-formed V3.2 output its events concatenate to the strict parser's result.
//  - parse_completion: the same policy for a whole text (it runs StreamParser once).
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "io/chat_encoding.h"

namespace dsa::chat {

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // JSON text of an object
};

struct ParsedMessage {
  std::string reasoning_content;  // "" in chat mode
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
};

// Reference parser (§4.2): text generated after a V3.2 prompt, EOS string included if the model
// wrote it. Throws dsa::Error ("Invalid thinking format", "Invalid summary format",
// "Invalid function calls format", "Parameter format error", "Unexpected content at end", ...).
ParsedMessage parse_v32_strict(std::string_view text, bool thinking);

struct ParseOptions {
  ChatFormat format = ChatFormat::kV32;
  bool thinking = false;  // the prompt ended in <think>: output starts with reasoning
};

struct StreamEvent {
  enum Kind {
    kReasoning,  // text: a piece of reasoning
    kContent,    // text: a piece of content
    kCallBegin,  // index, text = function name
    kCallArgs,   // index, text = a fragment of the arguments JSON
    kCallEnd,    // index: the call is complete (its fragments form a JSON object)
  };
  Kind kind;
  int index = -1;
  std::string text;
  bool operator==(const StreamEvent&) const = default;
};

class StreamParser {
 public:
  explicit StreamParser(const ParseOptions& opt);
  // Appends a decoded text delta (whole UTF-8 characters) and returns the events it completes.
  std::vector<StreamEvent> feed(std::string_view delta);
  // End of generation (EOS, stop string or length): flushes held text. A call still open is
  // incomplete: it never gets kCallEnd and must be dropped (§4.4 item 2); see truncated_call().
  std::vector<StreamEvent> finish();

  std::string_view held() const { return buf_; }  // undelivered bytes (for tests and debugging)
  bool finished() const { return finished_; }
  bool saw_think_close() const { return saw_think_close_; }  // thinking mode: </think> was seen
  bool saw_eos() const { return saw_eos_; }                   // the EOS string was in the text
  bool truncated_call() const { return truncated_call_; }     // a call was open at finish()
  int num_calls() const { return call_index_; }               // complete calls so far
  const std::vector<std::string>& warnings() const { return warnings_; }  // policy deviations

 private:
  enum class State {
    kStart, kReasoning, kContent,
    kToolBlock, kInvokeHead, kParams, kParamHead, kValue, kSkipInvoke, kSkipParam,  // V3.2 DSML
    kV31Calls, kV31Name, kV31Args,                                                  // V3.1 tokens
    kAfterTools, kDone,
  };
  bool step(std::vector<StreamEvent>& ev);  // one transition; false when it needs more text
  void emit(std::vector<StreamEvent>& ev, StreamEvent::Kind k, std::string text);
  void warn(std::string w);

  ParseOptions opt_;
  State state_;
  std::string buf_;
  bool finished_ = false, saw_think_close_ = false, saw_eos_ = false, truncated_call_ = false;
  // Tool-call bookkeeping.
  int call_index_ = 0;            // index of the current / next call
  bool call_open_ = false;        // kCallBegin emitted, kCallEnd not yet
  std::vector<std::string> keys_;  // parameters of the current invoke
  bool value_is_string_ = false;
  size_t scan_pos_ = 0;           // kValue: where to resume searching for the closing tag
  bool args_emitted_ = false;     // V3.1: some argument text was emitted for the current call
  bool warned_done_ = false;
  std::vector<std::string> warnings_;
};

struct ParseResult {
  ParsedMessage message;  // only complete tool calls
  bool saw_think_close = false;
  bool saw_eos = false;
  bool truncated_call = false;  // an incomplete tool call was dropped
  std::vector<std::string> warnings;
};

// Engine-policy parse of a whole generated text (§4.4). Never throws on model output.
ParseResult parse_completion(std::string_view text, const ParseOptions& opt);

// OpenAI response fields (§4.4 item 8): "finish_reason" is "length" when generation hit the
// length limit, "tool_calls" when at least one call was parsed, else "stop".
std::string finish_reason(const ParseResult& r, bool stopped_by_length);
// A unique call id: "call_" + 24 hex digits.
std::string make_tool_call_id();
// {"role":"assistant","content":...,"reasoning_content":...,"tool_calls":[...]}: content null when
// empty and there are calls, reasoning_content null in chat mode, tool_calls omitted when none.
// `make_id` defaults to make_tool_call_id.
ojson to_openai_message(const ParsedMessage& m, bool thinking,
                        const std::function<std::string()>& make_id = {});

}  // namespace dsa::chat

#pragma once
// The OpenAI API surface of `dsa serve`: request bodies checked and turned into engine requests,
// engine outputs turned into response objects and stream chunks (docs/server.md).
//
//   ApiRequest r = parse_chat_request(body, model);      // throws ApiError (400/404)
//   Submission sub(loop, r.engine_requests());            // n choices per prompt
//   std::vector<Choice> choices = make_choices(r, model);
//   choices[k].feed(output, &chunks);                     // per engine output, in order
//   ... chat_response(r, model, choices) / the chunks as server-sent events
//
// Everything that depends on the HTTP library stays in http_server.cpp.
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/chat_encoding.h"
#include "io/output_parser.h"
#include "io/tokenizer.h"
#include "runtime/request.h"

namespace dsa::server {

using json = nlohmann::ordered_json;  // members in the order written, as OpenAI shows them

// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "", std::string type = "");
  int status;
  std::string param, code, type;
};
// The body for an error (type from the status when empty: invalid_request_error, server_error, ...).
std::string error_body(int status, const std::string& message, const std::string& param = "",
                       const std::string& code = "", const std::string& type = "");
std::string error_body(const ApiError& e);
// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump(const json& j);

// What the API layer knows about the served model and its limits.
struct ModelInfo {
  std::string name;             // the model id of /v1/models and every response
  std::string dir;              // accepted as a model name too
  int64_t context = 0;          // max_position_embeddings
  int64_t kv_tokens = 0;        // the KV pool's capacity
  int64_t vocab = 0;
  const Tokenizer* tok = nullptr;
  chat::ChatFormat format = chat::ChatFormat::kV32;
  bool default_thinking = false;
  // Sampling defaults (the model's generation_config.json, else OpenAI's).
  float temperature = 1.0f, top_p = 1.0f;
  int64_t top_k = 0;
  int max_n = 16;
  size_t max_messages = 2048;
  size_t max_stop = 16;
  bool allow_scripted = false;  // --allow-scripted-replies (testing)
};

enum class ApiKind { Chat, Completion };

struct ApiRequest {
  ApiKind kind = ApiKind::Chat;
  struct Prompt {
    std::vector<int32_t> ids;
    std::string text;        // completions: the prompt as text (echo)
    int64_t max_tokens = 0;  // resolved against the context and the KV pool
  };
  std::vector<Prompt> prompts;  // chat: one; completions: one per prompt given
  RequestParams params;         // the per-choice request, without prompt and max_tokens
  int n = 1;
  bool stream = false, include_usage = false;
  bool logprobs = false;        // chat: `logprobs`; completions: `logprobs` given
  int top_logprobs = 0;
  bool echo = false;            // completions
  // Chat output.
  bool thinking = false;
  std::string forced;           // assistant text the prompt already ends with (tool_choice required / named)
  std::string scripted;         // --allow-scripted-replies: the reply text replacing the model's
  std::vector<int32_t> scripted_ids;
  // Engine requests, choice index = prompt * n + i; seed + i for the i-th sample of a prompt.
  std::vector<RequestParams> engine_requests() const;
};

ApiRequest parse_chat_request(const std::string& body, const ModelInfo& m);
ApiRequest parse_completion_request(const std::string& body, const ModelInfo& m);

// One choice of a response: follows its engine request's outputs, parses chat output (reasoning,
// content, tool calls), builds stream deltas and the final choice object.
class Choice {
 public:
  Choice(const ApiRequest& r, const ModelInfo& m, int index, int prompt_index);
  // Applies one engine output. With `chunks`, appends the stream choice objects it produces
  // ({"index", "delta"|"text", "logprobs", "finish_reason"}) — the final one when it finishes.
  void feed(const RequestOutput& o, std::vector<json>* chunks);
  // Stream objects to send before any output (chat: the role delta; completions: the echo).
  std::vector<json> opening() const;
  json final_object() const;  // the choice of a non-streaming response
  bool finished() const { return finished_; }
  FinishReason engine_finish() const { return finish_; }
  const std::string& error() const { return error_; }
  const std::string& finish_reason() const { return finish_reason_; }
  int index() const { return index_; }
  int prompt_index() const { return prompt_; }
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;

 private:
  void add_logprobs(const RequestOutput& o);
  void events(const std::vector<chat::StreamEvent>& evs, std::vector<json>* chunks);
  json take_logprobs();  // the logprobs gathered since the last chunk (null when none)
  json completion_logprobs() const;  // completions: all of them
  size_t text_bytes(int32_t id) const;  // what a token adds to the text (text_offset)

  const ApiRequest& r_;
  const ModelInfo& m_;
  int index_, prompt_;
  std::unique_ptr<chat::StreamParser> parser_;
  std::unique_ptr<StreamDecoder> script_dec_;
  std::unique_ptr<StreamDecoder> dec_;  // the engine request's text, decoded here (no stop strings)
  size_t script_pos_ = 0;
  // Accumulated result.
  std::string text_, reasoning_, content_;
  struct Call {
    std::string id, name, arguments;
    bool complete = false;
  };
  std::vector<Call> calls_;
  json lp_all_ = json::array(), lp_pending_ = json::array();  // chat: token entries
  // Completions: the legacy logprobs layout.
  json c_tokens_ = json::array(), c_lps_ = json::array(), c_top_ = json::array(), c_offsets_ = json::array();
  size_t c_offset_ = 0;
  bool echoed_ = false;
  std::vector<chat::StreamEvent> forced_events_;  // from the forced start of a tool call
  bool finished_ = false;
  FinishReason finish_ = FinishReason::None;
  std::string finish_reason_, error_;
};

std::vector<Choice> make_choices(const ApiRequest& r, const ModelInfo& m);
// "usage": prompt tokens counted once per prompt, completion tokens summed over the choices.
json usage(const ApiRequest& r, const std::vector<Choice>& choices);
// Non-streaming response objects.
json response_object(const ApiRequest& r, const ModelInfo& m, const std::vector<Choice>& choices, const std::string& id,
                     int64_t created);
// A stream chunk carrying `choices` (objects from Choice::feed / opening).
json chunk_object(const ApiRequest& r, const ModelInfo& m, json choices, const std::string& id, int64_t created);
std::string new_response_id(ApiKind kind);  // "chatcmpl-…" / "cmpl-…"

}  // namespace dsa::server

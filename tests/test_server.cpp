// dsa serve, the API: routes, chat and completions (streaming and not) against what the engine
// produces for the same request alone, n > 1, stop strings, logprobs, reasoning, tool calls (DSML
// and V3.1 through scripted replies, forced tool_choice), API keys, and every kind of bad input
// answered with OpenAI's error shape while other streams carry on untouched.
#include <algorithm>
#include <atomic>
#include <set>

#include "io/chat_encoding.h"
#include "test_server_util.h"

namespace dsa::test {

namespace {

std::vector<int32_t> chat_prompt(const TestServer& s, const std::string& user, bool thinking = false) {
  std::vector<chat::Message> msgs{{chat::Role::kUser, user}};
  chat::EncodeOptions eo;
  eo.thinking = thinking;
  return s.eng->tokenizer()->encode(chat::encode_chat(s.model().format, msgs, eo));
}

RequestParams greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  return p;
}

std::string text_of(const TestServer& s, const std::vector<int32_t>& toks) {
  std::vector<int32_t> t = toks;
  if (!t.empty() && t.back() == s.eng->config().eos_token_id) t.pop_back();  // EOS adds no text
  return s.eng->tokenizer()->decode(t);
}

}  // namespace

TEST(Server, RoutesModelsHealthPage) {
  TestServer s;
  httplib::Client c = s.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");

  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const json mj = json::parse(m->body);
  EXPECT_EQ(mj["object"], "list");
  ASSERT_EQ(mj["data"].size(), 1u);
  EXPECT_EQ(mj["data"][0]["id"], "dsa-mini");
  EXPECT_EQ(mj["data"][0]["max_model_len"], 8192);
  auto one = c.Get("/v1/models/dsa-mini");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  auto none = c.Get("/v1/models/gpt-4");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);

  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(page->body.find("/v1/chat/completions"), std::string::npos);
  // Self-contained: nothing loaded from elsewhere.
  for (const char* ext : {"src=\"http", "href=\"http", "src='http", "@import", "url(http"})
    EXPECT_EQ(page->body.find(ext), std::string::npos) << ext;

  auto missing = c.Get("/v2/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  Reply r{missing->status, json::parse(missing->body, nullptr, false), missing->body, {}};
  EXPECT_NE(expect_error_shape(r).find("/v2/nothing"), std::string::npos);

  auto opt = c.Options("/v1/chat/completions");
  ASSERT_TRUE(opt);
  EXPECT_EQ(opt->status, 204);
  EXPECT_EQ(opt->get_header_value("Access-Control-Allow-Origin"), "*");
}

TEST(Server, ChatMatchesTheEngineAlone) {
  TestServer s;
  httplib::Client c = s.client();
  const std::string q = "Tell me about the President of the United States.";
  Reply r = post(c, "/v1/chat/completions", user_chat(q, 24));
  ASSERT_EQ(r.status, 200) << r.raw;
  const json& b = r.body;
  EXPECT_EQ(b["object"], "chat.completion");
  EXPECT_EQ(b["model"], "dsa-mini");
  EXPECT_EQ(b["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  ASSERT_EQ(b["choices"].size(), 1u);
  const json& ch = b["choices"][0];
  EXPECT_EQ(ch["message"]["role"], "assistant");
  EXPECT_TRUE(ch["message"]["reasoning_content"].is_null());  // thinking off
  EXPECT_TRUE(ch["logprobs"].is_null());

  const std::vector<int32_t> prompt = chat_prompt(s, q);
  const std::vector<int32_t> solo = solo_tokens(greedy(prompt, 24));
  EXPECT_EQ(ch["message"]["content"].get<std::string>(), text_of(s, solo));
  EXPECT_EQ(ch["finish_reason"], solo.size() == 24 ? "length" : "stop");
  EXPECT_EQ(b["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(b["usage"]["completion_tokens"], solo.size());
  EXPECT_EQ(b["usage"]["total_tokens"], prompt.size() + solo.size());
  EXPECT_TRUE(b["usage"]["prompt_tokens_details"]["cached_tokens"].is_number());

  // The same request streamed: identical text, role first, one finish, usage last, then [DONE].
  json sb = user_chat(q, 24);
  sb["stream"] = true;
  sb["stream_options"] = {{"include_usage", true}};
  StreamResult st = stream(c, "/v1/chat/completions", sb);
  ASSERT_EQ(st.status, 200);
  ASSERT_GE(st.events.size(), 4u);
  EXPECT_EQ(st.events.back(), "[DONE]");
  const json first = json::parse(st.events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  const json last = json::parse(st.events[st.events.size() - 2]);
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"]["completion_tokens"], solo.size());
  int finishes = 0;
  for (size_t i = 0; i + 1 < st.events.size(); ++i) {
    const json e = json::parse(st.events[i]);
    EXPECT_EQ(e["id"], first["id"]);  // one id for the whole stream
    EXPECT_TRUE(e.contains("usage"));  // null until the last one, as OpenAI sends it
    for (const json& x : e["choices"]) finishes += x["finish_reason"].is_string();
  }
  EXPECT_EQ(finishes, 1);
  const auto got = collect(st.events);
  EXPECT_EQ(got[0].content, ch["message"]["content"].get<std::string>());
  EXPECT_EQ(got[0].finish, ch["finish_reason"].get<std::string>());
  EXPECT_GT(got[0].chunks, 3);  // it did stream, piece by piece
}

TEST(Server, CompletionsPromptFormsEchoAndLogprobs) {
  TestServer s;
  httplib::Client c = s.client();
  const Tokenizer& tok = *s.eng->tokenizer();
  const std::vector<int32_t> ids = tok.encode_with_bos("The President of the United States");
  const std::vector<int32_t> solo = solo_tokens(greedy(ids, 12));

  Reply a = post(c, "/v1/completions", json{{"prompt", "The President of the United States"}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["object"], "text_completion");
  EXPECT_EQ(a.body["choices"][0]["text"].get<std::string>(), text_of(s, solo));
  EXPECT_EQ(a.body["usage"]["prompt_tokens"], ids.size());

  Reply b = post(c, "/v1/completions", json{{"prompt", ids}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(b.status, 200) << b.raw;
  EXPECT_EQ(b.body["choices"][0]["text"], a.body["choices"][0]["text"]);

  // Several prompts: one choice each, in order.
  Reply m = post(c, "/v1/completions", json{{"prompt", json::array({"The President", ids})}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(m.status, 200) << m.raw;
  ASSERT_EQ(m.body["choices"].size(), 2u);
  EXPECT_EQ(m.body["choices"][1]["index"], 1);
  EXPECT_EQ(m.body["choices"][1]["text"], a.body["choices"][0]["text"]);
  EXPECT_EQ(m.body["usage"]["prompt_tokens"], tok.encode_with_bos("The President").size() + ids.size());

  // echo + logprobs: the prompt's own log-probabilities (first token: none), then the generated ones.
  Reply e = post(c, "/v1/completions",
                 json{{"prompt", "The President of the United States"}, {"max_tokens", 4}, {"temperature", 0}, {"echo", true}, {"logprobs", 3}});
  ASSERT_EQ(e.status, 200) << e.raw;
  const json& ch = e.body["choices"][0];
  const std::string text = ch["text"];
  EXPECT_EQ(text.rfind("The President of the United States", 0), 0u) << text;
  const json& lp = ch["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), ids.size() + 4);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  for (size_t i = 1; i < lp["token_logprobs"].size(); ++i) {
    ASSERT_TRUE(lp["token_logprobs"][i].is_number()) << i;
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 1e-6);
  }
  // Offsets index the text: each token's string starts at its offset.
  for (size_t i = 1; i < lp["tokens"].size(); ++i) {
    const size_t off = lp["text_offset"][i];
    const std::string t = lp["tokens"][i];
    EXPECT_EQ(text.substr(off, t.size()), t) << i;
  }
  // Generated tokens: greedy picks the most likely, which tops its alternatives.
  for (size_t i = ids.size(); i < lp["tokens"].size(); ++i) {
    const json& top = lp["top_logprobs"][i];
    ASSERT_EQ(top.size(), 3u);
    double best = -1e9;
    for (auto& [k, v] : top.items()) best = std::max(best, v.get<double>());
    EXPECT_NEAR(best, lp["token_logprobs"][i].get<double>(), 1e-5);
  }
  // max_tokens 0 with echo scores the prompt only.
  Reply z = post(c, "/v1/completions", json{{"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 0}});
  ASSERT_EQ(z.status, 200) << z.raw;
  EXPECT_EQ(z.body["usage"]["completion_tokens"], 0);
  EXPECT_EQ(z.body["choices"][0]["logprobs"]["token_logprobs"].size(), ids.size());
  for (size_t i = 1; i < ids.size(); ++i)
    EXPECT_NEAR(z.body["choices"][0]["logprobs"]["token_logprobs"][i].get<double>(), lp["token_logprobs"][i].get<double>(), 1e-4);

  // Streaming completions.
  StreamResult st = stream(c, "/v1/completions", json{{"prompt", ids}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}});
  ASSERT_EQ(st.status, 200);
  EXPECT_EQ(st.events.back(), "[DONE]");
  EXPECT_EQ(collect(st.events)[0].content, a.body["choices"][0]["text"].get<std::string>());
}

TEST(Server, NChoicesAreNSeededRequests) {
  TestServer s;
  httplib::Client c = s.client();
  const std::string q = "Write about the weather.";
  json body = user_chat(q, 10, 1.0);
  body["n"] = 3;
  body["seed"] = 1234;
  Reply r = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.raw;
  ASSERT_EQ(r.body["choices"].size(), 3u);
  const std::vector<int32_t> prompt = chat_prompt(s, q);
  int64_t total = 0;
  std::set<std::string> distinct;
  for (int i = 0; i < 3; ++i) {
    RequestParams p = greedy(prompt, 10);
    p.sampling.temperature = 1.0f;
    p.sampling.top_p = s.model().top_p;
    p.sampling.seed = 1234 + uint64_t(i);
    const std::vector<int32_t> solo = solo_tokens(p);
    EXPECT_EQ(r.body["choices"][size_t(i)]["index"], i);
    EXPECT_EQ(r.body["choices"][size_t(i)]["message"]["content"].get<std::string>(), text_of(s, solo)) << "choice " << i;
    distinct.insert(r.body["choices"][size_t(i)]["message"]["content"].get<std::string>());
    total += int64_t(solo.size());
  }
  EXPECT_GE(distinct.size(), 2u) << "n samples, not n copies";
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt.size());  // counted once
  EXPECT_EQ(r.body["usage"]["completion_tokens"], total);
  // Streamed: the same three texts.
  body["stream"] = true;
  StreamResult st = stream(c, "/v1/chat/completions", body);
  const auto got = collect(st.events, 3);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i].content, r.body["choices"][i]["message"]["content"].get<std::string>());
}

// A /v1/completions request streamed or not: its text and finish reason (ok: a 200 reply, checked).
struct Completion {
  bool ok = false;
  std::string text, finish;
  Reply reply;  // the non-streamed reply
};
Completion complete(httplib::Client& c, const json& body, bool streamed) {
  Completion r;
  if (streamed) {
    const auto got = collect(stream(c, "/v1/completions", body).events);
    r.text = got[0].content;
    r.finish = got[0].finish;
    r.ok = true;
    return r;
  }
  r.reply = post(c, "/v1/completions", body);
  EXPECT_EQ(r.reply.status, 200) << r.reply.raw;
  r.ok = r.reply.status == 200;
  if (r.ok) {
    r.text = r.reply.body["choices"][0]["text"];
    r.finish = r.reply.body["choices"][0]["finish_reason"];
  }
  return r;
}

TEST(Server, StopStringsCutTheText) {
  TestServer s;
  httplib::Client c = s.client();
  const std::vector<int32_t> ids = s.eng->tokenizer()->encode_with_bos("The President of the United States");
  const std::string full = text_of(s, solo_tokens(greedy(ids, 20)));
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(6, 4);
  const size_t at = full.find(stop);
  for (bool streamed : {false, true}) {
    json body{{"prompt", ids}, {"max_tokens", 20}, {"temperature", 0}, {"stop", json::array({stop, "zzzz-never"})}, {"stream", streamed}};
    const Completion got = complete(c, body, streamed);
    ASSERT_TRUE(got.ok);
    const std::string &text = got.text, &finish = got.finish;
    EXPECT_EQ(text, full.substr(0, at)) << "stop " << stop << (streamed ? " (streamed)" : "");
    EXPECT_EQ(finish, "stop");
  }
}

// A stop token id ends the request without its text (as EOS does); the text before it is the
// decoded tokens. Without stop strings the text is decoded on the HTTP thread (the engine's rule).
TEST(Server, StopTokenIdEndsWithoutItsText) {
  TestServer s;
  httplib::Client c = s.client();
  const Tokenizer& tok = *s.eng->tokenizer();
  const std::vector<int32_t> ids = tok.encode_with_bos("The President of the United States");
  const std::vector<int32_t> full = solo_tokens(greedy(ids, 20));
  ASSERT_GE(full.size(), 8u);
  size_t k = 4;  // the first position >= 4 whose token did not come before
  while (k < full.size() && std::find(full.begin(), full.begin() + int64_t(k), full[k]) != full.begin() + int64_t(k)) ++k;
  ASSERT_LT(k, full.size());
  const std::string want = tok.decode(std::vector<int32_t>(full.begin(), full.begin() + int64_t(k)), true);
  for (bool streamed : {false, true}) {
    json body{{"prompt", ids}, {"max_tokens", 20}, {"temperature", 0}, {"stop_token_ids", json::array({full[k]})},
              {"stream", streamed}};
    const Completion got = complete(c, body, streamed);
    ASSERT_TRUE(got.ok);
    const std::string &text = got.text, &finish = got.finish;
    if (!streamed)
      EXPECT_EQ(got.reply.body["usage"]["completion_tokens"], int64_t(k + 1));  // the stop token counts, as generated
    EXPECT_EQ(text, want) << "stop token " << full[k] << " at " << k << (streamed ? " (streamed)" : "");
    EXPECT_EQ(finish, "stop");
  }
}

TEST(Server, ChatLogprobs) {
  TestServer s;
  httplib::Client c = s.client();
  json body = user_chat("Hello there", 6);
  body["logprobs"] = true;
  body["top_logprobs"] = 4;
  Reply r = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.raw;
  const json& lp = r.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(lp.size(), r.body["usage"]["completion_tokens"].get<size_t>());
  std::string joined;
  for (const json& t : lp) {
    joined += t["token"].get<std::string>();
    ASSERT_EQ(t["top_logprobs"].size(), 4u);
    EXPECT_NEAR(t["top_logprobs"][0]["logprob"].get<double>(), t["logprob"].get<double>(), 1e-5);  // greedy: the best
    for (size_t k = 1; k < 4; ++k) EXPECT_LE(t["top_logprobs"][k]["logprob"], t["top_logprobs"][k - 1]["logprob"]);
    std::string bytes;
    for (const json& b : t["bytes"]) bytes += char(b.get<int>());
    EXPECT_EQ(bytes, t["token"].get<std::string>());
  }
  EXPECT_EQ(joined, r.body["choices"][0]["message"]["content"].get<std::string>());
  // Streamed: the same entries, spread over the chunks.
  body["stream"] = true;
  StreamResult st = stream(c, "/v1/chat/completions", body);
  json all = json::array();
  for (const std::string& e : st.events) {
    if (e == "[DONE]") continue;
    const json j = json::parse(e);
    for (const json& ch : j["choices"])
      if (ch["logprobs"].is_object())
        for (const json& t : ch["logprobs"]["content"]) all.push_back(t);
  }
  EXPECT_EQ(all, lp);
}

TEST(Server, ReasoningOnAndOff) {
  TestServer s;
  httplib::Client c = s.client();
  json body = user_chat("Why is the sky blue?", 12);
  body["chat_template_kwargs"] = {{"thinking", true}};
  Reply on = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(on.status, 200) << on.raw;
  const json& m = on.body["choices"][0]["message"];
  ASSERT_TRUE(m["reasoning_content"].is_string()) << on.raw;
  // The prompt ends in <think>: what the model writes up to </think> is reasoning.
  const std::vector<int32_t> solo = solo_tokens(greedy(chat_prompt(s, "Why is the sky blue?", true), 12));
  const std::string text = text_of(s, solo);
  const size_t close = text.find("</think>");
  EXPECT_EQ(m["reasoning_content"].get<std::string>(), text.substr(0, close));
  Reply off = post(c, "/v1/chat/completions", user_chat("Why is the sky blue?", 12));
  ASSERT_EQ(off.status, 200);
  EXPECT_TRUE(off.body["choices"][0]["message"]["reasoning_content"].is_null());

  // A scripted reply exercises the split exactly, streamed and not (DeepSeek's form: "thinking").
  json sc = user_chat("Why is the sky blue?", 200);
  sc["thinking"] = {{"type", "enabled"}};
  sc["scripted_reply"] = "Light scatters.</think>Rayleigh scattering.";
  Reply r = post(c, "/v1/chat/completions", sc);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["choices"][0]["message"]["reasoning_content"], "Light scatters.");
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], "Rayleigh scattering.");
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  sc["stream"] = true;
  const auto got = collect(stream(c, "/v1/chat/completions", sc).events);
  EXPECT_EQ(got[0].reasoning, "Light scatters.");
  EXPECT_EQ(got[0].content, "Rayleigh scattering.");
  // Cut by max_tokens inside the reasoning: all reasoning, finish "length".
  sc["stream"] = false;
  sc["max_tokens"] = 2;
  Reply cut = post(c, "/v1/chat/completions", sc);
  ASSERT_EQ(cut.status, 200);
  EXPECT_EQ(cut.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(cut.body["choices"][0]["message"]["content"], "");
}

namespace {

const json kWeatherTools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
  "description": "Current weather of a city", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}])");

// Tool calls of a streamed chat response, assembled as OpenAI clients do (by index).
json streamed_calls(const std::vector<std::string>& events) {
  json calls = json::array();
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    const json j = json::parse(e);
    for (const json& ch : j["choices"]) {
      if (!ch["delta"].contains("tool_calls")) continue;
      for (const json& tc : ch["delta"]["tool_calls"]) {
        const size_t k = tc["index"];
        while (calls.size() <= k) calls.push_back(json{{"id", ""}, {"name", ""}, {"arguments", ""}});
        if (tc.contains("id")) calls[k]["id"] = tc["id"];
        if (tc["function"].contains("name")) calls[k]["name"] = tc["function"]["name"];
        if (tc["function"].contains("arguments"))
          calls[k]["arguments"] = calls[k]["arguments"].get<std::string>() + tc["function"]["arguments"].get<std::string>();
      }
    }
  }
  return calls;
}

void expect_weather_call(const json& calls_or_message, bool message, const std::string& city, int days) {
  const json& calls = message ? calls_or_message["tool_calls"] : calls_or_message;
  ASSERT_EQ(calls.size(), 1u) << calls_or_message.dump();
  const json& f = message ? calls[0]["function"] : calls[0];
  EXPECT_EQ(f["name"], "get_weather");
  const json args = json::parse(f["arguments"].get<std::string>());
  EXPECT_EQ(args["city"], city);
  if (days >= 0) {
    EXPECT_EQ(args["days"], days);
  }
  const std::string id = message ? calls[0]["id"].get<std::string>() : calls[0]["id"].get<std::string>();
  EXPECT_EQ(id.rfind("call_", 0), 0u);
}

}  // namespace

TEST(Server, ToolCallsDsmlScripted) {
  // The V3.2 format on dsa-mini's weights: the prompt renders the tools block, and a scripted DSML
  // reply runs the whole output path (parser, deltas, finish reason).
  TestServer s(engine_options(), {}, [](server::ModelInfo& m) { m.format = chat::ChatFormat::kV32; });
  httplib::Client c = s.client();
  const std::string dsml =
      "Let me look.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
  json body = user_chat("What is the weather in Paris?", 300);
  body["tools"] = kWeatherTools;
  body["scripted_reply"] = dsml;
  Reply r = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.raw;
  const json& ch = r.body["choices"][0];
  EXPECT_EQ(ch["finish_reason"], "tool_calls");
  EXPECT_EQ(ch["message"]["content"], "Let me look.");
  expect_weather_call(ch["message"], true, "Paris", 3);

  body["stream"] = true;
  StreamResult st = stream(c, "/v1/chat/completions", body);
  ASSERT_EQ(st.status, 200);
  expect_weather_call(streamed_calls(st.events), false, "Paris", 3);
  const auto got = collect(st.events);
  EXPECT_EQ(got[0].content, "Let me look.");
  EXPECT_EQ(got[0].finish, "tool_calls");
  for (const std::string& e : st.events) EXPECT_EQ(e.find("DSML"), std::string::npos) << "a tag leaked: " << e;

  // Truncated inside the call: the open call is dropped, finish "length".
  body["stream"] = false;
  body["max_tokens"] = 30;
  Reply cut = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(cut.status, 200);
  EXPECT_EQ(cut.body["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(cut.body["choices"][0]["message"].contains("tool_calls"));

  // tool_choice naming the function: the prompt ends inside its call, so the reply is only the
  // arguments; the call header comes first in the stream.
  json forced = user_chat("Weather?", 300);
  forced["tools"] = kWeatherTools;
  forced["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  forced["scripted_reply"] =
      "<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
  Reply fr = post(c, "/v1/chat/completions", forced);
  ASSERT_EQ(fr.status, 200) << fr.raw;
  EXPECT_EQ(fr.body["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(fr.body["choices"][0]["message"]["content"].is_null());
  expect_weather_call(fr.body["choices"][0]["message"], true, "Oslo", -1);
  forced["stream"] = true;
  StreamResult fs = stream(c, "/v1/chat/completions", forced);
  expect_weather_call(streamed_calls(fs.events), false, "Oslo", -1);

  // And with the real model: whatever it writes after the forced header, the call is get_weather.
  json real = user_chat("Weather?", 8);
  real["tools"] = kWeatherTools;
  real["tool_choice"] = "required";
  real["stream"] = true;
  StreamResult rs = stream(c, "/v1/chat/completions", real);
  ASSERT_EQ(rs.status, 200);
  EXPECT_EQ(rs.events.back(), "[DONE]");
}

TEST(Server, ToolCallsV31Scripted) {
  TestServer s;  // dsa-mini: the V3.1-family template
  ASSERT_EQ(s.model().format, chat::ChatFormat::kV31);
  httplib::Client c = s.client();
  json body = user_chat("Weather in Rome?", 300);
  body["tools"] = kWeatherTools;
  body["scripted_reply"] =
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Rome\", \"days\": 2}"
      "<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  Reply r = post(c, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "tool_calls");
  expect_weather_call(r.body["choices"][0]["message"], true, "Rome", 2);
  body["stream"] = true;
  expect_weather_call(streamed_calls(stream(c, "/v1/chat/completions", body).events), false, "Rome", 2);
  // tool_choice "none": the tools are not rendered and the prompt is the plain chat prompt.
  json none = user_chat("Weather in Rome?", 5);
  none["tools"] = kWeatherTools;
  none["tool_choice"] = "none";
  Reply a = post(c, "/v1/chat/completions", none);
  Reply b = post(c, "/v1/chat/completions", user_chat("Weather in Rome?", 5));
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(a.body["usage"]["prompt_tokens"], b.body["usage"]["prompt_tokens"]);
  Reply with = post(c, "/v1/chat/completions", [&] { json j = none; j.erase("tool_choice"); return j; }());
  EXPECT_GT(with.body["usage"]["prompt_tokens"].get<int>(), a.body["usage"]["prompt_tokens"].get<int>());
}

TEST(Server, ApiKey) {
  server::ServerOptions so;
  so.api_key = "sk-test-123";
  TestServer s(engine_options(), so);
  httplib::Client c = s.client();
  const json body = user_chat("hi", 2);
  Reply none = post(c, "/v1/chat/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.body["error"]["code"], "invalid_api_key");
  expect_error_shape(none);
  Reply wrong = post(c, "/v1/chat/completions", body, {{"Authorization", "Bearer sk-test-124"}});
  EXPECT_EQ(wrong.status, 401);
  Reply basic = post(c, "/v1/chat/completions", body, {{"Authorization", "Basic sk-test-123"}});
  EXPECT_EQ(basic.status, 401);
  Reply ok = post(c, "/v1/chat/completions", body, {{"Authorization", "Bearer sk-test-123"}});
  EXPECT_EQ(ok.status, 200) << ok.raw;
  auto models = c.Get("/v1/models");
  EXPECT_EQ(models->status, 401);
  auto health = c.Get("/health");  // probes and the page stay open
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(c.Get("/")->status, 200);
}

// Every bad request gets a 4xx with OpenAI's error shape naming the problem.
TEST(Server, BadInputGetsClearErrors) {
  TestServer s;
  httplib::Client c = s.client();
  const std::string long_text = [] {
    std::string t;
    for (int i = 0; i < 9000; ++i) t += "word ";
    return t;
  }();
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;      // expected `param` ("" = null)
    const char* message;    // a substring of the message
  };
  const char* chat = "/v1/chat/completions";
  const char* cmpl = "/v1/completions";
  auto with = [](json j, const char* k, json v) {
    j[k] = std::move(v);
    return j.dump();
  };
  const json ok = user_chat("hi", 4);
  const json okc{{"prompt", "hi"}, {"max_tokens", 4}};
  const std::vector<Case> cases = {
      {chat, "{\"messages\": [", 400, "", "not valid JSON"},
      {chat, "", 400, "", "not valid JSON"},
      {chat, "[1, 2]", 400, "", "must be a JSON object"},
      {chat, "{\"max_tokens\": 3}", 400, "messages", "`messages` is required"},
      {chat, with(ok, "messages", json::array()), 400, "messages", "must not be empty"},
      {chat, with(ok, "messages", "hello"), 400, "messages", "must be a list"},
      {chat, with(ok, "messages", json::array({json{{"content", "x"}}})), 400, "messages[0].role", "must be a string"},
      {chat, with(ok, "messages", json::array({json{{"role", "wizard"}, {"content", "x"}}})), 400, "messages[0].role", "wizard"},
      {chat, with(ok, "messages", json::array({json{{"role", "user"}, {"content", 42}}})), 400, "messages[0].content", "42"},
      {chat, with(ok, "messages", json::array({7})), 400, "messages[0]", "must be an object"},
      {chat, with(ok, "messages", json::array({json{{"role", "user"}, {"content", json::array({json{{"type", "image_url"}}})}}})), 400,
       "messages", "invalid `messages`"},
      {chat, with(ok, "model", "gpt-4o"), 404, "model", "gpt-4o"},
      {chat, with(ok, "model", 5), 400, "model", "must be a string"},
      {chat, with(ok, "temperature", "hot"), 400, "temperature", "must be a number"},
      {chat, with(ok, "temperature", 2.5), 400, "temperature", "[0, 2]"},
      {chat, with(ok, "top_p", 0), 400, "top_p", "(0, 1]"},
      {chat, with(ok, "top_k", 1.5), 400, "top_k", "must be an integer"},
      {chat, with(ok, "seed", "x"), 400, "seed", "must be an integer"},
      {chat, with(ok, "max_tokens", 0), 400, "max_tokens", "between 1 and"},
      {chat, with(ok, "max_tokens", -5), 400, "max_tokens", "between 1 and"},
      {chat, with(ok, "max_tokens", 1000000000), 400, "max_tokens", "maximum context length is 8192"},
      {chat, with(ok, "max_completion_tokens", "ten"), 400, "max_completion_tokens", "must be an integer"},
      {chat, with(ok, "n", 0), 400, "n", "between 1 and 16"},
      {chat, with(ok, "n", 1000), 400, "n", "between 1 and 16"},
      {chat, with(ok, "stream", "yes"), 400, "stream", "must be a boolean"},
      {chat, with(ok, "stream_options", json{{"include_usage", true}}), 400, "stream_options", "only allowed when `stream`"},
      {chat, with(ok, "stop", 5), 400, "stop", "string or a list"},
      {chat, with(ok, "stop", json::array({""})), 400, "stop", "must not be empty"},
      {chat, with(ok, "stop", json(std::vector<std::string>(40, "x"))), 400, "stop", "at most 16"},
      {chat, with(ok, "logprobs", 1), 400, "logprobs", "must be a boolean"},
      {chat, with(ok, "top_logprobs", 3), 400, "top_logprobs", "needs `logprobs`"},
      {chat, with(json::parse(with(ok, "logprobs", true)), "top_logprobs", 21), 400, "top_logprobs", "between 0 and 20"},
      {chat, with(ok, "presence_penalty", 0.5), 400, "presence_penalty", "not supported"},
      {chat, with(ok, "logit_bias", json{{"42", 5}}), 400, "logit_bias", "not supported"},
      {chat, with(ok, "response_format", json{{"type", "json_object"}}), 400, "response_format", "not supported"},
      {chat, with(ok, "tools", "get_weather"), 400, "tools", "must be a list"},
      {chat, with(ok, "tools", json::array({json{{"type", "function"}}})), 400, "tools[0].function", "must be an object"},
      {chat, with(ok, "tool_choice", "sometimes"), 400, "tool_choice", "sometimes"},
      {chat, with(ok, "tool_choice", "required"), 400, "tool_choice", "needs a non-empty `tools`"},
      {chat, with(json::parse(with(ok, "tools", kWeatherTools)), "tool_choice", json{{"type", "function"}, {"function", {{"name", "nope"}}}}),
       400, "tool_choice", "`nope`"},
      {chat, with(ok, "chat_template_kwargs", "thinking"), 400, "chat_template_kwargs", "must be an object"},
      {chat, with(ok, "chat_template_kwargs", json{{"thinking", "yes"}}), 400, "chat_template_kwargs", "must be a boolean"},
      {chat, with(ok, "thinking", json{{"type", "maybe"}}), 400, "thinking", "enabled"},
      {chat, with(ok, "scripted_reply", 3), 400, "scripted_reply", "non-empty string"},
      {chat, user_chat(long_text, 10).dump(), 400, "messages", "maximum context length"},
      {chat, std::string("{\"messages\": [{\"role\": \"user\", \"content\": \"bad \xff\xfe utf8\"}]}"), 400, "", "UTF-8"},
      {chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud800 alone\"}]}", 400, "", "surrogate"},
      {chat, std::string(100000, '[') + std::string(100000, ']'), 400, "", "deeper than 100 levels"},
      {chat, "{\"temperature\": " + std::string(5000, '[') + std::string(5000, ']') + "}", 400, "", "deeper than 100 levels"},
      {cmpl, "{}", 400, "prompt", "`prompt` is required"},
      {cmpl, with(okc, "prompt", json::array()), 400, "prompt", "must not be an empty list"},
      {cmpl, with(okc, "prompt", 12), 400, "prompt", "must be a string"},
      {cmpl, with(okc, "prompt", json::array({1, 99999})), 400, "prompt", "99999"},
      {cmpl, with(okc, "prompt", json::array({1, -3})), 400, "prompt", "-3"},
      {cmpl, with(okc, "prompt", json::array({json::array({1, 2}), 7})), 400, "prompt", "must be a string"},
      {cmpl, with(okc, "prompt", json(std::vector<int>(9000, 5))), 400, "prompt", "maximum context length"},
      {cmpl, with(okc, "logprobs", 30), 400, "logprobs", "between 0 and 20"},
      {cmpl, with(okc, "suffix", "end"), 400, "suffix", "not supported"},
      {cmpl, with(okc, "best_of", 3), 400, "best_of", "not supported"},
      {cmpl, with(okc, "max_tokens", 0), 400, "max_tokens", "between 1 and"},
      {cmpl, with(okc, "stop_token_ids", json::array({1, 100000})), 400, "stop_token_ids", "100000"},
      {cmpl, with(json::parse(with(okc, "prompt", json::array({"a", "b", "c", "d", "e"}))), "n", 16), 400, "prompt", "choices"},
  };
  for (const Case& k : cases) {
    Reply r = post(c, k.path, k.body);
    SCOPED_TRACE(std::string(k.path) + " " + k.body.substr(0, 200));
    EXPECT_EQ(r.status, k.status) << r.raw;
    const std::string msg = expect_error_shape(r);
    EXPECT_NE(msg.find(k.message), std::string::npos) << "message: " << msg << "\nlacks: " << k.message;
    if (r.body.is_object() && r.body.contains("error")) {
      const json& p = r.body["error"]["param"];
      if (*k.param) EXPECT_EQ(p, k.param);
      else EXPECT_TRUE(p.is_null()) << p;
    }
  }
  // After all of it the server answers normally.
  Reply fine = post(c, chat, ok);
  EXPECT_EQ(fine.status, 200) << fine.raw;
}

TEST(Server, ScriptedRepliesNeedTheFlag) {
  TestServer s(engine_options(), {}, [](server::ModelInfo& m) { m.allow_scripted = false; });
  httplib::Client c = s.client();
  json body = user_chat("hi", 4);
  body["scripted_reply"] = "hello";
  Reply r = post(c, "/v1/chat/completions", body);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(expect_error_shape(r).find("--allow-scripted-replies"), std::string::npos);
}

TEST(Server, HugeHeadersBodiesAndUris) {
  server::ServerOptions so;
  so.max_body_bytes = 64 << 10;
  TestServer s(engine_options(), so);
  httplib::Client c = s.client();
  // A header line over the library's 8 KiB limit.
  Reply h = post(c, "/v1/chat/completions", user_chat("hi", 2), {{"X-Big", std::string(20000, 'a')}});
  EXPECT_EQ(h.status, 400) << h.raw;
  expect_error_shape(h);
  // A body over --max-body.
  json big = user_chat(std::string(100000, 'a'), 2);
  Reply b = post(c, "/v1/chat/completions", big);
  EXPECT_EQ(b.status, 413) << b.raw;
  EXPECT_NE(expect_error_shape(b).find("larger than"), std::string::npos);
  // `curl -d` without a Content-Type sends a form-encoded body, which the library caps at 8 KiB.
  auto fr = c.Post("/v1/chat/completions", user_chat(std::string(10000, 'a'), 2).dump(), "application/x-www-form-urlencoded");
  ASSERT_TRUE(fr);
  Reply form{fr->status, json::parse(fr->body, nullptr, false), fr->body, {}};
  EXPECT_EQ(form.status, 413) << form.raw;
  EXPECT_NE(expect_error_shape(form).find("Content-Type: application/json"), std::string::npos);
  // A URI over 8 KiB.
  auto u = c.Get(("/v1/models/" + std::string(10000, 'x')).c_str());
  ASSERT_TRUE(u);
  EXPECT_EQ(u->status, 414);
  // Still serving.
  EXPECT_EQ(post(c, "/v1/chat/completions", user_chat("hi", 2)).status, 200);
}

TEST(Server, SlowClientsDoNotBlockOthers) {
  server::ServerOptions so;
  so.read_timeout_s = 2;
  TestServer s(engine_options(), so);
  // Clients that send half a request and stall, and one that sends a body slower than announced.
  std::vector<std::unique_ptr<RawConn>> slow;
  for (int i = 0; i < 8; ++i) {
    slow.push_back(std::make_unique<RawConn>(s.port));
    ASSERT_GE(slow.back()->fd, 0);
    ASSERT_TRUE(slow.back()->send_all(i % 2 ? "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                            : "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"mess"));
  }
  // Everyone else is served meanwhile.
  httplib::Client c = s.client();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(post(c, "/v1/chat/completions", user_chat("hello", 4)).status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  // The stalled connections are dropped after the read timeout (with a 400 or simply closed).
  for (auto& k : slow) {
    const std::string got = k->read_all(std::chrono::seconds(6));
    EXPECT_TRUE(got.empty() || got.find("400") != std::string::npos) << got;
  }
}

// Garbage and disconnecting clients while streams run: each stream gets exactly its solo tokens.
TEST(Server, BadClientsDoNotDisturbOtherStreams) {
  TestServer s;
  const std::vector<int32_t> prompt = chat_prompt(s, "Tell me a story about a dragon.");
  constexpr int kStreams = 4;
  std::vector<std::string> texts(kStreams);
  std::vector<std::thread> th;
  for (int i = 0; i < kStreams; ++i)
    th.emplace_back([&, i] {
      httplib::Client c = s.client();
      json b = user_chat("Tell me a story about a dragon.", 40, 1.0);
      b["seed"] = 77 + i;
      b["stream"] = true;
      texts[size_t(i)] = collect(stream(c, "/v1/chat/completions", b).events)[0].content;
    });
  std::atomic<bool> done{false};
  std::thread noise([&] {
    httplib::Client c = s.client();
    int k = 0;
    while (!done) {
      post(c, "/v1/chat/completions", std::string("{\"messages\": [{\"role\": \"user\", \"content\": \"\xc3\x28\"}]}"));
      post(c, "/v1/chat/completions", user_chat("hi", 1000000).dump());
      RawConn r(s.port);  // a client that starts a stream and vanishes
      json b = user_chat("go", 500);
      b["stream"] = true;
      r.send_all(http_post_text("/v1/chat/completions", b.dump(), s.port));
      if (++k % 2) r.read_all(std::chrono::milliseconds(50));
      r.close();
    }
  });
  for (auto& t : th) t.join();
  done = true;
  noise.join();
  for (int i = 0; i < kStreams; ++i) {
    RequestParams p = greedy(prompt, 40);
    p.sampling.temperature = 1.0f;
    p.sampling.top_p = s.model().top_p;
    p.sampling.seed = 77 + uint64_t(i);
    EXPECT_EQ(texts[size_t(i)], text_of(s, solo_tokens(p))) << "stream " << i;
  }
}

}  // namespace dsa::test

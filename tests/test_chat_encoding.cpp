// Chat prompt encoding: every worked example of chat-encoding.md §7.2 / §7.6, the official golden
// vector G1 (Appendix A), JSON serialization (§3.7), request mapping (§3.11), format selection (§2).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "core/error.h"
#include "io/chat_encoding.h"
#include "io/output_parser.h"

using namespace dsa::chat;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

const std::string kDataDir = std::string(DSA_SOURCE_DIR) + "/tests/data/chat/";

const ojson& vectors() {
  static const ojson v = ojson::parse(read_file(kDataDir + "spec_vectors.json"));
  return v;
}

void check_v32(const char* id) {
  const ojson& v = vectors().at(id);
  EncodeOptions opt;
  opt.thinking = v.at("thinking").get<bool>();
  std::string got = encode_chat_v32(messages_from_json(v.at("messages")), opt);
  EXPECT_EQ(got, v.at("expected").get<std::string>()) << id;
}

void check_v31(const char* id) {
  const ojson& v = vectors().at(id);
  EncodeOptions opt;
  opt.thinking = v.at("thinking").get<bool>();
  opt.add_generation_prompt = v.at("add_generation_prompt").get<bool>();
  auto msgs = messages_from_json(v.at("messages"));
  EXPECT_EQ(encode_chat_v31(msgs, opt), v.at("expected").get<std::string>()) << id;
  // The first V3.1 revision differs only where the spec gives a second expectation (§5.2).
  opt.v31_first_revision = true;
  std::string first = v.contains("expected_v31_first") ? v["expected_v31_first"].get<std::string>()
                                                        : v.at("expected").get<std::string>();
  EXPECT_EQ(encode_chat_v31(msgs, opt), first) << id << " (first revision)";
  // Same through the format switch.
  opt.v31_first_revision = false;
  EXPECT_EQ(encode_chat(ChatFormat::kV31, msgs, opt), v.at("expected").get<std::string>()) << id;
}

size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

Message msg(Role r, std::string content) {
  Message m;
  m.role = r;
  m.content = std::move(content);
  return m;
}

const std::string B(kBos), U(kUser), A(kAssistant), E(kEos);

}  // namespace

// ---- §7.2 V3.2 encoding ---------------------------------------------------------------------------

TEST(ChatEncodingV32, E1_SingleUserChat) { check_v32("E1"); }
TEST(ChatEncodingV32, E2_SystemThinking) { check_v32("E2"); }
TEST(ChatEncodingV32, E3_MultiTurnThinkingDropsOldReasoning) { check_v32("E3"); }
TEST(ChatEncodingV32, E4_MultiTurnChat) { check_v32("E4"); }
TEST(ChatEncodingV32, E5_ToolsBlock) { check_v32("E5"); }
TEST(ChatEncodingV32, E6_ThinkingWithTools) { check_v32("E6"); }
TEST(ChatEncodingV32, E7_ParallelCallsAllTypes) { check_v32("E7"); }
TEST(ChatEncodingV32, E8_DeveloperWithTools) { check_v32("E8"); }
TEST(ChatEncodingV32, E9_ResponseFormat) { check_v32("E9"); }
TEST(ChatEncodingV32, E10_NewUserTurnRewritesTail) { check_v32("E10"); }

TEST(ChatEncodingV32, E3_TokenizedExampleString) {
  // T1's prompt string (§7.1), written out literally.
  EXPECT_EQ(vectors()["E3"]["expected"].get<std::string>(),
            "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek."
            "<｜end▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>");
  EXPECT_EQ(U, "\x3C\xEF\xBD\x9C\x55\x73\x65\x72\xEF\xBD\x9C\x3E");
  EXPECT_EQ(kBos.size(), 29u);
  EXPECT_EQ(kEos.size(), 27u);
  EXPECT_EQ(kAssistant.size(), 17u);
  EXPECT_EQ(kDsml.size(), 10u);
}

// ---- Appendix A: official golden test G1 ----------------------------------------------------------

namespace {
struct Golden {
  ojson input;
  std::string expected;
};
const Golden& golden() {
  static const Golden g = [] {
    Golden g;
    g.input = ojson::parse(read_file(kDataDir + "g1_input.json"));
    g.expected = read_file(kDataDir + "g1_output.txt");
    if (!g.expected.empty() && g.expected.back() == '\n') g.expected.pop_back();  // file's final newline
    return g;
  }();
  return g;
}
}  // namespace

TEST(ChatEncodingV32, GoldenG1) {
  const Golden& g = golden();
  ASSERT_EQ(utf8_chars(g.expected), 4929u);
  auto msgs = messages_from_json(g.input["messages"]);
  msgs[0].tools = g.input["tools"];  // the official test attaches the tools to messages[0]
  EncodeOptions opt;
  opt.thinking = true;
  EXPECT_EQ(encode_chat_v32(msgs, opt), g.expected);
}

TEST(ChatEncodingV32, GoldenG1ThroughOpenAIRequest) {
  const Golden& g = golden();
  ojson req = ojson::object();
  req["messages"] = g.input["messages"];
  req["tools"] = g.input["tools"];
  req["chat_template_kwargs"] = {{"thinking", true}};
  ChatRequest r = chat_request_from_openai(req);
  EXPECT_TRUE(r.thinking);
  ASSERT_EQ(r.messages.size(), g.input["messages"].size());  // attached, not inserted
  EncodeOptions opt;
  opt.thinking = r.thinking;
  EXPECT_EQ(encode_chat(ChatFormat::kV32, r.messages, opt), g.expected);
}

TEST(ChatEncodingV32, GoldenG1RoundTrips) {
  // §7.3: render message 4 (two calls) given 0-3, and message 7 (final answer) given 0-6; parse back.
  const Golden& g = golden();
  auto all = messages_from_json(g.input["messages"]);
  all[0].tools = g.input["tools"];
  for (size_t idx : {size_t(4), size_t(7)}) {
    std::vector<Message> upto(all.begin(), all.begin() + idx + 1);
    EncodeOptions opt;
    opt.thinking = true;
    opt.context_size = idx;
    std::string text = encode_chat_v32(upto, opt);
    ParsedMessage p = parse_v32_strict(text, true);
    EXPECT_EQ(p.reasoning_content, all[idx].reasoning_content) << idx;
    EXPECT_EQ(p.content, all[idx].content) << idx;
    ASSERT_EQ(p.tool_calls.size(), all[idx].tool_calls.size()) << idx;
    for (size_t k = 0; k < p.tool_calls.size(); ++k) {
      EXPECT_EQ(p.tool_calls[k].name, all[idx].tool_calls[k].name);
      EXPECT_EQ(p.tool_calls[k].arguments, all[idx].tool_calls[k].arguments);
    }
    // The engine parser agrees on this well-formed text.
    ParseResult r = parse_completion(text, {ChatFormat::kV32, true});
    EXPECT_EQ(r.message.reasoning_content, p.reasoning_content);
    EXPECT_EQ(r.message.content, p.content);
    ASSERT_EQ(r.message.tool_calls.size(), p.tool_calls.size());
    for (size_t k = 0; k < p.tool_calls.size(); ++k)
      EXPECT_EQ(r.message.tool_calls[k].arguments, p.tool_calls[k].arguments);
    EXPECT_TRUE(r.warnings.empty());
    // Prefix property within a turn (§3.10): prompt(M+N) = prompt(M) + render(N given M).
    EncodeOptions full;
    full.thinking = true;
    std::vector<Message> before(all.begin(), all.begin() + idx);
    EXPECT_EQ(encode_chat_v32(upto, full), encode_chat_v32(before, full) + text) << idx;
  }
}

// ---- §3.4 details and errors --------------------------------------------------------------------

TEST(ChatEncodingV32, SystemMessagesInPlaceWithoutSeparator) {
  std::vector<Message> m = {msg(Role::kSystem, "A"), msg(Role::kSystem, "B"), msg(Role::kUser, "hi")};
  EXPECT_EQ(encode_chat_v32(m), B + "AB" + U + "hi" + A + "</think>");
  EncodeOptions nobos;
  nobos.add_bos = false;
  EXPECT_EQ(encode_chat_v32(m, nobos), "AB" + U + "hi" + A + "</think>");
}

TEST(ChatEncodingV32, EmptyToolArgumentsAndPrefixContinuation) {
  std::vector<Message> m = {msg(Role::kUser, "time?"), msg(Role::kAssistant, "")};
  m[1].tool_calls.push_back({"c1", "get_time", "{}"});
  EXPECT_EQ(encode_chat_v32(m), B + U + "time?" + A + "</think>\n\n<｜DSML｜function_calls>\n"
                                    "<｜DSML｜invoke name=\"get_time\">\n\n</｜DSML｜invoke>\n"
                                    "</｜DSML｜function_calls>" + E);
  std::vector<Message> p = {msg(Role::kUser, "Hi"), msg(Role::kAssistant, "Hel")};
  p[1].prefix = true;
  EXPECT_EQ(encode_chat_v32(p), B + U + "Hi" + A + "</think>Hel");
}

TEST(ChatEncodingV32, ArgumentValuesReserializedAsPython) {
  std::vector<Message> m = {msg(Role::kUser, "x"), msg(Role::kAssistant, "")};
  m[1].tool_calls.push_back({"", "f", R"({"a":[1,2.50,{"k":"é\u00e9"}],"b":1e5,"c":"raw\n\"q\"","d":null})"});
  std::string got = encode_chat_v32(m);
  EXPECT_NE(got.find("<｜DSML｜parameter name=\"a\" string=\"false\">[1, 2.5, {\"k\": \"éé\"}]</｜DSML｜parameter>"),
            std::string::npos) << got;
  EXPECT_NE(got.find("<｜DSML｜parameter name=\"b\" string=\"false\">100000.0</｜DSML｜parameter>"), std::string::npos);
  EXPECT_NE(got.find("<｜DSML｜parameter name=\"c\" string=\"true\">raw\n\"q\"</｜DSML｜parameter>"), std::string::npos);
  EXPECT_NE(got.find("<｜DSML｜parameter name=\"d\" string=\"false\">null</｜DSML｜parameter>"), std::string::npos);
}

TEST(ChatEncodingV32, ReferenceErrors) {
  EXPECT_THROW(role_from_name("function"), dsa::Error);
  EXPECT_THROW(messages_from_json(ojson::parse(R"([{"role": "bot", "content": "x"}])")), dsa::Error);
  // developer with empty content
  EXPECT_THROW(encode_chat_v32({msg(Role::kDeveloper, "")}), dsa::Error);
  // tool result without a preceding assistant with tool_calls
  EXPECT_THROW(encode_chat_v32({msg(Role::kUser, "x"), msg(Role::kTool, "r")}), dsa::Error);
  EXPECT_THROW(encode_chat_v32({msg(Role::kTool, "r")}), dsa::Error);
  // more results than calls; fewer results than calls
  std::vector<Message> m = {msg(Role::kUser, "x"), msg(Role::kAssistant, "")};
  m[1].tool_calls.push_back({"", "f", "{}"});
  m[1].tool_calls.push_back({"", "g", "{}"});
  auto one = m;
  one.push_back(msg(Role::kTool, "r1"));
  EXPECT_THROW(encode_chat_v32(one), dsa::Error);
  auto three = one;
  three.push_back(msg(Role::kTool, "r2"));
  EXPECT_NO_THROW(encode_chat_v32(three));
  three.push_back(msg(Role::kTool, "r3"));
  EXPECT_THROW(encode_chat_v32(three), dsa::Error);
  // thinking mode, assistant after the last user turn with neither reasoning nor calls
  EncodeOptions think;
  think.thinking = true;
  EXPECT_THROW(encode_chat_v32({msg(Role::kUser, "x"), msg(Role::kAssistant, "answer")}, think), dsa::Error);
  EXPECT_NO_THROW(encode_chat_v32({msg(Role::kUser, "x"), msg(Role::kAssistant, "answer")}));
  // arguments that are not a JSON object
  std::vector<Message> bad = {msg(Role::kUser, "x"), msg(Role::kAssistant, "")};
  bad[1].tool_calls.push_back({"", "f", "[1, 2]"});
  EXPECT_THROW(encode_chat_v32(bad), dsa::Error);
  bad[1].tool_calls[0].arguments = "{\"a\": ";
  EXPECT_THROW(encode_chat_v32(bad), dsa::Error);
}

// ---- §3.7 JSON serialization -----------------------------------------------------------------------

TEST(ChatEncodingJson, NumbersLikePython) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"1.0", "1.0"}, {"2.50", "2.5"}, {"1e5", "100000.0"}, {"1e-5", "1e-05"}, {"1e16", "1e+16"},
      {"1.5e300", "1.5e+300"}, {"-0.0", "-0.0"}, {"1e400", "Infinity"}, {"-1e400", "-Infinity"},
      {"0.1", "0.1"}, {"1e-4", "0.0001"}, {"0.00012345", "0.00012345"},
      {"123456789.123", "123456789.123"}, {"1e15", "1000000000000000.0"},
      {"9999999999999998.0", "9999999999999998.0"},
      {"1.2345678901234567e16", "1.2345678901234568e+16"}, {"5e-324", "5e-324"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"0.30000000000000004", "0.30000000000000004"}, {"100.0", "100.0"}, {"-2.5e-7", "-2.5e-07"},
      {"3.14159", "3.14159"}, {"1e22", "1e+22"}, {"2e-308", "2e-308"}, {"123e-20", "1.23e-18"},
      {"-0", "0"}, {"0", "0"}, {"-17", "-17"},
      {"123456789012345678901234567890", "123456789012345678901234567890"}, {"1E+2", "100.0"},
      {"0e10", "0.0"}, {"1e-400", "0.0"}, {"-1e-400", "-0.0"}, {"NaN", "NaN"},
      {" [1 ,true,false , null ] ", "[1, true, false, null]"}};
  for (const auto& [in, want] : cases) EXPECT_EQ(py_json_reformat(in), want) << in;
  // nlohmann values serialize the same way.
  EXPECT_EQ(py_json_dumps(ojson::parse("[1.0, 2.50, 1e5, 1e-5, 1e16, -3, 18446744073709551615]")),
            "[1.0, 2.5, 100000.0, 1e-05, 1e+16, -3, 18446744073709551615]");
}

TEST(ChatEncodingJson, StringsOrderAndDuplicatesLikePython) {
  std::string in = R"({"b": 1, "a": [1, 2.0, "x\u00e9\u001f\n\t\"\\/\u2028\ud83d\ude00\u007f"], "b": null})";
  std::string want = "{\"b\": null, \"a\": [1, 2.0, \"x\u00e9\\u001f\\n\\t\\\"\\\\/\u2028\U0001F600\x7f\"]}";
  EXPECT_EQ(py_json_reformat(in), want);
  EXPECT_EQ(py_json_string("\b\f\r\x01"), "\"\\b\\f\\r\\u0001\"");
  // Key order of ordered_json is kept, never sorted.
  EXPECT_EQ(py_json_dumps(ojson::parse(R"({"z": {}, "y": [], "x": ""})")), R"({"z": {}, "y": [], "x": ""})");
  EXPECT_FALSE(py_json_valid("not json"));
  EXPECT_FALSE(py_json_valid("{\"a\": 1,}"));
  EXPECT_FALSE(py_json_valid("\"raw\ncontrol\""));
  EXPECT_FALSE(py_json_valid("1 2"));
  EXPECT_TRUE(py_json_valid(" {\"a\": [1e3, -0.5, \"\\ud800\"]} "));
  auto members = py_json_object_members(R"({"s": "v\"", "n": 1.50, "s": "w"})");
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].key, "s");
  EXPECT_TRUE(members[0].is_string);
  EXPECT_EQ(members[0].string_value, "w");
  EXPECT_EQ(members[1].json, "1.5");
}

TEST(ChatEncodingJson, FloatRepr) {
  EXPECT_EQ(py_float_repr(0.5), "0.5");
  EXPECT_EQ(py_float_repr(1e100), "1e+100");
  EXPECT_EQ(py_float_repr(-1234.5), "-1234.5");
  EXPECT_EQ(py_float_repr(1e-7), "1e-07");
  EXPECT_EQ(py_float_repr(12345678901234567890.0), "1.2345678901234567e+19");
}

// ---- §7.6 V3.1 family (V3.2-Exp template) ---------------------------------------------------------

TEST(ChatEncodingV31, X1a_CardExampleThinking) { check_v31("X1a"); }
TEST(ChatEncodingV31, X1b_CardExampleChat) { check_v31("X1b"); }
TEST(ChatEncodingV31, X2_ToolCallsAndOutputs) { check_v31("X2"); }
TEST(ChatEncodingV31, X3_AnswerAfterToolsThenNewQuestion) { check_v31("X3"); }
TEST(ChatEncodingV31, X4_FinalAssistantGetsGenerationPrompt) { check_v31("X4"); }
TEST(ChatEncodingV31, X5_PrefixAssistant) { check_v31("X5"); }
TEST(ChatEncodingV31, X6_SystemOnly) { check_v31("X6"); }

TEST(ChatEncodingV31, SystemHoistingAndNoGenerationPrompt) {
  std::vector<Message> m = {msg(Role::kUser, "q"), msg(Role::kSystem, "S1"), msg(Role::kSystem, "S2")};
  EncodeOptions opt;
  opt.add_generation_prompt = false;
  EXPECT_EQ(encode_chat_v31(m, opt), B + "S1\n\nS2" + U + "q");
}

TEST(ChatEncodingV31, ToolDescriptionFromModelCard) {
  ojson req = ojson::parse(R"({
    "messages": [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Weather?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get weather",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]})");
  ChatRequest r = chat_request_from_openai(req);
  std::string got = encode_chat_v31(r.messages);
  std::string want =
      B + "SYS\n\n## Tools\nYou have access to the following tools:\n\n### get_weather\n"
          "Description: Get weather\n\nParameters: {\"type\": \"object\", \"properties\": {\"city\": "
          "{\"type\": \"string\"}}}\n\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
          "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>tool_call_name<｜tool▁sep｜>tool_call_arguments"
          "<｜tool▁call▁end｜>{{additional_tool_calls}}<｜tool▁calls▁end｜>\n\nWhere:\n"
          "- `tool_call_name` must be an exact match to one of the available tools\n"
          "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
          "- For multiple tool calls, chain them directly without separators or spaces" +
      U + "Weather?" + A + "</think>";
  EXPECT_EQ(got, want);
  EncodeOptions no_tools;
  no_tools.v31_render_tools = false;
  EXPECT_EQ(encode_chat_v31(r.messages, no_tools), B + "SYS" + U + "Weather?" + A + "</think>");
}

// ---- dsa-mini and format selection (§2) -----------------------------------------------------------

TEST(ChatEncodingSelect, DsaMiniUsesV31Template) {
  const std::string dir = std::string(DSA_SHARED_DIR) + "/models/dsa-mini";
  ASSERT_EQ(detect_chat_format(dir), ChatFormat::kV31);
  std::vector<Message> m = {msg(Role::kSystem, "You are a helpful assistant."), msg(Role::kUser, "Hello")};
  EXPECT_EQ(encode_chat(detect_chat_format(dir), m),
            "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hello<｜Assistant｜></think>");
  EncodeOptions think;
  think.thinking = true;
  EXPECT_EQ(encode_chat(ChatFormat::kV31, m, think),
            "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hello<｜Assistant｜><think>");
  // Multi-turn without system, as the dsa-mini template renders it.
  std::vector<Message> t = {msg(Role::kUser, "a"), msg(Role::kAssistant, "b"), msg(Role::kUser, "c")};
  EXPECT_EQ(encode_chat(ChatFormat::kV31, t), B + U + "a" + A + "</think>b" + E + U + "c" + A + "</think>");
}

TEST(ChatEncodingSelect, DetectionByFilesAndOverride) {
  namespace fs = std::filesystem;
  fs::path root = fs::temp_directory_path() / ("dsa_chat_detect_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "v32" / "encoding");
  fs::create_directories(root / "v32b");
  fs::create_directories(root / "exp");
  fs::create_directories(root / "empty");
  std::ofstream(root / "v32" / "encoding" / "encoding_dsv32.py") << "# encoder\n";
  std::ofstream(root / "v32" / "tokenizer_config.json") << R"({"add_bos_token": false})";
  std::ofstream(root / "v32b" / "tokenizer_config.json") << R"({"chat_template": ""})";
  std::ofstream(root / "exp" / "tokenizer_config.json") << R"({"chat_template": "{{ bos_token }}..."})";
  EXPECT_EQ(detect_chat_format((root / "v32").string()), ChatFormat::kV32);
  EXPECT_EQ(detect_chat_format((root / "v32b").string()), ChatFormat::kV32);
  EXPECT_EQ(detect_chat_format((root / "exp").string()), ChatFormat::kV31);
  EXPECT_THROW(detect_chat_format((root / "empty").string()), dsa::Error);
  fs::remove_all(root);

  EXPECT_EQ(chat_format_from_name("v32"), ChatFormat::kV32);
  EXPECT_EQ(chat_format_from_name("V3.2"), ChatFormat::kV32);
  EXPECT_EQ(chat_format_from_name("v31"), ChatFormat::kV31);
  EXPECT_EQ(chat_format_from_name("v3.2-exp"), ChatFormat::kV31);
  EXPECT_THROW(chat_format_from_name("llama3"), dsa::Error);
  EXPECT_STREQ(chat_format_name(ChatFormat::kV32), "v32");
  EXPECT_STREQ(chat_format_name(ChatFormat::kV31), "v31");
}

// ---- §3.11 OpenAI request mapping -------------------------------------------------------------------

TEST(ChatEncodingRequest, ToolsInsertedAsEmptySystemWhenNoSystem) {
  ojson req = ojson::parse(R"({"messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})");
  ChatRequest r = chat_request_from_openai(req);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, Role::kSystem);
  std::string p = encode_chat_v32(r.messages);
  EXPECT_EQ(p.rfind(B + "\n\n## Tools\n\nYou have access", 0), 0u) << p;
  EXPECT_NE(p.find("<functions>\n{\"name\": \"f\", \"parameters\": {}}\n</functions>\n" + U + "hi" + A + "</think>"),
            std::string::npos);
  // tool_choice "none": no tools rendered at all.
  req["tool_choice"] = "none";
  req["messages"][0]["role"] = "system";
  req["messages"][0]["tools"] = req["tools"];
  r = chat_request_from_openai(req);
  EXPECT_EQ(encode_chat_v32(r.messages), B + "hi");
}

TEST(ChatEncodingRequest, RequestToolsReplaceMessageToolsOnDeveloper) {
  ojson req = ojson::parse(R"({"messages": [{"role": "developer", "content": "Q",
      "tools": [{"type": "function", "function": {"name": "old"}}]}],
    "tools": [{"type": "function", "function": {"name": "new"}}]})");
  ChatRequest r = chat_request_from_openai(req);
  ASSERT_EQ(r.messages.size(), 1u);
  std::string p = encode_chat_v32(r.messages);
  EXPECT_NE(p.find("{\"name\": \"new\"}"), std::string::npos);
  EXPECT_EQ(p.find("\"old\""), std::string::npos);
}

TEST(ChatEncodingRequest, ThinkingSwitchContentPartsReasoningAlias) {
  auto thinking_of = [](const char* j) { return chat_request_from_openai(ojson::parse(j)).thinking; };
  EXPECT_FALSE(thinking_of(R"({"messages": []})"));
  EXPECT_TRUE(thinking_of(R"({"messages": [], "chat_template_kwargs": {"thinking": true}})"));
  EXPECT_TRUE(thinking_of(R"({"messages": [], "chat_template_kwargs": {"enable_thinking": true}})"));
  EXPECT_TRUE(thinking_of(R"({"messages": [], "thinking": {"type": "enabled"}})"));
  EXPECT_FALSE(thinking_of(R"({"messages": [], "thinking": {"type": "disabled"}})"));
  EXPECT_TRUE(chat_request_from_openai(ojson::parse(R"({"messages": []})"), true).thinking);

  auto m = messages_from_json(ojson::parse(R"([
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {"role": "assistant", "content": null, "reasoning": "why",
     "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": {"k": 1.0}}}]},
    {"role": "tool", "content": null, "tool_call_id": "x"}])"));
  EXPECT_EQ(m[0].content, "a\nb");
  EXPECT_EQ(m[1].content, "");
  EXPECT_EQ(m[1].reasoning_content, "why");
  EXPECT_EQ(m[1].tool_calls[0].arguments, "{\"k\": 1.0}");
  EXPECT_EQ(m[2].content, "");
  EncodeOptions think;
  think.thinking = true;
  EXPECT_EQ(encode_chat_v32(m, think),
            B + U + "a\nb" + A + "<think>why</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
                "<｜DSML｜parameter name=\"k\" string=\"false\">1.0</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                "</｜DSML｜function_calls>" + E + "\n\n<function_results>\n<result></result>\n"
                "</function_results>\n\n<think>");
  EXPECT_THROW(messages_from_json(ojson::parse(R"([{"role": "user", "content": [{"type": "image_url"}]}])")),
               dsa::Error);
}

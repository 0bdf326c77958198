// Output parsing: the reference parser on every §7.4 vector (P1-P6e), the engine policy (§4.4), the
// streaming traces S1/S2 (§7.5) and random chunkings (§4.5 requirement (a)), plus the V3.1 family.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/chat_encoding.h"
#include "io/output_parser.h"

using namespace dsa::chat;

namespace {

const ojson& vectors() {
  static const ojson v = [] {
    std::ifstream f(std::string(DSA_SOURCE_DIR) + "/tests/data/chat/spec_vectors.json");
    return ojson::parse(f);
  }();
  return v;
}
std::string text_of(const char* id) { return vectors().at(id).at("text").get<std::string>(); }
bool thinking_of(const char* id) { return vectors().at(id).at("thinking").get<bool>(); }

void expect_result(const ParsedMessage& got, const ojson& want, const std::string& what) {
  EXPECT_EQ(got.content, want.at("content").get<std::string>()) << what;
  EXPECT_EQ(got.reasoning_content, want.at("reasoning_content").get<std::string>()) << what;
  ASSERT_EQ(got.tool_calls.size(), want.at("tool_calls").size()) << what;
  for (size_t i = 0; i < got.tool_calls.size(); ++i) {
    EXPECT_EQ(got.tool_calls[i].name, want["tool_calls"][i]["function"]["name"].get<std::string>()) << what;
    EXPECT_EQ(got.tool_calls[i].arguments, want["tool_calls"][i]["function"]["arguments"].get<std::string>())
        << what;
  }
}

void expect_same(const ParsedMessage& a, const ParsedMessage& b, const std::string& what) {
  EXPECT_EQ(a.content, b.content) << what;
  EXPECT_EQ(a.reasoning_content, b.reasoning_content) << what;
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size()) << what;
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name) << what;
    EXPECT_EQ(a.tool_calls[i].arguments, b.tool_calls[i].arguments) << what;
  }
}

// Feeds `text` cut at `cuts` (sorted byte offsets) and rebuilds the message from the events.
ParsedMessage stream(const std::string& text, const ParseOptions& opt, const std::vector<size_t>& cuts) {
  StreamParser p(opt);
  std::vector<StreamEvent> ev;
  size_t prev = 0;
  auto add = [&](std::vector<StreamEvent> e) { ev.insert(ev.end(), e.begin(), e.end()); };
  for (size_t c : cuts) {
    add(p.feed(std::string_view(text).substr(prev, c - prev)));
    prev = c;
  }
  add(p.feed(std::string_view(text).substr(prev)));
  add(p.finish());
  ParsedMessage m;
  std::vector<std::pair<ParsedToolCall, bool>> calls;
  for (const auto& e : ev) {
    switch (e.kind) {
      case StreamEvent::kReasoning: m.reasoning_content += e.text; break;
      case StreamEvent::kContent: m.content += e.text; break;
      case StreamEvent::kCallBegin:
        EXPECT_EQ(e.index, static_cast<int>(calls.size()));
        calls.push_back({{e.text, ""}, false});
        break;
      case StreamEvent::kCallArgs:
        EXPECT_EQ(e.index + 1, static_cast<int>(calls.size()));
        calls.back().first.arguments += e.text;
        break;
      case StreamEvent::kCallEnd: calls.back().second = true; break;
    }
  }
  for (auto& c : calls)
    if (c.second) m.tool_calls.push_back(c.first);
  return m;
}

// Random cut points: at UTF-8 character boundaries if `chars`, otherwise anywhere.
std::vector<size_t> random_cuts(const std::string& text, std::mt19937& rng, bool chars) {
  std::vector<size_t> cuts;
  std::uniform_int_distribution<int> len(1, 12);
  size_t pos = 0;
  for (;;) {
    pos += len(rng);
    while (chars && pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
    if (pos >= text.size()) break;
    cuts.push_back(pos);
  }
  return cuts;
}

std::vector<size_t> every_byte(const std::string& text) {
  std::vector<size_t> cuts;
  for (size_t i = 1; i < text.size(); ++i) cuts.push_back(i);
  return cuts;
}

// Requirement (a) of §4.5: any chunking gives the non-streaming result.
void check_chunkings(const std::string& text, const ParseOptions& opt, const ParsedMessage& want,
                     const std::string& what) {
  expect_same(stream(text, opt, {}), want, what + " (one delta)");
  expect_same(stream(text, opt, every_byte(text)), want, what + " (1-byte deltas)");
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial)
    expect_same(stream(text, opt, random_cuts(text, rng, trial % 2 == 0)), want,
                what + " (random chunking " + std::to_string(trial) + ")");
}

const std::string E(kEos);

}  // namespace

// ---- §7.4 reference parser ---------------------------------------------------------------------------

TEST(OutputParserStrict, P1toP5AndP6e) {
  for (const char* id : {"P1", "P2", "P3", "P4", "P5", "P6e"})
    expect_result(parse_v32_strict(text_of(id), thinking_of(id)), vectors()[id]["result"], id);
}

TEST(OutputParserStrict, P6aToP6dErrors) {
  for (const char* id : {"P6a", "P6b", "P6c", "P6d"}) {
    std::string want = vectors()[id]["error"].get<std::string>();
    try {
      parse_v32_strict(text_of(id), thinking_of(id));
      ADD_FAILURE() << id << " should fail";
    } catch (const dsa::Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << id << ": " << e.what();
    }
  }
}

TEST(OutputParserStrict, OtherReferenceRules) {
  // A tool-call output may omit EOS; a plain answer may not.
  std::string p3 = text_of("P3");
  ParsedMessage m = parse_v32_strict(p3.substr(0, p3.size() - E.size()), true);
  EXPECT_EQ(m.tool_calls.size(), 1u);
  // Nothing may follow the tool block except EOS.
  EXPECT_THROW(parse_v32_strict(p3.substr(0, p3.size() - E.size()) + "x", true), dsa::Error);
  // Duplicate parameter names are an error.
  std::string dup =
      "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n"
      "<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜function_calls>";
  EXPECT_THROW(parse_v32_strict(dup, false), dsa::Error);
  // Sanity check: no special strings in content.
  EXPECT_THROW(parse_v32_strict("a<think>b" + E, false), dsa::Error);
  // Content keeps trailing whitespace before EOS.
  EXPECT_EQ(parse_v32_strict("Done.\n\n" + E, false).content, "Done.\n\n");
}

// ---- §4.4 engine policy -------------------------------------------------------------------------------

TEST(OutputParserPolicy, WellFormedVectorsMatchReference) {
  for (const char* id : {"P1", "P2", "P3", "P4", "P5"}) {
    ParseOptions opt{ChatFormat::kV32, thinking_of(id)};
    ParseResult r = parse_completion(text_of(id), opt);
    expect_result(r.message, vectors()[id]["result"], id);
    EXPECT_TRUE(r.saw_eos) << id;
    EXPECT_TRUE(r.warnings.empty()) << id << ": " << r.warnings.front();
    // EOS consumed as the stop token: same result without it (§4.4 item 1).
    std::string t = text_of(id);
    expect_result(parse_completion(t.substr(0, t.size() - E.size()), opt).message, vectors()[id]["result"],
                  std::string(id) + " without EOS");
  }
}

TEST(OutputParserPolicy, P6aToolBlockInsideReasoning) {
  ParseResult r = parse_completion(text_of("P6a"), {ChatFormat::kV32, true});
  std::string t = text_of("P6a");
  EXPECT_EQ(r.message.reasoning_content, t.substr(0, t.size() - E.size()));
  EXPECT_EQ(r.message.content, "");
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_FALSE(r.saw_think_close);
}

TEST(OutputParserPolicy, P6bNoEos) {
  ParseResult r = parse_completion(text_of("P6b"), {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "Partial answer with no terminator");
  EXPECT_FALSE(r.saw_eos);
  EXPECT_EQ(finish_reason(r, false), "stop");
  EXPECT_EQ(finish_reason(r, true), "length");
}

TEST(OutputParserPolicy, P6cTextAfterEosIgnored) {
  ParseResult r = parse_completion(text_of("P6c"), {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "Answer.");
  EXPECT_EQ(r.warnings.size(), 1u);
}

TEST(OutputParserPolicy, P6dUnknownFlagLoggedAndTreatedAsNonString) {
  ParseResult r = parse_completion(text_of("P6d"), {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "x");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{\"a\": 1}");
  EXPECT_FALSE(r.warnings.empty());
}

TEST(OutputParserPolicy, P6eArgumentsAlwaysValidJson) {
  ParseResult r = parse_completion(text_of("P6e"), {ChatFormat::kV32, true});
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{\"n\": 1e3, \"bad\": \"not json\"}");
  EXPECT_TRUE(py_json_valid(r.message.tool_calls[0].arguments));
  EXPECT_EQ(r.message.reasoning_content, "ok");
  EXPECT_EQ(r.warnings.size(), 1u);
}

TEST(OutputParserPolicy, TruncationInReasoningAndInToolCall) {
  // Length limit inside reasoning: all reasoning, no content.
  ParseResult r = parse_completion("still thinking about </thi", {ChatFormat::kV32, true});
  EXPECT_EQ(r.message.reasoning_content, "still thinking about </thi");
  EXPECT_EQ(r.message.content, "");
  // Inside a tool block: complete invokes kept, the incomplete one dropped.
  std::string p4 = text_of("P4");
  size_t cut = p4.find("<｜DSML｜parameter name=\"ratio\"");
  r = parse_completion(p4.substr(0, cut + 20), {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "Logging both now.");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].arguments,
            vectors()["P4"]["result"]["tool_calls"][0]["function"]["arguments"].get<std::string>());
  EXPECT_TRUE(r.truncated_call);
  EXPECT_EQ(finish_reason(r, true), "length");
  // A string value cut in the middle.
  r = parse_completion(p4.substr(0, p4.find("then left")), {ChatFormat::kV32, false});
  EXPECT_TRUE(r.message.tool_calls.empty());
  EXPECT_TRUE(r.truncated_call);
}

TEST(OutputParserPolicy, LeadingThinkStrippedAndLenientToolStart) {
  ParseResult r = parse_completion("<think>hmm</think>Hi" + E, {ChatFormat::kV32, true});
  EXPECT_EQ(r.message.reasoning_content, "hmm");
  EXPECT_EQ(r.message.content, "Hi");
  // Tool block not preceded by "\n\n": content is the text before it (§4.4 item 4).
  std::string t = "Sure:<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
  r = parse_completion(t, {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "Sure:");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{}");
  check_chunkings(t, {ChatFormat::kV32, false}, r.message, "no blank line");
  // Text after the tool block is ignored (item 7); a second "\n\n" is content.
  r = parse_completion("a\n\n\n\n" + t.substr(5) + "\ntrailing" + E, {ChatFormat::kV32, false});
  EXPECT_EQ(r.message.content, "a\n\n");
  EXPECT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_FALSE(r.warnings.empty());
}

TEST(OutputParserPolicy, MalformedPiecesDropped) {
  std::string t =
      "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke nam=\"bad\">\n</｜DSML｜invoke>\n"
      "<｜DSML｜invoke name=\"g\">\n<｜DSML｜parameter name=\"a\" string=\"true\">x</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"a\" string=\"true\">y</｜DSML｜parameter>\n"
      "<｜DSML｜parameter nm=\"b\">z</｜DSML｜parameter>\n"
      "<｜DSML｜parameter name=\"c\" string=\"false\">{\"k\": [1, 2]}</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜function_calls>" + E;
  ParseResult r = parse_completion(t, {ChatFormat::kV32, false});
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].name, "g");
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{\"a\": \"x\", \"c\": {\"k\": [1, 2]}}");
  EXPECT_EQ(r.warnings.size(), 3u);
  check_chunkings(t, {ChatFormat::kV32, false}, r.message, "malformed");
}

TEST(OutputParserPolicy, OpenAIMessage) {
  ParseResult r = parse_completion(text_of("P3"), {ChatFormat::kV32, true});
  int n = 0;
  ojson m = to_openai_message(r.message, true, [&] { return "call_" + std::to_string(n++); });
  EXPECT_EQ(m.dump(),
            R"({"role":"assistant","content":null,"reasoning_content":"I should call get_weather.",)"
            R"("tool_calls":[{"id":"call_0","type":"function","function":{"name":"get_weather",)"
            R"("arguments":"{\"city\": \"Hangzhou\", \"days\": 3}"}}]})");
  EXPECT_EQ(finish_reason(r, false), "tool_calls");
  ojson c = to_openai_message(parse_completion(text_of("P1"), {}).message, false);
  EXPECT_EQ(c.dump(), R"({"role":"assistant","content":"Hello! How can I help you today?","reasoning_content":null})");
  std::string id = make_tool_call_id();
  EXPECT_EQ(id.size(), 29u);
  EXPECT_EQ(id.rfind("call_", 0), 0u);
  EXPECT_NE(id, make_tool_call_id());
}

// ---- §7.5 streaming traces --------------------------------------------------------------------------

TEST(OutputParserStream, S1Trace) {
  using K = StreamEvent;
  StreamParser p({ChatFormat::kV32, true});
  struct Step {
    std::string delta;
    std::vector<StreamEvent> events;
    std::string held;
  };
  const std::vector<Step> steps = {
      {"I should call get_", {{K::kReasoning, -1, "I should call get_"}}, ""},
      {"weather.</th", {{K::kReasoning, -1, "weather."}}, "</th"},
      {"ink>\n\n<｜DS", {}, "\n\n<｜DS"},
      {"ML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Hang",
       {{K::kCallBegin, 0, "get_weather"}, {K::kCallArgs, 0, "{\"city\": \""}, {K::kCallArgs, 0, "Hang"}},
       ""},
      {"zhou</｜DSML｜para", {{K::kCallArgs, 0, "zhou"}}, "</｜DSML｜para"},
      {"meter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
       {{K::kCallArgs, 0, "\""},
        {K::kCallArgs, 0, ", \"days\": "},
        {K::kCallArgs, 0, "3"},
        {K::kCallArgs, 0, "}"},
        {K::kCallEnd, 0, ""}},
       ""},
      {std::string(kEos), {}, ""},
  };
  std::string all;
  for (size_t i = 0; i < steps.size(); ++i) {
    all += steps[i].delta;
    EXPECT_EQ(p.feed(steps[i].delta), steps[i].events) << "step " << i;
    EXPECT_EQ(p.held(), steps[i].held) << "step " << i;
  }
  EXPECT_TRUE(p.finish().empty());
  EXPECT_EQ(all, text_of("P3"));
  EXPECT_TRUE(p.warnings().empty());
  EXPECT_FALSE(p.truncated_call());
}

TEST(OutputParserStream, S2BlankLineHeldThenReleased) {
  StreamParser p({ChatFormat::kV32, false});
  using K = StreamEvent;
  EXPECT_EQ(p.feed("Done.\n"), (std::vector<StreamEvent>{{K::kContent, -1, "Done."}}));
  EXPECT_EQ(p.held(), "\n");
  EXPECT_TRUE(p.feed("\n").empty());
  EXPECT_EQ(p.held(), "\n\n");
  EXPECT_EQ(p.feed(kEos), (std::vector<StreamEvent>{{K::kContent, -1, "\n\n"}}));
  EXPECT_EQ(p.held(), "");
  EXPECT_TRUE(p.finish().empty());
  EXPECT_TRUE(p.saw_eos());
}

TEST(OutputParserStream, HeldTextFlushedAtEnd) {
  StreamParser p({ChatFormat::kV32, false});
  EXPECT_EQ(p.feed("a\n\n<｜DSML｜func").size(), 1u);
  auto ev = p.finish();
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "\n\n<｜DSML｜func");
  EXPECT_THROW(p.feed("x"), dsa::Error);
}

TEST(OutputParserStream, RandomChunkingsMatchReference) {
  for (const char* id : {"P1", "P2", "P3", "P4", "P5"}) {
    ParseOptions opt{ChatFormat::kV32, thinking_of(id)};
    ParsedMessage ref = parse_v32_strict(text_of(id), opt.thinking);
    check_chunkings(text_of(id), opt, ref, id);
  }
  // Vectors the reference rejects: streaming still equals the whole-text policy parse.
  for (const char* id : {"P6a", "P6b", "P6c", "P6d", "P6e"}) {
    ParseOptions opt{ChatFormat::kV32, thinking_of(id)};
    check_chunkings(text_of(id), opt, parse_completion(text_of(id), opt).message, id);
  }
}

TEST(OutputParserStream, GoldenAssistantTurnsRoundTrip) {
  // Every assistant turn of G1 rendered as generated text, then streamed back.
  std::ifstream f(std::string(DSA_SOURCE_DIR) + "/tests/data/chat/g1_input.json");
  ojson in = ojson::parse(f);
  auto msgs = messages_from_json(in["messages"]);
  msgs[0].tools = in["tools"];
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i].role != Role::kAssistant) continue;
    std::vector<Message> upto(msgs.begin(), msgs.begin() + i + 1);
    EncodeOptions eo;
    eo.thinking = true;
    eo.context_size = i;
    std::string text = encode_chat_v32(upto, eo);
    // Earlier turns (before the last user message) are rendered without reasoning; skip them.
    if (text.find(kThinkClose) == std::string::npos) continue;
    ParsedMessage ref = parse_v32_strict(text, true);
    EXPECT_EQ(ref.reasoning_content, msgs[i].reasoning_content);
    check_chunkings(text, {ChatFormat::kV32, true}, ref, "G1 message " + std::to_string(i));
  }
}

TEST(OutputParserStream, StringValueEscapingAcrossChunks) {
  std::string t =
      "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"w\">\n"
      "<｜DSML｜parameter name=\"path\" string=\"true\">C:\\dir\\\"x\"\n\tü€😀</｜DSML｜para</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜function_calls>";
  ParsedMessage ref = parse_v32_strict(t, false);
  ASSERT_EQ(ref.tool_calls.size(), 1u);
  EXPECT_EQ(ref.tool_calls[0].arguments, "{\"path\": \"C:\\\\dir\\\\\\\"x\\\"\\n\\tü€😀</｜DSML｜para\"}");
  check_chunkings(t, {ChatFormat::kV32, false}, ref, "escaping");
}

TEST(OutputParserStream, ParameterNameHoldingQuoteGtBeforeString) {
  // The reference's name="(.*?)" string="(true|false)"> lets the name run past a '">' up to the first
  // '" string="': the stream must not drop the parameter when the '">' arrives before ' string="'.
  std::string t =
      "Sure.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"city\" strifg=\"true\">s\" string=\"false\">3</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜function_calls>" + E;
  ParsedMessage ref = parse_v32_strict(t, false);
  ASSERT_EQ(ref.tool_calls.size(), 1u);
  EXPECT_EQ(ref.tool_calls[0].arguments, "{\"city\\\" strifg=\\\"true\\\">s\": 3}");
  check_chunkings(t, {ChatFormat::kV32, false}, ref, "name with '\">'");
}

// ---- §5.4 V3.1 family ---------------------------------------------------------------------------------

TEST(OutputParserV31, ReasoningContentAndToolCalls) {
  std::string t = "Need weather.</think>Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather"
                  "<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time"
                  "<｜tool▁sep｜><｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
  ParseOptions opt{ChatFormat::kV31, true};
  ParseResult r = parse_completion(t, opt);
  EXPECT_EQ(r.message.reasoning_content, "Need weather.");
  EXPECT_EQ(r.message.content, "Checking.");
  ASSERT_EQ(r.message.tool_calls.size(), 2u);
  EXPECT_EQ(r.message.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.message.tool_calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.message.tool_calls[1].name, "get_time");
  EXPECT_EQ(r.message.tool_calls[1].arguments, "{}");
  EXPECT_TRUE(r.warnings.empty());
  check_chunkings(t, opt, r.message, "v31");
  // Chat mode, plain answer; and reasoning without </think> (R1 behaviour).
  EXPECT_EQ(parse_completion("Hello<｜end▁of▁sentence｜>", {ChatFormat::kV31, false}).message.content, "Hello");
  ParseResult t2 = parse_completion("thinking forever", {ChatFormat::kV31, true});
  EXPECT_EQ(t2.message.reasoning_content, "thinking forever");
  EXPECT_EQ(t2.message.content, "");
}

TEST(OutputParserV31, EncodedHistoryParsesBack) {
  // The X2 assistant turn, as the model would generate it after "<｜Assistant｜></think>".
  std::string t = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}"
                  "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
  ParseResult r = parse_completion(t, {ChatFormat::kV31, false});
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.content, "");
  std::vector<Message> h(2);
  h[0].role = Role::kUser;
  h[0].content = "Weather in Paris?";
  h[1].role = Role::kAssistant;
  h[1].tool_calls.push_back({"", r.message.tool_calls[0].name, r.message.tool_calls[0].arguments});
  EncodeOptions eo;
  eo.add_generation_prompt = false;
  EXPECT_EQ(encode_chat_v31(h, eo), std::string(kBos) + "<｜User｜>Weather in Paris?<｜Assistant｜></think>" + t);
}

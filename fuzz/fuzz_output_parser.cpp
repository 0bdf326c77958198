// libFuzzer target: the streaming output parser (DSML / V3.1 tool calls, thinking tags). Byte 0
// picks the format and thinking mode, byte 1 seeds where the text is split, the rest is the model's
// text. Fed in random pieces (at UTF-8 character boundaries, as the detokenizer delivers them), the
// parser must give the same reasoning, content and calls as fed in one piece; parse_completion never
// throws.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "io/output_parser.h"

namespace {
using dsa::chat::StreamEvent;

// Adjacent text events of one kind (and call) joined: splitting may cut one event into several.
// Events of a call that never completes are left out: such a call is dropped (output_parser.h), and
// how much of it was streamed before the text ended depends on where the pieces were cut.
std::vector<StreamEvent> merged(const std::vector<StreamEvent>& ev) {
  std::vector<int> complete;
  for (const auto& e : ev)
    if (e.kind == StreamEvent::kCallEnd) complete.push_back(e.index);
  auto dropped = [&](const StreamEvent& e) {
    return (e.kind == StreamEvent::kCallBegin || e.kind == StreamEvent::kCallArgs) &&
           std::find(complete.begin(), complete.end(), e.index) == complete.end();
  };
  std::vector<StreamEvent> out;
  for (const auto& e : ev) {
    if (dropped(e)) continue;
    if (!out.empty() && out.back().kind == e.kind && out.back().index == e.index &&
        (e.kind == StreamEvent::kReasoning || e.kind == StreamEvent::kContent || e.kind == StreamEvent::kCallArgs)) {
      out.back().text += e.text;
      continue;
    }
    if (e.text.empty() && (e.kind == StreamEvent::kReasoning || e.kind == StreamEvent::kContent)) continue;
    out.push_back(e);
  }
  return out;
}

std::vector<StreamEvent> run(const dsa::chat::ParseOptions& po, const std::string& text, uint32_t seed) {
  dsa::chat::StreamParser p(po);
  std::vector<StreamEvent> all;
  size_t i = 0;
  while (i < text.size()) {
    size_t n = seed == 0 ? text.size() : 1 + (seed = seed * 1103515245u + 12345u) % 7;
    size_t j = std::min(text.size(), i + n);
    while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xc0) == 0x80) ++j;
    for (auto& e : p.feed(std::string_view(text).substr(i, j - i))) all.push_back(std::move(e));
    i = j;
  }
  for (auto& e : p.finish()) all.push_back(std::move(e));
  return merged(all);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  dsa::chat::ParseOptions po;
  po.format = data[0] & 1 ? dsa::chat::ChatFormat::kV31 : dsa::chat::ChatFormat::kV32;
  po.thinking = data[0] & 2;
  const std::string text(reinterpret_cast<const char*>(data + 2), size - 2);
  const auto whole = run(po, text, 0);
  const auto pieces = run(po, text, 1u + data[1]);
  if (whole != pieces) std::abort();
  (void)dsa::chat::parse_completion(text, po);
  return 0;
}

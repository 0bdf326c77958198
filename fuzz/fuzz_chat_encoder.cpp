// libFuzzer target: the chat encoders on random OpenAI-style requests ({"messages": [...], "tools":
// [...], ...}) or bare message lists. Conversion and encoding (V3.2 DSML and V3.1, thinking on and
// off) either succeed or throw dsa::Error; the Python-compatible JSON helpers never crash.
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "io/chat_encoding.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  using dsa::chat::ojson;
  const ojson j = ojson::parse(text.begin(), text.end(), nullptr, false);
  if (dsa::chat::py_json_valid(text)) {
    try {
      (void)dsa::chat::py_json_reformat(text);
      (void)dsa::chat::py_json_object_members(text);
    } catch (const dsa::Error&) {
    }
  }
  if (j.is_discarded()) return 0;
  try {
    (void)dsa::chat::py_json_dumps(j);
    std::vector<dsa::chat::Message> msgs;
    bool thinking = size % 2 == 1;
    if (j.is_object()) {
      dsa::chat::ChatRequest r = dsa::chat::chat_request_from_openai(j, thinking);
      msgs = std::move(r.messages);
      thinking = r.thinking;
    } else {
      msgs = dsa::chat::messages_from_json(j);
    }
    for (auto fmt : {dsa::chat::ChatFormat::kV32, dsa::chat::ChatFormat::kV31}) {
      dsa::chat::EncodeOptions eo;
      eo.thinking = thinking;
      eo.add_bos = size % 3 != 0;
      try {
        (void)dsa::chat::encode_chat(fmt, msgs, eo);
      } catch (const dsa::Error&) {
      }
    }
  } catch (const dsa::Error&) {
  }
  return 0;
}

// libFuzzer target: parse_safetensors on arbitrary bytes must either succeed or throw dsa::Error,
// never read out of bounds or hit undefined behaviour (built with ASan + UBSan).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Exact-size heap copy so ASan sees any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  try {
    dsa::SafetensorsHeader h = dsa::parse_safetensors(buf.data(), buf.size(), "fuzz");
    // Whatever was accepted must be self-consistent: every tensor lies inside the buffer.
    const uint64_t data_size = buf.size() - h.data_start;
    for (const auto& t : h.tensors) {
      if (t.begin > t.end || t.end > data_size) std::abort();
      if (t.end - t.begin != uint64_t(t.shape.numel()) * dsa::dtype_size(t.dtype)) std::abort();
      // Touch the first and last byte of each tensor.
      if (t.end > t.begin) {
        volatile uint8_t a = buf[h.data_start + t.begin];
        volatile uint8_t b = buf[h.data_start + t.end - 1];
        (void)a;
        (void)b;
      }
    }
  } catch (const dsa::Error&) {
  }
  return 0;
}

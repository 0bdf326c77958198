#pragma once
// Host helpers on logits. Drawing tokens is a backend op (Backend::sample, docs/sampling.md), so a
// step's logits never leave the device.
#include <cstdint>

namespace dsa {

// Greedy argmax, lowest id on ties.
int32_t argmax(const float* logits, int64_t n);

}  // namespace dsa

#pragma once
// The models the runtime tests run on: the tiny random model in the exact V3.2 checkpoint format
// (written once per test process) and the small real model dsa-mini from the shared folder.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "model/random_model.h"

namespace dsa::test {

// vocab 512, 2 layers, index_topk 32, context 1024 (random_model.cpp, preset "tiny").
inline std::string tiny_model_dir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    std::string d = (fs::temp_directory_path() / ("dsa-tiny-" + std::to_string(::getpid()))).string();
    write_random_model(d, preset_model_config("tiny"), 7, 1u << 20);  // small shards: several files
    return d;
  }();
  return dir;
}

// vocab 8192, 6 layers, index_topk 256, context 8192, with tokenizer.json.
inline std::string mini_model_dir() { return std::string(DSA_SHARED_DIR) + "/models/dsa-mini"; }
inline bool have_mini_model() { return std::filesystem::exists(mini_model_dir() + "/config.json"); }

}  // namespace dsa::test

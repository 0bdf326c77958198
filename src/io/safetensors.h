#pragma once
// Safetensors reading (memory-mapped, zero-copy, sharded) and writing.
// Format: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section; offsets are relative to the start of the data section.
// Every malformed input is an Error naming the file (and the tensor where there is one):
// header length past the file, bad JSON, unknown dtype, offsets out of range, overlapping or
// not matching dtype x shape, non-integer or negative shapes, ...
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dsa {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;             // in header order
  std::map<std::string, std::string> metadata; // "__metadata__" (string values only)
  uint64_t data_start = 0;                      // 8 + header length
};

// Parse and validate a whole safetensors file image (header + bounds of every tensor).
// `what` names the file in error messages. Never reads outside [data, data + size).
SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& what);

// One memory-mapped safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* find(std::string_view name) const;
  // Zero-copy view of a tensor; the view keeps the mapping alive.
  Tensor tensor(const TensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::weak_ptr<SafetensorsFile> self_;
  friend class Checkpoint;
};

// A Hugging Face model directory's weights: model.safetensors.index.json (sharded) if present,
// else every *.safetensors file in the directory. Checks that the index and the shards agree
// (a tensor listed in the index but missing from its shard, or present in two shards, is an error).
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir);
  const std::string& dir() const { return dir_; }
  bool has(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  const TensorInfo& info(std::string_view name) const;  // throws if missing
  const std::string& file_of(std::string_view name) const;
  // Tensor by name; throws "<dir>: missing tensor '<name>'".
  Tensor get(std::string_view name) const;
  // Tensor by name with the expected dtype and shape; on mismatch throws
  // "<file>: tensor '<name>': expected BF16[384, 128], found F32[384, 128]".
  Tensor get(std::string_view name, DType dtype, Shape shape) const;
  // Throws "<file>: tensor '<name>' holds NaN at element i ..." when a floating-point tensor (F32,
  // BF16, F16, E4M3) holds a NaN or an infinity. Reads every byte once.
  void check_finite(std::string_view name) const;
  uint64_t tensor_bytes() const;  // all tensors' data, over every shard

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> where_;  // name -> (file, tensor)
};

// Writing (make-model, tests). Tensors are host tensors; written in insertion order.
struct NamedTensor {
  std::string name;
  Tensor tensor;
};
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// Write tensors as model-0000i-of-0000N.safetensors shards of at most max_shard_bytes each, plus
// model.safetensors.index.json ({"metadata": {"total_size": ..}, "weight_map": {name: file}}).
void write_sharded_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors,
                              size_t max_shard_bytes);

}  // namespace dsa

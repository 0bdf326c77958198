#pragma once
// Tensor: a non-owning-by-default view of contiguous row-major data on one device, with an
// optional shared owner that keeps the storage alive (mmap'd file, host buffer, device buffer).
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace dsa {

enum class Device : uint8_t { CPU, CUDA };

struct Shape {
  std::array<int64_t, 4> d{0, 0, 0, 0};
  int n = 0;
  Shape() = default;
  Shape(std::initializer_list<int64_t> s) {
    DSA_CHECK(s.size() <= 4, "tensor rank > 4 is not supported");
    for (auto v : s) d[n++] = v;
  }
  int64_t operator[](int i) const { return d[i]; }
  int64_t& operator[](int i) { return d[i]; }
  int64_t numel() const {
    int64_t p = 1;
    for (int i = 0; i < n; ++i) p *= d[i];
    return p;
  }
  bool operator==(const Shape& o) const {
    if (n != o.n) return false;
    for (int i = 0; i < n; ++i)
      if (d[i] != o.d[i]) return false;
    return true;
  }
  std::string str() const;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  Device device = Device::CPU;
  std::shared_ptr<void> owner;  // keeps the storage alive; may be null for borrowed views

  bool defined() const { return data != nullptr || (shape.numel() == 0 && shape.n > 0); }
  int64_t numel() const { return shape.numel(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.n + i : i]; }
  int rank() const { return shape.n; }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
  // Same storage, new shape (numel must match).
  Tensor view(Shape s) const;
  // Rows [begin, end) along dim 0.
  Tensor rows(int64_t begin, int64_t end) const;
  std::string str() const;  // "BF16[4, 384]"
};

// Host allocation, 64-byte aligned, owned by the returned tensor.
Tensor host_tensor(DType t, Shape s);

}  // namespace dsa

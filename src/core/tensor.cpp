#include "core/tensor.h"

#include <cstdlib>
#include <sstream>

namespace dsa {

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < n; ++i) os << (i ? ", " : "") << d[i];
  os << ']';
  return os.str();
}

Tensor Tensor::view(Shape s) const {
  DSA_CHECK(s.numel() == numel(), "view ", s.str(), " does not match ", str());
  Tensor t = *this;
  t.shape = s;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  DSA_CHECK(shape.n >= 1 && 0 <= begin && begin <= end && end <= shape[0], "rows(", begin, ", ", end,
            ") out of range for ", str());
  Tensor t = *this;
  size_t row_bytes = shape[0] ? nbytes() / size_t(shape[0]) : 0;
  t.data = static_cast<char*>(data) + size_t(begin) * row_bytes;
  t.shape[0] = end - begin;
  return t;
}

std::string Tensor::str() const { return std::string(dtype_name(dtype)) + shape.str(); }

Tensor host_tensor(DType t, Shape s) {
  Tensor x;
  x.dtype = t;
  x.shape = s;
  size_t bytes = (x.nbytes() + 63) & ~size_t(63);
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  DSA_CHECK(p, "out of host memory allocating ", x.str());
  x.data = p;
  x.owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return x;
}

}  // namespace dsa

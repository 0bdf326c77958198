// CPU backend: memory, elementwise ops, norms, RoPE, Hadamard (the linears, attention, indexer
// and MoE live in cpu_linear.cpp, cpu_attention.cpp, cpu_indexer.cpp and cpu_moe.cpp).
#include "backends/cpu/cpu_backend.h"
#include "backends/op_profiler.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace dsa {

CpuBackend::CpuBackend(int threads)
    : threads_(threads > 0 ? threads : omp_get_max_threads()),
      arena_([](size_t n) { return std::aligned_alloc(StepArena::kAlign, n); }, [](void* p) { std::free(p); }) {
  omp_set_num_threads(threads_);
}

Tensor CpuBackend::alloc(DType t, Shape s) {
  if (arena_.in_step()) {
    Tensor x;
    x.dtype = t;
    x.shape = s;
    if (void* p = arena_.take(x.nbytes())) {
      x.data = p;
      x.owner = arena_.owner(p);
      return x;
    }
  }
  return host_tensor(t, s);  // outside decode steps, and what did not fit (the next step's workspace is larger)
}

Backend::StepMode CpuBackend::begin_decode_step(const DecodeStepKey&) {
  arena_.begin();
  return StepMode::Run;
}

size_t CpuBackend::free_memory() const {
  std::ifstream f("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (f >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

void CpuBackend::download(const Tensor& t, void* host) {
  if (t.data != host) std::memcpy(host, t.data, t.nbytes());
}
void CpuBackend::fill_zero(Tensor& t) { std::memset(t.data, 0, t.nbytes()); }
void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  DSA_CHECK(src.nbytes() == dst.nbytes(), "copy: ", src.str(), " -> ", dst.str());
  std::memcpy(dst.data, src.data, src.nbytes());
}

void CpuBackend::copy_cols(const Tensor& src, int64_t col0, Tensor& dst) {
  const int64_t W = src.dim(-1), R = src.numel() / W, n = dst.numel() / R;
  DSA_CHECK(src.dtype == dst.dtype && col0 + n <= W, "copy_cols: ", src.str(), " -> ", dst.str());
  const size_t es = dtype_size(src.dtype);
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(dst.ptr<char>() + r * n * es, src.ptr<char>() + (r * W + col0) * es, size_t(n) * es);
}

void CpuBackend::embed(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t T = ids.numel(), D = table.dim(1), V = table.dim(0);
  const int32_t* id = ids.ptr<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    DSA_CHECK(id[t] >= 0 && id[t] < V, "token id ", id[t], " out of range [0, ", V, ")");
    std::memcpy(out.ptr<uint16_t>() + t * D, table.ptr<uint16_t>() + int64_t(id[t]) * D, size_t(D) * 2);
  }
}

namespace {
void rms_row(const float* s, const float* w, float eps, int64_t D, uint16_t* out) {
  float ss = 0.f;
  for (int64_t i = 0; i < D; ++i) ss += s[i] * s[i];
  const float r = 1.0f / std::sqrt(ss / float(D) + eps);
  for (int64_t i = 0; i < D; ++i) out[i] = f32_to_bf16(w[i] * (s[i] * r));
}
}  // namespace

// RMSNorm of each row; with a residual, the fused add first (architecture.md §2.1): the norm
// uses the fp32 sum, the carried residual is that sum rounded to bf16.
static void rms_norm_rows(const Tensor& x, Tensor* residual, const Tensor& w, float eps, Tensor& out) {
  const int64_t D = x.dim(-1), T = x.numel() / D;
#pragma omp parallel
  {
    std::vector<float> s(static_cast<size_t>(D));
#pragma omp for
    for (int64_t t = 0; t < T; ++t) {
      const uint16_t* xr = x.ptr<uint16_t>() + t * D;
      for (int64_t i = 0; i < D; ++i) s[i] = bf16_to_f32(xr[i]);
      if (residual) {
        uint16_t* rr = residual->ptr<uint16_t>() + t * D;
        for (int64_t i = 0; i < D; ++i) {
          s[i] += bf16_to_f32(rr[i]);
          rr[i] = f32_to_bf16(s[i]);
        }
      }
      rms_row(s.data(), w.ptr<float>(), eps, D, out.ptr<uint16_t>() + t * D);
    }
  }
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) { rms_norm_rows(x, nullptr, w, eps, out); }

void CpuBackend::add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) {
  rms_norm_rows(x, &residual, w, eps, out);
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) {
  const int64_t D = x.dim(-1), T = x.numel() / D;
  const float* wp = w.ptr<float>();
  const float* bp = b.ptr<float>();
#pragma omp parallel for
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* xr = x.ptr<uint16_t>() + t * D;
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < D; ++i) mean += bf16_to_f32(xr[i]);
    mean /= float(D);
    for (int64_t i = 0; i < D; ++i) {
      float d = bf16_to_f32(xr[i]) - mean;
      var += d * d;
    }
    var /= float(D);  // biased variance, as F.layer_norm
    const float r = 1.0f / std::sqrt(var + eps);
    uint16_t* o = out.ptr<uint16_t>() + t * D;
    for (int64_t i = 0; i < D; ++i) o[i] = f32_to_bf16((bf16_to_f32(xr[i]) - mean) * r * wp[i] + bp[i]);
  }
}

void CpuBackend::silu_mul(const Tensor& g, const Tensor& u, Tensor& out) {
  const int64_t n = g.numel();
  const uint16_t* gp = g.ptr<uint16_t>();
  const uint16_t* up = u.ptr<uint16_t>();
  uint16_t* op = out.ptr<uint16_t>();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float a = bf16_to_f32(gp[i]);
    float silu = a / (1.0f + std::exp(-a));
    op[i] = f32_to_bf16(silu * bf16_to_f32(up[i]));
  }
}

void CpuBackend::rope(Tensor& x, int64_t col, const Batch& b, const Tensor& freqs, RopeLayout layout) {
  const int64_t T = x.dim(0), H = x.rank() == 3 ? x.dim(1) : 1, W = x.dim(-1);
  const float* f = freqs.ptr<float>();
  const int64_t max_pos = freqs.dim(0);
  for (int64_t t = 0; t < T; ++t)
    DSA_CHECK(b.positions[size_t(t)] >= 0 && b.positions[size_t(t)] < max_pos, "position ",
              b.positions[size_t(t)], " beyond the RoPE table (", max_pos, " positions)");
#pragma omp parallel for if (T * H > 256)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = b.positions[size_t(t)];
    const float* cs = f + pos * 64;  // 32 x (cos, sin)
    for (int64_t h = 0; h < H; ++h) {
      uint16_t* r = x.ptr<uint16_t>() + (t * H + h) * W + col;
      for (int i = 0; i < 32; ++i) {
        const int ia = layout == RopeLayout::Interleaved ? 2 * i : i;
        const int ib = layout == RopeLayout::Interleaved ? 2 * i + 1 : i + 32;
        const float a = bf16_to_f32(r[ia]), bb = bf16_to_f32(r[ib]);
        const float c = cs[2 * i], s = cs[2 * i + 1];
        r[ia] = f32_to_bf16(a * c - bb * s);  // complex multiply (a + ib)(c + is), fp32
        r[ib] = f32_to_bf16(a * s + bb * c);
      }
    }
  }
}

void CpuBackend::hadamard128(Tensor& x) {
  const int64_t R = x.numel() / 128;
  DSA_CHECK(x.dim(-1) == 128, "hadamard128 expects rows of 128, got ", x.str());
  const float scale = 1.0f / std::sqrt(128.0f);
#pragma omp parallel for if (R > 64)
  for (int64_t r = 0; r < R; ++r) {
    uint16_t* p = x.ptr<uint16_t>() + r * 128;
    float v[128];
    for (int i = 0; i < 128; ++i) v[i] = bf16_to_f32(p[i]);
    // In-place Sylvester butterflies: after all stages v = x . H128 with H[i][j] = (-1)^popcount(i&j).
    for (int h = 1; h < 128; h <<= 1)
      for (int i = 0; i < 128; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          const float a = v[j], c = v[j + h];
          v[j] = a + c;
          v[j + h] = a - c;
        }
    for (int i = 0; i < 128; ++i) p[i] = f32_to_bf16(v[i] * scale);
  }
}

std::unique_ptr<Backend> make_cuda_backend(int device, int threads);  // backends/cuda

int cuda_device_index(const std::string& name) {
  if (name == "cuda") return 0;
  if (name.rfind("cuda:", 0) != 0) return -1;
  const std::string idx = name.substr(5);
  DSA_CHECK(!idx.empty() && idx.size() <= 4 && idx.find_first_not_of("0123456789") == std::string::npos,
            "device '", name, "': expected cuda or cuda:N with N a device index (0, 1, ...)");
  return std::stoi(idx);
}

namespace {
std::unique_ptr<Backend> make_plain_backend(const std::string& name, int threads) {
  if (name == "cpu") return std::make_unique<CpuBackend>(threads);
  if (const int dev = cuda_device_index(name); dev >= 0) {
#ifdef DSA_HAVE_CUDA
    return make_cuda_backend(dev, threads);
#else
    fail("this build of dsa has no CUDA backend (rebuild with nvcc available, -DDSA_CUDA=ON)");
#endif
  }
  fail("unknown device '", name, "' (expected cpu, cuda or cuda:N)");
}
}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& name, int threads) {
  auto be = make_plain_backend(name, threads);
  if (const char* p = std::getenv("DSA_PROFILE_OPS"); p && *p && *p != '0')
    return std::make_unique<OpProfiler>(std::move(be));  // per-op times on stderr at exit
  return be;
}

}  // namespace dsa

// CUDA backend: memory (caching allocator), batch mirror, elementwise ops, norms, RoPE, Hadamard.
// The linears, MLA, indexer, top-k and MoE live in gemm/, mla/, indexer/, topk/ and moe/.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/cuda_backend.h"

namespace dsa {

namespace cuda {

// ---- caching allocator ---------------------------------------------------------------------
size_t DevicePool::round(size_t bytes) {
  if (bytes < 512) return 512;
  // Size classes: four steps per power of two (at most 25% waste).
  size_t p = size_t(1) << (63 - __builtin_clzll(bytes));
  const size_t step = p >= 2048 ? p / 4 : 512;
  return (bytes + step - 1) / step * step;
}

void* DevicePool::get(size_t bytes) {
  const size_t sz = round(bytes);
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = free_.find(sz);
    if (it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      cached_ -= sz;
      in_use_ += sz;
      peak_ = std::max(peak_, in_use_);
      return p;
    }
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, sz);
  if (e != cudaSuccess) {
    cudaGetLastError();
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cudaStreamPerThread, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone)
      fail("CUDA out of memory allocating ", bytes, " bytes inside a decode-step graph capture (", in_use_,
           " bytes in use); run with DSA_CUDA_GRAPHS=0 or a smaller KV cache");  // trim() would synchronise
    trim();
    e = cudaMalloc(&p, sz);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail("CUDA out of memory allocating ", bytes, " bytes (", in_use_, " bytes in use)");
    }
  }
  std::lock_guard<std::mutex> g(mu_);
  in_use_ += sz;
  peak_ = std::max(peak_, in_use_);
  return p;
}

void DevicePool::put(void* p, size_t bytes) {
  const size_t sz = round(bytes);
  std::lock_guard<std::mutex> g(mu_);
  free_.emplace(sz, p);
  cached_ += sz;
  in_use_ -= sz;
}

void DevicePool::trim() {
  std::lock_guard<std::mutex> g(mu_);
  if (!free_.empty()) cudaDeviceSynchronize();
  for (auto it = free_.begin(); it != free_.end();) {
    if (cudaFree(it->second) == cudaSuccess) {
      cached_ -= it->first;
      it = free_.erase(it);
    } else {
      cudaGetLastError();
      ++it;  // keep what could not be freed: it stays usable, nothing leaks from the pool's view
    }
  }
}

DevicePool::~DevicePool() {
  for (auto& [sz, p] : free_) cudaFree(p);
}

// ---- kernels: elementwise, norms ------------------------------------------------------------
namespace {

__global__ void embed_kernel(const int32_t* ids, const uint16_t* table, int64_t V, int64_t D, uint16_t* out,
                             int* err) {
  const int64_t t = blockIdx.x;
  const int32_t id = ids[t];
  const bool ok = id >= 0 && id < V;
  if (!ok && threadIdx.x == 0) atomicOr(err, kErrTokenId);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[t * D + i] = ok ? table[int64_t(id) * D + i] : 0;
}

__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int w = threadIdx.x / 32, l = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();
  if (l == 0) red[w] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < nw; ++i) s += red[i];  // same order in every thread
  return s;
}

// mode 0: rms_norm(x); mode 1: add_rms_norm (s = x + residual; residual = bf16(s)).
template <int MODE>
__global__ void rms_kernel(const uint16_t* x, uint16_t* residual, const float* w, float eps, int64_t D,
                           uint16_t* out) {
  extern __shared__ float s[];
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const uint16_t* xr = x + row * D;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float v = bf2f(xr[i]);
    if (MODE == 1) {
      v = __fadd_rn(v, bf2f(residual[row * D + i]));
      residual[row * D + i] = f2bf(v);
    }
    s[i] = v;
    ss = __fmaf_rn(v, v, ss);
  }
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(__fadd_rn(__fdiv_rn(ss, float(D)), eps));
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[row * D + i] = f2bf(__fmul_rn(w[i], __fmul_rn(s[i], r)));
}

__global__ void layer_norm_kernel(const uint16_t* x, const float* w, const float* b, float eps, int64_t D,
                                  uint16_t* out) {
  extern __shared__ float s[];
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    s[i] = bf2f(x[row * D + i]);
    sum += s[i];
  }
  const float mean = __fdiv_rn(block_sum(sum, red), float(D));
  float var = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = __fsub_rn(s[i], mean);
    var = __fmaf_rn(d, d, var);
  }
  var = __fdiv_rn(block_sum(var, red), float(D));
  const float r = 1.0f / sqrtf(__fadd_rn(var, eps));
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    out[row * D + i] = f2bf(__fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(s[i], mean), r), w[i]), b[i]));
}

__global__ void silu_mul_kernel(const uint16_t* g, const uint16_t* u, int64_t n, uint16_t* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float a = bf2f(g[i]);
    const float silu = __fdiv_rn(a, __fadd_rn(1.0f, expf(-a)));
    out[i] = f2bf(__fmul_rn(silu, bf2f(u[i])));
  }
}

// One warp per (token, head) row; lane i rotates pair i.
__global__ void rope_kernel(uint16_t* x, int64_t T, int64_t H, int64_t W, int64_t col, const int32_t* positions,
                            const float* freqs, int64_t max_pos, int interleaved, int* err) {
  const int64_t row = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (row >= T * H) return;
  const int64_t t = row / H;
  const int pos = positions[t];
  if (pos < 0 || pos >= max_pos) {
    if (threadIdx.x == 0) atomicOr(err, kErrPosition);
    return;
  }
  const int i = threadIdx.x;
  uint16_t* r = x + row * W + col;
  const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + 32;
  const float a = bf2f(r[ia]), bb = bf2f(r[ib]);
  const float c = freqs[int64_t(pos) * 64 + 2 * i], s = freqs[int64_t(pos) * 64 + 2 * i + 1];
  __syncwarp();
  r[ia] = f2bf(__fsub_rn(__fmul_rn(a, c), __fmul_rn(bb, s)));
  r[ib] = f2bf(__fadd_rn(__fmul_rn(a, s), __fmul_rn(bb, c)));
}

// One warp per 128-row; lane l holds elements 4l..4l+3. Same butterfly order as the CPU: exact.
__global__ void hadamard_kernel(uint16_t* x, int64_t R, float scale) {
  const int64_t row = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (row >= R) return;
  const int l = threadIdx.x;
  uint16_t* p = x + row * 128 + l * 4;
  float v[4];
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  v[0] = bf2f(raw.x & 0xffff); v[1] = bf2f(raw.x >> 16); v[2] = bf2f(raw.y & 0xffff); v[3] = bf2f(raw.y >> 16);
  // h = 1, 2 inside the thread
  for (int h = 1; h <= 2; h <<= 1)
    for (int j = 0; j < 4; ++j)
      if (!(j & h)) {
        const float a = v[j], c = v[j + h];
        v[j] = a + c;
        v[j + h] = a - c;
      }
  // h = 4 .. 64 across lanes
  for (int m = 1; m <= 16; m <<= 1)
    for (int j = 0; j < 4; ++j) {
      const float o = __shfl_xor_sync(0xffffffffu, v[j], m);
      v[j] = (l & m) ? __fsub_rn(o, v[j]) : __fadd_rn(v[j], o);
    }
  uint2 outv;
  outv.x = uint32_t(f2bf(__fmul_rn(v[0], scale))) | (uint32_t(f2bf(__fmul_rn(v[1], scale))) << 16);
  outv.y = uint32_t(f2bf(__fmul_rn(v[2], scale))) | (uint32_t(f2bf(__fmul_rn(v[3], scale))) << 16);
  *reinterpret_cast<uint2*>(p) = outv;
}

unsigned grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(g, 65535 * 8)));
}

}  // namespace

// ---- CudaBackend ------------------------------------------------------------------------------
// The context comes first: it makes the device current, reads its properties and runs the one-time probes
// (synchronous copies: here, never inside a decode step's graph capture).
CudaBackend::CudaBackend(int device) : CudaBackend(std::make_unique<CudaContext>(device)) {}

CudaBackend::CudaBackend(int device, const KernelConfig& config)
    : CudaBackend(std::make_unique<CudaContext>(device, config)) {}

CudaBackend::CudaBackend(std::unique_ptr<CudaContext> ctx)
    : ctx_(std::move(ctx)),
      pool_(std::make_shared<DevicePool>()),
      dev_arena_(
          [this](size_t n) -> void* {
            void* p = nullptr;
            if (cudaMalloc(&p, n) == cudaSuccess) return p;
            cudaGetLastError();
            pool_->trim();  // the pool's cached blocks first, as the pool itself does
            if (cudaMalloc(&p, n) == cudaSuccess) return p;
            cudaGetLastError();
            return nullptr;
          },
          [](void* p) { cudaFree(p); }),
      host_arena_(
          [](size_t n) -> void* {
            void* p = nullptr;
            if (cudaMallocHost(&p, n) == cudaSuccess) return p;
            cudaGetLastError();
            return nullptr;
          },
          [](void* p) { cudaFreeHost(p); }) {
  smem_optin_ = ctx_->facts().smem_optin;
  DSA_CUDA_CHECK(cudaMalloc(&err_, sizeof(int)));
  DSA_CUDA_CHECK(cudaMemset(err_, 0, sizeof(int)));
  DSA_CUDA_CHECK(cudaEventCreateWithFlags(&step_done_, cudaEventDisableTiming));
  blas_ = std::make_unique<BlasLt>();
}

// ---- decode steps (docs/decode-graphs.md) -------------------------------------------------------
// A decode step runs from the step workspace: every alloc() between begin_decode_step and
// end_decode_step is a bump allocation in dev_arena_, and the step's host inputs (ids, the batch's
// metadata) are copied into pinned staging memory and from there to the workspace by async copies.
// Its launch shapes follow only the key (rows, the context bucket, top-k, mode, numerics): the batch is
// padded to its bucket (prepare_batch). So with graphs on, the first step of a key is captured, kept and
// launched, and every later step of that key writes its inputs into the same staging memory and
// replays the graph: the captured copies read the new inputs, the kernels the same addresses.
// Steps of one key compute the same numbers eager, captured or replayed.
namespace {
constexpr size_t kMaxDecodeGraphs = 256;  // least recently used ones go beyond this (each is ~kernels x 1 KB)
constexpr int kEagerDecodeSteps = 2;      // the first decode steps run eagerly: one-time uploads happen there
}  // namespace

int64_t CudaBackend::decode_ctx_bucket(int64_t max_end) const {
  // Four buckets per doubling from 256 (all multiples of 64): a step is launched for at most 1.25x its
  // longest context, ~1.1x on average, and a growing sequence changes bucket 4 times per doubling.
  if (max_end <= 256) return 256;
  int64_t p = 256;
  while (2 * p < max_end) p *= 2;
  const int64_t q = p / 4;
  return (max_end + q - 1) / q * q;
}

void CudaBackend::drop_decode_graphs() {
  for (auto& [k, g] : graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  gstats_.dropped += int64_t(graphs_.size());
  graphs_.clear();
}

Backend::StepMode CudaBackend::begin_decode_step(const DecodeStepKey& key) {
  DSA_CHECK(step_ == Step::None, "begin_decode_step: a decode step is already open");
  // The staging memory is rewritten below: the previous step's copies out of it must be done.
  if (step_done_pending_) DSA_CUDA_CHECK(cudaEventSynchronize(step_done_));
  step_done_pending_ = false;
  // The staged inputs must fit (a graph's copies read them at fixed places): ids, and prepare_batch's
  // metadata of a batch padded to the bucket. The step's temporaries size the workspace by use.
  const auto r256 = [](size_t n) { return (n + StepArena::kAlign - 1) / StepArena::kAlign * StepArena::kAlign; };
  const size_t rows = size_t(key.rows), mb = size_t((key.ctx_bucket + kKvBlock - 1) / kKvBlock);
  const size_t staging = r256(4 * rows) + r256(4 * (6 * rows + rows * mb));
  host_arena_.reserve(staging);
  dev_arena_.reserve(staging);
  const bool replaced_dev = dev_arena_.begin(), replaced_host = host_arena_.begin();
  if (replaced_dev || replaced_host) drop_decode_graphs();  // they hold addresses of the old blocks
  key_ = key;
  step_overflow_ = false;
  staged_.clear();
  scopes_.clear();
  step_ = Step::Eager;
  if (!config().graphs) return StepMode::Run;
  if (graph_warmup_ < kEagerDecodeSteps) {
    ++graph_warmup_;
    return StepMode::Run;
  }
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    it->second.last_use = ++use_clock_;
    step_ = Step::Replay;
    return StepMode::Replay;
  }
  // Buffers an op would grow on first use cannot grow inside a capture: grow them now, so a captured step
  // takes the kernels an eager one takes.
  if (key.topk > 0 && key.rows <= 1024) topk_hist0(key.rows);
  const cudaError_t ce = cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeRelaxed);
  if (ce != cudaSuccess) {
    cudaGetLastError();
    step_ = Step::None;
    dev_arena_.end();
    host_arena_.end();
    fail("decode step: cudaStreamBeginCapture failed (", cudaGetErrorString(ce), ")");
  }
  step_ = Step::Capture;
  return StepMode::Run;
}

Tensor CudaBackend::stage(const Tensor& host) {
  if (step_ == Step::None) return upload(host);
  DSA_CHECK(host.device == Device::CPU, "stage: ", host.str(), " is not a host tensor");
  const size_t bytes = host.nbytes();
  void* hp = host_arena_.take(bytes);
  void* dp = dev_arena_.take(bytes);
  const size_t off = dp ? size_t(static_cast<char*>(dp) - static_cast<const char*>(dev_arena_.base())) : 0;
  const auto on_device = [&](void* p) {  // the host tensor's dtype and shape, at p in the workspace
    Tensor t = host;
    t.device = Device::CUDA;
    t.data = p;
    t.owner = dev_arena_.owner(p);
    return t;
  };
  if (step_ == Step::Replay) {
    // The graph's copies read this staging memory: the same inputs, sizes and order as at capture.
    const auto& want = graphs_.at(key_).staged;
    const size_t i = staged_.size();
    if (!(hp && dp && i < want.size() && want[i] == std::make_pair(off, bytes))) {
      drop_decode_graphs();  // the key's graph cannot be trusted; it is captured again next time
      fail("decode-step replay: input ", i, " (", bytes, " bytes) is not staged as at capture");
    }
    std::memcpy(hp, host.data, bytes);
    staged_.emplace_back(off, bytes);
    return on_device(dp);
  }
  if (!hp || !dp) {  // the workspace is too small this step (it grows at the next): plain memory, graph not kept
    DSA_CHECK(step_ == Step::Eager, "decode step: input of ", bytes, " bytes does not fit the staging memory reserved "
              "for its key (", host_arena_.capacity(), " / ", dev_arena_.capacity(), " bytes)");
    step_overflow_ = true;
    Tensor d = alloc(host.dtype, host.shape);  // a pool block (the workspace did not fit)
    if (bytes) DSA_CUDA_CHECK(cudaMemcpyAsync(d.data, host.data, bytes, cudaMemcpyHostToDevice, cudaStreamPerThread));
    return d;
  }
  std::memcpy(hp, host.data, bytes);
  if (bytes) DSA_CUDA_CHECK(cudaMemcpyAsync(dp, hp, bytes, cudaMemcpyHostToDevice, cudaStreamPerThread));
  staged_.emplace_back(off, bytes);
  return on_device(dp);
}

Tensor CudaBackend::replay_decode_step() {
  DSA_CHECK(step_ == Step::Replay, "replay_decode_step outside a replayed decode step");
  DecodeGraph& g = graphs_.at(key_);
  DSA_CHECK(staged_.size() == g.staged.size(), "decode-step replay: ", staged_.size(), " inputs staged, the graph has ",
            g.staged.size());
  DSA_CUDA_CHECK(cudaGraphLaunch(g.exec, cudaStreamPerThread));
  ++gstats_.replayed;
  if (replay_probe_ > 0) time_replays(g.exec);
  Tensor t = g.logits;
  t.owner = dev_arena_.owner(t.data);
  return t;
}

void CudaBackend::time_replays(cudaGraphExec_t exec) {
  // Bench only (set_graph_replay_probe): the step's kernels back to back, without host gaps.
  cudaEvent_t e0, e1;
  DSA_CUDA_CHECK(cudaEventCreate(&e0));
  DSA_CUDA_CHECK(cudaEventCreate(&e1));
  DSA_CUDA_CHECK(cudaEventRecord(e0, cudaStreamPerThread));
  for (int i = 0; i < replay_probe_; ++i) DSA_CUDA_CHECK(cudaGraphLaunch(exec, cudaStreamPerThread));
  DSA_CUDA_CHECK(cudaEventRecord(e1, cudaStreamPerThread));
  DSA_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  DSA_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  ++rstats_.steps;
  rstats_.replays += replay_probe_;
  rstats_.ms += ms;
}

void CudaBackend::end_decode_step(const Tensor& logits) {
  DSA_CHECK(step_ != Step::None, "end_decode_step without begin_decode_step");
  const Step st = step_;
  step_ = Step::None;
  dev_arena_.end();
  host_arena_.end();
  if (st == Step::Capture) {
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(cudaStreamPerThread, &g);
    if (e != cudaSuccess || !g) {
      cudaGetLastError();
      config().graphs = false;  // later steps run eagerly; this one's work was recorded, not run
      fail("CUDA graph capture of a decode step failed (", cudaGetErrorString(e),
           "); graphs are now off for this backend (DSA_CUDA_GRAPHS=0 avoids them)");
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    DSA_CUDA_CHECK(ie);
    DSA_CUDA_CHECK(cudaGraphLaunch(exec, cudaStreamPerThread));
    // Kept only if everything it touches lives in the workspace (or outlives it: weights, caches).
    const bool in_arena = logits.owner && dev_arena_.base() &&
                          static_cast<const char*>(logits.data) >= static_cast<const char*>(dev_arena_.base()) &&
                          static_cast<const char*>(logits.data) < static_cast<const char*>(dev_arena_.base()) + dev_arena_.capacity();
    if (!step_overflow_ && dev_arena_.misses() == 0 && host_arena_.misses() == 0 && in_arena) {
      if (replay_probe_ > 0) time_replays(exec);
      if (graphs_.size() >= kMaxDecodeGraphs) {
        auto lru = graphs_.begin();
        for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
          if (it->second.last_use < lru->second.last_use) lru = it;
        cudaGraphExecDestroy(lru->second.exec);
        graphs_.erase(lru);
        ++gstats_.dropped;
      }
      DecodeGraph& dg = graphs_[key_];
      dg.exec = exec;
      dg.logits = logits;
      dg.logits.owner.reset();
      dg.staged = staged_;
      dg.last_use = ++use_clock_;
      ++gstats_.captured;
    } else {
      // Its temporaries partly live in pool blocks that go back to the pool after this step: run once only.
      DSA_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
      cudaGraphExecDestroy(exec);
      ++gstats_.run_once;
    }
  }
  DSA_CUDA_CHECK(cudaEventRecord(step_done_, cudaStreamPerThread));
  step_done_pending_ = true;
}

void CudaBackend::cancel_decode_step() {
  if (step_ == Step::None) return;
  if (step_ == Step::Capture) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(cudaStreamPerThread, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  step_ = Step::None;
  dev_arena_.end();
  host_arena_.end();
  // The step may have enqueued copies out of the staging memory before it failed.
  if (cudaEventRecord(step_done_, cudaStreamPerThread) == cudaSuccess) step_done_pending_ = true;
  cudaGetLastError();
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(ctx_->device());  // the pool's blocks and this backend's buffers live there
  cancel_decode_step();
  cudaDeviceSynchronize();
  drop_decode_graphs();
  if (step_done_) cudaEventDestroy(step_done_);
  expert_tables_.clear();
  if (err_) cudaFree(err_);
  if (hist0_) cudaFree(hist0_);
}

int* CudaBackend::topk_hist0(int64_t rows) {
  if (rows > 1024) return nullptr;
  if (rows > hist0_rows_) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cudaStreamPerThread, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return nullptr;
    const int64_t n = std::max<int64_t>(rows, 64);
    int* p = nullptr;
    if (cudaMalloc(&p, size_t(n) * 2048 * sizeof(int)) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;  // the top-k builds its first histogram itself
    }
    DSA_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));  // the old buffer may still be in use
    if (hist0_) {
      drop_decode_graphs();  // captured decode steps read the old buffer
      cudaFree(hist0_);
    }
    DSA_CUDA_CHECK(cudaMemset(p, 0, size_t(n) * 2048 * sizeof(int)));
    hist0_ = p;
    hist0_rows_ = n;
  }
  return hist0_;
}

void CudaBackend::check_errors() {
  int e = 0;
  DSA_CUDA_CHECK(cudaMemcpy(&e, err_, sizeof(int), cudaMemcpyDeviceToHost));
  if (e) {
    DSA_CUDA_CHECK(cudaMemset(err_, 0, sizeof(int)));
    fail("CUDA backend: invalid input detected on the device (flags ", e, ":",
         (e & kErrTokenId) ? " token id out of range" : "", (e & kErrPosition) ? " position beyond the RoPE table" : "",
         (e & kErrTopk) ? " top-k index outside [-1, position]" : "", (e & kErrBlock) ? " unmapped KV block" : "",
         (e & kErrExpert) ? " expert id out of range" : "", ")");
  }
}

Tensor CudaBackend::alloc(DType t, Shape s) {
  Tensor x;
  x.dtype = t;
  x.shape = s;
  x.device = Device::CUDA;
  if (step_ != Step::None) {  // a decode step: the workspace (what does not fit comes from the pool this once)
    if (void* p = dev_arena_.take(x.nbytes())) {
      x.data = p;
      x.owner = dev_arena_.owner(p);
      return x;
    }
    step_overflow_ = true;
  }
  const size_t bytes = std::max<size_t>(x.nbytes(), 256);
  void* p = pool_->get(bytes);
  std::shared_ptr<DevicePool> pool = pool_;
  x.data = p;
  x.owner = std::shared_ptr<void>(p, [pool, bytes](void* q) { pool->put(q, bytes); });
  return x;
}

Tensor CudaBackend::upload(const Tensor& host) {
  if (host.device == Device::CUDA) return host;
  // Uploads outlive the step (weights, expert tables): never from a decode step's workspace.
  const Step st = step_;
  step_ = Step::None;
  Tensor d = alloc(host.dtype, host.shape);
  step_ = st;
  if (host.nbytes()) DSA_CUDA_CHECK(cudaMemcpy(d.data, host.data, host.nbytes(), cudaMemcpyHostToDevice));
  return d;
}

void CudaBackend::download(const Tensor& t, void* host) {
  if (t.nbytes()) DSA_CUDA_CHECK(cudaMemcpy(host, t.data, t.nbytes(), cudaMemcpyDeviceToHost));
  check_errors();
}

std::string CudaBackend::memory_report() const {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  char buf[256];
  const double G = 1024.0 * 1024.0 * 1024.0;
  std::snprintf(buf, sizeof buf, "device memory: %.2f GiB in use (peak %.2f GiB), %.2f GiB cached; GPU %.2f of %.2f GiB used",
                pool_->in_use() / G, pool_->peak() / G, pool_->cached() / G, (total_b - free_b) / G, total_b / G);
  return buf;
}

size_t CudaBackend::free_memory() const {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return free_b + pool_->cached();
}

void CudaBackend::synchronize() {
  DSA_CUDA_CHECK(cudaDeviceSynchronize());
  check_errors();
}

void CudaBackend::fill_zero(Tensor& t) {
  if (t.nbytes()) DSA_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.nbytes(), 0));
}

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  DSA_CHECK(src.nbytes() == dst.nbytes(), "copy: ", src.str(), " -> ", dst.str());
  if (src.nbytes() && src.data != dst.data)
    DSA_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, 0));
}

void CudaBackend::copy_cols(const Tensor& src, int64_t col0, Tensor& dst) {
  const int64_t W = src.dim(-1), R = src.numel() / W, n = dst.numel() / std::max<int64_t>(R, 1);
  DSA_CHECK(src.dtype == dst.dtype && col0 + n <= W, "copy_cols: ", src.str(), " -> ", dst.str());
  if (R == 0 || n == 0) return;
  const size_t es = dtype_size(src.dtype);
  DSA_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, n * es, static_cast<const char*>(src.data) + col0 * es, W * es, n * es,
                                   size_t(R), cudaMemcpyDeviceToDevice, 0));
}

void CudaBackend::prepare_batch(Batch& b) {
  auto d = std::make_shared<DevBatch>();
  const int64_t T = b.n_tokens(), S = int64_t(b.seqs.size()), MB0 = b.max_blocks;
  DSA_CHECK(int64_t(b.block_table.size()) == S * MB0, "prepare_batch: block table has ", b.block_table.size(),
            " entries, expected ", S * MB0);
  int64_t max_end = 0;
  for (auto& s : b.seqs) max_end = std::max(max_end, s.end_pos());
  // A decode step's bucket (Batch::ctx_bucket): the grids follow it, and the block table has exactly its
  // columns (blocks past a sequence's end are never read), so every step of a bucket has one layout.
  const int64_t MB = b.ctx_bucket > 0 ? (b.ctx_bucket + kKvBlock - 1) / kKvBlock : MB0;
  if (b.ctx_bucket > 0) {
    DSA_CHECK(b.ctx_bucket >= max_end, "prepare_batch: bucket ", b.ctx_bucket, " below the longest context ", max_end);
    max_end = b.ctx_bucket;
  }
  std::vector<int32_t> h;
  h.reserve(size_t(2 * T + S * MB + 4 * S));
  h.insert(h.end(), b.positions.begin(), b.positions.end());
  h.insert(h.end(), b.token_seq.begin(), b.token_seq.end());
  for (int64_t s = 0; s < S; ++s)
    for (int64_t j = 0; j < MB; ++j) h.push_back(j < MB0 ? b.block_table[size_t(s * MB0 + j)] : -1);
  for (auto& s : b.seqs) h.push_back(int32_t(s.start_pos));
  for (auto& s : b.seqs) h.push_back(int32_t(s.n_new));
  for (auto& s : b.seqs) h.push_back(int32_t(s.token_offset));
  for (auto& s : b.seqs) h.push_back(int32_t(s.ctx_offset));
  if (step_ != Step::None) {  // a decode step: through the staging memory (a replayed graph re-reads it)
    d->storage = stage(Tensor{h.data(), DType::I32, {int64_t(h.size())}});
  } else {
    d->storage = alloc(DType::I32, {std::max<int64_t>(1, int64_t(h.size()))});
    if (!h.empty()) DSA_CUDA_CHECK(cudaMemcpy(d->storage.data, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  }
  int32_t* p = d->storage.ptr<int32_t>();
  d->positions = p;
  d->token_seq = p + T;
  d->block_table = p + 2 * T;
  d->seq_start = p + 2 * T + S * MB;
  d->seq_nnew = d->seq_start + S;
  d->seq_tok = d->seq_nnew + S;
  d->seq_ctx = d->seq_tok + S;
  d->n_tokens = int(T);
  d->n_seqs = int(S);
  d->max_blocks = int(MB);
  d->max_end = int(max_end);
  b.device = d;
}

const DevBatch& CudaBackend::dev(const Batch& b) {
  if (!b.device) prepare_batch(const_cast<Batch&>(b));
  return *static_cast<const DevBatch*>(b.device.get());
}

void CudaBackend::embed(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t T = ids.numel(), D = table.dim(1), V = table.dim(0);
  if (T == 0) return;
  embed_kernel<<<unsigned(T), 128>>>(ids.ptr<int32_t>(), table.ptr<uint16_t>(), V, D, out.ptr<uint16_t>(), err_);
  DSA_LAUNCH_CHECK();
}

static int norm_threads(int64_t D) { return D >= 2048 ? 512 : D >= 512 ? 256 : 128; }

void CudaBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t D = x.dim(-1), T = x.numel() / D;
  if (T == 0) return;
  rms_kernel<0><<<unsigned(T), norm_threads(D), D * 4>>>(x.ptr<uint16_t>(), nullptr, w.ptr<float>(), eps, D,
                                                         out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

void CudaBackend::add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& w, float eps, Tensor& out) {
  const int64_t D = x.dim(-1), T = x.numel() / D;
  if (T == 0) return;
  rms_kernel<1><<<unsigned(T), norm_threads(D), D * 4>>>(x.ptr<uint16_t>(), residual.ptr<uint16_t>(), w.ptr<float>(),
                                                         eps, D, out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) {
  const int64_t D = x.dim(-1), T = x.numel() / D;
  if (T == 0) return;
  layer_norm_kernel<<<unsigned(T), norm_threads(D), D * 4>>>(x.ptr<uint16_t>(), w.ptr<float>(), b.ptr<float>(), eps,
                                                             D, out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

void CudaBackend::silu_mul(const Tensor& g, const Tensor& u, Tensor& out) {
  const int64_t n = g.numel();
  if (n == 0) return;
  silu_mul_kernel<<<grid_for(n, 256), 256>>>(g.ptr<uint16_t>(), u.ptr<uint16_t>(), n, out.ptr<uint16_t>());
  DSA_LAUNCH_CHECK();
}

void CudaBackend::rope(Tensor& x, int64_t col, const Batch& b, const Tensor& freqs, RopeLayout layout) {
  const int64_t T = x.dim(0), H = x.rank() == 3 ? x.dim(1) : 1, W = x.dim(-1);
  if (T == 0) return;
  const DevBatch& d = dev(b);
  const dim3 blk(32, 8);
  rope_kernel<<<cdiv(T * H, 8), blk>>>(x.ptr<uint16_t>(), T, H, W, col, d.positions, freqs.ptr<float>(),
                                       freqs.dim(0), layout == RopeLayout::Interleaved, err_);
  DSA_LAUNCH_CHECK();
}

void CudaBackend::hadamard128(Tensor& x) {
  DSA_CHECK(x.dim(-1) == 128, "hadamard128 expects rows of 128, got ", x.str());
  const int64_t R = x.numel() / 128;
  if (R == 0) return;
  const float scale = 1.0f / std::sqrt(128.0f);
  hadamard_kernel<<<cdiv(R, 8), dim3(32, 8)>>>(x.ptr<uint16_t>(), R, scale);
  DSA_LAUNCH_CHECK();
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device, int threads) {
  (void)threads;
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace dsa

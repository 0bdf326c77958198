// CudaContext (backends/cuda/context.h): per-backend device facts, probes and kernel configuration. Two
// backends in one process each keep their own configuration and per-device kernel state, and both compute
// correct results interleaved; the start-up description names the device and every group; device indices are
// checked; make_backend("cuda:N") selects the device.
#include <cstdio>
#include <string>

#include "backends/cuda/topk/topk.h"
#include "gpu_util.h"

namespace dsa::test {
namespace {

Tensor rand_pow2_scales(int64_t rows, int64_t cols) {
  Tensor s = host_tensor(DType::F32, {rows, cols});
  for (int64_t i = 0; i < s.numel(); ++i) s.ptr<float>()[i] = std::ldexp(1.0f, -12 + int(rng()() % 7u));
  return s;
}

}  // namespace

TEST(GpuContext, DescribeNamesTheDeviceAndEveryGroup) {
  REQUIRE_GPU();
  cuda::CudaBackend be(0);
  const std::string d = be.describe();
  std::printf("%s", d.c_str());
  for (const char* line : {"device: cuda:0 ", "probes: ", "launch: pdl ", "gemm: fp8 ", "indexer: ", "top-k: on-chip ",
                           "mla decode: path "})
    EXPECT_NE(("\n" + d).find(std::string("\n") + line), std::string::npos) << "a line starting with '" << line << "' in\n" << d;
  const cuda::DeviceFacts& f = be.context().facts();
  int dev = -1;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  EXPECT_EQ(dev, 0);
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_EQ(f.sms, prop.multiProcessorCount);
  EXPECT_EQ(f.cc_major, prop.major);
  EXPECT_EQ(f.smem_optin, size_t(prop.sharedMemPerBlockOptin));
  EXPECT_EQ(be.sm_count(), prop.multiProcessorCount);
  // The probes agree with each other: PDL and the sm_90a kernels need the sm_90a SASS; clusters need sm_90.
  if (!f.sm90a_sass) {
    EXPECT_FALSE(f.pdl_possible);
    EXPECT_FALSE(f.indexer_sm90);
    EXPECT_FALSE(f.mqa_sm90);
  }
  if (f.cc_major < 9) EXPECT_EQ(f.topk_cluster_max, 1);
  // The configuration at start is the environment's (the initial one), and the tools' line says so.
  EXPECT_EQ(be.config().describe(), be.context().initial_config().describe());
  EXPECT_EQ(be.context().pdl(), be.config().pdl && f.pdl_possible);
}

TEST(GpuContext, DeviceIndexIsChecked) {
  REQUIRE_GPU();
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  try {
    cuda::CudaBackend be(n);
    ADD_FAILURE() << "device " << n << " of " << n << " accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:" + std::to_string(n)), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::CudaBackend be(-1), Error);
  EXPECT_THROW(make_backend("cuda:" + std::to_string(n)), Error);
  EXPECT_THROW(make_backend("cuda:x"), Error);
  EXPECT_THROW(make_backend("cuda:"), Error);
  auto be = make_backend("cuda:0");
  EXPECT_EQ(be->name(), "cuda");
  EXPECT_NE(be->describe().find("device: cuda:0 "), std::string::npos);
  // A configuration given explicitly is range-checked like one from the environment.
  cuda::KernelConfig bad;
  bad.mqa.path = 7;
  EXPECT_THROW(cuda::CudaBackend(0, bad), Error);
}

// Two backends on one device, one on the defaults and one on the portable / reference choices, used in turns:
// each keeps its own configuration and top-k launch record, and every result is right.
TEST(GpuContext, TwoBackendsInOneProcessKeepTheirOwnState) {
  REQUIRE_GPU();
  CpuBackend cpu(4);
  cuda::KernelConfig portable = cuda::KernelConfig::from_process_env();
  portable.pdl = false;
  portable.topk.onchip = false;
  portable.fp8_gemm = cuda::Fp8Path::Mma32;
  portable.indexer.wgmma = false;
  portable.mqa.path = 2;
  auto a = std::make_unique<cuda::CudaBackend>(0);
  auto b = std::make_unique<cuda::CudaBackend>(0, portable);
  EXPECT_NE(&a->context(), &b->context());
  EXPECT_FALSE(b->context().pdl());
  EXPECT_EQ(a->config().topk.onchip, a->context().initial_config().topk.onchip);
  // top-k rows (exact selection) and an FP8 linear, alternating between the backends.
  const int64_t R = 3, L = 20000, k = 2048, N = 576, K = 1024, T = 7;
  Tensor s = host_tensor(DType::F32, {R, L});
  for (int64_t i = 0; i < s.numel(); ++i) s.ptr<float>()[i] = std::round(randn() * 64.f) / 64.f;  // many ties
  Tensor nn = host_tensor(DType::I32, {R});
  for (int64_t r = 0; r < R; ++r) nn.ptr<int32_t>()[r] = int32_t(L - 7 * r);
  Tensor ref = host_tensor(DType::I32, {R, k});
  for (int64_t r = 0; r < R; ++r) cpu::topk_select(s.ptr<float>() + r * L, nn.ptr<int32_t>()[r], k, ref.ptr<int32_t>() + r * k);
  Fp8Weight w{rand_e4m3({N, K}), rand_pow2_scales((N + 127) / 128, K / 128)};
  Tensor x = rand_bf16({T, K}, 2.0f);
  Tensor oc = host_tensor(DType::BF16, {T, N});
  cpu.linear_fp8(x, w, oc);
  for (int round = 0; round < 2; ++round)
    for (cuda::CudaBackend* be : {a.get(), b.get()}) {
      SCOPED_TRACE(std::string(be == a.get() ? "defaults" : "portable") + " round " + std::to_string(round));
      Tensor sg = be->upload(s), ng = be->upload(nn);
      Tensor og = be->alloc(DType::I32, {R, k});
      cudaMemset(og.data, 0xff, og.nbytes());
      be->topk_rows(sg, ng.ptr<int32_t>(), k, og);
      Tensor oh = host_tensor(DType::I32, {R, k});
      be->download(og, oh.data);
      expect_same_bytes(oh, ref, "topk_rows");
      if (be == b.get()) EXPECT_EQ(be->context().topk_state().last_kpt, 0) << "on-chip off: a global-memory path";
      Fp8Weight wg{be->upload(w.w), be->upload(w.scale)};
      Tensor yg = be->alloc(DType::BF16, {T, N});
      cudaMemset(yg.data, 0xff, yg.nbytes());
      be->linear_fp8(be->upload(x), wg, yg);
      Tensor yh = host_tensor(DType::BF16, {T, N});
      be->download(yg, yh.data);
      expect_close(yh, oc, 2e-3, "linear_fp8");
    }
  // The defaults took the on-chip top-k (20K keys: one CTA of 16K keys is too small, a cluster or the
  // global path where clusters do not exist), the portable backend never did; changing one configuration
  // leaves the other alone.
  if (a->context().facts().topk_cluster_max > 1 && a->config().topk.onchip) {
    EXPECT_NE(a->context().topk_state().last_kpt, 0);
  }
  EXPECT_EQ(b->context().topk_state().last_kpt, 0);
  a->config().mqa.force_splits = 5;
  EXPECT_EQ(b->config().mqa.force_splits, 0);
  EXPECT_FALSE(b->config().topk.onchip);
  // Destroying one backend leaves the other working (the per-device kernel attributes stay set).
  a.reset();
  Tensor sg = b->upload(s), ng = b->upload(nn), og = b->alloc(DType::I32, {R, k});
  b->topk_rows(sg, ng.ptr<int32_t>(), k, og);
  Tensor oh = host_tensor(DType::I32, {R, k});
  b->download(og, oh.data);
  expect_same_bytes(oh, ref, "topk_rows after the other backend is gone");
  auto c = std::make_unique<cuda::CudaBackend>(0);  // a fresh one after that
  Tensor sc = c->upload(s), nc = c->upload(nn), oc2 = c->alloc(DType::I32, {R, k});
  c->topk_rows(sc, nc.ptr<int32_t>(), k, oc2);
  c->download(oc2, oh.data);
  expect_same_bytes(oh, ref, "topk_rows on a third backend");
}

// With two or more GPUs: a backend on device 1 describes itself as cuda:1 and computes there (one device per
// thread at a time: the constructor makes its device current, make_current() switches back).
TEST(GpuContext, SecondDevice) {
  REQUIRE_GPU();
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  if (n < 2) GTEST_SKIP() << "one GPU";
  cuda::CudaBackend b0(0);
  cuda::CudaBackend b1(1);
  EXPECT_NE(b1.describe().find("device: cuda:1 "), std::string::npos) << b1.describe();
  EXPECT_EQ(b1.context().device(), 1);
  const int64_t R = 2, L = 5000, k = 256;
  Tensor s = host_tensor(DType::F32, {R, L});
  for (int64_t i = 0; i < s.numel(); ++i) s.ptr<float>()[i] = randn();
  Tensor nn = host_tensor(DType::I32, {R});
  for (int64_t r = 0; r < R; ++r) nn.ptr<int32_t>()[r] = int32_t(L);
  Tensor ref = host_tensor(DType::I32, {R, k});
  for (int64_t r = 0; r < R; ++r) cpu::topk_select(s.ptr<float>() + r * L, L, k, ref.ptr<int32_t>() + r * k);
  for (cuda::CudaBackend* be : {&b0, &b1, &b0}) {
    be->context().make_current();
    int dev = -1;
    ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
    EXPECT_EQ(dev, be->context().device());
    Tensor sg = be->upload(s), ng = be->upload(nn), og = be->alloc(DType::I32, {R, k});
    be->topk_rows(sg, ng.ptr<int32_t>(), k, og);
    Tensor oh = host_tensor(DType::I32, {R, k});
    be->download(og, oh.data);
    expect_same_bytes(oh, ref, ("topk_rows on cuda:" + std::to_string(be->context().device())).c_str());
  }
  b1.context().make_current();  // each backend is destroyed with its own device current (the destructor sets it)
}

}  // namespace dsa::test

#pragma once
// Indexer loss and exact gradient on the GPU (docs/training.md, "CUDA"): the same math as
// train::indexer_loss_grad (architecture.md §4, §9.2, §9.3), tiled over query rows so that no
// [T x T] matrix per head ever exists. Host-only header.
//
// Per tile of R query rows [r0, r1) against the keys 0..r1-1 (the causal triangle beyond the tile's
// last row is skipped): the index dots A[(i,h), j] = q[t,h].k[j] as one GEMM (rows (i, h) are
// contiguous in q), I = c sum_h w relu(A); the top-k of I (backend top-k: ties to the lower index,
// as the CPU); the main attention's head-averaged probabilities from a batched GEMM over heads and a
// row kernel; the row KL and dI; dA = c dI w [A > 0] in place of A with dw; dq = dA k and
// dk += dA^T q as GEMMs. Then RoPE^T, the LayerNorm backward and the weight-gradient GEMMs.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/deepseek_v32.h"
#include "train/indexer_grad.h"

namespace dsa::cuda {

class CudaBackend;
class F32Blas;

// Where the GEMMs over the T^2/2 (query, key) pairs run: TF32 tensor cores (fp32 accumulation) or
// exact fp32 on the CUDA cores. The per-token linears are fp32 in both.
enum class TrainPrecision { Tf32, Fp32 };

class IndexerTrainer {
 public:
  IndexerTrainer(CudaBackend& be, const train::IndexerShape& s, TrainPrecision prec);
  ~IndexerTrainer();
  // One layer from the model's attention tap (tensors on this backend; one sequence from position 0):
  // loss and, if grad is given, the gradient added to *grad (host, sized). rope: the host rope table
  // [max_pos, 32, 2] (uploaded once).
  train::LayerStats loss_grad(const AttentionTap& a, const ModelConfig& cfg, const float* rope, int64_t rope_rows,
                              const train::IndexerParams<float>& p, const train::LossOptions& opt,
                              train::IndexerParams<float>* grad);
  // The same from host inputs (tests): in.rope has rope_rows rows.
  train::LayerStats loss_grad(const train::LayerInputs<float>& in, int64_t rope_rows,
                              const train::IndexerParams<float>& p, const train::LossOptions& opt,
                              train::IndexerParams<float>* grad);
  // Query rows per tile (0: from the memory budget of the index dots, ~512 MiB). Tests use small tiles.
  void set_tile_rows(int64_t r) { tile_rows_override_ = r; }
  // Tests: every device scratch buffer starts as 0xff bytes (NaN), so a read of an unwritten element
  // shows in the results.
  void set_poison(bool on);
  int64_t tile_rows(int64_t T) const;
  // GPU time per phase, accumulated over calls while profiling is on (seconds; read after a call,
  // which ends with a synchronising download). Phases: inputs, linears, index fwd, target, loss,
  // index bwd, backward linears, transfers.
  void set_profiling(bool on) { profiling_ = on; }
  std::vector<std::pair<std::string, double>> take_profile();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t tile_rows_override_ = 0;
  bool profiling_ = false;
};

}  // namespace dsa::cuda

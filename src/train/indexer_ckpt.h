#pragma once
// Indexer tensors <-> fp32 masters, and writing them into an HF checkpoint (architecture.md §7.1):
// FP8 tensors (wq_b, wk) re-quantised to e4m3 with power-of-two 128x128 `weight_scale_inv` blocks,
// the others in the dtype the checkpoint stores them in; every other tensor byte-identical.
#include <cstdint>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/safetensors.h"
#include "train/indexer_grad.h"

namespace dsa::train {

IndexerShape indexer_shape(const ModelConfig& cfg);
std::string indexer_prefix(int64_t layer);  // "model.layers.<l>.self_attn.indexer"

// Layer l's indexer as stored (FP8 dequantised: W_fp8 * weight_scale_inv).
IndexerParams<float> read_indexer(const Checkpoint& ck, const ModelConfig& cfg, int64_t layer);
// Normal init (std for the linears, k_norm weight 1 and bias 0), deterministic by (seed, layer).
IndexerParams<float> random_indexer(const IndexerShape& s, uint64_t seed, int64_t layer, double std);

// The tensors of layer l's indexer encoded like `ck` stores them (ck == null: FP8 + BF16, the V3.2 layout).
std::vector<NamedTensor> encode_indexer(const IndexerParams<float>& p, const IndexerShape& s, const ModelConfig& cfg,
                                        int64_t layer, const Checkpoint* ck);

// Copy every regular file of a model directory into out (created; existing files overwritten).
void copy_model_dir(const std::string& in, const std::string& out);
// Overwrite existing tensors of the checkpoint in dir (same name, dtype and shape) in place: each shard
// that holds one is rewritten through a temporary file and a rename, every other byte unchanged.
void patch_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors);
// --add-indexer: a V3.1-style checkpoint in dir (no indexer) gets the config fields (index_n_heads,
// index_head_dim, index_topk, model_type/architectures of V3.2) and the tensors, as a new shard
// model-indexer.safetensors listed in model.safetensors.index.json. Returns the new config.
ModelConfig add_indexer_to_dir(const std::string& dir, int64_t n_heads, int64_t topk, uint64_t seed, double std);

}  // namespace dsa::train

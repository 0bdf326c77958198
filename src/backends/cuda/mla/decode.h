#pragma once
// MLA decode (absorbed MQA form) on CUDA. Its path selection knobs are MqaConfig (kernel_config.h) in the
// backend's CudaContext::config().mqa: path, simple, force_splits, wgmma, scores_only, max_scratch.
// Host-only header (included by the GPU tests).
#include "backends/cuda/kernel_config.h"

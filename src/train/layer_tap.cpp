#include "train/layer_tap.h"

namespace dsa::train {

std::vector<float> LayerTap::bf16_host(const Tensor& t) {
  DSA_CHECK(t.dtype == DType::BF16, "LayerTap: expected a BF16 tensor, found ", t.str());
  tmp_.resize(size_t(t.numel()));
  be_.download(t, tmp_.data());
  std::vector<float> v(tmp_.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(tmp_[i]);
  return v;
}

LayerInputs<float> LayerTap::inputs(const AttentionTap& a, const float* rope) {
  const Batch& b = *a.batch;
  DSA_CHECK(b.seqs.size() == 1 && b.seqs[0].start_pos == 0, "LayerTap: one sequence prefilled from position 0");
  const int64_t T = a.x->dim(0), H = cfg_.num_attention_heads, NOPE = cfg_.qk_nope_head_dim,
                RO = cfg_.qk_rope_head_dim, DV = cfg_.v_head_dim, dm = NOPE + RO;
  x_ = bf16_host(*a.x);
  qr_ = bf16_host(*a.qr);
  mq_ = bf16_host(*a.q);
  const std::vector<float> kv = bf16_host(*a.kv_up), pe = bf16_host(*a.pe);
  mk_.resize(size_t(T * H * dm));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float* o = mk_.data() + (t * H + h) * dm;
      const float* k = kv.data() + (t * H + h) * (NOPE + DV);
      std::copy(k, k + NOPE, o);
      std::copy(pe.data() + t * RO, pe.data() + (t + 1) * RO, o + NOPE);
    }
  pos_.assign(b.positions.begin(), b.positions.end());
  LayerInputs<float> in;
  in.T = T;
  in.x = x_.data();
  in.qr = qr_.data();
  in.mq = mq_.data();
  in.mk = mk_.data();
  in.H = H;
  in.dm = dm;
  in.scale = cfg_.mla_softmax_scale();
  in.rope = rope;
  in.pos = pos_.data();
  return in;
}

}  // namespace dsa::train

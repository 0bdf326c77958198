#include "runtime/kv_cache.h"

#include <algorithm>

namespace dsa {

KvCache::KvCache(Backend& be, int64_t n_layers, int64_t num_blocks) : pool_(num_blocks) {
  for (int64_t l = 0; l < n_layers; ++l) {
    KvLayer k;
    k.mla = be.alloc(DType::U8, {num_blocks, kKvBlock * kMlaTokenBytes});
    k.indexer = be.alloc(DType::U8, {num_blocks, kKvBlock * kIndexTokenBytes});
    be.fill_zero(k.mla);
    be.fill_zero(k.indexer);
    bytes_ += k.mla.nbytes() + k.indexer.nbytes();
    layers.push_back(k);
  }
}

Batch make_batch(const std::vector<BatchSlice>& slices) {
  Batch b;
  int64_t tok = 0, ctx = 0, max_blocks = 1;
  for (const BatchSlice& s : slices) {
    DSA_CHECK(s.n_new > 0 && int64_t(s.blocks->size()) * kKvBlock >= s.start_pos + s.n_new, "make_batch: a slice of ",
              s.n_new, " tokens after ", s.start_pos, " over ", s.blocks->size(), " blocks");
    max_blocks = std::max<int64_t>(max_blocks, int64_t(s.blocks->size()));
  }
  for (size_t i = 0; i < slices.size(); ++i) {
    const BatchSlice& s = slices[i];
    BatchSeq q;
    q.start_pos = s.start_pos;
    q.n_new = s.n_new;
    q.token_offset = tok;
    q.ctx_offset = ctx;
    q.absorbed = s.absorbed;
    b.seqs.push_back(q);
    for (int64_t j = 0; j < s.n_new; ++j) {
      b.positions.push_back(int32_t(s.start_pos + j));
      b.token_seq.push_back(int32_t(i));
    }
    tok += s.n_new;
    ctx += q.end_pos();
  }
  b.max_blocks = max_blocks;
  b.block_table.assign(size_t(int64_t(slices.size()) * max_blocks), -1);
  for (size_t i = 0; i < slices.size(); ++i)
    std::copy(slices[i].blocks->begin(), slices[i].blocks->end(), b.block_table.begin() + int64_t(i) * max_blocks);
  return b;
}

void Sequence::reserve(KvCache& kv, int64_t tokens) {
  const int64_t want = (tokens + kKvBlock - 1) / kKvBlock, need = want - int64_t(blocks.size());
  if (need <= 0) return;
  DSA_CHECK(need <= kv.pool().available(), "out of KV memory: ", need, " more blocks of ", kKvBlock, " tokens needed, ",
            kv.pool().available(), " are free (of ", kv.num_blocks(), "; raise --kv-tokens or --kv-memory)");
  for (int64_t i = 0; i < need; ++i) blocks.push_back(kv.pool().allocate());
}

void Sequence::release(KvCache& kv) {
  for (int32_t b : blocks) kv.pool().release(b);
  blocks.clear();
  len = 0;
}

}  // namespace dsa

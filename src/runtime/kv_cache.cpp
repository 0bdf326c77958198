#include "runtime/kv_cache.h"

#include <algorithm>

namespace dsa {

KvCache::KvCache(Backend& be, int64_t n_layers, int64_t num_blocks) : num_blocks_(num_blocks) {
  DSA_CHECK(num_blocks > 0, "KV cache needs at least one block");
  for (int64_t l = 0; l < n_layers; ++l) {
    KvLayer k;
    k.mla = be.alloc(DType::U8, {num_blocks, kKvBlock * kMlaTokenBytes});
    k.indexer = be.alloc(DType::U8, {num_blocks, kKvBlock * kIndexTokenBytes});
    be.fill_zero(k.mla);
    be.fill_zero(k.indexer);
    bytes_ += k.mla.nbytes() + k.indexer.nbytes();
    layers.push_back(k);
  }
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));
}

int32_t KvCache::alloc_block() {
  DSA_CHECK(!free_.empty(), "out of KV memory: all ", num_blocks_, " blocks of ", kKvBlock,
            " tokens are in use (raise --kv-tokens)");
  int32_t b = free_.back();
  free_.pop_back();
  return b;
}

void KvCache::free_block(int32_t b) { free_.push_back(b); }

void Sequence::release(KvCache& kv) {
  for (int32_t b : blocks) kv.free_block(b);
  blocks.clear();
  len = 0;
}

Batch make_batch(KvCache& kv, const std::vector<Sequence*>& seqs, const std::vector<int64_t>& n_new) {
  DSA_CHECK(seqs.size() == n_new.size(), "make_batch: ", seqs.size(), " sequences, ", n_new.size(), " counts");
  // Reserve blocks first so that running out leaves every sequence as it was.
  int64_t need = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t have = int64_t(seqs[i]->blocks.size());
    const int64_t want = (seqs[i]->len + n_new[i] + kKvBlock - 1) / kKvBlock;
    need += std::max<int64_t>(0, want - have);
  }
  DSA_CHECK(need <= kv.free_blocks(), "out of KV memory: this step needs ", need, " more blocks of ", kKvBlock,
            " tokens, ", kv.free_blocks(), " are free (of ", kv.num_blocks(), "; raise --kv-tokens)");
  Batch b;
  int64_t tok = 0, ctx = 0, max_blocks = 1;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    const int64_t want = (s.len + n_new[i] + kKvBlock - 1) / kKvBlock;
    while (int64_t(s.blocks.size()) < want) s.blocks.push_back(kv.alloc_block());
    max_blocks = std::max<int64_t>(max_blocks, int64_t(s.blocks.size()));
    BatchSeq q;
    q.start_pos = s.len;
    q.n_new = n_new[i];
    q.token_offset = tok;
    q.ctx_offset = ctx;
    b.seqs.push_back(q);
    for (int64_t j = 0; j < n_new[i]; ++j) {
      b.positions.push_back(int32_t(s.len + j));
      b.token_seq.push_back(int32_t(i));
    }
    tok += n_new[i];
    ctx += q.end_pos();
  }
  b.max_blocks = max_blocks;
  b.block_table.assign(size_t(seqs.size() * max_blocks), -1);
  for (size_t i = 0; i < seqs.size(); ++i)
    std::copy(seqs[i]->blocks.begin(), seqs[i]->blocks.end(), b.block_table.begin() + int64_t(i) * max_blocks);
  return b;
}

void commit_batch(const std::vector<Sequence*>& seqs, const Batch& b) {
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i]->len = b.seqs[i].end_pos();
}

}  // namespace dsa

// The engine's key/value cache: kvcrush's own caches behind one interface.
//
// Keys are stored already rotated by RoPE at their absolute position, and
// every cached row remembers that position: attention runs over the rows
// the cache holds, not over positions 0..pos, so rows can be evicted and
// decoding continues with a cache shorter than the sequence.
//
// Three stores, one per way an engine lays out its cache:
//   contiguous_store  kvcrush::contiguous_cache<float>, [kv_head][token][dim]
//                     per layer; shared or per-head keep sets of one length.
//   per_head_store    kvcrush::per_head_cache<float> (one single-head cache per KV head), so heads
//                     may hold different numbers of tokens (AdaKV's ragged,
//                     head-wise budgets).
//   paged_store       kvcrush::paged_cache<float> (vLLM-style blocks of
//                     [token][head][dim], a block table per sequence) for
//                     one sequence; attention walks the block table.
// The engine reads every store through head_rows: per KV head, runs of rows
// (one run for the contiguous stores, one per block for the paged one).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/cache/paged_cache.hpp"
#include "kvcrush/cache/per_head_cache.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

// Consecutive cached rows of one KV head: row i of the run is at keys + i *
// stride (head_dim floats), its position at positions[i * position_stride].
struct row_run {
  const float* keys = nullptr;
  const float* values = nullptr;
  index_t count = 0;
  index_t stride = 0;
  const index_t* positions = nullptr;
  index_t position_stride = 1;
};

class kv_store {
 public:
  virtual ~kv_store() = default;
  virtual index_t layers() const = 0;
  virtual index_t kv_heads() const = 0;
  virtual index_t head_dim() const = 0;
  virtual index_t capacity() const = 0;  // tokens a head of a layer can hold
  virtual index_t length(index_t layer, index_t kv_head) const = 0;
  // Appends one token: keys and values hold kv_heads * head_dim floats
  // ([head][dim]), the key rotated at position.
  virtual void append(index_t layer, const float* keys, const float* values, index_t position) = 0;
  // Calls f(const row_run&) for the runs of one head's rows, in cache order.
  virtual void for_each_run(index_t layer, index_t kv_head,
                            const std::function<void(const row_run&)>& f) const = 0;
  // Eviction with a library keep set (shared, per head, or ragged where the
  // store allows); checked by the library before anything moves.
  virtual void evict(index_t layer, const kvcrush::keep_view& keep) = 0;
  virtual void clear() = 0;
  // What one layer's K/V data occupies (kvcrush/quant/memory.hpp).
  virtual kvcrush::memory_usage memory(index_t layer) const = 0;

  // Stores whose rows are not float32 (quantized, float16) do the
  // arithmetic that reads them: with computes_attention() the engine calls
  // key_scores (q . k of every row of a KV head, in cache order) and
  // value_sum (sum over rows of p[t] * v_t, written to out) instead of
  // walking runs, and for_each_run is never called.
  virtual bool computes_attention() const { return false; }
  virtual void key_scores(index_t /*layer*/, index_t /*kv_head*/, const float* /*q*/, float* /*scores*/) const {
    throw std::logic_error("kv_store::key_scores: this store's rows are read with for_each_run");
  }
  virtual void value_sum(index_t /*layer*/, index_t /*kv_head*/, const float* /*probabilities*/, float* /*out*/) const {
    throw std::logic_error("kv_store::value_sum: this store's rows are read with for_each_run");
  }

  // Longest head of a layer (all heads, unless the store is ragged).
  index_t length(index_t layer) const {
    index_t longest = 0;
    for (index_t h = 0; h < kv_heads(); ++h) longest = std::max(longest, length(layer, h));
    return longest;
  }
  bool full(index_t layer) const { return length(layer) >= capacity(); }

  // Shared eviction: keep rows (strictly ascending indices into the cache).
  void keep_rows(index_t layer, const std::vector<index_t>& rows) {
    evict(layer, kvcrush::keep_view::shared(rows.data(), static_cast<index_t>(rows.size())));
  }
};

class contiguous_store final : public kv_store {
 public:
  using kv_store::length;
  contiguous_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity)
      : cache_(layers, kv_heads, head_dim, capacity, kvcrush::kv_layout::head_token_dim) {}

  kvcrush::contiguous_cache<float>& cache() noexcept { return cache_; }
  const kvcrush::contiguous_cache<float>& cache() const noexcept { return cache_; }

  index_t layers() const override { return cache_.layers(); }
  index_t kv_heads() const override { return cache_.kv_heads(); }
  index_t head_dim() const override { return cache_.head_dim(); }
  index_t capacity() const override { return cache_.capacity(); }
  index_t length(index_t layer, index_t) const override { return cache_.length(layer); }
  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    append_rows(cache_, layer, keys, values, position);
  }
  void for_each_run(index_t layer, index_t kv_head, const std::function<void(const row_run&)>& f) const override {
    const auto k = cache_.keys(layer);
    const auto v = cache_.values(layer);
    const auto p = cache_.positions(layer);
    if (k.tokens() == 0) return;
    f(row_run{k.row(kv_head, 0), v.row(kv_head, 0), k.tokens(), k.token_stride(), &p(kv_head, 0), 1});
  }
  void evict(index_t layer, const kvcrush::keep_view& keep) override { cache_.evict_tokens(layer, keep); }
  void clear() override {
    for (index_t l = 0; l < cache_.layers(); ++l) cache_.clear(l);
  }
  kvcrush::memory_usage memory(index_t layer) const override { return kvcrush::plain_cache_memory(cache_, layer); }

  // One token's rows for all heads of a layer into a library cache.
  template <class Cache>
  static void append_rows(Cache& cache, index_t layer, const float* keys, const float* values, index_t position) {
    const index_t heads = cache.kv_heads(), d = cache.head_dim();
    const auto k = kvcrush::make_head_token_dim(keys, heads, 1, d);
    const auto v = kvcrush::make_head_token_dim(values, heads, 1, d);
    cache.append(layer, k, v, kvcrush::make_vector_view(&position, 1));
  }

 private:
  kvcrush::contiguous_cache<float> cache_;
};

class per_head_store final : public kv_store {
 public:
  using kv_store::length;
  per_head_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity)
      : cache_(layers, kv_heads, head_dim, capacity) {}

  // kvcrush's per-head cache (what an AdaKV eviction_controller drives).
  kvcrush::per_head_cache<float>& cache() noexcept { return cache_; }
  const kvcrush::per_head_cache<float>& cache() const noexcept { return cache_; }

  index_t layers() const override { return cache_.layers(); }
  index_t kv_heads() const override { return cache_.kv_heads(); }
  index_t head_dim() const override { return cache_.head_dim(); }
  index_t capacity() const override { return cache_.capacity(); }
  index_t length(index_t layer, index_t kv_head) const override { return cache_.length(layer, kv_head); }
  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    for (index_t h = 0; h < kv_heads(); ++h) {
      contiguous_store::append_rows(cache_.head(h), layer, keys + h * head_dim(), values + h * head_dim(), position);
    }
  }
  void for_each_run(index_t layer, index_t kv_head, const std::function<void(const row_run&)>& f) const override {
    const auto& c = cache_.head(kv_head);
    const auto k = c.keys(layer);
    if (k.tokens() == 0) return;
    f(row_run{k.row(0, 0), c.values(layer).row(0, 0), k.tokens(), k.token_stride(), &c.positions(layer)(0, 0), 1});
  }
  // Keep sets with one row per head may be ragged: each head keeps its own.
  void evict(index_t layer, const kvcrush::keep_view& keep) override { cache_.evict_tokens(layer, keep); }
  void clear() override {
    for (index_t l = 0; l < cache_.layers(); ++l) cache_.clear(l);
  }
  kvcrush::memory_usage memory(index_t layer) const override {
    kvcrush::memory_usage m;
    for (index_t h = 0; h < cache_.kv_heads(); ++h) m += kvcrush::plain_cache_memory(cache_.head(h), layer);
    return m;
  }

 private:
  kvcrush::per_head_cache<float> cache_;
};

class paged_store final : public kv_store {
 public:
  using kv_store::length;
  paged_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, index_t block_size)
      : capacity_(capacity), pool_(config(layers, kv_heads, head_dim, capacity, block_size)),
        sequence_(pool_, pool_.create()) {}

  kvcrush::paged_cache<float>& pool() noexcept { return pool_; }
  kvcrush::paged_sequence<float>& sequence() noexcept { return sequence_; }

  index_t layers() const override { return pool_.layers(); }
  index_t kv_heads() const override { return pool_.kv_heads(); }
  index_t head_dim() const override { return pool_.head_dim(); }
  index_t capacity() const override { return capacity_; }
  index_t length(index_t layer, index_t) const override { return pool_.length(sequence_.id(), layer); }
  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    const index_t heads = kv_heads(), d = head_dim();
    pool_.append(sequence_.id(), layer, kvcrush::make_head_token_dim(keys, heads, 1, d),
                 kvcrush::make_head_token_dim(values, heads, 1, d), kvcrush::make_vector_view(&position, 1));
  }
  // One run per block of the block table: attention walks the blocks.
  void for_each_run(index_t layer, index_t kv_head, const std::function<void(const row_run&)>& f) const override {
    pool_.for_each_block(sequence_.id(), layer, [&](const kvcrush::paged_block<float>& block) {
      f(row_run{block.keys.row(kv_head, 0), block.values.row(kv_head, 0), block.tokens, block.keys.token_stride(),
                &block.positions(kv_head, 0), block.positions.stride(1)});
    });
  }
  void evict(index_t layer, const kvcrush::keep_view& keep) override { sequence_.evict_tokens(layer, keep); }
  void clear() override {
    pool_.release(sequence_.id());
    sequence_ = kvcrush::paged_sequence<float>(pool_, pool_.create());
  }
  // Whole blocks: a partly used last block occupies a block.
  kvcrush::memory_usage memory(index_t layer) const override {
    index_t blocks = 0;
    pool_.for_each_block(sequence_.id(), layer, [&](const kvcrush::paged_block<float>&) { ++blocks; });
    return kvcrush::paged_memory<float>(kv_heads(), blocks, pool_.block_size(), head_dim());
  }

 private:
  static kvcrush::paged_cache_config config(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity,
                                            index_t block_size) {
    kvcrush::paged_cache_config cfg;
    cfg.layers = layers;
    cfg.kv_heads = kv_heads;
    cfg.head_dim = head_dim;
    cfg.block_size = block_size;
    cfg.blocks = (capacity + block_size - 1) / block_size + 1;
    cfg.max_sequences = 1;
    return cfg;
  }

  index_t capacity_;
  kvcrush::paged_cache<float> pool_;
  kvcrush::paged_sequence<float> sequence_;
};

}  // namespace kvcrush_llama

// The engine's quantized and mixed-precision stores: kvcrush's quantized
// layers behind the kv_store interface, for comparisons at equal bytes.
//
//   quantized_store  kvcrush::quantized_cache<float16>: KIVI group
//                    quantization (keys per channel over groups of G tokens,
//                    values per token) with a float16 window of the most
//                    recent tokens, quantized G at a time as it fills. The
//                    eviction controller drives cache() directly.
//   tiered_store     kvcrush::tiered_cache<float16>: a high tier of float16
//                    rows and a low tier of quantized rows (without window:
//                    its partial last key group stays in float16), presented
//                    as one sequence in position order. New tokens enter the
//                    high tier; kvcrush::precision_demoter (or demote()) moves
//                    rows down. The eviction controller and the demoter drive
//                    cache() directly. With no demotion it is a plain float16
//                    cache.
// Both compute attention themselves (computes_attention): the engine never
// sees their rows as floats. Keep sets must be shared by all KV heads. Like
// the engine, a store is driven by one thread (attention shares scratch).
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "kv_cache.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/tiered_cache.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/cache.hpp"
#include "kvcrush/quant/memory.hpp"

namespace kvcrush_llama {

namespace detail {

inline void require_shared(const kvcrush::keep_view& keep, const char* what) {
  kvcrush::detail::require(keep.rows.extent(0) == 1, what, ": keep sets must be shared by all KV heads (",
                           keep.rows.extent(0), " rows given)");
}

}  // namespace detail

class quantized_store final : public kv_store {
 public:
  using kv_store::length;
  using cache_type = kvcrush::quantized_cache<kvcrush::float16>;

  quantized_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, const kvcrush::quant_config& cfg)
      : cache_(layers, kv_heads, head_dim, capacity, cfg) {}

  cache_type& cache() noexcept { return cache_; }
  const cache_type& cache() const noexcept { return cache_; }

  index_t layers() const override { return cache_.layers(); }
  index_t kv_heads() const override { return cache_.kv_heads(); }
  index_t head_dim() const override { return cache_.head_dim(); }
  index_t capacity() const override { return cache_.capacity(); }
  index_t length(index_t layer, index_t) const override { return cache_.length(layer); }
  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    contiguous_store::append_rows(cache_, layer, keys, values, position);
  }
  void for_each_run(index_t, index_t, const std::function<void(const row_run&)>&) const override {
    throw std::logic_error("quantized_store: rows are quantized; use key_scores and value_sum");
  }
  void evict(index_t layer, const kvcrush::keep_view& keep) override {
    detail::require_shared(keep, "quantized_store::evict");
    cache_.evict_tokens(layer, keep);
  }
  void clear() override {
    for (index_t l = 0; l < cache_.layers(); ++l) cache_.layer(l).clear();
  }
  kvcrush::memory_usage memory(index_t layer) const override { return cache_.memory(layer); }

  bool computes_attention() const override { return true; }
  void key_scores(index_t layer, index_t kv_head, const float* q, float* scores) const override {
    const auto& l = cache_.layer(layer);
    kvcrush::key_scores(l, kv_head, kvcrush::make_vector_view(q, l.head_dim()), kvcrush::make_vector_view(scores, l.length()));
  }
  void value_sum(index_t layer, index_t kv_head, const float* probabilities, float* out) const override {
    const auto& l = cache_.layer(layer);
    kvcrush::value_sum(l, kv_head, kvcrush::make_vector_view(probabilities, l.length()),
                       kvcrush::make_vector_view(out, l.head_dim()));
  }

 private:
  cache_type cache_;
};

class tiered_store final : public kv_store {
 public:
  using kv_store::length;
  using cache_type = kvcrush::tiered_cache<kvcrush::float16>;

  // low: the low tier's quantization (its window is ignored: R = 0).
  tiered_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, kvcrush::quant_config low)
      : cache_(layers, kv_heads, head_dim, capacity, low) {}

  // kvcrush's two-tier cache (what the eviction controller and the
  // precision demoter drive).
  cache_type& cache() noexcept { return cache_; }
  const cache_type& cache() const noexcept { return cache_; }

  index_t layers() const override { return cache_.layers(); }
  index_t kv_heads() const override { return cache_.kv_heads(); }
  index_t head_dim() const override { return cache_.head_dim(); }
  index_t capacity() const override { return cache_.capacity(); }
  index_t length(index_t layer, index_t) const override { return cache_.length(layer); }
  const kvcrush::contiguous_cache<kvcrush::float16>& high() const noexcept { return cache_.high(); }
  const kvcrush::quantized_cache<kvcrush::float16>& low() const noexcept { return cache_.low(); }
  index_t high_tokens(index_t layer) const { return cache_.high_tokens(layer); }
  index_t low_tokens(index_t layer) const { return cache_.low_tokens(layer); }
  index_t position(index_t layer, index_t u) const { return cache_.position(layer, u); }
  bool is_low(index_t layer, index_t u) const { return cache_.is_low(layer, u); }

  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    contiguous_store::append_rows(cache_, layer, keys, values, position);
  }
  void for_each_run(index_t, index_t, const std::function<void(const row_run&)>&) const override {
    throw std::logic_error("tiered_store: rows are float16 or quantized; use key_scores and value_sum");
  }
  // Eviction over union indices (shared keep set): each tier keeps its rows.
  void evict(index_t layer, const kvcrush::keep_view& keep) override {
    detail::require_shared(keep, "tiered_store::evict");
    cache_.evict_tokens(layer, keep);
  }
  // Moves the high-tier rows at union indices `rows` (ascending) to the low
  // tier (kvcrush::tiered_cache::demote).
  void demote(index_t layer, const std::vector<index_t>& rows) {
    cache_.demote(layer, kvcrush::make_vector_view<const index_t>(rows.data(), static_cast<index_t>(rows.size())));
  }
  void clear() override {
    for (index_t l = 0; l < layers(); ++l) cache_.clear(l);
  }
  kvcrush::memory_usage memory(index_t layer) const override { return cache_.memory(layer); }

  bool computes_attention() const override { return true; }
  void key_scores(index_t layer, index_t kv_head, const float* q, float* scores) const override {
    cache_.key_scores(layer, kv_head, q, scores);
  }
  void value_sum(index_t layer, index_t kv_head, const float* probabilities, float* out) const override {
    cache_.value_sum(layer, kv_head, probabilities, out);
  }

  index_t block_size() const noexcept { return 1; }
  void evict_blocks(index_t layer, kvcrush::vector_view<const index_t> blocks, index_t block_size) {
    cache_.evict_blocks(layer, blocks, block_size);
  }

 private:
  cache_type cache_;
};

}  // namespace kvcrush_llama

// The engine's quantized and mixed-precision stores: kvcrush's quantized
// layers behind the kv_store interface, for comparisons at equal bytes.
//
//   quantized_store  kvcrush::quantized_cache<float16>: KIVI group
//                    quantization (keys per channel over groups of G tokens,
//                    values per token) with a float16 window of the most
//                    recent tokens, quantized G at a time as it fills. The
//                    eviction controller drives cache() directly.
//   tiered_store     two tiers per layer: a high tier of float16 rows
//                    (kvcrush::contiguous_cache<float16>) and a low tier of
//                    quantized rows (kvcrush::quantized_cache<float16>
//                    without window: its partial last key group stays in
//                    float16). New tokens enter the high tier; demote()
//                    moves rows down. The store presents both tiers as one
//                    sequence in position order, so the eviction controller
//                    (which it serves as Cache) protects sink and recent
//                    tokens by position and its keep sets mean positions.
//                    With no demotion it is a plain float16 cache.
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

  // low: the low tier's quantization (its window is ignored: R = 0).
  tiered_store(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, kvcrush::quant_config low)
      : high_(layers, kv_heads, head_dim, capacity, kvcrush::kv_layout::head_token_dim),
        low_(layers, kv_heads, head_dim, capacity, without_window(low)), order_(static_cast<std::size_t>(layers)),
        high_to_union_(static_cast<std::size_t>(layers)), low_to_union_(static_cast<std::size_t>(layers)),
        scratch_(static_cast<std::size_t>(capacity) + 1), rows_(static_cast<std::size_t>(2 * kv_heads * capacity * head_dim)),
        positions_(static_cast<std::size_t>(capacity)) {}

  index_t layers() const override { return high_.layers(); }
  index_t kv_heads() const override { return high_.kv_heads(); }
  index_t head_dim() const override { return high_.head_dim(); }
  index_t capacity() const override { return high_.capacity(); }
  index_t length(index_t layer, index_t) const override { return high_.length(layer) + low_.length(layer); }
  const kvcrush::contiguous_cache<kvcrush::float16>& high() const noexcept { return high_; }
  const kvcrush::quantized_cache<kvcrush::float16>& low() const noexcept { return low_; }
  index_t high_tokens(index_t layer) const { return high_.length(layer); }
  index_t low_tokens(index_t layer) const { return low_.length(layer); }

  // Original position of the row at index u of the union (position order).
  index_t position(index_t layer, index_t u) const {
    const entry e = order_.at(static_cast<std::size_t>(layer)).at(static_cast<std::size_t>(u));
    return e.low ? low_.layer(layer).positions()(0, e.index) : high_.positions(layer)(0, e.index);
  }
  // Whether the row at union index u is in the low tier.
  bool is_low(index_t layer, index_t u) const {
    return order_.at(static_cast<std::size_t>(layer)).at(static_cast<std::size_t>(u)).low;
  }

  void append(index_t layer, const float* keys, const float* values, index_t position) override {
    contiguous_store::append_rows(high_, layer, keys, values, position);
    rebuild(layer);
  }
  void for_each_run(index_t, index_t, const std::function<void(const row_run&)>&) const override {
    throw std::logic_error("tiered_store: rows are float16 or quantized; use key_scores and value_sum");
  }

  // Eviction over union indices (shared keep set): each tier keeps its rows.
  void evict(index_t layer, const kvcrush::keep_view& keep) override {
    detail::require_shared(keep, "tiered_store::evict");
    kvcrush::validate_keep(keep, kv_heads(), length(layer), "tiered_store::evict");
    const auto& order = order_.at(static_cast<std::size_t>(layer));
    std::vector<index_t>& high_keep = high_keep_;
    std::vector<index_t>& low_keep = low_keep_;
    high_keep.clear();
    low_keep.clear();
    for (index_t i = 0; i < keep.count(0); ++i) {
      const entry e = order[static_cast<std::size_t>(keep.at(0, i))];
      (e.low ? low_keep : high_keep).push_back(e.index);
    }
    // High rows are in position order; low rows in the order they were
    // demoted, which need not be.
    std::sort(low_keep.begin(), low_keep.end());
    high_.evict_tokens(layer, kvcrush::keep_view::shared(high_keep.data(), static_cast<index_t>(high_keep.size())));
    low_.evict_tokens(layer, kvcrush::keep_view::shared(low_keep.data(), static_cast<index_t>(low_keep.size())));
    rebuild(layer);
  }

  // Moves the high-tier rows at union indices `rows` (ascending) to the low
  // tier, where they are quantized as groups fill.
  void demote(index_t layer, const std::vector<index_t>& rows) {
    using kvcrush::detail::require;
    const auto& order = order_.at(static_cast<std::size_t>(layer));
    const index_t heads = kv_heads(), d = head_dim(), n = static_cast<index_t>(rows.size());
    if (n == 0) return;
    require(low_.length(layer) + n <= low_.capacity(), "tiered_store::demote: the low tier is full");
    const auto k = high_.keys(layer);
    const auto v = high_.values(layer);
    kvcrush::float16* keys = rows_.data();
    kvcrush::float16* values = rows_.data() + heads * n * d;
    demoted_.assign(static_cast<std::size_t>(high_.length(layer)), false);
    for (index_t i = 0; i < n; ++i) {
      const index_t u = rows[static_cast<std::size_t>(i)];
      require(u >= 0 && u < static_cast<index_t>(order.size()) && !order[static_cast<std::size_t>(u)].low &&
                  (i == 0 || u > rows[static_cast<std::size_t>(i - 1)]),
              "tiered_store::demote: row ", u, " is not an ascending high-tier row");
      const index_t t = order[static_cast<std::size_t>(u)].index;
      demoted_[static_cast<std::size_t>(t)] = true;
      positions_[static_cast<std::size_t>(i)] = high_.positions(layer)(0, t);
      for (index_t h = 0; h < heads; ++h) {
        std::copy(k.row(h, t), k.row(h, t) + d, keys + (h * n + i) * d);
        std::copy(v.row(h, t), v.row(h, t) + d, values + (h * n + i) * d);
      }
    }
    low_.append(layer, kvcrush::make_head_token_dim<const kvcrush::float16>(keys, heads, n, d),
                kvcrush::make_head_token_dim<const kvcrush::float16>(values, heads, n, d),
                kvcrush::make_vector_view<const index_t>(positions_.data(), n));
    high_keep_.clear();
    for (index_t t = 0; t < high_.length(layer); ++t)
      if (!demoted_[static_cast<std::size_t>(t)]) high_keep_.push_back(t);
    high_.evict_tokens(layer, kvcrush::keep_view::shared(high_keep_.data(), static_cast<index_t>(high_keep_.size())));
    rebuild(layer);
  }

  void clear() override {
    for (index_t l = 0; l < layers(); ++l) {
      high_.clear(l);
      low_.layer(l).clear();
      rebuild(l);
    }
  }
  kvcrush::memory_usage memory(index_t layer) const override {
    return kvcrush::plain_memory<kvcrush::float16>(kv_heads(), high_.length(layer), head_dim()) + low_.memory(layer);
  }

  bool computes_attention() const override { return true; }
  void key_scores(index_t layer, index_t kv_head, const float* q, float* scores) const override {
    const auto& low = low_.layer(layer);
    const auto& to_union = low_to_union_[static_cast<std::size_t>(layer)];
    if (low.length() > 0) {
      kvcrush::key_scores(low, kv_head, kvcrush::make_vector_view(q, head_dim()),
                          kvcrush::make_vector_view(scratch_.data(), low.length()));
      for (index_t j = 0; j < low.length(); ++j) scores[to_union[static_cast<std::size_t>(j)]] = scratch_[static_cast<std::size_t>(j)];
    }
    const auto k = high_.keys(layer);
    const auto& high_union = high_to_union_[static_cast<std::size_t>(layer)];
    for (index_t i = 0; i < k.tokens(); ++i) {
      const kvcrush::float16* row = k.row(kv_head, i);
      float s = 0.0f;
      for (index_t j = 0; j < head_dim(); ++j) s += q[j] * kvcrush::to_float(row[j]);
      scores[high_union[static_cast<std::size_t>(i)]] = s;
    }
  }
  void value_sum(index_t layer, index_t kv_head, const float* probabilities, float* out) const override {
    const auto& low = low_.layer(layer);
    const index_t d = head_dim();
    std::fill(out, out + d, 0.0f);
    if (low.length() > 0) {
      const auto& to_union = low_to_union_[static_cast<std::size_t>(layer)];
      for (index_t j = 0; j < low.length(); ++j) scratch_[static_cast<std::size_t>(j)] = probabilities[to_union[static_cast<std::size_t>(j)]];
      kvcrush::value_sum(low, kv_head, kvcrush::make_vector_view<const float>(scratch_.data(), low.length()),
                         kvcrush::make_vector_view(out, d));
    }
    const auto v = high_.values(layer);
    const auto& high_union = high_to_union_[static_cast<std::size_t>(layer)];
    for (index_t i = 0; i < v.tokens(); ++i) {
      const kvcrush::float16* row = v.row(kv_head, i);
      const float p = probabilities[high_union[static_cast<std::size_t>(i)]];
      for (index_t j = 0; j < d; ++j) out[j] += p * kvcrush::to_float(row[j]);
    }
  }

  // The Cache interface of kvcrush::eviction_controller.
  index_t block_size() const noexcept { return 1; }
  void evict_tokens(index_t layer, const kvcrush::keep_view& keep) { evict(layer, keep); }
  void evict_blocks(index_t, kvcrush::vector_view<const index_t>, index_t) {
    throw std::invalid_argument("tiered_store: block eviction is not supported (select tokens)");
  }

 private:
  struct entry {
    bool low = false;
    index_t index = 0;
  };

  static kvcrush::quant_config without_window(kvcrush::quant_config cfg) {
    cfg.window = 0;
    return cfg;
  }

  // The union in position order, and each tier's row -> union index.
  void rebuild(index_t layer) {
    const auto l = static_cast<std::size_t>(layer);
    auto& order = order_[l];
    order.clear();
    const index_t hn = high_.length(layer), ln = low_.length(layer);
    for (index_t i = 0; i < hn; ++i) order.push_back({false, i});
    for (index_t j = 0; j < ln; ++j) order.push_back({true, j});
    const auto high_positions = high_.positions(layer);
    const auto low_positions = low_.layer(layer).positions();
    std::sort(order.begin(), order.end(), [&](const entry& a, const entry& b) {
      const index_t pa = a.low ? low_positions(0, a.index) : high_positions(0, a.index);
      const index_t pb = b.low ? low_positions(0, b.index) : high_positions(0, b.index);
      return pa < pb;
    });
    high_to_union_[l].assign(static_cast<std::size_t>(hn), 0);
    low_to_union_[l].assign(static_cast<std::size_t>(ln), 0);
    for (std::size_t u = 0; u < order.size(); ++u) {
      (order[u].low ? low_to_union_[l] : high_to_union_[l])[static_cast<std::size_t>(order[u].index)] = static_cast<index_t>(u);
    }
  }

  kvcrush::contiguous_cache<kvcrush::float16> high_;
  kvcrush::quantized_cache<kvcrush::float16> low_;
  std::vector<std::vector<entry>> order_;
  std::vector<std::vector<index_t>> high_to_union_, low_to_union_;
  mutable std::vector<float> scratch_;
  std::vector<kvcrush::float16> rows_;
  std::vector<index_t> positions_, high_keep_, low_keep_;
  std::vector<bool> demoted_;
};

}  // namespace kvcrush_llama

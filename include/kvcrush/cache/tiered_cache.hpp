// A two-tier cache for decode-time mixed precision: per layer, a high tier
// of full-precision rows (contiguous_cache<W>, [head][token][dim]) and a low
// tier of quantized rows (quantized_cache<W> without window, R = 0: its
// partial last key group stays at full precision until the group fills).
//
// New tokens enter the high tier. demote() moves high-tier tokens down to
// the low tier, where they are appended in the order given (so the low
// tier's groups are formed in demotion order, and the demoted rows' values
// are exactly what quantized_cache makes of those rows appended in that
// order). Precision only goes down: a low-tier token is never promoted, and
// demoting it again is refused.
//
// The two tiers are presented as one sequence in position order (the
// "union"): length(layer), evict_tokens() and the attention helpers index
// it that way, so eviction_controller<tiered_cache<W>> protects sink and
// recent tokens by position and its keep sets mean positions. Keep sets
// must be shared by all KV heads (every head holds the same tokens).
// precision_demoter.hpp chooses, from the controller's tracked scores,
// which tokens to demote.
//
// No allocation after construction: every buffer is sized for `capacity`.
// Layers are independent, except that the attention helpers share scratch:
// drive one cache from one thread.
#pragma once

#include <algorithm>
#include <vector>

#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/cache.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

template <class W = float16>
class tiered_cache {
 public:
  using storage_type = W;

  // low: the low tier's quantization (its window is ignored: R = 0).
  tiered_cache(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, quant_config low)
      : high_(layers, kv_heads, head_dim, capacity, kv_layout::head_token_dim),
        low_(layers, kv_heads, head_dim, capacity, without_window(low)), maps_(static_cast<std::size_t>(layers)) {
    const auto n = static_cast<std::size_t>(capacity);
    for (auto& m : maps_) {
      m.low_of_union.assign(n, -1);
      m.index_of_union.assign(n, 0);
      m.union_of_high.assign(n, 0);
      m.union_of_low.assign(n, 0);
    }
    low_order_.assign(n, 0);
    high_keep_.assign(n, 0);
    low_keep_.assign(n, 0);
    moved_.assign(n, 0);
    positions_.assign(n, 0);
    rows_.assign(static_cast<std::size_t>(2 * kv_heads * capacity * head_dim), W{});
    scratch_.assign(n + 1, 0.0f);
  }

  index_t layers() const noexcept { return high_.layers(); }
  index_t kv_heads() const noexcept { return high_.kv_heads(); }
  index_t head_dim() const noexcept { return high_.head_dim(); }
  index_t capacity() const noexcept { return high_.capacity(); }
  index_t block_size() const noexcept { return 1; }
  // Tokens of the layer in both tiers.
  index_t length(index_t layer) const { return high_.length(layer) + low_.length(layer); }
  index_t high_tokens(index_t layer) const { return high_.length(layer); }
  index_t low_tokens(index_t layer) const { return low_.length(layer); }
  const contiguous_cache<W>& high() const noexcept { return high_; }
  const quantized_cache<W>& low() const noexcept { return low_; }

  // Whether the token at union index u is in the low tier, and its index
  // in its tier.
  bool is_low(index_t layer, index_t u) const { return map(layer).low_of_union[checked(layer, u)] != 0; }
  index_t tier_index(index_t layer, index_t u) const { return map(layer).index_of_union[checked(layer, u)]; }
  // Original position of the token at union index u.
  index_t position(index_t layer, index_t u) const {
    const index_t i = tier_index(layer, u);
    return is_low(layer, u) ? low_.layer(layer).positions()(0, i) : high_.positions(layer)(0, i);
  }

  // Appends tokens to the high tier (keys/values (kv_heads, n, head_dim)),
  // with positions as contiguous_cache::append. Positions must keep
  // increasing for the union to stay in position order.
  template <class U>
  void append(index_t layer, kv_view<const U> keys, kv_view<const U> values,
              vector_view<const index_t> positions = {}) {
    high_.append(layer, keys, values, positions);
    rebuild(layer);
  }
  template <class U>
  void append(index_t layer, kv_view<U> keys, kv_view<U> values, vector_view<const index_t> positions = {}) {
    append(layer, kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  // Eviction over union indices (a shared keep set): each tier keeps its
  // own tokens, in its own order.
  void evict_tokens(index_t layer, const keep_view& keep) {
    kvcrush::detail::require(keep.row_count() == 1, "tiered_cache::evict_tokens: keep sets must be shared by all "
                             "KV heads (", keep.row_count(), " rows given)");
    validate_keep(keep, kv_heads(), length(layer), "tiered_cache::evict_tokens");
    const layer_map& m = map(layer);
    index_t high_count = 0, low_count = 0;
    for (index_t i = 0; i < keep.count(0); ++i) {
      const auto u = static_cast<std::size_t>(keep.at(0, i));
      if (m.low_of_union[u]) {
        low_keep_[static_cast<std::size_t>(low_count++)] = m.index_of_union[u];
      } else {
        high_keep_[static_cast<std::size_t>(high_count++)] = m.index_of_union[u];
      }
    }
    // The low tier is in demotion order, not position order.
    std::sort(low_keep_.begin(), low_keep_.begin() + low_count);
    high_.evict_tokens(layer, keep_view::shared(high_keep_.data(), high_count));
    low_.evict_tokens(layer, keep_view::shared(low_keep_.data(), low_count));
    rebuild(layer);
  }
  void evict_blocks(index_t, vector_view<const index_t>, index_t) {
    kvcrush::detail::throw_invalid("tiered_cache: block eviction is not supported (select tokens)");
  }

  // Moves the high-tier tokens at union indices `rows` (strictly
  // increasing) to the low tier, appended there in that order. Every index
  // is checked (in range, a high-tier token, increasing) and the low tier's
  // room too before anything moves.
  void demote(index_t layer, vector_view<const index_t> rows) {
    using kvcrush::detail::require;
    const layer_map& m = map(layer);
    const index_t n = rows.extent(0), total = length(layer);
    for (index_t i = 0; i < n; ++i) {
      const index_t u = rows[i];
      require(u >= 0 && u < total, "tiered_cache::demote: union index ", u, " outside the layer's ", total, " tokens");
      const index_t previous = i == 0 ? -1 : rows[i - 1];
      require(u > previous, "tiered_cache::demote: indices must be strictly increasing (", previous, " then ", u, ")");
      if (m.low_of_union[static_cast<std::size_t>(u)]) {
        kvcrush::detail::throw_invalid("tiered_cache::demote: token ", u, " (position ", position(layer, u),
                                       ") is already in the low tier; precision only goes down once");
      }
    }
    require(low_.length(layer) + n <= low_.capacity(), "tiered_cache::demote: the low tier holds ",
            low_.length(layer), " of ", low_.capacity(), " tokens, no room for ", n, " more");
    if (n == 0) return;
    const index_t heads = kv_heads(), d = head_dim();
    const auto k = high_.keys(layer), v = high_.values(layer);
    const auto high_positions = high_.positions(layer);
    W* keys = rows_.data();
    W* values = rows_.data() + heads * n * d;
    std::fill(moved_.begin(), moved_.begin() + high_.length(layer), 0);
    for (index_t i = 0; i < n; ++i) {
      const index_t t = m.index_of_union[static_cast<std::size_t>(rows[i])];
      moved_[static_cast<std::size_t>(t)] = 1;
      positions_[static_cast<std::size_t>(i)] = high_positions(0, t);
      for (index_t h = 0; h < heads; ++h) {
        std::copy(k.row(h, t), k.row(h, t) + d, keys + (h * n + i) * d);
        std::copy(v.row(h, t), v.row(h, t) + d, values + (h * n + i) * d);
      }
    }
    low_.append(layer, make_head_token_dim<const W>(keys, heads, n, d), make_head_token_dim<const W>(values, heads, n, d),
                make_vector_view<const index_t>(positions_.data(), n));
    index_t kept = 0;
    for (index_t t = 0; t < high_.length(layer); ++t) {
      if (!moved_[static_cast<std::size_t>(t)]) high_keep_[static_cast<std::size_t>(kept++)] = t;
    }
    high_.evict_tokens(layer, keep_view::shared(high_keep_.data(), kept));
    rebuild(layer);
  }

  void clear(index_t layer) {
    high_.clear(layer);
    low_.layer(layer).clear();
    rebuild(layer);
  }

  // Bytes held by one layer: the high tier's rows plus the low tier's codes,
  // parameters and full-precision rows.
  memory_usage memory(index_t layer) const {
    return plain_memory<W>(kv_heads(), high_.length(layer), head_dim()) + low_.memory(layer);
  }

  // scores[u] = q . k_u for every token of one KV head, in union order:
  // the low tier's through quant/attention.hpp, the high tier's as a float
  // sum in dimension order.
  void key_scores(index_t layer, index_t head, const float* q, float* scores) const {
    const quantized_layer<W>& low = low_.layer(layer);
    const layer_map& m = map(layer);
    const index_t d = head_dim();
    if (low.length() > 0) {
      kvcrush::key_scores(low, head, make_vector_view(q, d), make_vector_view(scratch_.data(), low.length()));
      for (index_t j = 0; j < low.length(); ++j) {
        scores[m.union_of_low[static_cast<std::size_t>(j)]] = scratch_[static_cast<std::size_t>(j)];
      }
    }
    const auto k = high_.keys(layer);
    for (index_t i = 0; i < k.tokens(); ++i) {
      const W* row = k.row(head, i);
      float s = 0.0f;
      for (index_t c = 0; c < d; ++c) s += q[c] * to_float(row[c]);
      scores[m.union_of_high[static_cast<std::size_t>(i)]] = s;
    }
  }
  // out[c] = sum_u probabilities[u] * v_u[c] over one KV head's tokens
  // (union order of probabilities): the low tier's sum first, then the high
  // tier's rows added in their order.
  void value_sum(index_t layer, index_t head, const float* probabilities, float* out) const {
    const quantized_layer<W>& low = low_.layer(layer);
    const layer_map& m = map(layer);
    const index_t d = head_dim();
    std::fill(out, out + d, 0.0f);
    if (low.length() > 0) {
      for (index_t j = 0; j < low.length(); ++j) {
        scratch_[static_cast<std::size_t>(j)] = probabilities[m.union_of_low[static_cast<std::size_t>(j)]];
      }
      kvcrush::value_sum(low, head, make_vector_view<const float>(scratch_.data(), low.length()),
                         make_vector_view(out, d));
    }
    const auto v = high_.values(layer);
    for (index_t i = 0; i < v.tokens(); ++i) {
      const W* row = v.row(head, i);
      const float p = probabilities[m.union_of_high[static_cast<std::size_t>(i)]];
      for (index_t c = 0; c < d; ++c) out[c] += p * to_float(row[c]);
    }
  }

 private:
  // Union index u <-> (tier, index in the tier).
  struct layer_map {
    std::vector<index_t> low_of_union, index_of_union, union_of_high, union_of_low;
  };

  static quant_config without_window(quant_config cfg) {
    cfg.window = 0;
    return cfg;
  }

  const layer_map& map(index_t layer) const {
    kvcrush::detail::require(layer >= 0 && layer < layers(), "tiered_cache: layer ", layer, " out of range [0, ",
                             layers(), ")");
    return maps_[static_cast<std::size_t>(layer)];
  }
  std::size_t checked(index_t layer, index_t u) const {
    kvcrush::detail::require(u >= 0 && u < length(layer), "tiered_cache: union index ", u, " outside the layer's ",
                             length(layer), " tokens");
    return static_cast<std::size_t>(u);
  }

  // Merges the high tier (in position order) with the low tier (sorted by
  // position here) into the union.
  void rebuild(index_t layer) {
    layer_map& m = maps_[static_cast<std::size_t>(layer)];
    const index_t hn = high_.length(layer), ln = low_.length(layer);
    const auto high_positions = high_.positions(layer);
    const auto low_positions = low_.layer(layer).positions();
    for (index_t j = 0; j < ln; ++j) low_order_[static_cast<std::size_t>(j)] = j;
    std::sort(low_order_.begin(), low_order_.begin() + ln,
              [&](index_t a, index_t b) { return low_positions(0, a) < low_positions(0, b); });
    index_t i = 0, j = 0;
    for (index_t u = 0; u < hn + ln; ++u) {
      const auto slot = static_cast<std::size_t>(u);
      const bool take_low =
          j < ln && (i == hn || low_positions(0, low_order_[static_cast<std::size_t>(j)]) < high_positions(0, i));
      if (take_low) {
        const index_t t = low_order_[static_cast<std::size_t>(j++)];
        m.low_of_union[slot] = 1;
        m.index_of_union[slot] = t;
        m.union_of_low[static_cast<std::size_t>(t)] = u;
      } else {
        m.low_of_union[slot] = 0;
        m.index_of_union[slot] = i;
        m.union_of_high[static_cast<std::size_t>(i++)] = u;
      }
    }
  }

  contiguous_cache<W> high_;
  quantized_cache<W> low_;
  std::vector<layer_map> maps_;
  std::vector<index_t> low_order_, high_keep_, low_keep_, moved_, positions_;
  std::vector<W> rows_;
  mutable std::vector<float> scratch_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

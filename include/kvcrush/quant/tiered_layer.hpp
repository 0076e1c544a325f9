// A mixed-precision layer: the tokens of a high tier at full precision (W)
// and those of a low tier in a quantized_layer without window (R = 0; its
// partial last key group stays at full precision), built once from a
// layer's rows and the two keep sets of select_mixed_precision. Attention
// runs over both tiers with one softmax; memory() is exactly the plan's
// bytes when the tier costs were full_precision_cost<W> and
// quantized_cost<W> of the same configuration.
//
// One-shot (prefill-time) compression: the layer does not grow or evict.
#pragma once

#include <cmath>
#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/quant/quant_scratch.hpp"
#include "kvcrush/simd/quant_dot.hpp"
#include "kvcrush/simd/softmax.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

template <class W = float16>
class tiered_layer {
 public:
  using window_type = W;

  // keys/values: the layer's rows (heads, tokens, head_dim). high / low:
  // keep sets over those tokens (shared or one uniform row per head),
  // disjoint. cfg: the low tier's quantization (its window is ignored).
  template <class Isa = isa::active, class U>
  static tiered_layer build(kv_view<const U> keys, kv_view<const U> values, const keep_view& high,
                            const keep_view& low, const quant_config& cfg) {
    using kvcrush::detail::require;
    const index_t heads = keys.heads(), d = keys.head_dim(), n = keys.tokens();
    require(values.heads() == heads && values.head_dim() == d && values.tokens() == n,
            "tiered_layer: keys and values differ in shape");
    validate_keep(high, heads, n, "tiered_layer (high tier)");
    validate_keep(low, heads, n, "tiered_layer (low tier)");
    require(keep_is_uniform(high) && keep_is_uniform(low), "tiered_layer: every head needs the same tier sizes");
    for (index_t h = 0; h < heads; ++h) {
      const index_t a = high.row_of_head(h), b = low.row_of_head(h);
      index_t i = 0, j = 0;
      while (i < high.count(a) && j < low.count(b)) {
        require(high.at(a, i) != low.at(b, j), "tiered_layer: token ", high.at(a, i), " of head ", h,
                " is in both tiers");
        high.at(a, i) < low.at(b, j) ? ++i : ++j;
      }
    }
    quant_config low_cfg = cfg;
    low_cfg.window = 0;
    const index_t hn = high.count(0), ln = low.count(0);
    tiered_layer out(heads, d, hn, ln, low_cfg);
    // High tier: a copy of the chosen rows.
    for (index_t h = 0; h < heads; ++h) {
      const index_t r = high.row_of_head(h);
      for (index_t i = 0; i < hn; ++i) {
        const index_t t = high.at(r, i);
        copy_row(keys.row(h, t), out.high_row(out.high_keys_, h, i), d);
        copy_row(values.row(h, t), out.high_row(out.high_values_, h, i), d);
        out.high_positions_[static_cast<std::size_t>(h * hn + i)] = t;
      }
    }
    // Low tier: the chosen rows gathered per head, then quantized.
    std::vector<U> gathered_keys(static_cast<std::size_t>(heads * ln * d)), gathered_values(gathered_keys.size());
    std::vector<index_t> positions(static_cast<std::size_t>(heads * ln));
    for (index_t h = 0; h < heads; ++h) {
      const index_t r = low.row_of_head(h);
      for (index_t i = 0; i < ln; ++i) {
        const index_t t = low.at(r, i);
        copy_row(keys.row(h, t), gathered_keys.data() + (h * ln + i) * d, d);
        copy_row(values.row(h, t), gathered_values.data() + (h * ln + i) * d, d);
        positions[static_cast<std::size_t>(h * ln + i)] = t;
      }
    }
    out.low_.template append<Isa>(make_head_token_dim<const U>(gathered_keys.data(), heads, ln, d),
                                  make_head_token_dim<const U>(gathered_values.data(), heads, ln, d),
                                  make_matrix_view<const index_t>(positions.data(), heads, ln));
    return out;
  }
  template <class Isa = isa::active, class U>
  static tiered_layer build(kv_view<U> keys, kv_view<U> values, const keep_view& high, const keep_view& low,
                            const quant_config& cfg) {
    return build<Isa>(kv_view<const U>(keys), kv_view<const U>(values), high, low, cfg);
  }

  index_t kv_heads() const noexcept { return heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t high_tokens() const noexcept { return high_count_; }
  index_t low_tokens() const noexcept { return low_.length(); }
  index_t length() const noexcept { return high_count_ + low_.length(); }
  const quantized_layer<W>& low() const noexcept { return low_; }

  // Original positions of the high tier's tokens, (kv_heads, high_tokens);
  // the low tier's are low().positions().
  matrix_view<const index_t> high_positions() const {
    return make_matrix_view<const index_t>(high_positions_.data(), heads_, high_count_);
  }
  row_span<W> high_key_span(index_t head) const { return {high_row(high_keys_, head, 0), head_dim_, high_count_, head_dim_}; }
  row_span<W> high_value_span(index_t head) const {
    return {high_row(high_values_, head, 0), head_dim_, high_count_, head_dim_};
  }

  memory_usage memory() const noexcept { return plain_memory<W>(heads_, high_count_, head_dim_) + low_.memory(); }

  // Softmax attention of Hq query heads over both tiers (one softmax; the
  // low tier's scores first, then the high tier's). Scratch from ws.
  template <class Isa = isa::active>
  void attend(matrix_view<const float> queries, matrix_view<float> out, quant_scratch& ws, float scale = 0.0f) const {
    impl::require_attention_shapes(queries, out, heads_, head_dim_, "tiered_layer::attend");
    const index_t hq = queries.extent(0), per_kv = hq / heads_, n = length(), ln = low_.length();
    if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
    float* probs = ws.probabilities(static_cast<std::size_t>(n) + 1);
    for (index_t i = 0; i < hq; ++i) {
      const index_t head = i / per_kv;
      const float* q = &queries(i, 0);
      float* row = &out(i, 0);
      if (n == 0) {
        for (index_t c = 0; c < head_dim_; ++c) row[c] = 0.0f;
        continue;
      }
      const bool half = low_.config().params == param_format::float16;
      half ? impl::quant_key_scores<Isa, float16>(low_, head, q, probs) : impl::quant_key_scores<Isa, float>(low_, head, q, probs);
      simd::quant_dot_kernel<Isa>::row_scores(high_key_span(head), q, probs + ln);
      simd::softmax_in_place(probs, n, scale);
      half ? impl::quant_value_sum<Isa, float16>(low_, head, probs, row) : impl::quant_value_sum<Isa, float>(low_, head, probs, row);
      simd::quant_dot_kernel<Isa>::row_accumulate(high_value_span(head), probs + ln, row);
    }
  }

 private:
  tiered_layer(index_t heads, index_t head_dim, index_t high, index_t low, const quant_config& low_cfg)
      : heads_(heads), head_dim_(head_dim), high_count_(high), low_(heads, head_dim, low, low_cfg) {
    const auto rows = static_cast<std::size_t>(heads * high);
    high_keys_.assign(rows * static_cast<std::size_t>(head_dim), W{});
    high_values_.assign(high_keys_.size(), W{});
    high_positions_.assign(rows, 0);
  }

  W* high_row(std::vector<W>& rows, index_t h, index_t i) noexcept {
    return rows.data() + static_cast<std::size_t>((h * high_count_ + i) * head_dim_);
  }
  const W* high_row(const std::vector<W>& rows, index_t h, index_t i) const noexcept {
    return rows.data() + static_cast<std::size_t>((h * high_count_ + i) * head_dim_);
  }

  index_t heads_, head_dim_, high_count_;
  std::vector<W> high_keys_, high_values_;  // [head][token][dim]
  std::vector<index_t> high_positions_;     // [head][token]
  quantized_layer<W> low_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

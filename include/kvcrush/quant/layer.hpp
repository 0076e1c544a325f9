// One layer of a group-quantized key/value cache (KIVI arrangement, see
// quant_config.hpp), with a full-precision window of recent tokens and
// eviction.
//
// Per KV head the cached tokens are, in position order,
//   [ quantized groups: groups(h) * G tokens ][ window: window_tokens(h) ]
// with window_tokens(h) < R + G after every call: appending tokens fills
// the window and, whenever it reaches R + G tokens, its oldest G tokens
// become one key group (per channel over those G tokens) and G value rows
// (per token). Float tokens that go straight past the window (a long
// prefill) are quantized from the caller's rows without passing through W;
// with a float16 window, tokens quantized after a stay in it carry its
// rounding (2^-11 relative, far below any code step).
//
// Eviction keeps groups aligned:
//   evict_blocks(blocks, b) with b a multiple of G (SPEC 4.4 block mode,
//     e.g. select_keep with block_size = G, or block_size = G in a
//     policy_config) moves whole groups: no code changes, no added error.
//   evict_tokens(keep) is token-granular: the kept quantized tokens are
//     regrouped G at a time in position order. A new group that is exactly
//     an old group is moved as is; any other is requantized from the
//     dequantized survivors (values are per token, so value rows are only
//     moved, never requantized). The last nq mod G kept quantized tokens
//     cannot form a group: they are dequantized into the front of the
//     window. requantization() reports what this cost (groups requantized,
//     tokens dequantized, the largest change of a key element).
//   evict_blocks with b not a multiple of G takes the token path.
// Heads evict independently (shared or uniform per-head keep sets), so
// heads may hold different numbers of groups; every head holds length()
// tokens. Ragged (head-wise) keep sets are refused.
//
// Memory is allocated once, in the constructor, for `capacity` tokens per
// head; append / evict / reads never allocate. Every call checks its
// arguments (shapes, capacity, keep sets, finite values within the range
// the parameters can represent: |x| <= 65504 with float16 parameters or a
// float16 window, |x| <= 2^100 otherwise) before it changes anything.
//
// The quantization kernels run for the ISA given as template argument
// (isa::active by default); every ISA writes the same bytes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant_config.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/quant_params.hpp"
#include "kvcrush/quant_spans.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/simd/quant_encode.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// What token-level eviction cost in precision, accumulated over the
// layer's life.
struct requantization_stats {
  index_t groups = 0;               // key groups quantized again from dequantized survivors
  index_t dequantized_tokens = 0;   // quantized tokens moved back into the window (partial groups)
  float max_abs_change = 0.0f;      // largest |dequant before - dequant after| of a requantized key element
  float max_change_over_bound = 0.0f;  // that change over the new group's error bound (<= 1)
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class T>
constexpr float largest_storable() noexcept {
  return std::is_same_v<std::remove_cv_t<T>, float16> ? 65504.0f : 0x1p100f;
}

// The largest magnitude a quantized store accepts: what float16
// parameters, and a float16 window W, can represent; 2^100 otherwise (far
// from any overflow in ranges, scales and dequantization).
template <class W>
float quantizable_limit(param_format params) noexcept {
  const float p = params == param_format::float16 ? 65504.0f : 0x1p100f;
  return p < largest_storable<W>() ? p : largest_storable<W>();
}

// Throws unless every element is finite with |x| <= limit.
template <class U>
void check_quantizable(const kv_view<const U>& rows, float limit, const char* where, const char* what) {
  for (index_t h = 0; h < rows.heads(); ++h) {
    for (index_t t = 0; t < rows.tokens(); ++t) {
      const U* row = rows.row(h, t);
      bool ok = true;
      for (index_t c = 0; c < rows.head_dim(); ++c) ok &= std::fabs(to_float(row[c])) <= limit;  // false for NaN
      if (!ok) {
        kvcrush::detail::throw_invalid(where, ": ", what, " of head ", h, ", token ", t,
                                       " hold a NaN, an infinity or a value beyond +-", limit,
                                       " (the largest the parameters and the full-precision rows can hold)");
      }
    }
  }
}

}  // namespace impl

template <class W = float16>
class quantized_layer {
  static_assert(is_storage_type_v<W> && !std::is_const_v<W>, "the window stores float, float16 or bfloat16");

 public:
  using window_type = W;

  quantized_layer(index_t kv_heads, index_t head_dim, index_t capacity, const quant_config& cfg)
      : cfg_(cfg), layout_(quant_layout::make(cfg, head_dim)), heads_(kv_heads), capacity_(capacity) {
    using kvcrush::detail::require;
    require(kv_heads >= 1, "quantized_layer: kv_heads must be >= 1 (got ", kv_heads, ")");
    require(capacity >= 0, "quantized_layer: capacity must be >= 0 (got ", capacity, ")");
    const index_t g = cfg.group_size;
    max_groups_ = capacity / g;
    window_capacity_ = std::min(capacity, cfg.window + 2 * g);
    const auto h = static_cast<std::size_t>(kv_heads);
    const auto d = static_cast<std::size_t>(head_dim);
    const auto groups = static_cast<std::size_t>(max_groups_);
    const std::size_t rows = groups * static_cast<std::size_t>(g);
    key_codes_.assign(h * groups * layout_.key_group_code_bytes, 0);
    value_codes_.assign(h * rows * layout_.value_row_bytes, 0);
    const std::size_t key_params = h * groups * d;
    const std::size_t value_params = h * rows * static_cast<std::size_t>(layout_.value_groups);
    if (cfg.params == param_format::float16) {
      for (int r = 0; r < 4; ++r) params16_[r].assign(r < 2 ? key_params : value_params, float16{});
    } else {
      for (int r = 0; r < 4; ++r) params32_[r].assign(r < 2 ? key_params : value_params, 0.0f);
    }
    window_keys_.assign(h * static_cast<std::size_t>(window_capacity_) * d, W{});
    window_values_.assign(window_keys_.size(), W{});
    positions_.assign(h * static_cast<std::size_t>(capacity), 0);
    groups_.assign(h, 0);
    window_.assign(h, 0);
    scratch_.assign(3 * static_cast<std::size_t>(g) * d, 0.0f);
    keep_scratch_.assign(static_cast<std::size_t>(capacity), 0);
  }

  // ---- shape -----------------------------------------------------------

  const quant_config& config() const noexcept { return cfg_; }
  const quant_layout& layout() const noexcept { return layout_; }
  index_t kv_heads() const noexcept { return heads_; }
  index_t head_dim() const noexcept { return layout_.head_dim; }
  index_t group_size() const noexcept { return cfg_.group_size; }
  index_t capacity() const noexcept { return capacity_; }
  index_t length() const noexcept { return length_; }
  // Tokens ever appended (the next default position).
  index_t appended() const noexcept { return appended_; }
  index_t groups(index_t head) const { return groups_[checked_head(head)]; }
  index_t quantized_tokens(index_t head) const { return groups(head) * cfg_.group_size; }
  index_t window_tokens(index_t head) const { return window_[checked_head(head)]; }

  // Original positions, (kv_heads, length).
  matrix_view<const index_t> positions() const {
    return make_matrix_view<const index_t>(positions_.data(), heads_, length_, capacity_);
  }

  const requantization_stats& requantization() const noexcept { return stats_; }

  // ---- memory ----------------------------------------------------------

  // Bytes held now (see quant/memory.hpp for what is counted).
  memory_usage memory() const noexcept {
    memory_usage m;
    for (index_t h = 0; h < heads_; ++h) {
      m += quantized_memory<W>(layout_, groups_[static_cast<std::size_t>(h)], window_[static_cast<std::size_t>(h)]);
    }
    return m;
  }

  // Bytes allocated for the capacity (storage, positions and scratch).
  std::size_t bytes_reserved() const noexcept {
    std::size_t bytes = key_codes_.size() + value_codes_.size();
    for (int r = 0; r < 4; ++r) bytes += params16_[r].size() * sizeof(float16) + params32_[r].size() * sizeof(float);
    bytes += (window_keys_.size() + window_values_.size()) * sizeof(W);
    bytes += (positions_.size() + keep_scratch_.size()) * sizeof(index_t) + scratch_.size() * sizeof(float);
    return bytes;
  }

  // ---- writing ---------------------------------------------------------

  // Appends keys.tokens() tokens (K and V rows of every KV head, any layout
  // and storage) at the end. positions: their original positions (default:
  // continuing the count of appended tokens).
  template <class Isa = isa::active, class U>
  void append(kv_view<const U> keys, kv_view<const U> values, vector_view<const index_t> positions = {}) {
    append<Isa>(keys, values,
                matrix_view<const index_t>(positions.data(), {positions.extent(0) ? 1 : 0, positions.extent(0)},
                                           {0, positions.stride(0)}));
  }
  template <class Isa = isa::active, class U>
  void append(kv_view<U> keys, kv_view<U> values, vector_view<const index_t> positions = {}) {
    append<Isa>(kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  // The same with positions per head: (kv_heads, tokens), or (1, tokens)
  // for all heads, or empty.
  template <class Isa = isa::active, class U>
  void append(kv_view<const U> keys, kv_view<const U> values, matrix_view<const index_t> positions) {
    using kvcrush::detail::require;
    const index_t d = head_dim();
    require(keys.heads() == heads_ && keys.head_dim() == d, "quantized_layer::append: keys are (", keys.heads(),
            " heads, ", keys.head_dim(), " dims), the layer holds (", heads_, ", ", d, ")");
    require(values.heads() == heads_ && values.head_dim() == d && values.tokens() == keys.tokens(),
            "quantized_layer::append: values are (", values.heads(), " heads, ", values.tokens(), " tokens, ",
            values.head_dim(), " dims), keys (", heads_, ", ", keys.tokens(), ", ", d, ")");
    const index_t n = keys.tokens();
    require(length_ + n <= capacity_, "quantized_layer::append: the layer holds ", length_, " of ", capacity_,
            " tokens, no room for ", n, " more");
    require(positions.extent(0) == 0 ||
                ((positions.extent(0) == 1 || positions.extent(0) == heads_) && positions.extent(1) == n),
            "quantized_layer::append: positions are (", positions.extent(0), ", ", positions.extent(1), "), need (1 or ",
            heads_, ", ", n, ")");
    check_rows(keys, "keys");
    check_rows(values, "values");
    if (cfg_.params == param_format::float16) {
      append_rows<Isa, float16>(keys, values, positions);
    } else {
      append_rows<Isa, float>(keys, values, positions);
    }
  }

  // Token-granular eviction (see the header comment): keep holds indices
  // into the layer's tokens, one shared row or one row per KV head, all of
  // the same length.
  template <class Isa = isa::active>
  void evict_tokens(const keep_view& keep) {
    validate_keep(keep, heads_, length_, "quantized_layer::evict_tokens");
    kvcrush::detail::require(keep_is_uniform(keep), "quantized_layer::evict_tokens: per-head keep sets of different "
                             "lengths (head-wise budgets) are not supported: every head holds length() tokens");
    if (cfg_.params == param_format::float16) {
      evict<Isa, float16>(keep);
    } else {
      evict<Isa, float>(keep);
    }
  }

  // Block-granular eviction (SPEC 4.4): the kept blocks (sorted indices of
  // block_size tokens; the partial last block must be kept). With
  // block_size a multiple of G no group is requantized.
  template <class Isa = isa::active>
  void evict_blocks(vector_view<const index_t> blocks, index_t block_size) {
    using kvcrush::detail::require;
    require(block_size >= 1, "quantized_layer::evict_blocks: block_size must be >= 1 (got ", block_size, ")");
    const index_t all = (length_ + block_size - 1) / block_size;
    index_t previous = -1, kept = 0;
    for (index_t i = 0; i < blocks.extent(0); ++i) {
      const index_t j = blocks[i];
      require(j > previous && j < all, "quantized_layer::evict_blocks: block entry ", i, " is ", j,
              " (blocks must be strictly increasing in [0, ", all, "))");
      previous = j;
      kept += std::min(block_size, length_ - j * block_size);
    }
    require(length_ % block_size == 0 || previous == all - 1, "quantized_layer::evict_blocks: the partial last block (",
            all - 1, ") must be kept (SPEC 4.4)");
    index_t k = 0;
    for (index_t i = 0; i < blocks.extent(0); ++i) {
      const index_t begin = blocks[i] * block_size, end = std::min(begin + block_size, length_);
      for (index_t t = begin; t < end; ++t) keep_scratch_[static_cast<std::size_t>(k++)] = t;
    }
    evict_tokens<Isa>(keep_view::shared(keep_scratch_.data(), kept));
  }

  void clear() noexcept {
    std::fill(groups_.begin(), groups_.end(), 0);
    std::fill(window_.begin(), window_.end(), 0);
    length_ = 0;
    appended_ = 0;
  }

  // ---- reading ---------------------------------------------------------

  // The storage of one head, as the kernels read it. P must match the
  // configured parameter format.
  template <class P>
  key_group_span<P> key_span(index_t head) const {
    require_params<P>("key_span");
    const auto h = static_cast<std::size_t>(checked_head(head));
    key_group_span<P> s;
    s.codes = key_codes_.data() + h * static_cast<std::size_t>(max_groups_) * layout_.key_group_code_bytes;
    s.scale = params<P>(0) + h * static_cast<std::size_t>(max_groups_ * head_dim());
    s.zero = params<P>(1) + h * static_cast<std::size_t>(max_groups_ * head_dim());
    s.groups = groups_[h];
    s.group = cfg_.group_size;
    s.head_dim = head_dim();
    s.bits = cfg_.key_bits;
    return s;
  }

  template <class P>
  value_row_span<P> value_span(index_t head) const {
    require_params<P>("value_span");
    const auto h = static_cast<std::size_t>(checked_head(head));
    const std::size_t rows = static_cast<std::size_t>(max_groups_ * cfg_.group_size);
    value_row_span<P> s;
    s.codes = value_codes_.data() + h * rows * layout_.value_row_bytes;
    s.scale = params<P>(2) + h * rows * static_cast<std::size_t>(layout_.value_groups);
    s.zero = params<P>(3) + h * rows * static_cast<std::size_t>(layout_.value_groups);
    s.rows = groups_[h] * cfg_.group_size;
    s.head_dim = head_dim();
    s.value_group = layout_.value_group;
    s.bits = cfg_.value_bits;
    return s;
  }

  row_span<W> window_key_span(index_t head) const {
    return {window_row(window_keys_, checked_head(head), 0), head_dim(), window_[static_cast<std::size_t>(head)],
            head_dim()};
  }
  row_span<W> window_value_span(index_t head) const {
    return {window_row(window_values_, checked_head(head), 0), head_dim(), window_[static_cast<std::size_t>(head)],
            head_dim()};
  }

  // Decoded parameters of key group g, channel c, and of value row t,
  // channel group k (tests, error tracking).
  group_params key_params(index_t head, index_t g, index_t c) const {
    kvcrush::detail::require(g >= 0 && g < groups(head) && c >= 0 && c < head_dim(), "quantized_layer::key_params: (",
                             g, ", ", c, ") out of range");
    const std::size_t i = param_index(head, g, c);
    return cfg_.params == param_format::float16 ? load_group_params(params16_[0][i], params16_[1][i])
                                                : load_group_params(params32_[0][i], params32_[1][i]);
  }
  group_params value_params(index_t head, index_t t, index_t k) const {
    kvcrush::detail::require(t >= 0 && t < quantized_tokens(head) && k >= 0 && k < layout_.value_groups,
                             "quantized_layer::value_params: (", t, ", ", k, ") out of range");
    const std::size_t i = value_param_index(head, t, k);
    return cfg_.params == param_format::float16 ? load_group_params(params16_[2][i], params16_[3][i])
                                                : load_group_params(params32_[2][i], params32_[3][i]);
  }
  // The stored code of key (head, token t < quantized_tokens, channel c),
  // and of the value.
  int key_code(index_t head, index_t t, index_t c) const {
    kvcrush::detail::require(t >= 0 && t < quantized_tokens(head) && c >= 0 && c < head_dim(),
                             "quantized_layer::key_code: out of range");
    return packed_code(key_channel(head, t / cfg_.group_size, c), t % cfg_.group_size, cfg_.key_bits);
  }
  int value_code(index_t head, index_t t, index_t c) const {
    kvcrush::detail::require(t >= 0 && t < quantized_tokens(head) && c >= 0 && c < head_dim(),
                             "quantized_layer::value_code: out of range");
    return packed_code(value_row_codes(head, t), c, cfg_.value_bits);
  }

  // Dequantized keys / values of one head, token by token in position
  // order (quantized tokens, then the window): out is (>= length, head_dim).
  void dequantize_keys(index_t head, matrix_view<float> out) const { dequantize(head, out, true); }
  void dequantize_values(index_t head, matrix_view<float> out) const { dequantize(head, out, false); }

 private:
  template <class P>
  P* params(int role) noexcept {
    if constexpr (std::is_same_v<P, float16>) {
      return params16_[role].data();
    } else {
      return params32_[role].data();
    }
  }
  template <class P>
  const P* params(int role) const noexcept {
    return const_cast<quantized_layer*>(this)->params<P>(role);
  }
  template <class P>
  void require_params(const char* what) const {
    constexpr param_format f = std::is_same_v<P, float16> ? param_format::float16 : param_format::float32;
    kvcrush::detail::require(cfg_.params == f, "quantized_layer::", what, ": the layer stores ", to_string(cfg_.params),
                             " parameters, not ", to_string(f));
  }

  index_t checked_head(index_t head) const {
    kvcrush::detail::require(head >= 0 && head < heads_, "quantized_layer: head ", head, " out of range [0, ", heads_,
                             ")");
    return head;
  }

  // Storage addresses (head h, key group g, value row t, window row t).
  std::size_t param_index(index_t h, index_t g, index_t c) const noexcept {
    return static_cast<std::size_t>((h * max_groups_ + g) * head_dim() + c);
  }
  std::size_t value_param_index(index_t h, index_t t, index_t k) const noexcept {
    return static_cast<std::size_t>((h * max_groups_ * cfg_.group_size + t) * layout_.value_groups + k);
  }
  std::uint8_t* key_group_codes(index_t h, index_t g) noexcept {
    return key_codes_.data() + static_cast<std::size_t>(h * max_groups_ + g) * layout_.key_group_code_bytes;
  }
  const std::uint8_t* key_channel(index_t h, index_t g, index_t c) const noexcept {
    return key_codes_.data() + static_cast<std::size_t>(h * max_groups_ + g) * layout_.key_group_code_bytes +
           static_cast<std::size_t>(c) * layout_.key_channel_bytes;
  }
  std::uint8_t* value_row_codes(index_t h, index_t t) noexcept {
    return value_codes_.data() + static_cast<std::size_t>(h * max_groups_ * cfg_.group_size + t) * layout_.value_row_bytes;
  }
  const std::uint8_t* value_row_codes(index_t h, index_t t) const noexcept {
    return const_cast<quantized_layer*>(this)->value_row_codes(h, t);
  }
  W* window_row(std::vector<W>& rows, index_t h, index_t t) noexcept {
    return rows.data() + static_cast<std::size_t>((h * window_capacity_ + t) * head_dim());
  }
  const W* window_row(const std::vector<W>& rows, index_t h, index_t t) const noexcept {
    return rows.data() + static_cast<std::size_t>((h * window_capacity_ + t) * head_dim());
  }
  index_t* position_row(index_t h) noexcept { return positions_.data() + static_cast<std::size_t>(h * capacity_); }
  float* scratch(int which) noexcept {
    return scratch_.data() + static_cast<std::size_t>(which) * static_cast<std::size_t>(cfg_.group_size * head_dim());
  }

  template <class U>
  void check_rows(const kv_view<const U>& rows, const char* what) const {
    impl::check_quantizable(rows, impl::quantizable_limit<W>(cfg_.params), "quantized_layer::append", what);
  }

  // Quantizes G rows (x + i * stride) into key group g and value rows
  // [g * G, (g + 1) * G) of head h.
  template <class Isa, class P>
  void encode_group(index_t h, index_t g, const float* keys, index_t key_stride, const float* values,
                    index_t value_stride) noexcept {
    const index_t d = head_dim(), gs = cfg_.group_size;
    simd::quant_encode_kernel<Isa>::keys(keys, key_stride, gs, d, cfg_.key_bits, key_group_codes(h, g),
                                         params<P>(0) + param_index(h, g, 0), params<P>(1) + param_index(h, g, 0));
    simd::quant_encode_kernel<Isa>::values(values, value_stride, gs, d, layout_.value_group, cfg_.value_bits,
                                           value_row_codes(h, g * gs), params<P>(2) + value_param_index(h, g * gs, 0),
                                           params<P>(3) + value_param_index(h, g * gs, 0));
  }

  template <class Isa, class P, class U>
  void append_rows(const kv_view<const U>& keys, const kv_view<const U>& values, matrix_view<const index_t> positions) {
    const index_t n = keys.tokens(), d = head_dim(), gs = cfg_.group_size, r = cfg_.window;
    float* key_rows = scratch(0);
    float* value_rows = scratch(1);
    for (index_t h = 0; h < heads_; ++h) {
      const index_t w = window_[static_cast<std::size_t>(h)];
      const index_t total = w + n;  // window rows first, then the new rows
      const index_t new_groups = total >= r + gs ? (total - r) / gs : 0;
      index_t& g = groups_[static_cast<std::size_t>(h)];
      for (index_t j = 0; j < new_groups; ++j) {
        const index_t first = j * gs;
        if constexpr (std::is_same_v<std::remove_cv_t<U>, float>) {
          if (first >= w) {
            encode_group<Isa, P>(h, g + j, keys.row(h, first - w), keys.token_stride(), values.row(h, first - w),
                                 values.token_stride());
            continue;
          }
        }
        for (index_t i = 0; i < gs; ++i) {
          const index_t t = first + i;
          if (t < w) {
            copy_row(window_row(window_keys_, h, t), key_rows + i * d, d);
            copy_row(window_row(window_values_, h, t), value_rows + i * d, d);
          } else {
            copy_row(keys.row(h, t - w), key_rows + i * d, d);
            copy_row(values.row(h, t - w), value_rows + i * d, d);
          }
        }
        encode_group<Isa, P>(h, g + j, key_rows, d, value_rows, d);
      }
      // The new window: combined rows [new_groups * G, total).
      const index_t start = new_groups * gs;
      index_t kept = 0;
      if (start < w) {
        kept = w - start;
        if (start > 0) move_window_rows(h, start, 0, kept);
      }
      for (index_t t = std::max(start, w); t < total; ++t, ++kept) {
        copy_row(keys.row(h, t - w), window_row(window_keys_, h, kept), d);
        copy_row(values.row(h, t - w), window_row(window_values_, h, kept), d);
      }
      g += new_groups;
      window_[static_cast<std::size_t>(h)] = kept;
      index_t* pos = position_row(h) + length_;
      const index_t source = positions.extent(0) == heads_ ? h : 0;
      for (index_t t = 0; t < n; ++t) pos[t] = positions.extent(0) ? positions(source, t) : appended_ + t;
    }
    length_ += n;
    appended_ += n;
  }

  void move_window_rows(index_t h, index_t from, index_t to, index_t count) noexcept {
    if (count <= 0 || from == to) return;
    const auto bytes = static_cast<std::size_t>(count * head_dim()) * sizeof(W);
    std::memmove(window_row(window_keys_, h, to), window_row(window_keys_, h, from), bytes);
    std::memmove(window_row(window_values_, h, to), window_row(window_values_, h, from), bytes);
  }

  template <class P>
  void dequantize_key_row(index_t h, index_t t, float* out) const noexcept {
    const index_t gs = cfg_.group_size, g = t / gs, lane = t % gs;
    const P* scale = params<P>(0) + param_index(h, g, 0);
    const P* zero = params<P>(1) + param_index(h, g, 0);
    for (index_t c = 0; c < head_dim(); ++c) {
      const group_params p = load_group_params(scale[c], zero[c]);
      out[c] = dequantize_value(packed_code(key_channel(h, g, c), lane, cfg_.key_bits), p);
    }
  }

  template <class P>
  void dequantize_value_row(index_t h, index_t t, float* out) const noexcept {
    const P* scale = params<P>(2) + value_param_index(h, t, 0);
    const P* zero = params<P>(3) + value_param_index(h, t, 0);
    const std::uint8_t* codes = value_row_codes(h, t);
    for (index_t c = 0; c < head_dim(); ++c) {
      const index_t k = c / layout_.value_group;
      out[c] = dequantize_value(packed_code(codes, c, cfg_.value_bits), load_group_params(scale[k], zero[k]));
    }
  }

  void dequantize(index_t head, matrix_view<float> out, bool keys) const {
    using kvcrush::detail::require;
    checked_head(head);
    require(out.extent(0) >= length_ && out.extent(1) == head_dim() && (out.extent(1) <= 1 || out.stride(1) == 1),
            "quantized_layer::dequantize: output is (", out.extent(0), ", ", out.extent(1), "), needs (>= ", length_,
            ", ", head_dim(), ") with contiguous rows");
    const index_t q = quantized_tokens(head);
    for (index_t t = 0; t < q; ++t) {
      float* row = &out(t, 0);
      if (cfg_.params == param_format::float16) {
        keys ? dequantize_key_row<float16>(head, t, row) : dequantize_value_row<float16>(head, t, row);
      } else {
        keys ? dequantize_key_row<float>(head, t, row) : dequantize_value_row<float>(head, t, row);
      }
    }
    for (index_t t = 0; t < window_tokens(head); ++t) {
      copy_row(window_row(keys ? window_keys_ : window_values_, head, t), &out(q + t, 0), head_dim());
    }
  }

  // Copies key group `from` (codes, parameters and its G value rows) of
  // head h to slot `to` < from.
  template <class P>
  void move_group(index_t h, index_t from, index_t to) noexcept {
    const index_t gs = cfg_.group_size, d = head_dim();
    std::memmove(key_group_codes(h, to), key_group_codes(h, from), layout_.key_group_code_bytes);
    for (int role = 0; role < 2; ++role) {
      std::memmove(params<P>(role) + param_index(h, to, 0), params<P>(role) + param_index(h, from, 0),
                   static_cast<std::size_t>(d) * sizeof(P));
    }
    move_value_rows<P>(h, from * gs, to * gs, gs);
  }

  template <class P>
  void move_value_rows(index_t h, index_t from, index_t to, index_t count) noexcept {
    if (from == to || count <= 0) return;
    std::memmove(value_row_codes(h, to), value_row_codes(h, from), static_cast<std::size_t>(count) * layout_.value_row_bytes);
    for (int role = 2; role < 4; ++role) {
      std::memmove(params<P>(role) + value_param_index(h, to, 0), params<P>(role) + value_param_index(h, from, 0),
                   static_cast<std::size_t>(count * layout_.value_groups) * sizeof(P));
    }
  }

  template <class Isa, class P>
  void evict(const keep_view& keep) {
    const index_t gs = cfg_.group_size, d = head_dim();
    float* requant_keys = scratch(0);
    float* rest_keys = scratch(1);
    float* rest_values = scratch(2);
    alignas(64) float check[max_quant_head_dim];
    for (index_t h = 0; h < heads_; ++h) {
      const index_t row = keep.row_of_head(h);
      const index_t kept = keep.count(row);
      const index_t quantized = groups_[static_cast<std::size_t>(h)] * gs;
      index_t nq = 0;  // kept quantized tokens
      while (nq < kept && keep.at(row, nq) < quantized) ++nq;
      const index_t new_groups = nq / gs, rest = nq % gs;
      // 1. The partial group's survivors, dequantized before any slot is
      //    overwritten (they come from old groups >= new_groups, which
      //    step 2 never writes).
      for (index_t i = 0; i < rest; ++i) {
        const index_t t = keep.at(row, new_groups * gs + i);
        dequantize_key_row<P>(h, t, rest_keys + i * d);
        dequantize_value_row<P>(h, t, rest_values + i * d);
      }
      // 2. Full groups, in order: new group j draws from old groups >= j and
      //    old group j feeds no later new group, so writing slot j is safe
      //    once its survivors are read.
      for (index_t j = 0; j < new_groups; ++j) {
        const index_t first = keep.at(row, j * gs), last = keep.at(row, j * gs + gs - 1);
        if (first % gs == 0 && last == first + gs - 1) {
          if (first / gs != j) move_group<P>(h, first / gs, j);
          continue;
        }
        for (index_t i = 0; i < gs; ++i) {
          const index_t t = keep.at(row, j * gs + i);
          dequantize_key_row<P>(h, t, requant_keys + i * d);
          move_value_rows<P>(h, t, j * gs + i, 1);
        }
        simd::quant_encode_kernel<Isa>::keys(requant_keys, d, gs, d, cfg_.key_bits, key_group_codes(h, j),
                                             params<P>(0) + param_index(h, j, 0), params<P>(1) + param_index(h, j, 0));
        ++stats_.groups;
        for (index_t i = 0; i < gs; ++i) {
          dequantize_key_row<P>(h, j * gs + i, check);
          for (index_t c = 0; c < d; ++c) {
            const float change = std::fabs(check[c] - requant_keys[i * d + c]);
            const P* scale = params<P>(0) + param_index(h, j, c);
            const P* zero = params<P>(1) + param_index(h, j, c);
            const float bound = quantization_error_bound(load_group_params(*scale, *zero), cfg_.key_bits);
            stats_.max_abs_change = std::max(stats_.max_abs_change, change);
            stats_.max_change_over_bound = std::max(stats_.max_change_over_bound, change / bound);
          }
        }
      }
      // 3. The window: kept rows to the front, then shifted right past the
      //    partial group's survivors.
      const index_t kept_window = kept - nq;
      for (index_t i = 0; i < kept_window; ++i) {
        const index_t from = keep.at(row, nq + i) - quantized;
        if (from != i) move_window_rows(h, from, i, 1);
      }
      if (rest > 0) {
        move_window_rows(h, 0, rest, kept_window);
        for (index_t i = 0; i < rest; ++i) {
          copy_row(rest_keys + i * d, window_row(window_keys_, h, i), d);
          copy_row(rest_values + i * d, window_row(window_values_, h, i), d);
        }
        stats_.dequantized_tokens += rest;
      }
      // 4. Positions, and the head's new split.
      index_t* pos = position_row(h);
      for (index_t i = 0; i < kept; ++i) pos[i] = pos[keep.at(row, i)];
      groups_[static_cast<std::size_t>(h)] = new_groups;
      window_[static_cast<std::size_t>(h)] = rest + kept_window;
      normalize_window<Isa, P>(h);
    }
    length_ = keep.count(0);
  }

  // Quantizes the oldest G window rows while the window holds R + G or more.
  template <class Isa, class P>
  void normalize_window(index_t h) noexcept {
    const index_t gs = cfg_.group_size, d = head_dim();
    index_t& w = window_[static_cast<std::size_t>(h)];
    index_t& g = groups_[static_cast<std::size_t>(h)];
    while (w >= cfg_.window + gs) {
      float* key_rows = scratch(0);
      float* value_rows = scratch(1);
      for (index_t i = 0; i < gs; ++i) {
        copy_row(window_row(window_keys_, h, i), key_rows + i * d, d);
        copy_row(window_row(window_values_, h, i), value_rows + i * d, d);
      }
      encode_group<Isa, P>(h, g, key_rows, d, value_rows, d);
      ++g;
      move_window_rows(h, gs, 0, w - gs);
      w -= gs;
    }
  }

  quant_config cfg_;
  quant_layout layout_;
  index_t heads_ = 0, capacity_ = 0, max_groups_ = 0, window_capacity_ = 0;
  index_t length_ = 0, appended_ = 0;
  std::vector<std::uint8_t> key_codes_, value_codes_;  // [head][group][channel][token], [head][row][bytes]
  std::vector<float16> params16_[4];                   // key scale, key zero, value scale, value zero
  std::vector<float> params32_[4];
  std::vector<W> window_keys_, window_values_;  // [head][window row][dim]
  std::vector<index_t> positions_;              // [head][token]
  std::vector<index_t> groups_, window_;        // per head
  std::vector<float> scratch_;                  // 3 x (G rows of head_dim floats)
  std::vector<index_t> keep_scratch_;           // evict_blocks: the kept tokens
  requantization_stats stats_;
};

// A quantized layer holding the given rows: capacity `capacity` (default:
// exactly keys.tokens()), all rows appended.
template <class W = float16, class Isa = isa::active, class U>
quantized_layer<W> quantize_layer(kv_view<const U> keys, kv_view<const U> values, const quant_config& cfg,
                                  index_t capacity = -1, vector_view<const index_t> positions = {}) {
  quantized_layer<W> layer(keys.heads(), keys.head_dim(), capacity < 0 ? keys.tokens() : capacity, cfg);
  layer.template append<Isa>(keys, values, positions);
  return layer;
}
template <class W = float16, class Isa = isa::active, class U>
quantized_layer<W> quantize_layer(kv_view<U> keys, kv_view<U> values, const quant_config& cfg, index_t capacity = -1,
                                  vector_view<const index_t> positions = {}) {
  return quantize_layer<W, Isa>(kv_view<const U>(keys), kv_view<const U>(values), cfg, capacity, positions);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

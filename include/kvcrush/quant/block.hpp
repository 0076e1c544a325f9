// A quantized paged block: G tokens (G = the key group size) of every KV
// head of a layer in one contiguous byte range, so that a paged pool can
// store, copy (copy on write), free and evict quantized blocks exactly as it
// does float16 ones. The block is one key group per head (per channel over
// the block's G tokens) and G value rows per head (per token):
//
//   offset 0                 key codes    [head][channel][G * kb / 8 bytes]
//   key_scale_offset         key scales   [head][channel]        (P)
//   key_zero_offset          key zeros    [head][channel]        (P)
//   value_codes_offset       value codes  [head][token][row bytes]
//   value_scale_offset       value scales [head][token][value group] (P)
//   value_zero_offset        value zeros  [head][token][value group] (P)
//
// every section starting on a 16-byte boundary, bytes() a multiple of 16 (a
// pool of blocks laid end to end keeps them aligned). P is float16 or float
// per quant_config::params; a block must start at an address aligned to
// sizeof(P).
//
// Integration with cache/paged_cache.hpp: a block of block_size = G slots
// maps to one quantized block; a pool of `blocks` quantized blocks is
// blocks * bytes() bytes (instead of blocks * G * heads * head_dim * 2 *
// sizeof(T)); the block table, reference counts, forks, copy on write and
// evict_blocks (SPEC 4.4 with block size G, no requantization) are
// unchanged because they move whole blocks; positions stay per slot. The
// sequence's partial last block cannot be quantized (keys need G tokens)
// and stays a full-precision block until it fills, then is encoded with
// encode_block and swapped for a quantized one (this is the recent window
// of quantized_layer with R = 0). evict_tokens (compaction across blocks)
// needs requantization: decode the affected blocks, compact, re-encode
// (quantized_layer::evict_tokens does that for the contiguous layout).
// Attention walks the table: block_key_scores / block_value_sum per block,
// in order, with one softmax over all blocks.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant_config.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/quant_params.hpp"
#include "kvcrush/quant_spans.hpp"
#include "kvcrush/quant/quant_scratch.hpp"
#include "kvcrush/simd/quant_dot.hpp"
#include "kvcrush/simd/quant_encode.hpp"

namespace kvcrush {

struct quant_block_layout {
  quant_layout layout;
  index_t heads = 0;
  std::size_t key_scale_offset = 0, key_zero_offset = 0;
  std::size_t value_codes_offset = 0, value_scale_offset = 0, value_zero_offset = 0;
  std::size_t total = 0;

  static constexpr std::size_t align(std::size_t n) noexcept { return (n + 15) / 16 * 16; }

  static quant_block_layout make(const quant_config& cfg, index_t heads, index_t head_dim) {
    kvcrush::detail::require(heads >= 1, "quant_block_layout: heads must be >= 1 (got ", heads, ")");
    quant_block_layout b;
    b.layout = quant_layout::make(cfg, head_dim);
    b.heads = heads;
    const auto h = static_cast<std::size_t>(heads);
    const std::size_t key_params = h * b.layout.key_group_param_bytes / 2;  // scales (or zeros) of every head
    const std::size_t rows = h * static_cast<std::size_t>(b.layout.group);
    const std::size_t value_params = rows * b.layout.value_row_param_bytes / 2;
    b.key_scale_offset = align(h * b.layout.key_group_code_bytes);
    b.key_zero_offset = b.key_scale_offset + align(key_params);
    b.value_codes_offset = b.key_zero_offset + align(key_params);
    b.value_scale_offset = b.value_codes_offset + align(rows * b.layout.value_row_bytes);
    b.value_zero_offset = b.value_scale_offset + align(value_params);
    b.total = b.value_zero_offset + align(value_params);
    return b;
  }

  index_t tokens() const noexcept { return layout.group; }
  std::size_t bytes() const noexcept { return total; }
  // The bytes of codes and parameters proper (bytes() minus the padding
  // that keeps sections aligned): what quantized_memory counts for G tokens.
  std::size_t payload_bytes() const noexcept {
    return static_cast<std::size_t>(heads) * layout.group_bytes();
  }
};

// Read access to one block's bytes: spans the kernels take, per head.
template <class P>
struct quant_block_view {
  const std::uint8_t* data = nullptr;
  const quant_block_layout* layout = nullptr;

  key_group_span<P> keys(index_t head) const noexcept {
    const quant_layout& l = layout->layout;
    const auto h = static_cast<std::size_t>(head), d = static_cast<std::size_t>(l.head_dim);
    key_group_span<P> s;
    s.codes = data + h * l.key_group_code_bytes;
    s.scale = reinterpret_cast<const P*>(data + layout->key_scale_offset) + h * d;
    s.zero = reinterpret_cast<const P*>(data + layout->key_zero_offset) + h * d;
    s.groups = 1;
    s.group = l.group;
    s.head_dim = l.head_dim;
    s.bits = l.key_bits;
    return s;
  }

  value_row_span<P> values(index_t head) const noexcept {
    const quant_layout& l = layout->layout;
    const auto rows = static_cast<std::size_t>(head) * static_cast<std::size_t>(l.group);
    value_row_span<P> s;
    s.codes = data + layout->value_codes_offset + rows * l.value_row_bytes;
    s.scale = reinterpret_cast<const P*>(data + layout->value_scale_offset) + rows * static_cast<std::size_t>(l.value_groups);
    s.zero = reinterpret_cast<const P*>(data + layout->value_zero_offset) + rows * static_cast<std::size_t>(l.value_groups);
    s.rows = l.group;
    s.head_dim = l.head_dim;
    s.value_group = l.value_group;
    s.bits = l.value_bits;
    return s;
  }
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class P>
void require_block(const quant_block_layout& b, const void* block, const char* what) {
  using kvcrush::detail::require;
  constexpr param_format f = std::is_same_v<P, float16> ? param_format::float16 : param_format::float32;
  require(b.layout.params == f, what, ": the block layout stores ", to_string(b.layout.params), " parameters");
  require(block != nullptr && reinterpret_cast<std::uintptr_t>(block) % sizeof(P) == 0, what,
          ": the block must be non-null and aligned to ", sizeof(P), " bytes");
}

}  // namespace impl

// Encodes G tokens (keys/values: (heads, G, head_dim), any layout and
// storage; finite, within the parameters' range) into block[0, bytes()):
// the arithmetic of quantized_layer, so the codes equal those of a layer
// holding the same G rows as one group. The padding between sections is
// zeroed, so equal inputs give equal bytes. Rows that are not float are
// converted in ws (2 * G * head_dim floats); no other memory is used.
template <class Isa = isa::active, class U>
void encode_block(kv_view<const U> keys, kv_view<const U> values, const quant_block_layout& b, std::uint8_t* block,
                  quant_scratch& ws) {
  using kvcrush::detail::require;
  const quant_layout& l = b.layout;
  for (const kv_view<const U>* v : {&keys, &values}) {
    require(v->heads() == b.heads && v->tokens() == l.group && v->head_dim() == l.head_dim, "encode_block: rows are (",
            v->heads(), " heads, ", v->tokens(), " tokens, ", v->head_dim(), " dims), a block holds (", b.heads, ", ",
            l.group, ", ", l.head_dim, ")");
  }
  const float limit = impl::quantizable_limit<float>(l.params);
  impl::check_quantizable(keys, limit, "encode_block", "keys");
  impl::check_quantizable(values, limit, "encode_block", "values");
  if (l.params == param_format::float16) {
    impl::require_block<float16>(b, block, "encode_block");
  } else {
    impl::require_block<float>(b, block, "encode_block");
  }
  std::memset(block, 0, b.bytes());
  const index_t d = l.head_dim, g = l.group;
  float* key_rows = std::is_same_v<U, float> ? nullptr : ws.key_rows(static_cast<std::size_t>(g * d));
  float* value_rows = std::is_same_v<U, float> ? nullptr : ws.value_rows(static_cast<std::size_t>(g * d));
  auto encode = [&](auto param_tag) {
    using P = decltype(param_tag);
    P* key_scale = reinterpret_cast<P*>(block + b.key_scale_offset);
    P* key_zero = reinterpret_cast<P*>(block + b.key_zero_offset);
    P* value_scale = reinterpret_cast<P*>(block + b.value_scale_offset);
    P* value_zero = reinterpret_cast<P*>(block + b.value_zero_offset);
    const auto rows = static_cast<std::size_t>(g);
    for (index_t h = 0; h < b.heads; ++h) {
      const auto hs = static_cast<std::size_t>(h);
      const float* kx;
      const float* vx;
      index_t ks, vs;
      if constexpr (std::is_same_v<U, float>) {
        kx = keys.row(h, 0);
        vx = values.row(h, 0);
        ks = keys.token_stride();
        vs = values.token_stride();
      } else {
        for (index_t t = 0; t < g; ++t) {
          copy_row(keys.row(h, t), key_rows + t * d, d);
          copy_row(values.row(h, t), value_rows + t * d, d);
        }
        kx = key_rows;
        vx = value_rows;
        ks = vs = d;
      }
      simd::quant_encode_kernel<Isa>::keys(kx, ks, g, d, l.key_bits, block + hs * l.key_group_code_bytes,
                                           key_scale + hs * static_cast<std::size_t>(d), key_zero + hs * static_cast<std::size_t>(d));
      const std::size_t param_rows = hs * rows * static_cast<std::size_t>(l.value_groups);
      simd::quant_encode_kernel<Isa>::values(vx, vs, g, d, l.value_group, l.value_bits,
                                             block + b.value_codes_offset + hs * rows * l.value_row_bytes,
                                             value_scale + param_rows, value_zero + param_rows);
    }
  };
  if (l.params == param_format::float16) {
    encode(float16{});
  } else {
    encode(float{});
  }
}
template <class Isa = isa::active, class U>
void encode_block(kv_view<U> keys, kv_view<U> values, const quant_block_layout& b, std::uint8_t* block,
                  quant_scratch& ws) {
  encode_block<Isa>(kv_view<const U>(keys), kv_view<const U>(values), b, block, ws);
}

// q . k_t for the block's G tokens of one head (out: G floats), and the
// weighted sum of its value rows (out: head_dim floats, overwritten; a
// caller summing over blocks adds the per-block sums in block order).
template <class Isa = isa::active, class P>
void block_key_scores(const quant_block_view<P>& block, index_t head, const float* q, float* out) noexcept {
  simd::quant_dot_kernel<Isa>::key_scores(block.keys(head), q, out);
}
template <class Isa = isa::active, class P>
void block_value_sum(const quant_block_view<P>& block, index_t head, const float* weights, float* out) noexcept {
  simd::quant_dot_kernel<Isa>::value_sum(block.values(head), weights, out);
}

// Dequantized rows of one head: keys and values (G, head_dim) each.
template <class P>
void decode_block(const quant_block_view<P>& block, index_t head, matrix_view<float> keys, matrix_view<float> values) {
  const quant_layout& l = block.layout->layout;
  kvcrush::detail::require(keys.extent(0) >= l.group && keys.extent(1) == l.head_dim && values.extent(0) >= l.group &&
                               values.extent(1) == l.head_dim,
                           "decode_block: outputs must be (>= ", l.group, ", ", l.head_dim, ")");
  const key_group_span<P> k = block.keys(head);
  const value_row_span<P> v = block.values(head);
  for (index_t t = 0; t < l.group; ++t) {
    for (index_t c = 0; c < l.head_dim; ++c) {
      const group_params kp = load_group_params(k.scale[c], k.zero[c]);
      keys(t, c) = dequantize_value(packed_code(k.codes + c * k.channel_bytes(), t, l.key_bits), kp);
      const index_t g = c / l.value_group;
      const group_params vp = load_group_params(v.scale[t * l.value_groups + g], v.zero[t * l.value_groups + g]);
      values(t, c) = dequantize_value(packed_code(v.codes + t * v.row_bytes(), c, l.value_bits), vp);
    }
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

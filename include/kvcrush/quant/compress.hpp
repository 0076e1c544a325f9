// One-shot, per-layer entry points for tools that compare compression
// schemes at equal byte budgets (the evaluation tool, notebooks, the CLI):
//
//   quantize everything      quantize_layer<W>(keys, values, cfg)          (layer.hpp)
//   evict, then quantize     n = quantized_tokens_within<W>(cfg, H, d, bytes)  (memory.hpp)
//                            select_keep / select(...) with budget n
//                            (block mode with block_size = G keeps groups
//                            whole), then quantize_kept<W>(keys, values, keep, cfg)
//   mixed precision          select_mixed_precision(scores or policy, ...)  (mixed_precision.hpp)
//                            tiered_layer<W>::build(keys, values, high, low, cfg)
//   eviction only            plain_memory<T>(H, n, d) for the bytes of n kept tokens
//
// Every result answers attend(queries, out, ws) (free function for
// quantized_layer, member for tiered_layer) and memory().kv_bytes().
#pragma once

#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/quant/layer.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

// A quantized layer holding only the kept tokens of keys/values (heads,
// tokens, head_dim; any layout and storage), in position order, with their
// original positions; keep: shared or one uniform row per head (e.g. the
// output of select_keep / select, expanded to tokens in block mode).
// Allocates the layer (and a gather buffer): a one-shot call, not a hot path.
template <class W = float16, class Isa = isa::active, class U>
quantized_layer<W> quantize_kept(kv_view<const U> keys, kv_view<const U> values, const keep_view& keep,
                                 const quant_config& cfg) {
  using kvcrush::detail::require;
  const index_t heads = keys.heads(), d = keys.head_dim(), n = keys.tokens();
  require(values.heads() == heads && values.head_dim() == d && values.tokens() == n,
          "quantize_kept: keys and values differ in shape");
  validate_keep(keep, heads, n, "quantize_kept");
  require(keep_is_uniform(keep), "quantize_kept: every head must keep the same number of tokens");
  const index_t kept = keep.count(0);
  std::vector<U> k(static_cast<std::size_t>(heads * kept * d)), v(k.size());
  std::vector<index_t> positions(static_cast<std::size_t>(heads * kept));
  for (index_t h = 0; h < heads; ++h) {
    const index_t r = keep.row_of_head(h);
    for (index_t i = 0; i < kept; ++i) {
      const index_t t = keep.at(r, i);
      copy_row(keys.row(h, t), k.data() + (h * kept + i) * d, d);
      copy_row(values.row(h, t), v.data() + (h * kept + i) * d, d);
      positions[static_cast<std::size_t>(h * kept + i)] = t;
    }
  }
  quantized_layer<W> layer(heads, d, kept, cfg);
  layer.template append<Isa>(make_head_token_dim<const U>(k.data(), heads, kept, d),
                             make_head_token_dim<const U>(v.data(), heads, kept, d),
                             make_matrix_view<const index_t>(positions.data(), heads, kept));
  return layer;
}
template <class W = float16, class Isa = isa::active, class U>
quantized_layer<W> quantize_kept(kv_view<U> keys, kv_view<U> values, const keep_view& keep, const quant_config& cfg) {
  return quantize_kept<W, Isa>(kv_view<const U>(keys), kv_view<const U>(values), keep, cfg);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// A quantized key/value cache for several layers: one quantized_layer per
// layer, with the Cache interface of cache/eviction_controller.hpp, so that
// the decode-time eviction controller (and anything else written against
// contiguous_cache) drives it:
//   layers(), kv_heads(), block_size(), length(layer),
//   evict_tokens(layer, keep), evict_blocks(layer, blocks, block_size).
//
// block_size() is 1: the cache accepts any selection granularity. Block
// mode with block_size a multiple of the group size G (set
// policy.layout.block_size = G) moves whole groups and never requantizes;
// token mode requantizes the groups an eviction breaks (quant/layer.hpp).
// There is deliberately no keys(layer) accessor (the controller would take
// it for float keys): policies that read keys (key norm, SnapKV from
// queries) need their inputs from the engine.
//
// Layers are independent: calls on different layers may run concurrently.
#pragma once

#include <vector>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/quant/memory.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

template <class W = float16>
class quantized_cache {
 public:
  using window_type = W;

  quantized_cache(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity, const quant_config& cfg) {
    kvcrush::detail::require(layers >= 1, "quantized_cache: layers must be >= 1 (got ", layers, ")");
    layers_.reserve(static_cast<std::size_t>(layers));
    for (index_t l = 0; l < layers; ++l) layers_.emplace_back(kv_heads, head_dim, capacity, cfg);
  }

  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  index_t kv_heads() const noexcept { return layers_.front().kv_heads(); }
  index_t head_dim() const noexcept { return layers_.front().head_dim(); }
  index_t capacity() const noexcept { return layers_.front().capacity(); }
  index_t block_size() const noexcept { return 1; }
  const quant_config& config() const noexcept { return layers_.front().config(); }
  index_t length(index_t l) const { return layer(l).length(); }

  quantized_layer<W>& layer(index_t l) { return layers_[checked(l)]; }
  const quantized_layer<W>& layer(index_t l) const { return layers_[checked(l)]; }

  template <class Isa = isa::active, class U>
  void append(index_t l, kv_view<const U> keys, kv_view<const U> values, vector_view<const index_t> positions = {}) {
    layer(l).template append<Isa>(keys, values, positions);
  }
  template <class Isa = isa::active, class U>
  void append(index_t l, kv_view<U> keys, kv_view<U> values, vector_view<const index_t> positions = {}) {
    layer(l).template append<Isa>(kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  template <class Isa = isa::active>
  void evict_tokens(index_t l, const keep_view& keep) {
    layer(l).template evict_tokens<Isa>(keep);
  }
  template <class Isa = isa::active>
  void evict_blocks(index_t l, vector_view<const index_t> blocks, index_t block_size) {
    layer(l).template evict_blocks<Isa>(blocks, block_size);
  }

  // Bytes held by one layer, and by all.
  memory_usage memory(index_t l) const { return layer(l).memory(); }
  memory_usage memory() const noexcept {
    memory_usage m;
    for (const auto& l : layers_) m += l.memory();
    return m;
  }

 private:
  std::size_t checked(index_t l) const {
    kvcrush::detail::require(l >= 0 && l < layers(), "quantized_cache: layer ", l, " out of range [0, ", layers(), ")");
    return static_cast<std::size_t>(l);
  }

  std::vector<quantized_layer<W>> layers_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

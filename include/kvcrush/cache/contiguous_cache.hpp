// A contiguous key/value cache for several layers, with room for a fixed
// number of tokens per layer, in either kv_layout, storing float, float16 or
// bfloat16. It owns its memory (allocated once, in the constructor), keeps
// the original position of every cached token (per KV head, since per-head
// eviction gives each head its own tokens), and evicts by compacting in
// place (compaction.hpp).
//
// All KV heads of a layer hold the same number of tokens: shared and
// uniform per-head keep sets are accepted, ragged ones (AdaKV head-wise
// budgets) are refused with an error; engines that want ragged heads call
// compact() on their own per-head views.
//
// Layers are independent: calls on different layers may run concurrently.
#pragma once

#include <cstring>
#include <vector>

#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class U>
void check_new_rows(const kv_view<U>& keys, const kv_view<U>& values, index_t heads, index_t head_dim,
                    const char* what) {
  using kvcrush::detail::require;
  require(keys.heads() == heads && keys.head_dim() == head_dim, what, ": new keys are (", keys.heads(), " heads, ",
          keys.head_dim(), " dims), the cache holds (", heads, ", ", head_dim, ")");
  require(values.heads() == heads && values.head_dim() == head_dim && values.tokens() == keys.tokens(), what,
          ": new values are (", values.heads(), " heads, ", values.tokens(), " tokens, ", values.head_dim(),
          " dims), keys (", heads, ", ", keys.tokens(), ", ", head_dim, ")");
}

}  // namespace impl

template <class T>
class contiguous_cache {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "storage must be float, float16 or bfloat16");

 public:
  using storage_type = T;

  contiguous_cache(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity,
                   kv_layout layout = kv_layout::head_token_dim)
      : heads_(kv_heads), head_dim_(head_dim), capacity_(capacity), layout_(layout) {
    using kvcrush::detail::require;
    require(layers >= 1 && kv_heads >= 1 && head_dim >= 1 && capacity >= 0, "contiguous_cache: layers (", layers,
            "), kv_heads (", kv_heads, ") and head_dim (", head_dim, ") must be >= 1, capacity (", capacity,
            ") >= 0");
    const auto elements = static_cast<std::size_t>(kv_heads * capacity * head_dim);
    layers_.resize(static_cast<std::size_t>(layers));
    for (auto& l : layers_) {
      l.keys.assign(elements, T{});
      l.values.assign(elements, T{});
      l.positions.assign(static_cast<std::size_t>(kv_heads * capacity), 0);
    }
  }

  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  index_t kv_heads() const noexcept { return heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t capacity() const noexcept { return capacity_; }
  kv_layout layout() const noexcept { return layout_; }
  index_t block_size() const noexcept { return 1; }
  index_t length(index_t layer) const { return at(layer).length; }
  // Tokens ever appended to the layer (the next original position).
  index_t appended(index_t layer) const { return at(layer).appended; }

  // The cached tokens of a layer, indexed (head, token, dim).
  kv_view<const T> keys(index_t layer) const { return view_of(at(layer).keys.data(), at(layer).length); }
  kv_view<const T> values(index_t layer) const { return view_of(at(layer).values.data(), at(layer).length); }
  kv_view<T> keys(index_t layer) { return view_of(at(layer).keys.data(), at(layer).length); }
  kv_view<T> values(index_t layer) { return view_of(at(layer).values.data(), at(layer).length); }

  // Original positions, (kv_heads, length): row h for head h.
  matrix_view<const index_t> positions(index_t layer) const {
    return make_matrix_view<const index_t>(at(layer).positions.data(), heads_, at(layer).length, capacity_);
  }
  matrix_view<index_t> positions(index_t layer) {
    return make_matrix_view<index_t>(at(layer).positions.data(), heads_, at(layer).length, capacity_);
  }

  // Appends keys.tokens() tokens (K and V rows for every head of the layer,
  // any layout and storage). positions: their original positions (default:
  // continuing the layer's count of appended tokens).
  template <class U>
  void append(index_t layer, kv_view<const U> keys, kv_view<const U> values,
              vector_view<const index_t> positions = {}) {
    using kvcrush::detail::require;
    layer_data& l = at(layer);
    impl::check_new_rows(keys, values, heads_, head_dim_, "contiguous_cache::append");
    const index_t n = keys.tokens();
    require(l.length + n <= capacity_, "contiguous_cache::append: layer ", layer, " holds ", l.length, " of ",
            capacity_, " tokens, no room for ", n, " more");
    require(positions.extent(0) == 0 || positions.extent(0) == n, "contiguous_cache::append: ",
            positions.extent(0), " positions for ", n, " tokens");
    const kv_view<T> k = view_of(l.keys.data(), l.length + n), v = view_of(l.values.data(), l.length + n);
    for (index_t h = 0; h < heads_; ++h) {
      for (index_t t = 0; t < n; ++t) {
        copy_row(keys.row(h, t), k.row(h, l.length + t), head_dim_);
        copy_row(values.row(h, t), v.row(h, l.length + t), head_dim_);
        l.positions[static_cast<std::size_t>(h * capacity_ + l.length + t)] =
            positions.extent(0) ? positions[t] : l.appended + t;
      }
    }
    l.length += n;
    l.appended += n;
  }
  template <class U>
  void append(index_t layer, kv_view<U> keys, kv_view<U> values, vector_view<const index_t> positions = {}) {
    append(layer, kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  // Token-granular eviction: keep (indices into the layer's tokens, shared
  // or one uniform row per head) moves to the front. Checked first.
  void evict_tokens(index_t layer, const keep_view& keep) {
    layer_data& l = at(layer);
    validate_keep(keep, heads_, l.length, "contiguous_cache::evict_tokens");
    kvcrush::detail::require(keep_is_uniform(keep), "contiguous_cache::evict_tokens: per-head keep sets of different "
                             "lengths (head-wise budgets) need one length per head; use compact() on per-head views");
    impl::compact_rows(view_of(l.keys.data(), l.length), keep);
    impl::compact_rows(view_of(l.values.data(), l.length), keep);
    impl::compact_positions(make_matrix_view<index_t>(l.positions.data(), heads_, l.length, capacity_), keep);
    l.length = keep.count(0);
  }

  // Block-granular eviction: the kept blocks (sorted indices of block_size
  // tokens) move to the front.
  void evict_blocks(index_t layer, vector_view<const index_t> blocks, index_t block_size) {
    layer_data& l = at(layer);
    l.length = compact_blocks(view_of(l.keys.data(), l.length), view_of(l.values.data(), l.length), blocks,
                              block_size, make_matrix_view<index_t>(l.positions.data(), heads_, l.length, capacity_));
  }

  void clear(index_t layer) {
    at(layer).length = 0;
    at(layer).appended = 0;
  }

 private:
  struct layer_data {
    std::vector<T> keys, values;
    std::vector<index_t> positions;
    index_t length = 0, appended = 0;
  };

  layer_data& at(index_t layer) {
    kvcrush::detail::require(layer >= 0 && layer < layers(), "contiguous_cache: layer ", layer, " out of range [0, ",
                             layers(), ")");
    return layers_[static_cast<std::size_t>(layer)];
  }
  const layer_data& at(index_t layer) const { return const_cast<contiguous_cache*>(this)->at(layer); }

  template <class P>
  kv_view<P> view_of(P* data, index_t tokens) const {
    return layout_ == kv_layout::head_token_dim ? make_head_token_dim(data, heads_, tokens, head_dim_, capacity_)
                                                : make_token_head_dim(data, tokens, heads_, head_dim_);
  }

  index_t heads_, head_dim_, capacity_;
  kv_layout layout_;
  std::vector<layer_data> layers_;
};

// The same interface over an engine's own buffers (non-owning): per layer,
// K and V views over the whole capacity, the engine's token count, and
// optionally its positions (1 or H rows). Evictions compact those buffers in
// place and update the engine's count, so the eviction controller can drive
// an engine that keeps its cache in its own structures.
template <class T>
class contiguous_cache_ref {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "storage must be float, float16 or bfloat16");

 public:
  using storage_type = T;

  struct layer_ref {
    kv_view<T> keys, values;         // (kv_heads, capacity, head_dim)
    index_t* length = nullptr;       // tokens in use, owned by the engine
    matrix_view<index_t> positions;  // optional: (1 or kv_heads, >= capacity)
  };

  contiguous_cache_ref(index_t layers, index_t kv_heads) : heads_(kv_heads) {
    kvcrush::detail::require(layers >= 1 && kv_heads >= 1, "contiguous_cache_ref: layers and kv_heads must be >= 1");
    layers_.resize(static_cast<std::size_t>(layers));
  }

  // Points `layer` at the engine's buffers (checked here, once).
  void bind(index_t layer, const layer_ref& ref) {
    using kvcrush::detail::require;
    check_layer(layer);
    require(ref.length != nullptr, "contiguous_cache_ref::bind: layer ", layer, " has no length");
    require(ref.keys.heads() == heads_ && ref.values.heads() == heads_ && ref.values.tokens() == ref.keys.tokens(),
            "contiguous_cache_ref::bind: keys and values must be (", heads_, " heads, same capacity)");
    require(*ref.length >= 0 && *ref.length <= ref.keys.tokens(), "contiguous_cache_ref::bind: length ", *ref.length,
            " outside the capacity ", ref.keys.tokens());
    require(ref.positions.extent(0) == 0 ||
                ((ref.positions.extent(0) == 1 || ref.positions.extent(0) == heads_) &&
                 ref.positions.extent(1) >= ref.keys.tokens()),
            "contiguous_cache_ref::bind: positions must be (1 or ", heads_, ", >= capacity)");
    layers_[static_cast<std::size_t>(layer)] = ref;
  }

  index_t layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  index_t kv_heads() const noexcept { return heads_; }
  index_t block_size() const noexcept { return 1; }
  index_t length(index_t layer) const { return *bound(layer).length; }
  kv_view<const T> keys(index_t layer) const { return bound(layer).keys.first_tokens(length(layer)); }

  void evict_tokens(index_t layer, const keep_view& keep) {
    const layer_ref& l = bound(layer);
    const index_t n = *l.length;
    validate_keep(keep, heads_, n, "contiguous_cache_ref::evict_tokens");
    kvcrush::detail::require(keep_is_uniform(keep), "contiguous_cache_ref::evict_tokens: per-head keep sets must "
                             "hold the same number of tokens (the engine keeps one length per layer)");
    kvcrush::detail::require(keep.is_shared() || l.positions.extent(0) != 1 || heads_ == 1,
                             "contiguous_cache_ref::evict_tokens: per-head keep sets need one positions row per head");
    impl::compact_rows(l.keys.first_tokens(n), keep);
    impl::compact_rows(l.values.first_tokens(n), keep);
    if (l.positions.extent(0) != 0) impl::compact_positions(l.positions.slice(1, 0, n), keep);
    *l.length = keep.count(0);
  }

  void evict_blocks(index_t layer, vector_view<const index_t> blocks, index_t block_size) {
    const layer_ref& l = bound(layer);
    const index_t n = *l.length;
    matrix_view<index_t> positions = l.positions.extent(0) != 0 ? l.positions.slice(1, 0, n) : matrix_view<index_t>{};
    *l.length = compact_blocks(l.keys.first_tokens(n), l.values.first_tokens(n), blocks, block_size, positions);
  }

 private:
  void check_layer(index_t layer) const {
    kvcrush::detail::require(layer >= 0 && layer < layers(), "contiguous_cache_ref: layer ", layer,
                             " out of range [0, ", layers(), ")");
  }
  const layer_ref& bound(index_t layer) const {
    check_layer(layer);
    const layer_ref& l = layers_[static_cast<std::size_t>(layer)];
    kvcrush::detail::require(l.length != nullptr, "contiguous_cache_ref: layer ", layer, " is not bound");
    return l;
  }

  index_t heads_;
  std::vector<layer_ref> layers_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

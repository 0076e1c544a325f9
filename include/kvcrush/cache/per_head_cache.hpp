// A cache whose KV heads hold different numbers of tokens: one single-head
// contiguous_cache<T> per KV head, so that AdaKV's head-wise (ragged)
// budgets can be held while decoding (eviction_controller with an +adakv
// policy drives it head by head).
//
// Per layer and KV head it has its own length, rows and positions. Appending
// adds one row to every head (the engine computes K/V for all heads of a
// token); eviction takes a ragged keep set (one row per head, any counts) or
// one head's keep set. The layer-wide calls (length(layer), evict_tokens with
// a shared or uniform keep set) are those of contiguous_cache and need every
// head at one length, which is checked.
//
// Layers are independent: calls on different layers may run concurrently.
#pragma once

#include <memory>
#include <vector>

#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

template <class T = float>
class per_head_cache {
 public:
  using storage_type = T;

  per_head_cache(index_t layers, index_t kv_heads, index_t head_dim, index_t capacity) : head_dim_(head_dim) {
    kvcrush::detail::require(kv_heads >= 1, "per_head_cache: kv_heads (", kv_heads, ") must be >= 1");
    for (index_t h = 0; h < kv_heads; ++h) {
      heads_.push_back(std::make_unique<contiguous_cache<T>>(layers, 1, head_dim, capacity, kv_layout::head_token_dim));
    }
  }

  index_t layers() const noexcept { return heads_.front()->layers(); }
  index_t kv_heads() const noexcept { return static_cast<index_t>(heads_.size()); }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t capacity() const noexcept { return heads_.front()->capacity(); }
  index_t block_size() const noexcept { return 1; }

  // The single-head cache of KV head h.
  contiguous_cache<T>& head(index_t h) { return *heads_.at(checked(h)); }
  const contiguous_cache<T>& head(index_t h) const { return *heads_.at(checked(h)); }

  // Tokens KV head h of a layer holds.
  index_t length(index_t layer, index_t h) const { return head(h).length(layer); }
  // The layer's length when every head holds the same number of tokens.
  index_t length(index_t layer) const {
    const index_t n = length(layer, 0);
    for (index_t h = 1; h < kv_heads(); ++h) {
      kvcrush::detail::require(length(layer, h) == n, "per_head_cache: the heads of layer ", layer,
                               " hold different numbers of tokens (head 0: ", n, ", head ", h, ": ",
                               length(layer, h), "); ask per head");
    }
    return n;
  }

  // Head h's rows, (1, length(layer, h), head_dim), and their positions.
  kv_view<const T> keys(index_t layer, index_t h) const { return head(h).keys(layer); }
  kv_view<const T> values(index_t layer, index_t h) const { return head(h).values(layer); }
  matrix_view<const index_t> positions(index_t layer, index_t h) const { return head(h).positions(layer); }

  // Appends tokens to every head: keys/values (kv_heads, tokens, head_dim),
  // positions as contiguous_cache::append. Checked for every head first.
  template <class U>
  void append(index_t layer, kv_view<const U> keys, kv_view<const U> values,
              vector_view<const index_t> positions = {}) {
    using kvcrush::detail::require;
    require(keys.heads() == kv_heads() && values.heads() == kv_heads(), "per_head_cache::append: ", keys.heads(),
            " heads of keys and ", values.heads(), " of values for ", kv_heads(), " KV heads");
    for (index_t h = 0; h < kv_heads(); ++h) {
      require(length(layer, h) + keys.tokens() <= capacity(), "per_head_cache::append: head ", h, " of layer ", layer,
              " holds ", length(layer, h), " of ", capacity(), " tokens, no room for ", keys.tokens(), " more");
    }
    for (index_t h = 0; h < kv_heads(); ++h) {
      head(h).append(layer, kv_view<const U>(keys.view().slice(0, h, 1), keys.layout()),
                     kv_view<const U>(values.view().slice(0, h, 1), values.layout()), positions);
    }
  }
  template <class U>
  void append(index_t layer, kv_view<U> keys, kv_view<U> values, vector_view<const index_t> positions = {}) {
    append(layer, kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  // Eviction with a shared keep set, or one row per head of any counts
  // (ragged): each head keeps its own row. Every row is checked against its
  // head's length before anything moves.
  void evict_tokens(index_t layer, const keep_view& keep) {
    using kvcrush::detail::require;
    require(keep.rows.extent(0) == 1 || keep.rows.extent(0) == kv_heads(), "per_head_cache::evict_tokens: ",
            keep.rows.extent(0), " keep rows for ", kv_heads(), " KV heads (give 1 or one per head)");
    for (index_t h = 0; h < kv_heads(); ++h) {
      validate_keep(row_of(keep, h), 1, length(layer, h), "per_head_cache::evict_tokens");
    }
    for (index_t h = 0; h < kv_heads(); ++h) head(h).evict_tokens(layer, row_of(keep, h));
  }
  // One head's eviction: keep is a shared keep set over that head's tokens.
  void evict_tokens(index_t layer, index_t h, const keep_view& keep) {
    kvcrush::detail::require(keep.rows.extent(0) == 1, "per_head_cache::evict_tokens: one head takes one keep row (",
                             keep.rows.extent(0), " given)");
    head(h).evict_tokens(layer, keep);
  }
  // Whole blocks of every head (heads at one length).
  void evict_blocks(index_t layer, vector_view<const index_t> blocks, index_t block_size) {
    length(layer);
    for (auto& c : heads_) c->evict_blocks(layer, blocks, block_size);
  }

  void clear(index_t layer) {
    for (auto& c : heads_) c->clear(layer);
  }

 private:
  std::size_t checked(index_t h) const {
    kvcrush::detail::require(h >= 0 && h < kv_heads(), "per_head_cache: KV head ", h, " out of range [0, ",
                             kv_heads(), ")");
    return static_cast<std::size_t>(h);
  }

  static keep_view row_of(const keep_view& keep, index_t h) {
    const index_t r = keep.row_of_head(h);
    return keep_view::shared(
        vector_view<const index_t>(keep.rows.data() + r * keep.rows.stride(0), {keep.count(r)}, {keep.rows.stride(1)}));
  }

  index_t head_dim_;
  std::vector<std::unique_ptr<contiguous_cache<T>>> heads_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// The engine's key/value cache, laid out for eviction.
//
// Per layer, keys and values live in [kv_head][token][head_dim] buffers with
// a fixed token capacity (the kvcrush head_token_dim layout, so library
// algorithms read them through kvcrush::kv_view without copies). Keys are
// stored already rotated by RoPE at their absolute position, and each cached
// row remembers that position: attention runs over the rows the cache holds,
// not over positions 0..pos, so rows can be removed (evicted) and decoding
// continues with a cache shorter than the sequence.
//
// Limitation: one length per layer. All KV heads of a layer hold the same
// rows, so eviction keeps one row set per layer (the library's shared keep
// sets). Per-head (ragged) keep sets need a length and a positions vector per
// KV head, and a kv_view per head since a kv_view has a single token extent;
// the attention loop already reads the length per layer in one place
// (engine.hpp), which is where a per-head length would be read.
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

class layer_cache {
 public:
  layer_cache(index_t kv_heads, index_t head_dim, index_t capacity)
      : kv_heads_(kv_heads),
        head_dim_(head_dim),
        capacity_(capacity),
        keys_(static_cast<std::size_t>(kv_heads * capacity * head_dim)),
        values_(keys_.size()) {
    if (kv_heads <= 0 || head_dim <= 0 || capacity <= 0) {
      throw std::invalid_argument("kvcrush_llama::layer_cache: kv_heads, head_dim and capacity must be positive");
    }
    positions_.reserve(static_cast<std::size_t>(capacity));
  }

  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t capacity() const noexcept { return capacity_; }
  // Rows (tokens) held; the same for every KV head of the layer.
  index_t length() const noexcept { return static_cast<index_t>(positions_.size()); }
  bool full() const noexcept { return length() == capacity_; }

  // (kv_head, token, dim) views of the rows held; the head stride is
  // capacity * head_dim. Keys are RoPE-rotated at their positions.
  kvcrush::kv_view<float> keys() { return view_of(keys_.data()); }
  kvcrush::kv_view<const float> keys() const { return view_of(keys_.data()); }
  kvcrush::kv_view<float> values() { return view_of(values_.data()); }
  kvcrush::kv_view<const float> values() const { return view_of(values_.data()); }

  // Absolute position of each row, ascending.
  kvcrush::vector_view<const index_t> positions() const {
    return kvcrush::make_vector_view(positions_.data(), length());
  }

  // Appends one token: key and value hold kv_heads * head_dim floats
  // ([head][dim]), the key already rotated at position. Throws
  // std::length_error when the cache is full.
  void append(const float* key, const float* value, index_t position) {
    if (full()) {
      throw std::length_error("kvcrush_llama::layer_cache: cache full (capacity " + std::to_string(capacity_) +
                              "); evict rows before appending");
    }
    const index_t row = length();
    for (index_t h = 0; h < kv_heads_; ++h) {
      std::memcpy(row_pointer(keys_.data(), h, row), key + h * head_dim_, row_bytes());
      std::memcpy(row_pointer(values_.data(), h, row), value + h * head_dim_, row_bytes());
    }
    positions_.push_back(position);
  }

  // Keeps only the given rows, in order, in every KV head (eviction of all
  // others). rows must be strictly ascending row indices in [0, length()),
  // e.g. a shared keep set from kvcrush::select_keep. Compacts in place.
  // Throws std::invalid_argument (leaving the cache unchanged) otherwise.
  void keep_rows(kvcrush::vector_view<const index_t> rows) {
    const index_t n = rows.extent(0);
    for (index_t i = 0; i < n; ++i) {
      const index_t r = rows[i];
      if (r < 0 || r >= length() || (i > 0 && r <= rows[i - 1])) {
        throw std::invalid_argument("kvcrush_llama::layer_cache::keep_rows: rows must be strictly ascending in [0, " +
                                    std::to_string(length()) + "); entry " + std::to_string(i) + " is " +
                                    std::to_string(r));
      }
    }
    // Ascending rows satisfy rows[i] >= i, so moving row rows[i] down to i
    // in increasing i never overwrites a row still to be moved.
    for (index_t i = 0; i < n; ++i) {
      const index_t from = rows[i];
      if (from == i) continue;
      for (index_t h = 0; h < kv_heads_; ++h) {
        std::memcpy(row_pointer(keys_.data(), h, i), row_pointer(keys_.data(), h, from), row_bytes());
        std::memcpy(row_pointer(values_.data(), h, i), row_pointer(values_.data(), h, from), row_bytes());
      }
      positions_[static_cast<std::size_t>(i)] = positions_[static_cast<std::size_t>(from)];
    }
    positions_.resize(static_cast<std::size_t>(n));
  }

  void keep_rows(const std::vector<index_t>& rows) {
    keep_rows(kvcrush::make_vector_view(rows.data(), static_cast<index_t>(rows.size())));
  }

  void clear() noexcept { positions_.clear(); }

 private:
  template <class T>
  kvcrush::kv_view<T> view_of(T* data) const {
    return kvcrush::make_head_token_dim(data, kv_heads_, length(), head_dim_, capacity_);
  }
  float* row_pointer(float* base, index_t head, index_t row) const noexcept {
    return base + (head * capacity_ + row) * head_dim_;
  }
  std::size_t row_bytes() const noexcept { return static_cast<std::size_t>(head_dim_) * sizeof(float); }

  index_t kv_heads_, head_dim_, capacity_;
  std::vector<float> keys_, values_;  // [kv_head][capacity][head_dim]
  std::vector<index_t> positions_;    // one per row held: its length is the cache length
};

// One layer_cache per transformer layer.
class kv_cache {
 public:
  kv_cache(index_t n_layers, index_t kv_heads, index_t head_dim, index_t capacity) {
    layers_.reserve(static_cast<std::size_t>(n_layers));
    for (index_t l = 0; l < n_layers; ++l) layers_.emplace_back(kv_heads, head_dim, capacity);
  }

  index_t n_layers() const noexcept { return static_cast<index_t>(layers_.size()); }
  layer_cache& layer(index_t l) { return layers_.at(static_cast<std::size_t>(l)); }
  const layer_cache& layer(index_t l) const { return layers_.at(static_cast<std::size_t>(l)); }

  void clear() noexcept {
    for (auto& layer : layers_) layer.clear();
  }

 private:
  std::vector<layer_cache> layers_;
};

}  // namespace kvcrush_llama

// In-place compaction of one layer's contiguous key/value cache.
//
// After an eviction the kept tokens move to the front, in position order:
// token keep[h][i] of head h becomes token i. Because keep sets are strictly
// increasing, keep[h][i] >= i, so walking i upwards never overwrites a row
// that is still to be read: the compaction needs no scratch memory. Rows are
// whole head_dim vectors (the dim stride is 1 in every kv_view), moved with
// memmove; runs of consecutive kept tokens move as one block when the layout
// makes them contiguous (a head's tokens in head_token_dim, whole tokens in
// a packed token_head_dim).
//
// Engines need the original position of each kept token (RoPE, relative
// position biases, debugging): an optional positions matrix (1 or H rows,
// >= tokens columns) is compacted with the same keep sets.
//
// Every argument is checked before the first byte moves; a bad keep set or
// shape throws std::invalid_argument and leaves the cache untouched.
#pragma once

#include <cstring>

#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Copies `bytes` bytes that may overlap; no call for empty moves (the
// pointers of an empty view may be null).
inline void move_bytes(void* dst, const void* src, std::size_t bytes) noexcept {
  if (bytes != 0 && dst != src) std::memmove(dst, src, bytes);
}

// True when the whole (head, dim) matrix of a token is one contiguous row
// (packed token_head_dim): a run of tokens is then one contiguous range.
template <class T>
bool tokens_are_packed(const kv_view<T>& v) noexcept {
  return v.heads() == 1 ? v.token_stride() == v.head_dim()
                        : (v.head_stride() == v.head_dim() && v.token_stride() == v.heads() * v.head_dim());
}

// Byte-level description of one head's rows: the first row and the
// distance between consecutive tokens, hoisted out of the per-run loop.
struct head_rows {
  unsigned char* base;
  std::ptrdiff_t token_bytes;  // distance between tokens
  std::size_t row_bytes;       // one head_dim vector
  bool contiguous;             // token_bytes == row_bytes: runs are one range

  template <class T>
  head_rows(const kv_view<T>& v, index_t head) noexcept
      : base(reinterpret_cast<unsigned char*>(v.view().data() + head * v.head_stride())),
        token_bytes(static_cast<std::ptrdiff_t>(v.token_stride() * static_cast<index_t>(sizeof(T)))),
        row_bytes(static_cast<std::size_t>(v.head_dim()) * sizeof(T)),
        contiguous(v.token_stride() == v.head_dim()) {}

  // Moves tokens [src, src + count) to [dst, dst + count), dst <= src.
  void move(index_t src, index_t dst, index_t count) const noexcept {
    if (src == dst || count == 0) return;
    if (contiguous) {
      move_bytes(base + dst * token_bytes, base + src * token_bytes, static_cast<std::size_t>(count) * row_bytes);
      return;
    }
    for (index_t i = 0; i < count; ++i) move_bytes(base + (dst + i) * token_bytes, base + (src + i) * token_bytes, row_bytes);
  }
};

template <class T>
void move_head_run(const kv_view<T>& v, index_t head, index_t src, index_t dst, index_t count) noexcept {
  head_rows(v, head).move(src, dst, count);
}

// Moves tokens [src, src + count) of every head to [dst, dst + count).
template <class T>
void move_token_run(const kv_view<T>& v, index_t src, index_t dst, index_t count) noexcept {
  if (src == dst || count == 0) return;
  if (tokens_are_packed(v)) {
    const auto token_bytes = static_cast<std::size_t>(v.heads() * v.head_dim()) * sizeof(T);
    T* base = v.view().data();
    move_bytes(base + dst * v.token_stride(), base + src * v.token_stride(),
               static_cast<std::size_t>(count) * token_bytes);
    return;
  }
  for (index_t h = 0; h < v.heads(); ++h) move_head_run(v, h, src, dst, count);
}

// Calls run(src, dst, length) for each maximal run of consecutive entries of
// one keep row: entries i..j-1 with keep[i+1] = keep[i] + 1 go to i..j-1.
template <class Run>
void for_each_keep_run(const keep_view& keep, index_t row, Run&& run) noexcept {
  const index_t count = keep.count(row);
  index_t i = 0;
  while (i < count) {
    const index_t start = keep.at(row, i);
    index_t j = i + 1;
    while (j < count && keep.at(row, j) == start + (j - i)) ++j;
    run(start, i, j - i);
    i = j;
  }
}

// The compaction itself, behind the boundary checks.
template <class T>
void compact_rows(const kv_view<T>& v, const keep_view& keep) noexcept {
  if (v.head_dim() == 0) return;
  // Shared sets over packed tokens: whole tokens move at once. Otherwise
  // one head at a time, so that each pass streams through one head's rows.
  if (keep.is_shared() && tokens_are_packed(v)) {
    for_each_keep_run(keep, 0, [&](index_t src, index_t dst, index_t n) { move_token_run(v, src, dst, n); });
    return;
  }
  for (index_t h = 0; h < v.heads(); ++h) {
    const head_rows rows(v, h);
    for_each_keep_run(keep, keep.row_of_head(h), [&rows](index_t src, index_t dst, index_t n) { rows.move(src, dst, n); });
  }
}

inline void compact_positions(const matrix_view<index_t>& positions, const keep_view& keep) noexcept {
  for (index_t r = 0; r < positions.extent(0); ++r) {
    index_t* row = positions.data() + r * positions.stride(0);
    const index_t s = positions.stride(1);
    const index_t k = keep.is_shared() ? 0 : r;
    const index_t count = keep.count(k);
    for (index_t i = 0; i < count; ++i) row[i * s] = row[keep.at(k, i) * s];
  }
}

template <class T>
void check_view(const kv_view<T>& v, index_t heads, index_t tokens, const char* what, const char* name) {
  kvcrush::detail::require(v.heads() == heads && v.tokens() == tokens, what, ": ", name, " view is (", v.heads(),
                           " heads, ", v.tokens(), " tokens), expected (", heads, ", ", tokens, ")");
}

inline void check_positions(const matrix_view<index_t>& positions, bool keep_shared, index_t heads, index_t tokens,
                            const char* what) {
  using kvcrush::detail::require;
  if (positions.data() == nullptr && positions.extent(0) == 0) return;
  require(positions.extent(0) == 1 || positions.extent(0) == heads, what, ": positions have ", positions.extent(0),
          " rows; expected 1 (shared) or ", heads, " (one per KV head)");
  require(keep_shared || positions.extent(0) == heads || heads == 1, what,
          ": per-head keep sets need one positions row per KV head");
  require(positions.extent(1) >= tokens, what, ": positions hold ", positions.extent(1), " columns for ", tokens,
          " tokens");
}

// Keeps blocks (sorted block indices of block_size tokens) as one token
// keep set would, moving each block (and adjacent kept blocks together) as a
// run of tokens.
template <class Mover>
void for_each_block_run(vector_view<const index_t> blocks, index_t block_size, index_t tokens, Mover&& move) noexcept {
  index_t dst = 0;
  index_t i = 0;
  const index_t count = blocks.extent(0);
  while (i < count) {
    const index_t first = blocks[i];
    index_t j = i + 1;
    while (j < count && blocks[j] == first + (j - i)) ++j;
    const index_t src = first * block_size;
    const index_t end = blocks[j - 1] * block_size + block_size;
    const index_t length = (end < tokens ? end : tokens) - src;
    move(src, dst, length);
    dst += length;
    i = j;
  }
}

inline index_t blocks_to_tokens(vector_view<const index_t> blocks, index_t block_size, index_t tokens) noexcept {
  index_t total = 0;
  for (index_t i = 0; i < blocks.extent(0); ++i) {
    const index_t end = (blocks[i] + 1) * block_size;
    total += (end < tokens ? end : tokens) - blocks[i] * block_size;
  }
  return total;
}

}  // namespace impl

// Compacts one cache view in place: for every head h, token keep[h][i]
// becomes token i. Returns the longest row's new length (the length of every
// head for shared or uniform keep sets; head h holds keep.count(h) tokens).
// positions (optional; 1 or H rows, >= tokens columns) is compacted alike.
template <class Isa = isa::active, class T>
index_t compact(kv_view<T> cache, const keep_view& keep, matrix_view<index_t> positions = {}) {
  validate_keep(keep, cache.heads(), cache.tokens(), "compact");
  impl::check_positions(positions, keep.is_shared(), cache.heads(), cache.tokens(), "compact");
  impl::compact_rows(cache, keep);
  impl::compact_positions(positions, keep);
  return max_keep_count(keep);
}

// Keys and values of one layer with the same keep sets (head_dim and storage
// may differ between them). Both views are checked before either moves.
template <class Isa = isa::active, class K, class V>
index_t compact(kv_view<K> keys, kv_view<V> values, const keep_view& keep, matrix_view<index_t> positions = {}) {
  impl::check_view(values, keys.heads(), keys.tokens(), "compact", "values");
  validate_keep(keep, keys.heads(), keys.tokens(), "compact");
  impl::check_positions(positions, keep.is_shared(), keys.heads(), keys.tokens(), "compact");
  impl::compact_rows(keys, keep);
  impl::compact_rows(values, keep);
  impl::compact_positions(positions, keep);
  return max_keep_count(keep);
}

// Block granularity (SPEC 4.4): `blocks` holds the sorted indices of the
// kept blocks of block_size tokens (block j = tokens [j*b, (j+1)*b), the
// last one possibly partial), shared by every head. Returns the new length.
template <class Isa = isa::active, class K, class V>
index_t compact_blocks(kv_view<K> keys, kv_view<V> values, vector_view<const index_t> blocks, index_t block_size,
                       matrix_view<index_t> positions = {}) {
  using kvcrush::detail::require;
  require(block_size >= 1, "compact_blocks: block size must be >= 1 (got ", block_size, ")");
  impl::check_view(values, keys.heads(), keys.tokens(), "compact_blocks", "values");
  const index_t tokens = keys.tokens();
  const index_t units = (tokens + block_size - 1) / block_size;
  validate_keep(keep_view::shared(blocks), keys.heads(), units, "compact_blocks");
  impl::check_positions(positions, true, keys.heads(), tokens, "compact_blocks");
  impl::for_each_block_run(blocks, block_size, tokens, [&](index_t src, index_t dst, index_t n) {
    if (keys.head_dim() != 0) impl::move_token_run(keys, src, dst, n);
    if (values.head_dim() != 0) impl::move_token_run(values, src, dst, n);
    for (index_t r = 0; r < positions.extent(0); ++r) {
      for (index_t i = 0; i < n; ++i) positions(r, dst + i) = positions(r, src + i);
    }
  });
  return impl::blocks_to_tokens(blocks, block_size, tokens);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

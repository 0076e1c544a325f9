// RoPE re-rotation for engines that renumber positions after an eviction.
//
// Keys are cached already rotated by rotary position embedding at their
// position p. An engine that closes the gaps eviction leaves (so that the
// cache again reads as positions 0..n-1, e.g. to stay inside the trained
// context) must turn each kept key from p to its new position p': rotations
// compose, so rotating by p' - p does it without the unrotated key.
//
// Two pairings of dimensions are in use, both supported:
//   interleaved  pairs (2i, 2i+1)        llama2.c, Meta's reference code
//   half_split   pairs (i, i + r/2)      Hugging Face, GPT-NeoX
// Pair i turns by angle * theta^(-2i/r), r the rotary dimension (all of
// head_dim by default; less for partial rotary embeddings).
//
// Precision: frequencies and angles are computed in double, cos/sin rounded
// to float, the rotation itself in float, and the result stored in the
// cache's type. Rotating by p then re-rotating by p' - p matches rotating by
// p' directly within (per pair, relative to the pair's norm) about 1e-6 for
// float storage, 2e-3 for float16 and 1.6e-2 for bfloat16 (the storage
// rounding after each of the two rotations dominates). Engines whose own
// RoPE computes angles in float (llama2.c: pos * freq in float) carry an
// angle error of about ulp(pos * freq) in every key; re-rotation cannot
// reproduce that error, so such engines see differences of that order.
#pragma once

#include <cmath>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

enum class rope_style { interleaved, half_split };

struct rope_config {
  double theta = 10000.0;
  rope_style style = rope_style::half_split;
  index_t rotary_dim = 0;  // leading dimensions that rotate (even); 0: all of head_dim
};

// Largest rotary dimension the helpers handle (their tables live on the stack).
inline constexpr index_t rope_max_rotary_dim = 1024;

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

struct rope_tables {
  index_t pairs = 0;
  double inv_freq[rope_max_rotary_dim / 2];
  float cos[rope_max_rotary_dim / 2];
  float sin[rope_max_rotary_dim / 2];
  double angle_of = 0.0;  // the position delta cos/sin were computed for
  bool ready = false;

  rope_tables(index_t rotary_dim, double theta) noexcept : pairs(rotary_dim / 2) {
    for (index_t i = 0; i < pairs; ++i) {
      inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
    }
  }

  // cos/sin for a rotation by `delta` positions (cached: consecutive kept
  // tokens often share their shift).
  void prepare(double delta) noexcept {
    if (ready && delta == angle_of) return;
    for (index_t i = 0; i < pairs; ++i) {
      const double angle = delta * inv_freq[i];
      cos[i] = static_cast<float>(std::cos(angle));
      sin[i] = static_cast<float>(std::sin(angle));
    }
    angle_of = delta;
    ready = true;
  }
};

template <class T>
void rotate_row(T* row, const rope_tables& t, rope_style style) noexcept {
  const index_t half = t.pairs;
  for (index_t i = 0; i < half; ++i) {
    const index_t a = style == rope_style::interleaved ? 2 * i : i;
    const index_t b = style == rope_style::interleaved ? 2 * i + 1 : i + half;
    const float x = to_float(row[a]);
    const float y = to_float(row[b]);
    const float c = t.cos[i], s = t.sin[i];
    row[a] = from_float<T>(x * c - y * s);
    row[b] = from_float<T>(x * s + y * c);
  }
}

inline index_t rotary_dim_of(const rope_config& cfg, index_t head_dim, const char* what) {
  using kvcrush::detail::require;
  const index_t r = cfg.rotary_dim == 0 ? head_dim : cfg.rotary_dim;
  require(r >= 0 && r % 2 == 0 && r <= head_dim, what, ": rotary dimension ", r,
          " must be even and within head_dim ", head_dim);
  require(r <= rope_max_rotary_dim, what, ": rotary dimension ", r, " exceeds ", rope_max_rotary_dim);
  require(cfg.theta > 0.0 && std::isfinite(cfg.theta), what, ": theta must be positive and finite");
  return r;
}

inline void check_position_rows(const matrix_view<const index_t>& p, index_t heads, index_t tokens, const char* what,
                                const char* name) {
  kvcrush::detail::require((p.extent(0) == 1 || p.extent(0) == heads) && p.extent(1) >= tokens, what, ": ", name,
                           " must be (1 or ", heads, " rows, >= ", tokens, " columns), got (", p.extent(0), ", ",
                           p.extent(1), ")");
}

// Rotates key (h, t) by delta(h, t) positions.
template <class T, class Delta>
void rotate_keys(const kv_view<T>& keys, index_t rotary_dim, const rope_config& cfg, bool shared, Delta&& delta) {
  rope_tables tables(rotary_dim, cfg.theta);
  if (shared) {
    // One shift per token for every head: cos/sin once per token.
    for (index_t t = 0; t < keys.tokens(); ++t) {
      const double d = delta(0, t);
      if (d == 0.0) continue;
      tables.prepare(d);
      for (index_t h = 0; h < keys.heads(); ++h) rotate_row(keys.view().data() + h * keys.head_stride() + t * keys.token_stride(), tables, cfg.style);
    }
    return;
  }
  for (index_t h = 0; h < keys.heads(); ++h) {
    for (index_t t = 0; t < keys.tokens(); ++t) {
      const double d = delta(h, t);
      if (d == 0.0) continue;
      tables.prepare(d);
      rotate_row(keys.view().data() + h * keys.head_stride() + t * keys.token_stride(), tables, cfg.style);
    }
  }
}

}  // namespace impl

// Rotates one head vector (head_dim values) by `delta` positions in place.
// For engines with their own layouts (e.g. iterating paged blocks).
template <class Isa = isa::active, class T>
void rope_rotate(T* row, index_t head_dim, double delta, const rope_config& cfg = {}) {
  const index_t r = impl::rotary_dim_of(cfg, head_dim, "rope_rotate");
  if (delta == 0.0 || r == 0) return;
  impl::rope_tables tables(r, cfg.theta);
  tables.prepare(delta);
  impl::rotate_row(row, tables, cfg.style);
}

// Applies RoPE to unrotated keys: key (h, t) turns by positions(h, t)
// (positions: 1 row shared by every head, or one per KV head).
template <class Isa = isa::active, class T>
void rope_apply(kv_view<T> keys, matrix_view<const index_t> positions, const rope_config& cfg = {}) {
  const index_t r = impl::rotary_dim_of(cfg, keys.head_dim(), "rope_apply");
  impl::check_position_rows(positions, keys.heads(), keys.tokens(), "rope_apply", "positions");
  if (r == 0) return;
  const bool shared = positions.extent(0) == 1;
  impl::rotate_keys(keys, r, cfg, shared, [&](index_t h, index_t t) {
    return static_cast<double>(positions.data()[(shared ? 0 : h) * positions.stride(0) + t * positions.stride(1)]);
  });
}

// Re-rotates keys cached at positions `from` to positions `to` (rotation by
// to - from; tokens whose position does not change are not touched).
template <class Isa = isa::active, class T>
void rope_rerotate(kv_view<T> keys, matrix_view<const index_t> from, matrix_view<const index_t> to,
                   const rope_config& cfg = {}) {
  const index_t r = impl::rotary_dim_of(cfg, keys.head_dim(), "rope_rerotate");
  impl::check_position_rows(from, keys.heads(), keys.tokens(), "rope_rerotate", "from positions");
  impl::check_position_rows(to, keys.heads(), keys.tokens(), "rope_rerotate", "to positions");
  if (r == 0) return;
  const bool shared = from.extent(0) == 1 && to.extent(0) == 1;
  impl::rotate_keys(keys, r, cfg, shared, [&](index_t h, index_t t) {
    const index_t a = from.data()[(from.extent(0) == 1 ? 0 : h) * from.stride(0) + t * from.stride(1)];
    const index_t b = to.data()[(to.extent(0) == 1 ? 0 : h) * to.stride(0) + t * to.stride(1)];
    return static_cast<double>(b - a);
  });
}

// After a compaction: renumbers the kept keys to first_position + t (t = 0,
// 1, ...), re-rotating each from its cached position, and writes the new
// positions into `positions` (1 or H rows).
template <class Isa = isa::active, class T>
void rope_renumber(kv_view<T> keys, matrix_view<index_t> positions, index_t first_position = 0,
                   const rope_config& cfg = {}) {
  const index_t r = impl::rotary_dim_of(cfg, keys.head_dim(), "rope_renumber");
  impl::check_position_rows(positions, keys.heads(), keys.tokens(), "rope_renumber", "positions");
  const bool shared = positions.extent(0) == 1;
  if (r != 0) {
    impl::rotate_keys(keys, r, cfg, shared, [&](index_t h, index_t t) {
      const index_t p = positions.data()[(shared ? 0 : h) * positions.stride(0) + t * positions.stride(1)];
      return static_cast<double>(first_position + t - p);
    });
  }
  for (index_t row = 0; row < positions.extent(0); ++row) {
    for (index_t t = 0; t < keys.tokens(); ++t) positions.data()[row * positions.stride(0) + t * positions.stride(1)] = first_position + t;
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

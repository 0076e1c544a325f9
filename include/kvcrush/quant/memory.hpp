// Memory accounting for key/value caches: what a cache's K/V data occupies,
// in bytes, split by role, so that quantized, mixed-precision and plain
// caches can be compared at equal byte budgets.
//
// What is counted:
//   key_codes, value_codes   packed codes of quantized tokens
//   key_params, value_params their scales and zero-points
//   full_precision           K and V rows kept at full precision (the
//                            recent window, a full-precision tier, or the
//                            whole of a plain cache)
//   positions                metadata: the original position of every
//                            cached (head, token), sizeof(index_t) each
// kv_bytes() (everything but positions) is what byte budgets are expressed
// in: the positions cost the same per kept token whatever its precision,
// and an engine may not need them. total_bytes() adds them. Per-head
// counters and the fixed-size object itself are not counted. Bytes held,
// not capacity: a cache also reports bytes_reserved() separately.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "kvcrush/float16.hpp"
#include "kvcrush/quant_config.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct memory_usage {
  std::size_t key_codes = 0;
  std::size_t key_params = 0;
  std::size_t value_codes = 0;
  std::size_t value_params = 0;
  std::size_t full_precision = 0;
  std::size_t positions = 0;

  std::size_t kv_bytes() const noexcept { return key_codes + key_params + value_codes + value_params + full_precision; }
  std::size_t total_bytes() const noexcept { return kv_bytes() + positions; }

  memory_usage& operator+=(const memory_usage& o) noexcept {
    key_codes += o.key_codes;
    key_params += o.key_params;
    value_codes += o.value_codes;
    value_params += o.value_params;
    full_precision += o.full_precision;
    positions += o.positions;
    return *this;
  }
  friend memory_usage operator+(memory_usage a, const memory_usage& b) noexcept { return a += b; }
  // The same usage n times (e.g. one head's usage for every head).
  friend memory_usage operator*(memory_usage a, std::size_t n) noexcept {
    a.key_codes *= n;
    a.key_params *= n;
    a.value_codes *= n;
    a.value_params *= n;
    a.full_precision *= n;
    a.positions *= n;
    return a;
  }
  friend bool operator==(const memory_usage& a, const memory_usage& b) noexcept {
    return a.key_codes == b.key_codes && a.key_params == b.key_params && a.value_codes == b.value_codes &&
           a.value_params == b.value_params && a.full_precision == b.full_precision && a.positions == b.positions;
  }
  friend bool operator!=(const memory_usage& a, const memory_usage& b) noexcept { return !(a == b); }
};

// A plain (unquantized) cache: `tokens` tokens of `heads` KV heads, K and V
// rows of head_dim elements of T (float, float16 or bfloat16).
template <class T>
memory_usage plain_memory(index_t heads, index_t tokens, index_t head_dim) noexcept {
  static_assert(is_storage_type_v<T>, "plain caches store float, float16 or bfloat16");
  memory_usage m;
  const auto cells = static_cast<std::size_t>(heads) * static_cast<std::size_t>(tokens);
  m.full_precision = 2 * cells * static_cast<std::size_t>(head_dim) * sizeof(T);
  m.positions = cells * sizeof(index_t);
  return m;
}

// One layer of any cache with the shape accessors of contiguous_cache<T>
// (storage_type, kv_heads(), head_dim(), length(layer)).
template <class Cache>
memory_usage plain_cache_memory(const Cache& cache, index_t layer) {
  return plain_memory<typename Cache::storage_type>(cache.kv_heads(), cache.length(layer), cache.head_dim());
}

// A paged cache holds whole blocks: `blocks` blocks of block_size tokens
// (the last one possibly partly used still occupies a block).
template <class T>
memory_usage paged_memory(index_t heads, index_t blocks, index_t block_size, index_t head_dim) noexcept {
  return plain_memory<T>(heads, blocks * block_size, head_dim);
}

// Quantized storage of `groups` key groups (with their G value rows each)
// and `window` full-precision tokens of W, for one head.
template <class W>
memory_usage quantized_memory(const quant_layout& l, index_t groups, index_t window) noexcept {
  static_assert(is_storage_type_v<W>, "the window stores float, float16 or bfloat16");
  memory_usage m;
  const auto g = static_cast<std::size_t>(groups);
  const std::size_t rows = g * static_cast<std::size_t>(l.group);
  m.key_codes = g * l.key_group_code_bytes;
  m.key_params = g * l.key_group_param_bytes;
  m.value_codes = rows * l.value_row_bytes;
  m.value_params = rows * l.value_row_param_bytes;
  m.full_precision = 2 * static_cast<std::size_t>(window) * static_cast<std::size_t>(l.head_dim) * sizeof(W);
  m.positions = (rows + static_cast<std::size_t>(window)) * sizeof(index_t);
  return m;
}

// Key groups a layer holds after `tokens` tokens were appended to an empty
// one (no eviction): the window keeps R to R + G - 1 tokens.
inline index_t quantized_groups_for(const quant_config& cfg, index_t tokens) noexcept {
  return tokens >= cfg.window + cfg.group_size ? (tokens - cfg.window) / cfg.group_size : 0;
}

// The memory of a quantized layer of `heads` heads after `tokens` tokens
// were appended to it (no eviction): exactly what quantized_layer::memory()
// then reports.
template <class W>
memory_usage quantized_memory_for(const quant_config& cfg, index_t heads, index_t head_dim, index_t tokens) {
  const quant_layout l = quant_layout::make(cfg, head_dim);
  const index_t groups = quantized_groups_for(cfg, tokens);
  return quantized_memory<W>(l, groups, tokens - groups * cfg.group_size) * static_cast<std::size_t>(heads);
}

// The K/V bytes of a tier of a layer (all KV heads) as a function of the
// number of tokens it holds: full groups of `group` tokens cost group_bytes,
// each token past the last full group token_bytes. A full-precision tier is
// per token (group = 1); a quantized tier without window (R = 0) has the
// group size of its keys and keeps its partial last group at full
// precision. The cost need not grow monotonically (G - 1 full-precision
// tokens may cost more than one quantized group).
struct tier_cost {
  std::size_t group_bytes = 0;
  index_t group = 1;
  std::size_t token_bytes = 0;

  static tier_cost per_token(std::size_t bytes) noexcept { return {bytes, 1, bytes}; }

  std::size_t bytes(index_t tokens) const noexcept {
    const auto full = static_cast<std::size_t>(tokens / group), rest = static_cast<std::size_t>(tokens % group);
    return full * group_bytes + rest * token_bytes;
  }

  // The most tokens, at most `limit`, whose cost fits in `budget` bytes.
  // Larger groups counts always win (k groups hold more tokens than k - 1
  // groups and any remainder), so: the most full groups that fit, then the
  // most remaining tokens.
  index_t max_tokens(std::size_t budget, index_t limit) const noexcept {
    if (limit <= 0) return 0;
    const index_t most_groups = limit / group;
    index_t k = group_bytes == 0 ? most_groups : static_cast<index_t>(std::min<std::size_t>(budget / group_bytes, static_cast<std::size_t>(most_groups)));
    const index_t room = k == most_groups ? limit - k * group : group - 1;  // remaining tokens allowed after k groups
    const std::size_t left = budget - static_cast<std::size_t>(k) * group_bytes;
    const index_t rest = token_bytes == 0 ? room : static_cast<index_t>(std::min<std::size_t>(left / token_bytes, static_cast<std::size_t>(room)));
    return k * group + rest;
  }

  // The most tokens T, at most `limit`, such that every count up to T fits
  // in `budget` bytes: what a tier that grows and shrinks a token at a time
  // (decode-time eviction) may be sized to. max_tokens may answer k full
  // groups while k*G - 1 tokens (G - 1 of them at full precision) do not fit.
  index_t max_tokens_at_every_count(std::size_t budget, index_t limit) const noexcept {
    // Within group k the cost rises token by token, so the first count that
    // does not fit is the first one past budget in the first group where
    // that happens.
    for (index_t k = 0; k * group <= limit; ++k) {
      const std::size_t base = static_cast<std::size_t>(k) * group_bytes;
      if (base > budget) return std::min(limit, k * group - 1);
      const index_t fit = token_bytes == 0 ? group : static_cast<index_t>(std::min<std::size_t>(
                                                         (budget - base) / token_bytes + 1, static_cast<std::size_t>(group)));
      if (fit < group) return std::min(limit, k * group + fit - 1);
    }
    return limit;
  }
};

// Full-precision tokens of storage T: K and V rows of every head.
template <class T>
tier_cost full_precision_cost(index_t heads, index_t head_dim) noexcept {
  static_assert(is_storage_type_v<T>, "full precision is float, float16 or bfloat16");
  return tier_cost::per_token(2 * static_cast<std::size_t>(heads) * static_cast<std::size_t>(head_dim) * sizeof(T));
}

// A quantized tier of a layer without window (R = 0; cfg.window is not
// used): what quantized_layer<W> holding those tokens reports as kv_bytes.
template <class W>
tier_cost quantized_cost(const quant_config& cfg, index_t heads, index_t head_dim) {
  quant_config no_window = cfg;
  no_window.window = 0;
  const quant_layout l = quant_layout::make(no_window, head_dim);
  const auto h = static_cast<std::size_t>(heads);
  return {h * l.group_bytes(), cfg.group_size, full_precision_cost<W>(heads, head_dim).token_bytes};
}

// The most tokens a quantized layer (window included) can hold after
// appending them, within `budget` K/V bytes (eviction + quantization at an
// equal byte budget: evict down to this many tokens, then quantize).
// With k >= 1 groups the window holds R..R+G-1 tokens; more groups always
// hold more tokens, so: the most groups that fit with R window tokens, then
// the most window tokens; or no group and up to R + G - 1 window tokens.
template <class W>
index_t quantized_tokens_within(const quant_config& cfg, index_t heads, index_t head_dim, std::size_t budget) {
  const quant_layout l = quant_layout::make(cfg, head_dim);
  const auto h = static_cast<std::size_t>(heads);
  const std::size_t group_bytes = h * l.group_bytes();
  const std::size_t token_bytes = full_precision_cost<W>(heads, head_dim).token_bytes;
  const std::size_t window_floor = static_cast<std::size_t>(cfg.window) * token_bytes;
  const index_t most_window = cfg.window + cfg.group_size - 1;
  if (budget >= group_bytes + window_floor) {
    const auto k = static_cast<index_t>((budget - window_floor) / group_bytes);
    const std::size_t left = budget - static_cast<std::size_t>(k) * group_bytes;
    return k * cfg.group_size + static_cast<index_t>(std::min<std::size_t>(left / token_bytes, static_cast<std::size_t>(most_window)));
  }
  return static_cast<index_t>(std::min<std::size_t>(budget / token_bytes, static_cast<std::size_t>(most_window)));
}

// The most tokens T such that a quantized layer holding any count up to T
// stays within `budget` K/V bytes, however it got there (appending, or
// token or group eviction): for n tokens the layer holds the most bytes
// with the longest window (R + G - 1 at most, as after appending), so its
// bytes peak just before each group forms and a layer that evicts a token
// per step passes through those peaks. quantized_tokens_within answers a
// single count and may exceed this.
template <class W>
index_t quantized_tokens_at_every_count(const quant_config& cfg, index_t heads, index_t head_dim, std::size_t budget) {
  const quant_layout l = quant_layout::make(cfg, head_dim);
  const std::size_t group_bytes = static_cast<std::size_t>(heads) * l.group_bytes();
  const std::size_t token_bytes = full_precision_cost<W>(heads, head_dim).token_bytes;
  const index_t g = cfg.group_size, r = cfg.window;
  // k = 0: up to R + G - 1 window tokens; k >= 1: k groups and R..R+G-1.
  const auto fitting_window = [&](std::size_t base) {
    return static_cast<index_t>(std::min<std::size_t>((budget - base) / token_bytes, static_cast<std::size_t>(r + g - 1)));
  };
  index_t w = fitting_window(0);
  if (w < r + g - 1) return w;
  for (index_t k = 1;; ++k) {
    const std::size_t base = static_cast<std::size_t>(k) * group_bytes;
    if (base + static_cast<std::size_t>(r) * token_bytes > budget) return k * g + r - 1;
    w = fitting_window(base);
    if (w < r + g - 1) return k * g + w;
  }
}

}  // namespace kvcrush

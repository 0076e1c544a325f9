// Non-owning descriptions of one head's quantized keys and values, as the
// kernels read them (quant_config.hpp describes the byte layout). P is the
// parameter storage: float or float16.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// `groups` key groups of `group` tokens: group i's codes start at
// codes + i * head_dim * channel_bytes (channel c's codes at + c *
// channel_bytes), its scales and zero-points at scale/zero + i * head_dim.
template <class P>
struct key_group_span {
  const std::uint8_t* codes = nullptr;
  const P* scale = nullptr;
  const P* zero = nullptr;
  index_t groups = 0;
  index_t group = 0;     // tokens per group, a multiple of 16
  index_t head_dim = 0;
  int bits = 4;

  std::size_t channel_bytes() const noexcept {
    return (static_cast<std::size_t>(group) * static_cast<std::size_t>(bits)) / 8;
  }
  std::size_t group_code_bytes() const noexcept { return channel_bytes() * static_cast<std::size_t>(head_dim); }
  index_t tokens() const noexcept { return groups * group; }
};

// `rows` value rows: row t's codes at codes + t * row_bytes, its scales and
// zero-points at scale/zero + t * (head_dim / value_group).
template <class P>
struct value_row_span {
  const std::uint8_t* codes = nullptr;
  const P* scale = nullptr;
  const P* zero = nullptr;
  index_t rows = 0;
  index_t head_dim = 0;
  index_t value_group = 0;  // head_dim, or a multiple of 16 dividing it
  int bits = 4;

  std::size_t row_bytes() const noexcept {
    return (static_cast<std::size_t>(head_dim) * static_cast<std::size_t>(bits) + 7) / 8;
  }
  index_t groups_per_row() const noexcept { return head_dim / value_group; }
};

// Full-precision rows (the recent window, or a full-precision tier): row t
// at data + t * stride, head_dim elements of W (float, float16, bfloat16).
template <class W>
struct row_span {
  const W* data = nullptr;
  index_t stride = 0;
  index_t rows = 0;
  index_t head_dim = 0;

  const W* row(index_t t) const noexcept { return data + t * stride; }
};

}  // namespace kvcrush

// Configuration and memory layout of a group-quantized key/value cache (the
// KIVI arrangement, Liu et al. 2024):
//
//   keys    per channel, grouped along tokens: a group is G consecutive
//           tokens of one head; each of the head_dim channels has its own
//           scale and zero-point over those G tokens (keys have outlier
//           channels, so a channel's range is narrow and a token's is not);
//   values  per token: each token's head_dim vector, optionally split into
//           channel groups of value_group channels, has its own scale and
//           zero-point (attention mixes value rows token by token).
//
// Quantization is asymmetric: x ~ scale * code + zero with zero = the group
// minimum and code = round((x - zero) / scale) in [0, 2^bits - 1]. The most
// recent tokens (a window of R to R + G - 1 tokens) stay at full precision
// and are quantized G at a time as the window fills.
//
// Scales and zero-points are stored in float16 (the default, as KIVI does:
// half the bytes) or float32 (param_format). With float16 the zero-point is
// rounded down and the scale rounded up to float16, so that every element
// of the group still lies in [zero, zero + scale * qmax] and the error bound
// |x - dequant| <= scale / 2 (+ slack, see quant_params.hpp) holds with the
// stored scale; float16 parameters need |x| <= 65504.
//
// Byte layout (quant_layout computes every size):
//   key group    codes [channel][token]: channel c's G codes are contiguous,
//                G * bits / 8 bytes; then nothing else (scales and
//                zero-points live in their own arrays, [group][channel]).
//   value row    codes of one token, sequential over channels,
//                ceil(head_dim * bits / 8) bytes; parameters [token][group].
//   packing      int8: one code per byte. int4: element 2i in the low nibble
//                of byte i, element 2i+1 in the high nibble. int2: element
//                4i+k in bits 2k..2k+1 of byte i. Unused bits are zero.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcrush/error.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// How scales and zero-points are stored.
enum class param_format { float16, float32 };

inline const char* to_string(param_format f) noexcept { return f == param_format::float16 ? "float16" : "float32"; }

struct quant_config {
  int key_bits = 4;         // 2, 4 or 8
  int value_bits = 4;       // 2, 4 or 8
  index_t group_size = 32;  // G: tokens per key group; a multiple of 16 in [16, 256]
  index_t value_group = 0;  // channels per value group; 0: the whole head_dim
  index_t window = 128;     // R: recent tokens kept at full precision; a multiple of G
  param_format params = param_format::float16;
};

inline constexpr index_t max_quant_head_dim = 512;
inline constexpr index_t max_quant_group = 256;

inline constexpr bool valid_code_bits(int bits) noexcept { return bits == 2 || bits == 4 || bits == 8; }

// Largest code of a bit width: 3, 15 or 255.
inline constexpr int code_max(int bits) noexcept { return (1 << bits) - 1; }

// Bytes holding n codes of `bits` bits (packed, the last byte padded).
inline constexpr std::size_t packed_bytes(index_t n, int bits) noexcept {
  return (static_cast<std::size_t>(n) * static_cast<std::size_t>(bits) + 7) / 8;
}

// Channels per value group once value_group = 0 is resolved.
inline index_t resolved_value_group(const quant_config& cfg, index_t head_dim) noexcept {
  return cfg.value_group > 0 ? cfg.value_group : head_dim;
}

// Throws std::invalid_argument unless cfg works for heads of head_dim
// channels. SIMD kernels rely on: G a multiple of 16; value groups either
// the whole head or multiples of 16 channels.
inline void validate(const quant_config& cfg, index_t head_dim) {
  using detail::require;
  require(valid_code_bits(cfg.key_bits), "quant_config: key_bits must be 2, 4 or 8 (got ", cfg.key_bits, ")");
  require(valid_code_bits(cfg.value_bits), "quant_config: value_bits must be 2, 4 or 8 (got ", cfg.value_bits, ")");
  require(cfg.group_size >= 16 && cfg.group_size <= max_quant_group && cfg.group_size % 16 == 0,
          "quant_config: group_size must be a multiple of 16 in [16, ", max_quant_group, "] (got ", cfg.group_size,
          ")");
  require(cfg.window >= 0 && cfg.window % cfg.group_size == 0, "quant_config: window (", cfg.window,
          ") must be >= 0 and a multiple of group_size (", cfg.group_size, ")");
  require(head_dim >= 1 && head_dim <= max_quant_head_dim, "quant_config: head_dim must be in [1, ",
          max_quant_head_dim, "] (got ", head_dim, ")");
  const index_t vg = resolved_value_group(cfg, head_dim);
  require(vg >= 1 && head_dim % vg == 0, "quant_config: value_group (", cfg.value_group, ") must divide head_dim (",
          head_dim, ")");
  require(vg == head_dim || vg % 16 == 0, "quant_config: value_group (", vg,
          ") must be head_dim or a multiple of 16 channels");
}

// Every size of one head's quantized storage, from a validated config.
struct quant_layout {
  index_t head_dim = 0;
  index_t group = 0;          // G
  index_t value_group = 0;    // channels per value group
  index_t value_groups = 0;   // value groups per token
  index_t window = 0;         // R
  int key_bits = 0;
  int value_bits = 0;
  param_format params = param_format::float16;
  std::size_t param_bytes = 0;             // bytes of one scale (or zero-point)
  std::size_t key_channel_bytes = 0;       // codes of one channel of one key group
  std::size_t key_group_code_bytes = 0;    // codes of one key group
  std::size_t key_group_param_bytes = 0;   // scales + zero-points of one key group
  std::size_t value_row_bytes = 0;         // codes of one value row
  std::size_t value_row_param_bytes = 0;   // scales + zero-points of one value row

  static quant_layout make(const quant_config& cfg, index_t head_dim) {
    validate(cfg, head_dim);
    quant_layout l;
    l.head_dim = head_dim;
    l.group = cfg.group_size;
    l.value_group = resolved_value_group(cfg, head_dim);
    l.value_groups = head_dim / l.value_group;
    l.window = cfg.window;
    l.key_bits = cfg.key_bits;
    l.value_bits = cfg.value_bits;
    l.params = cfg.params;
    l.param_bytes = cfg.params == param_format::float16 ? 2 : 4;
    l.key_channel_bytes = packed_bytes(cfg.group_size, cfg.key_bits);
    l.key_group_code_bytes = l.key_channel_bytes * static_cast<std::size_t>(head_dim);
    l.key_group_param_bytes = 2 * l.param_bytes * static_cast<std::size_t>(head_dim);
    l.value_row_bytes = packed_bytes(head_dim, cfg.value_bits);
    l.value_row_param_bytes = 2 * l.param_bytes * static_cast<std::size_t>(l.value_groups);
    return l;
  }

  // Bytes of one quantized group of G tokens of one head, keys and values,
  // codes and parameters.
  std::size_t group_bytes() const noexcept {
    return key_group_code_bytes + key_group_param_bytes +
           static_cast<std::size_t>(group) * (value_row_bytes + value_row_param_bytes);
  }
};

}  // namespace kvcrush

// The arithmetic of group quantization, defined once so that every ISA
// produces the same bits (the SIMD kernels perform exactly these operations,
// lane by lane).
//
// For a group with minimum lo and maximum hi (both +0.0 when zero: min and
// max are exact but the sign of a zero depends on operand order, so it is
// canonicalised by adding +0.0f):
//   float32 parameters: zero = lo, scale = (hi - zero) / qmax
//   float16 parameters: zero = lo rounded down to float16,
//                       scale = (hi - zero) / qmax rounded up to float16
//   inv  = 1 / scale when scale >= FLT_MIN, else 0 (a group narrower than
//          qmax * FLT_MIN is stored as constant: every code 0)
//   code = (int) nearbyint(min((x - zero) * inv, qmax))   (x >= zero, so
//          the code is in [0, qmax]; round to nearest, ties to even)
//   dequant(code) = fma(scale, (float) code, zero)
// Error bound, for every element (tests check it):
//   |x - dequant(code(x))| <= scale / 2 + 2^-20 * (|zero| + qmax * scale)
//                             + 256 * FLT_MIN
// (the relative slack covers the roundings of x - zero, of inv and of the
// product, a few ulps of the group's magnitude; the absolute term covers
// groups stored as constant).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kvcrush/float16.hpp"
#include "kvcrush/quant_config.hpp"

namespace kvcrush {

// The decoded parameters of one group: what dequantization and the
// quantization of the group's elements use.
struct group_params {
  float scale = 0.0f;
  float zero = 0.0f;
  float inv = 0.0f;  // 1 / scale, or 0 for a constant group
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Next float16 towards -inf / +inf (finite inputs; -0 and +0 alike).
inline float16 float16_next_down(float16 h) noexcept {
  if ((h.bits & 0x7fffu) == 0) return {0x8001u};
  return {static_cast<std::uint16_t>((h.bits & 0x8000u) ? h.bits + 1u : h.bits - 1u)};
}
inline float16 float16_next_up(float16 h) noexcept {
  if ((h.bits & 0x7fffu) == 0) return {0x0001u};
  return {static_cast<std::uint16_t>((h.bits & 0x8000u) ? h.bits - 1u : h.bits + 1u)};
}

// Largest float16 <= x and smallest float16 >= x, for |x| <= 65504.
inline float16 float16_round_down(float x) noexcept {
  const float16 h = to_float16(x);
  return to_float(h) > x ? float16_next_down(h) : h;
}
inline float16 float16_round_up(float x) noexcept {
  const float16 h = to_float16(x);
  return to_float(h) < x ? float16_next_up(h) : h;
}

inline float load_param(float p) noexcept { return p; }
inline float load_param(float16 p) noexcept { return to_float(p); }

}  // namespace impl

// Parameters of a group from its minimum and maximum; writes the stored
// form (P = float or float16) to scale_out / zero_out and returns the
// decoded form. lo and hi are finite, lo <= hi, and within +-65504 for
// float16 parameters.
template <class P>
group_params make_group_params(float lo, float hi, int bits, P& scale_out, P& zero_out) noexcept {
  static_assert(std::is_same_v<P, float> || std::is_same_v<P, float16>, "parameters are float or float16");
  lo += 0.0f;
  hi += 0.0f;
  const auto qmax = static_cast<float>(code_max(bits));
  group_params g;
  if constexpr (std::is_same_v<P, float>) {
    g.zero = lo;
    g.scale = (hi - g.zero) / qmax;
    zero_out = g.zero;
    scale_out = g.scale;
  } else {
    zero_out = impl::float16_round_down(lo);
    g.zero = to_float(zero_out);
    scale_out = impl::float16_round_up((hi - g.zero) / qmax);
    g.scale = to_float(scale_out);
  }
  g.inv = g.scale >= FLT_MIN ? 1.0f / g.scale : 0.0f;
  return g;
}

// The decoded parameters of a stored group.
template <class P>
group_params load_group_params(P scale, P zero) noexcept {
  group_params g;
  g.scale = impl::load_param(scale);
  g.zero = impl::load_param(zero);
  g.inv = g.scale >= FLT_MIN ? 1.0f / g.scale : 0.0f;
  return g;
}

inline int quantize_value(float x, const group_params& g, float qmax) noexcept {
  const float y = (x - g.zero) * g.inv;
  return static_cast<int>(std::nearbyint(y < qmax ? y : qmax));
}

inline float dequantize_value(int code, const group_params& g) noexcept {
  return std::fma(g.scale, static_cast<float>(code), g.zero);
}

// The error bound above, for tests and callers that track errors.
inline float quantization_error_bound(const group_params& g, int bits) noexcept {
  const auto qmax = static_cast<float>(code_max(bits));
  return g.scale * 0.5f + 0x1p-20f * (std::fabs(g.zero) + qmax * g.scale) + 256.0f * FLT_MIN;
}

// Code i of a packed array of `bits`-bit codes (see config.hpp), and the
// store that sets it (the other codes of the byte are kept).
inline int packed_code(const std::uint8_t* codes, index_t i, int bits) noexcept {
  const index_t per_byte = 8 / bits;
  const auto shift = static_cast<unsigned>((i % per_byte) * bits);
  return (codes[i / per_byte] >> shift) & code_max(bits);
}

inline void set_packed_code(std::uint8_t* codes, index_t i, int bits, int code) noexcept {
  const index_t per_byte = 8 / bits;
  const auto shift = static_cast<unsigned>((i % per_byte) * bits);
  const auto mask = static_cast<unsigned>(code_max(bits)) << shift;
  std::uint8_t& b = codes[i / per_byte];
  b = static_cast<std::uint8_t>((b & ~mask) | ((static_cast<unsigned>(code) << shift) & mask));
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// Quantization kernels: one key group (per channel over G tokens) and value
// rows (per token, per channel group), with the arithmetic of
// quant_params.hpp. The scalar kernel is the oracle; the SIMD kernels
// (quant_encode_avx2.hpp, quant_encode_avx512.hpp) write the same bytes.
//
// Inputs are finite floats (the caches check before calling) within +-65504
// for float16 parameters.
#pragma once

#include <cstdint>
#include <cstring>

#include "kvcrush/quant_config.hpp"
#include "kvcrush/quant_params.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <class Isa>
struct quant_encode_kernel {
  static_assert(isa::compiled_v<Isa>,
                "quant_encode kernel requested for an ISA this translation unit is not compiled for");
};

template <>
struct quant_encode_kernel<isa::scalar> {
  // Key group: rows x + t * stride (t < group) of head_dim floats. Writes
  // head_dim * packed_bytes(group, bits) codes ([channel][token]) and
  // head_dim scales and zero-points.
  template <class P>
  static void keys(const float* KVCRUSH_RESTRICT x, index_t stride, index_t group, index_t head_dim, int bits,
                   std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale, P* KVCRUSH_RESTRICT zero) noexcept {
    const std::size_t channel_bytes = packed_bytes(group, bits);
    const auto qmax = static_cast<float>(code_max(bits));
    for (index_t c = 0; c < head_dim; ++c) {
      float lo = x[c], hi = x[c];
      for (index_t t = 1; t < group; ++t) {
        const float v = x[t * stride + c];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      const group_params g = make_group_params(lo, hi, bits, scale[c], zero[c]);
      std::uint8_t* out = codes + static_cast<std::size_t>(c) * channel_bytes;
      std::memset(out, 0, channel_bytes);
      for (index_t t = 0; t < group; ++t) set_packed_code(out, t, bits, quantize_value(x[t * stride + c], g, qmax));
    }
  }

  // Value rows: rows x + t * stride (t < rows) of head_dim floats. Row t's
  // codes go to codes + t * packed_bytes(head_dim, bits), its parameters to
  // scale/zero + t * (head_dim / value_group).
  template <class P>
  static void values(const float* KVCRUSH_RESTRICT x, index_t stride, index_t rows, index_t head_dim,
                     index_t value_group, int bits, std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale,
                     P* KVCRUSH_RESTRICT zero) noexcept {
    const std::size_t row_bytes = packed_bytes(head_dim, bits);
    const index_t groups = head_dim / value_group;
    const auto qmax = static_cast<float>(code_max(bits));
    for (index_t t = 0; t < rows; ++t) {
      const float* row = x + t * stride;
      std::uint8_t* out = codes + static_cast<std::size_t>(t) * row_bytes;
      std::memset(out, 0, row_bytes);
      for (index_t k = 0; k < groups; ++k) {
        const index_t c0 = k * value_group;
        float lo = row[c0], hi = row[c0];
        for (index_t c = c0 + 1; c < c0 + value_group; ++c) {
          lo = row[c] < lo ? row[c] : lo;
          hi = row[c] > hi ? row[c] : hi;
        }
        const group_params g = make_group_params(lo, hi, bits, scale[t * groups + k], zero[t * groups + k]);
        for (index_t c = c0; c < c0 + value_group; ++c) set_packed_code(out, c, bits, quantize_value(row[c], g, qmax));
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/quant_encode_avx2.hpp"
#include "kvcrush/simd/quant_encode_avx512.hpp"

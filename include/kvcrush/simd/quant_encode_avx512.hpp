// AVX-512 quantization kernels. Keys: per-channel minimum and maximum over
// the group's rows 16 channels at a time, their parameters 16 at a time
// (vcvtps2ph rounds toward -inf / +inf exactly as quant_params.hpp
// prescribes), then 16 x 16 tiles of rows transposed in registers so that
// each channel's 16 codes pack straight into the [channel][token] layout. Values: per-group minimum and maximum by
// a horizontal reduction, codes 16 channels at a time.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/static_switch.hpp"
#include "kvcrush/simd/quant_codes_avx512.hpp"
#include "kvcrush/simd/quant_encode.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quant_encode_kernel<isa::avx512> {
  template <class P>
  static void keys(const float* KVCRUSH_RESTRICT x, index_t stride, index_t group, index_t head_dim, int bits,
                   std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale, P* KVCRUSH_RESTRICT zero) noexcept {
    return with_code_bits(bits, [&](auto width) {
      return keys_bits<decltype(width)::value>(x, stride, group, head_dim, codes, scale, zero);
    });
  }

  template <class P>
  static void values(const float* KVCRUSH_RESTRICT x, index_t stride, index_t rows, index_t head_dim,
                     index_t value_group, int bits, std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale,
                     P* KVCRUSH_RESTRICT zero) noexcept {
    return with_code_bits(bits, [&](auto width) {
      return values_bits<decltype(width)::value>(x, stride, rows, head_dim, value_group, codes, scale, zero);
    });
  }

 private:
  template <int Bits, class P>
  static void keys_bits(const float* KVCRUSH_RESTRICT x, index_t stride, index_t group, index_t head_dim,
                        std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale,
                        P* KVCRUSH_RESTRICT zero) noexcept {
    namespace q = impl::quant_avx512;
    const index_t channel_bytes = group * Bits / 8;
    const __m512 qmax = _mm512_set1_ps(static_cast<float>(code_max(Bits)));
    alignas(64) float zeros[16];
    alignas(64) float invs[16];
    for (index_t c0 = 0; c0 < head_dim; c0 += 16) {
      const index_t channels = head_dim - c0 < 16 ? head_dim - c0 : 16;
      const __mmask16 m = q::lanes_mask(channels);
      // Minimum and maximum of 16 channels over the group's rows, then their
      // parameters, 16 at a time.
      __m512 vlo = _mm512_maskz_loadu_ps(m, x + c0);
      __m512 vhi = vlo;
      for (index_t t = 1; t < group; ++t) {
        const __m512 v = _mm512_maskz_loadu_ps(m, x + t * stride + c0);
        vlo = q::min_ps(vlo, v);
        vhi = q::max_ps(vhi, v);
      }
      __m512 vzero, vinv;
      q::group_params16(vlo, vhi, Bits, m, scale + c0, zero + c0, vzero, vinv);
      _mm512_store_ps(zeros, vzero);
      _mm512_store_ps(invs, vinv);
      // Codes: 16 x 16 tiles (tokens x channels) transposed in registers,
      // so that each channel's 16 tokens quantize and pack as one vector.
      for (index_t t0 = 0; t0 < group; t0 += 16) {
        __m512 tile[16];
        for (int i = 0; i < 16; ++i) tile[i] = _mm512_maskz_loadu_ps(m, x + (t0 + i) * stride + c0);
        q::transpose16(tile);
        for (index_t j = 0; j < channels; ++j) {
          const __m512i code = q::quantize16(tile[j], _mm512_set1_ps(zeros[j]), _mm512_set1_ps(invs[j]), qmax);
          q::store16<Bits>(codes + (c0 + j) * channel_bytes + t0 * Bits / 8, q::pack16<Bits>(code));
        }
      }
    }
  }

  template <int Bits, class P>
  static void values_bits(const float* KVCRUSH_RESTRICT x, index_t stride, index_t rows, index_t head_dim,
                          index_t value_group, std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale,
                          P* KVCRUSH_RESTRICT zero) noexcept {
    namespace q = impl::quant_avx512;
    const auto row_bytes = static_cast<index_t>(packed_bytes(head_dim, Bits));
    const index_t groups = head_dim / value_group;
    const __m512 qmax = _mm512_set1_ps(static_cast<float>(code_max(Bits)));
    for (index_t t = 0; t < rows; ++t) {
      const float* row = x + t * stride;
      std::uint8_t* out = codes + t * row_bytes;
      for (index_t k = 0; k < groups; ++k) {
        const index_t c0 = k * value_group, c1 = c0 + value_group;
        // Masked-off lanes take the group's first element: neutral for both.
        const __m512 first = _mm512_set1_ps(row[c0]);
        __m512 vlo = first, vhi = first;
        for (index_t c = c0; c < c1; c += 16) {
          const __m512 v = _mm512_mask_loadu_ps(first, q::lanes_mask(c1 - c), row + c);
          vlo = q::min_ps(vlo, v);
          vhi = q::max_ps(vhi, v);
        }
        const group_params g = make_group_params(q::reduce_min(vlo), q::reduce_max(vhi), Bits, scale[t * groups + k],
                                                 zero[t * groups + k]);
        const __m512 vzero = _mm512_set1_ps(g.zero), vinv = _mm512_set1_ps(g.inv);
        for (index_t c = c0; c < c1; c += 16) {
          const index_t lanes = c1 - c < 16 ? c1 - c : 16;
          const __mmask16 m = q::lanes_mask(lanes);
          // Lanes past the row end quantize as 0, so the padding bits are 0.
          const __m512i code = _mm512_maskz_mov_epi32(m, q::quantize16(_mm512_maskz_loadu_ps(m, row + c), vzero, vinv, qmax));
          const __m128i packed = q::pack16<Bits>(code);
          if (lanes == 16) {
            q::store16<Bits>(out + c * Bits / 8, packed);
          } else {
            q::store_bytes(out + c * Bits / 8, packed, (lanes * Bits + 7) / 8);
          }
        }
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512

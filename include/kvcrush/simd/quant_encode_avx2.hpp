// AVX2 quantization kernels: the AVX-512 structure (quant_encode_avx512.hpp)
// on 8-lane registers (8 x 8 register transposes for the key tiles); codes
// are packed 16 at a time from two registers. The parameters are computed
// by the scalar code of quant_params.hpp (AVX2 has no float16 conversion).
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/static_switch.hpp"
#include "kvcrush/simd/quant_codes_avx2.hpp"
#include "kvcrush/simd/quant_encode.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quant_encode_kernel<isa::avx2> {
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
    namespace q = impl::quant_avx2;
    // + 8: the last 8-channel store may run past head_dim.
    alignas(32) float lo[max_quant_head_dim + 8];
    alignas(32) float hi[max_quant_head_dim + 8];
    for (index_t c0 = 0; c0 < head_dim; c0 += 8) {
      const index_t channels = head_dim - c0 < 8 ? head_dim - c0 : 8;
      __m256 vlo = q::load_row(x + c0, channels);
      __m256 vhi = vlo;
      for (index_t t = 1; t < group; ++t) {
        const __m256 v = q::load_row(x + t * stride + c0, channels);
        vlo = _mm256_min_ps(vlo, v);
        vhi = _mm256_max_ps(vhi, v);
      }
      _mm256_store_ps(lo + c0, vlo);
      _mm256_store_ps(hi + c0, vhi);
    }
    const index_t channel_bytes = group * Bits / 8;
    const __m256 qmax = _mm256_set1_ps(static_cast<float>(code_max(Bits)));
    alignas(32) float zeros[max_quant_head_dim];
    alignas(32) float invs[max_quant_head_dim];
    for (index_t c = 0; c < head_dim; ++c) {
      const group_params g = make_group_params(lo[c], hi[c], Bits, scale[c], zero[c]);
      zeros[c] = g.zero;
      invs[c] = g.inv;
    }
    // Codes: 8 channels x 16 tokens at a time, as two 8 x 8 tiles transposed
    // in registers, so that each channel's 16 codes pack as one unit.
    for (index_t c0 = 0; c0 < head_dim; c0 += 8) {
      const index_t channels = head_dim - c0 < 8 ? head_dim - c0 : 8;
      for (index_t t0 = 0; t0 < group; t0 += 16) {
        __m256 first[8], second[8];
        for (int i = 0; i < 8; ++i) {
          first[i] = q::load_row(x + (t0 + i) * stride + c0, channels);
          second[i] = q::load_row(x + (t0 + 8 + i) * stride + c0, channels);
        }
        q::transpose8(first);
        q::transpose8(second);
        for (index_t j = 0; j < channels; ++j) {
          const __m256 vzero = _mm256_set1_ps(zeros[c0 + j]), vinv = _mm256_set1_ps(invs[c0 + j]);
          const __m128i packed = q::pack16<Bits>(q::quantize8(first[j], vzero, vinv, qmax), q::quantize8(second[j], vzero, vinv, qmax));
          impl::quant_bytes::store<Bits>(codes + (c0 + j) * channel_bytes + t0 * Bits / 8, packed);
        }
      }
    }
  }

  template <int Bits, class P>
  static void values_bits(const float* KVCRUSH_RESTRICT x, index_t stride, index_t rows, index_t head_dim,
                          index_t value_group, std::uint8_t* KVCRUSH_RESTRICT codes, P* KVCRUSH_RESTRICT scale,
                          P* KVCRUSH_RESTRICT zero) noexcept {
    namespace q = impl::quant_avx2;
    const auto row_bytes = static_cast<index_t>(packed_bytes(head_dim, Bits));
    const index_t groups = head_dim / value_group;
    const __m256 qmax = _mm256_set1_ps(static_cast<float>(code_max(Bits)));
    for (index_t t = 0; t < rows; ++t) {
      const float* row = x + t * stride;
      std::uint8_t* out = codes + t * row_bytes;
      for (index_t k = 0; k < groups; ++k) {
        const index_t c0 = k * value_group, c1 = c0 + value_group;
        const __m256 first = _mm256_set1_ps(row[c0]);
        __m256 vlo = first, vhi = first;
        for (index_t c = c0; c < c1; c += 8) {
          const index_t lanes = c1 - c;
          // Masked-off lanes take the group's first element: neutral for both.
          const __m256 v = lanes >= 8 ? _mm256_loadu_ps(row + c)
                                      : _mm256_blendv_ps(first, q::load_row(row + c, lanes),
                                                         _mm256_castsi256_ps(q::lanes_mask(lanes)));
          vlo = _mm256_min_ps(vlo, v);
          vhi = _mm256_max_ps(vhi, v);
        }
        const group_params g = make_group_params(q::reduce_min(vlo), q::reduce_max(vhi), Bits, scale[t * groups + k],
                                                 zero[t * groups + k]);
        const __m256 vzero = _mm256_set1_ps(g.zero), vinv = _mm256_set1_ps(g.inv);
        for (index_t c = c0; c < c1; c += 16) {
          const index_t lanes = c1 - c < 16 ? c1 - c : 16;
          // Lanes past the row end quantize as 0, so the padding bits are 0.
          const __m256i a = _mm256_and_si256(q::quantize8(q::load_row(row + c, lanes), vzero, vinv, qmax),
                                             q::lanes_mask(lanes));
          const __m256i b = lanes > 8 ? _mm256_and_si256(q::quantize8(q::load_row(row + c + 8, lanes - 8), vzero, vinv, qmax),
                                                         q::lanes_mask(lanes - 8))
                                      : _mm256_setzero_si256();
          const __m128i packed = q::pack16<Bits>(a, b);
          if (lanes == 16) {
            impl::quant_bytes::store<Bits>(out + c * Bits / 8, packed);
          } else {
            impl::quant_bytes::store_prefix(out + c * Bits / 8, packed, (lanes * Bits + 7) / 8);
          }
        }
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2

// AVX-512 building blocks of the quantization kernels: packing 16 codes
// into int8/int4/int2 bytes (the byte work is quant_bytes, shared with
// AVX2), unpacking them into 16 floats, loading
// float16/bfloat16 rows, and the fixed 16-lane reduction of quant_dot.hpp.
//
// GCC 12 starts the unmasked forms of most of these operations from
// _mm512_undefined_*() and may then warn (-Wmaybe-uninitialized); every
// one used here is the zero-masked form with a full mask, which computes
// the same lanes.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kvcrush/float16.hpp"
#include "kvcrush/simd/quant_codes_avx2.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::quant_avx512 {

constexpr __mmask16 all16 = 0xffff;

inline __mmask16 lanes_mask(index_t lanes) noexcept {
  return lanes >= 16 ? all16 : static_cast<__mmask16>((1u << lanes) - 1u);
}

inline __m512 min_ps(__m512 a, __m512 b) noexcept { return _mm512_maskz_min_ps(all16, a, b); }
inline __m512 max_ps(__m512 a, __m512 b) noexcept { return _mm512_maskz_max_ps(all16, a, b); }
inline __m512 to_float(__m512i x) noexcept { return _mm512_maskz_cvtepi32_ps(all16, x); }

// Horizontal minimum / maximum (exact in any order; the sign of a zero
// result is canonicalised by the caller).
inline float reduce_min(__m512 x) noexcept {
  __m256 h = _mm256_min_ps(_mm512_maskz_extractf32x8_ps(0xff, x, 0), _mm512_maskz_extractf32x8_ps(0xff, x, 1));
  __m128 q = _mm_min_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_min_ps(q, _mm_movehl_ps(q, q));
  q = _mm_min_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}
inline float reduce_max(__m512 x) noexcept {
  __m256 h = _mm256_max_ps(_mm512_maskz_extractf32x8_ps(0xff, x, 0), _mm512_maskz_extractf32x8_ps(0xff, x, 1));
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}

// The 16-lane tree of quant_dot.hpp: lane l + lane l+8, then + l+4, + l+2,
// + l+1.
inline float reduce_tree16(__m512 x) noexcept {
  const __m256 h = _mm256_add_ps(_mm512_maskz_extractf32x8_ps(0xff, x, 0), _mm512_maskz_extractf32x8_ps(0xff, x, 1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}

// codes = nearbyint(min((x - zero) * inv, qmax)) as 16 int32 lanes.
inline __m512i quantize16(__m512 x, __m512 zero, __m512 inv, __m512 qmax) noexcept {
  const __m512 y = min_ps(_mm512_mul_ps(_mm512_sub_ps(x, zero), inv), qmax);
  return _mm512_maskz_cvtps_epi32(all16, y);  // rounds to nearest even (MXCSR default)
}

// 16 codes (int32 lanes in [0, 2^Bits)) packed into the low 16 * Bits / 8
// bytes of the result, in the layout of quant/config.hpp.
template <int Bits>
__m128i pack16(__m512i codes) noexcept {
  return quant_bytes::pack<Bits>(_mm512_maskz_cvtepi32_epi8(all16, codes));
}

template <int Bits>
void store16(std::uint8_t* dst, __m128i packed) noexcept {
  quant_bytes::store<Bits>(dst, packed);
}

// The first `bytes` bytes only.
inline void store_bytes(std::uint8_t* dst, __m128i packed, index_t bytes) noexcept {
  _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << bytes) - 1u), packed);
}

// 16 codes as floats; the partial form reads only the bytes of `lanes`
// codes (the rest decode as 0).
template <int Bits>
__m512 decode16(const std::uint8_t* p) noexcept {
  return to_float(_mm512_maskz_cvtepu8_epi32(all16, quant_bytes::unpack<Bits>(quant_bytes::load<Bits>(p))));
}
template <int Bits>
__m512 decode16_partial(const std::uint8_t* p, index_t lanes) noexcept {
  const auto bytes = static_cast<unsigned>((lanes * Bits + 7) / 8);
  const __m128i x = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1u), p);
  return to_float(_mm512_maskz_cvtepu8_epi32(all16, quant_bytes::unpack<Bits>(x)));
}

// Up to 16 elements of a float, float16 or bfloat16 row as floats (exact
// conversions; masked-off lanes are 0 and are not read).
inline __m512 load_row(const float* p, __mmask16 m) noexcept { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_row(const float16* p, __mmask16 m) noexcept {
  return _mm512_maskz_cvtph_ps(all16, _mm256_maskz_loadu_epi16(m, p));
}
inline __m512 load_row(const bfloat16* p, __mmask16 m) noexcept {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(all16, _mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all16, wide, 16));
}

}  // namespace simd::quant_avx512
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512

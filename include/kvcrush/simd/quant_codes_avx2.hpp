// AVX2 building blocks of the quantization kernels, and the 128-bit byte
// packing both SIMD levels share (quant_bytes: SSSE3/SSE4.1 operations,
// present wherever AVX2 is).
//
// Packing 16 code bytes: int4 pairs (e0, e1) become e0 + 16 e1 with one
// pmaddubsw; int2 quads become (e0 + 4 e1) + 16 (e2 + 4 e3) with pmaddubsw
// then pmaddwd. Unpacking splits the bit fields into planes and interleaves
// them back into element order with unpacklo.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kvcrush/float16.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

namespace impl::quant_bytes {

// 16 code bytes (each < 2^Bits) packed into the low 16 * Bits / 8 bytes.
template <int Bits>
__m128i pack(__m128i b) noexcept {
  if constexpr (Bits == 8) {
    return b;
  } else if constexpr (Bits == 4) {
    const __m128i pairs = _mm_maddubs_epi16(b, _mm_set1_epi16(0x1001));
    return _mm_packus_epi16(pairs, pairs);
  } else {
    static_assert(Bits == 2, "2, 4 or 8 bits");
    const __m128i pairs = _mm_maddubs_epi16(b, _mm_set1_epi16(0x0401));
    const __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00100001));
    const __m128i words = _mm_packus_epi32(quads, quads);
    return _mm_packus_epi16(words, words);
  }
}

// The packed bytes of 16 codes (in the low bytes of x) as 16 code bytes.
template <int Bits>
__m128i unpack(__m128i x) noexcept {
  if constexpr (Bits == 8) {
    return x;
  } else if constexpr (Bits == 4) {
    const __m128i nibble = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(x, nibble);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), nibble);
    return _mm_unpacklo_epi8(lo, hi);
  } else {
    static_assert(Bits == 2, "2, 4 or 8 bits");
    const __m128i two = _mm_set1_epi8(0x03);
    const __m128i p0 = _mm_and_si128(x, two);
    const __m128i p1 = _mm_and_si128(_mm_srli_epi16(x, 2), two);
    const __m128i p2 = _mm_and_si128(_mm_srli_epi16(x, 4), two);
    const __m128i p3 = _mm_and_si128(_mm_srli_epi16(x, 6), two);
    return _mm_unpacklo_epi16(_mm_unpacklo_epi8(p0, p1), _mm_unpacklo_epi8(p2, p3));
  }
}

// Loads / stores the 16 * Bits / 8 bytes of 16 codes.
template <int Bits>
__m128i load(const std::uint8_t* p) noexcept {
  if constexpr (Bits == 8) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else if constexpr (Bits == 4) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  } else {
    int word;
    std::memcpy(&word, p, 4);
    return _mm_cvtsi32_si128(word);
  }
}

template <int Bits>
void store(std::uint8_t* dst, __m128i packed) noexcept {
  if constexpr (Bits == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), packed);
  } else if constexpr (Bits == 4) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), packed);
  } else {
    const int word = _mm_cvtsi128_si32(packed);
    std::memcpy(dst, &word, 4);
  }
}

// The first `bytes` (< 16) bytes of a register, through memory.
inline void store_prefix(std::uint8_t* dst, __m128i packed, index_t bytes) noexcept {
  alignas(16) std::uint8_t tmp[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(tmp), packed);
  std::memcpy(dst, tmp, static_cast<std::size_t>(bytes));
}
inline __m128i load_prefix(const std::uint8_t* p, index_t bytes) noexcept {
  alignas(16) std::uint8_t tmp[16] = {};
  std::memcpy(tmp, p, static_cast<std::size_t>(bytes));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}

}  // namespace impl::quant_bytes

namespace impl::quant_avx2 {

// Lane i is all ones when i < lanes.
inline __m256i lanes_mask(index_t lanes) noexcept {
  const int n = lanes >= 8 ? 8 : static_cast<int>(lanes);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float reduce_min(__m256 x) noexcept {
  __m128 q = _mm_min_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  q = _mm_min_ps(q, _mm_movehl_ps(q, q));
  q = _mm_min_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}
inline float reduce_max(__m256 x) noexcept {
  __m128 q = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  q = _mm_max_ps(q, _mm_movehl_ps(q, q));
  q = _mm_max_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}

// The 16-lane tree of quant_dot.hpp over lanes 0-7 (lo) and 8-15 (hi).
inline float reduce_tree16(__m256 lo, __m256 hi) noexcept {
  const __m256 h = _mm256_add_ps(lo, hi);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 0x55));
  return _mm_cvtss_f32(q);
}

// In place: r[i][j] -> r[j][i] for an 8 x 8 tile (24 shuffles).
inline void transpose8(__m256 (&r)[8]) noexcept {
  __m256 t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  // u[4k + m], 128-bit lane L: column 4L + m of rows 4k..4k+3.
  for (int k = 0; k < 2; ++k) {
    u[4 * k + 0] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
    u[4 * k + 1] = _mm256_shuffle_ps(t[4 * k], t[4 * k + 2], 0xee);
    u[4 * k + 2] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
    u[4 * k + 3] = _mm256_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xee);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

inline __m256i quantize8(__m256 x, __m256 zero, __m256 inv, __m256 qmax) noexcept {
  const __m256 y = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(x, zero), inv), qmax);
  return _mm256_cvtps_epi32(y);  // rounds to nearest even (MXCSR default)
}

// 16 codes in two registers (elements 0-7, 8-15) packed into bytes.
template <int Bits>
__m128i pack16(__m256i a, __m256i b) noexcept {
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
  const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
  return impl::quant_bytes::pack<Bits>(bytes);
}

// 16 code bytes as two registers of 8 floats.
inline void widen16(__m128i bytes, __m256& lo, __m256& hi) noexcept {
  lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
  hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8)));
}

template <int Bits>
void decode16(const std::uint8_t* p, __m256& lo, __m256& hi) noexcept {
  widen16(impl::quant_bytes::unpack<Bits>(impl::quant_bytes::load<Bits>(p)), lo, hi);
}
template <int Bits>
void decode16_partial(const std::uint8_t* p, index_t lanes, __m256& lo, __m256& hi) noexcept {
  widen16(impl::quant_bytes::unpack<Bits>(impl::quant_bytes::load_prefix(p, (lanes * Bits + 7) / 8)), lo, hi);
}

// The hot-loop decode: 16 codes as two registers in element order. int4 and
// int2 from broadcast 32-bit words and per-lane variable shifts (no
// shuffle-port work); int8 by zero extension.
template <int Bits>
void decode16_lanes(const std::uint8_t* p, __m256& lo, __m256& hi) noexcept {
  if constexpr (Bits == 8) {
    decode16<8>(p, lo, hi);
  } else if constexpr (Bits == 4) {
    std::uint32_t words[2];
    std::memcpy(words, p, 8);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i nibble = _mm256_set1_epi32(0x0f);
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(words[0])), shifts), nibble));
    hi = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(words[1])), shifts), nibble));
  } else {
    static_assert(Bits == 2, "2, 4 or 8 bits");
    std::uint32_t word;
    std::memcpy(&word, p, 4);
    const __m256i all = _mm256_set1_epi32(static_cast<int>(word));
    const __m256i two = _mm256_set1_epi32(0x03);
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(all, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)), two));
    hi = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(all, _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30)), two));
  }
}

// IEEE half to float without F16C (not part of the AVX2 level): the
// exponent and mantissa shifted into float position and scaled by 2^112 is
// exact for normal and subnormal halves; infinities and NaNs keep their
// mantissa under an all-ones exponent, as to_float(float16) does.
inline __m256 half_to_float(__m128i h) noexcept {
  const __m256i x = _mm256_cvtepu16_epi32(h);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x8000)), 16);
  const __m256i magnitude = _mm256_and_si256(x, _mm256_set1_epi32(0x7fff));
  const __m256i shifted = _mm256_slli_epi32(magnitude, 13);
  const __m256 finite = _mm256_mul_ps(_mm256_castsi256_ps(shifted), _mm256_set1_ps(0x1p112f));
  const __m256i special = _mm256_or_si256(shifted, _mm256_set1_epi32(0x7f800000));
  const __m256i is_special = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7bff));
  const __m256i bits = _mm256_blendv_epi8(_mm256_castps_si256(finite), special, is_special);
  return _mm256_castsi256_ps(_mm256_or_si256(bits, sign));
}

// Up to 8 elements of a float, float16 or bfloat16 row as floats;
// elements past `lanes` are 0 and not read.
inline __m256 load_row(const float* p, index_t lanes) noexcept {
  if (lanes >= 8) return _mm256_loadu_ps(p);
  return _mm256_maskload_ps(p, lanes_mask(lanes));
}
inline __m128i load_halves(const std::uint16_t* p, index_t lanes) noexcept {
  if (lanes >= 8) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) std::uint16_t tmp[8] = {};
  std::memcpy(tmp, p, static_cast<std::size_t>(lanes) * 2);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
}
inline __m256 load_row(const float16* p, index_t lanes) noexcept {
  return half_to_float(load_halves(&p->bits, lanes));
}
inline __m256 load_row(const bfloat16* p, index_t lanes) noexcept {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_halves(&p->bits, lanes)), 16));
}

}  // namespace impl::quant_avx2
}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2

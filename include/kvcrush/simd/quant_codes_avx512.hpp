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

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcrush/float16.hpp"
#include "kvcrush/simd/quant_codes_avx2.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::impl::quant_avx512 {

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

// In place: rows[i][j] -> rows[j][i] for a 16 x 16 tile (unpack pairs of
// rows, shuffle pairs of pairs inside 128-bit lanes, then two rounds of
// 128-bit lane shuffles: 64 shuffles).
inline void transpose16(__m512 (&r)[16]) noexcept {
  __m512 t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_maskz_unpacklo_ps(all16, r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_maskz_unpackhi_ps(all16, r[2 * k], r[2 * k + 1]);
  }
  // u[4k + m], 128-bit lane L: column 4L + m of rows 4k..4k+3.
  for (int k = 0; k < 4; ++k) {
    u[4 * k + 0] = _mm512_maskz_shuffle_ps(all16, t[4 * k], t[4 * k + 2], 0x44);
    u[4 * k + 1] = _mm512_maskz_shuffle_ps(all16, t[4 * k], t[4 * k + 2], 0xee);
    u[4 * k + 2] = _mm512_maskz_shuffle_ps(all16, t[4 * k + 1], t[4 * k + 3], 0x44);
    u[4 * k + 3] = _mm512_maskz_shuffle_ps(all16, t[4 * k + 1], t[4 * k + 3], 0xee);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 even_lo = _mm512_maskz_shuffle_f32x4(all16, u[m], u[4 + m], 0x88);      // lanes 0, 2 of rows 0-7
    const __m512 odd_lo = _mm512_maskz_shuffle_f32x4(all16, u[m], u[4 + m], 0xdd);       // lanes 1, 3 of rows 0-7
    const __m512 even_hi = _mm512_maskz_shuffle_f32x4(all16, u[8 + m], u[12 + m], 0x88);  // rows 8-15
    const __m512 odd_hi = _mm512_maskz_shuffle_f32x4(all16, u[8 + m], u[12 + m], 0xdd);
    r[m] = _mm512_maskz_shuffle_f32x4(all16, even_lo, even_hi, 0x88);
    r[8 + m] = _mm512_maskz_shuffle_f32x4(all16, even_lo, even_hi, 0xdd);
    r[4 + m] = _mm512_maskz_shuffle_f32x4(all16, odd_lo, odd_hi, 0x88);
    r[12 + m] = _mm512_maskz_shuffle_f32x4(all16, odd_lo, odd_hi, 0xdd);
  }
}

// make_group_params for 16 groups at once (lanes of lo / hi), with the
// same bits: IEEE conversion to float16 rounding toward -inf / +inf is the
// "largest half <= x" / "smallest half >= x" of quant_params.hpp. Stores
// the parameters (P) and returns zero and inv for the codes.
template <class P>
void group_params16(__m512 lo, __m512 hi, int bits, __mmask16 m, P* scale_out, P* zero_out, __m512& zero,
                    __m512& inv) noexcept {
  const __m512 plus_zero = _mm512_setzero_ps();
  lo = _mm512_add_ps(lo, plus_zero);
  hi = _mm512_add_ps(hi, plus_zero);
  const __m512 qmax = _mm512_set1_ps(static_cast<float>((1 << bits) - 1));
  __m512 scale;
  if constexpr (std::is_same_v<P, float>) {
    zero = lo;
    scale = _mm512_div_ps(_mm512_sub_ps(hi, zero), qmax);
    _mm512_mask_storeu_ps(zero_out, m, zero);
    _mm512_mask_storeu_ps(scale_out, m, scale);
  } else {
    const __m256i zero_h = _mm512_maskz_cvt_roundps_ph(all16, lo, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    zero = _mm512_maskz_cvtph_ps(all16, zero_h);
    const __m256i scale_h = _mm512_maskz_cvt_roundps_ph(all16, _mm512_div_ps(_mm512_sub_ps(hi, zero), qmax),
                                                        _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    scale = _mm512_maskz_cvtph_ps(all16, scale_h);
    _mm256_mask_storeu_epi16(zero_out, m, zero_h);
    _mm256_mask_storeu_epi16(scale_out, m, scale_h);
  }
  const __mmask16 normal = _mm512_cmp_ps_mask(scale, _mm512_set1_ps(FLT_MIN), _CMP_GE_OQ);
  inv = _mm512_maskz_div_ps(normal, _mm512_set1_ps(1.0f), scale);
}

// codes = nearbyint(min((x - zero) * inv, qmax)) as 16 int32 lanes.
inline __m512i quantize16(__m512 x, __m512 zero, __m512 inv, __m512 qmax) noexcept {
  const __m512 y = min_ps(_mm512_mul_ps(_mm512_sub_ps(x, zero), inv), qmax);
  return _mm512_maskz_cvtps_epi32(all16, y);  // rounds to nearest even (MXCSR default)
}

// 16 codes (int32 lanes in [0, 2^Bits)) packed into the low 16 * Bits / 8
// bytes of the result, in the layout of quant_config.hpp.
template <int Bits>
__m128i pack16(__m512i codes) noexcept {
  return impl::quant_bytes::pack<Bits>(_mm512_maskz_cvtepi32_epi8(all16, codes));
}

template <int Bits>
void store16(std::uint8_t* dst, __m128i packed) noexcept {
  impl::quant_bytes::store<Bits>(dst, packed);
}

// The first `bytes` bytes only.
inline void store_bytes(std::uint8_t* dst, __m128i packed, index_t bytes) noexcept {
  _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << bytes) - 1u), packed);
}

// 16 codes as floats; the partial form reads only the bytes of `lanes`
// codes (the rest decode as 0).
template <int Bits>
__m512 decode16(const std::uint8_t* p) noexcept {
  return to_float(_mm512_maskz_cvtepu8_epi32(all16, impl::quant_bytes::unpack<Bits>(impl::quant_bytes::load<Bits>(p))));
}
template <int Bits>
__m512 decode16_partial(const std::uint8_t* p, index_t lanes) noexcept {
  const auto bytes = static_cast<unsigned>((lanes * Bits + 7) / 8);
  const __m128i x = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << bytes) - 1u), p);
  return to_float(_mm512_maskz_cvtepu8_epi32(all16, impl::quant_bytes::unpack<Bits>(x)));
}

// The hot-loop decode: 16 codes as floats from one broadcast load and
// per-lane variable shifts (no shuffle-port work). int2 and int8 lanes are
// in element order; int4 lanes hold element 8 * (j % 2) + j / 2 (a 64-bit
// broadcast gives even lanes the low and odd lanes the high 32 bits), so
// sums kept per lane are put back in order once, with unshuffle16<4>.
template <int Bits>
__m512 decode16_lanes(const std::uint8_t* p) noexcept {
  if constexpr (Bits == 8) {
    return decode16<8>(p);
  } else if constexpr (Bits == 4) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    const __m512i shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i x = _mm512_maskz_srlv_epi32(all16, _mm512_set1_epi64(static_cast<long long>(word)), shifts);
    return to_float(_mm512_and_si512(x, _mm512_set1_epi32(0x0f)));
  } else {
    static_assert(Bits == 2, "2, 4 or 8 bits");
    std::uint32_t word;
    std::memcpy(&word, p, 4);
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i x = _mm512_maskz_srlv_epi32(all16, _mm512_set1_epi32(static_cast<int>(word)), shifts);
    return to_float(_mm512_and_si512(x, _mm512_set1_epi32(0x03)));
  }
}

// Lanes of decode16_lanes<Bits> order back to element order.
template <int Bits>
__m512 unshuffle16(__m512 x) noexcept {
  if constexpr (Bits == 4) {
    // element i < 8 sits in lane 2i, element 8 + i in lane 2i + 1
    const __m512i from = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm512_maskz_permutexvar_ps(all16, from, x);
  } else {
    return x;
  }
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

}  // namespace simd::impl::quant_avx512
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512

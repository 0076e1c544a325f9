// Force-included (-include) into kvcrush_tests_avx512_emulated, a test binary
// compiled for AVX2 hardware that nevertheless runs kvcrush's AVX-512 kernels:
// every AVX-512 intrinsic is redirected to SIMDe's portable implementation
// (SIMDE_ENABLE_NATIVE_ALIASES), or, for the few that SIMDe 0.7.4 lacks, to the
// plain per-lane definitions below, written from Intel's intrinsics guide.
//
// Why: CI and development machines without AVX-512 would otherwise only ever
// compile those kernels. Under emulation their logic (lane order, masks, tails,
// shuffles) is checked against the scalar kernel on any x86-64-v3 machine.
// Masked loads and stores touch only the selected lanes, so a kernel that
// relies on fault suppression is still exercised faithfully. Speed means
// nothing here; the native avx512 test binary remains the authority where the
// CPU has AVX-512.
//
// Nothing in include/ knows about this file. It works by defining the
// compiler's own feature macros (__AVX512F__ ...) after the real headers have
// been configured without them, so it must come before every other include:
// Eigen is included first for that reason (it would otherwise select its own
// AVX-512 code paths, which are not what is under test).
#pragma once

#if defined(__AVX512F__)
#error "avx512_on_simde.hpp is for builds without native AVX-512"
#endif

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/gfni.h>

namespace kvcrush_emulated {

// Lane access by memcpy: no aliasing questions, and no vector types as
// template arguments (GCC drops their alignment attributes there).
template <class Lane, int Count>
struct lanes {
  Lane v[Count];
};

template <class Lane, int Count, class Vector>
inline lanes<Lane, Count> to_lanes(const Vector& x) {
  static_assert(sizeof(lanes<Lane, Count>) == sizeof(Vector));
  lanes<Lane, Count> out;
  std::memcpy(out.v, &x, sizeof(Vector));
  return out;
}

template <class Vector, class Lane, int Count>
inline Vector from_lanes(const lanes<Lane, Count>& x) {
  static_assert(sizeof(lanes<Lane, Count>) == sizeof(Vector));
  Vector out;
  std::memcpy(&out, x.v, sizeof(Vector));
  return out;
}

inline bool selected(std::uint64_t mask, int lane) { return (mask >> lane & 1u) != 0; }

template <class Lane, int Count>
inline lanes<Lane, Count> zero_unselected(lanes<Lane, Count> x, std::uint64_t mask) {
  for (int i = 0; i < Count; ++i)
    if (!selected(mask, i)) x.v[i] = Lane{};
  return x;
}

template <class Lane, int Count>
inline lanes<Lane, Count> masked_load(lanes<Lane, Count> out, std::uint64_t mask, const void* from) {
  for (int i = 0; i < Count; ++i)
    if (selected(mask, i)) std::memcpy(&out.v[i], static_cast<const char*>(from) + i * sizeof(Lane), sizeof(Lane));
  return out;
}

template <class Lane, int Count>
inline void masked_store(void* to, std::uint64_t mask, const lanes<Lane, Count>& in) {
  for (int i = 0; i < Count; ++i)
    if (selected(mask, i)) std::memcpy(static_cast<char*>(to) + i * sizeof(Lane), &in.v[i], sizeof(Lane));
}

// Element-wise conversion of the selected lanes, zero elsewhere (C++ casts:
// truncation for narrowing integers, exact for the widening ones).
template <class To, class From, int Count>
inline lanes<To, Count> maskz_convert(std::uint64_t mask, const lanes<From, Count>& in) {
  lanes<To, Count> out;
  for (int i = 0; i < Count; ++i) out.v[i] = selected(mask, i) ? static_cast<To>(in.v[i]) : To{};
  return out;
}

// vcvtps2dq under the default MXCSR mode: nearest, ties to even; NaN and out
// of range give the "integer indefinite" 0x80000000.
inline std::int32_t float_to_int32_nearest(float x) {
  const float r = std::nearbyint(x);
  return (r >= -2147483648.0f && r < 2147483648.0f) ? static_cast<std::int32_t>(r) : INT32_MIN;
}

// vcvtps2ph with an immediate rounding mode. SIMDe converts to nearest
// whatever the immediate says, so the directed modes step that result by one
// float16 ulp when it lies on the wrong side of x.
inline std::uint16_t float_to_half_bits(float x, int rounding) {
  const simde_float16 nearest = simde_float16_from_float32(x);
  std::uint16_t h;
  std::memcpy(&h, &nearest, sizeof h);
  const float back = simde_float16_to_float32(nearest);
  if (std::isnan(x) || back == x) return h;
  const bool is_zero = (h & 0x7fffu) == 0;
  const bool negative = (h & 0x8000u) != 0;
  const auto toward_plus_inf = [&] { return static_cast<std::uint16_t>(is_zero ? 0x0001u : negative ? h - 1u : h + 1u); };
  const auto toward_minus_inf = [&] { return static_cast<std::uint16_t>(is_zero ? 0x8001u : negative ? h + 1u : h - 1u); };
  switch (rounding & 3) {
    case _MM_FROUND_TO_NEG_INF: return back > x ? toward_minus_inf() : h;
    case _MM_FROUND_TO_POS_INF: return back < x ? toward_plus_inf() : h;
    case _MM_FROUND_TO_ZERO: return (x > 0 && back > x) ? toward_minus_inf() : (x < 0 && back < x) ? toward_plus_inf() : h;
    default: return h;
  }
}

// vpcmpd's predicate immediate: EQ, LT, LE, FALSE, NE, NLT, NLE, TRUE.
inline std::uint32_t compare_int32(int predicate, std::int32_t a, std::int32_t b) {
  switch (predicate & 7) {
    case 0: return a == b;
    case 1: return a < b;
    case 2: return a <= b;
    case 3: return 0;
    case 4: return a != b;
    case 5: return a >= b;
    case 6: return a > b;
    default: return 1;
  }
}

inline __mmask16 mask_cmp_epi32_mask(__mmask16 mask, __m512i a, __m512i b, int predicate) {
  const auto x = to_lanes<std::int32_t, 16>(a);
  const auto y = to_lanes<std::int32_t, 16>(b);
  std::uint32_t out = 0;
  for (int i = 0; i < 16; ++i) out |= compare_int32(predicate, x.v[i], y.v[i]) << i;
  return static_cast<__mmask16>(out & mask);
}

inline __m512i mask_i64gather_epi64(__m512i src, __mmask8 mask, __m512i index, const void* base, int scale) {
  auto out = to_lanes<std::int64_t, 8>(src);
  const auto at = to_lanes<std::int64_t, 8>(index);
  for (int i = 0; i < 8; ++i)
    if (selected(mask, i)) std::memcpy(&out.v[i], static_cast<const char*>(base) + at.v[i] * scale, 8);
  return from_lanes<__m512i>(out);
}

inline void mask_i64scatter_epi64(void* base, __mmask8 mask, __m512i index, __m512i a, int scale) {
  const auto at = to_lanes<std::int64_t, 8>(index);
  const auto in = to_lanes<std::int64_t, 8>(a);
  for (int i = 0; i < 8; ++i)
    if (selected(mask, i)) std::memcpy(static_cast<char*>(base) + at.v[i] * scale, &in.v[i], 8);
}

inline __m512 mask3_fmadd_ps(__m512 a, __m512 b, __m512 c, __mmask16 mask) {
  const auto x = to_lanes<float, 16>(a);
  const auto y = to_lanes<float, 16>(b);
  auto z = to_lanes<float, 16>(c);
  for (int i = 0; i < 16; ++i)
    if (selected(mask, i)) z.v[i] = std::fma(x.v[i], y.v[i], z.v[i]);  // one rounding, as vfmadd
  return from_lanes<__m512>(z);
}

// The 256-bit half `which` of a 512-bit vector, selected 32-bit lanes only.
inline lanes<std::int32_t, 8> maskz_half(__mmask8 mask, const void* full, int which) {
  lanes<std::int32_t, 8> half;
  std::memcpy(half.v, static_cast<const char*>(full) + (which & 1) * sizeof half, sizeof half);
  return zero_unselected(half, mask);
}
inline __m256i maskz_extracti32x8_epi32(__mmask8 mask, __m512i a, int which) {
  return from_lanes<__m256i>(maskz_half(mask, &a, which));
}
inline __m256 maskz_extractf32x8_ps(__mmask8 mask, __m512 a, int which) {
  return from_lanes<__m256>(maskz_half(mask, &a, which));
}

inline __m512 maskz_cvtps_ph_to_ps(__mmask16 mask, __m256i halves) {
  const auto in = to_lanes<std::uint16_t, 16>(halves);
  lanes<float, 16> out;
  for (int i = 0; i < 16; ++i) {
    simde_float16 h;
    std::memcpy(&h, &in.v[i], sizeof h);
    out.v[i] = selected(mask, i) ? simde_float16_to_float32(h) : 0.0f;
  }
  return from_lanes<__m512>(out);
}

inline __m256i maskz_cvt_roundps_ph(__mmask16 mask, __m512 a, int rounding) {
  const auto in = to_lanes<float, 16>(a);
  lanes<std::uint16_t, 16> out;
  for (int i = 0; i < 16; ++i) out.v[i] = selected(mask, i) ? float_to_half_bits(in.v[i], rounding) : 0u;
  return from_lanes<__m256i>(out);
}

inline __m512i maskz_cvtps_epi32(__mmask16 mask, __m512 a) {
  const auto in = to_lanes<float, 16>(a);
  lanes<std::int32_t, 16> out;
  for (int i = 0; i < 16; ++i) out.v[i] = selected(mask, i) ? float_to_int32_nearest(in.v[i]) : 0;
  return from_lanes<__m512i>(out);
}

// vshuff32x4: 128-bit blocks, two picked from a then two from b.
inline __m512 maskz_shuffle_f32x4(__mmask16 mask, __m512 a, __m512 b, int imm) {
  const auto x = to_lanes<float, 16>(a);
  const auto y = to_lanes<float, 16>(b);
  lanes<float, 16> out;
  const int pick[4] = {imm & 3, imm >> 2 & 3, imm >> 4 & 3, imm >> 6 & 3};
  for (int block = 0; block < 4; ++block)
    for (int i = 0; i < 4; ++i) out.v[block * 4 + i] = (block < 2 ? x : y).v[pick[block] * 4 + i];
  return from_lanes<__m512>(zero_unselected(out, mask));
}

// vshufps: in every 128-bit block, two floats picked from a then two from b.
inline __m512 maskz_shuffle_ps(__mmask16 mask, __m512 a, __m512 b, int imm) {
  const auto x = to_lanes<float, 16>(a);
  const auto y = to_lanes<float, 16>(b);
  lanes<float, 16> out;
  for (int block = 0; block < 16; block += 4) {
    out.v[block + 0] = x.v[block + (imm & 3)];
    out.v[block + 1] = x.v[block + (imm >> 2 & 3)];
    out.v[block + 2] = y.v[block + (imm >> 4 & 3)];
    out.v[block + 3] = y.v[block + (imm >> 6 & 3)];
  }
  return from_lanes<__m512>(zero_unselected(out, mask));
}

inline __m512i maskz_slli_epi32(__mmask16 mask, __m512i a, unsigned shift) {
  auto x = to_lanes<std::uint32_t, 16>(a);
  for (auto& lane : x.v) lane = shift > 31 ? 0u : lane << shift;
  return from_lanes<__m512i>(zero_unselected(x, mask));
}

inline __m512i maskz_srlv_epi32(__mmask16 mask, __m512i a, __m512i shifts) {
  auto x = to_lanes<std::uint32_t, 16>(a);
  const auto by = to_lanes<std::uint32_t, 16>(shifts);
  for (int i = 0; i < 16; ++i) x.v[i] = by.v[i] > 31 ? 0u : x.v[i] >> by.v[i];
  return from_lanes<__m512i>(zero_unselected(x, mask));
}

}  // namespace kvcrush_emulated

// The intrinsics SIMDe 0.7.4 does not provide (the list is what kvcrush's
// AVX-512 kernels use; a new one fails to compile here, never silently).
// Each is #undef'd first: without optimisation GCC's own headers define the
// immediate-operand intrinsics as macros, which these replace.
#undef _cvtmask32_u32
#define _cvtmask32_u32(k) static_cast<std::uint32_t>(k)
#undef _cvtmask64_u64
#define _cvtmask64_u64(k) static_cast<std::uint64_t>(k)
#undef _mm512_kunpackw
#define _mm512_kunpackw(hi, lo) \
  static_cast<__mmask32>((static_cast<std::uint32_t>(hi) & 0xffffu) << 16 | (static_cast<std::uint32_t>(lo) & 0xffffu))
#undef _mm512_kunpackd
#define _mm512_kunpackd(hi, lo)                                                       \
  static_cast<__mmask64>((static_cast<std::uint64_t>(hi) & 0xffffffffu) << 32 | \
                         (static_cast<std::uint64_t>(lo) & 0xffffffffu))
#undef _mm512_mask_cmp_ps_mask
#define _mm512_mask_cmp_ps_mask(k, a, b, p) static_cast<__mmask16>((k) & simde_mm512_cmp_ps_mask(a, b, p))
#undef _mm512_mask_cmp_epi32_mask
#define _mm512_mask_cmp_epi32_mask(k, a, b, p) kvcrush_emulated::mask_cmp_epi32_mask(k, a, b, p)
#undef _mm512_i64gather_epi64
#define _mm512_i64gather_epi64(i, base, s) \
  kvcrush_emulated::mask_i64gather_epi64(simde_mm512_setzero_si512(), 0xff, i, base, s)
#undef _mm512_mask_i64gather_epi64
#define _mm512_mask_i64gather_epi64(src, k, i, base, s) kvcrush_emulated::mask_i64gather_epi64(src, k, i, base, s)
#undef _mm512_mask_i64scatter_epi64
#define _mm512_mask_i64scatter_epi64(base, k, i, a, s) kvcrush_emulated::mask_i64scatter_epi64(base, k, i, a, s)
#undef _mm512_mask3_fmadd_ps
#define _mm512_mask3_fmadd_ps(a, b, c, k) kvcrush_emulated::mask3_fmadd_ps(a, b, c, k)
#undef _mm512_mask_loadu_ps
#define _mm512_mask_loadu_ps(src, k, p) \
  kvcrush_emulated::from_lanes<__m512>(kvcrush_emulated::masked_load(kvcrush_emulated::to_lanes<float, 16>(src), k, p))
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps(k, p) \
  kvcrush_emulated::from_lanes<__m512>(kvcrush_emulated::masked_load(kvcrush_emulated::lanes<float, 16>{}, k, p))
#undef _mm512_maskz_loadu_epi64
#define _mm512_maskz_loadu_epi64(k, p) \
  kvcrush_emulated::from_lanes<__m512i>(kvcrush_emulated::masked_load(kvcrush_emulated::lanes<std::int64_t, 8>{}, k, p))
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16(k, p) \
  kvcrush_emulated::from_lanes<__m256i>(kvcrush_emulated::masked_load(kvcrush_emulated::lanes<std::int16_t, 16>{}, k, p))
#undef _mm_maskz_loadu_epi8
#define _mm_maskz_loadu_epi8(k, p) \
  kvcrush_emulated::from_lanes<__m128i>(kvcrush_emulated::masked_load(kvcrush_emulated::lanes<std::int8_t, 16>{}, k, p))
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps(p, k, a) kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<float, 16>(a))
#undef _mm512_mask_storeu_epi64
#define _mm512_mask_storeu_epi64(p, k, a) \
  kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int64_t, 8>(a))
#undef _mm512_mask_storeu_epi32
#define _mm512_mask_storeu_epi32(p, k, a) \
  kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int32_t, 16>(a))
#undef _mm256_mask_storeu_epi32
#define _mm256_mask_storeu_epi32(p, k, a) \
  kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int32_t, 8>(a))
#undef _mm256_mask_storeu_epi16
#define _mm256_mask_storeu_epi16(p, k, a) \
  kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int16_t, 16>(a))
#undef _mm512_mask_storeu_epi8
#define _mm512_mask_storeu_epi8(p, k, a) \
  kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int8_t, 64>(a))
#undef _mm_mask_storeu_epi8
#define _mm_mask_storeu_epi8(p, k, a) kvcrush_emulated::masked_store(p, k, kvcrush_emulated::to_lanes<std::int8_t, 16>(a))
#undef _mm512_maskz_extracti32x8_epi32
#define _mm512_maskz_extracti32x8_epi32(k, a, i) kvcrush_emulated::maskz_extracti32x8_epi32(k, a, i)
#undef _mm512_maskz_extractf32x8_ps
#define _mm512_maskz_extractf32x8_ps(k, a, i) kvcrush_emulated::maskz_extractf32x8_ps(k, a, i)
#undef _mm512_maskz_cvtepi32_ps
#define _mm512_maskz_cvtepi32_ps(k, a)                                                                  \
  kvcrush_emulated::from_lanes<__m512>(                                                                 \
      kvcrush_emulated::maskz_convert<float>(k, kvcrush_emulated::to_lanes<std::int32_t, 16>(a)))
// Float to double widens exactly; SIMDe 0.7.4 has no AVX-512 cvtps_pd.
#undef _mm512_maskz_cvtps_pd
#define _mm512_maskz_cvtps_pd(k, a) \
  kvcrush_emulated::from_lanes<__m512d>(kvcrush_emulated::maskz_convert<double>(k, kvcrush_emulated::to_lanes<float, 8>(a)))
#undef _mm512_maskz_cvtepi64_epi32
#define _mm512_maskz_cvtepi64_epi32(k, a)                                                                \
  kvcrush_emulated::from_lanes<__m256i>(                                                                 \
      kvcrush_emulated::maskz_convert<std::uint32_t>(k, kvcrush_emulated::to_lanes<std::uint64_t, 8>(a)))
#undef _mm512_maskz_cvtepi32_epi8
#define _mm512_maskz_cvtepi32_epi8(k, a)                                                                 \
  kvcrush_emulated::from_lanes<__m128i>(                                                                 \
      kvcrush_emulated::maskz_convert<std::uint8_t>(k, kvcrush_emulated::to_lanes<std::uint32_t, 16>(a)))
#undef _mm512_maskz_cvtepu16_epi32
#define _mm512_maskz_cvtepu16_epi32(k, a)                                                                \
  kvcrush_emulated::from_lanes<__m512i>(                                                                 \
      kvcrush_emulated::maskz_convert<std::int32_t>(k, kvcrush_emulated::to_lanes<std::uint16_t, 16>(a)))
#undef _mm512_cvtepu8_epi32
#define _mm512_cvtepu8_epi32(a) _mm512_maskz_cvtepu8_epi32(0xffff, a)
#undef _mm512_maskz_cvtepu8_epi32
#define _mm512_maskz_cvtepu8_epi32(k, a)                                                                 \
  kvcrush_emulated::from_lanes<__m512i>(                                                                 \
      kvcrush_emulated::maskz_convert<std::int32_t>(k, kvcrush_emulated::to_lanes<std::uint8_t, 16>(a)))
#undef _mm512_maskz_cvtps_epi32
#define _mm512_maskz_cvtps_epi32(k, a) kvcrush_emulated::maskz_cvtps_epi32(k, a)
#undef _mm512_maskz_cvtph_ps
#define _mm512_maskz_cvtph_ps(k, a) kvcrush_emulated::maskz_cvtps_ph_to_ps(k, a)
#undef _mm512_maskz_cvt_roundps_ph
#define _mm512_maskz_cvt_roundps_ph(k, a, r) kvcrush_emulated::maskz_cvt_roundps_ph(k, a, r)
#undef _mm512_maskz_shuffle_f32x4
#define _mm512_maskz_shuffle_f32x4(k, a, b, i) kvcrush_emulated::maskz_shuffle_f32x4(k, a, b, i)
#undef _mm512_maskz_shuffle_ps
#define _mm512_maskz_shuffle_ps(k, a, b, i) kvcrush_emulated::maskz_shuffle_ps(k, a, b, i)
#undef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4(a, b, i) kvcrush_emulated::maskz_shuffle_f32x4(0xffff, a, b, i)
#undef _mm512_shuffle_ps
#define _mm512_shuffle_ps(a, b, i) kvcrush_emulated::maskz_shuffle_ps(0xffff, a, b, i)
#undef _mm512_maskz_slli_epi32
#define _mm512_maskz_slli_epi32(k, a, i) kvcrush_emulated::maskz_slli_epi32(k, a, i)
#undef _mm512_maskz_srlv_epi32
#define _mm512_maskz_srlv_epi32(k, a, c) kvcrush_emulated::maskz_srlv_epi32(k, a, c)

// The feature macros the AVX-512 level of KVCRUSH_ISA_FLAGS_avx512 would set.
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define __AVX512VPOPCNTDQ__ 1
#define __AVX512VBMI__ 1
#define __GFNI__ 1

// isa::cpu_supports asks the CPU; under emulation every feature is present.
#define __builtin_cpu_supports(feature) (static_cast<void>(feature), true)

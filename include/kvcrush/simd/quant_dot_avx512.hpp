// AVX-512 dequantize-on-read kernels (the order of quant_dot.hpp).
//
// Key scores run across tokens: a tile is 16 tokens of one group (one
// register: lane = token), and up to 8 tiles are in flight so that eight
// independent fma chains hide the fma latency; for each channel the tile's
// 16 codes are unpacked, converted and multiplied by the broadcast q[c] *
// scale[c] of the tile's group. Value sums run across channels: 16 channels
// per register, up to 128 channels per pass over the tokens.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/static_switch.hpp"
#include "kvcrush/simd/quant_codes_avx512.hpp"
#include "kvcrush/simd/quant_dot.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quant_dot_kernel<isa::avx512> {
  template <class T>
  static float dot16(const float* KVCRUSH_RESTRICT a, const T* KVCRUSH_RESTRICT b, index_t n) noexcept {
    namespace q = impl::quant_avx512;
    __m512 acc = _mm512_setzero_ps();
    index_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), q::load_row(b + i, q::all16), acc);
    if (i < n) {
      // Lanes past the end keep their sum untouched (an fma with 0 would
      // turn a -0 lane into +0).
      const __mmask16 m = q::lanes_mask(n - i);
      acc = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), q::load_row(b + i, m), acc, m);
    }
    return q::reduce_tree16(acc);
  }

  template <class P>
  static void key_scores(const key_group_span<P>& k, const float* KVCRUSH_RESTRICT q, float* KVCRUSH_RESTRICT out) noexcept {
    return with_code_bits(k.bits, [&](auto bits) { return key_scores_bits<decltype(bits)::value>(k, q, out); });
  }

  template <class P>
  static void value_sum(const value_row_span<P>& v, const float* KVCRUSH_RESTRICT p, float* KVCRUSH_RESTRICT out) noexcept {
    return with_code_bits(v.bits, [&](auto bits) { return value_sum_bits<decltype(bits)::value>(v, p, out); });
  }

  template <class W>
  static void row_scores(const row_span<W>& r, const float* KVCRUSH_RESTRICT q, float* KVCRUSH_RESTRICT out) noexcept {
    for (index_t t = 0; t < r.rows; ++t) out[t] = dot16(q, r.row(t), r.head_dim);
  }

  template <class W>
  static void row_accumulate(const row_span<W>& r, const float* KVCRUSH_RESTRICT p, float* KVCRUSH_RESTRICT out) noexcept {
    for (index_t c0 = 0; c0 < r.head_dim; c0 += 128) {
      const index_t chunks = (r.head_dim - c0 + 15) / 16;
      with_count_up_to<8>(chunks, [&](auto count) { accumulate_tile<decltype(count)::value>(r, p, out, c0); });
    }
  }

 private:
  // Scales of a group times q, and the zero-point bias, for the key tiles.
  template <class P>
  static void group_prologue(const key_group_span<P>& k, index_t g, const float* q, float* qs, float& bias) noexcept {
    namespace qa = impl::quant_avx512;
    const index_t d = k.head_dim;
    const P* scale = k.scale + g * d;
    for (index_t c = 0; c < d; c += 16) {
      const __mmask16 m = qa::lanes_mask(d - c);
      _mm512_mask_storeu_ps(qs + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, q + c), qa::load_row(scale + c, m)));
    }
    bias = dot16(q, k.zero + g * d, d);
  }

  template <int Bits, int Tiles, class P>
  static void key_tiles(const key_group_span<P>& k, const float* q, index_t first_tile, float* out) noexcept {
    namespace qa = impl::quant_avx512;
    alignas(64) float qs[Tiles][max_quant_head_dim];
    float bias[Tiles] = {};
    const index_t per_group = k.group / 16;
    const index_t first_group = first_tile / per_group;
    const index_t channel_bytes = k.group * Bits / 8;
    const auto group_bytes = static_cast<index_t>(k.group_code_bytes());
    const std::uint8_t* base[Tiles];
    const float* tile_qs[Tiles];
    __m512 acc[Tiles];
    index_t prepared = -1;  // last group whose prologue ran (slot = group - first_group)
    for (int i = 0; i < Tiles; ++i) {
      const index_t tile = first_tile + i;
      const index_t g = tile / per_group;
      const auto slot = static_cast<int>(g - first_group);
      if (g != prepared) {
        group_prologue(k, g, q, qs[slot], bias[slot]);
        prepared = g;
      }
      base[i] = k.codes + g * group_bytes + (tile % per_group) * 16 * Bits / 8;
      tile_qs[i] = qs[slot];
      acc[i] = _mm512_set1_ps(bias[slot]);
    }
    for (index_t c = 0; c < k.head_dim; ++c) {
      for (int i = 0; i < Tiles; ++i) {
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(tile_qs[i][c]), qa::decode16_lanes<Bits>(base[i] + c * channel_bytes), acc[i]);
      }
    }
    for (int i = 0; i < Tiles; ++i) _mm512_storeu_ps(out + (first_tile + i) * 16, qa::unshuffle16<Bits>(acc[i]));
  }

  template <int Bits, class P>
  static void key_scores_bits(const key_group_span<P>& k, const float* q, float* out) noexcept {
    const index_t tiles = k.groups * (k.group / 16);
    index_t t = 0;
    for (; t + 8 <= tiles; t += 8) key_tiles<Bits, 8>(k, q, t, out);
    with_count_up_to<7>(tiles - t, [&](auto count) { key_tiles<Bits, decltype(count)::value>(k, q, t, out); });
  }

  // Channels [c0, c0 + 16 * Chunks) (the last chunk may be partial) of the
  // value sum; the first pass also accumulates every group's bias lanes
  // (bias_lanes[g][t % 16]) and reduces them into bias. Tokens go 16 at a
  // time: with one group per row, p[t] * scale[t] and the bias lanes are
  // one vector operation per 16 tokens.
  template <int Bits, int Chunks, class P>
  static void value_tile(const value_row_span<P>& v, const float* p, float* out, index_t c0, float (*bias_lanes)[16],
                         float* bias) noexcept {
    namespace qa = impl::quant_avx512;
    const index_t d = v.head_dim, gsize = v.value_group, groups = v.groups_per_row();
    const auto row_bytes = static_cast<index_t>(v.row_bytes());
    const bool first_pass = c0 == 0;
    const index_t last_lanes = d - (c0 + 16 * (Chunks - 1));  // lanes of the last chunk, 1..16
    __m512 acc[Chunks];
    for (int i = 0; i < Chunks; ++i) acc[i] = _mm512_setzero_ps();
    __m512 bias_vector = _mm512_loadu_ps(bias_lanes[0]);
    alignas(64) float ps[16];
    for (index_t t0 = 0; t0 < v.rows; t0 += 16) {
      const index_t count = v.rows - t0 < 16 ? v.rows - t0 : 16;
      if (groups == 1) {
        const __mmask16 m = qa::lanes_mask(count);
        const __m512 weights = _mm512_maskz_loadu_ps(m, p + t0);
        _mm512_store_ps(ps, _mm512_mul_ps(weights, qa::load_row(v.scale + t0, m)));
        if (first_pass) bias_vector = _mm512_mask3_fmadd_ps(weights, qa::load_row(v.zero + t0, m), bias_vector, m);
      }
      for (index_t i = 0; i < count; ++i) {
        const index_t t = t0 + i;
        const std::uint8_t* row = v.codes + t * row_bytes + c0 * Bits / 8;
        if (groups == 1) {
          const __m512 scaled = _mm512_set1_ps(ps[i]);
          // Full chunks in decode16_lanes order, a partial last chunk (it is
          // always the same chunk) in element order.
          for (int k = 0; k < Chunks; ++k) {
            const __m512 codes = (k + 1 < Chunks || last_lanes >= 16) ? qa::decode16_lanes<Bits>(row + k * 2 * Bits)
                                                                       : qa::decode16_partial<Bits>(row + k * 2 * Bits, last_lanes);
            acc[k] = _mm512_fmadd_ps(scaled, codes, acc[k]);
          }
        } else {
          const P* scale = v.scale + t * groups;
          if (first_pass) {
            const P* zero = v.zero + t * groups;
            for (index_t g = 0; g < groups; ++g) bias_lanes[g][i] = std::fma(p[t], kvcrush::impl::load_param(zero[g]), bias_lanes[g][i]);
          }
          // Groups are multiples of 16 channels here, so chunks are full.
          for (int k = 0; k < Chunks; ++k) {
            const __m512 scaled = _mm512_set1_ps(p[t] * kvcrush::impl::load_param(scale[(c0 + 16 * k) / gsize]));
            acc[k] = _mm512_fmadd_ps(scaled, qa::decode16_lanes<Bits>(row + k * 2 * Bits), acc[k]);
          }
        }
      }
    }
    if (first_pass) {
      if (groups == 1) _mm512_storeu_ps(bias_lanes[0], bias_vector);
      for (index_t g = 0; g < groups; ++g) bias[g] = impl::quant_scalar::reduce_tree16(bias_lanes[g]);
    }
    for (int k = 0; k < Chunks; ++k) {
      const index_t c = c0 + 16 * k;
      const bool full = k + 1 < Chunks || last_lanes >= 16;
      const __m512 sum = full ? qa::unshuffle16<Bits>(acc[k]) : acc[k];
      const __m512 result = _mm512_add_ps(sum, _mm512_set1_ps(bias[c / gsize]));
      _mm512_mask_storeu_ps(out + c, qa::lanes_mask(d - c), result);
    }
  }

  template <int Bits, class P>
  static void value_sum_bits(const value_row_span<P>& v, const float* p, float* out) noexcept {
    alignas(64) float bias_lanes[max_quant_head_dim / 16][16] = {};
    float bias[max_quant_head_dim / 16] = {};  // set by the first tile; zeroed so no compiler sees it unset
    for (index_t c0 = 0; c0 < v.head_dim; c0 += 128) {
      const index_t chunks = (v.head_dim - c0 + 15) / 16;
      with_count_up_to<8>(chunks, [&](auto count) {
        value_tile<Bits, decltype(count)::value>(v, p, out, c0, bias_lanes, bias);
      });
    }
  }

  template <int Chunks, class W>
  static void accumulate_tile(const row_span<W>& r, const float* p, float* out, index_t c0) noexcept {
    namespace qa = impl::quant_avx512;
    __mmask16 masks[Chunks];
    __m512 acc[Chunks];
    for (int i = 0; i < Chunks; ++i) {
      masks[i] = qa::lanes_mask(r.head_dim - (c0 + 16 * i));
      acc[i] = _mm512_maskz_loadu_ps(masks[i], out + c0 + 16 * i);
    }
    for (index_t t = 0; t < r.rows; ++t) {
      const __m512 pt = _mm512_set1_ps(p[t]);
      const W* row = r.row(t) + c0;
      for (int i = 0; i < Chunks; ++i) acc[i] = _mm512_fmadd_ps(pt, qa::load_row(row + 16 * i, masks[i]), acc[i]);
    }
    for (int i = 0; i < Chunks; ++i) _mm512_mask_storeu_ps(out + c0 + 16 * i, masks[i], acc[i]);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512

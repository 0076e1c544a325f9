// AVX2 dequantize-on-read kernels (the order of quant_dot.hpp). Same shape
// as the AVX-512 kernels on 8-lane registers: a key tile of 16 tokens is two
// registers and 4 tiles are in flight; value sums take 64 channels (8
// registers) per pass over the tokens. The 16 lanes of dot16 are two
// registers (lanes 0-7 and 8-15).
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/static_switch.hpp"
#include "kvcrush/simd/quant_codes_avx2.hpp"
#include "kvcrush/simd/quant_dot.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quant_dot_kernel<isa::avx2> {
  template <class T>
  static float dot16(const float* KVCRUSH_RESTRICT a, const T* KVCRUSH_RESTRICT b, index_t n) noexcept {
    namespace q = impl::quant_avx2;
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
      lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), q::load_row(b + i, 8), lo);
      hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), q::load_row(b + i + 8, 8), hi);
    }
    if (i < n) {
      // Lanes past the end keep their sum untouched (an fma with 0 would
      // turn a -0 lane into +0).
      const index_t rest = n - i;
      const __m256 mlo = _mm256_castsi256_ps(q::lanes_mask(rest));
      lo = _mm256_blendv_ps(lo, _mm256_fmadd_ps(q::load_row(a + i, rest), q::load_row(b + i, rest), lo), mlo);
      if (rest > 8) {
        const __m256 mhi = _mm256_castsi256_ps(q::lanes_mask(rest - 8));
        hi = _mm256_blendv_ps(hi, _mm256_fmadd_ps(q::load_row(a + i + 8, rest - 8), q::load_row(b + i + 8, rest - 8), hi),
                              mhi);
      }
    }
    return q::reduce_tree16(lo, hi);
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
    for (index_t c0 = 0; c0 < r.head_dim; c0 += 64) {
      const index_t regs = (r.head_dim - c0 + 7) / 8;
      with_count_up_to<8>(regs, [&](auto count) { accumulate_tile<decltype(count)::value>(r, p, out, c0); });
    }
  }

 private:
  template <class P>
  static void group_prologue(const key_group_span<P>& k, index_t g, const float* q, float* qs, float& bias) noexcept {
    namespace qa = impl::quant_avx2;
    const index_t d = k.head_dim;
    const P* scale = k.scale + g * d;
    index_t c = 0;
    for (; c + 8 <= d; c += 8) _mm256_storeu_ps(qs + c, _mm256_mul_ps(_mm256_loadu_ps(q + c), qa::load_row(scale + c, 8)));
    for (; c < d; ++c) qs[c] = q[c] * kvcrush::impl::load_param(scale[c]);
    bias = dot16(q, k.zero + g * d, d);
  }

  template <int Bits, int Tiles, class P>
  static void key_tiles(const key_group_span<P>& k, const float* q, index_t first_tile, float* out) noexcept {
    namespace qa = impl::quant_avx2;
    alignas(32) float qs[Tiles][max_quant_head_dim];
    float bias[Tiles] = {};
    const index_t per_group = k.group / 16;
    const index_t first_group = first_tile / per_group;
    const index_t channel_bytes = k.group * Bits / 8;
    const auto group_bytes = static_cast<index_t>(k.group_code_bytes());
    const std::uint8_t* base[Tiles];
    const float* tile_qs[Tiles];
    __m256 lo[Tiles], hi[Tiles];
    index_t prepared = -1;
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
      lo[i] = hi[i] = _mm256_set1_ps(bias[slot]);
    }
    for (index_t c = 0; c < k.head_dim; ++c) {
      for (int i = 0; i < Tiles; ++i) {
        const __m256 w = _mm256_set1_ps(tile_qs[i][c]);
        __m256 a, b;
        qa::decode16_lanes<Bits>(base[i] + c * channel_bytes, a, b);
        lo[i] = _mm256_fmadd_ps(w, a, lo[i]);
        hi[i] = _mm256_fmadd_ps(w, b, hi[i]);
      }
    }
    for (int i = 0; i < Tiles; ++i) {
      _mm256_storeu_ps(out + (first_tile + i) * 16, lo[i]);
      _mm256_storeu_ps(out + (first_tile + i) * 16 + 8, hi[i]);
    }
  }

  template <int Bits, class P>
  static void key_scores_bits(const key_group_span<P>& k, const float* q, float* out) noexcept {
    const index_t tiles = k.groups * (k.group / 16);
    index_t t = 0;
    for (; t + 4 <= tiles; t += 4) key_tiles<Bits, 4>(k, q, t, out);
    with_count_up_to<3>(tiles - t, [&](auto count) { key_tiles<Bits, decltype(count)::value>(k, q, t, out); });
  }

  // Channels [c0, c0 + 16 * Chunks) of the value sum (the last chunk may be
  // partial); the first pass also accumulates every group's bias lanes
  // (bias_lanes[g][t % 16]) and reduces them into bias. Tokens go 16 at a
  // time: with one group per row, p[t] * scale[t] and the bias lanes are
  // vector operations (lanes 0-7 and 8-15).
  template <int Bits, int Chunks, class P>
  static void value_tile(const value_row_span<P>& v, const float* p, float* out, index_t c0, float (*bias_lanes)[16],
                         float* bias) noexcept {
    namespace qa = impl::quant_avx2;
    const index_t d = v.head_dim, gsize = v.value_group, groups = v.groups_per_row();
    const auto row_bytes = static_cast<index_t>(v.row_bytes());
    const bool first_pass = c0 == 0;
    const index_t last_lanes = d - (c0 + 16 * (Chunks - 1));
    __m256 lo[Chunks], hi[Chunks];
    for (int i = 0; i < Chunks; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
    __m256 bias_lo = _mm256_loadu_ps(bias_lanes[0]), bias_hi = _mm256_loadu_ps(bias_lanes[0] + 8);
    alignas(32) float ps[16];
    for (index_t t0 = 0; t0 < v.rows; t0 += 16) {
      const index_t count = v.rows - t0 < 16 ? v.rows - t0 : 16;
      if (groups == 1) {
        const index_t second = count > 8 ? count - 8 : 0;
        const __m256 w_lo = qa::load_row(p + t0, count < 8 ? count : 8);
        const __m256 w_hi = second > 0 ? qa::load_row(p + t0 + 8, second) : _mm256_setzero_ps();
        _mm256_store_ps(ps, _mm256_mul_ps(w_lo, qa::load_row(v.scale + t0, count < 8 ? count : 8)));
        _mm256_store_ps(ps + 8, second > 0 ? _mm256_mul_ps(w_hi, qa::load_row(v.scale + t0 + 8, second)) : _mm256_setzero_ps());
        if (first_pass) {
          // Lanes past the last token keep their sum (blend, not an fma with 0).
          const __m256 m_lo = _mm256_castsi256_ps(qa::lanes_mask(count));
          bias_lo = _mm256_blendv_ps(bias_lo, _mm256_fmadd_ps(w_lo, qa::load_row(v.zero + t0, count < 8 ? count : 8), bias_lo), m_lo);
          if (second > 0) {
            const __m256 m_hi = _mm256_castsi256_ps(qa::lanes_mask(second));
            bias_hi = _mm256_blendv_ps(bias_hi, _mm256_fmadd_ps(w_hi, qa::load_row(v.zero + t0 + 8, second), bias_hi), m_hi);
          }
        }
      }
      for (index_t i = 0; i < count; ++i) {
        const index_t t = t0 + i;
        const std::uint8_t* row = v.codes + t * row_bytes + c0 * Bits / 8;
        if (groups == 1) {
          const __m256 scaled = _mm256_set1_ps(ps[i]);
          for (int k = 0; k < Chunks; ++k) {
            __m256 a, b;
            if (k + 1 < Chunks || last_lanes >= 16) {
              qa::decode16_lanes<Bits>(row + k * 2 * Bits, a, b);
            } else {
              qa::decode16_partial<Bits>(row + k * 2 * Bits, last_lanes, a, b);
            }
            lo[k] = _mm256_fmadd_ps(scaled, a, lo[k]);
            hi[k] = _mm256_fmadd_ps(scaled, b, hi[k]);
          }
        } else {
          const P* scale = v.scale + t * groups;
          if (first_pass) {
            const P* zero = v.zero + t * groups;
            for (index_t g = 0; g < groups; ++g) bias_lanes[g][i] = std::fma(p[t], kvcrush::impl::load_param(zero[g]), bias_lanes[g][i]);
          }
          // Groups are multiples of 16 channels here, so chunks are full.
          for (int k = 0; k < Chunks; ++k) {
            const __m256 scaled = _mm256_set1_ps(p[t] * kvcrush::impl::load_param(scale[(c0 + 16 * k) / gsize]));
            __m256 a, b;
            qa::decode16_lanes<Bits>(row + k * 2 * Bits, a, b);
            lo[k] = _mm256_fmadd_ps(scaled, a, lo[k]);
            hi[k] = _mm256_fmadd_ps(scaled, b, hi[k]);
          }
        }
      }
    }
    if (first_pass) {
      if (groups == 1) {
        _mm256_storeu_ps(bias_lanes[0], bias_lo);
        _mm256_storeu_ps(bias_lanes[0] + 8, bias_hi);
      }
      for (index_t g = 0; g < groups; ++g) bias[g] = impl::quant_scalar::reduce_tree16(bias_lanes[g]);
    }
    for (int k = 0; k < Chunks; ++k) {
      const index_t c = c0 + 16 * k;
      const __m256 b = _mm256_set1_ps(bias[c / gsize]);
      alignas(32) float result[16];
      _mm256_store_ps(result, _mm256_add_ps(lo[k], b));
      _mm256_store_ps(result + 8, _mm256_add_ps(hi[k], b));
      const index_t lanes = d - c < 16 ? d - c : 16;
      for (index_t l = 0; l < lanes; ++l) out[c + l] = result[l];
    }
  }

  template <int Bits, class P>
  static void value_sum_bits(const value_row_span<P>& v, const float* p, float* out) noexcept {
    alignas(32) float bias_lanes[max_quant_head_dim / 16][16] = {};
    float bias[max_quant_head_dim / 16] = {};  // set by the first tile; zeroed so no compiler sees it unset
    for (index_t c0 = 0; c0 < v.head_dim; c0 += 64) {
      const index_t chunks = (v.head_dim - c0 + 15) / 16;
      with_count_up_to<4>(chunks, [&](auto count) {
        value_tile<Bits, decltype(count)::value>(v, p, out, c0, bias_lanes, bias);
      });
    }
  }

  template <int Regs, class W>
  static void accumulate_tile(const row_span<W>& r, const float* p, float* out, index_t c0) noexcept {
    namespace qa = impl::quant_avx2;
    index_t lanes[Regs];
    __m256 acc[Regs];
    for (int i = 0; i < Regs; ++i) {
      const index_t rest = r.head_dim - (c0 + 8 * i);
      lanes[i] = rest < 8 ? rest : 8;
      acc[i] = qa::load_row(out + c0 + 8 * i, lanes[i]);
    }
    for (index_t t = 0; t < r.rows; ++t) {
      const __m256 pt = _mm256_set1_ps(p[t]);
      const W* row = r.row(t) + c0;
      for (int i = 0; i < Regs; ++i) acc[i] = _mm256_fmadd_ps(pt, qa::load_row(row + 8 * i, lanes[i]), acc[i]);
    }
    for (int i = 0; i < Regs; ++i) {
      if (lanes[i] == 8) {
        _mm256_storeu_ps(out + c0 + 8 * i, acc[i]);
      } else {
        _mm256_maskstore_ps(out + c0 + 8 * i, qa::lanes_mask(lanes[i]), acc[i]);
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2

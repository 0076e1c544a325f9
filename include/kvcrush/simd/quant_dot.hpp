// Dequantize-on-read kernels: q . k for every key of a head and the
// weighted sum of the value rows, straight from the quantized codes, plus
// the same two for full-precision rows (the recent window).
//
// The arithmetic order is part of the contract, so that every ISA returns
// the same bits (fma is always the explicit fused operation):
//
//   dot16(a, b, n): 16 lanes acc[l] = +0; for i = 0..n-1:
//       acc[i % 16] = fma(a[i], b[i], acc[i % 16]);
//     then the tree acc[l] += acc[l + w] for w = 8, 4, 2, 1; result acc[0].
//
//   key scores, one group with stored scale s[c] and zero z[c]:
//       qs[c] = q[c] * s[c];  bias = dot16(q, z, d)
//       score[t] = bias; for c = 0..d-1: score[t] = fma(qs[c], code[c][t], score[t])
//     (q . dequant(k_t) = sum_c q[c] s[c] code + sum_c q[c] z[c], the
//     factored form: one fma per code).
//
//   value sum, weights p[t], token t with scale s[t][g] and zero z[t][g]:
//       acc[c] = 0; for t in order:
//         acc[c] = fma(p[t] * s[t][g(c)], code[t][c], acc[c]);
//       bias[g]: 16 lanes b[l] = +0; for t in order:
//         b[t % 16] = fma(p[t], z[t][g], b[t % 16]); then the tree of dot16
//       out[c] = acc[c] + bias[g(c)]            (out is written)
//
//   row scores: score[t] = dot16(q, row[t], d)
//   row accumulate: for t in order: out[c] = fma(p[t], row[t][c], out[c])
//     (out is read and updated: this is how the window's rows are added to
//     the quantized part's sum).
#pragma once

#include <cmath>
#include <cstdint>

#include "kvcrush/float16.hpp"
#include "kvcrush/quant_config.hpp"
#include "kvcrush/quant_params.hpp"
#include "kvcrush/quant_spans.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <class Isa>
struct quant_dot_kernel {
  static_assert(isa::compiled_v<Isa>, "quant_dot kernel requested for an ISA this translation unit is not compiled for");
};

namespace impl::quant_scalar {

inline float reduce_tree16(float* acc) noexcept {
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l] + acc[l + w];
  return acc[0];
}

}  // namespace impl::quant_scalar

template <>
struct quant_dot_kernel<isa::scalar> {
  template <class T>
  static float dot16(const float* KVCRUSH_RESTRICT a, const T* KVCRUSH_RESTRICT b, index_t n) noexcept {
    float acc[16] = {};
    for (index_t i = 0; i < n; ++i) acc[i % 16] = std::fma(a[i], to_float(b[i]), acc[i % 16]);
    return impl::quant_scalar::reduce_tree16(acc);
  }

  // out[t] for the k.tokens() keys of the span.
  template <class P>
  static void key_scores(const key_group_span<P>& k, const float* KVCRUSH_RESTRICT q, float* KVCRUSH_RESTRICT out) noexcept {
    const index_t d = k.head_dim;
    const std::size_t channel_bytes = k.channel_bytes();
    float qs[max_quant_head_dim];
    for (index_t g = 0; g < k.groups; ++g) {
      const std::uint8_t* codes = k.codes + static_cast<std::size_t>(g) * k.group_code_bytes();
      const P* scale = k.scale + g * d;
      const P* zero = k.zero + g * d;
      for (index_t c = 0; c < d; ++c) qs[c] = q[c] * kvcrush::impl::load_param(scale[c]);
      const float bias = dot16(q, zero, d);
      for (index_t t = 0; t < k.group; ++t) {
        float acc = bias;
        for (index_t c = 0; c < d; ++c) {
          acc = std::fma(qs[c], static_cast<float>(packed_code(codes + c * channel_bytes, t, k.bits)), acc);
        }
        out[g * k.group + t] = acc;
      }
    }
  }

  // out[0..head_dim) = sum over the span's rows of p[t] * dequant(row t).
  template <class P>
  static void value_sum(const value_row_span<P>& v, const float* KVCRUSH_RESTRICT p, float* KVCRUSH_RESTRICT out) noexcept {
    const index_t d = v.head_dim, gsize = v.value_group, groups = v.groups_per_row();
    const std::size_t row_bytes = v.row_bytes();
    float lanes[max_quant_head_dim / 16][16] = {};
    float bias[max_quant_head_dim / 16];
    float ps[max_quant_head_dim / 16];
    for (index_t c = 0; c < d; ++c) out[c] = 0.0f;
    for (index_t t = 0; t < v.rows; ++t) {
      for (index_t g = 0; g < groups; ++g) {
        ps[g] = p[t] * kvcrush::impl::load_param(v.scale[t * groups + g]);
        lanes[g][t % 16] = std::fma(p[t], kvcrush::impl::load_param(v.zero[t * groups + g]), lanes[g][t % 16]);
      }
      const std::uint8_t* row = v.codes + static_cast<std::size_t>(t) * row_bytes;
      for (index_t c = 0; c < d; ++c) {
        out[c] = std::fma(ps[c / gsize], static_cast<float>(packed_code(row, c, v.bits)), out[c]);
      }
    }
    for (index_t g = 0; g < groups; ++g) bias[g] = impl::quant_scalar::reduce_tree16(lanes[g]);
    for (index_t c = 0; c < d; ++c) out[c] = out[c] + bias[c / gsize];
  }

  template <class W>
  static void row_scores(const row_span<W>& r, const float* KVCRUSH_RESTRICT q, float* KVCRUSH_RESTRICT out) noexcept {
    for (index_t t = 0; t < r.rows; ++t) out[t] = dot16(q, r.row(t), r.head_dim);
  }

  template <class W>
  static void row_accumulate(const row_span<W>& r, const float* KVCRUSH_RESTRICT p, float* KVCRUSH_RESTRICT out) noexcept {
    for (index_t t = 0; t < r.rows; ++t) {
      const W* row = r.row(t);
      for (index_t c = 0; c < r.head_dim; ++c) out[c] = std::fma(p[t], to_float(row[c]), out[c]);
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/quant_dot_avx2.hpp"
#include "kvcrush/simd/quant_dot_avx512.hpp"

// Expected Attention scores (Devoto et al., 2025; kvpress
// ExpectedAttentionPress): the attention that *future* queries are expected
// to pay each key, in closed form from the statistics of recent queries, so
// that no attention matrix is needed. SPEC 11.2.
//
// kvpress (kvpress/presses/expected_attention_press.py: get_query_statistics,
// apply_avg_rope and score) models the next queries as Gaussian with the
// mean mu and covariance Sigma of the recent pre-RoPE queries, turned by the
// *average* RoPE rotation R of the next n_future_positions positions
// (mu' = R mu, Sigma' = R Sigma R^T), and uses E[exp(q.k s)] for a Gaussian q:
//   z[q][t] = s * (mu'_q . k_t) + (s^2 / 2) * (k_t^T Sigma'_q k_t)
// with s = 1/sqrt(d). The scores are softmax(z) over the tokens, averaged
// over the G query heads of a KV head, then optionally (p + epsilon) * ||v_t||.
//
// kvcrush's exact semantics (every choice is listed in SPEC 11.2):
//   * queries (Hq, W, d) float32: the last W queries of each query head. With
//     future_positions > 0 they must be *pre-RoPE* queries (kvpress recomputes
//     them from the hidden states); with future_positions = 0 no rotation is
//     applied and the queries are used as given.
//   * mu = (sum_w q_w) / W; Sigma = (sum_w (q_w - mu)(q_w - mu)^T) / W (biased,
//     as kvpress divides by the number of queries). Both in double, w order.
//   * R = (1/F) sum_{p=P0}^{P0+F-1} R(p), F = future_positions, P0 =
//     first_future_position (default N: the positions after the cache, as
//     kvpress's q_len). R(p) turns pair i by p * theta^(-2i/d); the pairs are
//     (i, i + d/2) (half_split, Hugging Face, kvpress's P matrix) or
//     (2i, 2i + 1) (interleaved, llama2.c). cos/sin and angles in double.
//   * Softmax over tokens [sink, N) of each query head, exponentials of
//     z - max(z) in double, summed in token order; tokens before `sink` are
//     left out (kvpress's n_sink) and score +inf (kvpress: max + 1) so that
//     they rank first.
//   * GQA: the G probabilities of a KV head are added in head order and
//     divided by G (kvpress: scores.mean over the group).
//   * use_vnorm: out = (p + epsilon) * ||v_t||_2 (kvpress's order), else p.
//     One rounding to float at the end.
// Inputs with a NaN or an infinite component are rejected before any output
// is written. Products are added with explicit fused multiply-adds in fixed
// orders (simd/fixed_order_dot.hpp); exp, cos, sin and pow come from the C library,
// which every ISA build of one program shares.
//
// Cost per call: O(Hq * (W * d^2 + N * d^2)) with the covariance, O(Hq * N * d)
// without, plus F * d / 2 cos/sin pairs for the rotation. Allocates
// O(d^2 + N) doubles of scratch.
#pragma once

#include <cmath>
#include <limits>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/scores/attention_scratch.hpp"
#include "kvcrush/simd/fixed_order_dot.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/simd/quadratic_logits.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct expected_attention_options {
  // Number of future positions whose RoPE rotation is averaged
  // (kvpress n_future_positions, default 512); 0: no rotation at all.
  index_t future_positions = 512;
  // The first future position; -1 means N, the number of cached tokens.
  index_t first_future_position = -1;
  double rope_theta = 10000.0;
  bool rope_interleaved = false;  // false: pairs (i, i + d/2); true: (2i, 2i + 1)
  bool use_covariance = true;
  bool use_vnorm = true;  // needs the values
  float epsilon = 0.0f;   // added to the probabilities before the value norm
  float scale = 0.0f;     // logit scale s; <= 0 means 1 / sqrt(d)
  index_t sink = 0;       // keys [0, sink) are left out of the softmax and score +inf
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Mean rotation of pair i over the future positions: (cos_mean[i], sin_mean[i]).
inline void mean_rope_rotation(index_t d, const expected_attention_options& opt, index_t first_position,
                               double* cos_mean, double* sin_mean) {
  const index_t pairs = d / 2;
  const double count = static_cast<double>(opt.future_positions);
  for (index_t i = 0; i < pairs; ++i) {
    const double freq = std::pow(opt.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    double c = 0.0, s = 0.0;
    for (index_t p = 0; p < opt.future_positions; ++p) {
      const double angle = static_cast<double>(first_position + p) * freq;
      c += std::cos(angle);
      s += std::sin(angle);
    }
    cos_mean[i] = c / count;
    sin_mean[i] = s / count;
  }
}

// The two coordinates pair i occupies.
inline void rope_pair(index_t i, index_t d, bool interleaved, index_t& a, index_t& b) noexcept {
  if (interleaved) {
    a = 2 * i;
    b = 2 * i + 1;
  } else {
    a = i;
    b = i + d / 2;
  }
}

// y = R x for the block rotation R with pair cosines c and sines s:
// y[a] = c x[a] - s x[b], y[b] = s x[a] + c x[b].
inline void rotate_vector(const double* x, index_t d, bool interleaved, const double* c, const double* s,
                          double* y) noexcept {
  for (index_t i = 0; i < d / 2; ++i) {
    index_t a = 0, b = 0;
    rope_pair(i, d, interleaved, a, b);
    y[a] = std::fma(c[i], x[a], -(s[i] * x[b]));
    y[b] = std::fma(s[i], x[a], c[i] * x[b]);
  }
}

// sigma <- R sigma R^T (d x d, row-major), tmp: d * d doubles. Columns are
// turned first (T = sigma R^T: row by row, each row rotated as a vector),
// then rows (R T: column by column).
inline void rotate_covariance(double* sigma, index_t d, bool interleaved, const double* c, const double* s,
                              double* tmp) noexcept {
  for (index_t r = 0; r < d; ++r) rotate_vector(sigma + r * d, d, interleaved, c, s, tmp + r * d);
  for (index_t i = 0; i < d / 2; ++i) {
    index_t a = 0, b = 0;
    rope_pair(i, d, interleaved, a, b);
    for (index_t col = 0; col < d; ++col) {
      const double xa = tmp[a * d + col], xb = tmp[b * d + col];
      sigma[a * d + col] = std::fma(c[i], xa, -(s[i] * xb));
      sigma[b * d + col] = std::fma(s[i], xa, c[i] * xb);
    }
  }
}

}  // namespace impl

// Doubles of scratch expected_attention_scores needs.
inline std::size_t expected_attention_scratch_doubles(index_t tokens, index_t head_dim,
                                                      const expected_attention_options& opt) noexcept {
  const auto d = static_cast<std::size_t>(head_dim > 0 ? head_dim : 0);
  const auto n = static_cast<std::size_t>(tokens > 0 ? tokens : 0);
  return 22 * d + 2 * n + (opt.use_covariance ? 2 * d * d : 0) + 1;
}

// out (H, N): Expected Attention scores of the keys (H, N, d) for the
// queries (Hq, W, d), Hq = G * H. values (H, N, dv) are read when
// opt.use_vnorm is set. With the caller's scratch: no allocation once it
// has grown.
template <class Isa = isa::active, class KeyT, class ValueT = KeyT>
void expected_attention_scores(strided_view<const float, 3> queries, kv_view<const KeyT> keys,
                               const expected_attention_options& opt, matrix_view<float> out,
                               kv_view<const ValueT> values, attention_scratch& scratch) {
  using kvcrush::detail::require;
  const index_t hq = queries.extent(0), window = queries.extent(1), d = queries.extent(2);
  const index_t h = keys.heads(), n = keys.tokens();
  require(h >= 1 && hq >= 1 && hq % h == 0, "expected attention: ", hq, " query heads do not split evenly over ", h,
          " KV heads");
  require(keys.head_dim() == d, "expected attention: queries have head_dim ", d, ", keys ", keys.head_dim());
  require(d >= 1, "expected attention: head_dim must be at least 1");
  require(window >= 1, "expected attention: needs at least one query per head (W = ", window, ")");
  require(d <= 1 || queries.stride(2) == 1, "expected attention: query vectors must be contiguous");
  require(out.extent(0) == h && out.extent(1) == n, "expected attention: output must be (", h, ", ", n, "), got (",
          out.extent(0), ", ", out.extent(1), ")");
  require(opt.future_positions >= 0, "expected attention: future_positions must be >= 0 (got ",
          opt.future_positions, ")");
  require(opt.first_future_position >= -1, "expected attention: first_future_position must be >= 0, or -1 for N (got ",
          opt.first_future_position, ")");
  if (opt.future_positions > 0) {
    require(d % 2 == 0, "expected attention: RoPE averaging needs an even head_dim (got ", d, ")");
    require(std::isfinite(opt.rope_theta) && opt.rope_theta > 0.0, "expected attention: rope_theta must be > 0 (got ",
            opt.rope_theta, ")");
  }
  require(std::isfinite(opt.epsilon), "expected attention: epsilon must be finite (got ", opt.epsilon, ")");
  require(std::isfinite(opt.scale), "expected attention: scale must be finite (got ", opt.scale, ")");
  require(opt.sink >= 0 && opt.sink <= n, "expected attention: sink ", opt.sink, " must be in [0, ", n, "]");
  if (opt.use_vnorm) {
    require(values.heads() == h && values.tokens() == n, "expected attention: use_vnorm needs values of ", h,
            " heads and ", n, " tokens, got ", values.heads(), " and ", values.tokens());
  }
  for (index_t q = 0; q < hq; ++q)
    for (index_t w = 0; w < window; ++w)
      for (index_t j = 0; j < d; ++j) {
        const float x = queries(q, w, j);
        require(std::isfinite(x), "expected attention: query (head ", q, ", row ", w, ", dim ", j, ") is ", x,
                "; queries must be finite");
      }
  index_t bad_head = 0, bad_token = 0;
  float bad_value = 0.0f;
  bool bad = impl::find_non_finite(keys, 0, n, bad_head, bad_token, bad_value);
  require(!bad, "expected attention: key of head ", bad_head, ", token ", bad_token, " has a non-finite component (",
          bad_value, "); keys must be finite");
  if (opt.use_vnorm) {
    bad = impl::find_non_finite(values, 0, n, bad_head, bad_token, bad_value);
    require(!bad, "expected attention: value of head ", bad_head, ", token ", bad_token,
            " has a non-finite component (", bad_value, "); values must be finite");
  }
  if (n == 0) return;

  const index_t group = hq / h;
  const bool rotate = opt.future_positions > 0;
  const bool cov = opt.use_covariance;
  const double s = opt.scale > 0.0f ? static_cast<double>(opt.scale) : 1.0 / std::sqrt(static_cast<double>(d));
  const double half_s2 = 0.5 * (s * s);
  const index_t first_position = opt.first_future_position < 0 ? n : opt.first_future_position;

  // Scratch: rotation (d), mean and rotated mean (2d), key in double (d),
  // Sigma k (d), a block of 8 keys and their Sigma k (16d), covariance and a
  // rotation buffer (2 d^2), logits and the group sum (2N).
  const std::size_t dd = static_cast<std::size_t>(d) * static_cast<std::size_t>(d);
  double* rot_c = scratch.wide(expected_attention_scratch_doubles(n, d, opt));
  double* rot_s = rot_c + d / 2;
  double* mean = rot_c + d;
  double* mean_rot = mean + d;
  double* key = mean_rot + d;
  double* sigma_key = key + d;
  double* block_keys = sigma_key + d;
  double* block_work = block_keys + 8 * d;
  double* logits = block_work + 8 * d;
  double* group_sum = logits + n;
  double* sigma = group_sum + n;
  double* sigma_tmp = sigma + (cov ? dd : 0);
  if (rotate) impl::mean_rope_rotation(d, opt, first_position, rot_c, rot_s);

  const double count = static_cast<double>(window);
  for (index_t k = 0; k < h; ++k) {
    for (index_t g = 0; g < group; ++g) {
      const index_t q = k * group + g;
      // Statistics of the W queries.
      for (index_t j = 0; j < d; ++j) {
        double acc = 0.0;
        for (index_t w = 0; w < window; ++w) acc += static_cast<double>(queries(q, w, j));
        mean[j] = acc / count;
      }
      if (cov) {
        for (index_t i = 0; i < d; ++i) {
          for (index_t j = i; j < d; ++j) {
            double acc = 0.0;
            for (index_t w = 0; w < window; ++w) {
              const double ci = static_cast<double>(queries(q, w, i)) - mean[i];
              const double cj = static_cast<double>(queries(q, w, j)) - mean[j];
              acc = std::fma(ci, cj, acc);
            }
            sigma[i * d + j] = acc / count;
            sigma[j * d + i] = sigma[i * d + j];
          }
        }
      }
      if (rotate) {
        impl::rotate_vector(mean, d, opt.rope_interleaved, rot_c, rot_s, mean_rot);
        if (cov) impl::rotate_covariance(sigma, d, opt.rope_interleaved, rot_c, rot_s, sigma_tmp);
      } else {
        for (index_t j = 0; j < d; ++j) mean_rot[j] = mean[j];
      }
      // Logits and softmax over [sink, N).
      double peak = -std::numeric_limits<double>::infinity();
      using block_kernel = simd::quadratic_logits_kernel<Isa>;
      if constexpr (block_kernel::lanes > 0) {
        constexpr index_t lanes = block_kernel::lanes;
        double z[lanes];
        for (index_t first = opt.sink; first < n; first += lanes) {
          const index_t valid = n - first < lanes ? n - first : lanes;
          for (index_t l = 0; l < lanes; ++l) {
            const KeyT* row = keys.row(k, first + (l < valid ? l : 0));
            for (index_t j = 0; j < d; ++j) block_keys[j * lanes + l] = static_cast<double>(impl::to_acc(row[j]));
          }
          block_kernel::block(block_keys, d, mean_rot, cov ? sigma : nullptr, s, half_s2, block_work, z);
          for (index_t l = 0; l < valid; ++l) {
            logits[first + l] = z[l];
            peak = z[l] > peak ? z[l] : peak;
          }
        }
      }
      for (index_t t = block_kernel::lanes > 0 ? n : opt.sink; t < n; ++t) {
        const KeyT* row = keys.row(k, t);
        for (index_t j = 0; j < d; ++j) key[j] = static_cast<double>(impl::to_acc(row[j]));
        const double linear = impl::dot8d<Isa>(mean_rot, key, d);
        double z = s * linear;
        if (cov) {
          index_t i = 0;
          for (; i + 4 <= d; i += 4) impl::dot8d_x4<Isa>(key, sigma + i * d, d, d, sigma_key + i);
          for (; i < d; ++i) sigma_key[i] = impl::dot8d<Isa>(key, sigma + i * d, d);
          const double quad = impl::dot8d<Isa>(key, sigma_key, d);
          z = std::fma(half_s2, quad, z);
        }
        logits[t] = z;
        peak = z > peak ? z : peak;
      }
      double total = 0.0;
      for (index_t t = opt.sink; t < n; ++t) {
        logits[t] = std::exp(logits[t] - peak);
        total += logits[t];
      }
      for (index_t t = opt.sink; t < n; ++t) {
        const double p = logits[t] / total;
        group_sum[t] = g == 0 ? p : group_sum[t] + p;
      }
    }
    // Group mean, value norm, one rounding.
    for (index_t t = 0; t < opt.sink; ++t) out(k, t) = std::numeric_limits<float>::infinity();
    for (index_t t = opt.sink; t < n; ++t) {
      double p = group_sum[t] / static_cast<double>(group);
      if (opt.use_vnorm) {
        const index_t dv = values.head_dim();
        const double vnorm = dv == 0 ? 0.0 : std::sqrt(impl::sum_squares8<double>(values.row(k, t), dv));
        p = (p + static_cast<double>(opt.epsilon)) * vnorm;
      }
      out(k, t) = static_cast<float>(p);
    }
  }
}

// With scratch of its own: allocates O(d^2 + N) doubles per call.
template <class Isa = isa::active, class KeyT, class ValueT = KeyT>
void expected_attention_scores(strided_view<const float, 3> queries, kv_view<const KeyT> keys,
                               const expected_attention_options& opt, matrix_view<float> out,
                               kv_view<const ValueT> values = {}) {
  attention_scratch scratch;
  expected_attention_scores<Isa>(queries, keys, opt, out, values, scratch);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

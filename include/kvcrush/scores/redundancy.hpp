// R-KV scores (Cai et al., 2025, arXiv 2505.24133): importance combined with
// redundancy, for decode-time eviction of long reasoning outputs, where many
// tokens repeat what earlier ones said. A token whose key is similar to many
// others is redundant; the newest of a group of similar tokens is spared.
// SPEC 11.3.
//
// The definition follows the R-KV reference code (Zefan-Cai/R-KV,
// rkv/utils.py cal_similarity with retain_direction "last", and
// rkv/compression/r1_kv.py update_kv), per KV head, over a region
// E = [begin, end) of n tokens (the evictable region) and a comparison set C,
// the last m tokens of E (all of E by default: m = n, R-KV's own rule):
//   u[t]     = K[t] / (||K[t]|| + 1e-8)          rounded to float
//   S[c][t]  = u[c] . u[t]                       (cosine similarity, float)
//   last(c)  = the largest t in E, t != c, with S[c][t] > threshold
//              (none when no such t)
//   raw[t]   = (sum over c in C, c != t, last(c) != t of S[c][t]) / m
//   red[t]   = exp(raw[t]) / sum over E of exp(raw)        (softmax over E)
//   score[t] = lambda * importance[t] - (1 - lambda) * red[t]   (t in E)
// So each token c "forgives" its most recent similar token: that one's
// similarity to c is not counted, which keeps the newest copy of a repeated
// pattern. The importance is the caller's row (R-KV uses the window-mean
// attention of the last queries, max-pooled: SnapKV's window sums divided by
// W); outside E, score = lambda * importance (no redundancy is defined there).
//
// Cost: n * m dot products of length d per head (n^2 d with the default
// m = n). comparison_tokens = R bounds it to n * R * d: every token of E is
// still scored, against the R newest tokens only. The caller supplies the
// scratch (rkv_scratch_floats), so no call allocates.
//
// Arithmetic: norms in double and unit keys rounded to float; similarities
// in float, in simd/fixed_order_dot.hpp's 8-lane FMA order (float rather than double:
// the pairwise products are the hot loop, and float vectors hold twice the
// lanes and need no conversion); raw[t] summed over c ascending in double,
// rounded to float; softmax in double over t ascending; one rounding per
// output. Keys in E with a NaN or an infinite component, and NaN importance,
// are rejected before any output is written.
//
// Departures from the reference code (SPEC 11.3): similarity and softmax are
// over E, not the whole cache; a row with no similar token zeroes nothing
// (R-KV's torch.max over zero-filled indices zeroes its entry for token 0).
#pragma once

#include <algorithm>
#include <cmath>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/simd/fixed_order_dot.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/simd/similarity_sums.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct rkv_options {
  float lambda = 0.07f;           // R-KV's mix_lambda: the weight of importance
  float threshold = 0.5f;         // similarity above which a token counts as a copy
  index_t comparison_tokens = 0;  // R: compare with the last R tokens of E only; 0: all of E
};

// Size of the comparison set for a region of n tokens.
inline index_t rkv_comparison_size(index_t region_tokens, const rkv_options& opt) noexcept {
  return opt.comparison_tokens <= 0 ? region_tokens : std::min(opt.comparison_tokens, region_tokens);
}

// Unit keys besides the comparison set's that the scratch has room for: a
// block of up to 16 tokens (simd/similarity_sums.hpp) and one more row.
inline constexpr index_t rkv_block_keys = 17;

// Floats of scratch rkv_redundancy and rkv_scores need: the unit keys of the
// comparison set and of rkv_block_keys more tokens, one flag per comparison
// token, and one value per region token.
inline index_t rkv_scratch_floats(index_t region_tokens, index_t head_dim, const rkv_options& opt) noexcept {
  const index_t m = rkv_comparison_size(region_tokens, opt);
  return (m + rkv_block_keys) * head_dim + m + region_tokens;
}

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

template <class KeyT>
void rkv_unit_key(const KeyT* row, index_t d, float* unit) noexcept {
  const double norm = std::sqrt(sum_squares8<double>(row, d));
  const double divisor = norm + 1e-8;
  for (index_t j = 0; j < d; ++j) unit[j] = static_cast<float>(static_cast<double>(to_acc(row[j])) / divisor);
}

// The raw sums of one head in the scalar build's 4 x 4 tiles.
template <class Isa, class KeyT>
void rkv_raw_tiles(kv_view<const KeyT> keys, index_t h, index_t begin, index_t end, float threshold, index_t m,
                   const float* units, float* current, float* found, float* red) noexcept {
  const index_t d = keys.head_dim(), first_c = end - m;
  const double bar = static_cast<double>(threshold);
  const double count = static_cast<double>(m);
  for (index_t top = end; top > begin; top -= 4) {
    const index_t tiles_t = top - begin < 4 ? top - begin : 4;
    const float* u[4] = {nullptr, nullptr, nullptr, nullptr};
    for (index_t k = 0; k < tiles_t; ++k) {
      const index_t t = top - 1 - k;
      if (t >= first_c) {
        u[k] = units + (t - first_c) * d;
      } else {
        rkv_unit_key(keys.row(h, t), d, current + k * d);
        u[k] = current + k * d;
      }
    }
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    float sims[4][4];
    for (index_t i0 = 0; i0 < m; i0 += 4) {
      const index_t tiles_c = m - i0 < 4 ? m - i0 : 4;
      if (tiles_t == 4 && tiles_c == 4) {
        dot8f_tile4<Isa>(u, units + i0 * d, d, d, sims);
      } else {
        for (index_t k = 0; k < tiles_t; ++k)
          for (index_t r = 0; r < tiles_c; ++r) sims[k][r] = dot8f<Isa>(u[k], units + (i0 + r) * d, d);
      }
      for (index_t k = 0; k < tiles_t; ++k) {
        const index_t t = top - 1 - k;
        for (index_t r = 0; r < tiles_c; ++r) {
          const index_t i = i0 + r;
          if (first_c + i == t) continue;
          const double sim = static_cast<double>(sims[k][r]);
          if (found[i] == 0.0f && sim > bar) {
            found[i] = 1.0f;  // t is last(c): not counted
            continue;
          }
          acc[k] += sim;
        }
      }
    }
    for (index_t k = 0; k < tiles_t; ++k) red[top - 1 - k - begin] = static_cast<float>(acc[k] / count);
  }
}

// The raw sums of one head with the ISA's block kernel: blocks of
// `lanes` tokens, newest first, each against every comparison token.
template <class Isa, class KeyT>
void rkv_raw_blocks(kv_view<const KeyT> keys, index_t h, index_t begin, index_t end, float threshold, index_t m,
                    float* units, float* block, float* found, float* red) noexcept {
  using kernel = simd::similarity_sums_kernel<Isa>;
  constexpr index_t lanes = kernel::lanes;
  const index_t d = keys.head_dim(), first_c = end - m;
  float* row = block + lanes * d;  // one unit key before it is transposed
  const double count = static_cast<double>(m);
  double acc[lanes];
  for (index_t top = end; top > begin; top -= lanes) {
    const index_t valid = top - begin < lanes ? top - begin : lanes;
    for (index_t k = 0; k < lanes; ++k) {
      const index_t t = top - 1 - k;
      const float* u = row;
      if (k >= valid) {
        for (index_t j = 0; j < d; ++j) row[j] = 0.0f;
      } else if (t >= first_c) {
        u = units + (t - first_c) * d;
      } else {
        rkv_unit_key(keys.row(h, t), d, row);
      }
      for (index_t j = 0; j < d; ++j) block[j * lanes + k] = u[j];
    }
    kernel::block(units, m, d, block, valid, top - 1 - first_c, threshold, found, acc);
    for (index_t k = 0; k < valid; ++k) red[top - 1 - k - begin] = static_cast<float>(acc[k] / count);
  }
}

// One head: red[0..n) = the softmaxed redundancy of tokens begin..end-1.
// The scalar build computes the similarities in 4 x 4 tiles (4 tokens t,
// newest first, by 4 comparison tokens c, oldest first) and then consumes
// them in exactly the order of the definition: for each c, the tokens t in
// descending order (so the first similar one met is last(c)); for each t,
// c ascending. The SIMD builds do the same with one token per lane
// (simd/similarity_sums.hpp), bit for bit.
template <class Isa, class KeyT>
void rkv_redundancy_head(kv_view<const KeyT> keys, index_t h, index_t begin, index_t end, float threshold, index_t m,
                         float* scratch, float* red) noexcept {
  const index_t d = keys.head_dim(), n = end - begin, first_c = end - m;
  float* units = scratch;                       // m * d: unit keys of C
  float* current = units + m * d;               // rkv_block_keys * d: unit keys of the tokens in work
  float* found = current + rkv_block_keys * d;  // m flags: last(c) already met
  for (index_t i = 0; i < m; ++i) {
    rkv_unit_key(keys.row(h, first_c + i), d, units + i * d);
    found[i] = 0.0f;
  }
  if constexpr (simd::similarity_sums_kernel<Isa>::lanes > 0) {
    rkv_raw_blocks<Isa>(keys, h, begin, end, threshold, m, units, current, found, red);
  } else {
    rkv_raw_tiles<Isa>(keys, h, begin, end, threshold, m, units, current, found, red);
  }
  // Softmax over E.
  float peak = red[0];
  for (index_t i = 1; i < n; ++i) peak = red[i] > peak ? red[i] : peak;
  double total = 0.0;
  for (index_t i = 0; i < n; ++i) total += std::exp(static_cast<double>(red[i]) - static_cast<double>(peak));
  for (index_t i = 0; i < n; ++i) {
    red[i] = static_cast<float>(std::exp(static_cast<double>(red[i]) - static_cast<double>(peak)) / total);
  }
}

template <class KeyT>
void rkv_check(kv_view<const KeyT> keys, index_t begin, index_t end, const rkv_options& opt, vector_view<float> scratch,
               const char* who) {
  using kvcrush::detail::require;
  require(begin >= 0 && begin <= end && end <= keys.tokens(), who, ": region [", begin, ", ", end,
          ") must lie in [0, ", keys.tokens(), "]");
  require(opt.lambda >= 0.0f && opt.lambda <= 1.0f, who, ": lambda must be in [0, 1] (got ", opt.lambda, ")");
  require(opt.threshold >= 0.0f && opt.threshold <= 1.0f, who, ": threshold must be in [0, 1] (got ", opt.threshold,
          ")");
  require(opt.comparison_tokens >= 0, who, ": comparison_tokens must be >= 0 (got ", opt.comparison_tokens, ")");
  require(keys.head_dim() >= 1, who, ": head_dim must be at least 1");
  const index_t need = rkv_scratch_floats(end - begin, keys.head_dim(), opt);
  require(scratch.extent(0) >= need, who, ": scratch holds ", scratch.extent(0), " floats, needs ", need,
          " (rkv_scratch_floats)");
  require(scratch.extent(0) <= 1 || scratch.stride(0) == 1, who, ": scratch must be contiguous");
  index_t bad_head = 0, bad_token = 0;
  float bad_value = 0.0f;
  const bool bad = find_non_finite(keys, begin, end, bad_head, bad_token, bad_value);
  require(!bad, who, ": key of head ", bad_head, ", token ", bad_token, " has a non-finite component (", bad_value,
          "); keys must be finite");
}

}  // namespace impl

// redundancy (H, end - begin): red[h][t - begin] for t in E = [begin, end).
template <class Isa = isa::active, class KeyT>
void rkv_redundancy(kv_view<const KeyT> keys, index_t begin, index_t end, const rkv_options& opt,
                    vector_view<float> scratch, matrix_view<float> redundancy) {
  using kvcrush::detail::require;
  impl::rkv_check(keys, begin, end, opt, scratch, "rkv redundancy");
  const index_t h = keys.heads(), n = end - begin;
  require(redundancy.extent(0) == h && redundancy.extent(1) == n, "rkv redundancy: output must be (", h, ", ", n,
          "), got (", redundancy.extent(0), ", ", redundancy.extent(1), ")");
  if (n == 0) return;
  const index_t m = rkv_comparison_size(n, opt);
  float* values = scratch.data() + (m + rkv_block_keys) * keys.head_dim() + m;
  for (index_t k = 0; k < h; ++k) {
    impl::rkv_redundancy_head<Isa>(keys, k, begin, end, opt.threshold, m, scratch.data(), values);
    for (index_t i = 0; i < n; ++i) redundancy(k, i) = values[i];
  }
}

// out (H, N) = lambda * importance - (1 - lambda) * redundancy on E, and
// lambda * importance elsewhere; in double, rounded once. With lambda = 0
// the importance is not read into the result (out = -redundancy on E, +0
// elsewhere), so infinite importance cannot make a NaN. importance and out
// may be the same matrix.
template <class Isa = isa::active, class KeyT>
void rkv_scores(kv_view<const KeyT> keys, matrix_view<const float> importance, index_t begin, index_t end,
                const rkv_options& opt, vector_view<float> scratch, matrix_view<float> out) {
  using kvcrush::detail::require;
  impl::rkv_check(keys, begin, end, opt, scratch, "rkv scores");
  const index_t h = keys.heads(), n = keys.tokens();
  require(importance.extent(0) == h && importance.extent(1) == n, "rkv scores: importance must be (", h, ", ", n,
          "), got (", importance.extent(0), ", ", importance.extent(1), ")");
  require(out.extent(0) == h && out.extent(1) == n, "rkv scores: output must be (", h, ", ", n, "), got (",
          out.extent(0), ", ", out.extent(1), ")");
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) {
      require(!std::isnan(importance(k, t)), "rkv scores: importance of head ", k, ", token ", t, " is NaN");
    }
  const index_t region = end - begin;
  const index_t m = rkv_comparison_size(region, opt);
  float* values = scratch.data() + (m + rkv_block_keys) * keys.head_dim() + m;
  const double lambda = static_cast<double>(opt.lambda);
  const double rest = 1.0 - lambda;
  for (index_t k = 0; k < h; ++k) {
    if (region > 0) impl::rkv_redundancy_head<Isa>(keys, k, begin, end, opt.threshold, m, scratch.data(), values);
    for (index_t t = 0; t < n; ++t) {
      const double red = t >= begin && t < end ? static_cast<double>(values[t - begin]) : 0.0;
      const double penalty = -(rest * red);
      const double score =
          opt.lambda == 0.0f ? penalty + 0.0 : std::fma(lambda, static_cast<double>(importance(k, t)), penalty);
      out(k, t) = static_cast<float>(score);
    }
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

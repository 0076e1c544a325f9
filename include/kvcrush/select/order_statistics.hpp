// Exact order statistics in O(N): the k-th largest value of a float array and
// the SPEC's "top k by value, ties by smaller position" (SPEC section 2).
//
// The k-th largest is found without sorting: a small deterministic sample
// brackets the answer, one SIMD partition pass counts what lies above the
// bracket and packs what lies inside it, and the search continues on the
// 3-4x smaller inside set until at most 64 values remain, which are ranked by
// counting (or, in the AVX2 kernel, sorted by a network).
// When the sample misjudges (rare), the pass still tells on which side the
// answer lies and the search continues there, so the result is always exact.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>

#include "kvcrush/simd/partition.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

struct kth_result {
  float value = 0.0f;  // the k-th largest value
  index_t above = 0;   // how many values are strictly greater
  index_t equal = 0;   // how many values equal it
  bool has_nan = false;
};

// The ranks (0-based, largest first) that bracket the k-th largest of m
// values in a sample of `size` of them: the sample's expected rank of it,
// 2.5 binomial standard deviations (plus 2) either side, clamped to the
// sample. What every sampled bracket of the exact order statistics uses.
struct sample_bracket {
  index_t hi_rank = 0;  // rank of the bracket's upper end in the sample
  index_t lo_rank = 0;  // rank of its lower end
};

inline sample_bracket bracketing_ranks(index_t k, index_t m, index_t size) noexcept {
  const double p = static_cast<double>(k) / static_cast<double>(m);
  const double sigma = std::sqrt(static_cast<double>(size) * p * (1.0 - p));
  const auto centre = static_cast<index_t>(p * static_cast<double>(size));
  const auto margin = static_cast<index_t>(2.5 * sigma) + 2;
  return {std::max<index_t>(centre - margin, 0), std::min<index_t>(centre + margin, size - 1)};
}

// The r_a-th and r_b-th largest (0-based) of the NaN-free part of v[0, n),
// n <= 64, found by counting each value's rank: at most n^2/16 vector
// compares and no data-dependent branches inside the count, which beats
// nth_element on arrays this short. An unreachable rank (NaN in v) gives v[0].
template <class Isa>
void small_order_statistics(const float* v, index_t n, index_t r_a, index_t r_b, float& a, float& b) noexcept {
  a = b = v[0];
  if constexpr (simd::has_small_order_statistics<Isa>::value) {
    simd::partition_kernel<Isa>::small_order_statistics(v, n, r_a, r_b, a, b);
  } else {
    bool found_a = false, found_b = false;
    for (index_t i = 0; i < n && !(found_a && found_b); ++i) {
      const simd::rank_counts c = simd::partition_kernel<Isa>::count(v, n, v[i]);
      if (!found_a && c.greater <= r_a && r_a < c.greater + c.equal) {
        a = v[i];
        found_a = true;
      }
      if (!found_b && c.greater <= r_b && r_b < c.greater + c.equal) {
        b = v[i];
        found_b = true;
      }
    }
  }
}

// k-th largest (1-based, 1 <= k <= n) of v[0, n). buf_a and buf_b hold n
// floats each; v is never written. With detect_nan = false the caller
// vouches for NaN-free input (a NaN then only spoils the answer, it cannot
// cause undefined behaviour), which saves a count in the first pass.
template <class Isa>
kth_result kth_largest(const float* v, index_t n, index_t k, float* buf_a, float* buf_b,
                       bool detect_nan = true) noexcept {
  constexpr index_t base_case = 64;
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float* src = v;
  float* out = buf_a;
  float* spare = buf_b;
  index_t m = n;
  index_t kk = k;
  index_t above = 0;
  bool first_pass = true;
  while (m > base_case) {
    // A fixed-stride sample (deterministic) brackets the answer: its order
    // statistics around the target rank, 2.5 standard deviations apart.
    float hi, lo;
    if (m > 8192) {
      // Large sets: 1024 values as 64 runs of 16 (64 cache lines read, ~3%
      // of a 32K row) give a ~8% bracket; their two order statistics come
      // from this same selection, run on the sample.
      constexpr index_t runs = 64, run = 16, sample_size = runs * run;
      float sample[sample_size], scratch_a[sample_size], scratch_b[sample_size];
      const index_t step = m / runs;
      for (index_t r = 0; r < runs; ++r)
        for (index_t j = 0; j < run; ++j) sample[r * run + j] = src[r * step + j];
      const sample_bracket r = bracketing_ranks(kk, m, sample_size);
      hi = kth_largest<Isa>(sample, sample_size, r.hi_rank + 1, scratch_a, scratch_b, false).value;
      lo = kth_largest<Isa>(sample, sample_size, r.lo_rank + 1, scratch_a, scratch_b, false).value;
    } else {
      constexpr index_t sample_size = 64;
      float sample[sample_size];
      const index_t step = m / sample_size;
      for (index_t j = 0; j < sample_size; ++j) sample[j] = src[j * step + step / 2];
      const sample_bracket r = bracketing_ranks(kk, m, sample_size);
      small_order_statistics<Isa>(sample, sample_size, r.hi_rank, r.lo_rank, hi, lo);
    }
    if (hi != hi || lo != lo) return {0.0f, 0, 0, true};

    const simd::partition_counts c =
        first_pass && detect_nan ? simd::partition_kernel<Isa>::template run<true>(src, m, lo, hi, out)
                                 : simd::partition_kernel<Isa>::template run<false>(src, m, lo, hi, out);
    if (first_pass && detect_nan && c.above + c.below + c.inside != m) return {0.0f, 0, 0, true};
    first_pass = false;
    if (kk <= c.above) {
      // The answer lies above the bracket: keep the values > hi.
      m = simd::partition_kernel<Isa>::template run<false>(src, m, std::nextafter(hi, inf), inf, out).inside;
    } else if (kk > c.above + c.inside) {
      // The answer lies below the bracket: keep the values < lo.
      above += c.above + c.inside;
      kk -= c.above + c.inside;
      m = simd::partition_kernel<Isa>::template run<false>(src, m, -inf, std::nextafter(lo, -inf), out).inside;
    } else {
      above += c.above;
      kk -= c.above;
      if (c.inside == m) {
        // No progress: every value lies in [lo, hi] (heavy ties). Peel off
        // the largest one, hi (a sample value, so present): either it is the
        // answer or the set loses every copy of it.
        const simd::rank_counts top = simd::partition_kernel<Isa>::count(src, m, hi);
        if (kk <= top.equal) return {hi, above, top.equal, false};
        above += top.equal;
        kk -= top.equal;
        m = simd::partition_kernel<Isa>::template run<false>(src, m, -inf, std::nextafter(hi, -inf), out).inside;
      } else {
        m = c.inside;
      }
    }
    src = out;
    std::swap(out, spare);
    // The partitions drop NaN values, so with NaN in v (detect_nan = false)
    // the rank can end up past the values left; going on would read past
    // them. Give up with a NaN answer, as a NaN-spoiled result may be.
    if (kk > m) return {std::numeric_limits<float>::quiet_NaN(), above, 0, true};
  }
  if (first_pass && detect_nan) {
    bool nan = false;
    for (index_t i = 0; i < m; ++i) nan |= v[i] != v[i];
    if (nan) return {0.0f, 0, 0, true};
  }
  float value, unused;
  small_order_statistics<Isa>(src, m, kk - 1, kk - 1, value, unused);
  const simd::rank_counts c = simd::partition_kernel<Isa>::count(src, m, value);
  return {value, above + c.greater, c.equal, false};
}

// Writes the top k of v[0, n) (by value, ties by smaller index) as `mark`
// into flags[0, n) and leaves other flags untouched. 0 <= k <= n. Returns
// false when v holds a NaN.
template <class Isa>
bool mark_top_k(const float* v, index_t n, index_t k, std::uint8_t* flags, std::uint8_t mark,
                float* buf_a, float* buf_b) noexcept {
  if (k <= 0) return true;
  if (k >= n) {
    for (index_t i = 0; i < n; ++i) {
      if (v[i] != v[i]) return false;
      flags[i] = mark;
    }
    return true;
  }
  const kth_result kth = kth_largest<Isa>(v, n, k, buf_a, buf_b);
  if (kth.has_nan) return false;
  index_t ties = k - kth.above;  // values equal to the answer still to take, by position
  const float value = kth.value;
  // A select rather than a branch: about half the tokens pass, unpredictably.
  if (kth.equal <= ties) {
    // Every value equal to the answer is taken (the usual case: one such
    // value), so one pass decides every token.
    for (index_t i = 0; i < n; ++i) flags[i] = v[i] >= value ? mark : flags[i];
    return true;
  }
  for (index_t i = 0; i < n; ++i) flags[i] = v[i] > value ? mark : flags[i];
  // The first `ties` equal values by position. Blocks without one are
  // skipped by a count the compiler vectorises, not a branch per value.
  constexpr index_t block = 64;
  for (index_t start = 0; start < n && ties > 0; start += block) {
    const index_t end = n - start < block ? n : start + block;
    index_t equal = 0;
    for (index_t i = start; i < end; ++i) equal += v[i] == value;
    if (equal == 0) continue;
    for (index_t i = start; i < end && ties > 0; ++i) {
      if (v[i] == value) {
        flags[i] = mark;
        --ties;
      }
    }
  }
  return true;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

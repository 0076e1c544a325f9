// Exact order statistics in O(N): the k-th largest value of a float array and
// the SPEC's "top k by value, ties by smaller position" (SPEC section 2).
//
// The k-th largest is found without sorting: a small deterministic sample
// brackets the answer, one SIMD partition pass counts what lies above the
// bracket and packs what lies inside it, and the search continues on the
// ~5x smaller inside set until a few hundred values remain for nth_element.
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
  bool has_nan = false;
};

// k-th largest (1-based, 1 <= k <= n) of v[0, n). buf_a and buf_b hold n
// floats each; v is never written.
template <class Isa>
kth_result kth_largest(const float* v, index_t n, index_t k, float* buf_a, float* buf_b) noexcept {
  constexpr index_t base_case = 512;
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float* src = v;
  float* out = buf_a;
  float* spare = buf_b;
  index_t m = n;
  index_t kk = k;
  index_t above = 0;
  while (m > base_case) {
    // Sample size ~2 sqrt(m) (64..512) at a fixed stride: deterministic.
    index_t sample_size = static_cast<index_t>(2.0 * std::sqrt(static_cast<double>(m)));
    sample_size = std::clamp<index_t>(sample_size, 64, 512);
    float sample[512];
    const index_t step = m / sample_size;
    bool sample_nan = false;
    for (index_t j = 0; j < sample_size; ++j) {
      sample[j] = src[j * step + step / 2];
      sample_nan |= sample[j] != sample[j];
    }
    // nth_element needs a strict weak order, which NaN breaks.
    if (sample_nan) return {0.0f, 0, true};
    const double p = static_cast<double>(kk) / static_cast<double>(m);
    const double sigma = std::sqrt(static_cast<double>(sample_size) * p * (1.0 - p));
    const auto centre = static_cast<index_t>(p * static_cast<double>(sample_size));
    const auto margin = static_cast<index_t>(2.5 * sigma) + 3;
    const index_t r_hi = std::max<index_t>(centre - margin, 0);
    const index_t r_lo = std::min<index_t>(centre + margin, sample_size - 1);
    std::nth_element(sample, sample + r_hi, sample + sample_size, std::greater<float>());
    std::nth_element(sample + r_hi, sample + r_lo, sample + sample_size, std::greater<float>());
    const float hi = sample[r_hi];
    const float lo = sample[r_lo];

    const simd::partition_counts c = simd::partition_kernel<Isa>::run(src, m, lo, hi, out);
    if (c.above + c.below + c.inside != m) return {0.0f, 0, true};
    if (kk <= c.above) {
      // The answer lies above the bracket: keep the values > hi.
      m = simd::partition_kernel<Isa>::run(src, m, std::nextafter(hi, inf), inf, out).inside;
    } else if (kk > c.above + c.inside) {
      // The answer lies below the bracket: keep the values < lo.
      above += c.above + c.inside;
      kk -= c.above + c.inside;
      m = simd::partition_kernel<Isa>::run(src, m, -inf, std::nextafter(lo, -inf), out).inside;
    } else {
      above += c.above;
      kk -= c.above;
      if (c.inside == m) {
        // The bracket holds everything (heavy ties): finish exactly below.
        break;
      }
      m = c.inside;
    }
    src = out;
    std::swap(out, spare);
  }
  if (src == v) {
    // Never reorder the caller's data; copy (and check for NaN on the way).
    bool nan = false;
    for (index_t i = 0; i < m; ++i) {
      out[i] = v[i];
      nan |= v[i] != v[i];
    }
    if (nan) return {0.0f, 0, true};
    src = out;
  }
  float* work = const_cast<float*>(src);  // one of our buffers
  std::nth_element(work, work + (kk - 1), work + m, std::greater<float>());
  const float value = work[kk - 1];
  // Values greater than the answer sit before it after nth_element; count the
  // strictly greater ones (equal values may sit on both sides).
  for (index_t i = 0; i < kk - 1; ++i) above += work[i] > value;
  return {value, above, false};
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
  for (index_t i = 0; i < n; ++i) {
    if (v[i] > value) flags[i] = mark;
  }
  for (index_t i = 0; i < n && ties > 0; ++i) {
    if (v[i] == value) {
      flags[i] = mark;
      --ties;
    }
  }
  return true;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

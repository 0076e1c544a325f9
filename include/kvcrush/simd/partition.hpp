// Partition kernel: one streaming pass over a float array that counts the
// values above hi and below lo and copies the values inside [lo, hi] (in
// order) to dst; and the rank count of one value in a short array. It is the workhorse of the exact O(N) order statistics
// (median thresholds, top-k): each pass shrinks the candidate set ~5x.
//
// dst must hold n floats; it may not alias src. NaN counts in no class, so
// above + below + inside < n reveals a NaN; CountBelow = false skips the
// below count where the caller has no use for it, and is for NaN-free input
// (a kernel may then count a NaN as inside).
#pragma once

#include <type_traits>

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

struct partition_counts {
  index_t above = 0;
  index_t below = 0;
  index_t inside = 0;
};

struct rank_counts {
  index_t greater = 0;
  index_t equal = 0;
};

template <class Isa>
struct partition_kernel {
  static_assert(isa::compiled_v<Isa>,
                "partition kernel requested for an ISA this translation unit is not compiled for");
};

template <>
struct partition_kernel<isa::scalar> {
  template <bool CountBelow = true>
  static partition_counts run(const float* KVCRUSH_RESTRICT src, index_t n, float lo, float hi,
                              float* KVCRUSH_RESTRICT dst) noexcept {
    partition_counts c;
    for (index_t i = 0; i < n; ++i) {
      const float v = src[i];
      c.above += v > hi;
      if (CountBelow) c.below += v < lo;
      dst[c.inside] = v;  // branch-free: the slot is overwritten unless v is inside
      c.inside += (v >= lo) & (v <= hi);
    }
    return c;
  }

  // How many of src[0, n) are greater than / equal to x (the rank of x).
  static rank_counts count(const float* src, index_t n, float x) noexcept {
    rank_counts r;
    for (index_t i = 0; i < n; ++i) {
      r.greater += src[i] > x;
      r.equal += src[i] == x;
    }
    return r;
  }
};

// Whether a kernel ranks short arrays (<= 64 values) itself, all values at
// once; otherwise the caller counts one value's rank at a time.
template <class Kernel, class = void>
struct has_small_order_statistics_impl : std::false_type {};
template <class Kernel>
struct has_small_order_statistics_impl<Kernel, std::void_t<decltype(&Kernel::small_order_statistics)>>
    : std::true_type {};
template <class Isa>
using has_small_order_statistics = has_small_order_statistics_impl<partition_kernel<Isa>>;

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/partition_avx2.hpp"
#include "kvcrush/simd/partition_avx512.hpp"

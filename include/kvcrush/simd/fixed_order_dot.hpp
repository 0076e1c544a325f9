// Sums of products in one fixed order, for the score sources that read keys,
// queries or values directly (KeyDiff, Expected Attention, R-KV redundancy).
//
// Why: a dot product added up "naturally" is added in a different order by
// every SIMD width, and GCC contracts a * b + c into a fused multiply-add in
// builds with FMA enabled and not in the baseline build, so the scalar, AVX2
// and AVX-512 builds would disagree in the last bit and, through ties, in
// the keep sets. Here every product is added with an explicit std::fma into
// one of 8 lanes (element j into lane j mod 8, each lane starting from +0),
// and the lanes are combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
// That order is SPEC 7's order for mean thresholds; it is fixed whatever the
// ISA. dot8d (double lanes) and dot8f (float lanes), and their 4-at-a-time
// forms, compute the same sums with AVX2 or AVX-512 vectors holding the 8
// lanes (a vector FMA rounds each lane as std::fma does), so they are fast
// and still bit-identical to the scalar loop.
#pragma once

#include <cmath>
#include <type_traits>

#include "kvcrush/float16.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Element conversions for dot8: exact widening, nothing else.
inline double to_acc(double v) noexcept { return v; }
inline float to_acc(float v) noexcept { return v; }
inline float to_acc(float16 v) noexcept { return to_float(v); }
inline float to_acc(bfloat16 v) noexcept { return to_float(v); }

template <class Acc>
inline Acc combine_lanes8(const Acc* lane) noexcept {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// sum_j a[j] * b[j] in Acc (float or double), the order above. A and B may
// be float, float16, bfloat16 or double; they are converted to Acc exactly
// (every float is a double; float16 and bfloat16 go through to_float).
template <class Acc, class A, class B>
inline Acc dot8(const A* a, const B* b, index_t n) noexcept {
  Acc lane[8] = {Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
  index_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
    }
  }
  for (int l = 0; j + l < n; ++l) {
    lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
  }
  return combine_lanes8(lane);
}

// sum_j a[j]^2, the same order.
template <class Acc, class A>
inline Acc sum_squares8(const A* a, index_t n) noexcept {
  return dot8<Acc>(a, a, n);
}

}  // namespace impl

namespace simd {

// The scalar kernel is the reference order itself; fixed_order_dot_avx2.hpp
// and fixed_order_dot_avx512.hpp specialise it with the same bits.
template <class Isa>
struct fixed_order_dot_kernel {
  template <class T>
  static double dot8d(const T* a, const T* b, index_t n) noexcept {
    return kvcrush::impl::dot8<double>(a, b, n);
  }
  template <class T>
  static void dot8d_x4(const T* x, const T* rows, index_t stride, index_t n, double* out) noexcept {
    for (int r = 0; r < 4; ++r) out[r] = kvcrush::impl::dot8<double>(x, rows + r * stride, n);
  }
  static float dot8f(const float* x, const float* y, index_t n) noexcept { return kvcrush::impl::dot8<float>(x, y, n); }
  static void dot8f_tile4(const float* const* x, const float* rows, index_t stride, index_t n,
                          float (*out)[4]) noexcept {
    for (int k = 0; k < 4; ++k)
      for (int r = 0; r < 4; ++r) out[k][r] = kvcrush::impl::dot8<float>(x[k], rows + r * stride, n);
  }
};

}  // namespace simd

namespace impl {

// dot8<double> of two float or two double arrays with the ISA's vectors:
// lane l of the vector accumulator is lane l above, and a vector FMA rounds
// each lane exactly as std::fma does, so the bits are dot8's.
template <class Isa, class T>
inline double dot8d(const T* a, const T* b, index_t n) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "dot8d reads float or double");
  return simd::fixed_order_dot_kernel<Isa>::dot8d(a, b, n);
}

// out[r] = dot8d(x, rows + r * stride, n) for r = 0..3, each with its own
// lanes in the order above (so the same bits as four dot8d calls), computed
// together so that the four dependency chains overlap.
template <class Isa, class T>
inline void dot8d_x4(const T* x, const T* rows, index_t stride, index_t n, double* out) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "dot8d_x4 reads float or double");
  simd::fixed_order_dot_kernel<Isa>::dot8d_x4(x, rows, stride, n, out);
}

// dot8<float>(x, y, n): the same bits with one 8-lane vector.
template <class Isa>
inline float dot8f(const float* x, const float* y, index_t n) noexcept {
  return simd::fixed_order_dot_kernel<Isa>::dot8f(x, y, n);
}

// out[k][r] = dot8<float>(x[k], rows + r * stride, n) for k, r = 0..3: a
// 4 x 4 tile of float dots, each in its own lanes (so the same bits as 16
// dot8<float> calls). Every vector loaded serves four products, which
// keeps the loop out of the cache's way.
template <class Isa>
inline void dot8f_tile4(const float* const* x, const float* rows, index_t stride, index_t n,
                        float (*out)[4]) noexcept {
  simd::fixed_order_dot_kernel<Isa>::dot8f_tile4(x, rows, stride, n, out);
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/fixed_order_dot_avx2.hpp"
#include "kvcrush/simd/fixed_order_dot_avx512.hpp"

// The two run-time-to-compile-time switches the quantized kernels need,
// written once so that the per-ISA kernel files hold only ISA-specific code:
// the code width (2, 4 or 8 bits) and the number of registers or tiles a
// partial step covers.
#pragma once

#include <type_traits>
#include <utility>

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// f(std::integral_constant<int, B>{}) for B = bits, which the caller has
// validated (valid_code_bits): 2, 4, and 8 for anything else.
template <class F>
decltype(auto) with_code_bits(int bits, F&& f) {
  switch (bits) {
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

namespace impl {
template <class F, int... I>
void with_count(index_t count, F& f, std::integer_sequence<int, I...>) {
  (void)((count == I + 1 ? (f(std::integral_constant<int, I + 1>{}), true) : false) || ...);
}
}  // namespace impl

// f(std::integral_constant<int, C>{}) for C = min(count, Max); nothing when
// count < 1.
template <int Max, class F>
void with_count_up_to(index_t count, F&& f) {
  static_assert(Max >= 1, "with_count_up_to needs Max >= 1");
  impl::with_count(count < Max ? count : Max, f, std::make_integer_sequence<int, Max>{});
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

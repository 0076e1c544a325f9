// Hamming kernel: d[t] = popcount(sig[t] XOR anchor) for n token-major
// signatures of `words` 64-bit words, vectorised across tokens.
#pragma once

#include <cstdint>

#include "kvcrush/simd/bits.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <class Isa>
struct hamming_kernel {
  static_assert(isa::compiled_v<Isa>,
                "hamming kernel requested for an ISA this translation unit is not compiled for");
};

template <>
struct hamming_kernel<isa::scalar> {
  static void run(const std::uint64_t* KVCRUSH_RESTRICT sig, index_t n, index_t words,
                  const std::uint64_t* KVCRUSH_RESTRICT anchor, std::uint32_t* KVCRUSH_RESTRICT out) noexcept {
    for (index_t t = 0; t < n; ++t) {
      unsigned d = 0;
      for (index_t w = 0; w < words; ++w) d += popcount64(sig[t * words + w] ^ anchor[w]);
      out[t] = d;
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/hamming_avx2.hpp"
#include "kvcrush/simd/hamming_avx512.hpp"

// Anchors (SPEC 4.2): the reference signature distances are measured from.
#pragma once

#include <cstdint>

#include "kvcrush/random.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

inline namespace KVCRUSH_TARGET_NS {

// Writes the anchor of `bits` bits into out (signature_words(bits) words;
// unused high bits are 0). counts[b] is how many of the `total` evictable
// signatures have bit b set; only the mean and inv_mean anchors read it.
inline void make_anchor(anchor_mode mode, index_t bits, const index_t* counts, index_t total,
                        std::uint64_t seed, std::uint64_t* out) noexcept {
  const index_t words = signature_words(bits);
  for (index_t w = 0; w < words; ++w) out[w] = 0;
  for (index_t b = 0; b < bits; ++b) {
    bool set = false;
    switch (mode) {
      case anchor_mode::zeros: set = false; break;
      case anchor_mode::ones: set = true; break;
      case anchor_mode::alternating: set = (b % 2) == 1; break;
      case anchor_mode::mean: set = 2 * counts[b] > total; break;
      case anchor_mode::inv_mean: set = 2 * counts[b] < total; break;
      case anchor_mode::random:
        set = (splitmix64_at(seed, static_cast<std::uint64_t>(b / 64)) >> (b % 64)) & 1u;
        break;
    }
    if (set) out[b / 64] |= std::uint64_t{1} << (b % 64);
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

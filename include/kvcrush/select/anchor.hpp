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
  // Word by word, each bit or-ed in without a branch: the mean anchor's bits
  // follow the data, and a branch per bit mispredicted on half of them.
  const index_t words = signature_words(bits);
  for (index_t w = 0; w < words; ++w) {
    const index_t first = 64 * w;
    const index_t len = bits - first < 64 ? bits - first : 64;
    const std::uint64_t used = len == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << len) - 1;
    std::uint64_t word = 0;
    switch (mode) {
      case anchor_mode::zeros: break;
      case anchor_mode::ones: word = used; break;
      case anchor_mode::alternating: word = 0xaaaaaaaaaaaaaaaaull & used; break;  // odd bits
      case anchor_mode::mean:
        for (index_t k = 0; k < len; ++k) word |= static_cast<std::uint64_t>(2 * counts[first + k] > total) << k;
        break;
      case anchor_mode::inv_mean:
        for (index_t k = 0; k < len; ++k) word |= static_cast<std::uint64_t>(2 * counts[first + k] < total) << k;
        break;
      case anchor_mode::random: word = splitmix64_at(seed, static_cast<std::uint64_t>(w)) & used; break;
    }
    out[w] = word;
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

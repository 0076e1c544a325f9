// Anchors (SPEC 4.2): the reference signature distances are measured from.
#pragma once

#include <cstdint>

#include "kvcrush/error.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// splitmix64 (Steele, Lea, Flood 2014): the documented generator behind the
// `random` anchor and the random policy. Output i of seed s is
// splitmix64_at(s, i): a pure function, so results never depend on call order.
constexpr std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t index) noexcept {
  std::uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

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

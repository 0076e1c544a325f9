// The one random number generator of the library, for the `random` anchor
// and the random policy: a pure function of (seed, index), so results never
// depend on call order or on which layer asks.
#pragma once

#include <cstdint>

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

}  // namespace kvcrush

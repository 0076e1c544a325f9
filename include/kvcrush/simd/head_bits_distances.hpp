// Hamming distances to an anchor straight from head-major bits (the layout
// of simd/head_bits.hpp), without transposing them to token-major words.
//
// A token's distance is the number of heads whose bit differs from the
// anchor's: the sum, over heads, of the head's row XOR its anchor pattern. A
// tile of a head's bits fills whole registers, and the sums are kept
// bit-sliced: counter plane p holds bit p of every token's count, and a row
// is added with a ripple of AND/XOR across the planes. The planes then
// become byte counts and those are widened to uint32.
//
// The anchor comes as one 512-bit pattern per head, XOR-ed with each tile
// of that head's bits: all ones or all zeros in token mode (one anchor bit
// per head), and in block mode (SPEC 4.4) the anchor bits of every position
// in the block, repeated, so that summing b tokens' counts gives the
// block's distance (select/signatures.hpp).
//
// Kernels exist for AVX2 and AVX-512; has_head_bits_distances<Isa> tells.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvcrush/isa.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// Most heads the kernels count: the counts are bytes.
constexpr index_t head_bits_distances_max_heads = 255;

// Words of one head's anchor pattern: one tile of tokens.
constexpr index_t head_pattern_words = head_bits_tile_tokens / 64;

// dist[t] = number of heads h < heads whose bit for token t differs from bit
// t % 512 of head h's pattern (patterns[head_pattern_words * h ...], bit
// t % 64 of word t % 512 / 64), for t < n, 1 <= heads <=
// head_bits_distances_max_heads; bits in the head-major layout with the
// given stride. Writes nothing past dist[n - 1].
template <class Isa>
struct head_bits_distances_kernel;  // defined only for ISAs with a kernel

template <class Isa, class = void>
struct has_head_bits_distances : std::false_type {};
template <class Isa>
struct has_head_bits_distances<Isa, std::void_t<decltype(sizeof(head_bits_distances_kernel<Isa>))>>
    : std::true_type {};

// Calls f(std::integral_constant<int, P>) with P the number of bit planes a
// count of up to `heads` needs (1 to 8).
template <class F>
void with_planes_for(index_t heads, F&& f) {
  if (heads < 2) return f(std::integral_constant<int, 1>{});
  if (heads < 4) return f(std::integral_constant<int, 2>{});
  if (heads < 8) return f(std::integral_constant<int, 3>{});
  if (heads < 16) return f(std::integral_constant<int, 4>{});
  if (heads < 32) return f(std::integral_constant<int, 5>{});
  if (heads < 64) return f(std::integral_constant<int, 6>{});
  if (heads < 128) return f(std::integral_constant<int, 7>{});
  return f(std::integral_constant<int, 8>{});
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/head_bits_distances_avx2.hpp"
#include "kvcrush/simd/head_bits_distances_avx512.hpp"

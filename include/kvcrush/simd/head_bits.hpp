// Head-major signature bits, for median signatures built one head at a time.
//
// The token-major signature pass reads every head's row once more after the
// thresholds are known, from wherever the matrix lives (L3 for a 4 MB score
// matrix). Building the bits of a head right after its threshold, while the
// row is still in L2, makes that second read cheap; the price is a transpose
// of the bits, which costs far less than a pass over the floats.
//
// Layout of the head-major bits: tiles of 32 groups of 16 tokens (512
// tokens); within a tile, head h owns 32 consecutive uint16, bit j of the
// gi-th being its bit for token 16 gi + j of the tile. `stride` (the head
// count rounded up to 32) heads per tile, padding heads zero. A head thus
// writes whole cache lines, and a tile's 32 x 32 uint16 blocks transpose in
// registers.
//
// Kernels exist where they pay off (AVX2, AVX-512); has_head_bits<Isa>
// tells. The scalar build keeps the token-major pass.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvcrush/simd/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <class Isa>
struct head_bits_kernel;  // defined only for ISAs with a kernel

template <class Isa, class = void>
struct has_head_bits : std::false_type {};
template <class Isa>
struct has_head_bits<Isa, std::void_t<decltype(sizeof(head_bits_kernel<Isa>))>> : std::true_type {};

// Heads per transposed block: the head-major stride is a multiple of it.
constexpr index_t head_bits_block = 32;

constexpr index_t head_bits_stride(index_t heads) noexcept {
  return (heads + head_bits_block - 1) / head_bits_block * head_bits_block;
}

constexpr index_t head_bits_tile_tokens = 512;

// uint16 elements of the head-major bits of `tokens` tokens and `heads` heads.
constexpr index_t head_bits_size(index_t heads, index_t tokens) noexcept {
  return (tokens + head_bits_tile_tokens - 1) / head_bits_tile_tokens * head_bits_stride(heads) * 32;
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/head_bits_avx2.hpp"
#include "kvcrush/simd/head_bits_avx512.hpp"

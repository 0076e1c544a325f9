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
#include <cstring>
#include <type_traits>

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>
#endif

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

// What a head's pass does with the running sums over heads.
enum class head_sum_mode { none, first, add, add_last };

// What a kernel's bracket_pass found: tokens above the bracket, tokens
// inside it (packed), and NaN as row_pass reports it.
struct bracket_counts {
  index_t above = 0;
  index_t inside = 0;
  bool nan = false;
};

// A head whose bits wait for the next head's bracket_pass, which sets them
// as it streams its own row (or settle_deferred does, after the last head):
// work that does not stream finds room in a pass that waits on memory.
// The AVX-512 kernel has set the bits above the bracket already and settles
// the tokens inside it from the packed scores' marks (one word per 64 tokens
// of which tokens are inside, and for each of those in token order whether
// it is at or above the median): a walk on other execution ports than the
// pass's. The AVX2 kernel compares the row with the median again, from L2.
struct deferred_settle {
  const float* row = nullptr;  // the head's scores; nullptr: no head waits
  float threshold = 0.0f;      // its median: bits for scores >= it
  index_t head = 0;
  const std::uint64_t* inside_words = nullptr;
  const std::uint64_t* ge_words = nullptr;
};

// Whether the kernel decides a head's bits in the pass that brackets its
// median (bracket_pass, defer_settle and settle_deferred).
template <class Kernel, class = void>
struct has_bracket_pass_impl : std::false_type {};
template <class Kernel>
struct has_bracket_pass_impl<Kernel, std::void_t<decltype(&Kernel::settle_deferred)>> : std::true_type {};
template <class Isa>
using has_bracket_pass = has_bracket_pass_impl<head_bits_kernel<Isa>>;

// Head `head`'s bits over row[0, n): row[t] >= threshold, through the
// kernel's row_pass<mode>. With sums, also sums[t] = row[t] (head 0) or
// sums[t] + row[t] (later heads), the float sum in head order. Returns true
// on NaN: in the row without sums; with sums, in the last head's sums only,
// which a NaN score or an inf - inf on the way would have made NaN (NaN
// stays NaN under addition).
template <class Kernel>
bool head_bits_row(const float* row, index_t n, float threshold, index_t head, index_t heads, index_t stride,
                   std::uint16_t* bits, float* sums) noexcept {
  // One head: its sums are its row, checked as without sums.
  if (!sums || heads == 1) {
    const bool nan = Kernel::template row_pass<head_sum_mode::none>(row, n, threshold, head, stride, bits, nullptr);
    if (sums) std::memcpy(sums, row, static_cast<std::size_t>(n) * sizeof(float));
    return nan;
  }
  if (head == 0) return Kernel::template row_pass<head_sum_mode::first>(row, n, threshold, head, stride, bits, sums);
  if (head + 1 < heads) {
    return Kernel::template row_pass<head_sum_mode::add>(row, n, threshold, head, stride, bits, sums);
  }
  return Kernel::template row_pass<head_sum_mode::add_last>(row, n, threshold, head, stride, bits, sums);
}

// Token-major signatures of a single head (one word per token, bit 0) from
// its head-major bits: what the transpose computes, without 31 padding heads.
template <class Isa>
void expand_one_head(const std::uint16_t* bits, index_t stride, index_t n, std::uint64_t* signatures) noexcept {
  for (index_t g = 0; g * 16 < n; ++g) {
    const std::uint16_t group = bits[(g / 32) * stride * 32 + g % 32];
    const index_t len = n - 16 * g < 16 ? n - 16 * g : 16;
#if KVCRUSH_HAS_AVX512
    if constexpr (std::is_same_v<Isa, isa::avx512>) {
      const __m512i one = _mm512_set1_epi64(1);
      const auto first = static_cast<__mmask8>(len >= 8 ? 0xffu : (1u << len) - 1u);
      const auto second = static_cast<__mmask8>(len >= 16 ? 0xffu : len > 8 ? (1u << (len - 8)) - 1u : 0u);
      _mm512_mask_storeu_epi64(signatures + 16 * g, first, _mm512_maskz_mov_epi64(static_cast<__mmask8>(group), one));
      _mm512_mask_storeu_epi64(signatures + 16 * g + 8, second,
                               _mm512_maskz_mov_epi64(static_cast<__mmask8>(group >> 8), one));
      continue;
    }
#endif
    for (index_t j = 0; j < len; ++j) signatures[16 * g + j] = (group >> j) & 1u;
  }
}

// An 8 x 8 bit matrix transposed: bit j of byte i moves to bit i of byte j
// (three rounds of swapping off-diagonal blocks, Hacker's Delight 7-3).
constexpr std::uint64_t transpose_bits8x8(std::uint64_t x) noexcept {
  std::uint64_t t = (x ^ (x >> 7)) & 0x00aa00aa00aa00aaull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000cccc0000ccccull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000f0f0f0f0ull;
  return x ^ t ^ (t << 28);
}

// Token-major signatures of 2 to 8 heads (one word per token, bits 0..7)
// from head-major bits: per 16 tokens, two 8 x 8 bit transposes, where the
// 32-head tile transpose would spend most of its work on padding heads.
template <class Isa>
void transpose_few_heads(const std::uint16_t* bits, index_t heads, index_t stride, index_t n,
                         std::uint64_t* signatures) noexcept {
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    if constexpr (head_bits_kernel<Isa>::has_few_heads_transpose) {
      head_bits_kernel<Isa>::transpose_few(bits, heads, stride, n, signatures);
      return;
    }
  }
#endif
  for (index_t g = 0; g * 16 < n; ++g) {
    std::uint64_t low = 0, high = 0;  // byte h: head h's bits of tokens 0..7 (8..15)
    for (index_t h = 0; h < heads; ++h) {
      const std::uint16_t group = bits[((g / 32) * stride + h) * 32 + g % 32];
      low |= static_cast<std::uint64_t>(group & 0xffu) << (8 * h);
      high |= static_cast<std::uint64_t>(group >> 8) << (8 * h);
    }
    low = transpose_bits8x8(low);  // byte t: token t's bits of every head
    high = transpose_bits8x8(high);
    const index_t len = n - 16 * g < 16 ? n - 16 * g : 16;
    std::uint64_t* out = signatures + 16 * g;
#if KVCRUSH_HAS_AVX2
    if constexpr (!std::is_same_v<Isa, isa::scalar>) {
      if (len == 16) {
        // Four bytes at a time widened to words.
        const std::uint64_t quarters[4] = {low, low >> 32, high, high >> 32};
        for (int q = 0; q < 4; ++q) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * q),
                              _mm256_cvtepu8_epi64(_mm_cvtsi64_si128(static_cast<long long>(quarters[q]))));
        }
        continue;
      }
    }
#endif
    for (index_t t = 0; t < len; ++t) out[t] = (t < 8 ? low >> (8 * t) : high >> (8 * (t - 8))) & 0xffu;
  }
}

// Zero bits for the padding heads [heads, stride) of every tile.
inline void head_bits_zero_padding(index_t heads, index_t stride, index_t n, std::uint16_t* bits) noexcept {
  const index_t tiles = (n + head_bits_tile_tokens - 1) / head_bits_tile_tokens;
  for (index_t tile = 0; tile < tiles; ++tile) {
    for (index_t h = heads; h < stride; ++h) std::memset(bits + (tile * stride + h) * 32, 0, 32 * sizeof(std::uint16_t));
  }
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/head_bits_avx2.hpp"
#include "kvcrush/simd/head_bits_avx512.hpp"

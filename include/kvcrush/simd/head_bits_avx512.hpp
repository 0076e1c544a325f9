// AVX-512 head-major bits: one compare per 16 tokens of a row (plus the
// running sum over heads when asked), and a transpose per 512-token tile:
// 32 x 32 uint16 blocks transposed in registers by five perfect shuffles,
// then one token at a time peeled off 32 heads with vpmovw2m (the top bit of
// each 16-bit lane), doubling the lanes in between.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstring>

#include "kvcrush/simd/avx512_util.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/simd/partition.hpp"

#if defined(__GFNI__) && defined(__AVX512VBMI__)
#define KVCRUSH_HEAD_BITS_GFNI 1
#else
#define KVCRUSH_HEAD_BITS_GFNI 0
#endif

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// Byte and dword permutations of the GFNI transpose.
struct head_bits_gfni_tables {
  alignas(64) std::uint8_t to_blocks[64];   // block (k, hb) row r <- head 8 hb + 7 - r, tokens 8 k..
  alignas(64) std::uint8_t to_tokens[64];   // token 8 k + i byte hb <- block (k, hb) byte i
  alignas(64) std::uint32_t pair_first[16];   // tokens 0..7: (low[t], high[t])
  alignas(64) std::uint32_t pair_second[16];  // tokens 8..15
  alignas(64) std::uint8_t spread[64];        // byte p <- byte p / 8 (the few-heads transpose)
};

constexpr head_bits_gfni_tables make_head_bits_gfni_tables() noexcept {
  head_bits_gfni_tables t{};
  for (int k = 0; k < 2; ++k) {
    for (int hb = 0; hb < 4; ++hb) {
      for (int r = 0; r < 8; ++r) {
        const int block = k * 4 + hb;
        t.to_blocks[block * 8 + r] = static_cast<std::uint8_t>(2 * (8 * hb + 7 - r) + k);
        t.to_tokens[(8 * k + r) * 4 + hb] = static_cast<std::uint8_t>(block * 8 + r);
      }
    }
  }
  for (int j = 0; j < 16; ++j) {
    t.pair_first[j] = static_cast<std::uint32_t>(j / 2 + (j % 2 ? 16 : 0));
    t.pair_second[j] = static_cast<std::uint32_t>(8 + j / 2 + (j % 2 ? 16 : 0));
  }
  for (int p = 0; p < 64; ++p) t.spread[p] = static_cast<std::uint8_t>(p / 8);
  return t;
}

inline constexpr head_bits_gfni_tables gfni_tables = make_head_bits_gfni_tables();

template <>
struct head_bits_kernel<isa::avx512> {
#if KVCRUSH_HEAD_BITS_GFNI
  static constexpr bool has_few_heads_transpose = true;

  // transpose_few_heads (head_bits.hpp) for 2 to 8 heads, 512 tokens per
  // step. Byte j of head h's 32 groups holds its bits of tokens 8 j .. 8 j + 7.
  // Three rounds of unpacks gather, for every j, the heads' bytes into one
  // 64-bit 8 x 8 bit block (heads in reverse, as the affine transform wants
  // them); one GF(2) affine transform per 8 blocks transposes them to a byte
  // per token; a byte permute spreads each block's 8 bytes to 8 words.
  static void transpose_few(const std::uint16_t* bits, index_t heads, index_t stride, index_t n,
                            std::uint64_t* out) noexcept {
    const __m512i unit = _mm512_set1_epi64(static_cast<long long>(0x8040201008040201ull));
    constexpr auto low_bytes = static_cast<__mmask64>(0x0101010101010101ull);
    // Zero-masked unpacks with every lane on: GCC 12's unmasked forms start
    // from _mm512_undefined_*(), which -Wall reports as maybe-uninitialized.
    constexpr auto all64 = static_cast<__mmask64>(~0ull);
    constexpr auto all32 = static_cast<__mmask32>(~0u);
    constexpr auto all16 = static_cast<__mmask16>(0xffffu);
    // Byte 8 t of word t (t < 8) <- byte 8 k + t of the transposed vector.
    const __m512i spread = _mm512_load_si512(gfni_tables.spread);
    for (index_t tile = 0; tile * 512 < n; ++tile) {
      __m512i rows[8];  // rows[k]: head 7 - k
      for (int k = 0; k < 8; ++k) {
        const index_t h = 7 - k;
        rows[k] = h < heads ? _mm512_loadu_si512(bits + (tile * stride + h) * 32) : _mm512_setzero_si512();
      }
      for (int a = 0; a < 2; ++a) {
        // Per 128-bit lane: bytes 8 a .. 8 a + 7 of each pair of rows, interleaved.
        __m512i pairs[4];
        for (int p = 0; p < 4; ++p) {
          pairs[p] = a ? _mm512_maskz_unpackhi_epi8(all64, rows[2 * p], rows[2 * p + 1])
                       : _mm512_maskz_unpacklo_epi8(all64, rows[2 * p], rows[2 * p + 1]);
        }
        for (int b = 0; b < 2; ++b) {
          const __m512i first4 = b ? _mm512_maskz_unpackhi_epi16(all32, pairs[0], pairs[1]) : _mm512_maskz_unpacklo_epi16(all32, pairs[0], pairs[1]);
          const __m512i last4 = b ? _mm512_maskz_unpackhi_epi16(all32, pairs[2], pairs[3]) : _mm512_maskz_unpacklo_epi16(all32, pairs[2], pairs[3]);
          for (int c = 0; c < 2; ++c) {
            const __m512i blocks = c ? _mm512_maskz_unpackhi_epi32(all16, first4, last4) : _mm512_maskz_unpacklo_epi32(all16, first4, last4);
            const __m512i tokens = _mm512_gf2p8affine_epi64_epi8(unit, blocks, 0);
            // Block k of the vector (lane k / 2) holds tokens 8 j .. 8 j + 7.
            for (int k = 0; k < 8; ++k) {
              const index_t j = 16 * (k / 2) + 8 * a + 4 * b + 2 * c + k % 2;
              const index_t first = tile * 512 + 8 * j;
              if (first >= n) continue;
              const __m512i words = _mm512_maskz_permutexvar_epi8(
                  low_bytes, _mm512_add_epi8(spread, _mm512_set1_epi8(static_cast<char>(8 * k))), tokens);
              const index_t left = n - first;
              if (left >= 8) {
                _mm512_storeu_si512(out + first, words);
              } else {
                _mm512_mask_storeu_epi64(out + first, static_cast<__mmask8>((1u << left) - 1u), words);
              }
            }
          }
        }
      }
    }
  }
#else
  static constexpr bool has_few_heads_transpose = false;
#endif

  // Token-major signatures (words per token) of n tokens from head-major
  // bits. `scratch` holds 32 * stride uint16, 64-byte aligned; bits must be
  // 64-byte aligned too.
  static void transpose(const std::uint16_t* bits, index_t stride, index_t n, std::uint64_t* signatures, index_t words,
                        std::uint16_t* scratch) noexcept {
#if KVCRUSH_HEAD_BITS_GFNI
    transpose_tiles<true>(bits, stride, n, signatures, words, scratch);
#else
    transpose_tiles<false>(bits, stride, n, signatures, words, scratch);
#endif
  }

  // The same with the last step done by vpmovw2m, whatever the compiler
  // flags: what builds without GFNI/VBMI run (tested against the above).
  static void transpose_without_gfni(const std::uint16_t* bits, index_t stride, index_t n, std::uint64_t* signatures,
                                     index_t words, std::uint16_t* scratch) noexcept {
    transpose_tiles<false>(bits, stride, n, signatures, words, scratch);
  }

 private:
  template <bool Gfni>
  static void transpose_tiles(const std::uint16_t* bits, index_t stride, index_t n, std::uint64_t* signatures,
                              index_t words, std::uint16_t* scratch) noexcept {
    // Interleaving the first (second) halves of two rows, element from a at
    // even positions and from b at odd ones.
    alignas(64) std::uint16_t lo_index[32], hi_index[32];
    for (int j = 0; j < 32; ++j) {
      lo_index[j] = static_cast<std::uint16_t>(j / 2 + (j % 2 ? 32 : 0));
      hi_index[j] = static_cast<std::uint16_t>(16 + j / 2 + (j % 2 ? 32 : 0));
    }
    const __m512i lo = _mm512_load_si512(lo_index);
    const __m512i hi = _mm512_load_si512(hi_index);
    const index_t blocks = stride / 32;
    for (index_t t0 = 0; t0 < n; t0 += head_bits_tile_tokens) {
      const std::uint16_t* tile = bits + (t0 / head_bits_tile_tokens) * stride * 32;
      for (index_t b = 0; b < blocks; ++b) {
        // Row r = head 32 b + r, column c = group c. Each round moves the
        // top column bit into the row index and the top row bit into the
        // column index; after five, rows are groups and columns heads.
        __m512i m[32];
        for (int r = 0; r < 32; ++r) m[r] = _mm512_load_si512(tile + (32 * b + r) * 32);
        for (int round = 0; round < 5; ++round) {
          __m512i next[32];
          for (int r = 0; r < 16; ++r) {
            next[2 * r] = _mm512_permutex2var_epi16(m[r], lo, m[r + 16]);
            next[2 * r + 1] = _mm512_permutex2var_epi16(m[r], hi, m[r + 16]);
          }
          for (int r = 0; r < 32; ++r) m[r] = next[r];
        }
        for (int g = 0; g < 32; ++g) _mm512_store_si512(scratch + g * stride + 32 * b, m[g]);
      }
      const index_t len = n - t0 < head_bits_tile_tokens ? n - t0 : head_bits_tile_tokens;
#if KVCRUSH_HEAD_BITS_GFNI
      if constexpr (Gfni) {
        peel_gfni(scratch, stride, len, signatures + t0 * words, words);
        continue;
      }
#endif
      peel(scratch, stride, len, signatures + t0 * words, words);
    }
  }

 public:
  // One head's pass over its row; head_bits_row (head_bits.hpp) picks the mode.
  template <head_sum_mode Mode>
  static bool row_pass(const float* row, index_t n, float threshold, index_t head, index_t stride, std::uint16_t* bits,
                       float* sums) noexcept {
    const __m512 t = _mm512_set1_ps(threshold);
    __mmask16 nan = 0;
    // One 16-token group: its mask, and the NaN check that this mode needs.
    auto group = [&](index_t at, __mmask16 lanes) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes, row + at);
      if (Mode == head_sum_mode::none) nan |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
      if (Mode == head_sum_mode::first) _mm512_mask_storeu_ps(sums + at, lanes, v);
      if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) {
        const __m512 total = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, sums + at), v);
        _mm512_mask_storeu_ps(sums + at, lanes, total);
        if (Mode == head_sum_mode::add_last) nan |= _mm512_mask_cmp_ps_mask(lanes, total, total, _CMP_UNORD_Q);
      }
      return _mm512_mask_cmp_ps_mask(lanes, v, t, _CMP_GE_OQ);
    };
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __mmask16 take[4] = {group(i, 0xffff), group(i + 16, 0xffff), group(i + 32, 0xffff), group(i + 48, 0xffff)};
      const std::uint64_t word = avx512_util::join4(take);
      const index_t g = i / 16;
      std::memcpy(bits + ((g / 32) * stride + head) * 32 + g % 32, &word, sizeof word);
    }
    for (; i < n; i += 16) {
      const auto lanes = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
      const index_t g = i / 16;
      bits[((g / 32) * stride + head) * 32 + g % 32] = group(i, lanes);
    }
    // The last tile's unused groups read as zero in the transpose.
    for (index_t g = (n + 15) / 16; g % 32 != 0; ++g) bits[((g / 32) * stride + head) * 32 + g % 32] = 0;
    return nan != 0;
  }

  // One head's pass around a bracket [lo, hi] that likely holds its
  // median (bracketed_median.hpp): the bits of the tokens above hi, which
  // are set whatever the median turns out to be; a word per 64 tokens
  // marking the tokens inside [lo, hi]; and those tokens' scores, packed in
  // order into `inside` (room for n + 16 floats), whose exact order
  // statistic then settles their bits. Sums and NaN checks as row_pass.
  // Along the way it settles the deferred head, if any (over the same n
  // tokens), 64 tokens per step of its own.
  template <head_sum_mode Mode>
  static bracket_counts bracket_pass(const float* row, index_t n, float lo, float hi, index_t head, index_t stride,
                                     std::uint16_t* bits, std::uint64_t* inside_words, float* inside, float* sums,
                                     const deferred_settle& deferred) noexcept {
    const __m512 vlo = _mm512_set1_ps(lo);
    const __m512 vhi = _mm512_set1_ps(hi);
    __mmask16 nan = 0;
    // Without sums, the row's own running sum stands for the NaN check (an
    // add costs less than a compare here): NaN stays NaN under addition. A
    // NaN sum from opposite infinities is told apart by the exact check.
    __m512 total_row = _mm512_setzero_ps();
    bracket_counts c;
    // One 16-token group: its above and inside masks, sums and NaN check.
    auto group = [&](index_t at, __mmask16 lanes, __m512& v, __mmask16& in) {
      v = _mm512_maskz_loadu_ps(lanes, row + at);
      if (Mode == head_sum_mode::none) total_row = _mm512_add_ps(total_row, v);
      if (Mode == head_sum_mode::first) _mm512_mask_storeu_ps(sums + at, lanes, v);
      if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) {
        const __m512 total = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, sums + at), v);
        _mm512_mask_storeu_ps(sums + at, lanes, total);
        if (Mode == head_sum_mode::add_last) nan |= _mm512_mask_cmp_ps_mask(lanes, total, total, _CMP_UNORD_Q);
      }
      const __mmask16 up = _mm512_mask_cmp_ps_mask(lanes, v, vhi, _CMP_GT_OQ);
      in = static_cast<__mmask16>(~up & _mm512_mask_cmp_ps_mask(lanes, v, vlo, _CMP_GE_OQ));
      return up;
    };
    index_t cursor = 0;  // the deferred head's inside tokens settled so far
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
      if (deferred.row) settle_word(deferred, i / 64, stride, bits, cursor);
      __m512 v[4];
      __mmask16 up[4], in[4];
      for (int j = 0; j < 4; ++j) up[j] = group(i + 16 * j, 0xffff, v[j], in[j]);
      const std::uint64_t up_word = avx512_util::join4(up);
      const std::uint64_t in_word = avx512_util::join4(in);
      const index_t g = i / 16;
      std::memcpy(bits + ((g / 32) * stride + head) * 32 + g % 32, &up_word, sizeof up_word);
      inside_words[i / 64] = in_word;
      c.above += static_cast<index_t>(_mm_popcnt_u64(up_word));
      c.inside += avx512_util::compress_store4(v, in, in_word, inside + c.inside);
    }
    if (i < n) {
      if (deferred.row) settle_word(deferred, i / 64, stride, bits, cursor);
      std::uint64_t in_word = 0;
      for (; i < n; i += 16) {
        const auto lanes = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
        __m512 v;
        __mmask16 in;
        const index_t g = i / 16;
        bits[((g / 32) * stride + head) * 32 + g % 32] = group(i, lanes, v, in);
        c.above += _mm_popcnt_u32(bits[((g / 32) * stride + head) * 32 + g % 32]);
        _mm512_storeu_ps(inside + c.inside, _mm512_maskz_compress_ps(in, v));
        c.inside += _mm_popcnt_u32(in);
        in_word |= static_cast<std::uint64_t>(in) << (i % 64);
      }
      inside_words[(n - 1) / 64] = in_word;
    }
    // The last tile's unused groups read as zero in the transpose.
    for (index_t g = (n + 15) / 16; g % 32 != 0; ++g) bits[((g / 32) * stride + head) * 32 + g % 32] = 0;
    if (Mode == head_sum_mode::none && _mm512_cmp_ps_mask(total_row, total_row, _CMP_UNORD_Q) != 0) {
      for (index_t i = 0; i < n; i += 16) {
        const auto lanes = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(lanes, row + i);
        nan |= _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
      }
    }
    c.nan = nan != 0;
    return c;
  }

  // Defers the settle of a head whose bracket held (bracket_pass set its bits
  // above the bracket and marked the inside tokens in inside_words): bit j of
  // ge_words <- inside[j] >= threshold, for j < count. ge_words holds
  // count / 64 + 2 words; the settle's window may read the word after the
  // last one in use, so both ends read as zero.
  static deferred_settle defer_settle(const float* row, float threshold, index_t head, const float* inside,
                                      index_t count, const std::uint64_t* inside_words,
                                      std::uint64_t* ge_words) noexcept {
    const __m512 t = _mm512_set1_ps(threshold);
    ge_words[count / 64] = 0;
    ge_words[count / 64 + 1] = 0;
    auto* ge_bytes = reinterpret_cast<unsigned char*>(ge_words);
    for (index_t j = 0; j < count; j += 16) {
      const auto lanes = static_cast<__mmask16>(count - j >= 16 ? 0xffffu : (1u << (count - j)) - 1u);
      const std::uint16_t ge =
          _mm512_mask_cmp_ps_mask(lanes, _mm512_maskz_loadu_ps(lanes, inside + j), t, _CMP_GE_OQ);
      std::memcpy(ge_bytes + j / 8, &ge, sizeof ge);
    }
    return deferred_settle{row, threshold, head, inside_words, ge_words};
  }

  // Settles the deferred head's n tokens on their own (after the last head).
  static void settle_deferred(const deferred_settle& deferred, index_t n, index_t stride,
                              std::uint16_t* bits) noexcept {
    index_t cursor = 0;
    for (index_t b = 0; b * 64 < n; ++b) settle_word(deferred, b, stride, bits, cursor);
  }

 private:
  // Tokens [64 b, 64 b + 64) of the deferred head: its inside tokens there
  // own the next popcount(word) bits of the ge mask, from `cursor` on, and
  // pdep spreads them onto the tokens.
  KVCRUSH_ALWAYS_INLINE static void settle_word(const deferred_settle& deferred, index_t b, index_t stride,
                                                std::uint16_t* bits, index_t& cursor) noexcept {
    const std::uint64_t word = deferred.inside_words[b];
    const index_t shift = cursor % 64;
    const std::uint64_t low = deferred.ge_words[cursor / 64] >> shift;
    const std::uint64_t high = shift ? deferred.ge_words[cursor / 64 + 1] << (64 - shift) : 0;
    const std::uint64_t settled = _pdep_u64(low | high, word);
    cursor += static_cast<index_t>(_mm_popcnt_u64(word));
    const index_t g = 4 * b;
    std::uint64_t current;
    std::uint16_t* at = bits + ((g / 32) * stride + deferred.head) * 32 + g % 32;
    std::memcpy(&current, at, sizeof current);
    current |= settled;
    std::memcpy(at, &current, sizeof current);
  }

#if KVCRUSH_HEAD_BITS_GFNI
  // 16 tokens' 32-bit words (heads 32 b .. 32 b + 31) from one group's 32
  // uint16 (byte 2 h + k: head h, tokens 8 k .. 8 k + 7): bytes gathered
  // into 8 x 8 bit blocks (8 heads x 8 tokens, rows in reverse), each block
  // transposed by one GF(2) affine transform with the unit rows as data,
  // then bytes gathered per token.
  static __m512i token_words(__m512i group) noexcept {
    const __m512i blocks = _mm512_permutexvar_epi8(_mm512_load_si512(gfni_tables.to_blocks), group);
    const __m512i transposed =
        _mm512_gf2p8affine_epi64_epi8(_mm512_set1_epi64(static_cast<long long>(0x8040201008040201ull)), blocks, 0);
    return _mm512_permutexvar_epi8(_mm512_load_si512(gfni_tables.to_tokens), transposed);
  }

  static void peel_gfni(const std::uint16_t* scratch, index_t stride, index_t n, std::uint64_t* out,
                        index_t words) noexcept {
    const index_t blocks = stride / 32;
    const __m512i first_half = _mm512_load_si512(gfni_tables.pair_first);
    const __m512i second_half = _mm512_load_si512(gfni_tables.pair_second);
    for (index_t g = 0; g * 16 < n; ++g) {
      const index_t len = n - 16 * g < 16 ? n - 16 * g : 16;
      const auto first_mask = static_cast<__mmask8>(len >= 8 ? 0xffu : (1u << len) - 1u);
      const auto second_mask = static_cast<__mmask8>(len >= 16 ? 0xffu : (len > 8 ? (1u << (len - 8)) - 1u : 0u));
      const std::uint16_t* group = scratch + g * stride;
      std::uint64_t* tokens = out + 16 * g * words;
      for (index_t w = 0; w < words; ++w) {
        const __m512i low = token_words(_mm512_load_si512(group + 64 * w));
        const __m512i high = 2 * w + 1 < blocks ? token_words(_mm512_load_si512(group + 64 * w + 32))
                                                : _mm512_setzero_si512();
        // Token t's word: low dword t, high dword t.
        const __m512i first = _mm512_permutex2var_epi32(low, first_half, high);
        const __m512i second = _mm512_permutex2var_epi32(low, second_half, high);
        if (words == 1) {
          _mm512_mask_storeu_epi64(tokens, first_mask, first);
          _mm512_mask_storeu_epi64(tokens + 8, second_mask, second);
        } else {
          alignas(64) std::uint64_t word[16];
          _mm512_store_si512(word, first);
          _mm512_store_si512(word + 8, second);
          for (index_t j = 0; j < len; ++j) tokens[j * words + w] = word[j];
        }
      }
    }
  }
#endif

  // Token-major words from group-major bits: scratch[g * stride + h], bit j
  // for token 16 g + j.
  static void peel(const std::uint16_t* scratch, index_t stride, index_t n, std::uint64_t* out, index_t words) noexcept {
    const index_t blocks = stride / 32;
    for (index_t g = 0; g * 16 < n; ++g) {
      const index_t len = n - 16 * g < 16 ? n - 16 * g : 16;
      const std::uint16_t* group = scratch + g * stride;
      std::uint64_t* tokens = out + 16 * g * words;
      const __m512i skip = _mm512_set1_epi16(static_cast<short>(16 - len));
      for (index_t w = 0; w < words; ++w) {
        // Token 15 sits in the top bit of each lane; shifting the lanes left
        // brings tokens 14, 13, ... up in turn.
        __m512i low = _mm512_sllv_epi16(_mm512_load_si512(group + 64 * w), skip);
        if (2 * w + 1 < blocks) {
          __m512i high = _mm512_sllv_epi16(_mm512_load_si512(group + 64 * w + 32), skip);
          for (index_t j = len - 1; j >= 0; --j) {
            tokens[j * words + w] = static_cast<std::uint64_t>(_cvtmask32_u32(_mm512_movepi16_mask(low))) |
                                    static_cast<std::uint64_t>(_cvtmask32_u32(_mm512_movepi16_mask(high))) << 32;
            low = _mm512_add_epi16(low, low);
            high = _mm512_add_epi16(high, high);
          }
        } else {
          for (index_t j = len - 1; j >= 0; --j) {
            tokens[j * words + w] = _cvtmask32_u32(_mm512_movepi16_mask(low));
            low = _mm512_add_epi16(low, low);
          }
        }
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512

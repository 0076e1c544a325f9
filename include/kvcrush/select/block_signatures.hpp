// Block signatures (SPEC 4.4): a block of b tokens is represented by the
// concatenation of its tokens' signatures, token i of the block owning bits
// [i * bits, (i + 1) * bits), and the mean anchor counts, per block-bit, how
// many blocks have it set.
//
// Both run once per compression event over every evictable token, so they
// are written as word operations: whole words are copied or shifted into
// place, and the counts come from the column count kernels rather than from
// one bit at a time.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcrush/select/signatures.hpp"
#include "kvcrush/simd/bit_pack.hpp"
#include "kvcrush/simd/column_counts.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Packs a stream of one-word signatures of `Bits` bits (Bits divides 64)
// into words holding 64 / Bits of them each, lowest first. Writes
// tokens * Bits / 64 words; tokens must be a multiple of 64 / Bits.
template <int Bits>
void pack_signature_stream(const std::uint64_t* KVCRUSH_RESTRICT token_sig, index_t tokens,
                           std::uint64_t* KVCRUSH_RESTRICT out) noexcept {
  constexpr int per_word = 64 / Bits;
  constexpr std::uint64_t low = Bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << Bits) - 1;
  const index_t words = tokens / per_word;
  for (index_t k = 0; k < words; ++k) {
    std::uint64_t word = 0;
    for (int m = 0; m < per_word; ++m) word |= (token_sig[k * per_word + m] & low) << (m * Bits);
    out[k] = word;
  }
}

// Block signatures of `blocks` blocks of b tokens from token signatures
// (token_words words each, `bits` bits used, unused bits zero). Returns the
// block signatures: signature_words(bits * b) words per block, either
// written to block_sig or, when every token fills whole words, the token
// signatures themselves (the layouts are then identical).
template <class Isa = isa::active>
const std::uint64_t* concatenate_block_signatures(const std::uint64_t* token_sig, index_t token_words,
                                                         index_t bits, index_t blocks, index_t b,
                                                         std::uint64_t* block_sig) noexcept {
  if (bits % 64 == 0) return token_sig;
  const index_t block_bits = bits * b;
  const index_t block_words = signature_words(block_bits);
  const index_t tokens = blocks * b;
  if (token_words == 1 && block_bits % 64 == 0 && 64 % bits == 0) {
    // Blocks end on word boundaries, so all blocks form one packed stream.
    switch (bits) {
      case 1: simd::pack_one_bit_signatures<Isa>(token_sig, tokens, block_sig); return block_sig;
      case 2: pack_signature_stream<2>(token_sig, tokens, block_sig); return block_sig;
      case 4: pack_signature_stream<4>(token_sig, tokens, block_sig); return block_sig;
      case 8: pack_signature_stream<8>(token_sig, tokens, block_sig); return block_sig;
      case 16: pack_signature_stream<16>(token_sig, tokens, block_sig); return block_sig;
      case 32: pack_signature_stream<32>(token_sig, tokens, block_sig); return block_sig;
      default: break;
    }
  }
  if (token_words == 1 && 64 % bits == 0 && 64 % block_bits == 0) {
    // Blocks narrower than a word, packed whole into the stream: pack the
    // stream into block_sig (the whole words, then the partial last one),
    // then give each block its field, last block first (block j's field
    // lies in stream word j * block_bits / 64 <= j, which the descending
    // order has not overwritten yet).
    const index_t per_word = 64 / bits;
    const index_t whole = tokens / per_word * per_word;
    switch (bits) {
      case 1: simd::pack_one_bit_signatures<Isa>(token_sig, whole, block_sig); break;
      case 2: pack_signature_stream<2>(token_sig, whole, block_sig); break;
      case 4: pack_signature_stream<4>(token_sig, whole, block_sig); break;
      case 8: pack_signature_stream<8>(token_sig, whole, block_sig); break;
      case 16: pack_signature_stream<16>(token_sig, whole, block_sig); break;
      default: pack_signature_stream<32>(token_sig, whole, block_sig); break;
    }
    if (whole < tokens) {
      std::uint64_t last = 0;
      for (index_t t = whole; t < tokens; ++t) last |= token_sig[t] << ((t - whole) * bits);
      block_sig[whole / per_word] = last;
    }
    const std::uint64_t field = (std::uint64_t{1} << block_bits) - 1;
    for (index_t j = blocks - 1; j >= 0; --j) {
      const index_t at = j * block_bits;
      block_sig[j] = block_sig[at / 64] >> (at % 64) & field;
    }
    return block_sig;
  }
  // Any other shape: each token's words shifted into place. A token's
  // unused high bits are zero, so OR-ing whole words never disturbs the
  // next token's bits.
  for (index_t j = 0; j < blocks; ++j) {
    std::uint64_t* out = block_sig + j * block_words;
    for (index_t w = 0; w < block_words; ++w) out[w] = 0;
    index_t offset = 0;
    for (index_t i = 0; i < b; ++i, offset += bits) {
      const std::uint64_t* in = token_sig + (j * b + i) * token_words;
      for (index_t w = 0; w < token_words; ++w) {
        const index_t at = offset + 64 * w;
        const index_t word = at / 64, shift = at % 64;
        out[word] |= in[w] << shift;
        if (shift != 0 && word + 1 < block_words) out[word + 1] |= in[w] >> (64 - shift);
      }
    }
  }
  return block_sig;
}

// counts[i] = how many of the n block signatures (words each) have bit i
// set, for i in [0, 64 * words).
template <class Isa>
void count_block_bits(const std::uint64_t* block_sig, index_t n, index_t words, index_t* counts) noexcept {
  for (index_t i = 0; i < 64 * words; ++i) counts[i] = 0;
  simd::column_count_kernel<Isa>::run(block_sig, n, words, counts);
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// Scratch memory of the selection stage (select/, and the head-wise budgets
// of policy/adakv.hpp): signatures, thresholds, flags, distances, orders.
//
// Each buffer has one role, named by its accessor; the functions of this
// stage take a selection_scratch&, so no other stage can reach these
// buffers. Contents are unspecified between calls. One per thread: it is not
// synchronised.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kvcrush/scratch.hpp"
#include "kvcrush/select/buckets.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

class selection_scratch {
 public:
  selection_scratch() = default;
  selection_scratch(const selection_scratch&) = delete;
  selection_scratch& operator=(const selection_scratch&) = delete;
  selection_scratch(selection_scratch&&) noexcept = default;
  selection_scratch& operator=(selection_scratch&&) noexcept = default;

  // Grows every buffer for selections over up to `heads` KV heads, `tokens`
  // tokens, `signature_heads` signature rows (0: same as heads) and blocks of
  // up to `block_size` tokens, so that such calls never allocate.
  void reserve(index_t heads, index_t tokens, index_t signature_heads = 0, index_t block_size = 1) {
    const auto h = static_cast<std::size_t>(heads > 0 ? heads : 1);
    const auto hs = static_cast<std::size_t>(signature_heads > heads ? signature_heads : h);
    const auto n = static_cast<std::size_t>(tokens > 0 ? tokens : 1);
    const auto b = static_cast<std::size_t>(block_size > 1 ? block_size : 1);
    const std::size_t words = (hs + 63) / 64;
    const std::size_t unit_bits = hs * b;
    floats_a(n * h + 64);
    floats_b(n * h + 64);
    row_copy(n * h);
    signature_copy(n * hs);
    importance(n * h + 1);
    unit_importance(n + 1);
    unit_counts(((unit_bits + 63) / 64) * 64 + 1);
    thresholds(hs);
    ties(hs);
    bit_counts(hs);
    signatures(n * words + 1);
    block_signatures((n / b) * ((unit_bits + 63) / 64) + 1);
    anchor((unit_bits + 63) / 64);
    anchor_patterns(hs * static_cast<std::size_t>(simd::head_bits_tile_tokens / 64));
    tile_columns(static_cast<std::size_t>(simd::head_bits_tile_tokens));
    distances(n + 1);
    flags(n * h + 1);
    flags_b(n * h + 1);
    order(n + 1);
    split_picks(h);
    split_order(n + 1);
    histogram(representative_histogram_size(unit_bits));
    head_bits(static_cast<std::size_t>(simd::head_bits_size(static_cast<index_t>(hs), static_cast<index_t>(n)) +
                                       32 * simd::head_bits_stride(static_cast<index_t>(hs))));
  }

  // How many times a buffer of this stage had to grow.
  std::size_t allocations() const noexcept { return allocations_; }

  std::size_t bytes_reserved() const noexcept {
    return floats_a_.capacity() * 4 + floats_b_.capacity() * 4 + row_copy_.capacity() * 4 +
           signature_copy_.capacity() * 4 + importance_.capacity() * 4 + unit_importance_.capacity() * 4 +
           unit_counts_.capacity() * 8 + thresholds_.capacity() * 4 + ties_.capacity() * 8 +
           bit_counts_.capacity() * 8 + signatures_.capacity() * 8 + anchor_.capacity() * 8 +
           anchor_patterns_.capacity() * 8 + tile_columns_.capacity() * 8 +
           distances_.capacity() * 4 + flags_.capacity() + flags_b_.capacity() + order_.capacity() * 8 +
           split_picks_.capacity() * 8 + split_order_.capacity() * 8 +
           histogram_.capacity() * 8 + block_signatures_.capacity() * 8 + head_bits_.capacity() * 2;
  }

  // One buffer per role; each returns room for n elements.
  float* floats_a(std::size_t n) { return floats_a_.ensure(n, allocations_); }
  float* floats_b(std::size_t n) { return floats_b_.ensure(n, allocations_); }
  float* row_copy(std::size_t n) { return row_copy_.ensure(n, allocations_); }
  float* signature_copy(std::size_t n) { return signature_copy_.ensure(n, allocations_); }
  float* importance(std::size_t n) { return importance_.ensure(n, allocations_); }
  float* unit_importance(std::size_t n) { return unit_importance_.ensure(n, allocations_); }
  index_t* unit_counts(std::size_t n) { return unit_counts_.ensure(n, allocations_); }
  float* thresholds(std::size_t n) { return thresholds_.ensure(n, allocations_); }
  index_t* ties(std::size_t n) { return ties_.ensure(n, allocations_); }
  index_t* bit_counts(std::size_t n) { return bit_counts_.ensure(n, allocations_); }
  std::uint64_t* signatures(std::size_t n) { return signatures_.ensure(n, allocations_); }
  std::uint64_t* block_signatures(std::size_t n) { return block_signatures_.ensure(n, allocations_); }
  std::uint64_t* anchor(std::size_t n) { return anchor_.ensure(n, allocations_); }
  // The anchor as one 512-bit pattern per head, for distances from head-major bits.
  std::uint64_t* anchor_patterns(std::size_t n) { return anchor_patterns_.ensure(n, allocations_); }
  // One head's column counts over its 512-token tiles (block mode's mean anchor).
  index_t* tile_columns(std::size_t n) { return tile_columns_.ensure(n, allocations_); }
  std::uint32_t* distances(std::size_t n) { return distances_.ensure(n, allocations_); }
  std::uint8_t* flags(std::size_t n) { return flags_.ensure(n, allocations_); }
  std::uint8_t* flags_b(std::size_t n) { return flags_b_.ensure(n, allocations_); }
  index_t* order(std::size_t n) { return order_.ensure(n, allocations_); }
  index_t* split_picks(std::size_t n) { return split_picks_.ensure(n, allocations_); }
  index_t* split_order(std::size_t n) { return split_order_.ensure(n, allocations_); }
  index_t* histogram(std::size_t n) { return histogram_.ensure(n, allocations_); }
  std::uint16_t* head_bits(std::size_t n) { return head_bits_.ensure(n, allocations_); }

 private:
  std::size_t allocations_ = 0;
  detail::scratch<float> floats_a_, floats_b_, row_copy_, signature_copy_, importance_, unit_importance_,
      thresholds_;
  detail::scratch<index_t> ties_, bit_counts_, unit_counts_, tile_columns_, order_, split_picks_, split_order_,
      histogram_;
  detail::scratch<std::uint64_t> signatures_, block_signatures_, anchor_, anchor_patterns_;
  detail::scratch<std::uint32_t> distances_;
  detail::scratch<std::uint8_t> flags_, flags_b_;
  detail::scratch<std::uint16_t> head_bits_;
};

}  // namespace kvcrush

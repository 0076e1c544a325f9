// Caller-owned scratch memory for every selection call.
//
// Buffers grow on demand and are never shrunk, so once a workspace has served
// the largest call (or reserve() was called with the largest shapes) no later
// call allocates. One workspace per thread: it is not synchronised.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "kvcrush/select/buckets.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

namespace detail {

// Uninitialised, 64-byte aligned storage for trivially copyable T.
template <class T>
class scratch {
  static_assert(std::is_trivially_copyable_v<T>, "scratch holds plain data only");

 public:
  // Pointer to at least n elements (contents unspecified). Grows
  // geometrically so that slowly growing calls allocate O(log n) times.
  T* ensure(std::size_t n, std::size_t& allocation_counter) {
    if (n > capacity_) {
      std::size_t grown = capacity_ + capacity_ / 2;
      const std::size_t wanted = n > grown ? n : grown;
      data_.reset(static_cast<T*>(::operator new(wanted * sizeof(T), std::align_val_t{64})));
      capacity_ = wanted;
      ++allocation_counter;
    }
    return data_.get();
  }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct deleter {
    void operator()(T* p) const noexcept { ::operator delete(p, std::align_val_t{64}); }
  };
  std::unique_ptr<T, deleter> data_;
  std::size_t capacity_ = 0;
};

}  // namespace detail

class workspace {
 public:
  workspace() = default;
  workspace(const workspace&) = delete;
  workspace& operator=(const workspace&) = delete;
  workspace(workspace&&) noexcept = default;
  workspace& operator=(workspace&&) noexcept = default;

  // Grows every buffer for calls over up to `heads` KV heads, `tokens`
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
    distances(n + 1);
    flags(n * h + 1);
    flags_b(n * h + 1);
    scores(n * h);
    query_scores(n * hs);
    order(n + 1);
    histogram(representative_histogram_size(unit_bits));
    positions(n);
    head_bits(static_cast<std::size_t>(simd::head_bits_size(static_cast<index_t>(hs), static_cast<index_t>(n)) +
                                       32 * simd::head_bits_stride(static_cast<index_t>(hs))));
  }

  // How many times any buffer had to grow; tests use it to prove that a
  // warmed-up workspace serves calls without allocating.
  std::size_t allocations() const noexcept { return allocations_; }

  std::size_t bytes_reserved() const noexcept {
    return floats_a_.capacity() * 4 + floats_b_.capacity() * 4 + row_copy_.capacity() * 4 + signature_copy_.capacity() * 4 +
           importance_.capacity() * 4 + unit_importance_.capacity() * 4 + unit_counts_.capacity() * 8 +
           thresholds_.capacity() * 4 + ties_.capacity() * 8 +
           bit_counts_.capacity() * 8 + signatures_.capacity() * 8 + anchor_.capacity() * 8 +
           distances_.capacity() * 4 + flags_.capacity() + flags_b_.capacity() + scores_.capacity() * 4 +
           query_scores_.capacity() * 4 + order_.capacity() * 8 +
           histogram_.capacity() * 8 + positions_.capacity() * 8 + block_signatures_.capacity() * 8 +
           head_bits_.capacity() * 2;
  }

  // Internal buffers, one per role. Each returns room for n elements.
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
  std::uint32_t* distances(std::size_t n) { return distances_.ensure(n, allocations_); }
  std::uint8_t* flags(std::size_t n) { return flags_.ensure(n, allocations_); }
  std::uint8_t* flags_b(std::size_t n) { return flags_b_.ensure(n, allocations_); }
  float* scores(std::size_t n) { return scores_.ensure(n, allocations_); }
  float* query_scores(std::size_t n) { return query_scores_.ensure(n, allocations_); }
  index_t* order(std::size_t n) { return order_.ensure(n, allocations_); }
  index_t* histogram(std::size_t n) { return histogram_.ensure(n, allocations_); }
  index_t* positions(std::size_t n) { return positions_.ensure(n, allocations_); }
  std::uint16_t* head_bits(std::size_t n) { return head_bits_.ensure(n, allocations_); }

 private:
  std::size_t allocations_ = 0;
  detail::scratch<float> floats_a_, floats_b_, row_copy_, signature_copy_, importance_, unit_importance_,
      thresholds_, scores_, query_scores_;
  detail::scratch<index_t> ties_, bit_counts_, unit_counts_, order_, histogram_, positions_;
  detail::scratch<std::uint64_t> signatures_, block_signatures_, anchor_;
  detail::scratch<std::uint32_t> distances_;
  detail::scratch<std::uint8_t> flags_, flags_b_;
  detail::scratch<std::uint16_t> head_bits_;
};

}  // namespace kvcrush

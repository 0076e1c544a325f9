// Growable scratch buffers: the building block of every stage's caller-owned
// workspace (select/selection_scratch.hpp, scores/attention_scratch.hpp,
// quant/quant_scratch.hpp, policy/workspace.hpp).
//
// A buffer grows on demand and never shrinks, and each growth is counted, so
// that tests can prove a warmed-up workspace serves calls without allocating.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

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

}  // namespace kvcrush

// Non-owning strided views over caller memory (scores, K/V caches, keep sets).
//
// A view is a pointer plus, per dimension, an extent and a signed stride in
// elements. Const-correctness follows the element type: strided_view<const T>
// reads, strided_view<T> writes, and a mutable view converts to a const one.
// Element access with operator() is bounds-checked when
// KVCRUSH_ENABLE_BOUNDS_CHECKS is 1 (the default without NDEBUG); at() is
// always checked.
#pragma once

#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kvcrush/config.hpp"
#include "kvcrush/error.hpp"

namespace kvcrush {

using index_t = std::ptrdiff_t;

inline constexpr bool bounds_checks_enabled = KVCRUSH_ENABLE_BOUNDS_CHECKS != 0;

template <class T, std::size_t Rank>
class strided_view {
  static_assert(Rank >= 1 && Rank <= 4, "strided_view supports rank 1 to 4");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr std::size_t rank = Rank;

  constexpr strided_view() noexcept = default;

  // Row-major (C order) contiguous view.
  strided_view(T* data, const extents_type& extents) : data_(data), extents_(extents) {
    index_t stride = 1;
    for (std::size_t d = Rank; d-- > 0;) {
      strides_[d] = stride;
      stride *= extents[d];
    }
    validate();
  }

  strided_view(T* data, const extents_type& extents, const extents_type& strides)
      : data_(data), extents_(extents), strides_(strides) {
    validate();
  }

  // A mutable view is usable wherever a read-only one is expected.
  template <class U, class = std::enable_if_t<!std::is_same_v<U, T> &&
                                              std::is_convertible_v<U (*)[], T (*)[]>>>
  constexpr strided_view(const strided_view<U, Rank>& other) noexcept  // NOLINT: implicit on purpose
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr const extents_type& extents() const noexcept { return extents_; }
  constexpr const extents_type& strides() const noexcept { return strides_; }
  constexpr index_t extent(std::size_t d) const noexcept { return extents_[d]; }
  constexpr index_t stride(std::size_t d) const noexcept { return strides_[d]; }

  constexpr index_t size() const noexcept {
    index_t n = 1;
    for (index_t e : extents_) n *= e;
    return n;
  }
  constexpr bool empty() const noexcept { return size() == 0; }

  // True when the elements are packed in row-major order without gaps.
  constexpr bool is_contiguous() const noexcept {
    index_t expected = 1;
    for (std::size_t d = Rank; d-- > 0;) {
      if (extents_[d] != 1 && strides_[d] != expected) return false;
      expected *= extents_[d];
    }
    return true;
  }

  template <class... Idx>
  T& operator()(Idx... idx) const noexcept(!KVCRUSH_ENABLE_BOUNDS_CHECKS) {
    static_assert(sizeof...(Idx) == Rank, "one index per dimension");
#if KVCRUSH_ENABLE_BOUNDS_CHECKS
    check_bounds({static_cast<index_t>(idx)...});
#endif
    return data_[offset_of({static_cast<index_t>(idx)...})];
  }

  template <class... Idx>
  T& at(Idx... idx) const {
    static_assert(sizeof...(Idx) == Rank, "one index per dimension");
    check_bounds({static_cast<index_t>(idx)...});
    return data_[offset_of({static_cast<index_t>(idx)...})];
  }

  // Rank 1: the element. Rank > 1: the sub-view at index i of dimension 0.
  decltype(auto) operator[](index_t i) const noexcept(!KVCRUSH_ENABLE_BOUNDS_CHECKS) {
#if KVCRUSH_ENABLE_BOUNDS_CHECKS
    check_index(0, i);
#endif
    if constexpr (Rank == 1) {
      return static_cast<T&>(data_[i * strides_[0]]);
    } else {
      return drop_front(i);
    }
  }

  // The view restricted to [begin, begin + count) along dimension dim.
  strided_view slice(std::size_t dim, index_t begin, index_t count) const {
    detail::require(dim < Rank, "slice: dimension ", dim, " out of range for rank ", Rank);
    detail::require(begin >= 0 && count >= 0 && begin + count <= extents_[dim],
                    "slice: [", begin, ", ", begin + count, ") out of range for extent ",
                    extents_[dim]);
    strided_view out = *this;
    out.data_ = count > 0 ? data_ + begin * strides_[dim] : data_;
    out.extents_[dim] = count;
    return out;
  }

  // Dimensions reordered: dimension d of the result is dimension order[d] of this.
  strided_view permute(const std::array<std::size_t, Rank>& order) const {
    std::array<bool, Rank> seen{};
    strided_view out = *this;
    for (std::size_t d = 0; d < Rank; ++d) {
      detail::require(order[d] < Rank && !seen[order[d]], "permute: not a permutation");
      seen[order[d]] = true;
      out.extents_[d] = extents_[order[d]];
      out.strides_[d] = strides_[order[d]];
    }
    return out;
  }

  // Reversed along one dimension (negative stride), e.g. newest token first.
  strided_view reverse(std::size_t dim) const {
    detail::require(dim < Rank, "reverse: dimension out of range");
    strided_view out = *this;
    if (extents_[dim] > 0) out.data_ = data_ + (extents_[dim] - 1) * strides_[dim];
    out.strides_[dim] = -strides_[dim];
    return out;
  }

 private:
  template <class U, std::size_t R>
  friend class strided_view;

  void validate() const {
    for (std::size_t d = 0; d < Rank; ++d) {
      detail::require(extents_[d] >= 0, "view extent ", d, " is negative (", extents_[d], ")");
    }
    detail::require(data_ != nullptr || size() == 0, "view over a null pointer with ",
                    size(), " elements");
  }

  constexpr index_t offset_of(const extents_type& idx) const noexcept {
    index_t off = 0;
    for (std::size_t d = 0; d < Rank; ++d) off += idx[d] * strides_[d];
    return off;
  }

  void check_index(std::size_t d, index_t i) const {
    if (i < 0 || i >= extents_[d]) {
      throw std::out_of_range(detail::concat("kvcrush: index ", i, " out of range [0, ",
                                             extents_[d], ") in dimension ", d));
    }
  }

  void check_bounds(const extents_type& idx) const {
    for (std::size_t d = 0; d < Rank; ++d) check_index(d, idx[d]);
  }

  strided_view<T, (Rank > 1 ? Rank - 1 : 1)> drop_front(index_t i) const noexcept {
    strided_view<T, (Rank > 1 ? Rank - 1 : 1)> out;
    out.data_ = data_ + i * strides_[0];
    for (std::size_t d = 1; d < Rank; ++d) {
      out.extents_[d - 1] = extents_[d];
      out.strides_[d - 1] = strides_[d];
    }
    return out;
  }

  T* data_ = nullptr;
  extents_type extents_{};
  extents_type strides_{};
};

template <class T>
using vector_view = strided_view<T, 1>;
template <class T>
using matrix_view = strided_view<T, 2>;

// Shorthands for the common cases.
template <class T>
vector_view<T> make_vector_view(T* data, index_t n, index_t stride = 1) {
  return vector_view<T>(data, {n}, {stride});
}

// rows x cols, row r starting at data + r * row_stride (row_stride >= cols
// for padded rows).
template <class T>
matrix_view<T> make_matrix_view(T* data, index_t rows, index_t cols, index_t row_stride) {
  return matrix_view<T>(data, {rows, cols}, {row_stride, 1});
}

template <class T>
matrix_view<T> make_matrix_view(T* data, index_t rows, index_t cols) {
  return make_matrix_view(data, rows, cols, cols);
}

}  // namespace kvcrush

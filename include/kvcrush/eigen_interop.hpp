// Zero-copy bridges between kvcrush views and Eigen, in both directions.
// Strides carry over exactly (including padded rows and negative strides), so
// an engine holding Eigen matrices passes them in without copying and gets
// Eigen expressions over kvcrush views for free.
#pragma once

#include <Eigen/Core>
#include <type_traits>

#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

template <class T>
using eigen_row_major_t = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, Eigen::Dynamic,
                                        Eigen::RowMajor>;

template <class T>
using eigen_matrix_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>, const eigen_row_major_t<T>,
                                  eigen_row_major_t<T>>,
               Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

template <class T>
using eigen_vector_t = Eigen::Matrix<std::remove_const_t<T>, Eigen::Dynamic, 1>;

template <class T>
using eigen_vector_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>, const eigen_vector_t<T>, eigen_vector_t<T>>,
               Eigen::Unaligned, Eigen::InnerStride<Eigen::Dynamic>>;

// matrix_view (rows, cols) -> Eigen row-major map with the view's strides.
template <class T>
eigen_matrix_map<T> to_eigen(const matrix_view<T>& view) {
  return eigen_matrix_map<T>(view.data(), view.extent(0), view.extent(1),
                             Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(view.stride(0),
                                                                          view.stride(1)));
}

template <class T>
eigen_vector_map<T> to_eigen(const vector_view<T>& view) {
  return eigen_vector_map<T>(view.data(), view.extent(0),
                             Eigen::InnerStride<Eigen::Dynamic>(view.stride(0)));
}

// Any Eigen object with direct access (Matrix, Map, Ref, Block of those) ->
// matrix_view over the same memory. Const objects give read-only views.
// Only lvalues are accepted: a view of a temporary would dangle.
template <class Derived,
          class = std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<std::remove_const_t<Derived>>,
                                                     std::remove_const_t<Derived>>>>
auto as_matrix_view(Derived& m) {
  using T = std::remove_pointer_t<decltype(m.data())>;
  return matrix_view<T>(m.data(), {static_cast<index_t>(m.rows()), static_cast<index_t>(m.cols())},
                        {static_cast<index_t>(m.rowStride()), static_cast<index_t>(m.colStride())});
}

template <class Derived,
          class = std::enable_if_t<std::is_base_of_v<Eigen::DenseBase<std::remove_const_t<Derived>>,
                                                     std::remove_const_t<Derived>>>>
auto as_vector_view(Derived& v) {
  static_assert(std::remove_const_t<Derived>::IsVectorAtCompileTime,
                "as_vector_view needs an Eigen vector");
  using T = std::remove_pointer_t<decltype(v.data())>;
  return vector_view<T>(v.data(), {static_cast<index_t>(v.size())},
                        {static_cast<index_t>(v.innerStride())});
}

}  // namespace kvcrush

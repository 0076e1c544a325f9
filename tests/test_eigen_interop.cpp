#include <gtest/gtest.h>

#include <vector>

#include "kvcrush/eigen_interop.hpp"
#include "test_support.hpp"

using kvcrush::index_t;

TEST(EigenInterop, ViewToEigenKeepsStrides) {
  std::vector<float> data(4 * 7);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  auto view = kvcrush::make_matrix_view(data.data(), 4, 5, 7);
  auto map = kvcrush::to_eigen(view);
  ASSERT_EQ(map.rows(), 4);
  ASSERT_EQ(map.cols(), 5);
  for (index_t r = 0; r < 4; ++r)
    for (index_t c = 0; c < 5; ++c) EXPECT_EQ(map(r, c), view(r, c));
  map(3, 4) = -1.0f;  // writes go to the caller's memory
  EXPECT_EQ(data[3 * 7 + 4], -1.0f);
  // Eigen arithmetic over a padded view.
  EXPECT_FLOAT_EQ(map.row(1).sum(), 7 + 8 + 9 + 10 + 11);

  kvcrush::matrix_view<const float> ro = view;
  auto cmap = kvcrush::to_eigen(ro);
  static_assert(!std::is_lvalue_reference_v<decltype(cmap(0, 0))> ||
                std::is_const_v<std::remove_reference_t<decltype(cmap(0, 0))>>,
                "a read-only view gives a read-only map");
  EXPECT_EQ(cmap(2, 2), 16.0f);
}

TEST(EigenInterop, NegativeStrides) {
  std::vector<float> data = {0, 1, 2, 3, 4, 5};
  kvcrush::matrix_view<float> m(data.data(), {2, 3});
  auto map = kvcrush::to_eigen(m.reverse(1));
  EXPECT_EQ(map(0, 0), 2.0f);
  EXPECT_EQ(map(1, 2), 3.0f);
  kvcrush::vector_view<const float> back(data.data() + 5, {6}, {-1});
  auto v = kvcrush::to_eigen(back);
  EXPECT_EQ(v(0), 5.0f);
  EXPECT_EQ(v.sum(), 15.0f);
}

TEST(EigenInterop, EigenToView) {
  Eigen::MatrixXf col_major(3, 4);  // Eigen's default order
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) col_major(r, c) = static_cast<float>(10 * r + c);
  auto v = kvcrush::as_matrix_view(col_major);
  static_assert(std::is_same_v<decltype(v), kvcrush::matrix_view<float>>);
  EXPECT_EQ(v.stride(0), 1);
  EXPECT_EQ(v.stride(1), 3);
  for (index_t r = 0; r < 3; ++r)
    for (index_t c = 0; c < 4; ++c) EXPECT_EQ(v(r, c), col_major(r, c));
  v(2, 3) = 99.0f;
  EXPECT_EQ(col_major(2, 3), 99.0f);

  const Eigen::MatrixXf& cref = col_major;
  auto cv = kvcrush::as_matrix_view(cref);
  static_assert(std::is_same_v<decltype(cv), kvcrush::matrix_view<const float>>);

  auto block = col_major.block(1, 1, 2, 2);
  auto bv = kvcrush::as_matrix_view(block);
  EXPECT_EQ(bv(0, 0), col_major(1, 1));
  EXPECT_EQ(bv(1, 1), col_major(2, 2));

  Eigen::VectorXf vec = Eigen::VectorXf::LinSpaced(5, 0.0f, 4.0f);
  auto vv = kvcrush::as_vector_view(vec);
  EXPECT_EQ(vv[4], 4.0f);

  // Round trip: view -> Eigen -> view keeps the same memory and strides.
  std::vector<float> data(12);
  auto padded = kvcrush::make_matrix_view(data.data(), 3, 3, 4);
  auto map = kvcrush::to_eigen(padded);
  auto again = kvcrush::as_matrix_view(map);
  EXPECT_EQ(again.data(), padded.data());
  EXPECT_EQ(again.strides(), padded.strides());
}

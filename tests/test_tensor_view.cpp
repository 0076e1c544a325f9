#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kvcrush/tensor_view.hpp"
#include "test_support.hpp"

using kvcrush::index_t;
using kvcrush::strided_view;

static_assert(std::is_convertible_v<strided_view<float, 2>, strided_view<const float, 2>>,
              "mutable views convert to read-only views");
static_assert(!std::is_convertible_v<strided_view<const float, 2>, strided_view<float, 2>>,
              "read-only views never convert to mutable views");
static_assert(std::is_same_v<decltype(std::declval<strided_view<const float, 1>>()(0)), const float&>,
              "element access through a read-only view is read-only");

TEST(TensorView, ContiguousStridesAreRowMajor) {
  std::vector<int> data(2 * 3 * 4);
  std::iota(data.begin(), data.end(), 0);
  strided_view<int, 3> v(data.data(), {2, 3, 4});
  EXPECT_EQ(v.stride(0), 12);
  EXPECT_EQ(v.stride(1), 4);
  EXPECT_EQ(v.stride(2), 1);
  EXPECT_EQ(v.size(), 24);
  EXPECT_TRUE(v.is_contiguous());
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 3; ++j)
      for (index_t k = 0; k < 4; ++k) EXPECT_EQ(v(i, j, k), i * 12 + j * 4 + k);
  EXPECT_EQ(v[1][2][3], 23);
}

TEST(TensorView, PaddedRowsAndWrites) {
  std::vector<float> data(3 * 8, -1.0f);
  auto m = kvcrush::make_matrix_view(data.data(), 3, 5, 8);
  EXPECT_FALSE(m.is_contiguous());
  for (index_t r = 0; r < 3; ++r)
    for (index_t c = 0; c < 5; ++c) m(r, c) = static_cast<float>(r * 10 + c);
  EXPECT_EQ(data[8 + 4], 14.0f);
  EXPECT_EQ(data[5], -1.0f);  // padding untouched
  kvcrush::matrix_view<const float> ro = m;
  EXPECT_EQ(ro(2, 3), 23.0f);
}

TEST(TensorView, NegativeStridesReverse) {
  std::vector<int> data = {0, 1, 2, 3, 4, 5};
  strided_view<int, 2> m(data.data(), {2, 3});
  auto rev = m.reverse(1);
  EXPECT_EQ(rev.stride(1), -1);
  EXPECT_EQ(rev(0, 0), 2);
  EXPECT_EQ(rev(1, 2), 3);
  auto both = rev.reverse(0);
  EXPECT_EQ(both(0, 0), 5);
  EXPECT_EQ(both(1, 2), 0);
  // A negative stride built by hand.
  kvcrush::vector_view<int> back(data.data() + 5, {6}, {-1});
  EXPECT_EQ(back[0], 5);
  EXPECT_EQ(back[5], 0);
}

TEST(TensorView, SliceAndPermute) {
  std::vector<int> data(4 * 5);
  std::iota(data.begin(), data.end(), 0);
  strided_view<int, 2> m(data.data(), {4, 5});
  auto cols = m.slice(1, 1, 3);
  EXPECT_EQ(cols.extent(1), 3);
  EXPECT_EQ(cols(2, 0), 11);
  auto t = m.permute({1, 0});
  EXPECT_EQ(t.extent(0), 5);
  EXPECT_EQ(t(3, 2), m(2, 3));
  EXPECT_FALSE(t.is_contiguous());
  auto empty = m.slice(0, 4, 0);
  EXPECT_TRUE(empty.empty());
  EXPECT_THROW((void)m.slice(0, 3, 2), std::invalid_argument);
  EXPECT_THROW((void)m.slice(2, 0, 1), std::invalid_argument);
  EXPECT_THROW((void)m.permute({0, 0}), std::invalid_argument);
}

TEST(TensorView, Rank4) {
  std::vector<int> data(2 * 3 * 4 * 5);
  std::iota(data.begin(), data.end(), 0);
  strided_view<int, 4> v(data.data(), {2, 3, 4, 5});
  EXPECT_EQ(v(1, 2, 3, 4), 119);
  auto sub = v[1];
  static_assert(decltype(sub)::rank == 3);
  EXPECT_EQ(sub(2, 3, 4), 119);
}

TEST(TensorView, InvalidConstructionIsRejected) {
  float x = 0.0f;
  EXPECT_THROW((strided_view<float, 2>(&x, {-1, 2})), std::invalid_argument);
  EXPECT_THROW((strided_view<float, 2>(nullptr, {2, 2})), std::invalid_argument);
  EXPECT_NO_THROW((strided_view<float, 2>(nullptr, {0, 2})));
}

TEST(TensorView, AtIsAlwaysBoundsChecked) {
  std::vector<int> data(6);
  strided_view<int, 2> m(data.data(), {2, 3});
  EXPECT_THROW((void)m.at(2, 0), std::out_of_range);
  EXPECT_THROW((void)m.at(0, -1), std::out_of_range);
  EXPECT_NO_THROW((void)m.at(1, 2));
}

TEST(TensorView, OperatorIsCheckedInDebugBuilds) {
  std::vector<int> data(6);
  strided_view<int, 2> m(data.data(), {2, 3});
  if (!kvcrush::bounds_checks_enabled) {
    GTEST_SKIP() << "bounds checks are off in this build (NDEBUG); the debug/asan build runs this";
  }
  EXPECT_THROW((void)m(0, 3), std::out_of_range);
  EXPECT_THROW((void)m[2], std::out_of_range);
}

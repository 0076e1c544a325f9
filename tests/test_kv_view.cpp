#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "kvcrush/kv_view.hpp"
#include "test_support.hpp"

using kvcrush::index_t;

namespace {
float value_of(index_t h, index_t t, index_t d) { return static_cast<float>(h * 10000 + t * 100 + d); }
}  // namespace

TEST(KvView, BothLayoutsIndexTheSameLogicalElement) {
  const index_t H = 3, N = 5, D = 4, capacity = 7;
  std::vector<float> head_major(H * capacity * D, -1.0f);
  std::vector<float> token_major(N * H * D, -1.0f);
  for (index_t h = 0; h < H; ++h)
    for (index_t t = 0; t < N; ++t)
      for (index_t d = 0; d < D; ++d) {
        head_major[(h * capacity + t) * D + d] = value_of(h, t, d);
        token_major[(t * H + h) * D + d] = value_of(h, t, d);
      }
  auto a = kvcrush::make_head_token_dim(head_major.data(), H, N, D, capacity);
  auto b = kvcrush::make_token_head_dim(token_major.data(), N, H, D);
  EXPECT_EQ(a.layout(), kvcrush::kv_layout::head_token_dim);
  EXPECT_EQ(b.layout(), kvcrush::kv_layout::token_head_dim);
  for (auto* v : {&a, &b}) {
    EXPECT_EQ(v->heads(), H);
    EXPECT_EQ(v->tokens(), N);
    EXPECT_EQ(v->head_dim(), D);
  }
  for (index_t h = 0; h < H; ++h)
    for (index_t t = 0; t < N; ++t) {
      for (index_t d = 0; d < D; ++d) {
        EXPECT_EQ(a(h, t, d), value_of(h, t, d));
        EXPECT_EQ(b(h, t, d), value_of(h, t, d));
      }
      EXPECT_EQ(a.row(h, t)[D - 1], value_of(h, t, D - 1));
      EXPECT_EQ(b.row(h, t)[D - 1], value_of(h, t, D - 1));
    }
  auto prefix = b.first_tokens(2);
  EXPECT_EQ(prefix.tokens(), 2);
  EXPECT_THROW((void)b.first_tokens(6), std::invalid_argument);
}

TEST(KvView, HalfStorageAndConstConversion) {
  std::vector<kvcrush::float16> data(2 * 3 * 8);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = kvcrush::to_float16(static_cast<float>(i));
  auto kv = kvcrush::make_token_head_dim(data.data(), 3, 2, 8);
  kvcrush::kv_view<const kvcrush::float16> ro = kv;
  EXPECT_EQ(kvcrush::to_float(ro(1, 2, 5)), static_cast<float>((2 * 2 + 1) * 8 + 5));
  std::vector<kvcrush::bfloat16> bdata(16);
  auto bkv = kvcrush::make_head_token_dim(bdata.data(), 1, 2, 8);
  bkv(0, 1, 7) = kvcrush::to_bfloat16(3.0f);
  EXPECT_EQ(kvcrush::to_float(bdata[15]), 3.0f);
}

TEST(KvView, RejectsBadShapes) {
  std::vector<float> data(64);
  EXPECT_THROW((void)kvcrush::make_head_token_dim(data.data(), 2, 4, 8, 3), std::invalid_argument);
  EXPECT_THROW((void)kvcrush::make_head_token_dim(data.data(), -1, 4, 8), std::invalid_argument);
  EXPECT_THROW((void)kvcrush::make_token_head_dim<float>(nullptr, 2, 2, 2), std::invalid_argument);
  kvcrush::strided_view<float, 3> strided_dim(data.data(), {2, 2, 4}, {16, 8, 2});
  EXPECT_THROW((kvcrush::kv_view<float>(strided_dim, kvcrush::kv_layout::head_token_dim)),
               std::invalid_argument);
}

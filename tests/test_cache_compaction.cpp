// Contiguous in-place compaction (both layouts, padded and strided views,
// float/float16/bfloat16, shared, per-head and ragged keep sets, blocks),
// its boundary checks, and RoPE re-rotation.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/rope.hpp"
#include "test_support.hpp"

using kvcrush::index_t;
using kvcrush::kv_view;

namespace {

enum class shape { head_major_padded, token_major_packed, token_major_strided };

const shape all_shapes[] = {shape::head_major_padded, shape::token_major_packed, shape::token_major_strided};

const char* name_of(shape s) {
  return s == shape::head_major_padded ? "head_token_dim(padded)"
         : s == shape::token_major_packed ? "token_head_dim" : "token_head_dim(strided)";
}

std::size_t buffer_size(shape s, index_t h, index_t n, index_t d) {
  switch (s) {
    case shape::head_major_padded: return static_cast<std::size_t>(h * (n + 7) * d);
    case shape::token_major_packed: return static_cast<std::size_t>(n * h * d);
    default: return static_cast<std::size_t>(n * (h + 1) * d);
  }
}

template <class T>
kv_view<T> view_of(T* data, shape s, index_t h, index_t n, index_t d) {
  switch (s) {
    case shape::head_major_padded: return kvcrush::make_head_token_dim(data, h, n, d, n + 7);
    case shape::token_major_packed: return kvcrush::make_token_head_dim(data, n, h, d);
    default:  // every token has room for one more head: not packed
      return kv_view<T>(kvcrush::strided_view<T, 3>(data, {h, n, d}, {d, (h + 1) * d, 1}),
                        kvcrush::kv_layout::token_head_dim);
  }
}

enum class keep_mode { shared, per_head, ragged };

struct keep_rows {
  std::vector<index_t> flat, counts;
  index_t rows = 0, width = 0;
  kvcrush::keep_view view(keep_mode mode) const {
    const auto m = kvcrush::make_matrix_view<const index_t>(flat.data(), rows, width);
    if (mode == keep_mode::ragged) return kvcrush::keep_view::ragged(m, kvcrush::make_vector_view(counts.data(), rows));
    return kvcrush::keep_view(m.slice(1, 0, counts[0]));
  }
  index_t at(index_t head, index_t i) const { return flat[static_cast<std::size_t>((rows == 1 ? 0 : head) * width + i)]; }
  index_t count(index_t head) const { return counts[static_cast<std::size_t>(rows == 1 ? 0 : head)]; }
};

keep_rows random_keep(keep_mode mode, index_t heads, index_t n, std::mt19937& rng) {
  keep_rows k;
  k.rows = mode == keep_mode::shared ? 1 : heads;
  k.width = n;
  k.flat.assign(static_cast<std::size_t>(k.rows * n), -1);
  std::uniform_int_distribution<index_t> size(0, n);
  const index_t uniform = size(rng);
  for (index_t r = 0; r < k.rows; ++r) {
    const index_t count = mode == keep_mode::ragged ? size(rng) : uniform;
    const auto subset = cache_test::random_subset(n, count, rng);
    std::copy(subset.begin(), subset.end(), k.flat.begin() + r * n);
    k.counts.push_back(count);
  }
  return k;
}

template <class T>
void check_compaction(shape s, keep_mode mode, std::uint32_t seed) {
  const index_t h = 3, n = 57, d = 10;
  std::mt19937 rng(seed);
  auto keys = cache_test::random_storage<T>(buffer_size(s, h, n, d), seed * 2 + 1);
  auto values = cache_test::random_storage<T>(buffer_size(s, h, n, d), seed * 2 + 2);
  const auto keys0 = keys, values0 = values;
  std::vector<index_t> positions(static_cast<std::size_t>(h * n));
  for (index_t r = 0; r < h; ++r)
    for (index_t t = 0; t < n; ++t) positions[r * n + t] = 5 + 3 * t + 1000 * r;
  const auto positions0 = positions;
  const auto keep = random_keep(mode, h, n, rng);

  const auto kv = view_of(keys.data(), s, h, n, d), vv = view_of(values.data(), s, h, n, d);
  const auto k0 = view_of(keys0.data(), s, h, n, d), v0 = view_of(values0.data(), s, h, n, d);
  const index_t length = kvcrush::compact(kv, vv, keep.view(mode), kvcrush::make_matrix_view(positions.data(), h, n));
  index_t widest = 0;
  for (index_t head = 0; head < h; ++head) widest = std::max(widest, keep.count(head));
  ASSERT_EQ(length, widest);

  const auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(h * d), seed + 7);
  for (index_t head = 0; head < h; ++head) {
    const index_t count = keep.count(head);
    for (index_t i = 0; i < count; ++i) {
      const index_t src = keep.at(head, i);
      ASSERT_EQ(std::memcmp(kv.row(head, i), k0.row(head, src), d * sizeof(T)), 0) << "head " << head << " row " << i;
      ASSERT_EQ(std::memcmp(vv.row(head, i), v0.row(head, src), d * sizeof(T)), 0);
      ASSERT_EQ(positions[head * n + i], positions0[head * n + src]);
    }
    // Attention over the compacted rows equals attention over the kept rows
    // of the original, bit for bit.
    const float* q = queries.data() + head * d;
    const auto compacted = cache_test::attend(
        q, d, count, [&](index_t t) { return kv.row(head, t); }, [&](index_t t) { return vv.row(head, t); });
    const auto reference = cache_test::attend(
        q, d, count, [&](index_t t) { return k0.row(head, keep.at(head, t)); },
        [&](index_t t) { return v0.row(head, keep.at(head, t)); });
    ASSERT_EQ(std::memcmp(compacted.data(), reference.data(), compacted.size() * sizeof(float)), 0);
  }
}

template <class T>
void check_all_compactions() {
  std::uint32_t seed = 1;
  for (shape s : all_shapes) {
    for (keep_mode mode : {keep_mode::shared, keep_mode::per_head, keep_mode::ragged}) {
      for (int trial = 0; trial < 12; ++trial) {
        SCOPED_TRACE(testing::Message() << name_of(s) << " mode " << static_cast<int>(mode) << " seed " << seed);
        check_compaction<T>(s, mode, seed++);
        if (testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

}  // namespace

TEST(Compaction, Float32KeepsRowsAndAttentionExactly) { check_all_compactions<float>(); }
TEST(Compaction, Float16KeepsRowsAndAttentionExactly) { check_all_compactions<kvcrush::float16>(); }
TEST(Compaction, BFloat16KeepsRowsAndAttentionExactly) { check_all_compactions<kvcrush::bfloat16>(); }

TEST(Compaction, SingleViewSharedPositionsAndEdgeCases) {
  const index_t h = 2, n = 9, d = 4;
  std::vector<float> k(static_cast<std::size_t>(h * n * d));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i);
  const auto k0 = k;
  std::vector<index_t> positions(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t) positions[t] = 100 + t;
  const auto view = kvcrush::make_head_token_dim(k.data(), h, n, d);
  // Keeping everything changes nothing.
  std::vector<index_t> all(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t) all[t] = t;
  EXPECT_EQ(kvcrush::compact(view, kvcrush::keep_view::shared(all.data(), n),
                             kvcrush::make_matrix_view(positions.data(), 1, n)),
            n);
  EXPECT_EQ(k, k0);
  // One shared positions row follows a shared keep set.
  const std::vector<index_t> keep = {0, 3, 4, 8};
  EXPECT_EQ(kvcrush::compact(view, kvcrush::keep_view::shared(keep.data(), 4),
                             kvcrush::make_matrix_view(positions.data(), 1, n)),
            4);
  EXPECT_EQ(std::vector<index_t>(positions.begin(), positions.begin() + 4), (std::vector<index_t>{100, 103, 104, 108}));
  for (index_t head = 0; head < h; ++head)
    for (index_t i = 0; i < 4; ++i)
      for (index_t j = 0; j < d; ++j) EXPECT_EQ(view(head, i, j), k0[(head * n + keep[i]) * d + j]);
  // Keeping nothing empties the cache.
  EXPECT_EQ(kvcrush::compact(view, kvcrush::keep_view::shared(keep.data(), 0)), 0);
}

TEST(Compaction, BlocksMoveAsRuns) {
  std::mt19937 rng(11);
  for (shape s : all_shapes) {
    for (index_t b : {1, 2, 4, 16}) {
      const index_t h = 2, n = 53, d = 6;
      auto keys = cache_test::random_storage<kvcrush::float16>(buffer_size(s, h, n, d), 3);
      auto values = cache_test::random_storage<kvcrush::float16>(buffer_size(s, h, n, d), 4);
      const auto keys0 = keys, values0 = values;
      std::vector<index_t> positions(static_cast<std::size_t>(h * n));
      for (index_t i = 0; i < h * n; ++i) positions[i] = i % n;
      const index_t units = (n + b - 1) / b;
      const auto blocks = cache_test::random_subset(units, units / 2 + 1, rng);
      const auto kv = view_of(keys.data(), s, h, n, d), vv = view_of(values.data(), s, h, n, d);
      const auto k0 = view_of(keys0.data(), s, h, n, d), v0 = view_of(values0.data(), s, h, n, d);
      const index_t length = kvcrush::compact_blocks(
          kv, vv, kvcrush::make_vector_view<const index_t>(blocks.data(), static_cast<index_t>(blocks.size())), b,
          kvcrush::make_matrix_view(positions.data(), h, n));
      std::vector<index_t> tokens;
      for (index_t j : blocks)
        for (index_t t = j * b; t < std::min((j + 1) * b, n); ++t) tokens.push_back(t);
      ASSERT_EQ(length, static_cast<index_t>(tokens.size()));
      for (index_t head = 0; head < h; ++head) {
        for (index_t i = 0; i < length; ++i) {
          ASSERT_EQ(std::memcmp(kv.row(head, i), k0.row(head, tokens[i]), d * 2), 0) << name_of(s) << " b " << b;
          ASSERT_EQ(std::memcmp(vv.row(head, i), v0.row(head, tokens[i]), d * 2), 0);
          ASSERT_EQ(positions[head * n + i], tokens[i]);
        }
      }
    }
  }
}

TEST(Compaction, BadKeepSetsThrowBeforeTouchingTheCache) {
  const index_t h = 2, n = 8, d = 3;
  auto keys = cache_test::random_storage<kvcrush::bfloat16>(static_cast<std::size_t>(h * n * d), 5);
  auto values = cache_test::random_storage<kvcrush::bfloat16>(static_cast<std::size_t>(h * n * d), 6);
  std::vector<index_t> positions(static_cast<std::size_t>(h * n), 7);
  const auto keys0 = cache_test::bytes_of(keys), values0 = cache_test::bytes_of(values);
  const auto positions0 = positions;
  const auto kv = kvcrush::make_token_head_dim(keys.data(), n, h, d);
  const auto vv = kvcrush::make_token_head_dim(values.data(), n, h, d);
  const auto pos = kvcrush::make_matrix_view(positions.data(), h, n);
  auto expect_untouched = [&] {
    EXPECT_EQ(cache_test::bytes_of(keys), keys0);
    EXPECT_EQ(cache_test::bytes_of(values), values0);
    EXPECT_EQ(positions, positions0);
  };
  auto expect_throw = [&](const kvcrush::keep_view& keep, const char* fragment) {
    try {
      kvcrush::compact(kv, vv, keep, pos);
      ADD_FAILURE() << "no exception for " << fragment;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("kvcrush: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    expect_untouched();
  };
  // The last row is bad: earlier rows must not have moved either.
  const std::vector<index_t> unsorted = {0, 2, 4, 1, 5, 6, 3, 2};
  expect_throw(kvcrush::keep_view::per_head(kvcrush::make_matrix_view<const index_t>(unsorted.data(), 2, 4)),
               "not strictly increasing");
  const std::vector<index_t> duplicate = {1, 1};
  expect_throw(kvcrush::keep_view::shared(duplicate.data(), 2), "not strictly increasing");
  const std::vector<index_t> out_of_range = {0, 3, 8};
  expect_throw(kvcrush::keep_view::shared(out_of_range.data(), 3), "outside the cache");
  const std::vector<index_t> negative = {-1, 3};
  expect_throw(kvcrush::keep_view::shared(negative.data(), 2), "outside the cache");
  const std::vector<index_t> three_rows(9, 0);
  expect_throw(kvcrush::keep_view::per_head(kvcrush::make_matrix_view<const index_t>(three_rows.data(), 3, 3)), "rows");
  const std::vector<index_t> two_rows = {0, 1, 2, 3};
  const std::vector<index_t> bad_counts = {2, 3};
  expect_throw(kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(two_rows.data(), 2, 2),
                                          kvcrush::make_vector_view(bad_counts.data(), 2)),
               "count");
  const std::vector<index_t> one_count = {1};
  expect_throw(kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(two_rows.data(), 2, 2),
                                          kvcrush::make_vector_view(one_count.data(), 1)),
               "counts");
  // Shapes: values of another length, positions too short, per-head keep
  // with one positions row.
  const std::vector<index_t> fine = {0, 2};
  EXPECT_THROW(kvcrush::compact(kv, vv.first_tokens(7), kvcrush::keep_view::shared(fine.data(), 2), pos),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::compact(kv, vv, kvcrush::keep_view::shared(fine.data(), 2),
                                kvcrush::make_matrix_view(positions.data(), h, n - 1)),
               std::invalid_argument);
  const std::vector<index_t> per_head = {0, 2, 1, 3};
  EXPECT_THROW(kvcrush::compact(kv, vv, kvcrush::keep_view::per_head(kvcrush::make_matrix_view<const index_t>(per_head.data(), 2, 2)),
                                kvcrush::make_matrix_view(positions.data(), 1, n)),
               std::invalid_argument);
  const std::vector<index_t> blocks = {1, 0};
  EXPECT_THROW(kvcrush::compact_blocks(kv, vv, kvcrush::make_vector_view(blocks.data(), 2), 4), std::invalid_argument);
  const std::vector<index_t> far_block = {2};
  EXPECT_THROW(kvcrush::compact_blocks(kv, vv, kvcrush::make_vector_view(far_block.data(), 1), 4), std::invalid_argument);
  expect_untouched();
}

TEST(Compaction, ContiguousCacheAppendsConvertsAndEvicts) {
  for (auto layout : {kvcrush::kv_layout::head_token_dim, kvcrush::kv_layout::token_head_dim}) {
    kvcrush::contiguous_cache<kvcrush::float16> cache(2, 2, 4, 10, layout);
    std::vector<float> rows(static_cast<std::size_t>(2 * 6 * 4));
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i);
    const auto src = kvcrush::make_head_token_dim<const float>(rows.data(), 2, 6, 4);
    cache.append(1, src, src);
    EXPECT_EQ(cache.length(1), 6);
    EXPECT_EQ(cache.length(0), 0);
    EXPECT_THROW(cache.append(1, src, src), std::invalid_argument);  // 12 > capacity 10
    const std::vector<index_t> keep = {1, 2, 5};
    cache.evict_tokens(1, kvcrush::keep_view::shared(keep.data(), 3));
    ASSERT_EQ(cache.length(1), 3);
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 3; ++i) {
        EXPECT_EQ(cache.positions(1)(h, i), keep[i]);
        for (index_t j = 0; j < 4; ++j) EXPECT_EQ(kvcrush::to_float(cache.keys(1)(h, i, j)), src(h, keep[i], j));
      }
    cache.append(1, src.first_tokens(1), src.first_tokens(1));
    EXPECT_EQ(cache.positions(1)(0, 3), 6) << "positions continue after the appended count";
    const std::vector<index_t> ragged = {0, 1, 2, 0, 1, 2};
    const std::vector<index_t> counts = {2, 3};
    EXPECT_THROW(cache.evict_tokens(1, kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(ragged.data(), 2, 3),
                                                                  kvcrush::make_vector_view(counts.data(), 2))),
                 std::invalid_argument);
    EXPECT_EQ(cache.length(1), 4);
  }
}

// ---- RoPE -----------------------------------------------------------------

namespace {

// RoPE written plainly in double, both pairings.
std::vector<double> rope_reference(const std::vector<double>& x, double position, kvcrush::rope_style style,
                                   index_t rotary, double theta) {
  std::vector<double> out = x;
  for (index_t i = 0; i < rotary / 2; ++i) {
    const double angle = position * std::pow(theta, -2.0 * i / rotary);
    const index_t a = style == kvcrush::rope_style::interleaved ? 2 * i : i;
    const index_t b = style == kvcrush::rope_style::interleaved ? 2 * i + 1 : i + rotary / 2;
    out[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
    out[b] = x[a] * std::sin(angle) + x[b] * std::cos(angle);
  }
  return out;
}

template <class T>
double rope_tolerance() {
  if constexpr (std::is_same_v<T, float>) return 1e-6;
  if constexpr (std::is_same_v<T, kvcrush::float16>) return 2e-3;
  return 1.6e-2;
}

template <class T>
void check_rerotation(kvcrush::rope_style style, index_t rotary) {
  const index_t h = 2, n = 40, d = 16;
  kvcrush::rope_config cfg;
  cfg.style = style;
  cfg.rotary_dim = rotary;
  cfg.theta = style == kvcrush::rope_style::interleaved ? 10000.0 : 500000.0;
  const auto raw = cache_test::random_storage<T>(static_cast<std::size_t>(h * n * d), 21);
  std::mt19937 rng(22);
  std::uniform_int_distribution<index_t> pos(0, 40000);
  std::vector<index_t> from(static_cast<std::size_t>(h * n)), to(static_cast<std::size_t>(h * n));
  for (auto& p : from) p = pos(rng);
  for (auto& p : to) p = pos(rng);
  for (index_t t = 0; t < n; t += 5) to[t] = from[t];  // some keys stay
  auto stored = raw, direct = raw;
  const auto sv = kvcrush::make_head_token_dim(stored.data(), h, n, d);
  const auto dv = kvcrush::make_head_token_dim(direct.data(), h, n, d);
  const auto from_view = kvcrush::make_matrix_view<const index_t>(from.data(), h, n);
  const auto to_view = kvcrush::make_matrix_view<const index_t>(to.data(), h, n);
  kvcrush::rope_apply(sv, from_view, cfg);
  // rope_apply itself against the plain formula.
  for (index_t head = 0; head < h; ++head)
    for (index_t t = 0; t < n; ++t) {
      std::vector<double> x(static_cast<std::size_t>(d));
      for (index_t j = 0; j < d; ++j) x[j] = kvcrush::to_float(raw[(head * n + t) * d + j]);
      const auto expected = rope_reference(x, static_cast<double>(from[head * n + t]), style, rotary, cfg.theta);
      for (index_t j = 0; j < d; ++j)
        ASSERT_NEAR(kvcrush::to_float(sv(head, t, j)), expected[j], 2 * rope_tolerance<T>() * 1.5);
    }
  const auto before = stored;
  kvcrush::rope_rerotate(sv, from_view, to_view, cfg);
  kvcrush::rope_apply(dv, to_view, cfg);
  for (index_t head = 0; head < h; ++head) {
    for (index_t t = 0; t < n; ++t) {
      if (to[head * n + t] == from[head * n + t]) {
        // Re-rotating by 0 is the identity, bit for bit.
        ASSERT_EQ(std::memcmp(sv.row(head, t), &before[(head * n + t) * d], d * sizeof(T)), 0);
        continue;
      }
      // Tolerance relative to each rotated pair's norm (here <= sqrt(2)).
      for (index_t j = 0; j < d; ++j) {
        ASSERT_NEAR(kvcrush::to_float(sv(head, t, j)), kvcrush::to_float(dv(head, t, j)), rope_tolerance<T>() * 1.5)
            << "head " << head << " token " << t << " dim " << j;
      }
      for (index_t j = rotary; j < d; ++j) ASSERT_EQ(kvcrush::to_float(sv(head, t, j)), kvcrush::to_float(raw[(head * n + t) * d + j]));
    }
  }
}

template <class T>
void check_rerotations() {
  for (auto style : {kvcrush::rope_style::interleaved, kvcrush::rope_style::half_split}) {
    for (index_t rotary : {16, 8}) {
      SCOPED_TRACE(testing::Message() << "style " << static_cast<int>(style) << " rotary " << rotary);
      check_rerotation<T>(style, rotary);
      if (testing::Test::HasFatalFailure()) return;
    }
  }
}

}  // namespace

TEST(Rope, RerotationEqualsDirectRotationFloat32) { check_rerotations<float>(); }
TEST(Rope, RerotationEqualsDirectRotationFloat16) { check_rerotations<kvcrush::float16>(); }
TEST(Rope, RerotationEqualsDirectRotationBFloat16) { check_rerotations<kvcrush::bfloat16>(); }

TEST(Rope, RenumberAfterCompaction) {
  const index_t h = 2, n = 30, d = 8;
  const auto raw = cache_test::random_storage<float>(static_cast<std::size_t>(h * n * d), 31);
  auto keys = raw;
  const auto kv = kvcrush::make_token_head_dim(keys.data(), n, h, d);
  std::vector<index_t> positions(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t) positions[t] = t;
  kvcrush::rope_apply(kv, kvcrush::make_matrix_view<const index_t>(positions.data(), 1, n));
  std::mt19937 rng(32);
  const auto keep = cache_test::random_subset(n, 12, rng);
  const index_t kept = kvcrush::compact(kv, kvcrush::keep_view::shared(keep.data(), 12),
                                        kvcrush::make_matrix_view(positions.data(), 1, n));
  kvcrush::rope_renumber(kv.first_tokens(kept), kvcrush::make_matrix_view(positions.data(), 1, kept), 3);
  for (index_t i = 0; i < kept; ++i) {
    EXPECT_EQ(positions[i], 3 + i);
    // Expected: the original unrotated key rotated at 3 + i.
    std::vector<float> expected(static_cast<std::size_t>(d));
    for (index_t head = 0; head < h; ++head) {
      for (index_t j = 0; j < d; ++j) expected[j] = raw[(keep[i] * h + head) * d + j];
      kvcrush::rope_rotate(expected.data(), d, static_cast<double>(3 + i));
      for (index_t j = 0; j < d; ++j) EXPECT_NEAR(kv(head, i, j), expected[j], 1.5e-6);
    }
  }
  std::vector<float> row(static_cast<std::size_t>(d), 1.0f);
  EXPECT_THROW(kvcrush::rope_rotate(row.data(), d, 1.0, kvcrush::rope_config{10000.0, kvcrush::rope_style::interleaved, 7}),
               std::invalid_argument);
  EXPECT_THROW(kvcrush::rope_renumber(kv.first_tokens(kept), kvcrush::make_matrix_view(positions.data(), 1, kept - 1)),
               std::invalid_argument);
}

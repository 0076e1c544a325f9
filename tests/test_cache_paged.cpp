// The paged cache: append and gather in every storage type, token and block
// eviction (attention over the result equals attention over the kept rows
// of the original, and equals the contiguous cache's), fork with copy on
// write, a randomized operation sequence checked against a reference model
// after every step, and every error path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/paged_cache.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "test_support.hpp"

using kvcrush::index_t;
using kvcrush::sequence_id;

namespace {

kvcrush::paged_cache_config small_config(index_t blocks, index_t block_size = 4, index_t layers = 2, index_t heads = 2,
                                         index_t d = 4, index_t sequences = 6, index_t max_blocks = 0) {
  kvcrush::paged_cache_config c;
  c.layers = layers;
  c.kv_heads = heads;
  c.head_dim = d;
  c.block_size = block_size;
  c.blocks = blocks;
  c.max_sequences = sequences;
  c.max_blocks_per_sequence = max_blocks;
  return c;
}

// Rows of one sequence's layer, gathered as float (heads, length, d) plus
// positions (heads, length).
struct gathered {
  index_t heads = 0, length = 0, d = 0;
  std::vector<float> keys, values;
  std::vector<index_t> positions;
  const float* key(index_t h, index_t t) const { return keys.data() + (h * length + t) * d; }
  const float* value(index_t h, index_t t) const { return values.data() + (h * length + t) * d; }
  bool operator==(const gathered& o) const {
    return length == o.length && keys == o.keys && values == o.values && positions == o.positions;
  }
};

template <class T>
gathered gather(const kvcrush::paged_cache<T>& cache, sequence_id id, index_t layer) {
  gathered g;
  g.heads = cache.kv_heads();
  g.d = cache.head_dim();
  g.length = cache.length(id, layer);
  g.keys.resize(static_cast<std::size_t>(g.heads * g.length * g.d));
  g.values.resize(g.keys.size());
  g.positions.resize(static_cast<std::size_t>(g.heads * g.length));
  cache.gather(id, layer, kvcrush::make_head_token_dim(g.keys.data(), g.heads, g.length, g.d),
               kvcrush::make_head_token_dim(g.values.data(), g.heads, g.length, g.d),
               kvcrush::make_matrix_view(g.positions.data(), g.heads, g.length));
  return g;
}

// Attention of one query over head h of a paged sequence, walking its blocks.
template <class T>
std::vector<float> paged_attention(const kvcrush::paged_cache<T>& cache, sequence_id id, index_t layer, index_t h,
                                   const float* q) {
  std::vector<const T*> k, v;
  cache.for_each_block(id, layer, [&](const kvcrush::paged_block<T>& b) {
    for (index_t t = 0; t < b.tokens; ++t) {
      k.push_back(b.keys.row(h, t));
      v.push_back(b.values.row(h, t));
    }
  });
  return cache_test::attend(q, cache.head_dim(), static_cast<index_t>(k.size()), [&](index_t t) { return k[t]; },
                            [&](index_t t) { return v[t]; });
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <class T>
void append_random(kvcrush::paged_cache<T>& cache, sequence_id id, index_t layer, index_t n, std::uint32_t seed) {
  const auto rows = kvcrush_test::random_floats(static_cast<std::size_t>(cache.kv_heads() * n * cache.head_dim()), seed);
  const auto view = kvcrush::make_head_token_dim(rows.data(), cache.kv_heads(), n, cache.head_dim());
  cache.append(id, layer, view, view);
}

}  // namespace

TEST(PagedCache, AppendGatherRoundTripInEveryStorage) {
  auto run = [](auto tag) {
    using T = decltype(tag);
    kvcrush::paged_cache<T> cache(small_config(8, 3, 1, 2, 5));
    const auto id = cache.create();
    const index_t n = 10;
    const auto src = kvcrush_test::random_floats(static_cast<std::size_t>(n * 2 * 5), 1);
    // Source in token_head_dim order, float.
    const auto view = kvcrush::make_token_head_dim(src.data(), n, 2, 5);
    cache.append(id, 0, view.first_tokens(4), view.first_tokens(4));
    cache.append(id, 0, kvcrush::kv_view<const float>(view.view().slice(1, 4, 6), kvcrush::kv_layout::token_head_dim),
                 kvcrush::kv_view<const float>(view.view().slice(1, 4, 6), kvcrush::kv_layout::token_head_dim));
    ASSERT_EQ(cache.length(id, 0), n);
    EXPECT_EQ(cache.block_table(id, 0).extent(0), 4);
    EXPECT_EQ(cache.free_blocks(0), 4);
    const auto g = gather(cache, id, 0);
    for (index_t h = 0; h < 2; ++h)
      for (index_t t = 0; t < n; ++t) {
        EXPECT_EQ(g.positions[h * n + t], t);
        for (index_t j = 0; j < 5; ++j)
          EXPECT_EQ(g.key(h, t)[j], kvcrush::to_float(kvcrush::from_float<T>(view(h, t, j))));
      }
    cache.check_invariants();
  };
  run(float{});
  run(kvcrush::float16{});
  run(kvcrush::bfloat16{});
}

TEST(PagedCache, TokenEvictionKeepsAttentionExactAndMatchesContiguous) {
  auto run = [](auto tag) {
    using T = decltype(tag);
    for (bool per_head : {false, true}) {
      for (index_t b : {1, 4, 16}) {
        const index_t h = 3, d = 8, n = 45;
        kvcrush::paged_cache<T> cache(small_config(64, b, 1, h, d, 2));
        kvcrush::contiguous_cache<T> contiguous(1, h, d, n, kvcrush::kv_layout::head_token_dim);
        const auto id = cache.create();
        const auto rows = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 3);
        const auto vrows = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 4);
        const auto kv = kvcrush::make_head_token_dim(rows.data(), h, n, d);
        const auto vv = kvcrush::make_head_token_dim(vrows.data(), h, n, d);
        cache.append(id, 0, kv, vv);
        contiguous.append(0, kv, vv);
        const auto original = gather(cache, id, 0);
        const index_t free_before = cache.free_blocks(0);
        std::mt19937 rng(static_cast<std::uint32_t>(b * 7 + per_head));
        const index_t keep_count = 19;
        std::vector<index_t> flat;
        for (index_t r = 0; r < (per_head ? h : 1); ++r) {
          const auto subset = cache_test::random_subset(n, keep_count, rng);
          flat.insert(flat.end(), subset.begin(), subset.end());
        }
        const auto keep = kvcrush::keep_view(
            kvcrush::make_matrix_view<const index_t>(flat.data(), per_head ? h : 1, keep_count));
        cache.evict_tokens(id, 0, keep);
        contiguous.evict_tokens(0, keep);
        ASSERT_EQ(cache.length(id, 0), keep_count);
        EXPECT_EQ(cache.free_blocks(0), free_before + (n + b - 1) / b - (keep_count + b - 1) / b)
            << "the tokens fill as few blocks as possible";
        cache.check_invariants();
        const auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(h * d), 5);
        const auto after = gather(cache, id, 0);
        for (index_t head = 0; head < h; ++head) {
          const index_t* row = flat.data() + (per_head ? head : 0) * keep_count;
          for (index_t i = 0; i < keep_count; ++i) {
            ASSERT_EQ(after.positions[head * keep_count + i], row[i]);
            ASSERT_EQ(std::memcmp(after.key(head, i), original.key(head, row[i]), d * sizeof(float)), 0);
            ASSERT_EQ(std::memcmp(after.value(head, i), original.value(head, row[i]), d * sizeof(float)), 0);
          }
          const float* q = queries.data() + head * d;
          const auto paged = paged_attention(cache, id, 0, head, q);
          const auto kept = cache_test::attend(
              q, d, keep_count, [&](index_t t) { return original.key(head, row[t]); },
              [&](index_t t) { return original.value(head, row[t]); });
          const auto dense = cache_test::attend(
              q, d, keep_count, [&](index_t t) { return contiguous.keys(0).row(head, t); },
              [&](index_t t) { return contiguous.values(0).row(head, t); });
          // The gathered original is float: exact comparison needs float storage.
          if constexpr (std::is_same_v<T, float>) {
            ASSERT_TRUE(same_bits(paged, kept)) << "per_head " << per_head << " b " << b;
          }
          ASSERT_TRUE(same_bits(paged, dense)) << "paged and contiguous caches agree, per_head " << per_head;
        }
      }
    }
  };
  run(float{});
  run(kvcrush::float16{});
  run(kvcrush::bfloat16{});
}

TEST(PagedCache, BlockEvictionFreesWholeBlocksChosenBySelectKeep) {
  const index_t h = 2, d = 4, b = 4, n = 37;
  kvcrush::paged_cache<kvcrush::float16> cache(small_config(20, b, 1, h, d, 1));
  const auto id = cache.create();
  append_random(cache, id, 0, n, 9);
  const auto before = gather(cache, id, 0);
  const auto table_before = std::vector<index_t>(cache.block_table(id, 0).data(), cache.block_table(id, 0).data() + 10);
  // Block selection on H2O-like scores (SPEC 4.4): budget 16 = 4 blocks.
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 10, 0.0f, 1.0f);
  kvcrush::keep_config cfg;
  cfg.budget = 16;
  cfg.sink = 4;
  cfg.recent = 4;
  cfg.block_size = b;
  std::vector<index_t> blocks(8);
  kvcrush::workspace ws;
  const index_t kept = kvcrush::select_keep(kvcrush::make_matrix_view<const float>(scores.data(), h, n), cfg,
                                            kvcrush::make_vector_view(blocks.data(), 8), ws);
  ASSERT_EQ(kept, 5) << "4 blocks of budget plus the partial last one";
  const index_t free_before = cache.free_blocks(0);
  cache.evict_blocks(id, 0, kvcrush::make_vector_view<const index_t>(blocks.data(), kept));
  EXPECT_EQ(cache.free_blocks(0), free_before + 10 - 5);
  EXPECT_EQ(cache.length(id, 0), 4 * b + 1);
  const auto table = cache.block_table(id, 0);
  for (index_t i = 0; i < kept; ++i) EXPECT_EQ(table[i], table_before[blocks[i]]) << "no data moved, only the table";
  const auto after = gather(cache, id, 0);
  for (index_t i = 0; i < after.length; ++i) {
    const index_t src = blocks[i / b] * b + i % b;
    for (index_t head = 0; head < h; ++head) {
      ASSERT_EQ(after.positions[head * after.length + i], src);
      ASSERT_EQ(std::memcmp(after.key(head, i), before.key(head, src), d * sizeof(float)), 0);
    }
  }
  cache.check_invariants();
}

TEST(PagedCache, ForkSharesBlocksAndCopiesOnWrite) {
  const index_t b = 4;
  kvcrush::paged_cache<float> cache(small_config(12, b, 1, 1, 2, 3));
  const auto parent = cache.create();
  append_random(cache, parent, 0, 6, 1);  // blocks: full + partial (2 tokens)
  const auto parent_rows = gather(cache, parent, 0);
  const auto child = cache.fork(parent);
  EXPECT_EQ(cache.free_blocks(0), 10) << "a fork copies nothing";
  const auto pt = cache.block_table(parent, 0), ct = cache.block_table(child, 0);
  EXPECT_EQ(pt[0], ct[0]);
  EXPECT_EQ(pt[1], ct[1]);
  EXPECT_EQ(cache.refcount(0, pt[0]), 2);
  EXPECT_TRUE(gather(cache, child, 0) == parent_rows);
  // Appending to the child's shared partial block copies it first.
  append_random(cache, child, 0, 1, 2);
  EXPECT_EQ(cache.free_blocks(0), 9);
  EXPECT_EQ(cache.block_table(child, 0)[0], pt[0]) << "the full prefix block stays shared";
  EXPECT_NE(cache.block_table(child, 0)[1], pt[1]);
  EXPECT_EQ(cache.refcount(0, pt[1]), 1);
  EXPECT_TRUE(gather(cache, parent, 0) == parent_rows) << "the parent does not see the child's token";
  // The parent now owns its partial block alone: appending writes in place.
  append_random(cache, parent, 0, 1, 3);
  EXPECT_EQ(cache.block_table(parent, 0)[1], pt[1]);
  // Evicting in the child: the untouched shared prefix stays shared; a
  // compaction into the shared block copies it.
  const std::vector<index_t> keep_prefix = {0, 1, 2, 3, 6};
  cache.evict_tokens(child, 0, kvcrush::keep_view::shared(keep_prefix.data(), 5));
  EXPECT_EQ(cache.block_table(child, 0)[0], pt[0]);
  const std::vector<index_t> keep_front = {1, 2};
  cache.evict_tokens(child, 0, kvcrush::keep_view::shared(keep_front.data(), 2));
  EXPECT_NE(cache.block_table(child, 0)[0], pt[0]);
  EXPECT_EQ(cache.refcount(0, pt[0]), 1);
  EXPECT_TRUE(std::equal(parent_rows.keys.begin(), parent_rows.keys.end(), gather(cache, parent, 0).keys.begin()));
  const auto child_rows = gather(cache, child, 0);
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 2; ++j) EXPECT_EQ(child_rows.key(0, i)[j], parent_rows.key(0, keep_front[i])[j]);
  cache.release(parent);
  cache.release(child);
  EXPECT_EQ(cache.free_blocks(0), 12);
  cache.check_invariants();
}

// ---- randomized operations against a reference model -----------------------

namespace {

struct token_record {
  int origin;
  index_t position;
  bool operator==(const token_record& o) const { return origin == o.origin && position == o.position; }
};

struct model_sequence {
  sequence_id id;
  int uid = 0;
  std::vector<std::vector<std::vector<token_record>>> heads;  // [layer][head][token]
  std::vector<index_t> appended;                              // per layer
};

template <class T>
void check_against_model(const kvcrush::paged_cache<T>& cache, const std::vector<model_sequence>& model) {
  const index_t layers = cache.layers(), heads = cache.kv_heads(), d = cache.head_dim();
  for (index_t l = 0; l < layers; ++l) {
    // Reference counts from the tables, independently of the cache's own check.
    std::map<index_t, int> held;
    for (const auto& s : model) {
      const auto table = cache.block_table(s.id, l);
      std::set<index_t> in_this_table;
      for (index_t j = 0; j < table.extent(0); ++j) {
        ASSERT_TRUE(table[j] >= 0 && table[j] < cache.blocks());
        ASSERT_TRUE(in_this_table.insert(table[j]).second) << "a block twice in one table";
        ++held[table[j]];
      }
    }
    const auto free_list = cache.free_list(l);
    std::set<index_t> free(free_list.data(), free_list.data() + free_list.extent(0));
    ASSERT_EQ(static_cast<index_t>(free.size()), free_list.extent(0)) << "a block twice in the free list";
    for (index_t block = 0; block < cache.blocks(); ++block) {
      const int refs = held.count(block) ? held[block] : 0;
      ASSERT_EQ(cache.refcount(l, block), refs) << "layer " << l << " block " << block;
      ASSERT_EQ(free.count(block) == 1, refs == 0) << "leaked or double-owned block " << block;
    }
    for (const auto& s : model) {
      const auto g = gather(cache, s.id, l);
      const auto& expected = s.heads[static_cast<std::size_t>(l)];
      ASSERT_EQ(g.length, static_cast<index_t>(expected[0].size()));
      ASSERT_EQ(cache.appended(s.id, l), s.appended[static_cast<std::size_t>(l)]);
      for (index_t h = 0; h < heads; ++h) {
        for (index_t t = 0; t < g.length; ++t) {
          const token_record r = expected[static_cast<std::size_t>(h)][static_cast<std::size_t>(t)];
          ASSERT_EQ(g.positions[h * g.length + t], r.position);
          for (index_t j = 0; j < d; ++j) {
            ASSERT_EQ(g.key(h, t)[j], cache_test::encode(r.origin, r.position, h, j, 0));
            ASSERT_EQ(g.value(h, t)[j], cache_test::encode(r.origin, r.position, h, j, 1));
          }
        }
      }
    }
  }
}

template <class T>
void randomized_operations(std::uint32_t seed) {
  const index_t layers = 2, heads = 2, d = 3, b = 4;
  kvcrush::paged_cache<T> cache(small_config(36, b, layers, heads, d, 6, 12));
  std::vector<model_sequence> model;
  std::mt19937 rng(seed);
  auto pick = [&](index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); };
  int next_uid = 0;
  int errors = 0;
  for (int step = 0; step < 400; ++step) {
    const index_t op = pick(0, 9);
    if (model.empty() || op == 0) {
      if (static_cast<index_t>(model.size()) == 6) {
        EXPECT_THROW((void)cache.create(), std::invalid_argument);
        ++errors;
        continue;
      }
      model_sequence s;
      s.id = cache.create();
      s.uid = next_uid++;
      s.heads.assign(layers, std::vector<std::vector<token_record>>(heads));
      s.appended.assign(layers, 0);
      model.push_back(s);
      continue;
    }
    const auto which = static_cast<std::size_t>(pick(0, static_cast<index_t>(model.size()) - 1));
    model_sequence& s = model[which];
    const index_t layer = pick(0, layers - 1);
    auto& rows = s.heads[static_cast<std::size_t>(layer)];
    const index_t length = static_cast<index_t>(rows[0].size());
    if (op <= 4) {  // append
      const index_t n = pick(1, 2 * b + 1);
      std::vector<float> k(static_cast<std::size_t>(heads * n * d)), v(k.size());
      const index_t first = s.appended[static_cast<std::size_t>(layer)];
      for (index_t h = 0; h < heads; ++h)
        for (index_t t = 0; t < n; ++t)
          for (index_t j = 0; j < d; ++j) {
            k[(h * n + t) * d + j] = cache_test::encode(s.uid, first + t, h, j, 0);
            v[(h * n + t) * d + j] = cache_test::encode(s.uid, first + t, h, j, 1);
          }
      try {
        cache.append(s.id, layer, kvcrush::make_head_token_dim<const float>(k.data(), heads, n, d),
                     kvcrush::make_head_token_dim<const float>(v.data(), heads, n, d));
        for (index_t h = 0; h < heads; ++h)
          for (index_t t = 0; t < n; ++t) rows[h].push_back({s.uid, first + t});
        s.appended[static_cast<std::size_t>(layer)] += n;
      } catch (const std::invalid_argument&) {
        ++errors;  // pool exhausted or table full: the model stays as it is
      }
    } else if (op == 5 || op == 6) {  // token eviction, shared or per head
      const bool per_head = op == 6;
      const index_t count = pick(0, length);
      std::vector<index_t> flat;
      for (index_t r = 0; r < (per_head ? heads : 1); ++r) {
        const auto subset = cache_test::random_subset(length, count, rng);
        flat.insert(flat.end(), subset.begin(), subset.end());
      }
      try {
        cache.evict_tokens(s.id, layer,
                           kvcrush::keep_view(kvcrush::make_matrix_view<const index_t>(flat.data(), per_head ? heads : 1, count)));
        for (index_t h = 0; h < heads; ++h) {
          std::vector<token_record> kept;
          for (index_t i = 0; i < count; ++i) kept.push_back(rows[h][flat[(per_head ? h : 0) * count + i]]);
          rows[h] = kept;
        }
      } catch (const std::invalid_argument&) {
        ++errors;  // copy on write found the pool exhausted
      }
    } else if (op == 7) {  // block eviction
      const index_t blocks = (length + b - 1) / b;
      auto kept = cache_test::random_subset(blocks, pick(0, blocks), rng);
      if (length % b != 0 && (kept.empty() || kept.back() != blocks - 1)) kept.push_back(blocks - 1);
      cache.evict_blocks(s.id, layer, kvcrush::make_vector_view<const index_t>(kept.data(), static_cast<index_t>(kept.size())));
      for (index_t h = 0; h < heads; ++h) {
        std::vector<token_record> out;
        for (index_t j : kept)
          for (index_t t = j * b; t < std::min((j + 1) * b, length); ++t) out.push_back(rows[h][t]);
        rows[h] = out;
      }
    } else if (op == 8) {  // fork
      if (static_cast<index_t>(model.size()) == 6) continue;
      model_sequence child = s;
      child.id = cache.fork(s.id);
      child.uid = next_uid++;
      model.push_back(child);
    } else {  // release
      cache.release(s.id);
      EXPECT_FALSE(cache.contains(s.id));
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(which));
    }
    cache.check_invariants();
    check_against_model(cache, model);
    if (testing::Test::HasFatalFailure()) {
      ADD_FAILURE() << "seed " << seed << " step " << step << " op " << op;
      return;
    }
  }
  EXPECT_GT(errors, 0) << "the run should hit the pool's limits";
  for (const auto& s : model) cache.release(s.id);
  for (index_t l = 0; l < layers; ++l) EXPECT_EQ(cache.free_blocks(l), cache.blocks());
}

}  // namespace

TEST(PagedCache, RandomizedOperationsKeepPoolInvariantsFloat32) {
  for (std::uint32_t seed : {1u, 2u, 3u}) randomized_operations<float>(seed);
}

TEST(PagedCache, RandomizedOperationsKeepPoolInvariantsBFloat16) { randomized_operations<kvcrush::bfloat16>(4); }

TEST(PagedCache, ErrorsLeavePoolAndSequenceUntouched) {
  const index_t b = 4;
  kvcrush::paged_cache<float> cache(small_config(5, b, 2, 2, 3, 3, 4));
  const auto a = cache.create();
  append_random(cache, a, 0, 10, 1);  // 3 blocks
  auto snapshot = [&] {
    std::vector<float> s;
    const auto g = gather(cache, a, 0);
    s.insert(s.end(), g.keys.begin(), g.keys.end());
    s.insert(s.end(), g.values.begin(), g.values.end());
    for (index_t p : g.positions) s.push_back(static_cast<float>(p));
    const auto table = cache.block_table(a, 0);
    for (index_t j = 0; j < table.extent(0); ++j) s.push_back(static_cast<float>(table[j]));
    s.push_back(static_cast<float>(cache.free_blocks(0)));
    return s;
  };
  auto before = snapshot();
  auto expect_error = [&](auto&& call, const char* fragment) {
    try {
      call();
      ADD_FAILURE() << "no exception for " << fragment;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind("kvcrush: ", 0), 0u) << e.what();
    }
    EXPECT_EQ(snapshot(), before) << fragment;
    cache.check_invariants();
  };
  const std::vector<index_t> unsorted = {3, 1};
  expect_error([&] { cache.evict_tokens(a, 0, kvcrush::keep_view::shared(unsorted.data(), 2)); }, "strictly increasing");
  const std::vector<index_t> too_far = {0, 10};
  expect_error([&] { cache.evict_tokens(a, 0, kvcrush::keep_view::shared(too_far.data(), 2)); }, "outside");
  const std::vector<index_t> ragged = {0, 1, 0, 1};
  const std::vector<index_t> counts = {1, 2};
  expect_error([&] {
    cache.evict_tokens(a, 0, kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(ragged.data(), 2, 2),
                                                        kvcrush::make_vector_view(counts.data(), 2)));
  }, "same number");
  const std::vector<index_t> drops_partial = {0, 1};
  expect_error([&] { cache.evict_blocks(a, 0, kvcrush::make_vector_view(drops_partial.data(), 2)); }, "partial last block");
  const std::vector<index_t> block_out = {0, 3};
  expect_error([&] { cache.evict_blocks(a, 0, kvcrush::make_vector_view(block_out.data(), 2)); }, "outside");
  expect_error([&] { append_random(cache, a, 0, 7, 2); }, "block table holds");  // 17 tokens > 4 blocks
  const auto other = cache.create();
  append_random(cache, other, 0, 8, 3);  // takes the last 2 blocks of layer 0
  before = snapshot();
  expect_error([&] { append_random(cache, a, 0, 3, 4); }, "pool exhausted");
  // Copy on write with no free block: fork `a`, then compact the child.
  cache.release(other);
  const auto child = cache.fork(a);
  const auto filler = cache.create();
  append_random(cache, filler, 0, 8, 5);
  before = snapshot();
  const std::vector<index_t> front = {5, 6};
  expect_error([&] { cache.evict_tokens(child, 0, kvcrush::keep_view::shared(front.data(), 2)); }, "pool exhausted");
  // Unknown and released sequences, bad layers, bad shapes.
  cache.release(filler);
  before = snapshot();
  expect_error([&] { append_random(cache, filler, 0, 1, 6); }, "unknown sequence");
  expect_error([&] { (void)cache.length(filler, 0); }, "unknown sequence");
  expect_error([&] { (void)cache.fork(sequence_id{}); }, "unknown sequence");
  expect_error([&] { append_random(cache, a, 2, 1, 7); }, "layer 2 out of range");
  std::vector<float> wrong(static_cast<std::size_t>(3 * 2 * 3));
  expect_error([&] {
    cache.append(a, 0, kvcrush::make_head_token_dim<const float>(wrong.data(), 3, 2, 3),
                 kvcrush::make_head_token_dim<const float>(wrong.data(), 3, 2, 3));
  }, "new keys");
  expect_error([&] {
    cache.append(a, 0, kvcrush::make_head_token_dim<const float>(wrong.data(), 2, 3, 3),
                 kvcrush::make_head_token_dim<const float>(wrong.data(), 2, 2, 3));
  }, "new values");
  std::vector<float> small(static_cast<std::size_t>(2 * 3 * 3));
  expect_error([&] {
    cache.gather(a, 0, kvcrush::make_head_token_dim(small.data(), 2, 3, 3), kvcrush::make_head_token_dim(small.data(), 2, 3, 3));
  }, "gather");
  const auto c = cache.create();
  (void)c;
  expect_error([&] { (void)cache.create(); }, "sequence slots");
}

TEST(PagedCache, LiveSequencesCountsCreatedForkedAndReleased) {
  // live_sequences() is the number of handles created or forked and not yet
  // released, counted here by hand through a sequence of operations; slots
  // are reused after release without changing the count's meaning.
  kvcrush::paged_cache_config cfg;
  cfg.kv_heads = 1;
  cfg.head_dim = 4;
  cfg.block_size = 4;
  cfg.blocks = 8;
  cfg.max_sequences = 4;
  kvcrush::paged_cache<float> pool(cfg);
  EXPECT_EQ(pool.live_sequences(), 0);
  const sequence_id a = pool.create();
  EXPECT_EQ(pool.live_sequences(), 1);
  const sequence_id b = pool.fork(a);
  const sequence_id c = pool.create();
  EXPECT_EQ(pool.live_sequences(), 3);
  pool.release(b);
  EXPECT_EQ(pool.live_sequences(), 2);
  const sequence_id d = pool.fork(c);
  const sequence_id e = pool.create();
  EXPECT_EQ(pool.live_sequences(), 4);
  EXPECT_THROW((void)pool.create(), std::exception) << "all four slots are live";
  EXPECT_EQ(pool.live_sequences(), 4);
  EXPECT_THROW(pool.release(b), std::invalid_argument) << "b was released already";
  EXPECT_EQ(pool.live_sequences(), 4);
  for (sequence_id id : {a, c, d, e}) pool.release(id);
  EXPECT_EQ(pool.live_sequences(), 0);
}

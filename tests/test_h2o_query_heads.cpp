// H2O with KVCrush signatures from the query heads (SPEC 4.1 "signature
// heads"): the accumulator's per-query-head sums, and select() using them
// while importance stays on the GQA-reduced KV-head sums.
#include <gtest/gtest.h>

#include <vector>

#include "kvcrush/policy/select.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "test_support.hpp"

namespace {

using kvcrush::index_t;

// Random causal-ish attention rows (Hq, n) whose entries are in [0, 1).
std::vector<float> attention_rows(index_t query_heads, index_t n, unsigned seed) {
  return kvcrush_test::random_floats(static_cast<std::size_t>(query_heads * n), seed, 0.0f, 1.0f);
}

struct history {
  index_t kv_heads, query_heads, steps;
  std::vector<std::vector<float>> rows;  // rows[i]: (Hq, i + 1), step i's attention after appending token i
};

history make_history(index_t kv_heads, index_t query_heads, index_t steps, unsigned seed) {
  history h{kv_heads, query_heads, steps, {}};
  for (index_t i = 0; i < steps; ++i) h.rows.push_back(attention_rows(query_heads, i + 1, seed + static_cast<unsigned>(i)));
  return h;
}

void replay(const history& h, kvcrush::h2o_accumulator& acc) {
  for (index_t i = 0; i < h.steps; ++i) {
    acc.append(1);
    acc.accumulate(kvcrush::make_matrix_view(h.rows[static_cast<std::size_t>(i)].data(), h.query_heads, i + 1));
  }
}

TEST(H2OQueryHeads, SumsEachQueryHeadUnreducedAndLeavesKvSumsUnchanged) {
  for (const auto& [kv, q] : {std::pair<index_t, index_t>{1, 1}, {2, 8}, {4, 4}, {3, 12}}) {
    const index_t steps = 23;
    const history h = make_history(kv, q, steps, 100 + static_cast<unsigned>(q));
    kvcrush::h2o_accumulator tracked(kv, q, steps, kvcrush::gqa_reduction::mean, true);
    kvcrush::h2o_accumulator plain(kv, q, steps, kvcrush::gqa_reduction::mean);
    replay(h, tracked);
    replay(h, plain);
    ASSERT_TRUE(tracked.tracks_query_heads());
    ASSERT_FALSE(plain.tracks_query_heads());
    EXPECT_EQ(plain.query_scores().data(), nullptr);
    for (index_t head = 0; head < kv; ++head)
      for (index_t t = 0; t < steps; ++t) ASSERT_EQ(tracked.scores()(head, t), plain.scores()(head, t));
    for (index_t r = 0; r < q; ++r) {
      for (index_t t = 0; t < steps; ++t) {
        float expected = 0.0f;  // token t is seen from step t on, in step order
        for (index_t i = t; i < steps; ++i) expected += h.rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(r * (i + 1) + t)];
        ASSERT_EQ(tracked.query_scores()(r, t), expected) << "query head " << r << " token " << t;
      }
    }
  }
}

TEST(H2OQueryHeads, CompactionKeepsTheGroupsRowsAndNormalisationDividesBySeen) {
  const index_t kv = 2, q = 6, steps = 17;
  const history h = make_history(kv, q, steps, 7);
  kvcrush::h2o_accumulator acc(kv, q, steps, kvcrush::gqa_reduction::mean, true);
  replay(h, acc);
  const auto before = acc.query_scores();
  std::vector<float> copy(static_cast<std::size_t>(q * steps));
  for (index_t r = 0; r < q; ++r)
    for (index_t t = 0; t < steps; ++t) copy[static_cast<std::size_t>(r * steps + t)] = before(r, t);
  const std::vector<index_t> keep{0, 3, 4, 10, 16};
  acc.compact(1, keep.data(), static_cast<index_t>(keep.size()));  // KV head 1: query heads 3, 4, 5
  for (index_t r = 0; r < q; ++r) {
    const bool moved = r >= 3;
    const index_t length = moved ? static_cast<index_t>(keep.size()) : steps;
    for (index_t t = 0; t < length; ++t) {
      const index_t from = moved ? keep[static_cast<std::size_t>(t)] : t;
      ASSERT_EQ(acc.query_scores()(r, t), copy[static_cast<std::size_t>(r * steps + from)]);
    }
  }
  std::vector<float> normalised(static_cast<std::size_t>(q * steps));
  acc.normalised_query_scores(kvcrush::make_matrix_view(normalised.data(), q, steps));
  for (index_t r = 0; r < q; ++r) {
    const index_t head = r / 3;
    for (index_t t = 0; t < acc.length(head); ++t) {
      ASSERT_EQ(normalised[static_cast<std::size_t>(r * steps + t)],
                acc.query_scores()(r, t) / static_cast<float>(acc.seen(head, t)));
    }
  }
  kvcrush::h2o_accumulator plain(kv, q, steps);
  EXPECT_THROW(plain.normalised_query_scores(kvcrush::make_matrix_view(normalised.data(), q, steps)),
               std::invalid_argument);
}

TEST(H2OQueryHeads, SelectUsesQueryRowsForSignaturesAndKvRowsForImportance) {
  const index_t kv = 2, q = 8, steps = 60;
  const history h = make_history(kv, q, steps, 3);
  kvcrush::h2o_accumulator acc(kv, q, steps, kvcrush::gqa_reduction::mean, true);
  replay(h, acc);
  kvcrush::workspace ws;
  for (bool per_head : {false, true}) {
    for (bool normalised : {false, true}) {
      kvcrush::policy::with_kvcrush<kvcrush::policy::h2o> p;
      p.base.normalised = normalised;
      p.crush.fraction = 0.5;
      p.crush.heads = kvcrush::signature_heads::query;
      kvcrush::layer_inputs in;
      in.kv_heads = kv;
      in.tokens = steps;
      in.h2o = &acc;
      const kvcrush::layer_budget budget{24, 2, 4};
      const index_t rows = per_head ? kv : 1;
      std::vector<index_t> got(static_cast<std::size_t>(rows * 24)), counts(static_cast<std::size_t>(rows));
      kvcrush::select(p, in, budget, {per_head, 1},
                      {kvcrush::make_matrix_view(got.data(), rows, 24), kvcrush::make_vector_view(counts.data(), rows)},
                      ws);
      // By hand: importance from the KV-head rows, signatures from the query rows.
      std::vector<float> importance(static_cast<std::size_t>(kv * steps)), signature(static_cast<std::size_t>(q * steps));
      for (index_t r = 0; r < kv; ++r)
        for (index_t t = 0; t < steps; ++t)
          importance[static_cast<std::size_t>(r * steps + t)] =
              normalised ? acc.scores()(r, t) / static_cast<float>(acc.seen(r, t)) : acc.scores()(r, t);
      for (index_t r = 0; r < q; ++r)
        for (index_t t = 0; t < steps; ++t)
          signature[static_cast<std::size_t>(r * steps + t)] =
              normalised ? acc.query_scores()(r, t) / static_cast<float>(acc.seen(r / 4, t)) : acc.query_scores()(r, t);
      kvcrush::keep_config cfg;
      cfg.budget = 24;
      cfg.sink = 2;
      cfg.recent = 4;
      cfg.crush_fraction = 0.5;
      cfg.per_head = per_head;
      std::vector<index_t> expected(got.size());
      kvcrush::select_keep(kvcrush::make_matrix_view<const float>(importance.data(), kv, steps), cfg,
                           kvcrush::make_matrix_view(expected.data(), rows, 24), ws,
                           kvcrush::make_matrix_view<const float>(signature.data(), q, steps));
      EXPECT_EQ(got, expected) << "per_head " << per_head << " normalised " << normalised;
      // The KV-head signatures choose differently here, so the query rows are really used.
      std::vector<index_t> kv_signatures(got.size());
      kvcrush::select_keep(kvcrush::make_matrix_view<const float>(importance.data(), kv, steps), cfg,
                           kvcrush::make_matrix_view(kv_signatures.data(), rows, 24), ws);
      EXPECT_NE(got, kv_signatures) << "per_head " << per_head << " normalised " << normalised;
    }
  }
}

TEST(H2OQueryHeads, WithoutTrackingQuerySignaturesAreRefused) {
  const index_t kv = 2, q = 8, steps = 40;
  const history h = make_history(kv, q, steps, 9);
  kvcrush::h2o_accumulator acc(kv, q, steps);
  replay(h, acc);
  kvcrush::workspace ws;
  kvcrush::policy::with_kvcrush<kvcrush::policy::h2o> p;
  p.crush.fraction = 0.5;
  p.crush.heads = kvcrush::signature_heads::query;
  kvcrush::layer_inputs in;
  in.kv_heads = kv;
  in.tokens = steps;
  in.h2o = &acc;
  std::vector<index_t> out(24), count(1);
  EXPECT_THROW(kvcrush::select(p, in, {24, 2, 4}, {false, 1},
                               {kvcrush::make_matrix_view(out.data(), 1, 24), kvcrush::make_vector_view(count.data(), 1)},
                               ws),
               std::invalid_argument);
}

}  // namespace

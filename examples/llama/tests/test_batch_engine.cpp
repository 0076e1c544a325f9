// The batched engine: each lane's logits match a single-sequence engine fed
// the same tokens and evictions (ragged positions, lanes joining late, every
// store kind in one batch), do not depend on the number of threads, reach
// each lane's own observer, and bad steps are refused before anything moves.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch_engine.hpp"
#include "engine.hpp"
#include "kvcrush/cache/executor.hpp"
#include "llama_test_support.hpp"
#include "quantized_stores.hpp"

namespace {

using kvcrush::index_t;
using kvcrush_llama::batch_engine;
using kvcrush_llama::engine;
using kvcrush_llama::kv_store;
using kvcrush_llama::model;
using kvcrush_llama::model_config;
using kvcrush_llama::sequence;

model synthetic_model(index_t n_kv_heads = 2, std::uint32_t seed = 11) {
  model_config c = llama_test::small_config(true);
  c.n_kv_heads = n_kv_heads;
  return model(c, llama_test::random_weights(c, seed));
}

int token_at(index_t lane, index_t step, index_t vocab) { return static_cast<int>((lane * 7 + step * 5 + 3) % vocab); }

kvcrush::quant_config int8_config() {
  kvcrush::quant_config q;
  q.key_bits = q.value_bits = 8;
  q.group_size = 16;
  q.window = 16;
  return q;
}

// Store kind k (0 contiguous, 1 paged, 2 per-head, 3 quantized, 4 tiered).
std::unique_ptr<kv_store> make_store(const model_config& c, int kind, index_t capacity) {
  switch (kind) {
    case 1: return std::make_unique<kvcrush_llama::paged_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity, 4);
    case 2: return std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity);
    case 3:
      return std::make_unique<kvcrush_llama::quantized_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity,
                                                              int8_config());
    case 4:
      return std::make_unique<kvcrush_llama::tiered_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity,
                                                           int8_config());
    default: return std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity);
  }
}

// Keeps the first row, every other middle row and the last three: the
// same rows in the lane's and the reference engine's store.
void thin_out(kv_store& store, index_t layer) {
  std::vector<index_t> rows = {0};
  const index_t n = store.length(layer);
  for (index_t r = 2; r < n - 3; r += 2) rows.push_back(r);
  for (index_t r = n - 3; r < n; ++r) rows.push_back(r);
  store.keep_rows(layer, rows);
}

void expect_close(const Eigen::Ref<const Eigen::VectorXf>& actual, const Eigen::VectorXf& expected, double tolerance,
                  const std::string& where) {
  ASSERT_EQ(actual.size(), expected.size()) << where;
  for (Eigen::Index i = 0; i < expected.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], tolerance * (1.0 + std::abs(expected[i]))) << where << ", logit " << i;
  }
}

// Lanes of every store kind, lane i joining at step i (so positions are
// ragged), each evicting when its cache fills, against one engine per lane.
TEST(BatchEngine, RaggedLanesOfEveryStoreMatchOneEngineEach) {
  for (index_t kv_heads : {1, 2, 4}) {
    const model m = synthetic_model(kv_heads);
    const model_config& c = m.config();
    constexpr index_t capacity = 40, lanes = 7, steps = 70;
    kvcrush::thread_executor ex(2);
    batch_engine batch(m, ex);
    std::vector<std::unique_ptr<sequence>> sequences;
    std::vector<std::unique_ptr<engine>> references;
    for (index_t i = 0; i < lanes; ++i) {
      const int kind = static_cast<int>(i % 5);
      sequences.push_back(std::make_unique<sequence>(c, make_store(c, kind, capacity)));
      references.push_back(std::make_unique<engine>(m, make_store(c, kind, capacity)));
    }
    for (index_t step = 0; step < steps + lanes; ++step) {
      std::vector<sequence*> active;
      std::vector<int> tokens;
      std::vector<index_t> ids;
      for (index_t i = 0; i < lanes; ++i) {
        const index_t own = step - i;  // lane i's own step
        if (own < 0 || own >= steps) continue;
        for (index_t l = 0; l < c.n_layers; ++l) {
          if (sequences[static_cast<std::size_t>(i)]->cache().full(l)) {
            thin_out(sequences[static_cast<std::size_t>(i)]->cache(), l);
            thin_out(references[static_cast<std::size_t>(i)]->cache(), l);
          }
        }
        active.push_back(sequences[static_cast<std::size_t>(i)].get());
        tokens.push_back(token_at(i, own, c.vocab_size));
        ids.push_back(i);
      }
      batch.forward(active, tokens);
      for (std::size_t a = 0; a < active.size(); ++a) {
        const Eigen::VectorXf expected = references[static_cast<std::size_t>(ids[a])]->forward(tokens[a]);
        EXPECT_EQ(active[a]->position(), references[static_cast<std::size_t>(ids[a])]->position());
        // A float rounding apart can move a quantized code by one step: the
        // quantized and tiered stores get a looser bound.
        const bool quantized = ids[a] % 5 >= 3;
        expect_close(batch.logits(static_cast<index_t>(a)), expected, quantized ? 3e-3 : 1e-4,
                     "kv heads " + std::to_string(kv_heads) + ", lane " + std::to_string(ids[a]) + ", step " +
                         std::to_string(step));
        if (HasFatalFailure()) return;
      }
    }
  }
}

// One lane alone: the products become matrix-vector products, as in the
// single-sequence engine.
TEST(BatchEngine, OneLaneMatchesTheEngine) {
  const model m = synthetic_model();
  kvcrush::serial_executor ex;
  batch_engine batch(m, ex);
  sequence lane(m.config(), make_store(m.config(), 0, 40));
  engine reference(m, 40);
  for (index_t step = 0; step < 40; ++step) {
    const int token = token_at(0, step, m.config().vocab_size);
    batch.forward({&lane}, {token});
    expect_close(batch.logits(0), reference.forward(token), 1e-5, "step " + std::to_string(step));
  }
}

// The products are cut into fixed slices: 1, 2 or 3 threads give the same
// bits.
TEST(BatchEngine, ThreadCountDoesNotChangeTheBits) {
  model_config c = llama_test::small_config(false);
  c.dim = 128;  // several product slices
  c.hidden_dim = 200;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 150;
  const model m(c, llama_test::random_weights(c, 5));
  std::vector<std::vector<float>> first;
  for (index_t threads : {1, 2, 3}) {
    kvcrush::thread_executor ex(threads);
    batch_engine batch(m, ex);
    std::vector<std::unique_ptr<sequence>> lanes;
    for (int i = 0; i < 5; ++i) lanes.push_back(std::make_unique<sequence>(c, make_store(c, i, 40)));
    std::vector<float> logits;
    for (index_t step = 0; step < 20; ++step) {
      std::vector<sequence*> active;
      std::vector<int> tokens;
      for (index_t i = 0; i < 5; ++i) {
        active.push_back(lanes[static_cast<std::size_t>(i)].get());
        tokens.push_back(token_at(i, step, c.vocab_size));
      }
      batch.forward(active, tokens);
      for (index_t i = 0; i < 5; ++i) {
        const auto row = batch.logits(i);
        logits.insert(logits.end(), row.data(), row.data() + row.size());
      }
    }
    first.push_back(logits);
  }
  EXPECT_EQ(first[1], first[0]);
  EXPECT_EQ(first[2], first[0]);
}

// Each lane's observer sees its own layers at its own position.
TEST(BatchEngine, ObserversSeeTheirOwnLane) {
  struct recorder : kvcrush_llama::attention_observer {
    std::vector<std::pair<index_t, index_t>> seen;  // (layer, position)
    index_t columns = 0;
    void on_attention(const kvcrush_llama::attention_event& e) override {
      seen.emplace_back(e.layer, e.position);
      columns = e.probabilities.extent(1);
    }
  };
  const model m = synthetic_model();
  const model_config& c = m.config();
  kvcrush::thread_executor ex(2);
  batch_engine batch(m, ex);
  sequence a(c, make_store(c, 0, 16)), b(c, make_store(c, 1, 16));
  recorder ra, rb;
  a.set_observer(&ra);
  b.set_observer(&rb);
  batch.forward({&a}, {1});
  batch.forward({&a}, {2});
  batch.forward({&b, &a}, {3, 4});
  ASSERT_EQ(ra.seen.size(), static_cast<std::size_t>(3 * c.n_layers));
  ASSERT_EQ(rb.seen.size(), static_cast<std::size_t>(c.n_layers));
  EXPECT_EQ(ra.seen.back(), std::make_pair(c.n_layers - 1, index_t{2}));
  EXPECT_EQ(rb.seen.back(), std::make_pair(c.n_layers - 1, index_t{0}));
  EXPECT_EQ(ra.columns, 3);
  EXPECT_EQ(rb.columns, 1);
}

TEST(BatchEngine, BadStepsAreRefusedAndChangeNothing) {
  const model m = synthetic_model();
  const model_config& c = m.config();
  kvcrush::serial_executor ex;
  batch_engine batch(m, ex);
  sequence a(c, make_store(c, 0, 3)), b(c, make_store(c, 2, 3));
  batch.forward({&a, &b}, {1, 2});
  auto unchanged = [&] {
    EXPECT_EQ(a.position(), 1);
    EXPECT_EQ(b.position(), 1);
    EXPECT_EQ(a.cache().length(0), 1);
    EXPECT_EQ(b.cache().length(c.n_layers - 1), 1);
  };
  EXPECT_THROW(batch.forward({&a, &b}, {1}), std::invalid_argument);
  EXPECT_THROW(batch.forward({&a, nullptr}, {1, 2}), std::invalid_argument);
  EXPECT_THROW(batch.forward({&a, &a}, {1, 2}), std::invalid_argument);
  EXPECT_THROW(batch.forward({&a, &b}, {1, static_cast<int>(c.vocab_size)}), std::out_of_range);
  EXPECT_THROW(batch.forward({&a, &b}, {-1, 2}), std::out_of_range);
  model_config other = c;
  other.n_layers = c.n_layers + 1;
  sequence wrong(other, make_store(other, 0, 3));
  EXPECT_THROW(batch.forward({&a, &wrong}, {1, 2}), std::invalid_argument);
  unchanged();
  // b fills up while a is refused with it: a must not move either.
  sequence full(c, make_store(c, 0, 1));
  batch.forward({&full}, {1});
  EXPECT_THROW(batch.forward({&a, &full}, {1, 2}), std::length_error);
  unchanged();
}

}  // namespace

namespace {

// A lane's numbers do not depend on the batch it runs in: alone, first or
// last among others, the same bits.
TEST(BatchEngine, ALaneGivesTheSameBitsInAnyBatch) {
  model_config c = llama_test::small_config(false);
  c.dim = 80;  // a tail after the 16-wide blocks, and 5 weight rows per 4-row block + 1
  c.hidden_dim = 52;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 37;
  const model m(c, llama_test::random_weights(c, 9));
  kvcrush::thread_executor ex(2);
  batch_engine batch(m, ex);
  sequence alone(c, make_store(c, 0, 32));
  std::vector<std::unique_ptr<sequence>> crowd;
  for (int i = 0; i < 6; ++i) crowd.push_back(std::make_unique<sequence>(c, make_store(c, 0, 32)));
  for (index_t step = 0; step < 20; ++step) {
    const int token = token_at(0, step, c.vocab_size);
    batch.forward({&alone}, {token});
    const Eigen::VectorXf expected = batch.logits(0);
    // The same tokens as `alone` in lane 0 of a batch of 6 and in lane 5.
    std::vector<sequence*> lanes;
    std::vector<int> tokens;
    for (index_t i = 0; i < 6; ++i) {
      lanes.push_back(crowd[static_cast<std::size_t>(i)].get());
      tokens.push_back(i == 0 || i == 5 ? token : token_at(i, step, c.vocab_size));
    }
    batch.forward(lanes, tokens);
    ASSERT_EQ(Eigen::VectorXf(batch.logits(0)), expected) << "step " << step;
    ASSERT_EQ(Eigen::VectorXf(batch.logits(5)), expected) << "step " << step;
  }
}

}  // namespace

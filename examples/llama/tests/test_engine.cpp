// The engine: logits against a plain double-precision Llama-2 written from
// the formulas (with and without eviction), the attention observer, the
// cache layout, and row eviction (keep-all is a no-op, evicted caches keep
// decoding, full caches and bad row sets are refused).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "engine.hpp"
#include "generate.hpp"
#include "llama_test_support.hpp"
#include "tokenizer.hpp"

namespace {

using kvcrush::index_t;
using kvcrush_llama::attention_event;
using kvcrush_llama::engine;
using kvcrush_llama::model;
using kvcrush_llama::model_config;

using dvec = std::vector<double>;

// Llama-2 from the formulas, in double, keeping every layer's rotated keys,
// values and positions as plain lists (rows can be dropped the same way the
// engine's cache drops them).
class reference_llama {
 public:
  explicit reference_llama(const model& m) : m_(m), layers_(static_cast<std::size_t>(m.config().n_layers)) {}

  dvec forward(int token) {
    const model_config& c = m_.config();
    const index_t d = c.dim, hd = c.head_dim(), kv = c.kv_dim();
    dvec x(m_.token_embedding() + token * d, m_.token_embedding() + (token + 1) * d);
    for (index_t l = 0; l < c.n_layers; ++l) {
      const auto w = m_.layer(l);
      auto& cache = layers_[static_cast<std::size_t>(l)];
      const dvec xb = rms_norm(x, w.attention_norm);
      dvec q = matvec(w.wq, d, d, xb), k = matvec(w.wk, kv, d, xb);
      const dvec v = matvec(w.wv, kv, d, xb);
      rotate(q, hd, position_);
      rotate(k, hd, position_);
      cache.keys.push_back(k);
      cache.values.push_back(v);
      cache.positions.push_back(position_);
      dvec attended(static_cast<std::size_t>(d), 0.0);
      for (index_t h = 0; h < c.n_heads; ++h) {
        const index_t kvh = h / (c.n_heads / c.n_kv_heads);
        dvec scores;
        for (const dvec& key : cache.keys) {
          double s = 0.0;
          for (index_t i = 0; i < hd; ++i) s += q[static_cast<std::size_t>(h * hd + i)] * key[static_cast<std::size_t>(kvh * hd + i)];
          scores.push_back(s / std::sqrt(static_cast<double>(hd)));
        }
        const double top = *std::max_element(scores.begin(), scores.end());
        double sum = 0.0;
        for (double& s : scores) sum += (s = std::exp(s - top));
        for (std::size_t t = 0; t < scores.size(); ++t) {
          for (index_t i = 0; i < hd; ++i) {
            attended[static_cast<std::size_t>(h * hd + i)] +=
                scores[t] / sum * cache.values[t][static_cast<std::size_t>(kvh * hd + i)];
          }
        }
      }
      add(x, matvec(w.wo, d, d, attended));
      const dvec xf = rms_norm(x, w.ffn_norm);
      const dvec gate = matvec(w.w1, c.hidden_dim, d, xf), up = matvec(w.w3, c.hidden_dim, d, xf);
      dvec hidden(gate.size());
      for (std::size_t i = 0; i < gate.size(); ++i) hidden[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      add(x, matvec(w.w2, d, c.hidden_dim, hidden));
    }
    ++position_;
    return matvec(m_.classifier(), c.vocab_size, d, rms_norm(x, m_.final_norm()));
  }

  void keep_rows(index_t layer, const std::vector<index_t>& rows) {
    auto& cache = layers_[static_cast<std::size_t>(layer)];
    decltype(cache.keys) keys, values;
    std::vector<index_t> positions;
    for (index_t r : rows) {
      keys.push_back(cache.keys[static_cast<std::size_t>(r)]);
      values.push_back(cache.values[static_cast<std::size_t>(r)]);
      positions.push_back(cache.positions[static_cast<std::size_t>(r)]);
    }
    cache.keys = keys;
    cache.values = values;
    cache.positions = positions;
  }

 private:
  struct layer_state {
    std::vector<dvec> keys, values;
    std::vector<index_t> positions;
  };

  static dvec matvec(const float* w, index_t rows, index_t cols, const dvec& x) {
    dvec out(static_cast<std::size_t>(rows), 0.0);
    for (index_t r = 0; r < rows; ++r) {
      for (index_t j = 0; j < cols; ++j) out[static_cast<std::size_t>(r)] += w[r * cols + j] * x[static_cast<std::size_t>(j)];
    }
    return out;
  }
  static dvec rms_norm(const dvec& x, const float* weight) {
    double ms = 0.0;
    for (double v : x) ms += v * v;
    const double scale = 1.0 / std::sqrt(ms / static_cast<double>(x.size()) + 1e-5);
    dvec out(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) out[j] = weight[j] * x[j] * scale;
    return out;
  }
  static void rotate(dvec& v, index_t hd, index_t position) {
    for (std::size_t base = 0; base < v.size(); base += static_cast<std::size_t>(hd)) {
      for (index_t i = 0; i < hd / 2; ++i) {
        const double theta = static_cast<double>(position) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(hd));
        double& a = v[base + static_cast<std::size_t>(2 * i)];
        double& b = v[base + static_cast<std::size_t>(2 * i + 1)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(theta) - b0 * std::sin(theta);
        b = a0 * std::sin(theta) + b0 * std::cos(theta);
      }
    }
  }
  static void add(dvec& x, const dvec& y) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }

  const model& m_;
  std::vector<layer_state> layers_;
  index_t position_ = 0;
};

void expect_close(const Eigen::VectorXf& actual, const dvec& expected, const std::string& where) {
  ASSERT_EQ(static_cast<std::size_t>(actual.size()), expected.size()) << where;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(actual[static_cast<Eigen::Index>(i)], expected[i], 2e-4 * (1.0 + std::abs(expected[i])))
        << where << ", logit " << i;
  }
}

model synthetic_model(bool shared_classifier, index_t n_kv_heads = 2, std::uint32_t seed = 11) {
  model_config c = llama_test::small_config(shared_classifier);
  c.n_kv_heads = n_kv_heads;
  return model(c, llama_test::random_weights(c, seed));
}

const std::vector<int> some_tokens = {1, 5, 17, 3, 3, 30, 8, 0, 12, 25, 19, 2, 7, 31, 4, 9};

// One layer of an engine's contiguous store, seen through the calls these
// tests make.
struct layer_ref {
  kvcrush::contiguous_cache<float>* cache;
  index_t l;
  kvcrush::kv_view<const float> keys() const { return std::as_const(*cache).keys(l); }
  kvcrush::kv_view<const float> values() const { return std::as_const(*cache).values(l); }
  kvcrush::vector_view<const index_t> positions() const {  // KV head 0's (all heads share them here)
    return kvcrush::make_vector_view<const index_t>(cache->length(l) ? &std::as_const(*cache).positions(l)(0, 0) : nullptr,
                                                    cache->length(l));
  }
  index_t length() const { return cache->length(l); }
  index_t capacity() const { return cache->capacity(); }
  index_t kv_heads() const { return cache->kv_heads(); }
  index_t head_dim() const { return cache->head_dim(); }
  bool full() const { return length() >= capacity(); }
  void keep_rows(const std::vector<index_t>& rows) const {
    cache->evict_tokens(l, kvcrush::keep_view::shared(rows.data(), static_cast<index_t>(rows.size())));
  }
};

layer_ref layer_of(engine& e, index_t l) { return {&dynamic_cast<kvcrush_llama::contiguous_store&>(e.cache()).cache(), l}; }

TEST(LlamaEngine, MatchesADoublePrecisionReference) {
  for (const bool shared : {true, false}) {
    for (const index_t kv_heads : {1, 2, 4}) {  // multi-query, grouped, multi-head
      const model m = synthetic_model(shared, kv_heads);
      engine e(m);
      reference_llama reference(m);
      for (std::size_t i = 0; i < some_tokens.size(); ++i) {
        const std::string where = "shared " + std::to_string(shared) + ", kv_heads " + std::to_string(kv_heads) +
                                  ", token " + std::to_string(i);
        expect_close(e.forward(some_tokens[i]), reference.forward(some_tokens[i]), where);
        EXPECT_EQ(e.position(), static_cast<index_t>(i + 1));
      }
    }
  }
}

// Records every attention event (copies, since views die with the call).
struct recording_observer final : kvcrush_llama::attention_observer {
  struct record {
    index_t layer, position, length;
    std::vector<std::vector<float>> probabilities;  // [head][row]
    std::vector<std::vector<float>> queries;        // [head][dim]
    std::vector<index_t> positions;
    std::vector<std::vector<float>> expected;       // softmax(q.k / sqrt(hd)) from the views
  };
  std::vector<record> records;

  void on_attention(const attention_event& event) override {
    record r{event.layer, event.position, event.probabilities.extent(1), {}, {}, {}, {}};
    const index_t heads = event.probabilities.extent(0);
    const index_t hd = event.queries.extent(1);
    const index_t group = heads / event.keys.heads();
    for (index_t h = 0; h < heads; ++h) {
      std::vector<float> p, q;
      for (index_t t = 0; t < r.length; ++t) p.push_back(event.probabilities(h, t));
      for (index_t i = 0; i < hd; ++i) q.push_back(event.queries(h, i));
      std::vector<double> s;
      for (index_t t = 0; t < event.keys.tokens(); ++t) {
        double dot = 0.0;
        for (index_t i = 0; i < hd; ++i) dot += static_cast<double>(q[static_cast<std::size_t>(i)]) * event.keys(h / group, t, i);
        s.push_back(dot / std::sqrt(static_cast<double>(hd)));
      }
      const double top = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double& v : s) sum += (v = std::exp(v - top));
      std::vector<float> expected;
      for (double v : s) expected.push_back(static_cast<float>(v / sum));
      r.probabilities.push_back(p);
      r.queries.push_back(q);
      r.expected.push_back(expected);
    }
    for (index_t t = 0; t < event.positions.extent(1); ++t) r.positions.push_back(event.positions(0, t));
    EXPECT_EQ(event.values.tokens(), r.length);
    EXPECT_EQ(event.keys.tokens(), r.length);
    records.push_back(std::move(r));
  }
};

void expect_consistent(const recording_observer::record& r) {
  for (std::size_t h = 0; h < r.probabilities.size(); ++h) {
    ASSERT_EQ(r.probabilities[h].size(), static_cast<std::size_t>(r.length));
    double sum = 0.0;
    for (std::size_t t = 0; t < r.probabilities[h].size(); ++t) {
      sum += r.probabilities[h][t];
      EXPECT_NEAR(r.probabilities[h][t], r.expected[h][t], 1e-5) << "layer " << r.layer << " head " << h;
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  ASSERT_FALSE(r.positions.empty());
  EXPECT_EQ(r.positions.back(), r.position);  // the new token is the last row
}

TEST(LlamaEngine, ObserverSeesEveryLayerOfEveryToken) {
  const model m = synthetic_model(true);
  engine e(m);
  recording_observer observer;
  e.set_observer(&observer);
  for (int i = 0; i < 5; ++i) e.forward(some_tokens[static_cast<std::size_t>(i)]);
  ASSERT_EQ(observer.records.size(), 5u * 2u);
  for (std::size_t i = 0; i < observer.records.size(); ++i) {
    const auto& r = observer.records[i];
    EXPECT_EQ(r.layer, static_cast<index_t>(i % 2));
    EXPECT_EQ(r.position, static_cast<index_t>(i / 2));
    EXPECT_EQ(r.length, r.position + 1);
    EXPECT_EQ(r.probabilities.size(), 4u);  // n_heads
    EXPECT_EQ(r.queries.front().size(), 4u);  // head_dim
    std::vector<index_t> expected_positions(static_cast<std::size_t>(r.length));
    std::iota(expected_positions.begin(), expected_positions.end(), index_t{0});
    EXPECT_EQ(r.positions, expected_positions);
    expect_consistent(r);
  }
  // Detaching stops the calls.
  e.set_observer(nullptr);
  e.forward(3);
  EXPECT_EQ(observer.records.size(), 10u);
}

TEST(LlamaEngine, CacheHoldsRotatedKeysInHeadTokenDimLayout) {
  const model m = synthetic_model(true);
  engine e(m, 8);
  for (int i = 0; i < 3; ++i) e.forward(some_tokens[static_cast<std::size_t>(i)]);
  const auto layer = layer_of(e, 1);
  const auto keys = layer.keys();
  EXPECT_EQ(keys.layout(), kvcrush::kv_layout::head_token_dim);
  EXPECT_EQ(keys.heads(), 2);
  EXPECT_EQ(keys.tokens(), 3);
  EXPECT_EQ(keys.head_dim(), 4);
  EXPECT_EQ(keys.head_stride(), 8 * 4);  // capacity * head_dim
  EXPECT_EQ(keys.token_stride(), 4);
  EXPECT_EQ(layer.capacity(), 8);
  EXPECT_EQ(layer.positions().extent(0), 3);
  EXPECT_EQ(layer.values().tokens(), 3);
}

TEST(LlamaEngine, KeepingAllRowsChangesNothing) {
  const model m = synthetic_model(false);
  engine plain(m), kept(m);
  for (std::size_t i = 0; i < some_tokens.size(); ++i) {
    const Eigen::VectorXf expected = plain.forward(some_tokens[i]);
    const Eigen::VectorXf actual = kept.forward(some_tokens[i]);
    ASSERT_EQ(actual, expected) << "token " << i;  // bit for bit
    for (index_t l = 0; l < m.config().n_layers; ++l) {
      std::vector<index_t> all(static_cast<std::size_t>(layer_of(kept, l).length()));
      std::iota(all.begin(), all.end(), index_t{0});
      layer_of(kept, l).keep_rows(all);
    }
  }
}

TEST(LlamaEngine, EvictedCachesKeepDecodingOverFewerRows) {
  const model m = synthetic_model(true);
  engine e(m);
  reference_llama reference(m);
  for (int i = 0; i < 6; ++i) {
    e.forward(some_tokens[static_cast<std::size_t>(i)]);
    reference.forward(some_tokens[static_cast<std::size_t>(i)]);
  }
  // Different keep sets per layer (sorted rows, shared by the KV heads).
  const std::vector<std::vector<index_t>> keep = {{0, 3, 4, 5}, {1, 5}};
  std::vector<std::vector<float>> kept_keys(2);
  for (index_t l = 0; l < 2; ++l) {
    const auto before = layer_of(e, l).keys();
    for (index_t r : keep[static_cast<std::size_t>(l)]) {
      for (index_t h = 0; h < before.heads(); ++h) {
        for (index_t i = 0; i < before.head_dim(); ++i) kept_keys[static_cast<std::size_t>(l)].push_back(before(h, r, i));
      }
    }
    layer_of(e, l).keep_rows(keep[static_cast<std::size_t>(l)]);
    reference.keep_rows(l, keep[static_cast<std::size_t>(l)]);
  }
  // The kept rows moved down intact, with their positions.
  for (index_t l = 0; l < 2; ++l) {
    const auto layer = layer_of(e, l);
    const auto& rows = keep[static_cast<std::size_t>(l)];
    ASSERT_EQ(layer.length(), static_cast<index_t>(rows.size()));
    std::size_t at = 0;
    for (std::size_t j = 0; j < rows.size(); ++j) {
      EXPECT_EQ(layer.positions()[static_cast<index_t>(j)], rows[j]);
      for (index_t h = 0; h < layer.kv_heads(); ++h) {
        for (index_t i = 0; i < layer.head_dim(); ++i) {
          EXPECT_EQ(layer.keys()(h, static_cast<index_t>(j), i), kept_keys[static_cast<std::size_t>(l)][at++]);
        }
      }
    }
  }

  recording_observer observer;
  e.set_observer(&observer);
  for (int i = 6; i < 9; ++i) {
    const std::string where = "token " + std::to_string(i) + " after eviction";
    expect_close(e.forward(some_tokens[static_cast<std::size_t>(i)]),
                 reference.forward(some_tokens[static_cast<std::size_t>(i)]), where);
  }
  ASSERT_EQ(observer.records.size(), 6u);
  // Token 6 at position 6: layer 0 attends over 4 kept rows + itself,
  // layer 1 over 2 + itself; each later token adds one row.
  EXPECT_EQ(observer.records[0].length, 5);
  EXPECT_EQ(observer.records[1].length, 3);
  EXPECT_EQ(observer.records[0].positions, (std::vector<index_t>{0, 3, 4, 5, 6}));
  EXPECT_EQ(observer.records[1].positions, (std::vector<index_t>{1, 5, 6}));
  EXPECT_EQ(observer.records[5].length, 5);
  EXPECT_EQ(observer.records[5].position, 8);
  for (const auto& r : observer.records) expect_consistent(r);
  EXPECT_EQ(e.position(), 9);
}

TEST(LlamaEngine, FullCachesRefuseTokensUntilRowsAreEvicted) {
  const model m = synthetic_model(true);
  engine e(m, 4);
  for (int i = 0; i < 4; ++i) e.forward(some_tokens[static_cast<std::size_t>(i)]);
  EXPECT_THROW(e.forward(1), std::length_error);
  EXPECT_EQ(e.position(), 4);  // unchanged by the refused token
  // A sliding window with one sink row decodes far past the capacity.
  recording_observer observer;
  e.set_observer(&observer);
  for (int i = 4; i < 40; ++i) {
    for (index_t l = 0; l < 2; ++l) {
      auto layer = layer_of(e, l);
      if (layer.full()) layer.keep_rows(std::vector<index_t>{0, layer.length() - 2, layer.length() - 1});
    }
    const Eigen::VectorXf& logits = e.forward(some_tokens[static_cast<std::size_t>(i) % some_tokens.size()]);
    EXPECT_TRUE(logits.allFinite());
  }
  EXPECT_EQ(e.position(), 40);
  const auto& last = observer.records.back();
  EXPECT_EQ(last.position, 39);
  EXPECT_LE(last.length, 4);
  EXPECT_EQ(last.positions.front(), 0);  // the sink stayed
  EXPECT_EQ(last.positions.back(), 39);
  for (const auto& r : observer.records) expect_consistent(r);
  EXPECT_THROW(e.forward(-1), std::out_of_range);
  EXPECT_THROW(e.forward(32), std::out_of_range);
}

TEST(LlamaEngine, BadRowSetsAreRefusedAndChangeNothing) {
  const model m = synthetic_model(true);
  engine e(m);
  for (int i = 0; i < 5; ++i) e.forward(some_tokens[static_cast<std::size_t>(i)]);
  auto layer = layer_of(e, 0);
  for (const std::vector<index_t>& bad : std::vector<std::vector<index_t>>{
           {0, 0, 1}, {2, 1}, {0, 5}, {-1, 2}, {0, 1, 2, 3, 4, 5}}) {
    EXPECT_THROW(layer.keep_rows(bad), std::invalid_argument);
    EXPECT_EQ(layer.length(), 5);
  }
  layer.keep_rows(std::vector<index_t>{});
  EXPECT_EQ(layer.length(), 0);
  // An empty layer still decodes: the new token attends to itself only.
  EXPECT_TRUE(e.forward(3).allFinite());
  EXPECT_EQ(layer.length(), 1);
  EXPECT_EQ(layer.positions()[0], 5);
}

TEST(LlamaEngine, EvictionOnTheSharedModel) {
  LLAMA_REQUIRE_SHARED_MODEL();
  const model m = model::load(llama_test::shared_model().string());
  const auto vocabulary = kvcrush_llama::tokenizer::load(llama_test::shared_tokenizer().string(), 512);
  engine e(m, 64);
  recording_observer observer;
  e.set_observer(&observer);
  int token = kvcrush_llama::tokenizer::bos_id;
  std::string text;
  for (int step = 0; step < 100; ++step) {
    for (index_t l = 0; l < m.config().n_layers; ++l) {
      auto layer = layer_of(e, l);
      if (layer.full()) {  // keep 4 sink rows and the 28 most recent
        std::vector<index_t> rows = {0, 1, 2, 3};
        for (index_t r = layer.length() - 28; r < layer.length(); ++r) rows.push_back(r);
        layer.keep_rows(rows);
      }
    }
    const Eigen::VectorXf& logits = e.forward(token);
    const int next = static_cast<int>(kvcrush_llama::argmax(logits.data(), logits.size()));
    text += vocabulary.decode(token, next);
    token = next;
  }
  EXPECT_EQ(e.position(), 100);
  EXPECT_LE(observer.records.back().length, 64);
  EXPECT_EQ(observer.records.back().probabilities.size(), 8u);
  for (const auto& r : observer.records) expect_consistent(r);
  EXPECT_EQ(text.rfind("Once upon a time", 0), 0u) << text;  // the first 64 tokens are unaffected
}

TEST(LlamaEngine, PromptIsEchoedThenContinued) {
  LLAMA_REQUIRE_SHARED_MODEL();
  const model m = model::load(llama_test::shared_model().string());
  const auto vocabulary = kvcrush_llama::tokenizer::load(llama_test::shared_tokenizer().string(), 512);
  engine e(m, 40);
  std::string text;
  const auto tokens = kvcrush_llama::generate_greedy(e, vocabulary, "Lily liked", 40,
                                                     [&](std::string_view piece) { text += piece; });
  EXPECT_EQ(text.rfind("Lily liked", 0), 0u) << text;
  EXPECT_GT(text.size(), std::string("Lily liked").size());
  EXPECT_EQ(tokens.front(), 1);
  EXPECT_EQ(tokens.size(), 41u);  // BOS and one token per position
  EXPECT_EQ(e.position(), 40);
}

}  // namespace

// The engine's three stores are kvcrush's caches: contiguous, one
// single-head cache per KV head, and paged. Holding the same rows, they give
// the same logits bit for bit, before and after evictions.
TEST(LlamaEngine, ContiguousPagedAndPerHeadStoresAgree) {
  const model m = synthetic_model(true);
  const auto& c = m.config();
  engine contiguous(m, 16);
  engine paged(m, std::make_unique<kvcrush_llama::paged_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 16, 4));
  engine per_head(m, std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 16));
  for (int i = 0; i < 40; ++i) {
    for (index_t l = 0; l < c.n_layers; ++l) {
      if (contiguous.cache().full(l)) {
        // Keep a sink, every other middle row, and the last three.
        std::vector<index_t> rows = {0};
        const index_t n = contiguous.cache().length(l);
        for (index_t r = 2; r < n - 3; r += 2) rows.push_back(r);
        for (index_t r = n - 3; r < n; ++r) rows.push_back(r);
        for (engine* e : {&contiguous, &paged, &per_head}) e->cache().keep_rows(l, rows);
      }
    }
    const int token = some_tokens[static_cast<std::size_t>(i) % some_tokens.size()];
    const Eigen::VectorXf expected = contiguous.forward(token);
    ASSERT_EQ(paged.forward(token), expected) << "paged, token " << i;
    ASSERT_EQ(per_head.forward(token), expected) << "per-head, token " << i;
  }
}

TEST(LlamaEngine, PerHeadStoreHoldsRaggedHeads) {
  const model m = synthetic_model(true);
  const auto& c = m.config();
  engine e(m, std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), 16));
  for (int i = 0; i < 6; ++i) e.forward(some_tokens[static_cast<std::size_t>(i)]);
  // Head 0 keeps 2 rows, head 1 keeps 5 (AdaKV-style head-wise budgets).
  const std::vector<index_t> rows = {0, 5, -1, -1, -1, 0, 1, 2, 3, 5};
  const std::vector<index_t> counts = {2, 5};
  e.cache().evict(0, kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(rows.data(), 2, 5),
                                                kvcrush::make_vector_view<const index_t>(counts.data(), 2)));
  EXPECT_EQ(e.cache().length(0, 0), 2);
  EXPECT_EQ(e.cache().length(0, 1), 5);
  struct lengths_observer : kvcrush_llama::attention_observer {
    std::vector<index_t> seen;
    void on_attention(const kvcrush_llama::attention_event& event) override {
      if (event.layer == 0) seen.assign(event.head_lengths.data(), event.head_lengths.data() + 2);
    }
  } observer;
  e.set_observer(&observer);
  EXPECT_TRUE(e.forward(3).allFinite());
  EXPECT_EQ(observer.seen, (std::vector<index_t>{3, 6}));  // each head attends over its own rows + the new one
  // A contiguous store refuses ragged keep sets (heads share one length).
  engine shared(m, 16);
  for (int i = 0; i < 6; ++i) shared.forward(some_tokens[static_cast<std::size_t>(i)]);
  EXPECT_THROW(shared.cache().evict(0, kvcrush::keep_view::ragged(kvcrush::make_matrix_view<const index_t>(rows.data(), 2, 5),
                                                                  kvcrush::make_vector_view<const index_t>(counts.data(), 2))),
               std::invalid_argument);
}

// Checkpoint loading: the weight layout (shared and separate classifier, the
// skipped RoPE tables) and clear errors for malformed or truncated files.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "llama_test_support.hpp"
#include "model.hpp"

namespace {

using kvcrush_llama::model;
using kvcrush_llama::model_config;
using llama_test::temp_file;

// Weights whose value is their index in file order, so every pointer the
// model hands out can be checked against an independently computed offset.
std::vector<float> index_weights(const model_config& c) {
  std::vector<float> w(static_cast<std::size_t>(kvcrush_llama::layout_of(c, "<test>").loaded_floats()));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
  return w;
}

void expect_layout(const model& m) {
  const model_config& c = m.config();
  const long d = c.dim, h = c.hidden_dim, L = c.n_layers, kv = c.kv_dim(), V = c.vocab_size;
  const float* base = m.token_embedding();
  EXPECT_EQ(base[0], 0.0f);
  long at = V * d;
  const long attention_norm = at;
  const long wq = attention_norm + L * d;
  const long wk = wq + L * d * d;
  const long wv = wk + L * kv * d;
  const long wo = wv + L * kv * d;
  const long ffn_norm = wo + L * d * d;
  const long w1 = ffn_norm + L * d;
  const long w2 = w1 + L * h * d;
  const long w3 = w2 + L * d * h;
  const long final_norm = w3 + L * h * d;
  for (long l = 0; l < L; ++l) {
    const auto w = m.layer(l);
    EXPECT_EQ(w.attention_norm[0], static_cast<float>(attention_norm + l * d)) << "layer " << l;
    EXPECT_EQ(w.wq[0], static_cast<float>(wq + l * d * d)) << "layer " << l;
    EXPECT_EQ(w.wk[0], static_cast<float>(wk + l * kv * d)) << "layer " << l;
    EXPECT_EQ(w.wv[0], static_cast<float>(wv + l * kv * d)) << "layer " << l;
    EXPECT_EQ(w.wo[0], static_cast<float>(wo + l * d * d)) << "layer " << l;
    EXPECT_EQ(w.ffn_norm[0], static_cast<float>(ffn_norm + l * d)) << "layer " << l;
    EXPECT_EQ(w.w1[0], static_cast<float>(w1 + l * h * d)) << "layer " << l;
    EXPECT_EQ(w.w2[0], static_cast<float>(w2 + l * d * h)) << "layer " << l;
    EXPECT_EQ(w.w3[0], static_cast<float>(w3 + l * h * d)) << "layer " << l;
  }
  EXPECT_EQ(m.final_norm()[0], static_cast<float>(final_norm));
  EXPECT_EQ(m.final_norm()[d - 1], static_cast<float>(final_norm + d - 1));
  if (c.shared_classifier) {
    EXPECT_EQ(m.classifier(), m.token_embedding());
  } else {
    // The RoPE tables sit between the final norm and the classifier in the
    // file but are not loaded.
    EXPECT_EQ(m.classifier()[0], static_cast<float>(final_norm + d));
    EXPECT_EQ(m.classifier()[V * d - 1], static_cast<float>(final_norm + d + V * d - 1));
  }
}

TEST(LlamaCheckpoint, LoadsTheDocumentedLayout) {
  for (const bool shared : {true, false}) {
    const model_config c = llama_test::small_config(shared);
    temp_file file("kvcrush-llama-checkpoint");
    file.write(llama_test::checkpoint_bytes(c, index_weights(c), std::numeric_limits<float>::quiet_NaN()));
    const model m = model::load(file.path());
    EXPECT_EQ(m.config().dim, 16);
    EXPECT_EQ(m.config().hidden_dim, 24);
    EXPECT_EQ(m.config().n_layers, 2);
    EXPECT_EQ(m.config().n_heads, 4);
    EXPECT_EQ(m.config().n_kv_heads, 2);
    EXPECT_EQ(m.config().vocab_size, 32);
    EXPECT_EQ(m.config().seq_len, 64);
    EXPECT_EQ(m.config().shared_classifier, shared);
    EXPECT_EQ(m.config().head_dim(), 4);
    EXPECT_EQ(m.config().kv_dim(), 8);
    EXPECT_EQ(m.config().kv_group(), 2);
    expect_layout(m);
  }
}

TEST(LlamaCheckpoint, LoadsTheSharedModel) {
  KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_model());
  const model m = model::load(llama_test::shared_model().string());
  const model_config& c = m.config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_TRUE(std::isfinite(m.final_norm()[63]));
}

// Loading bytes must fail with a runtime_error naming the file and
// containing `expected`.
void expect_checkpoint_error(const std::string& bytes, const std::string& expected) {
  temp_file file("kvcrush-llama-bad-checkpoint");
  file.write(bytes);
  try {
    (void)model::load(file.path());
    ADD_FAILURE() << "loaded a malformed checkpoint, expected an error containing '" << expected << "'";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file.path()), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
}

std::string with_header(std::int32_t dim, std::int32_t hidden, std::int32_t layers, std::int32_t heads,
                        std::int32_t kv_heads, std::int32_t vocab, std::int32_t seq_len) {
  const std::int32_t fields[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq_len};
  return llama_test::checkpoint_header(fields) + std::string(4096, '\0');
}

TEST(LlamaCheckpoint, MalformedFilesGiveClearErrors) {
  const model_config c = llama_test::small_config();
  const std::string good = llama_test::checkpoint_bytes(c, index_weights(c));
  expect_checkpoint_error("", "too short for the 28-byte header");
  expect_checkpoint_error(good.substr(0, 27), "too short for the 28-byte header");
  expect_checkpoint_error(good.substr(0, good.size() - 4), "file too short");
  expect_checkpoint_error(good.substr(0, 28), "file too short");
  expect_checkpoint_error(good + "junk", "file too long");
  expect_checkpoint_error(with_header(0, 24, 2, 4, 2, 32, 64), "dim must be positive (got 0)");
  expect_checkpoint_error(with_header(16, -24, 2, 4, 2, 32, 64), "hidden_dim must be positive (got -24)");
  expect_checkpoint_error(with_header(16, 24, 0, 4, 2, 32, 64), "n_layers must be positive");
  expect_checkpoint_error(with_header(16, 24, 2, 0, 2, 32, 64), "n_heads must be positive");
  expect_checkpoint_error(with_header(16, 24, 2, 4, 0, 32, 64), "n_kv_heads must be positive");
  expect_checkpoint_error(with_header(16, 24, 2, 4, 2, 0, 64), "vocab_size must be nonzero");
  expect_checkpoint_error(with_header(16, 24, 2, 4, 2, 32, -1), "seq_len must be positive");
  expect_checkpoint_error(with_header(16, 24, 2, 4, 3, 32, 64), "n_heads (4) is not a multiple of n_kv_heads (3)");
  expect_checkpoint_error(with_header(16, 24, 2, 2, 4, 32, 64), "n_heads (2) is not a multiple of n_kv_heads (4)");
  expect_checkpoint_error(with_header(18, 24, 2, 4, 2, 32, 64), "dim (18) is not divisible by n_heads (4)");
  expect_checkpoint_error(with_header(12, 24, 2, 4, 2, 32, 64), "head_dim (3 = dim / n_heads) is odd");
  // Sizes that overflow 64-bit arithmetic, and merely huge ones.
  const std::int32_t big = std::numeric_limits<std::int32_t>::max() - 3;  // even head_dim
  expect_checkpoint_error(with_header(big, big, big, 2, 2, -big, big), "impossible size");
  expect_checkpoint_error(with_header(1 << 20, 1 << 20, 64, 64, 64, 32000, 4096), "file too short");
  EXPECT_THROW((void)model::load("/nonexistent/kvcrush/model.bin"), std::runtime_error);
  try {
    (void)model::load("/nonexistent/kvcrush/model.bin");
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
  }
}

TEST(LlamaCheckpoint, InMemoryModelsAreCheckedToo) {
  model_config c = llama_test::small_config();
  EXPECT_THROW(model(c, std::vector<float>(10)), std::runtime_error);
  c.n_kv_heads = 3;
  EXPECT_THROW(model(c, std::vector<float>(10)), std::runtime_error);
}

}  // namespace

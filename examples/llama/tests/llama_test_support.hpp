// Helpers for the engine's tests: temporary files, synthetic checkpoints and
// tokenizers written in the llama2.c formats, and the shared model's paths.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model.hpp"
#include "test_support.hpp"

namespace llama_test {

using kvcrush::index_t;
using kvcrush_llama::model_config;

// For the golden programs (no gtest): 0 when every file exists; otherwise
// prints why and returns the exit code, 77 (skipped) or, under CI=true, 1.
template <std::size_t N>
int missing_shared_files(const std::filesystem::path (&files)[N]) {
  for (const auto& file : files) {
    if (std::filesystem::exists(file)) continue;
    if (kvcrush_test::running_in_ci()) {
      std::printf("FAILED: missing shared file %s (CI=true requires it)\n", file.string().c_str());
      return 1;
    }
    std::printf("SKIPPED: missing shared file %s; set KVCRUSH_SHARED_DIR or -DKVCRUSH_SHARED_DIR\n",
                file.string().c_str());
    return 77;
  }
  return 0;
}

inline std::filesystem::path shared_model() { return kvcrush_test::shared_dir() / "models" / "stories260K.bin"; }
inline std::filesystem::path shared_tokenizer() { return kvcrush_test::shared_dir() / "models" / "tok512.bin"; }
inline std::filesystem::path shared_reference() {
  return kvcrush_test::shared_dir() / "models" / "stories260K_greedy200.txt";
}

// A file in the temporary folder, removed when the object goes away.
class temp_file {
 public:
  explicit temp_file(const std::string& stem) {
    // Unique across concurrent test processes and within this one.
    static const unsigned process_tag = std::random_device{}();
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (stem + "-" + std::to_string(process_tag) + "-" + std::to_string(counter++) + ".bin");
  }
  ~temp_file() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  temp_file(const temp_file&) = delete;
  temp_file& operator=(const temp_file&) = delete;

  std::string path() const { return path_.string(); }

  void write(const std::string& bytes) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "cannot write " << path_;
  }

 private:
  std::filesystem::path path_;
};

// Little-endian encoders for building files byte by byte.
inline void put_i32(std::string& out, std::int32_t v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xFF));
}
inline void put_f32(std::string& out, float v) {
  std::int32_t i;
  std::memcpy(&i, &v, 4);
  put_i32(out, i);
}

inline std::string checkpoint_header(const std::int32_t (&fields)[7]) {
  std::string out;
  for (std::int32_t f : fields) put_i32(out, f);
  return out;
}

// A small GQA model shape (2 query heads per KV head) for synthetic tests.
inline model_config small_config(bool shared_classifier = true) {
  model_config c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 32;
  c.seq_len = 64;
  c.shared_classifier = shared_classifier;
  return c;
}

// Random weights in file order (RoPE tables excluded, classifier last when
// unshared); norms near 1 so activations stay in a sane range.
inline std::vector<float> random_weights(const model_config& c, std::uint32_t seed) {
  const auto layout = kvcrush_llama::layout_of(c, "<test>");
  std::vector<float> w(static_cast<std::size_t>(layout.loaded_floats()));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  for (float& v : w) v = dist(rng);
  // The norm weights: attention, ffn and final norms.
  const auto set_norm = [&](std::uint64_t offset, std::uint64_t count) {
    for (std::uint64_t i = 0; i < count; ++i) w[offset + i] = 1.0f + 0.2f * dist(rng);
  };
  std::uint64_t at = layout.embedding;
  set_norm(at, layout.attention_norm);
  at += layout.attention_norm + layout.wq + layout.wk + layout.wv + layout.wo;
  set_norm(at, layout.ffn_norm);
  set_norm(layout.body() - layout.final_norm, layout.final_norm);
  return w;
}

// The checkpoint file of a model: header, body, the two legacy RoPE tables
// (filled with rope_fill, which a correct loader skips), then the classifier.
inline std::string checkpoint_bytes(const model_config& c, const std::vector<float>& weights,
                                    float rope_fill = 0.0f) {
  const auto layout = kvcrush_llama::layout_of(c, "<test>");
  const std::int32_t fields[7] = {
      static_cast<std::int32_t>(c.dim),        static_cast<std::int32_t>(c.hidden_dim),
      static_cast<std::int32_t>(c.n_layers),   static_cast<std::int32_t>(c.n_heads),
      static_cast<std::int32_t>(c.n_kv_heads), static_cast<std::int32_t>(c.shared_classifier ? c.vocab_size : -c.vocab_size),
      static_cast<std::int32_t>(c.seq_len)};
  std::string out = checkpoint_header(fields);
  for (std::uint64_t i = 0; i < layout.body(); ++i) put_f32(out, weights[i]);
  for (std::uint64_t i = 0; i < layout.rope_tables; ++i) put_f32(out, rope_fill);
  for (std::uint64_t i = layout.body(); i < weights.size(); ++i) put_f32(out, weights[i]);
  return out;
}

// A tokenizer file: max_token_length, then (score, length, bytes) per piece.
inline std::string tokenizer_bytes(const std::vector<std::string>& pieces, const std::vector<float>& scores,
                                   std::int32_t max_token_length) {
  std::string out;
  put_i32(out, max_token_length);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    put_f32(out, scores[i]);
    put_i32(out, static_cast<std::int32_t>(pieces[i].size()));
    out += pieces[i];
  }
  return out;
}

}  // namespace llama_test

// Skips (or fails under CI=true) when the shared model files are missing.
#define LLAMA_REQUIRE_SHARED_MODEL()                                   \
  do {                                                                 \
    KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_model());           \
    KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_tokenizer());       \
  } while (0)

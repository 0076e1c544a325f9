// A Llama-2 model loaded from a llama2.c checkpoint (see
// ../shared/models/README.md for the format): the hyper-parameters and the
// float32 weights, held in memory the model owns.
//
// File layout: seven little-endian int32 (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier
// is stored separately), then float32 arrays in this order: token embedding,
// attention RMSNorm, wq, wk, wv, wo, FFN RMSNorm, w1, w2, w3, final RMSNorm,
// two legacy RoPE tables (skipped: RoPE is computed on the fly), and the
// classifier when it is not shared with the embedding.
#pragma once

#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "binary_io.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

struct model_config {
  index_t dim = 0;         // width of the residual stream
  index_t hidden_dim = 0;  // width of the FFN
  index_t n_layers = 0;
  index_t n_heads = 0;     // query heads
  index_t n_kv_heads = 0;  // key/value heads (fewer than n_heads with GQA)
  index_t vocab_size = 0;  // always positive here; see shared_classifier
  index_t seq_len = 0;     // trained context length
  bool shared_classifier = true;  // logits use the token embedding matrix

  index_t head_dim() const noexcept { return dim / n_heads; }
  index_t kv_dim() const noexcept { return n_kv_heads * head_dim(); }
  // Query heads per KV head: query head q reads KV head q / kv_group().
  index_t kv_group() const noexcept { return n_heads / n_kv_heads; }
};

inline constexpr std::uint64_t checkpoint_header_bytes = 7 * 4;

// The consistency checks every configuration must pass before any size is
// computed from it. Throws std::runtime_error naming the file and the field.
// (The file's vocab_size is signed; model_config holds its magnitude.)
inline void check_config(const model_config& c, const std::string& path) {
  const std::pair<const char*, index_t> positive[] = {
      {"dim", c.dim},          {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers},
      {"n_heads", c.n_heads},  {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size},
      {"seq_len", c.seq_len}};
  for (const auto& [name, value] : positive) {
    if (value <= 0) throw_file_error("checkpoint", path, name, " must be positive (got ", value, ")");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    throw_file_error("checkpoint", path, "n_heads (", c.n_heads, ") is not a multiple of n_kv_heads (",
                     c.n_kv_heads, ")");
  }
  if (c.dim % c.n_heads != 0) {
    throw_file_error("checkpoint", path, "dim (", c.dim, ") is not divisible by n_heads (", c.n_heads, ")");
  }
  if (c.head_dim() % 2 != 0) {
    throw_file_error("checkpoint", path, "head_dim (", c.head_dim(),
                     " = dim / n_heads) is odd, but RoPE rotates pairs");
  }
}

inline model_config config_from_header(const std::int32_t (&field)[7], const std::string& path) {
  if (field[5] == 0) throw_file_error("checkpoint", path, "vocab_size must be nonzero");
  model_config c;
  c.dim = field[0];
  c.hidden_dim = field[1];
  c.n_layers = field[2];
  c.n_heads = field[3];
  c.n_kv_heads = field[4];
  c.shared_classifier = field[5] > 0;  // negative: a separate classifier follows
  c.vocab_size = field[5] > 0 ? field[5] : -static_cast<index_t>(field[5]);
  c.seq_len = field[6];
  check_config(c, path);
  return c;
}

// Number of floats of each array of the file, in file order.
struct checkpoint_layout {
  std::uint64_t embedding = 0, attention_norm = 0, wq = 0, wk = 0, wv = 0, wo = 0, ffn_norm = 0;
  std::uint64_t w1 = 0, w2 = 0, w3 = 0, final_norm = 0, rope_tables = 0, classifier = 0;

  // Everything from the embedding to the final norm (one contiguous block).
  std::uint64_t body() const noexcept {
    return embedding + attention_norm + wq + wk + wv + wo + ffn_norm + w1 + w2 + w3 + final_norm;
  }
  std::uint64_t loaded_floats() const noexcept { return body() + classifier; }
  std::uint64_t file_bytes() const noexcept {
    return checkpoint_header_bytes + 4 * (body() + rope_tables + classifier);
  }
};

// Sizes are products of up to three int32 fields, so they are computed with
// overflow checks: a corrupt header must give an error, not a wrapped size.
inline checkpoint_layout layout_of(const model_config& c, const std::string& path) {
  // Bound every size so that the byte total (x4, plus the header) cannot wrap.
  constexpr std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() / 64;
  const auto product = [&](std::initializer_list<index_t> factors) {
    std::uint64_t p = 1;
    for (index_t f : factors) {
      const auto u = static_cast<std::uint64_t>(f);
      if (u != 0 && p > limit / u) throw_file_error("checkpoint", path, "the header implies an impossible size");
      p *= u;
    }
    return p;
  };
  checkpoint_layout l;
  l.embedding = product({c.vocab_size, c.dim});
  l.attention_norm = product({c.n_layers, c.dim});
  l.wq = product({c.n_layers, c.dim, c.dim});
  l.wk = product({c.n_layers, c.kv_dim(), c.dim});
  l.wv = l.wk;
  l.wo = l.wq;
  l.ffn_norm = l.attention_norm;
  l.w1 = product({c.n_layers, c.hidden_dim, c.dim});
  l.w2 = l.w1;
  l.w3 = l.w1;
  l.final_norm = product({c.dim});
  l.rope_tables = product({c.seq_len, c.head_dim()});  // two tables of seq_len * head_dim / 2
  l.classifier = c.shared_classifier ? 0 : l.embedding;
  // Thirteen terms each below limit / 1: their byte total cannot wrap; the
  // loaded part must also be addressable on this host.
  if (l.loaded_floats() > std::numeric_limits<std::size_t>::max() / sizeof(float)) {
    throw_file_error("checkpoint", path, "the header implies an impossible size");
  }
  return l;
}

// The weights of one transformer layer, row-major [out][in] matrices.
struct layer_weights {
  const float* attention_norm;  // [dim]
  const float* wq;              // [dim][dim]
  const float* wk;              // [kv_dim][dim]
  const float* wv;              // [kv_dim][dim]
  const float* wo;              // [dim][dim]
  const float* ffn_norm;        // [dim]
  const float* w1;              // [hidden][dim]
  const float* w2;              // [dim][hidden]
  const float* w3;              // [hidden][dim]
};

class model {
 public:
  // Reads a llama2.c checkpoint. Throws std::runtime_error naming the file
  // when it cannot be read, its header is inconsistent, or its size is not
  // exactly what the header implies.
  static model load(const std::string& path) {
    std::ifstream file;
    const std::uint64_t file_size = open_binary(file, "checkpoint", path);
    if (file_size < checkpoint_header_bytes) {
      throw_file_error("checkpoint", path, "file too short for the ", checkpoint_header_bytes,
                       "-byte header (", file_size, " bytes)");
    }
    unsigned char header[checkpoint_header_bytes];
    file.read(reinterpret_cast<char*>(header), sizeof header);
    if (!file) throw_file_error("checkpoint", path, "read error in the header");
    std::int32_t fields[7];
    for (int i = 0; i < 7; ++i) fields[i] = load_i32_le(header + 4 * i);
    const model_config config = config_from_header(fields, path);
    const checkpoint_layout layout = layout_of(config, path);
    if (file_size != layout.file_bytes()) {
      throw_file_error("checkpoint", path, file_size < layout.file_bytes() ? "file too short" : "file too long",
                       ": the header (dim ", config.dim, ", hidden_dim ", config.hidden_dim, ", n_layers ",
                       config.n_layers, ", n_heads ", config.n_heads, ", n_kv_heads ", config.n_kv_heads,
                       ", vocab_size ", fields[5], ", seq_len ", config.seq_len, ") implies ",
                       layout.file_bytes(), " bytes, the file has ", file_size);
    }
    std::vector<float> weights(static_cast<std::size_t>(layout.loaded_floats()));
    read_f32_array(file, weights.data(), layout.body(), "checkpoint", path, "the weights");
    if (!config.shared_classifier) {
      file.seekg(static_cast<std::streamoff>(4 * layout.rope_tables), std::ios::cur);
      read_f32_array(file, weights.data() + layout.body(), layout.classifier, "checkpoint", path,
                     "the classifier");
    }
    return model(config, std::move(weights), path);
  }

  // A model from weights already in memory, in file order without the RoPE
  // tables (the classifier last when not shared). Used by tests.
  model(const model_config& config, std::vector<float> weights, const std::string& origin = "<memory>")
      : config_((check_config(config, origin), config)),
        layout_(layout_of(config, origin)),
        weights_(std::move(weights)) {
    if (weights_.size() != layout_.loaded_floats()) {
      throw_file_error("checkpoint", origin, "expected ", layout_.loaded_floats(), " weights, got ",
                       weights_.size());
    }
  }

  // Weights can be large: moves only, no accidental copies.
  model(model&&) noexcept = default;
  model& operator=(model&&) noexcept = default;
  model(const model&) = delete;
  model& operator=(const model&) = delete;

  const model_config& config() const noexcept { return config_; }

  const float* token_embedding() const noexcept { return weights_.data(); }  // [vocab][dim]

  layer_weights layer(index_t l) const noexcept {
    const auto li = static_cast<std::uint64_t>(l);
    const index_t dim = config_.dim;
    const auto per_layer = [&](std::uint64_t total) { return total / static_cast<std::uint64_t>(config_.n_layers); };
    const float* p = weights_.data() + layout_.embedding;
    layer_weights w;
    w.attention_norm = p + li * dim;
    p += layout_.attention_norm;
    w.wq = p + li * per_layer(layout_.wq);
    p += layout_.wq;
    w.wk = p + li * per_layer(layout_.wk);
    p += layout_.wk;
    w.wv = p + li * per_layer(layout_.wv);
    p += layout_.wv;
    w.wo = p + li * per_layer(layout_.wo);
    p += layout_.wo;
    w.ffn_norm = p + li * dim;
    p += layout_.ffn_norm;
    w.w1 = p + li * per_layer(layout_.w1);
    p += layout_.w1;
    w.w2 = p + li * per_layer(layout_.w2);
    p += layout_.w2;
    w.w3 = p + li * per_layer(layout_.w3);
    return w;
  }

  const float* final_norm() const noexcept { return weights_.data() + layout_.body() - layout_.final_norm; }

  // [vocab][dim]: the embedding itself when shared.
  const float* classifier() const noexcept {
    return config_.shared_classifier ? token_embedding() : weights_.data() + layout_.body();
  }

 private:
  model_config config_;
  checkpoint_layout layout_;
  std::vector<float> weights_;  // file order, RoPE tables dropped; pointers are computed per call
};

}  // namespace kvcrush_llama

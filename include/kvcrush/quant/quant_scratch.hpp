// Scratch memory of the quantized-storage stage: attention probabilities
// over a quantized layer, and rows converted to float before encoding.
#pragma once

#include <cstddef>

#include "kvcrush/scratch.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

class quant_scratch {
 public:
  quant_scratch() = default;
  quant_scratch(const quant_scratch&) = delete;
  quant_scratch& operator=(const quant_scratch&) = delete;
  quant_scratch(quant_scratch&&) noexcept = default;
  quant_scratch& operator=(quant_scratch&&) noexcept = default;

  // Grows the buffers for attention over `tokens` tokens and for encoding
  // groups of `group` rows of width `head_dim`.
  void reserve(index_t tokens, index_t group = 0, index_t head_dim = 0) {
    probabilities(static_cast<std::size_t>(tokens > 0 ? tokens : 0) + 1);
    const auto rows = static_cast<std::size_t>(group > 0 && head_dim > 0 ? group * head_dim : 1);
    key_rows(rows);
    value_rows(rows);
  }

  std::size_t allocations() const noexcept { return allocations_; }
  std::size_t bytes_reserved() const noexcept {
    return (probabilities_.capacity() + key_rows_.capacity() + value_rows_.capacity()) * sizeof(float);
  }

  // One query's attention probabilities over the layer's tokens.
  float* probabilities(std::size_t n) { return probabilities_.ensure(n, allocations_); }
  // A group of key rows / value rows as floats (float16 and bfloat16 input).
  float* key_rows(std::size_t n) { return key_rows_.ensure(n, allocations_); }
  float* value_rows(std::size_t n) { return value_rows_.ensure(n, allocations_); }

 private:
  std::size_t allocations_ = 0;
  detail::scratch<float> probabilities_, key_rows_, value_rows_;
};

}  // namespace kvcrush

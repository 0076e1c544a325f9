// llama2.c's generation loop, its sampler and its printing rule.
//
// The output is exactly what llama2.c's `run` prints (temperature 0) before
// its final newline: the prompt, encoded with BOS, is fed one token per
// position and echoed; then each argmax token is decoded against its
// predecessor and printed, until `steps` positions were run or the model
// produced BOS.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "engine.hpp"
#include "tokenizer.hpp"
#include "transformer_ops.hpp"

namespace kvcrush_llama {

// The part of a decoded piece llama2.c prints (its safe_printf): pieces are C
// strings there, so they end at a NUL byte, and a lone byte that is neither
// printable nor whitespace (control codes, UTF-8 fragments) is dropped.
inline std::string_view printable_piece(std::string_view piece) noexcept {
  piece = piece.substr(0, piece.find('\0'));
  if (piece.size() == 1) {
    const auto byte = static_cast<unsigned char>(piece.front());
    if (!(std::isprint(byte) || std::isspace(byte))) return {};
  }
  return piece;
}

// llama2.c's sampler without top-p (its `run -t T -s SEED -p 1`): at
// temperature 0 the argmax; otherwise the logits divided by the temperature,
// softmax, and the first token whose cumulative probability exceeds a coin
// from llama2.c's xorshift generator. The same seed gives the same tokens.
class sampler {
 public:
  sampler(float temperature, std::uint64_t seed) : temperature_(temperature), state_(seed) {
    if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
      throw std::invalid_argument("sampler: temperature must be finite and >= 0");
    }
    // xorshift stays at 0 forever from state 0.
    if (temperature > 0.0f && seed == 0) throw std::invalid_argument("sampler: the seed must be nonzero");
  }

  // llama2.c's random_u32 / random_f32 (xorshift64*).
  std::uint32_t next_u32() noexcept {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<std::uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  }
  float next_f32() noexcept { return static_cast<float>(next_u32() >> 8) / 16777216.0f; }

  // llama2.c's sample_mult: the first index whose running sum exceeds coin
  // (the last one if rounding leaves the sum below it).
  static int sample_mult(const float* probabilities, index_t n, float coin) noexcept {
    float cdf = 0.0f;
    for (index_t i = 0; i < n; ++i) {
      cdf += probabilities[i];
      if (coin < cdf) return static_cast<int>(i);
    }
    return static_cast<int>(n - 1);
  }

  int operator()(const Eigen::VectorXf& logits) {
    if (temperature_ == 0.0f) return static_cast<int>(argmax(logits.data(), logits.size()));
    scratch_ = logits;
    for (index_t i = 0; i < scratch_.size(); ++i) scratch_[i] /= temperature_;
    softmax_in_place(scratch_.data(), scratch_.size());
    return sample_mult(scratch_.data(), scratch_.size(), next_f32());
  }

 private:
  float temperature_;
  std::uint64_t state_;
  Eigen::VectorXf scratch_;
};

// Resets the engine and runs `positions` positions from BOS: the prompt
// (encoded with BOS) is fed one token per position and echoed, then each
// position's token comes from pick(logits), until `positions` were run or
// the model produced BOS. before_token() runs before every forward() (where
// an engine evicts); emit(std::string_view) receives every non-empty
// printable piece. Returns the tokens fed or produced, BOS first.
template <class Pick, class BeforeToken, class Emit>
std::vector<int> generate(engine& model_engine, const tokenizer& vocabulary, const std::vector<int>& prompt_tokens,
                          index_t positions, Pick&& pick, BeforeToken&& before_token, Emit&& emit) {
  const auto prompt_length = static_cast<index_t>(prompt_tokens.size());
  model_engine.reset();
  std::vector<int> tokens{prompt_tokens.front()};
  int token = prompt_tokens.front();
  for (index_t position = 0; position < positions; ++position) {
    before_token();
    const Eigen::VectorXf& logits = model_engine.forward(token);
    const int next = position + 1 < prompt_length ? prompt_tokens[static_cast<std::size_t>(position + 1)] : pick(logits);
    if (next == tokenizer::bos_id) break;  // BOS delimits sequences
    const std::string_view piece = printable_piece(vocabulary.decode(token, next));
    if (!piece.empty()) emit(piece);
    tokens.push_back(next);
    token = next;
  }
  return tokens;
}

// llama2.c's loop at temperature 0: `steps` positions, the prompt's
// included.
template <class Emit>
std::vector<int> generate_greedy(engine& model_engine, const tokenizer& vocabulary, std::string_view prompt,
                                 index_t steps, Emit&& emit) {
  return generate(
      model_engine, vocabulary, vocabulary.encode(prompt, /*bos=*/true, /*eos=*/false), steps,
      [](const Eigen::VectorXf& logits) { return static_cast<int>(argmax(logits.data(), logits.size())); }, [] {},
      emit);
}

}  // namespace kvcrush_llama

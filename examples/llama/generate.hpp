// llama2.c's generation loop with greedy sampling, and its printing rule.
//
// The output is exactly what llama2.c's `run` prints (temperature 0) before
// its final newline: the prompt, encoded with BOS, is fed one token per
// position and echoed; then each argmax token is decoded against its
// predecessor and printed, until `steps` positions were run or the model
// produced BOS.
#pragma once

#include <cctype>
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

// Resets the engine and runs `steps` positions (the prompt's included)
// from BOS, calling emit(std::string_view) with every non-empty printable
// piece. Returns the tokens fed or produced, BOS first.
template <class Emit>
std::vector<int> generate_greedy(engine& model_engine, const tokenizer& vocabulary, std::string_view prompt,
                                 index_t steps, Emit&& emit) {
  const std::vector<int> prompt_tokens = vocabulary.encode(prompt, /*bos=*/true, /*eos=*/false);
  const auto prompt_length = static_cast<index_t>(prompt_tokens.size());
  model_engine.reset();
  std::vector<int> tokens{prompt_tokens.front()};
  int token = prompt_tokens.front();
  for (index_t position = 0; position < steps; ++position) {
    const Eigen::VectorXf& logits = model_engine.forward(token);
    const int next = position + 1 < prompt_length
                         ? prompt_tokens[static_cast<std::size_t>(position + 1)]
                         : static_cast<int>(argmax(logits.data(), logits.size()));
    if (next == tokenizer::bos_id) break;  // BOS delimits sequences
    const std::string_view piece = printable_piece(vocabulary.decode(token, next));
    if (!piece.empty()) emit(piece);
    tokens.push_back(next);
    token = next;
  }
  return tokens;
}

}  // namespace kvcrush_llama

// Evaluation texts: read, tokenized once, cut into chunks of the model's
// context (BOS + context - 1 text tokens), spread evenly over the text so
// that a few chunks still sample all of it.
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer.hpp"

namespace kvcrush_eval {

struct text_chunks {
  std::string name;  // file name without folder and extension
  std::vector<std::vector<int>> chunks;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read text file '" + path + "'");
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

inline std::string stem_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const auto dot = name.find_last_of('.');
  return dot == std::string::npos ? name : name.substr(0, dot);
}

inline text_chunks make_chunks(const std::string& path, const kvcrush_llama::tokenizer& tok, long context,
                               long count) {
  text_chunks out;
  out.name = stem_of(path);
  const std::vector<int> tokens = tok.encode(read_text(path), /*bos=*/false);
  const long body = context - 1;
  const long available = static_cast<long>(tokens.size()) / body;
  if (available < 1) {
    throw std::runtime_error("text '" + path + "' holds " + std::to_string(tokens.size()) +
                             " tokens, fewer than one context of " + std::to_string(body));
  }
  const long used = count < available ? count : available;
  const long stride = static_cast<long>(tokens.size()) / used;
  for (long c = 0; c < used; ++c) {
    std::vector<int> chunk = {kvcrush_llama::tokenizer::bos_id};
    const long start = c * stride;
    chunk.insert(chunk.end(), tokens.begin() + start, tokens.begin() + start + body);
    out.chunks.push_back(std::move(chunk));
  }
  return out;
}

}  // namespace kvcrush_eval

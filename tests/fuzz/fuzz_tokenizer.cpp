// The llama2.c tokenizer (examples/llama/tokenizer.hpp): loading fuzzed
// files, then encoding fuzzed text, checked against llama2.c's encode()
// written plainly (the quadratic best-pair loop the heap replaces).
//
// Input: flags (bit 0 BOS, bit 1 EOS), vocab_size (2 bytes, 1..600), the
// text (a length byte pair, then the bytes), then the tokenizer file.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.hpp"
#include "tokenizer.hpp"

namespace {

using kvcrush_llama::tokenizer;

// llama2.c's encode() of text (no BOS/EOS): " " + text split into UTF-8
// units of at most four bytes, each looked up or spelt as byte tokens, then
// repeatedly the leftmost best-scoring mergeable pair is merged.
std::vector<int> reference_encode(const tokenizer& tok, std::string_view text) {
  std::vector<int> ids;
  if (text.empty()) return ids;
  const auto add_unit = [&](std::string_view unit) {
    if (const int id = tok.find(unit); id >= 0) {
      ids.push_back(id);
      return;
    }
    for (const char c : unit) ids.push_back(static_cast<unsigned char>(c) + tokenizer::byte_fallback_offset);
  };
  add_unit(" ");
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 1;
    while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    add_unit(text.substr(i, n));
    i += n;
  }
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    std::size_t best_at = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      const std::string joined = std::string(tok.piece(ids[i])) + std::string(tok.piece(ids[i + 1]));
      const int id = tok.find(joined);
      if (id >= 0 && tok.score(id) > best) {
        best = tok.score(id);
        best_id = id;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    ids[best_at] = best_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  return ids;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static kvcrush_fuzz::memory_file file;
  kvcrush_fuzz::reader in(data, size);
  const std::uint8_t flags = in.byte();
  const bool bos = flags & 1, eos = flags & 2;
  const auto vocab_size = static_cast<kvcrush::index_t>(in.in_range(1, 600));
  // Long texts make the quadratic reference slow without reaching new code.
  const std::string text = in.text(200);
  const std::string_view rest = in.rest();
  const std::string& path = file.write(rest.data(), rest.size());
  try {
    const tokenizer tok = tokenizer::load(path, vocab_size);
    KVCRUSH_FUZZ_CHECK(tok.vocab_size() == vocab_size);
    std::vector<int> tokens;
    try {
      tokens = tok.encode(text, bos, eos);
    } catch (const std::runtime_error&) {
      // Only a byte that needs a fallback token the vocabulary lacks may
      // stop encoding.
      KVCRUSH_FUZZ_CHECK(vocab_size < 256 + tokenizer::byte_fallback_offset);
      return 0;
    }
    std::vector<int> expected;
    if (bos) expected.push_back(tokenizer::bos_id);
    const std::vector<int> body = reference_encode(tok, text);
    expected.insert(expected.end(), body.begin(), body.end());
    if (eos) expected.push_back(tokenizer::eos_id);
    KVCRUSH_FUZZ_CHECK(tokens == expected);
    int previous = -1;
    for (const int t : tokens) {
      if (t >= vocab_size) continue;  // BOS/EOS ids in a vocabulary smaller than 3
      (void)tok.decode(previous, t);
      previous = t;
    }
  } catch (const std::runtime_error&) {
    // Load refused the file (truncated, trailing bytes, bad lengths): fine.
  }
  return 0;
}

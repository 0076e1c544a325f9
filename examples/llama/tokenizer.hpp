// The llama2.c BPE tokenizer (SentencePiece-style vocabulary with byte
// fallback) and its file format.
//
// File layout: int32 max_token_length, then for each of the model's
// vocab_size tokens: float32 score, int32 byte length, the bytes. Token 1 is
// BOS, 2 is EOS, and ids 3..258 are the byte tokens "<0x00>".."<0xFF>".
//
// Encoding follows llama2.c's encode(): a space is prepended to non-empty
// text (SentencePiece's dummy prefix), the text is cut into UTF-8 code points
// (a lead byte plus at most three continuation bytes, stray continuation
// bytes stand alone), each looked up in the vocabulary or else spelled as byte
// tokens, and then the adjacent pair whose concatenation is the vocabulary
// entry with the highest score is merged, leftmost first on ties, until no
// pair merges. llama2.c rescans the whole sequence per merge (quadratic);
// here a heap of candidate pairs gives the same merges in O(n log n), which
// matters for evaluation texts of many thousand characters. BOS and EOS are
// added around the merged text (llama2.c offers BOS to the merge loop too,
// but no vocabulary entry starts with BOS's text, so nothing changes).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <queue>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "binary_io.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush_llama {

using kvcrush::index_t;

class tokenizer {
 public:
  static constexpr int bos_id = 1;
  static constexpr int eos_id = 2;
  static constexpr int byte_fallback_offset = 3;  // byte b is token b + 3

  // Reads a llama2.c tokenizer file holding vocab_size tokens (the count is
  // not stored in the file; it comes from the model). Throws
  // std::runtime_error naming the file when it is truncated, has trailing
  // bytes, or holds impossible lengths.
  static tokenizer load(const std::string& path, index_t vocab_size) {
    if (vocab_size <= 0) throw_file_error("tokenizer", path, "vocab_size must be positive (got ", vocab_size, ")");
    std::ifstream file;
    const std::uint64_t size = open_binary(file, "tokenizer", path);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    if (size > 0 && !file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size))) {
      throw_file_error("tokenizer", path, "read error");
    }
    byte_cursor in(bytes.data(), bytes.size());
    if (in.remaining() < 4) {
      throw_file_error("tokenizer", path, "file too short for the 4-byte max_token_length header (", size,
                       " bytes)");
    }
    const std::int32_t max_token_length = in.take_i32();
    if (max_token_length <= 0) {
      throw_file_error("tokenizer", path, "max_token_length must be positive (got ", max_token_length, ")");
    }
    std::vector<std::string> pieces;
    std::vector<float> scores;
    pieces.reserve(static_cast<std::size_t>(vocab_size));
    scores.reserve(static_cast<std::size_t>(vocab_size));
    for (index_t id = 0; id < vocab_size; ++id) {
      if (in.remaining() < 8) {
        throw_file_error("tokenizer", path, "file truncated in token ", id, " of ", vocab_size, " (at byte ",
                         in.offset(), ", ", in.remaining(), " bytes left, 8 needed for score and length)");
      }
      scores.push_back(in.take_f32());
      const std::int32_t length = in.take_i32();
      if (length < 0 || length > max_token_length) {
        throw_file_error("tokenizer", path, "token ", id, " has length ", length, ", outside [0, max_token_length = ",
                         max_token_length, "]");
      }
      if (in.remaining() < static_cast<std::size_t>(length)) {
        throw_file_error("tokenizer", path, "file truncated in token ", id, " of ", vocab_size, " (", length,
                         " bytes announced, ", in.remaining(), " left)");
      }
      pieces.push_back(in.take_bytes(static_cast<std::size_t>(length)));
    }
    if (in.remaining() != 0) {
      throw_file_error("tokenizer", path, "file too long: ", in.remaining(), " bytes follow the last of ", vocab_size,
                       " tokens (does the tokenizer match the model's vocab_size?)");
    }
    return tokenizer(std::move(pieces), std::move(scores), max_token_length);
  }

  // A tokenizer from an in-memory vocabulary (tests, other file formats).
  tokenizer(std::vector<std::string> pieces, std::vector<float> scores, index_t max_token_length)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), max_token_length_(max_token_length) {
    if (pieces_.empty() || pieces_.size() != scores_.size()) {
      throw std::invalid_argument("kvcrush_llama::tokenizer: need as many scores as pieces, and at least one");
    }
    sorted_ids_.resize(pieces_.size());
    for (std::size_t i = 0; i < sorted_ids_.size(); ++i) sorted_ids_[i] = static_cast<int>(i);
    // Stable: among duplicate pieces the lowest id is the one found.
    std::stable_sort(sorted_ids_.begin(), sorted_ids_.end(),
                     [&](int a, int b) { return pieces_[a] < pieces_[b]; });
    byte_of_.assign(pieces_.size(), -1);
    for (std::size_t id = 0; id < pieces_.size(); ++id) byte_of_[id] = parse_byte_token(pieces_[id]);
    for (int b = 0; b < 256; ++b) byte_chars_[static_cast<std::size_t>(b)] = static_cast<char>(b);
  }

  index_t vocab_size() const noexcept { return static_cast<index_t>(pieces_.size()); }
  index_t max_token_length() const noexcept { return max_token_length_; }

  std::string_view piece(int id) const { return pieces_.at(checked(id)); }
  float score(int id) const { return scores_.at(checked(id)); }

  // The id of the vocabulary entry equal to text, or -1.
  int find(std::string_view text) const noexcept {
    const auto it = std::lower_bound(sorted_ids_.begin(), sorted_ids_.end(), text,
                                     [&](int id, std::string_view key) { return pieces_[id] < key; });
    return it != sorted_ids_.end() && pieces_[*it] == text ? *it : -1;
  }

  std::vector<int> encode(std::string_view text, bool bos = true, bool eos = false) const {
    std::vector<int> tokens;
    if (bos) tokens.push_back(bos_id);
    const std::vector<int> body = encode_text(text);
    tokens.insert(tokens.end(), body.begin(), body.end());
    if (eos) tokens.push_back(eos_id);
    return tokens;
  }

  // The text of token after previous, by llama2.c's rules: after BOS a
  // leading space is dropped (the dummy prefix), and a byte token decodes to
  // its raw byte.
  std::string_view decode(int previous, int token) const {
    std::string_view text = piece(token);
    int byte = byte_of_[static_cast<std::size_t>(token)];
    if (previous == bos_id && !text.empty() && text.front() == ' ') {
      text.remove_prefix(1);
      byte = parse_byte_token(text);  // as in llama2.c, the byte test sees the stripped text
    }
    if (byte >= 0) return std::string_view(&byte_chars_[static_cast<std::size_t>(byte)], 1);
    return text;
  }

  // Byte value of a "<0xHH>" token, or -1.
  static int parse_byte_token(std::string_view text) noexcept {
    if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
    const auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = hex(text[3]);
    const int lo = hex(text[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

 private:
  std::size_t checked(int id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size()) {
      throw std::out_of_range("kvcrush_llama::tokenizer: token id " + std::to_string(id) + " outside [0, " +
                              std::to_string(pieces_.size()) + ")");
    }
    return static_cast<std::size_t>(id);
  }

  // Code points of " " + text as initial tokens, with byte fallback.
  std::vector<int> initial_tokens(std::string_view text) const {
    std::vector<int> tokens;
    const auto add_unit = [&](std::string_view unit) {
      if (const int id = find(unit); id >= 0) {
        tokens.push_back(id);
        return;
      }
      for (const char c : unit) {
        const int id = static_cast<unsigned char>(c) + byte_fallback_offset;
        if (id >= vocab_size()) {
          throw std::runtime_error("kvcrush_llama::tokenizer: byte 0x" + hex_byte(c) +
                                   " needs byte fallback, but the vocabulary has only " +
                                   std::to_string(vocab_size()) + " tokens");
        }
        tokens.push_back(id);
      }
    };
    if (text.empty()) return tokens;
    add_unit(" ");
    const auto is_continuation = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; };
    for (std::size_t i = 0; i < text.size();) {
      std::size_t n = 1;
      while (i + n < text.size() && n < 4 && is_continuation(text[i + n])) ++n;
      add_unit(text.substr(i, n));
      i += n;
    }
    return tokens;
  }

  std::vector<int> encode_text(std::string_view text) const {
    std::vector<int> ids = initial_tokens(text);
    const int n = static_cast<int>(ids.size());
    if (n < 2) return ids;
    // Symbols form a linked list in text order; a merge keeps the left
    // symbol's slot, so slot order is text order and "leftmost" is the
    // smallest slot.
    std::vector<int> prev(static_cast<std::size_t>(n)), next(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) {
      prev[static_cast<std::size_t>(i)] = i - 1;
      next[static_cast<std::size_t>(i)] = i + 1 < n ? i + 1 : -1;
    }
    struct candidate {
      float score;
      int left, right;           // slots
      int left_id, right_id;     // what the slots held when proposed
      int merged;
    };
    const auto lower_priority = [](const candidate& a, const candidate& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<candidate, std::vector<candidate>, decltype(lower_priority)> heap(lower_priority);
    std::string joined;
    const auto propose = [&](int left) {
      if (left < 0) return;
      const int right = next[static_cast<std::size_t>(left)];
      if (right < 0) return;
      const int a = ids[static_cast<std::size_t>(left)];
      const int b = ids[static_cast<std::size_t>(right)];
      joined.assign(pieces_[static_cast<std::size_t>(a)]);
      joined.append(pieces_[static_cast<std::size_t>(b)]);
      const int merged = find(joined);
      if (merged < 0) return;
      const float s = scores_[static_cast<std::size_t>(merged)];
      // llama2.c only merges pairs scoring above its initial best of -1e10
      // (so never NaN scores).
      if (!(s > -1e10f)) return;
      heap.push({s, left, right, a, b, merged});
    };
    for (int i = 0; i + 1 < n; ++i) propose(i);
    constexpr int dead = -2;
    while (!heap.empty()) {
      const candidate c = heap.top();
      heap.pop();
      // Stale when either slot was merged away or changed since: a slot's id
      // only changes by growing, so an equal id means the same symbol.
      const auto l = static_cast<std::size_t>(c.left);
      const auto r = static_cast<std::size_t>(c.right);
      if (next[l] != c.right || ids[l] != c.left_id || ids[r] != c.right_id || prev[r] == dead) continue;
      ids[l] = c.merged;
      next[l] = next[r];
      if (next[r] >= 0) prev[static_cast<std::size_t>(next[r])] = c.left;
      prev[r] = dead;
      next[r] = -1;
      propose(prev[l]);
      propose(c.left);
    }
    std::vector<int> out;
    out.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i >= 0; i = next[static_cast<std::size_t>(i)]) out.push_back(ids[static_cast<std::size_t>(i)]);
    return out;
  }

  static std::string hex_byte(char c) {
    static constexpr char digits[] = "0123456789ABCDEF";
    const auto b = static_cast<unsigned char>(c);
    return {digits[b >> 4], digits[b & 15]};
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  index_t max_token_length_ = 0;
  std::vector<int> sorted_ids_;         // ids ordered by piece, for find()
  std::vector<int> byte_of_;            // byte value of "<0xHH>" tokens, else -1
  std::array<char, 256> byte_chars_{};  // storage the decoded bytes point into
};

}  // namespace kvcrush_llama

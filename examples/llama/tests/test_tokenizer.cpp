// The tokenizer: known encodings of the shared vocabulary, round trips, byte
// fallback, decoding rules, the heap merge against llama2.c's quadratic
// loop, and errors on malformed files.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "generate.hpp"
#include "llama_test_support.hpp"
#include "tokenizer.hpp"

namespace {

using kvcrush_llama::tokenizer;
using llama_test::temp_file;

// llama2.c's merge loop as written there: rescan all pairs, merge the best
// (strictly greater score wins, so the leftmost among equals), repeat.
std::vector<int> reference_encode(const tokenizer& t, const std::string& text) {
  std::vector<int> ids;
  const auto add_unit = [&](const std::string& unit) {
    const int id = t.find(unit);
    if (id >= 0) {
      ids.push_back(id);
    } else {
      for (unsigned char c : unit) ids.push_back(c + 3);
    }
  };
  if (!text.empty()) add_unit(" ");
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 1;
    while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    add_unit(text.substr(i, n));
    i += n;
  }
  while (true) {
    float best_score = -1e10f;
    int best_id = -1;
    std::size_t best_index = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      const int id = t.find(std::string(t.piece(ids[i])) + std::string(t.piece(ids[i + 1])));
      if (id >= 0 && t.score(id) > best_score) {
        best_score = t.score(id);
        best_id = id;
        best_index = i;
      }
    }
    if (best_id < 0) break;
    ids[best_index] = best_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
  }
  return ids;
}

// Concatenated decoding of tokens[1..] (each piece against its predecessor).
std::string decode_all(const tokenizer& t, const std::vector<int>& tokens) {
  std::string out;
  for (std::size_t i = 1; i < tokens.size(); ++i) out += t.decode(tokens[i - 1], tokens[i]);
  return out;
}

tokenizer load_shared() { return tokenizer::load(llama_test::shared_tokenizer().string(), 512); }

// A vocabulary with byte tokens at 3..258 and a few merges; scores make
// "ab" and "bc" tie so the leftmost pair must win.
tokenizer synthetic_tokenizer() {
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  for (int b = 0; b < 256; ++b) {
    static constexpr char hex[] = "0123456789ABCDEF";
    pieces.push_back(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">");
  }
  std::vector<float> scores(pieces.size(), 0.0f);
  const std::vector<std::pair<std::string, float>> extra = {
      {" ", -1.0f}, {"a", -2.0f}, {"b", -2.0f},  {"c", -2.0f},   {"ab", 5.0f},
      {"bc", 5.0f}, {" a", 1.0f}, {"bca", 9.0f}, {" ab", 7.0f},  {"é", -3.0f}};
  for (const auto& [piece, score] : extra) {
    pieces.push_back(piece);
    scores.push_back(score);
  }
  return tokenizer(std::move(pieces), std::move(scores), 6);
}

TEST(LlamaTokenizer, KnownEncodingsOfTheSharedVocabulary) {
  KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_tokenizer());
  const tokenizer t = load_shared();
  ASSERT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.max_token_length(), 7);
  // Expected ids from an independent implementation of llama2.c's encode().
  EXPECT_EQ(t.encode("Once upon a time"), (std::vector<int>{1, 403, 407, 261, 378}));
  EXPECT_EQ(t.piece(403), " Once");
  EXPECT_EQ(t.encode("x"), (std::vector<int>{1, 410, 444}));
  EXPECT_EQ(t.encode(""), (std::vector<int>{1}));
  EXPECT_EQ(t.encode("", false, true), (std::vector<int>{2}));
  EXPECT_EQ(t.encode("Once upon a time", false, true), (std::vector<int>{403, 407, 261, 378, 2}));
}

TEST(LlamaTokenizer, RoundTripsThroughDecode) {
  KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_tokenizer());
  const tokenizer t = load_shared();
  for (const std::string text : {"Once upon a time", "Lily's mom said, \"Let's go to the park.\"\nThe end.",
                                 "  two leading spaces", "tabs\tand\nnewlines\n", "naïve ☃ café 日本"}) {
    EXPECT_EQ(decode_all(t, t.encode(text)), text) << text;
  }
}

TEST(LlamaTokenizer, ByteFallbackForCharactersOutsideTheVocabulary) {
  KVCRUSH_REQUIRE_SHARED_FILE(llama_test::shared_tokenizer());
  const tokenizer t = load_shared();
  // U+2603 (snowman) is E2 98 83 in UTF-8 and not in the vocabulary: three
  // byte tokens, id = byte + 3. "é" is in the vocabulary as one code point.
  const std::vector<int> ids = t.encode("naïve ☃ café");
  EXPECT_EQ(ids, (std::vector<int>{1, 297, 412, 198, 178, 360, 410, 229, 155, 134, 280, 412, 431, 485}));
  EXPECT_EQ(t.piece(229), "<0xE2>");
  EXPECT_EQ(t.decode(410, 229), "\xE2");
  EXPECT_EQ(t.decode(229, 155), "\x98");
  EXPECT_EQ(t.piece(485), "é");
}

TEST(LlamaTokenizer, HeapMergesMatchTheQuadraticLoop) {
  const tokenizer synthetic = synthetic_tokenizer();
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {"a", "b", "c", " ", "é", "☃", "\x80", "x"};
  for (int round = 0; round < 300; ++round) {
    std::string text;
    const int length = static_cast<int>(rng() % 24);
    for (int i = 0; i < length; ++i) text += alphabet[rng() % alphabet.size()];
    EXPECT_EQ(synthetic.encode(text, false), reference_encode(synthetic, text)) << '"' << text << '"';
  }
  if (!std::filesystem::exists(llama_test::shared_tokenizer())) return;
  const tokenizer shared = load_shared();
  const std::string sample =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
      "One day, she saw a big, red ball. \"Can I play?\" she asked her mom. Ünïcödé ☃ 日本語!";
  for (std::size_t begin = 0; begin < sample.size(); begin += 17) {
    const std::string text = sample.substr(begin, 40 + begin % 50);
    EXPECT_EQ(shared.encode(text, false), reference_encode(shared, text)) << '"' << text << '"';
  }
}

TEST(LlamaTokenizer, EqualScoresMergeTheLeftmostPair) {
  const tokenizer t = synthetic_tokenizer();
  // Candidates " a" (1), "ab" (5), "bc" (5): the tie goes to the leftmost,
  // "ab"; then " ab" (7) merges and nothing else is in the vocabulary.
  const std::vector<int> ids = t.encode("abc", false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(t.piece(ids[0]), " ab");
  EXPECT_EQ(t.piece(ids[1]), "c");
}

TEST(LlamaTokenizer, DecodeRules) {
  const tokenizer t = synthetic_tokenizer();
  const int space_a = t.find(" a");
  ASSERT_GE(space_a, 0);
  EXPECT_EQ(t.decode(tokenizer::bos_id, space_a), "a");  // dummy prefix dropped after BOS
  EXPECT_EQ(t.decode(space_a, space_a), " a");
  EXPECT_EQ(t.decode(space_a, 3 + '\n'), "\n");  // <0x0A>
  EXPECT_EQ(t.decode(space_a, 3 + 0xFF), "\xFF");
  EXPECT_EQ(t.decode(space_a, 3), std::string(1, '\0'));
  EXPECT_THROW((void)t.decode(0, 10000), std::out_of_range);
  EXPECT_EQ(tokenizer::parse_byte_token("<0x4a>"), 0x4A);
  EXPECT_EQ(tokenizer::parse_byte_token("<0x4G>"), -1);
  EXPECT_EQ(tokenizer::parse_byte_token("<0x4A"), -1);

  using kvcrush_llama::printable_piece;
  EXPECT_EQ(printable_piece("hello"), "hello");
  EXPECT_EQ(printable_piece("\n"), "\n");
  EXPECT_EQ(printable_piece(std::string(1, '\0')), "");
  EXPECT_EQ(printable_piece("\x01"), "");
  EXPECT_EQ(printable_piece("\xE2"), "");  // lone UTF-8 fragment
  EXPECT_EQ(printable_piece(std::string("ab\0cd", 5)), "ab");
}

TEST(LlamaTokenizer, ByteFallbackNeedsTheByteTokens) {
  const tokenizer tiny({"<unk>", "<s>", "</s>", " "}, {0.0f, 0.0f, 0.0f, 0.0f}, 3);
  EXPECT_EQ(tiny.encode(""), (std::vector<int>{1}));
  try {
    (void)tiny.encode("a");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("byte 0x61"), std::string::npos) << e.what();
  }
}

TEST(LlamaTokenizer, LoadsWhatItWrites) {
  const std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", " ", "a", " a", ""};
  const std::vector<float> scores = {0.0f, 0.0f, 0.0f, -1.0f, -2.0f, 3.5f, 0.25f};
  temp_file file("kvcrush-llama-tokenizer");
  file.write(llama_test::tokenizer_bytes(pieces, scores, 5));
  const tokenizer t = tokenizer::load(file.path(), 7);
  ASSERT_EQ(t.vocab_size(), 7);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(t.piece(i), pieces[static_cast<std::size_t>(i)]);
    EXPECT_EQ(t.score(i), scores[static_cast<std::size_t>(i)]);
  }
  EXPECT_EQ(t.encode("a"), (std::vector<int>{1, 5}));
}

// Loading bytes must fail with a runtime_error naming the file and
// containing `expected`.
void expect_tokenizer_error(const std::string& bytes, long vocab_size, const std::string& expected) {
  temp_file file("kvcrush-llama-bad-tokenizer");
  file.write(bytes);
  try {
    (void)tokenizer::load(file.path(), vocab_size);
    ADD_FAILURE() << "loaded a malformed tokenizer, expected an error containing '" << expected << "'";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file.path()), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
}

TEST(LlamaTokenizer, MalformedFilesGiveClearErrors) {
  const std::vector<std::string> pieces = {"<u>", "<s>", "<e>", "abcd"};
  const std::vector<float> scores(4, 0.0f);
  const std::string good = llama_test::tokenizer_bytes(pieces, scores, 4);
  expect_tokenizer_error("", 4, "too short");
  expect_tokenizer_error(good.substr(0, 2), 4, "too short");
  expect_tokenizer_error(llama_test::tokenizer_bytes(pieces, scores, 0), 4, "max_token_length must be positive");
  expect_tokenizer_error(llama_test::tokenizer_bytes(pieces, scores, 3), 4,
                         "token 3 has length 4, outside [0, max_token_length = 3]");
  expect_tokenizer_error(good.substr(0, good.size() - 1), 4, "truncated in token 3");
  expect_tokenizer_error(good.substr(0, good.size() - 5), 4, "truncated in token 3");  // inside the length
  expect_tokenizer_error(good, 5, "truncated in token 4");
  expect_tokenizer_error(good, 3, "too long");
  expect_tokenizer_error(good + "x", 4, "too long");
  std::string negative = llama_test::tokenizer_bytes({"<unk>"}, {0.0f}, 3);
  negative.replace(8, 4, std::string("\xFF\xFF\xFF\xFF", 4));  // length -1
  expect_tokenizer_error(negative, 1, "has length -1");
  EXPECT_THROW((void)tokenizer::load("/nonexistent/kvcrush/tok.bin", 4), std::runtime_error);
}

}  // namespace

// The golden test: greedy decoding of the shared stories260K model for 200
// steps from BOS, with the full cache, must print llama2.c's reference output
// (stories260K_greedy200.txt) byte for byte.
//
// Exit codes: 0 pass, 1 mismatch or error, 77 (ctest: skipped) when the
// shared files are missing, unless CI=true, where their absence fails.
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "engine.hpp"
#include "generate.hpp"
#include "llama_test_support.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace {

constexpr int steps = 200;

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) out += c == '\n' ? std::string("\\n") : std::string(1, c);
  return out;
}

}  // namespace

int main() {
  const std::filesystem::path files[] = {llama_test::shared_model(), llama_test::shared_tokenizer(),
                                         llama_test::shared_reference()};
  if (const int missing = llama_test::missing_shared_files(files)) return missing;
  try {
    const kvcrush_llama::model model = kvcrush_llama::model::load(files[0].string());
    const auto vocabulary = kvcrush_llama::tokenizer::load(files[1].string(), model.config().vocab_size);
    kvcrush_llama::engine engine(model);
    std::string text;
    kvcrush_llama::generate_greedy(engine, vocabulary, "", steps, [&](std::string_view piece) { text += piece; });
    const std::string expected = read_file(files[2]);
    if (text == expected) {
      std::printf("golden: %d greedy steps reproduce %s (%zu bytes)\n", steps, files[2].string().c_str(),
                  expected.size());
      return 0;
    }
    std::size_t at = 0;
    while (at < text.size() && at < expected.size() && text[at] == expected[at]) ++at;
    const std::size_t from = at < 40 ? 0 : at - 40;
    std::printf("FAILED: output differs from %s at byte %zu (output %zu bytes, reference %zu)\n",
                files[2].string().c_str(), at, text.size(), expected.size());
    std::printf("  reference: ...%s\n", printable(expected.substr(from, 80)).c_str());
    std::printf("  output:    ...%s\n", printable(text.substr(from, 80)).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
}

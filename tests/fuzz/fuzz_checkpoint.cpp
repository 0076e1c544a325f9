// The llama2.c checkpoint loader (examples/llama/model.hpp) on fuzzed
// files, and the engine on what it accepts.
//
// Input: a mode byte, then
//   even mode: the whole checkpoint file, as is (header and size checks);
//   odd mode:  the 28-byte header, then float32 weights; the file is padded
//              (or cut) to exactly the size the header implies when that is
//              small, so that fuzzed headers get past the size check and
//              the load must succeed. The engine then runs a few tokens.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.hpp"
#include "fuzz_support.hpp"
#include "model.hpp"

namespace {

// Larger models only slow the fuzzer down without reaching new code.
constexpr std::uint64_t max_file_bytes = 256 * 1024;

// The file for odd mode, or an empty vector when the header is rejected
// or implies a file too large to fuzz with.
std::vector<unsigned char> padded_checkpoint(kvcrush_fuzz::reader& in) {
  namespace llama = kvcrush_llama;
  const std::string header = in.bytes(llama::checkpoint_header_bytes);
  std::int32_t fields[7] = {};
  std::memcpy(fields, header.data(), header.size());
  llama::checkpoint_layout layout;
  try {
    layout = llama::layout_of(llama::config_from_header(fields, "fuzz"), "fuzz");
  } catch (const std::runtime_error&) {
    return {};
  }
  if (layout.file_bytes() > max_file_bytes) return {};
  std::vector<unsigned char> file(static_cast<std::size_t>(layout.file_bytes()));
  std::memcpy(file.data(), fields, sizeof fields);
  const std::string_view weights = in.rest();
  for (std::size_t i = llama::checkpoint_header_bytes, j = 0; i + 4 <= file.size(); i += 4, j += 4) {
    // The fuzzer's floats first, then small finite ones.
    float w = static_cast<float>(static_cast<int>(i % 13) - 6) * 0.01f;
    if (j + 4 <= weights.size()) std::memcpy(&w, weights.data() + j, 4);
    std::memcpy(file.data() + i, &w, 4);
  }
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace llama = kvcrush_llama;
  static kvcrush_fuzz::memory_file file;
  kvcrush_fuzz::reader in(data, size);
  const bool padded = in.flag();
  std::string path;
  if (padded) {
    const std::vector<unsigned char> bytes = padded_checkpoint(in);
    if (bytes.empty()) return 0;
    path = file.write(bytes.data(), bytes.size());
  } else {
    const std::string_view rest = in.rest();
    path = file.write(rest.data(), rest.size());
  }
  try {
    const llama::model m = llama::model::load(path);
    const llama::model_config& c = m.config();
    KVCRUSH_FUZZ_CHECK(c.dim > 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.vocab_size > 0);
    // A small cache: the model's seq_len may be anything the header says.
    llama::engine e(m, 3);
    for (int t = 0; t < 3; ++t) {
      const Eigen::VectorXf& logits = e.forward(t % static_cast<int>(c.vocab_size));
      KVCRUSH_FUZZ_CHECK(logits.size() == c.vocab_size);
    }
  } catch (const std::runtime_error&) {
    // A padded file has exactly the size its valid header implies: the
    // loader has no reason left to refuse it.
    KVCRUSH_FUZZ_CHECK(!padded);
  }
  return 0;
}

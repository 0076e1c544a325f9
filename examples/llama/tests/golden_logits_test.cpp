// The golden logits: the example engine, fed austen-kjv-14m_ref_ids.npy one
// token at a time with the full cache, must reproduce the trainer's float32
// logits (austen-kjv-14m_ref_logits.npy, 64 x 512) within 1e-3 at every
// position; so must the batched engine, with four sequences of the same ids
// started one step apart (ragged positions) on two threads. Built once per ISA level the tests cover, so the engine's
// matrix products and the library's kernels are checked at each.
//
// Exit codes: 0 pass, 1 mismatch or error, 77 (ctest: skipped) when the
// shared files are missing, unless CI=true, where their absence fails.
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <vector>

#include "batch_engine.hpp"
#include "engine.hpp"
#include "kvcrush/cache/executor.hpp"
#include "kvcrush/io/npy.hpp"
#include "llama_test_support.hpp"
#include "model.hpp"

namespace {

constexpr double tolerance = 1e-3;

}  // namespace

int main() {
  const auto models = kvcrush_test::shared_dir() / "models";
  const std::filesystem::path files[] = {models / "austen-kjv-14m.bin", models / "austen-kjv-14m_ref_ids.npy",
                                         models / "austen-kjv-14m_ref_logits.npy"};
  if (const int missing = llama_test::missing_shared_files(files)) return missing;
  try {
    const kvcrush_llama::model model = kvcrush_llama::model::load(files[0].string());
    const std::vector<std::int32_t> ids = kvcrush::io::read_npy(files[1].string()).values<std::int32_t>();
    const kvcrush::io::npy_array reference = kvcrush::io::read_npy(files[2].string());
    const std::vector<float> expected = reference.values<float>();
    const auto vocab = static_cast<std::size_t>(model.config().vocab_size);
    if (reference.shape.size() != 2 || static_cast<std::size_t>(reference.shape[0]) != ids.size() ||
        static_cast<std::size_t>(reference.shape[1]) != vocab) {
      std::printf("FAILED: reference logits are not (%zu, %zu)\n", ids.size(), vocab);
      return 1;
    }
    kvcrush_llama::engine engine(model);
    double worst = 0.0;
    std::size_t worst_position = 0, worst_token = 0;
    for (std::size_t p = 0; p < ids.size(); ++p) {
      const Eigen::VectorXf& logits = engine.forward(ids[p]);
      for (std::size_t v = 0; v < vocab; ++v) {
        const double error = std::fabs(static_cast<double>(logits[static_cast<Eigen::Index>(v)]) -
                                       static_cast<double>(expected[p * vocab + v]));
        // A NaN logit must fail, so the comparison is written to be false for it.
        if (!(error <= worst)) {
          worst = std::isnan(error) ? INFINITY : error;
          worst_position = p;
          worst_token = v;
        }
      }
    }
    std::printf("golden logits (%s): %zu positions x %zu tokens, largest |difference| %.3g at position %zu, "
                "token %zu\n",
                kvcrush::isa::name().data(), ids.size(), vocab, worst, worst_position, worst_token);
    if (!(worst <= tolerance)) {
      std::printf("FAILED: largest |difference| %.3g exceeds %.0e\n", worst, tolerance);
      return 1;
    }

    kvcrush::thread_executor ex(2);
    kvcrush_llama::batch_engine batch(model, ex);
    constexpr std::size_t lanes = 4;
    std::vector<std::unique_ptr<kvcrush_llama::sequence>> sequences;
    const auto& c = model.config();
    for (std::size_t i = 0; i < lanes; ++i) {
      sequences.push_back(std::make_unique<kvcrush_llama::sequence>(
          c, std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), c.seq_len)));
    }
    double batch_worst = 0.0;
    for (std::size_t step = 0; step < ids.size() + lanes - 1; ++step) {
      std::vector<kvcrush_llama::sequence*> active;
      std::vector<int> tokens;
      std::vector<std::size_t> positions;
      for (std::size_t i = 0; i < lanes; ++i) {
        if (step < i || step - i >= ids.size()) continue;
        active.push_back(sequences[i].get());
        tokens.push_back(ids[step - i]);
        positions.push_back(step - i);
      }
      batch.forward(active, tokens);
      for (std::size_t a = 0; a < active.size(); ++a) {
        const auto logits = batch.logits(static_cast<kvcrush::index_t>(a));
        for (std::size_t v = 0; v < vocab; ++v) {
          const double error = std::fabs(static_cast<double>(logits[static_cast<Eigen::Index>(v)]) -
                                         static_cast<double>(expected[positions[a] * vocab + v]));
          if (!(error <= batch_worst)) batch_worst = std::isnan(error) ? INFINITY : error;
        }
      }
    }
    std::printf("batched (%zu ragged sequences, 2 threads): largest |difference| %.3g\n", lanes, batch_worst);
    if (!(batch_worst <= tolerance)) {
      std::printf("FAILED: batched largest |difference| %.3g exceeds %.0e\n", batch_worst, tolerance);
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
}

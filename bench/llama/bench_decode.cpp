// Decoding speed of the example Llama engine on austen-kjv-14m (32 query /
// 8 KV heads, 13.6M parameters): 16 sequences advanced one token at a time
// by the single-sequence engine (the one-sequence loop), against the batched
// engine advancing all of them per step, on 1 and 2 threads, with the bytes
// of one read pass over the weights as the baseline of the same run.
//
// Every sequence starts from its own prompt length (128 + 24 i mod 512 tokens, so
// the batch is ragged), decodes `steps` tokens per iteration, and is cut
// back to its prompt between iterations (untimed), so every iteration does
// the same work. Counters: tokens/s (sequence-tokens decoded per second)
// and weight_bytes/s (the weights a one-sequence loop must stream per token).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "batch_engine.hpp"
#include "engine.hpp"
#include "kvcrush/cache/executor.hpp"
#include "model.hpp"

namespace {

using kvcrush::index_t;

constexpr index_t steps = 8;

const kvcrush_llama::model* shared_model() {
  static const std::unique_ptr<kvcrush_llama::model> loaded = [] {
    const std::filesystem::path path = std::filesystem::path(KVCRUSH_SHARED_DIR) / "models" / "austen-kjv-14m.bin";
    if (!std::filesystem::exists(path)) return std::unique_ptr<kvcrush_llama::model>();
    return std::make_unique<kvcrush_llama::model>(kvcrush_llama::model::load(path.string()));
  }();
  return loaded.get();
}

int token_at(index_t lane, index_t p, index_t vocab) { return static_cast<int>((lane * 31 + p * 17 + 5) % vocab); }
index_t prompt_of(index_t lane) { return 128 + (24 * lane) % 512; }

std::size_t weight_bytes(const kvcrush_llama::model_config& c) {
  const std::size_t per_layer = static_cast<std::size_t>(2 * c.dim * c.dim + 2 * c.kv_dim() * c.dim +
                                                         3 * c.hidden_dim * c.dim + 2 * c.dim);
  return sizeof(float) * (per_layer * static_cast<std::size_t>(c.n_layers) +
                          static_cast<std::size_t>(c.vocab_size * c.dim + c.dim));
}

// Back to the prompt: the rows decoded in the last iteration go.
void cut_to(kvcrush_llama::kv_store& store, index_t rows) {
  std::vector<index_t> keep(static_cast<std::size_t>(rows));
  std::iota(keep.begin(), keep.end(), index_t{0});
  for (index_t l = 0; l < store.layers(); ++l) store.keep_rows(l, keep);
}

void set_counters(benchmark::State& state, index_t lanes, const kvcrush_llama::model_config& c) {
  const double tokens = static_cast<double>(state.iterations()) * static_cast<double>(lanes * steps);
  state.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  state.counters["weight_bytes/s"] =
      benchmark::Counter(tokens * static_cast<double>(weight_bytes(c)), benchmark::Counter::kIsRate);
}

// The baseline: one read pass over every weight matrix, 64 lanes of sums.
void BM_weights_read_pass(benchmark::State& state) {
  const kvcrush_llama::model* m = shared_model();
  if (m == nullptr) return state.SkipWithError("SKIPPED: austen-kjv-14m.bin not found");
  const std::size_t count = weight_bytes(m->config()) / sizeof(float);
  const float* data = m->token_embedding();  // the weights are one block from the embedding on
  for (auto _ : state) {
    float acc[64] = {};
    for (std::size_t i = 0; i + 64 <= count; i += 64)
      for (std::size_t j = 0; j < 64; ++j) acc[j] += data[i + j];
    benchmark::DoNotOptimize(acc);
  }
  state.counters["weight_bytes/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * static_cast<double>(count * sizeof(float)), benchmark::Counter::kIsRate);
}

// The one-sequence loop: each sequence's tokens through its own engine.
void BM_decode_sequential(benchmark::State& state) {
  const kvcrush_llama::model* m = shared_model();
  if (m == nullptr) return state.SkipWithError("SKIPPED: austen-kjv-14m.bin not found");
  const auto& c = m->config();
  const auto lanes = static_cast<index_t>(state.range(0));
  std::vector<std::unique_ptr<kvcrush_llama::engine>> engines;
  for (index_t i = 0; i < lanes; ++i) {
    engines.push_back(std::make_unique<kvcrush_llama::engine>(*m));
    for (index_t p = 0; p < prompt_of(i); ++p) engines.back()->forward(token_at(i, p, c.vocab_size));
  }
  for (auto _ : state) {
    for (index_t i = 0; i < lanes; ++i) {
      auto& e = *engines[static_cast<std::size_t>(i)];
      for (index_t s = 0; s < steps; ++s) benchmark::DoNotOptimize(e.forward(token_at(i, prompt_of(i) + s, c.vocab_size)).data());
    }
    state.PauseTiming();
    for (index_t i = 0; i < lanes; ++i) cut_to(engines[static_cast<std::size_t>(i)]->cache(), prompt_of(i));
    state.ResumeTiming();
  }
  set_counters(state, lanes, c);
}

// The batched engine: all sequences advance together, on `threads` threads.
void BM_decode_batched(benchmark::State& state) {
  const kvcrush_llama::model* m = shared_model();
  if (m == nullptr) return state.SkipWithError("SKIPPED: austen-kjv-14m.bin not found");
  const auto& c = m->config();
  const auto threads = static_cast<index_t>(state.range(0));
  const auto lanes = static_cast<index_t>(state.range(1));
  kvcrush::thread_executor ex(threads);
  kvcrush_llama::batch_engine batch(*m, ex);
  std::vector<std::unique_ptr<kvcrush_llama::sequence>> sequences;
  for (index_t i = 0; i < lanes; ++i) {
    sequences.push_back(std::make_unique<kvcrush_llama::sequence>(
        c, std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), c.seq_len)));
  }
  // Prompts: lanes join as the step reaches their length (ragged).
  index_t longest = 0;
  for (index_t i = 0; i < lanes; ++i) longest = std::max(longest, prompt_of(i));
  for (index_t p = 0; p < longest; ++p) {
    std::vector<kvcrush_llama::sequence*> active;
    std::vector<int> tokens;
    for (index_t i = 0; i < lanes; ++i) {
      const index_t own = p - (longest - prompt_of(i));
      if (own < 0) continue;
      active.push_back(sequences[static_cast<std::size_t>(i)].get());
      tokens.push_back(token_at(i, own, c.vocab_size));
    }
    batch.forward(active, tokens);
  }
  std::vector<kvcrush_llama::sequence*> all;
  for (auto& s : sequences) all.push_back(s.get());
  std::vector<int> tokens(static_cast<std::size_t>(lanes));
  for (auto _ : state) {
    for (index_t s = 0; s < steps; ++s) {
      for (index_t i = 0; i < lanes; ++i) tokens[static_cast<std::size_t>(i)] = token_at(i, prompt_of(i) + s, c.vocab_size);
      batch.forward(all, tokens);
      benchmark::DoNotOptimize(batch.logits(0).data());
    }
    state.PauseTiming();
    for (index_t i = 0; i < lanes; ++i) cut_to(sequences[static_cast<std::size_t>(i)]->cache(), prompt_of(i));
    state.ResumeTiming();
  }
  set_counters(state, lanes, c);
}

}  // namespace

BENCHMARK(BM_weights_read_pass)->Name("decode/weights_read_pass")->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode_sequential)->Name("decode/sequential")->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_decode_batched)
    ->Name("decode/batched")
    ->ArgNames({"threads", "batch"})
    ->ArgsProduct({{1, 2}, {1, 4, 16, 64}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();

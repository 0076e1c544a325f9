// End-to-end selection (scores -> keep set) for SnapKV, H2O and their KVCrush
// compositions, next to two baselines in the same binary: a read pass over
// the score matrix, and one decode step of attention (one query per head
// over the same N keys and values, head_dim 128, float32, Eigen).
// Names: select/<policy>/H/N, read_pass/H/N, decode_attention/H/N.
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdio>

#include "bench_common.hpp"
#include "kvcrush/policy/policies.hpp"

namespace {

using kvcrush::index_t;

const std::vector<index_t> head_counts = {8, 32};
const std::vector<index_t> token_counts = {4096, 32768, 131072};

// Budget: a quarter of the cache, 4 sink tokens and a 32-token window.
kvcrush::layer_budget budget_for(index_t tokens) { return {tokens / 4, 4, 32}; }

kvcrush::crush_options crush_half() {
  kvcrush::crush_options c;
  c.fraction = 0.5;
  return c;
}

void read_pass(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 1);
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) benchmark::DoNotOptimize(kvcrush_bench::read_pass(scores.data(), scores.size()));
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// SnapKV from its scores S (H, N): the engine computed the window scores.
template <bool Crush>
void select_snapkv(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto budget = budget_for(tokens);
  std::vector<index_t> keep(static_cast<std::size_t>(budget.budget));
  index_t count = 0;
  kvcrush::workspace ws;
  ws.reserve(heads, tokens);
  const kvcrush::keep_sets out{kvcrush::make_matrix_view(keep.data(), 1, budget.budget), kvcrush::make_vector_view(&count, 1)};
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    if constexpr (Crush) {
      kvcrush::select(kvcrush::policy::with_kvcrush<kvcrush::policy::precomputed>{{}, crush_half()}, in, budget, {}, out, ws);
    } else {
      kvcrush::select(kvcrush::policy::precomputed{}, in, budget, {}, out, ws);
    }
    benchmark::DoNotOptimize(keep.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// H2O from its accumulator (rows with spare capacity, as during decoding).
template <bool Crush>
void select_h2o(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  kvcrush::h2o_accumulator acc(heads, heads, tokens + 64);
  acc.append(tokens);
  const auto attention = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 3);
  acc.accumulate(kvcrush::make_matrix_view(attention.data(), heads, tokens));
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.h2o = &acc;
  const auto budget = budget_for(tokens);
  std::vector<index_t> keep(static_cast<std::size_t>(budget.budget));
  index_t count = 0;
  kvcrush::workspace ws;
  ws.reserve(heads, tokens);
  const kvcrush::keep_sets out{kvcrush::make_matrix_view(keep.data(), 1, budget.budget), kvcrush::make_vector_view(&count, 1)};
  const std::size_t bytes = static_cast<std::size_t>(heads * tokens) * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(attention.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    if constexpr (Crush) {
      kvcrush::select(kvcrush::policy::with_kvcrush<kvcrush::policy::h2o>{{}, crush_half()}, in, budget, {}, out, ws);
    } else {
      kvcrush::select(kvcrush::policy::h2o{}, in, budget, {}, out, ws);
    }
    benchmark::DoNotOptimize(keep.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// One decode step: for each head, p = softmax(K q / sqrt(d)), out = V^T p.
void decode_attention(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1), d = 128;
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::vector<matrix> keys, values;
  for (index_t h = 0; h < heads; ++h) {
    keys.push_back(matrix::Random(tokens, d));
    values.push_back(matrix::Random(tokens, d));
  }
  Eigen::VectorXf query = Eigen::VectorXf::Random(d), logits(tokens), out(d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const std::size_t bytes = static_cast<std::size_t>(2 * heads * tokens * d) * sizeof(float);
  double baseline = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    double total = 0;
    for (index_t h = 0; h < heads; ++h) {
      total += kvcrush_bench::read_pass_seconds(keys[h].data(), keys[h].size() * sizeof(float)) +
               kvcrush_bench::read_pass_seconds(values[h].data(), values[h].size() * sizeof(float));
    }
    baseline = std::min(baseline, total);
  }
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    for (index_t h = 0; h < heads; ++h) {
      logits.noalias() = keys[h] * query;
      logits *= scale;
      const float peak = logits.maxCoeff();
      logits = (logits.array() - peak).exp();
      logits /= logits.sum();
      out.noalias() = values[h].transpose() * logits;
      benchmark::DoNotOptimize(out.data());
    }
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("kvcrush end-to-end selection benchmarks; ISA %s; budget N/4 (sink 4, recent 32), crush 0.5\n",
              std::string(kvcrush::isa::name()).c_str());
  if (!kvcrush::isa::cpu_supports<kvcrush::isa::active>()) {
    std::printf("this CPU lacks %s; rebuild the benchmarks for it\n", std::string(kvcrush::isa::name()).c_str());
    return 77;
  }
  for (index_t h : head_counts)
    for (index_t n : token_counts) {
      benchmark::RegisterBenchmark("read_pass", read_pass)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark("select/snapkv", select_snapkv<false>)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark("select/snapkv+kvcrush", select_snapkv<true>)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark("select/h2o", select_h2o<false>)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark("select/h2o+kvcrush", select_h2o<true>)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark("decode_attention", decode_attention)->Args({h, n})->Unit(benchmark::kMicrosecond);
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

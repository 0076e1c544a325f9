// End-to-end selection (scores -> keep set) for SnapKV, H2O and their KVCrush
// compositions in every selection mode, next to two baselines in the same
// binary: a read pass over the score matrix, and one decode step of
// attention (one query per head over the same N keys and values, head_dim
// 128, float32, Eigen).
//
// Names (H heads, N tokens):
//   select/<policy>/H/N            token mode, one keep set shared by the heads
//   select/<policy>/block16/H/N    block mode (SPEC 4.4), blocks of 16 tokens
//   select/<policy>/block32/H/N    blocks of 32 tokens
//   select/<policy>/per_head/H/N   one keep set per head
//   select_avx2/<policy>/...       the same through the AVX2 kernels, in a
//                                  binary built for AVX-512
//   select_config/<policy>/...     SnapKV rows through the run-time
//                                  policy_config, compile-time kernels
//   select_dispatch/<policy>/...   the same config through kvcrush::dispatch
//                                  (run-time ISA choice; the per-call cost of
//                                  dispatch is the difference to select_config)
//   evict_layers/T/L/H/N           the selections of L layers on T threads
//   select/<source>/H/N            the policies that score keys (SPEC 11), from
//                                  their inputs to the keep set, beside SnapKV
//                                  from its window attention (snapkv_window):
//                                  d = 128 float16 keys and values, Hq = 4 H
//                                  query heads, a window of W = 32 queries or
//                                  attention rows. keydiff, expected_attention
//                                  (kvpress defaults: covariance, value norm,
//                                  512 future positions), expected_attention_
//                                  nocov (neither covariance nor rotation), rkv
//                                  (importance from the window attention,
//                                  redundancy against the newest 256 tokens),
//                                  rkv_full (every pair: R-KV's own rule; only
//                                  at N = 4096)
//   read_pass/H/N, decode_attention/H/N
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kvcrush/cache/batch.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/select.hpp"
#if defined(KVCRUSH_BENCH_DISPATCH)
#include "kvcrush/dispatch/dispatch.hpp"
#endif

namespace {

using kvcrush::index_t;

const std::vector<index_t> head_counts = {1, 8, 32};
const std::vector<index_t> token_counts = {4096, 32768, 131072};

enum class mode { token, block16, block32, per_head };

const char* mode_suffix(mode m) {
  switch (m) {
    case mode::token: return "";
    case mode::block16: return "/block16";
    case mode::block32: return "/block32";
    case mode::per_head: return "/per_head";
  }
  return "";
}

kvcrush::selection_layout layout_for(mode m) {
  kvcrush::selection_layout layout;
  layout.per_head = m == mode::per_head;
  layout.block_size = m == mode::block16 ? 16 : m == mode::block32 ? 32 : 1;
  return layout;
}

// Budget: a quarter of the cache and a 32-token window; the sink is 4 tokens,
// or one block in block mode (sink, recent and budget must be whole blocks).
kvcrush::layer_budget budget_for(index_t tokens, mode m) {
  const index_t b = layout_for(m).block_size;
  return {tokens / 4, b > 4 ? b : 4, 32};
}

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

// Keep-set storage for one layer in the given mode.
struct keep_storage {
  std::vector<index_t> positions, counts;
  kvcrush::keep_sets view;
  keep_storage(index_t heads, index_t tokens, mode m) {
    const index_t rows = m == mode::per_head ? heads : 1;
    const index_t width = budget_for(tokens, m).budget + 1;
    positions.resize(static_cast<std::size_t>(rows * width));
    counts.resize(static_cast<std::size_t>(rows));
    view = {kvcrush::make_matrix_view(positions.data(), rows, width), kvcrush::make_vector_view(counts.data(), rows)};
  }
};

// SnapKV from its scores S (H, N): the engine computed the window scores.
template <class Isa, bool Crush>
void select_snapkv(benchmark::State& state, mode m) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto budget = budget_for(tokens, m);
  const auto layout = layout_for(m);
  keep_storage keep(heads, tokens, m);
  kvcrush::workspace ws;
  ws.reserve(heads, tokens, 0, layout.block_size);
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    if constexpr (Crush) {
      kvcrush::select<Isa>(kvcrush::policy::with_kvcrush<kvcrush::policy::precomputed>{{}, crush_half()}, in, budget,
                           layout, keep.view, ws);
    } else {
      kvcrush::select<Isa>(kvcrush::policy::precomputed{}, in, budget, layout, keep.view, ws);
    }
    benchmark::DoNotOptimize(keep.positions.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// SnapKV from its scores through the run-time policy_config, either with
// this binary's compile-time kernels or through run-time dispatch.
template <bool Dispatched, bool Crush>
void select_config(benchmark::State& state, mode m) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto budget = budget_for(tokens, m);
  auto cfg = kvcrush::policy_config::parse(Crush ? "precomputed+kvcrush" : "precomputed");
  cfg.crush = crush_half();
  cfg.layout = layout_for(m);
  keep_storage keep(heads, tokens, m);
  kvcrush::workspace ws;
  ws.reserve(heads, tokens, 0, cfg.layout.block_size);
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
#if defined(KVCRUSH_BENCH_DISPATCH)
    if constexpr (Dispatched) {
      kvcrush::dispatch::select(cfg, in, budget, keep.view, ws);
    } else {
      kvcrush::select(cfg, in, budget, keep.view, ws);
    }
#else
    static_assert(!Dispatched, "dispatch rows need kvcrush::dispatch");
    kvcrush::select(cfg, in, budget, keep.view, ws);
#endif
    benchmark::DoNotOptimize(keep.positions.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// H2O from its accumulator (rows with spare capacity, as during decoding).
template <class Isa, bool Crush>
void select_h2o(benchmark::State& state, mode m) {
  const index_t heads = state.range(0), tokens = state.range(1);
  kvcrush::h2o_accumulator acc(heads, heads, tokens + 64);
  acc.append(tokens);
  const auto attention = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 3);
  acc.accumulate(kvcrush::make_matrix_view(attention.data(), heads, tokens));
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.h2o = &acc;
  const auto budget = budget_for(tokens, m);
  const auto layout = layout_for(m);
  keep_storage keep(heads, tokens, m);
  kvcrush::workspace ws;
  ws.reserve(heads, tokens, 0, layout.block_size);
  const std::size_t bytes = static_cast<std::size_t>(heads * tokens) * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(attention.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    if constexpr (Crush) {
      kvcrush::select<Isa>(kvcrush::policy::with_kvcrush<kvcrush::policy::h2o>{{}, crush_half()}, in, budget, layout,
                           keep.view, ws);
    } else {
      kvcrush::select<Isa>(kvcrush::policy::h2o{}, in, budget, layout, keep.view, ws);
    }
    benchmark::DoNotOptimize(keep.positions.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// SnapKV+KVCrush selections of `layers` layers (each its own scores), spread
// over an executor of `threads` threads with one workspace per worker: what
// one compression event of a whole model costs.
void evict_layers(benchmark::State& state) {
  const index_t threads = state.range(0), layers = state.range(1), heads = state.range(2), tokens = state.range(3);
  std::vector<kvcrush_bench::aligned_floats> scores;
  for (index_t l = 0; l < layers; ++l) {
    scores.push_back(
        kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 100 + static_cast<std::uint32_t>(l)));
  }
  const auto budget = budget_for(tokens, mode::token);
  std::vector<keep_storage> keep;
  for (index_t l = 0; l < layers; ++l) keep.emplace_back(heads, tokens, mode::token);
  kvcrush::thread_executor ex(threads);
  kvcrush::worker_workspaces spaces(ex);
  spaces.reserve(heads, tokens);
  const kvcrush::policy::with_kvcrush<kvcrush::policy::precomputed> policy{{}, crush_half()};
  auto one_layer = [&](index_t, index_t layer, kvcrush::workspace& ws) {
    kvcrush::layer_inputs in;
    in.kv_heads = heads;
    in.tokens = tokens;
    in.scores = kvcrush::make_matrix_view(scores[static_cast<std::size_t>(layer)].data(), heads, tokens);
    kvcrush::select(policy, in, budget, {}, keep[static_cast<std::size_t>(layer)].view, ws);
  };
  const std::size_t bytes = static_cast<std::size_t>(layers * heads * tokens) * sizeof(float);
  double baseline = 0;
  for (const auto& s : scores) baseline += kvcrush_bench::read_pass_seconds(s.data(), s.size() * sizeof(float));
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::for_each_sequence_layer(ex, 1, layers, spaces, one_layer);
    benchmark::DoNotOptimize(keep.front().positions.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(layers * tokens), baseline);
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

// The policies of SPEC 11 (and SnapKV from its window attention), token
// mode, shared keep set: one eviction event from the engine's inputs.
enum class source { snapkv_window, keydiff, expected_attention, expected_attention_nocov, rkv, rkv_full };

void select_source(benchmark::State& state, source what) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const index_t query_heads = 4 * heads, window = 32, d = 128;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<kvcrush::float16> keys(static_cast<std::size_t>(heads * tokens * d)), values(keys.size());
  for (auto& k : keys) k = kvcrush::to_float16(normal(rng));
  for (auto& v : values) v = kvcrush::to_float16(normal(rng));
  std::vector<float> queries(static_cast<std::size_t>(query_heads * window * d));
  for (auto& q : queries) q = normal(rng);
  kvcrush_bench::aligned_floats attention;
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.keys.f16 = kvcrush::make_head_token_dim<const kvcrush::float16>(keys.data(), heads, tokens, d);
  in.values.f16 = kvcrush::make_head_token_dim<const kvcrush::float16>(values.data(), heads, tokens, d);
  in.window_queries = kvcrush::strided_view<const float, 3>(queries.data(), {query_heads, window, d});
  if (what == source::snapkv_window || what == source::rkv || what == source::rkv_full) {
    attention = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(query_heads * window * tokens), 4);
    in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {query_heads, window, tokens});
  }
  const auto budget = budget_for(tokens, mode::token);
  keep_storage keep(heads, tokens, mode::token);
  kvcrush::workspace ws;
  ws.reserve(heads, tokens, query_heads);
  kvcrush::policy::expected_attention ea;
  if (what == source::expected_attention_nocov) {
    ea.options.use_covariance = false;
    ea.options.future_positions = 0;
  }
  kvcrush::policy::rkv rkv;
  if (what == source::rkv_full) rkv.options.comparison_tokens = 0;
  auto once = [&] {
    switch (what) {
      case source::snapkv_window: kvcrush::select(kvcrush::policy::snapkv{}, in, budget, {}, keep.view, ws); break;
      case source::keydiff: kvcrush::select(kvcrush::policy::keydiff{}, in, budget, {}, keep.view, ws); break;
      case source::expected_attention:
      case source::expected_attention_nocov: kvcrush::select(ea, in, budget, {}, keep.view, ws); break;
      case source::rkv:
      case source::rkv_full: kvcrush::select(rkv, in, budget, {}, keep.view, ws); break;
    }
  };
  once();  // grows the workspace
  const std::size_t bytes = keys.size() * sizeof(kvcrush::float16);
  const double baseline = kvcrush_bench::read_pass_seconds(keys.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    once();
    benchmark::DoNotOptimize(keep.positions.data());
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

void register_sources(index_t h, index_t n) {
  auto add = [&](const char* name, source what) {
    benchmark::RegisterBenchmark((std::string("select/") + name).c_str(), select_source, what)
        ->Args({h, n})
        ->Unit(benchmark::kMillisecond);
  };
  add("snapkv_window", source::snapkv_window);
  add("keydiff", source::keydiff);
  add("expected_attention", source::expected_attention);
  add("expected_attention_nocov", source::expected_attention_nocov);
  add("rkv", source::rkv);
  if (n <= 4096) add("rkv_full", source::rkv_full);
}

// Every policy in every mode for one ISA, under `family` ("select" or
// "select_avx2").
template <class Isa>
void register_selections(const std::string& family, index_t h, index_t n) {
  for (mode m : {mode::token, mode::block16, mode::block32, mode::per_head}) {
    const std::string tail = mode_suffix(m);
    auto add = [&](const char* policy, void (*fn)(benchmark::State&, mode)) {
      benchmark::RegisterBenchmark((family + "/" + policy + tail).c_str(), fn, m)
          ->Args({h, n})
          ->Unit(benchmark::kMicrosecond);
    };
    add("snapkv", select_snapkv<Isa, false>);
    add("snapkv+kvcrush", select_snapkv<Isa, true>);
    add("h2o", select_h2o<Isa, false>);
    add("h2o+kvcrush", select_h2o<Isa, true>);
  }
}

// select_config and, with kvcrush::dispatch linked, select_dispatch: the
// same SnapKV selections, compile-time kernels against run-time dispatch.
void register_config_rows(index_t h, index_t n) {
  for (mode m : {mode::token, mode::per_head}) {
    const std::string tail = mode_suffix(m);
    auto add = [&](const std::string& name, void (*fn)(benchmark::State&, mode)) {
      benchmark::RegisterBenchmark((name + tail).c_str(), fn, m)->Args({h, n})->Unit(benchmark::kMicrosecond);
    };
    add("select_config/snapkv", select_config<false, false>);
    add("select_config/snapkv+kvcrush", select_config<false, true>);
#if defined(KVCRUSH_BENCH_DISPATCH)
    add("select_dispatch/snapkv", select_config<true, false>);
    add("select_dispatch/snapkv+kvcrush", select_config<true, true>);
#endif
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Context goes to stderr: stdout carries only the requested format, so
  // that `--benchmark_format=json | ...` works.
  std::fprintf(stderr,
               "kvcrush end-to-end selection benchmarks; ISA %s; budget N/4 (sink 4, or one block; recent 32), "
               "crush 0.5\n",
               std::string(kvcrush::isa::name()).c_str());
#if defined(KVCRUSH_BENCH_DISPATCH)
  std::fprintf(stderr, "select_dispatch rows: run-time dispatch at %s (KVCRUSH_ISA caps it)\n",
               std::string(kvcrush::dispatch::active_isa_name()).c_str());
#endif
  if (!kvcrush::isa::cpu_supports<kvcrush::isa::active>()) {
    std::fprintf(stderr, "this CPU lacks %s; rebuild the benchmarks for it\n", std::string(kvcrush::isa::name()).c_str());
    return 77;
  }
  constexpr bool compare_avx2 = std::is_same_v<kvcrush::isa::active, kvcrush::isa::avx512>;
  for (index_t h : head_counts)
    for (index_t n : token_counts) {
      benchmark::RegisterBenchmark("read_pass", read_pass)->Args({h, n})->Unit(benchmark::kMicrosecond);
      register_selections<kvcrush::isa::active>("select", h, n);
      if constexpr (compare_avx2) register_selections<kvcrush::isa::avx2>("select_avx2", h, n);
      register_config_rows(h, n);
      benchmark::RegisterBenchmark("decode_attention", decode_attention)->Args({h, n})->Unit(benchmark::kMicrosecond);
      if (h == 8 && n <= 32768) register_sources(h, n);
    }
  for (index_t threads : {1, 2}) {
    benchmark::RegisterBenchmark("evict_layers", evict_layers)
        ->Args({threads, 32, 8, 32768})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;  // bad usage, as in every kvcrush tool
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

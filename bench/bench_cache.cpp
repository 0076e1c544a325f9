// Cache benchmarks: in-place compaction of a float16 K/V layer (both
// layouts, keeping a random half) against memcpy of the same bytes in the
// same binary, and paged eviction (token compaction into fewer blocks, and
// whole-block eviction) with its cost per freed block.
//
// Names: compact/<layout>/H/N, memcpy/H/N, paged_evict_tokens/H/N,
// paged_evict_blocks/H/N (head_dim 128, block size 16). Counters:
//   bytes_per_second  K and V bytes moved (kept tokens x H x head_dim x 2 x 2)
//   tokens/s          cache tokens processed
//   x_memcpy          time per iteration / time of one memcpy of the moved
//                     bytes, measured in this process just before
//   memcpy_GB/s       that memcpy's bandwidth
//   ns_per_freed_block (paged) eviction time / blocks returned to the pool
// The paged benchmarks time the eviction only (filling, forking and
// releasing run with the timer paused); for block eviction the Time column
// covers 16 evictions and us_per_eviction gives one.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/cache/paged_cache.hpp"

namespace {

using kvcrush::float16;
using kvcrush::index_t;

constexpr index_t head_dim = 128;
constexpr index_t block_size = 16;
const std::vector<index_t> token_counts = {4096, 32768};

// Fastest of several memcpy calls of `bytes` bytes (seconds).
double memcpy_seconds(std::size_t bytes) {
  std::vector<unsigned char> src(bytes, 1), dst(bytes, 0);
  double best = 1e30;
  for (int rep = 0; rep < 12; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

void report(benchmark::State& state, double seconds, std::size_t bytes, std::size_t tokens, double memcpy_time) {
  const auto iterations = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(iterations * static_cast<double>(bytes)));
  state.counters["tokens/s"] = benchmark::Counter(iterations * static_cast<double>(tokens), benchmark::Counter::kIsRate);
  state.counters["x_memcpy"] = (seconds / iterations) / memcpy_time;
  state.counters["memcpy_GB/s"] = static_cast<double>(bytes) / memcpy_time / 1e9;
}

// A sorted random half of [0, n).
std::vector<index_t> random_half(index_t n, std::uint32_t seed) {
  std::vector<index_t> all(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) all[i] = i;
  std::mt19937 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<std::size_t>(n / 2));
  std::sort(all.begin(), all.end());
  return all;
}

std::size_t moved_bytes(index_t kept, index_t heads) {
  return static_cast<std::size_t>(kept * heads * head_dim) * sizeof(float16) * 2;
}

void memcpy_baseline(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const std::size_t bytes = moved_bytes(tokens / 2, heads);
  std::vector<unsigned char> src(bytes, 1), dst(bytes, 0);
  const double baseline = memcpy_seconds(bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// Compacts keys and values with the same keep set every iteration (the
// contents change, the moves do not).
template <kvcrush::kv_layout Layout>
void compact(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto elements = static_cast<std::size_t>(heads * tokens * head_dim);
  std::vector<float16> keys(elements, kvcrush::to_float16(0.5f)), values(elements, kvcrush::to_float16(-0.5f));
  std::vector<index_t> positions(static_cast<std::size_t>(tokens));
  const auto keep = random_half(tokens, 1);
  const index_t kept = static_cast<index_t>(keep.size());
  auto view_of = [&](float16* data) {
    return Layout == kvcrush::kv_layout::head_token_dim ? kvcrush::make_head_token_dim(data, heads, tokens, head_dim)
                                                        : kvcrush::make_token_head_dim(data, tokens, heads, head_dim);
  };
  const auto k = view_of(keys.data()), v = view_of(values.data());
  const auto keep_view = kvcrush::keep_view::shared(keep.data(), kept);
  const std::size_t bytes = moved_bytes(kept, heads);
  const double baseline = memcpy_seconds(bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    for (index_t t = 0; t < tokens; ++t) positions[t] = t;
    benchmark::DoNotOptimize(kvcrush::compact(k, v, keep_view, kvcrush::make_matrix_view(positions.data(), 1, tokens)));
    benchmark::ClobberMemory();
  }
  report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

kvcrush::paged_cache_config paged_config(index_t heads, index_t tokens, index_t sequences) {
  kvcrush::paged_cache_config cfg;
  cfg.layers = 1;
  cfg.kv_heads = heads;
  cfg.head_dim = head_dim;
  cfg.block_size = block_size;
  cfg.blocks = 2 * (tokens / block_size) + 2;
  cfg.max_sequences = sequences;
  return cfg;
}

// Appends `tokens` tokens from a small source block (setup, not timed).
void fill(kvcrush::paged_cache<float16>& cache, kvcrush::sequence_id id, index_t heads, index_t tokens,
          const std::vector<float16>& chunk, index_t chunk_tokens) {
  const auto view = kvcrush::make_token_head_dim<const float16>(chunk.data(), chunk_tokens, heads, head_dim);
  for (index_t done = 0; done < tokens; done += chunk_tokens) cache.append(id, 0, view, view);
}

// Token eviction of a random half, compacting in place into half the
// blocks; a fresh sequence each iteration (filled with the timer paused).
void paged_evict_tokens(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  kvcrush::paged_cache<float16> cache(paged_config(heads, tokens, 1));
  const index_t chunk_tokens = 256;
  const std::vector<float16> chunk(static_cast<std::size_t>(chunk_tokens * heads * head_dim), kvcrush::to_float16(0.25f));
  const auto keep = random_half(tokens, 2);
  const index_t kept = static_cast<index_t>(keep.size());
  const index_t freed = tokens / block_size - (kept + block_size - 1) / block_size;
  const std::size_t bytes = moved_bytes(kept, heads);
  const double baseline = memcpy_seconds(bytes);
  double evicting = 0.0;
  for (auto _ : state) {
    state.PauseTiming();
    const auto id = cache.create();
    fill(cache, id, heads, tokens, chunk, chunk_tokens);
    state.ResumeTiming();
    const auto start = std::chrono::steady_clock::now();
    cache.evict_tokens(id, 0, kvcrush::keep_view::shared(keep.data(), kept));
    evicting += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.PauseTiming();
    cache.release(id);
    state.ResumeTiming();
  }
  report(state, evicting, bytes, static_cast<std::size_t>(tokens), baseline);
  state.counters["ns_per_freed_block"] = evicting / static_cast<double>(state.iterations()) / static_cast<double>(freed) * 1e9;
}

// Block eviction (SPEC 4.4) of a random half of the blocks: only the block
// table changes and the dropped blocks go back through their reference
// counts. Each iteration evicts from `forks` forks of one full sequence
// (forking and releasing happen with the timer paused).
void paged_evict_blocks(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const index_t forks = 16;
  kvcrush::paged_cache<float16> cache(paged_config(heads, tokens, forks + 1));
  const std::vector<float16> chunk(static_cast<std::size_t>(256 * heads * head_dim), kvcrush::to_float16(0.25f));
  const auto full = cache.create();
  fill(cache, full, heads, tokens, chunk, 256);
  const index_t blocks = tokens / block_size;
  const auto keep = random_half(blocks, 3);
  const index_t kept = static_cast<index_t>(keep.size());
  const index_t freed = blocks - kept;
  const auto kept_view = kvcrush::make_vector_view<const index_t>(keep.data(), kept);
  std::vector<kvcrush::sequence_id> children(static_cast<std::size_t>(forks));
  double evicting = 0.0;
  for (auto _ : state) {
    state.PauseTiming();
    for (auto& c : children) c = cache.fork(full);
    state.ResumeTiming();
    const auto start = std::chrono::steady_clock::now();
    for (const auto& c : children) cache.evict_blocks(c, 0, kept_view);
    evicting += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.PauseTiming();
    for (const auto& c : children) cache.release(c);
    state.ResumeTiming();
  }
  const auto evictions = static_cast<double>(state.iterations() * forks);
  state.counters["tokens/s"] = benchmark::Counter(evictions * static_cast<double>(tokens) / evicting);
  state.counters["us_per_eviction"] = evicting / evictions * 1e6;
  state.counters["ns_per_freed_block"] = evicting / evictions / static_cast<double>(freed) * 1e9;
  state.counters["freed_blocks"] = static_cast<double>(freed);
}

}  // namespace

int main(int argc, char** argv) {
  // Context to stderr: stdout carries only the format asked for.
  std::fprintf(stderr, "kvcrush cache benchmarks; build ISA %s; float16 K/V, head_dim %ld, keep half\n",
              std::string(kvcrush::isa::name()).c_str(), static_cast<long>(head_dim));
  if (!kvcrush::isa::cpu_supports<kvcrush::isa::active>()) {
    std::fprintf(stderr, "this CPU lacks %s; rebuild the benchmarks for it\n", std::string(kvcrush::isa::name()).c_str());
    return 77;
  }
  const index_t heads = 8;
  for (index_t n : token_counts) {
    benchmark::RegisterBenchmark("memcpy", memcpy_baseline)->Args({heads, n})->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("compact/head_token_dim", compact<kvcrush::kv_layout::head_token_dim>)
        ->Args({heads, n})
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("compact/token_head_dim", compact<kvcrush::kv_layout::token_head_dim>)
        ->Args({heads, n})
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("paged_evict_tokens", paged_evict_tokens)
        ->Args({heads, n})
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("paged_evict_blocks", paged_evict_blocks)
        ->Args({heads, n})
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;  // bad usage, as in every kvcrush tool
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

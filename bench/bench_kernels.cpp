// KVCrush kernels per ISA: the signature step (median thresholds included),
// the thresholds alone, Hamming distances and the bucket (counting sort) step, next to a read pass
// over the same float matrix. Names: family/isa/H/N.
#include <benchmark/benchmark.h>

#include <cstdio>

#include "bench_common.hpp"
#include "kvcrush/select/buckets.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/simd/hamming.hpp"
#include "kvcrush/policy/workspace.hpp"

namespace {

using kvcrush::index_t;
namespace isa = kvcrush::isa;

const std::vector<index_t> head_counts = {8, 32, 64, 128};
const std::vector<index_t> token_counts = {4096, 32768, 131072};

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

template <class Isa>
void signatures(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  const index_t words = kvcrush::signature_words(heads);
  std::vector<std::uint64_t> sig(static_cast<std::size_t>(tokens * words));
  std::vector<index_t> counts(static_cast<std::size_t>(heads));
  kvcrush::workspace ws;
  ws.reserve(heads, tokens);
  const kvcrush::impl::score_rows rows{scores.data(), tokens, heads, tokens};
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    const bool ok = kvcrush::impl::build_signatures<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median,
                                                         sig.data(), counts.data(), nullptr, ws);
    benchmark::DoNotOptimize(ok);
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// The median thresholds alone (the part of the signature step before the
// compare-and-pack pass).
template <class Isa>
void thresholds(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  std::vector<float> values(static_cast<std::size_t>(heads));
  std::vector<index_t> ties(static_cast<std::size_t>(heads));
  std::vector<float> buf_a(static_cast<std::size_t>(tokens) + 64), buf_b(buf_a.size());
  const kvcrush::impl::score_rows rows{scores.data(), tokens, heads, tokens};
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::impl::compute_thresholds<Isa>(rows, 0, tokens, kvcrush::threshold_mode::median, values.data(),
                                           ties.data(), buf_a.data(), buf_b.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

template <class Isa>
void hamming(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const index_t words = kvcrush::signature_words(heads);
  std::mt19937_64 rng(3);
  std::vector<std::uint64_t> sig(static_cast<std::size_t>(tokens * words));
  for (auto& w : sig) w = rng() & (heads >= 64 ? ~0ull : ((1ull << heads) - 1));
  std::vector<std::uint64_t> anchor(static_cast<std::size_t>(words), 0x5555555555555555ull);
  std::vector<std::uint32_t> dist(static_cast<std::size_t>(tokens));
  const std::size_t bytes = sig.size() * sizeof(std::uint64_t);
  const double baseline = kvcrush_bench::read_pass_seconds(sig.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::simd::hamming_kernel<Isa>::run(sig.data(), tokens, words, anchor.data(), dist.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

// Counting sort over the H+1 distances and one representative per bucket,
// for a crush budget of N/8 among all N tokens. Plain C++ in every build.
void buckets(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  std::mt19937 rng(4);
  std::binomial_distribution<int> bits(static_cast<int>(heads), 0.5);
  std::vector<std::uint32_t> dist(static_cast<std::size_t>(tokens));
  for (auto& d : dist) d = static_cast<std::uint32_t>(bits(rng));
  std::vector<std::uint8_t> flags(static_cast<std::size_t>(tokens));
  std::vector<index_t> histogram(kvcrush::representative_histogram_size(heads)), order(static_cast<std::size_t>(tokens));
  const std::size_t bytes = dist.size() * sizeof(std::uint32_t) + flags.size();
  const double baseline = kvcrush_bench::read_pass_seconds(dist.data(), dist.size() * sizeof(std::uint32_t));
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    std::fill(flags.begin(), flags.end(), 0);
    kvcrush::impl::mark_representatives(dist.data(), flags.data(), tokens, 0, 2, tokens / 8,
                                        kvcrush::representative_rule::bucket_center, heads, histogram.data(),
                                        order.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}

template <class Isa>
void register_isa() {
  if (!kvcrush_bench::runnable<Isa>()) return;
  for (index_t h : head_counts)
    for (index_t n : token_counts) {
      benchmark::RegisterBenchmark(kvcrush_bench::isa_prefix("signatures", Isa::name).c_str(), signatures<Isa>)
          ->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(kvcrush_bench::isa_prefix("thresholds", Isa::name).c_str(), thresholds<Isa>)
          ->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(kvcrush_bench::isa_prefix("hamming", Isa::name).c_str(), hamming<Isa>)
          ->Args({h, n})->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace

int main(int argc, char** argv) {
  // Context to stderr: stdout carries only the format asked for.
  std::fprintf(stderr, "kvcrush kernel benchmarks; build ISA %s (scalar rows are the scalar kernels as compiled in this build)\n",
              std::string(isa::name()).c_str());
  if (!isa::cpu_supports<isa::active>()) {
    std::fprintf(stderr, "this CPU lacks %s; rebuild the benchmarks for it\n", std::string(isa::name()).c_str());
    return 77;
  }
  for (index_t h : head_counts)
    for (index_t n : token_counts) {
      benchmark::RegisterBenchmark("read_pass", read_pass)->Args({h, n})->Unit(benchmark::kMicrosecond);
      benchmark::RegisterBenchmark(kvcrush_bench::isa_prefix("buckets", isa::name()).c_str(), buckets)
          ->Args({h, n})->Unit(benchmark::kMicrosecond);
    }
  register_isa<isa::scalar>();
#if KVCRUSH_HAS_AVX2
  register_isa<isa::avx2>();
#endif
#if KVCRUSH_HAS_AVX512
  register_isa<isa::avx512>();
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;  // bad usage, as in every kvcrush tool
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// KVCrush kernels per ISA: the signature step (median thresholds included),
// the thresholds alone, Hamming distances and the bucket step, next to a read
// pass over the same float matrix; on AVX-512 also the one-pass bracket
// (bracket_pass) and its floor (bracket_masks). Names: family/isa/H/N.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>

#include "bench_common.hpp"
#include "kvcrush/select/buckets.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/simd/hamming.hpp"
#include "kvcrush/policy/workspace.hpp"
#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/avx512_util.hpp"
#endif

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

#if KVCRUSH_HAS_AVX512
// What one pass of a bracketed median costs at least on this CPU, against
// the library's pass (bracketed_median.hpp): every score compared with both
// ends of a bracket holding 8% of the row, the two masks stored, nothing
// packed (bracket_masks); and the library's bracket_pass, which also packs
// the scores inside the bracket (bracket_pass). Bracket: the 46th and 54th
// percentiles of each row.
template <bool Pack>
void bracket_pass(benchmark::State& state) {
  const index_t heads = state.range(0), tokens = state.range(1);
  const auto scores = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(heads * tokens), 2);
  std::vector<float> lo(static_cast<std::size_t>(heads)), hi(lo.size());
  for (index_t h = 0; h < heads; ++h) {
    std::vector<float> row(scores.begin() + h * tokens, scores.begin() + (h + 1) * tokens);
    std::sort(row.begin(), row.end());
    lo[static_cast<std::size_t>(h)] = row[static_cast<std::size_t>(tokens * 46 / 100)];
    hi[static_cast<std::size_t>(h)] = row[static_cast<std::size_t>(tokens * 54 / 100)];
  }
  const index_t stride = kvcrush::simd::head_bits_stride(heads);
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(kvcrush::simd::head_bits_size(heads, tokens)));
  std::vector<std::uint64_t> above(static_cast<std::size_t>(tokens / 64 + 1)), inside(above.size());
  std::vector<float> packed(static_cast<std::size_t>(tokens + 64));
  const std::size_t bytes = scores.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(scores.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    for (index_t h = 0; h < heads; ++h) {
      const float* row = scores.data() + h * tokens;
      const float l = lo[static_cast<std::size_t>(h)], u = hi[static_cast<std::size_t>(h)];
      if constexpr (Pack) {
        benchmark::DoNotOptimize(kvcrush::simd::head_bits_kernel<isa::avx512>::bracket_pass<
                                 kvcrush::simd::head_sum_mode::none>(row, tokens, l, u, h, stride, bits.data(),
                                                                     inside.data(), packed.data(), nullptr,
                                                                     kvcrush::simd::deferred_settle{}));
      } else {
        const __m512 vl = _mm512_set1_ps(l), vu = _mm512_set1_ps(u);
        for (index_t i = 0; i + 64 <= tokens; i += 64) {
          __mmask16 up[4], in[4];
          for (int j = 0; j < 4; ++j) {
            const __m512 v = _mm512_loadu_ps(row + i + 16 * j);
            up[j] = _mm512_cmp_ps_mask(v, vu, _CMP_GT_OQ);
            in[j] = static_cast<__mmask16>(~up[j] & _mm512_cmp_ps_mask(v, vl, _CMP_GE_OQ));
          }
          above[static_cast<std::size_t>(i / 64)] = kvcrush::simd::avx512_util::join4(up);
          inside[static_cast<std::size_t>(i / 64)] = kvcrush::simd::avx512_util::join4(in);
        }
        benchmark::DoNotOptimize(above.data());
        benchmark::DoNotOptimize(inside.data());
        benchmark::ClobberMemory();
      }
    }
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(tokens), baseline);
}
#endif

// The representatives: one per bucket of the candidates ordered by (distance,
// position), for a crush budget of N/8 among all N tokens, binomial
// distances over H+1 classes; through the build's ISA (class passes up to
// 100 classes, a counting sort beyond).
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
    kvcrush::impl::select_representatives<isa::active>(dist.data(), flags.data(), tokens, 0, 2, tokens / 8,
                                                       kvcrush::representative_rule::bucket_center, heads,
                                                       histogram.data(), order.data());
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
  if (kvcrush_bench::runnable<isa::avx512>()) {
    for (index_t h : head_counts)
      for (index_t n : token_counts) {
        benchmark::RegisterBenchmark("bracket_masks/avx512", bracket_pass<false>)->Args({h, n})->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark("bracket_pass/avx512", bracket_pass<true>)->Args({h, n})->Unit(benchmark::kMicrosecond);
      }
  }
#endif
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;  // bad usage, as in every kvcrush tool
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

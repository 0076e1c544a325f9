// Shared pieces of the benchmarks: realistic score data, the read-pass
// bandwidth baseline, and the counters every benchmark reports.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "kvcrush/isa.hpp"

namespace kvcrush_bench {

// Allocates on 64-byte boundaries. Score matrices come from it so that rows
// start on cache lines in every process: a vector of 128 KiB or more from
// malloc starts 16 bytes into a page, every 64-byte load then spans two
// lines, and on an Intel Xeon that halved the read pass over L2-resident
// scores in some processes and not in others.
template <class T>
struct cache_line_allocator {
  using value_type = T;
  cache_line_allocator() = default;
  template <class U>
  cache_line_allocator(const cache_line_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const cache_line_allocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const cache_line_allocator<U>&) const noexcept { return false; }
};

using aligned_floats = std::vector<float, cache_line_allocator<float>>;

// Attention-like scores: log-normal, so a few tokens dominate each head and
// the rest trail off, as accumulated attention does.
inline aligned_floats attention_like_scores(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  aligned_floats out(n);
  for (auto& v : out) v = std::exp(normal(rng)) * 1e-3f;
  return out;
}

// The bandwidth baseline: one plain read of `count` floats, summed into
// eight vector registers' worth of independent lanes, so that the loop is
// bound by memory, not by the latency of the additions. Fewer chains let the
// add latency bound it: with four chains of 512-bit adds the AVX-512 build
// read L2-resident data at 85 GB/s on an Intel Xeon where eight chains read
// it at 145 GB/s; sixteen chains of 256-bit adds spill the AVX2 registers.
#if defined(__AVX512F__)
constexpr std::size_t read_pass_lanes = 128;
#else
constexpr std::size_t read_pass_lanes = 64;
#endif
inline float read_pass(const float* data, std::size_t count) {
  constexpr std::size_t lanes = read_pass_lanes;
  float acc[lanes] = {};
  std::size_t i = 0;
  for (; i + lanes <= count; i += lanes)
    for (std::size_t j = 0; j < lanes; ++j) acc[j] += data[i + j];
  for (; i < count; ++i) acc[0] += data[i];
  // Halving folds (vector adds), not a serial sum of the lanes: over 16 KiB
  // a chain of 128 scalar adds alone took longer than the reads.
  for (std::size_t half = lanes / 2; half >= 1; half /= 2)
    for (std::size_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  return acc[0];
}

// Fastest of several read passes over the same data (seconds), measured in
// the benchmark's own process right before it runs.
inline double read_pass_seconds(const void* data, std::size_t bytes) {
  const auto* floats = static_cast<const float*>(data);
  const std::size_t count = bytes / sizeof(float);
  double best = 1e30;
  for (int rep = 0; rep < 30; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(read_pass(floats, count));
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

// Times the benchmark loop itself, to relate it to the read pass.
class loop_timer {
 public:
  void start() { start_ = std::chrono::steady_clock::now(); }
  double stop() {
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start_;
    return took.count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// bytes/s and tokens/s as rates, and the time per iteration as a multiple of
// a read pass over `baseline_bytes` of the benchmark's input.
inline void report(benchmark::State& state, double seconds, std::size_t bytes_per_iteration,
                   std::size_t tokens_per_iteration, double read_pass) {
  const auto iterations = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(iterations * static_cast<double>(bytes_per_iteration)));
  state.counters["tokens/s"] = benchmark::Counter(iterations * static_cast<double>(tokens_per_iteration),
                                                  benchmark::Counter::kIsRate);
  state.counters["x_read_pass"] = (seconds / iterations) / read_pass;
  state.counters["read_pass_GB/s"] = static_cast<double>(bytes_per_iteration) / read_pass / 1e9;
}

template <class Isa>
bool runnable() {
  return kvcrush::isa::compiled_v<Isa> && kvcrush::isa::cpu_supports<Isa>();
}

inline std::string isa_prefix(const char* family, std::string_view isa) {
  return std::string(family) + "/" + std::string(isa);
}

}  // namespace kvcrush_bench

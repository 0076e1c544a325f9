// Quantized KV cache kernels per ISA and bit width, next to a read pass over
// the same bytes (x_read_pass) and the float16 baseline they replace:
//   quantize/<isa>/int<b>/<head_dim>/<N>   keys (groups of 32) and values of N tokens
//   quant_dot/<isa>/int<b>/<head_dim>/<N>  q . k for N quantized keys (scores)
//   quant_sum/<isa>/int<b>/<head_dim>/<N>  weighted sum of N quantized value rows
//   f16_dot/<isa>/f16/<head_dim>/<N>       q . k for N float16 keys (the baseline)
// bytes/s counts what the kernel reads: the float rows for quantize, the
// codes and their scales/zero-points for quant_dot/quant_sum, the float16
// rows for f16_dot. One KV head, float16 parameters.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/simd/quant_dot.hpp"
#include "kvcrush/simd/quant_encode.hpp"

namespace {

using kvcrush::float16;
using kvcrush::index_t;
namespace isa = kvcrush::isa;

constexpr index_t group = 32;
const std::vector<index_t> head_dims = {64, 128};
const std::vector<index_t> token_counts = {4096, 32768};

std::vector<float> model_like_rows(index_t tokens, index_t d, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> rows(static_cast<std::size_t>(tokens * d));
  for (auto& x : rows) x = normal(rng);
  return rows;
}

kvcrush::quantized_layer<float16> make_layer(int bits, index_t d, index_t tokens) {
  kvcrush::quant_config cfg;
  cfg.key_bits = bits;
  cfg.value_bits = bits;
  cfg.group_size = group;
  cfg.window = 0;
  const auto k = model_like_rows(tokens, d, 1), v = model_like_rows(tokens, d, 2);
  return kvcrush::quantize_layer<float16>(kvcrush::make_head_token_dim<const float>(k.data(), 1, tokens, d),
                                          kvcrush::make_head_token_dim<const float>(v.data(), 1, tokens, d), cfg);
}

template <class Isa>
void quantize(benchmark::State& state, int bits) {
  const index_t d = state.range(0), n = state.range(1);
  const auto k = model_like_rows(n, d, 3), v = model_like_rows(n, d, 4);
  const auto layout = kvcrush::quant_layout::make([&] {
    kvcrush::quant_config c;
    c.key_bits = c.value_bits = bits;
    c.group_size = group;
    c.window = 0;
    return c;
  }(), d);
  std::vector<std::uint8_t> key_codes(static_cast<std::size_t>(n / group) * layout.key_group_code_bytes);
  std::vector<std::uint8_t> value_codes(static_cast<std::size_t>(n) * layout.value_row_bytes);
  std::vector<float16> key_scale(static_cast<std::size_t>(n / group * d)), key_zero(key_scale.size());
  std::vector<float16> value_scale(static_cast<std::size_t>(n)), value_zero(value_scale.size());
  const std::size_t bytes = 2 * k.size() * sizeof(float);
  const double baseline = kvcrush_bench::read_pass_seconds(k.data(), k.size() * sizeof(float)) * 2;
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    for (index_t g = 0; g < n / group; ++g) {
      kvcrush::simd::quant_encode_kernel<Isa>::keys(k.data() + g * group * d, d, group, d, bits,
                                                    key_codes.data() + g * layout.key_group_code_bytes,
                                                    key_scale.data() + g * d, key_zero.data() + g * d);
    }
    kvcrush::simd::quant_encode_kernel<Isa>::values(v.data(), d, n, d, d, bits, value_codes.data(), value_scale.data(),
                                                    value_zero.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(n), baseline);
}

template <class Isa>
void quant_dot(benchmark::State& state, int bits) {
  const index_t d = state.range(0), n = state.range(1);
  const auto layer = make_layer(bits, d, n);
  const auto keys = layer.key_span<float16>(0);
  const auto q = model_like_rows(1, d, 5);
  std::vector<float> scores(static_cast<std::size_t>(n));
  const std::size_t bytes = layer.memory().key_codes + layer.memory().key_params;
  const double baseline = kvcrush_bench::read_pass_seconds(keys.codes, bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::simd::quant_dot_kernel<Isa>::key_scores(keys, q.data(), scores.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(n), baseline);
}

template <class Isa>
void quant_sum(benchmark::State& state, int bits) {
  const index_t d = state.range(0), n = state.range(1);
  const auto layer = make_layer(bits, d, n);
  const auto values = layer.value_span<float16>(0);
  const auto p = kvcrush_bench::attention_like_scores(static_cast<std::size_t>(n), 6);
  std::vector<float> out(static_cast<std::size_t>(d));
  const std::size_t bytes = layer.memory().value_codes + layer.memory().value_params;
  const double baseline = kvcrush_bench::read_pass_seconds(values.codes, bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::simd::quant_dot_kernel<Isa>::value_sum(values, p.data(), out.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(n), baseline);
}

template <class Isa>
void f16_dot(benchmark::State& state) {
  const index_t d = state.range(0), n = state.range(1);
  const auto rows = model_like_rows(n, d, 7);
  std::vector<float16> keys(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) keys[i] = kvcrush::to_float16(rows[i]);
  const kvcrush::row_span<float16> span{keys.data(), d, n, d};
  const auto q = model_like_rows(1, d, 8);
  std::vector<float> scores(static_cast<std::size_t>(n));
  const std::size_t bytes = keys.size() * sizeof(float16);
  const double baseline = kvcrush_bench::read_pass_seconds(keys.data(), bytes);
  kvcrush_bench::loop_timer timer;
  timer.start();
  for (auto _ : state) {
    kvcrush::simd::quant_dot_kernel<Isa>::row_scores(span, q.data(), scores.data());
    benchmark::ClobberMemory();
  }
  kvcrush_bench::report(state, timer.stop(), bytes, static_cast<std::size_t>(n), baseline);
}

template <class Isa>
void register_isa() {
  if (!kvcrush_bench::runnable<Isa>()) return;
  const std::string isa_name(Isa::name);
  for (int bits : {2, 4, 8}) {
    const std::string suffix = isa_name + "/int" + std::to_string(bits);
    for (index_t d : head_dims) {
      for (index_t n : token_counts) {
        benchmark::RegisterBenchmark(("quantize/" + suffix).c_str(), quantize<Isa>, bits)
            ->Args({d, n})->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("quant_dot/" + suffix).c_str(), quant_dot<Isa>, bits)
            ->Args({d, n})->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("quant_sum/" + suffix).c_str(), quant_sum<Isa>, bits)
            ->Args({d, n})->Unit(benchmark::kMicrosecond);
      }
    }
  }
  for (index_t d : head_dims)
    for (index_t n : token_counts)
      benchmark::RegisterBenchmark(("f16_dot/" + isa_name + "/f16").c_str(), f16_dot<Isa>)->Args({d, n})->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  // Context to stderr: stdout carries only the format asked for.
  std::fprintf(stderr, "kvcrush quantization benchmarks; build ISA %s (scalar rows are the scalar kernels as compiled in this build)\n",
              std::string(isa::name()).c_str());
  if (!isa::cpu_supports<isa::active>()) {
    std::fprintf(stderr, "this CPU lacks %s; rebuild the benchmarks for it\n", std::string(isa::name()).c_str());
    return 77;
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

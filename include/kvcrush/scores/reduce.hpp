// Pooling along tokens and GQA reduction over query-head groups (SPEC 5).
//
// Arithmetic order is part of the contract (docs/SEMANTICS.md section 7), so
// that any implementation, scalar or SIMD or NumPy, gets the same bits: avg
// pooling adds the k neighbours left to right starting from 0.0f and divides
// by k; the GQA mean adds the G rows in query-head order and divides by G.
#pragma once

#include <array>
#include <string_view>
#include <utility>

#include "kvcrush/error.hpp"
#include "kvcrush/enum_names.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

enum class pooling_mode { avg, max };
enum class gqa_reduction { mean, max, sum };

namespace detail {
inline constexpr std::array<std::pair<std::string_view, pooling_mode>, 2> pooling_names{{
    {"avg", pooling_mode::avg},
    {"max", pooling_mode::max},
}};
inline constexpr std::array<std::pair<std::string_view, gqa_reduction>, 3> gqa_names{{
    {"mean", gqa_reduction::mean},
    {"max", gqa_reduction::max},
    {"sum", gqa_reduction::sum},
}};
}  // namespace detail

inline pooling_mode parse_pooling_mode(std::string_view text) {
  return detail::parse_enum(text, detail::pooling_names, "pooling");
}
inline gqa_reduction parse_gqa_reduction(std::string_view text) {
  return detail::parse_enum(text, detail::gqa_names, "GQA reduction");
}
inline std::string_view to_string(pooling_mode m) { return detail::enum_name(m, detail::pooling_names); }
inline std::string_view to_string(gqa_reduction m) { return detail::enum_name(m, detail::gqa_names); }

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// out[t] for t in [0, n): centred window of `kernel` (odd) values of in.
inline void pool_row(const float* in, index_t n, index_t kernel, pooling_mode mode, float* out) noexcept {
  const index_t half = kernel / 2;
  for (index_t t = 0; t < n; ++t) {
    if (mode == pooling_mode::avg) {
      float acc = 0.0f;
      for (index_t j = t - half; j <= t + half; ++j) acc += (j >= 0 && j < n) ? in[j] : 0.0f;
      out[t] = acc / static_cast<float>(kernel);
    } else {
      float best = in[t];
      for (index_t j = t - half; j <= t + half; ++j) {
        if (j >= 0 && j < n && in[j] > best) best = in[j];
      }
      out[t] = best;
    }
  }
}

// Reduces the G rows rows[0..G) (each row_stride apart) into out over n tokens.
inline void reduce_group(const float* rows, index_t row_stride, index_t group, index_t n, gqa_reduction mode,
                         float* out) noexcept {
  for (index_t t = 0; t < n; ++t) out[t] = rows[t];
  for (index_t g = 1; g < group; ++g) {
    const float* row = rows + g * row_stride;
    if (mode == gqa_reduction::max) {
      for (index_t t = 0; t < n; ++t) out[t] = row[t] > out[t] ? row[t] : out[t];
    } else {
      for (index_t t = 0; t < n; ++t) out[t] += row[t];
    }
  }
  if (mode == gqa_reduction::mean && group > 1) {
    const auto g = static_cast<float>(group);
    for (index_t t = 0; t < n; ++t) out[t] /= g;
  }
}

}  // namespace impl

// Pools every row of `in` (rows, n) into `out` (rows, n). kernel: odd >= 1.
template <class Isa = isa::active>
void pool_rows(matrix_view<const float> in, index_t kernel, pooling_mode mode, matrix_view<float> out) {
  using kvcrush::detail::require;
  require(kernel >= 1 && kernel % 2 == 1, "pooling kernel must be odd and >= 1 (got ", kernel, ")");
  require(in.extent(0) == out.extent(0) && in.extent(1) == out.extent(1), "pool_rows: output shape differs");
  require(in.extent(1) <= 1 || (in.stride(1) == 1 && out.stride(1) == 1), "pool_rows: rows must be contiguous");
  for (index_t r = 0; r < in.extent(0); ++r) {
    impl::pool_row(in.data() + r * in.stride(0), in.extent(1), kernel, mode, out.data() + r * out.stride(0));
  }
}

// (query_heads, n) -> (kv_heads, n): KV head h reduces query heads
// [h * G, (h + 1) * G) with G = query_heads / kv_heads.
template <class Isa = isa::active>
void reduce_query_heads(matrix_view<const float> query_rows, gqa_reduction mode, matrix_view<float> out) {
  using kvcrush::detail::require;
  const index_t hq = query_rows.extent(0), h = out.extent(0), n = query_rows.extent(1);
  require(h >= 1 && hq >= h && hq % h == 0, "GQA reduction: ", hq, " query heads do not split evenly over ", h,
          " KV heads");
  require(out.extent(1) == n, "GQA reduction: output covers ", out.extent(1), " tokens, input ", n);
  require(n <= 1 || (query_rows.stride(1) == 1 && out.stride(1) == 1), "GQA reduction: rows must be contiguous");
  const index_t group = hq / h;
  for (index_t k = 0; k < h; ++k) {
    impl::reduce_group(query_rows.data() + k * group * query_rows.stride(0), query_rows.stride(0), group, n, mode,
                       out.data() + k * out.stride(0));
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// Signature kernel: the one pass over the score tiles that KVCrush needs.
//
// For tokens t in [begin, end) and heads h, it sets bit h of the token's
// signature when S[h][t] >= threshold[h] (inclusive: median mode, whose
// caller then trims surplus ties by position) or S[h][t] > threshold[h]
// (mean mode). In the same pass it can add the scores over heads in head
// order (the shared importance), count the bits set per head (for the
// mean/inv_mean anchors), and notice NaN. Signatures are token-major: token
// t owns words [t * words, (t + 1) * words).
#pragma once

#include <cstdint>

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

struct signature_job {
  const float* scores = nullptr;  // row h starts at scores + h * row_stride
  index_t row_stride = 0;
  index_t heads = 0;
  index_t begin = 0;  // token range [begin, end)
  index_t end = 0;
  const float* thresholds = nullptr;  // per head; null: no signatures
  bool inclusive = true;              // >= (median) or > (mean)
  std::uint64_t* signatures = nullptr;  // [(end - begin) * words]; null: sums only
  index_t words = 0;
  index_t* bit_counts = nullptr;  // per head, incremented; may be null
  float* sums = nullptr;          // [(end - begin)], float32 sums in head order; may be null
};

template <class Isa>
struct signature_kernel {
  static_assert(isa::compiled_v<Isa>,
                "signature kernel requested for an ISA this translation unit is not compiled for");
};

template <>
struct signature_kernel<isa::scalar> {
  // Returns true when a NaN was met (in a score, or in a sum: +inf + -inf).
  static bool run(const signature_job& job) noexcept {
    constexpr index_t tile = 64;
    // Locals, not job fields: stores through the uint64_t signature pointer
    // could alias the index_t fields and force reloads in the inner loops.
    const float* const scores = job.scores;
    const index_t row_stride = job.row_stride, heads = job.heads, words = job.words;
    const index_t begin = job.begin, end = job.end;
    std::uint64_t* const signatures = job.signatures;
    float* const sums = job.sums;
    const bool inclusive = job.inclusive;
    float tile_sums[tile];
    std::uint64_t tile_bits[tile];
    bool nan = false;
    for (index_t t0 = begin; t0 < end; t0 += tile) {
      const index_t len = end - t0 < tile ? end - t0 : tile;
      if (sums) {
        for (index_t h = 0; h < heads; ++h) {
          const float* row = scores + h * row_stride + t0;
          for (index_t i = 0; i < len; ++i) tile_sums[i] = h == 0 ? row[i] : tile_sums[i] + row[i];
        }
        for (index_t i = 0; i < len; ++i) {
          sums[t0 - begin + i] = tile_sums[i];
          nan |= tile_sums[i] != tile_sums[i];
        }
      } else {
        for (index_t h = 0; h < heads; ++h) {
          const float* row = scores + h * row_stride + t0;
          for (index_t i = 0; i < len; ++i) nan |= row[i] != row[i];
        }
      }
      if (!signatures) continue;
      for (index_t w = 0; w < words; ++w) {
        for (index_t i = 0; i < len; ++i) tile_bits[i] = 0;
        const index_t h_end = (w + 1) * 64 < heads ? (w + 1) * 64 : heads;
        for (index_t h = w * 64; h < h_end; ++h) {
          const float* row = scores + h * row_stride + t0;
          const float threshold = job.thresholds[h];
          const unsigned shift = static_cast<unsigned>(h % 64);
          index_t count = 0;
          for (index_t i = 0; i < len; ++i) {
            const std::uint64_t take = inclusive ? row[i] >= threshold : row[i] > threshold;
            tile_bits[i] |= take << shift;
            count += static_cast<index_t>(take);
          }
          if (job.bit_counts) job.bit_counts[h] += count;
        }
        std::uint64_t* out = signatures + (t0 - begin) * words + w;
        for (index_t i = 0; i < len; ++i) out[i * words] = tile_bits[i];
      }
    }
    return nan;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/signature_avx2.hpp"
#include "kvcrush/simd/signature_avx512.hpp"

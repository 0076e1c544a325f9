// Signature kernel: the one pass over the score tiles that KVCrush needs.
//
// For tokens t in [begin, end) and heads h, it sets bit h of the token's
// signature when S[h][t] > threshold[h], or when S[h][t] == threshold[h] and
// that head still has tie slots left (consumed in position order, which is
// the SPEC's tie-break). In the same pass it can add the scores over heads in
// head order (the shared importance), count the bits set per head (for the
// mean/inv_mean anchors), and notice NaN. Signatures are token-major: token t
// owns words [t * words, (t + 1) * words).
#pragma once

#include <cstdint>

#include "kvcrush/simd/isa.hpp"
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
  index_t* ties_left = nullptr;       // per head; consumed
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
    float tile_sums[tile];
    bool nan = false;
    const bool with_sig = job.signatures != nullptr;
    for (index_t t0 = job.begin; t0 < job.end; t0 += tile) {
      const index_t len = job.end - t0 < tile ? job.end - t0 : tile;
      std::uint64_t* sig = with_sig ? job.signatures + (t0 - job.begin) * job.words : nullptr;
      if (with_sig) {
        for (index_t i = 0; i < len * job.words; ++i) sig[i] = 0;
      }
      for (index_t h = 0; h < job.heads; ++h) {
        const float* row = job.scores + h * job.row_stride + t0;
        if (job.sums) {
          for (index_t i = 0; i < len; ++i) tile_sums[i] = h == 0 ? row[i] : tile_sums[i] + row[i];
        } else {
          for (index_t i = 0; i < len; ++i) nan |= row[i] != row[i];
        }
        if (!with_sig) continue;
        const float threshold = job.thresholds[h];
        index_t left = job.ties_left[h];
        const index_t word = h / 64;
        const std::uint64_t bit = std::uint64_t{1} << (h % 64);
        index_t count = 0;
        for (index_t i = 0; i < len; ++i) {
          bool take = row[i] > threshold;
          if (left > 0 && row[i] == threshold) {
            take = true;
            --left;
          }
          sig[i * job.words + word] |= take ? bit : 0u;
          count += take;
        }
        job.ties_left[h] = left;
        if (job.bit_counts) job.bit_counts[h] += count;
      }
      if (job.sums) {
        for (index_t i = 0; i < len; ++i) {
          job.sums[t0 - job.begin + i] = tile_sums[i];
          nan |= tile_sums[i] != tile_sums[i];
        }
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

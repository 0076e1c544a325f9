// Hamming distances of signatures to an anchor (SPEC 4.3, first line).
#pragma once

#include <cstdint>

#include "kvcrush/error.hpp"
#include "kvcrush/simd/hamming.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

// out[t] = popcount(signatures[t] XOR anchor) for every row t. signatures is
// (n, words) row-major contiguous, anchor holds words words.
template <class Isa = isa::active>
void hamming_distances(matrix_view<const std::uint64_t> signatures, vector_view<const std::uint64_t> anchor,
                       vector_view<std::uint32_t> out) {
  const index_t n = signatures.extent(0);
  const index_t words = signatures.extent(1);
  kvcrush::detail::require(words >= 1, "hamming_distances: signatures need at least one word");
  kvcrush::detail::require(anchor.extent(0) == words, "hamming_distances: anchor has ", anchor.extent(0),
                           " words, signatures have ", words);
  kvcrush::detail::require(out.extent(0) == n, "hamming_distances: output has ", out.extent(0),
                           " entries for ", n, " signatures");
  kvcrush::detail::require(n <= 1 || (signatures.stride(1) == 1 && signatures.stride(0) == words),
                           "hamming_distances: signatures must be row-major contiguous");
  kvcrush::detail::require(anchor.stride(0) == 1 || words == 1, "hamming_distances: anchor must be contiguous");
  kvcrush::detail::require(out.stride(0) == 1 || n <= 1, "hamming_distances: output must be contiguous");
  if (n == 0) return;
  simd::hamming_kernel<Isa>::run(signatures.data(), n, words, anchor.data(), out.data());
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

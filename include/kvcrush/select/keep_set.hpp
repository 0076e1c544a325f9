// Keep sets: which tokens (or blocks) of one layer survive an eviction, in
// the two forms the library passes around:
//
//   keep_sets  writable: where kvcrush::select() and the selection functions
//              write their result (positions + one count per row);
//   keep_view  read-only: what the caches consume.
//
// A keep_sets converts to a keep_view implicitly (as a span<T> converts to a
// span<const T>), so select()'s output plugs straight into a compaction.
//
// A keep set is one row of sorted, strictly increasing indices into the
// cache as it is now (not original positions), shared by every KV head, or
// one row per KV head. Rows may have a common length (per-head mode with a
// uniform budget) or each its own (AdaKV head-wise budgets): counts[r]
// entries are used in row r, and all of row r when counts is empty.
//
// validate_keep() is the boundary check every cache runs before touching
// memory, so that a bad keep set never leaves a cache half-compacted.
#pragma once

#include "kvcrush/error.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// Output of a selection: row h (one row in shared mode) holds counts[h]
// sorted positions or block indices.
struct keep_sets {
  matrix_view<index_t> positions;
  vector_view<index_t> counts;
};

struct keep_view {
  matrix_view<const index_t> rows;    // (1 or heads, >= widest count)
  vector_view<const index_t> counts;  // (rows) or empty: every row is full

  keep_view() = default;
  keep_view(matrix_view<const index_t> keep_rows, vector_view<const index_t> row_counts = {})
      : rows(keep_rows), counts(row_counts) {}
  // The rows a selection wrote, counts[r] entries in row r.
  keep_view(const keep_sets& written)  // NOLINT(google-explicit-constructor): a view of the same data
      : rows(written.positions.data(), {written.positions.extent(0), written.positions.extent(1)},
             {written.positions.stride(0), written.positions.stride(1)}),
        counts(written.counts.data(), {written.counts.extent(0)}, {written.counts.stride(0)}) {}

  // One sorted list for every head.
  static keep_view shared(vector_view<const index_t> keep) {
    return keep_view(matrix_view<const index_t>(keep.data(), {1, keep.extent(0)}, {0, keep.stride(0)}));
  }
  static keep_view shared(const index_t* keep, index_t count) {
    return shared(vector_view<const index_t>(keep, {count}, {1}));
  }
  // One list per head, all of the same length (rows.extent(1)).
  static keep_view per_head(matrix_view<const index_t> keep) { return keep_view(keep); }
  // One list per head, row h holding counts[h] entries.
  static keep_view ragged(matrix_view<const index_t> keep, vector_view<const index_t> row_counts) {
    return keep_view(keep, row_counts);
  }

  index_t row_count() const noexcept { return rows.extent(0); }
  bool is_shared() const noexcept { return rows.extent(0) == 1; }
  index_t count(index_t row) const noexcept {
    return counts.extent(0) != 0 ? counts.data()[row * counts.stride(0)] : rows.extent(1);
  }
  index_t at(index_t row, index_t i) const noexcept {
    return rows.data()[row * rows.stride(0) + i * rows.stride(1)];
  }
  // The row that applies to KV head h.
  index_t row_of_head(index_t head) const noexcept { return is_shared() ? 0 : head; }
};

inline namespace KVCRUSH_TARGET_NS {

// Longest row (the cache length after a compaction with this keep set).
inline index_t max_keep_count(const keep_view& keep) noexcept {
  index_t widest = 0;
  for (index_t r = 0; r < keep.row_count(); ++r) widest = keep.count(r) > widest ? keep.count(r) : widest;
  return widest;
}

// True when every row holds the same number of entries.
inline bool keep_is_uniform(const keep_view& keep) noexcept {
  for (index_t r = 1; r < keep.row_count(); ++r) {
    if (keep.count(r) != keep.count(0)) return false;
  }
  return true;
}

// Throws std::invalid_argument, naming `what`, unless keep is a valid keep
// set for `heads` KV heads of a cache holding `units` tokens (or blocks):
// one row or one per head, counts in range, entries strictly increasing in
// [0, units).
inline void validate_keep(const keep_view& keep, index_t heads, index_t units, const char* what) {
  using kvcrush::detail::require;
  const index_t rows = keep.row_count();
  require(rows == 1 || rows == heads, what, ": keep set has ", rows, " rows; expected 1 (shared) or ", heads,
          " (one per KV head)");
  require(keep.counts.extent(0) == 0 || keep.counts.extent(0) == rows, what, ": keep set has ",
          keep.counts.extent(0), " counts for ", rows, " rows");
  for (index_t r = 0; r < rows; ++r) {
    const index_t count = keep.count(r);
    require(count >= 0 && count <= keep.rows.extent(1), what, ": keep row ", r, " count ", count, " outside [0, ",
            keep.rows.extent(1), "]");
    index_t previous = -1;
    for (index_t i = 0; i < count; ++i) {
      const index_t v = keep.at(r, i);
      require(v >= 0 && v < units, what, ": keep row ", r, " entry ", i, " is ", v, ", outside the cache [0, ",
              units, ")");
      require(v > previous, what, ": keep row ", r, " is not strictly increasing at entry ", i, " (", v, " after ",
              previous, ")");
      previous = v;
    }
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// Batches: many sequences (one eviction_controller each, over contiguous
// caches or one shared paged cache) whose selections and compactions run in
// parallel on an executor, one task per (sequence, layer).
//
// Tasks share no mutable state: each controller keeps its state per layer,
// each worker has its own workspace, and the paged cache guards the only
// thing sequences share (a layer's free list and reference counts) with a
// per-layer lock held for bookkeeping only. Results do not depend on the
// number of threads or on the order tasks run in: every selection reads
// only its own sequence's scores.
#pragma once

#include <atomic>
#include <vector>

#include "kvcrush/cache/executor.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

// One workspace per executor worker.
class worker_workspaces {
 public:
  explicit worker_workspaces(index_t workers) {
    kvcrush::detail::require(workers >= 1, "worker_workspaces: need at least one worker");
    spaces_.resize(static_cast<std::size_t>(workers));
  }
  explicit worker_workspaces(const executor& ex) : worker_workspaces(ex.workers()) {}

  index_t size() const noexcept { return static_cast<index_t>(spaces_.size()); }
  workspace& operator[](index_t worker) { return spaces_[static_cast<std::size_t>(worker)]; }

  // workspace::reserve on every worker's workspace.
  void reserve(index_t heads, index_t tokens, index_t signature_heads = 0, index_t block_size = 1) {
    for (auto& ws : spaces_) ws.reserve(heads, tokens, signature_heads, block_size);
  }
  std::size_t allocations() const noexcept {
    std::size_t total = 0;
    for (const auto& ws : spaces_) total += ws.allocations();
    return total;
  }

 private:
  std::vector<workspace> spaces_;
};

// Calls f(sequence, layer, workspace&) for every sequence in [0, sequences)
// and layer in [0, layers) (or only `only_layer` when it is >= 0), in
// parallel on ex.
template <class F>
void for_each_sequence_layer(executor& ex, index_t sequences, index_t layers, worker_workspaces& spaces, F&& f,
                             index_t only_layer = -1) {
  using kvcrush::detail::require;
  require(spaces.size() >= ex.workers(), "batch: ", spaces.size(), " workspaces for ", ex.workers(), " workers");
  require(only_layer < layers, "batch: layer ", only_layer, " out of range [0, ", layers, ")");
  const index_t per_sequence = only_layer >= 0 ? 1 : layers;
  auto task = [&](index_t i, index_t worker) {
    const index_t sequence = i / per_sequence;
    const index_t layer = only_layer >= 0 ? only_layer : i % per_sequence;
    f(sequence, layer, spaces[worker]);
  };
  ex.run(sequences * per_sequence, task_ref(task));
}

// make_room(layer, new_tokens) for every controller and layer (or one
// layer, for engines that step layer by layer). Every controller must drive
// the same number of layers. Returns how many evictions ran.
template <class Controller>
index_t make_room_all(Controller* const* controllers, index_t count, index_t new_tokens, executor& ex,
                      worker_workspaces& spaces, index_t only_layer = -1) {
  if (count <= 0) return 0;
  const index_t layers = controllers[0]->layers();
  for (index_t i = 1; i < count; ++i) {
    kvcrush::detail::require(controllers[i]->layers() == layers, "make_room_all: controller ", i, " drives ",
                             controllers[i]->layers(), " layers, controller 0 drives ", layers);
  }
  std::atomic<index_t> evictions{0};
  for_each_sequence_layer(
      ex, count, layers, spaces,
      [&](index_t sequence, index_t layer, workspace& ws) {
        if (controllers[sequence]->make_room(layer, new_tokens, ws)) evictions.fetch_add(1, std::memory_order_relaxed);
      },
      only_layer);
  return evictions.load();
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

// A paged key/value cache in the vLLM style, with eviction.
//
// Memory is a pool of fixed-size blocks of block_size tokens, laid out
// [block][token][head][dim] for keys and for values (float, float16 or
// bfloat16 storage), plus the original position of every cached (token,
// head). A sequence owns a block table per layer: its tokens, in order, are
// slots 0..b-1 of table[0], then of table[1], and so on; every block but the
// last is full.
//
// Layers: one pool per layer (its own blocks, free list and reference
// counts), and one block table per (sequence, layer). Eviction budgets
// differ between layers (PyramidKV) and so do the tokens each layer keeps,
// so a table shared by all layers (what vLLM does without eviction) cannot
// describe them; separate pools also keep different layers from ever
// contending for a lock.
//
// Fork: the child shares every block of the parent (reference counts); a
// sequence that writes into a block someone else also references first
// copies it (copy on write): appending into a shared, partially filled last
// block, or compacting tokens into a shared block. Prefixes that eviction
// does not touch stay shared. This is vLLM's choice and the cheap one for
// beam search and parallel sampling, where forks share long prompts.
//
// Eviction:
//   evict_blocks: SPEC 4.4. Whole blocks leave the table and return to the
//     free list (when no other sequence holds them); nothing is copied.
//     Choose them with select_keep / select(...) with block_size = the
//     pool's block size; the partial last block must be kept.
//   evict_tokens: the kept tokens (shared keep set, or one uniform row per
//     KV head) are compacted, in position order, into the first
//     ceil(kept / b) blocks; the remaining blocks are freed.
// Every call checks its arguments (and reserves the blocks it needs) before
// it changes anything: an unknown sequence, a bad keep set or an exhausted
// pool throws std::invalid_argument and leaves pool and sequence untouched.
// No call allocates after construction.
//
// Threads: calls on distinct sequences, or on distinct layers of one
// sequence, may run concurrently. The only state they share, a layer's free
// list and reference counts, is guarded by one mutex per layer, held for
// bookkeeping only (never while tokens are copied). Calls on the same
// (sequence, layer) must not overlap, and neither may release/fork of a
// sequence with any other call on it.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

struct paged_cache_config {
  index_t layers = 1;
  index_t kv_heads = 1;
  index_t head_dim = 1;
  index_t block_size = 16;
  index_t blocks = 0;                   // pool size, per layer
  index_t max_sequences = 1;            // live at the same time
  index_t max_blocks_per_sequence = 0;  // block table capacity; 0: `blocks`
};

// Handle of a live sequence. Slots are reused, but a released handle never
// matches a later sequence (the generation counter is part of the value).
struct sequence_id {
  std::uint64_t value = ~std::uint64_t{0};
  friend bool operator==(sequence_id a, sequence_id b) noexcept { return a.value == b.value; }
  friend bool operator!=(sequence_id a, sequence_id b) noexcept { return a.value != b.value; }
};

// One block of a sequence, for attention kernels that walk the table.
template <class T>
struct paged_block {
  index_t block = 0;        // pool block id
  index_t first_token = 0;  // index in the sequence of its first token
  index_t tokens = 0;       // used slots (block_size except maybe the last block)
  kv_view<const T> keys;    // (heads, tokens, head_dim), token_head_dim
  kv_view<const T> values;
  matrix_view<const index_t> positions;  // (heads, tokens): original positions
};

inline namespace KVCRUSH_TARGET_NS {

template <class T>
class paged_cache {
  static_assert(is_storage_type_v<T> && !std::is_const_v<T>, "storage must be float, float16 or bfloat16");

 public:
  using storage_type = T;

  explicit paged_cache(const paged_cache_config& cfg) : cfg_(cfg) {
    using kvcrush::detail::require;
    require(cfg.layers >= 1 && cfg.kv_heads >= 1 && cfg.head_dim >= 1 && cfg.block_size >= 1,
            "paged_cache: layers, kv_heads, head_dim and block_size must be >= 1");
    require(cfg.blocks >= 0 && cfg.max_sequences >= 1, "paged_cache: blocks must be >= 0 and max_sequences >= 1");
    require(cfg.max_sequences < (std::int64_t{1} << 32), "paged_cache: too many sequences");
    if (cfg_.max_blocks_per_sequence <= 0) cfg_.max_blocks_per_sequence = cfg.blocks;
    const auto layers = static_cast<std::size_t>(cfg.layers);
    const auto blocks = static_cast<std::size_t>(cfg.blocks);
    const auto token_elements = static_cast<std::size_t>(cfg.block_size * cfg.kv_heads * cfg.head_dim);
    pools_.resize(layers);
    for (auto& p : pools_) {
      p.keys.assign(blocks * token_elements, T{});
      p.values.assign(blocks * token_elements, T{});
      p.positions.assign(blocks * static_cast<std::size_t>(cfg.block_size * cfg.kv_heads), 0);
      p.refs.assign(blocks, 0);
      p.free_list.resize(blocks);
      // Lowest ids on top of the stack, so that a fresh pool hands out 0, 1, 2...
      for (std::size_t i = 0; i < blocks; ++i) p.free_list[i] = static_cast<index_t>(blocks - 1 - i);
      p.free_count = cfg.blocks;
    }
    locks_ = std::make_unique<std::mutex[]>(layers);
    const auto seqs = static_cast<std::size_t>(cfg.max_sequences);
    const auto per_sequence = layers * static_cast<std::size_t>(cfg_.max_blocks_per_sequence);
    slots_.assign(seqs, {});
    tables_.assign(seqs * per_sequence, -1);
    scratch_.assign(seqs * per_sequence * 2, -1);
    lengths_.assign(seqs * layers, 0);
    appended_.assign(seqs * layers, 0);
    free_slots_.resize(seqs);
    for (std::size_t i = 0; i < seqs; ++i) free_slots_[i] = static_cast<index_t>(seqs - 1 - i);
    free_slot_count_ = cfg.max_sequences;
  }

  const paged_cache_config& config() const noexcept { return cfg_; }
  index_t layers() const noexcept { return cfg_.layers; }
  index_t kv_heads() const noexcept { return cfg_.kv_heads; }
  index_t head_dim() const noexcept { return cfg_.head_dim; }
  index_t block_size() const noexcept { return cfg_.block_size; }
  index_t blocks() const noexcept { return cfg_.blocks; }

  // ---- sequences -------------------------------------------------------

  [[nodiscard]] sequence_id create() {
    std::lock_guard<std::mutex> lock(registry_);
    const index_t slot = take_slot("create");
    for (index_t l = 0; l < cfg_.layers; ++l) {
      length_ref(slot, l) = 0;
      appended_ref(slot, l) = 0;
    }
    return id_of(slot);
  }

  // A new sequence holding the same tokens as `parent`, sharing its blocks.
  [[nodiscard]] sequence_id fork(sequence_id parent) {
    const index_t from = slot_of(parent, "fork");
    std::lock_guard<std::mutex> lock(registry_);
    const index_t slot = take_slot("fork");
    for (index_t l = 0; l < cfg_.layers; ++l) {
      std::lock_guard<std::mutex> layer_lock(locks_[static_cast<std::size_t>(l)]);
      pool& p = pools_[static_cast<std::size_t>(l)];
      const index_t* src = table_of(from, l);
      index_t* dst = table_of(slot, l);
      const index_t n = blocks_for(length_ref(from, l));
      for (index_t j = 0; j < n; ++j) {
        dst[j] = src[j];
        ++p.refs[static_cast<std::size_t>(src[j])];
      }
      length_ref(slot, l) = length_ref(from, l);
      appended_ref(slot, l) = appended_ref(from, l);
    }
    return id_of(slot);
  }

  // Returns every block of the sequence (those no other sequence holds go
  // back to the free lists); the handle becomes invalid.
  void release(sequence_id id) {
    const index_t slot = slot_of(id, "release");
    for (index_t l = 0; l < cfg_.layers; ++l) {
      std::lock_guard<std::mutex> layer_lock(locks_[static_cast<std::size_t>(l)]);
      const index_t* table = table_of(slot, l);
      const index_t n = blocks_for(length_ref(slot, l));
      for (index_t j = 0; j < n; ++j) unref(l, table[j]);
      length_ref(slot, l) = 0;
    }
    std::lock_guard<std::mutex> lock(registry_);
    slots_[static_cast<std::size_t>(slot)].live = false;
    ++slots_[static_cast<std::size_t>(slot)].generation;
    free_slots_[static_cast<std::size_t>(free_slot_count_++)] = slot;
  }

  bool contains(sequence_id id) const noexcept {
    const std::uint64_t slot = id.value & 0xffffffffu;
    if (slot >= static_cast<std::uint64_t>(cfg_.max_sequences)) return false;
    const auto& s = slots_[static_cast<std::size_t>(slot)];
    return s.live && s.generation == static_cast<std::uint32_t>(id.value >> 32);
  }

  index_t live_sequences() const {
    std::lock_guard<std::mutex> lock(registry_);
    return cfg_.max_sequences - free_slot_count_;
  }

  // Tokens the sequence holds in a layer.
  index_t length(sequence_id id, index_t layer) const {
    return length_ref(slot_of(id, "length"), checked_layer(layer, "length"));
  }
  // Tokens ever appended to the sequence's layer (the next original position).
  index_t appended(sequence_id id, index_t layer) const {
    return appended_ref(slot_of(id, "appended"), checked_layer(layer, "appended"));
  }
  // Pool block ids of the sequence's tokens, in order.
  vector_view<const index_t> block_table(sequence_id id, index_t layer) const {
    const index_t slot = slot_of(id, "block_table");
    checked_layer(layer, "block_table");
    return vector_view<const index_t>(table_of(slot, layer), {blocks_for(length_ref(slot, layer))}, {1});
  }

  // ---- tokens ----------------------------------------------------------

  // Appends keys.tokens() tokens (K and V rows of every KV head of `layer`,
  // any layout and storage) at the end of the sequence. positions: their
  // original positions (default: continuing the count of appended tokens).
  template <class U>
  void append(sequence_id id, index_t layer, kv_view<const U> keys, kv_view<const U> values,
              vector_view<const index_t> positions = {}) {
    using kvcrush::detail::require;
    const index_t slot = slot_of(id, "append");
    checked_layer(layer, "append");
    impl::check_new_rows(keys, values, cfg_.kv_heads, cfg_.head_dim, "paged_cache::append");
    const index_t n = keys.tokens();
    require(positions.extent(0) == 0 || positions.extent(0) == n, "paged_cache::append: ", positions.extent(0),
            " positions for ", n, " tokens");
    index_t& len = length_ref(slot, layer);
    const index_t b = cfg_.block_size;
    const index_t old_blocks = blocks_for(len), new_blocks = blocks_for(len + n);
    require(new_blocks <= cfg_.max_blocks_per_sequence, "paged_cache::append: ", len + n, " tokens need ",
            new_blocks, " blocks, the block table holds ", cfg_.max_blocks_per_sequence);
    index_t* table = table_of(slot, layer);
    pool& p = pools_[static_cast<std::size_t>(layer)];
    const bool fills_last = len % b != 0 && n > 0;
    index_t shared_last = -1;  // a block we copy before writing into it
    {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
      const bool copy_last = fills_last && p.refs[static_cast<std::size_t>(table[old_blocks - 1])] > 1;
      const index_t needed = (new_blocks - old_blocks) + (copy_last ? 1 : 0);
      require(needed <= p.free_count, "paged_cache::append: layer ", layer, " pool exhausted: ", n,
              " token(s) need ", needed, " free block(s), ", p.free_count, " left");
      for (index_t j = old_blocks; j < new_blocks; ++j) table[j] = take_block(p);
      if (copy_last) {
        shared_last = table[old_blocks - 1];
        table[old_blocks - 1] = take_block(p);
      }
    }
    if (shared_last >= 0) copy_slots(p, shared_last, table[old_blocks - 1], 0, len % b);
    const index_t d = cfg_.head_dim, heads = cfg_.kv_heads;
    const index_t first_position = appended_ref(slot, layer);
    for (index_t t = 0; t < n; ++t) {
      const index_t s = len + t;
      const index_t block = table[s / b], offset = s % b;
      T* k = key_row(p, block, offset, 0);
      T* v = value_row(p, block, offset, 0);
      index_t* pos = position_row(p, block, offset);
      const index_t position = positions.extent(0) ? positions[t] : first_position + t;
      for (index_t h = 0; h < heads; ++h) {
        copy_row(keys.row(h, t), k + h * d, d);
        copy_row(values.row(h, t), v + h * d, d);
        pos[h] = position;
      }
    }
    len += n;
    appended_ref(slot, layer) += n;
    if (shared_last >= 0) {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
      unref(layer, shared_last);
    }
  }
  template <class U>
  void append(sequence_id id, index_t layer, kv_view<U> keys, kv_view<U> values,
              vector_view<const index_t> positions = {}) {
    append(id, layer, kv_view<const U>(keys), kv_view<const U>(values), positions);
  }

  // Token-granular eviction (see the header comment). keep: indices into
  // the sequence's tokens in this layer; one shared row, or one row per KV
  // head with the same count (each head then keeps its own tokens, and the
  // positions record which).
  void evict_tokens(sequence_id id, index_t layer, const keep_view& keep) {
    using kvcrush::detail::require;
    const index_t slot = slot_of(id, "evict_tokens");
    checked_layer(layer, "evict_tokens");
    index_t& len = length_ref(slot, layer);
    validate_keep(keep, cfg_.kv_heads, len, "paged_cache::evict_tokens");
    require(keep_is_uniform(keep), "paged_cache::evict_tokens: per-head keep sets must all hold the same number of "
            "tokens (the paged layout shares token slots between heads)");
    const index_t b = cfg_.block_size;
    const index_t new_len = keep.count(0);
    const index_t old_blocks = blocks_for(len), new_blocks = blocks_for(new_len);
    // Tokens before first_changed keep their slot: their blocks stay as they
    // are (and stay shared after a fork).
    index_t first_changed = new_len;
    for (index_t r = 0; r < keep.row_count(); ++r) {
      for (index_t i = 0; i < first_changed; ++i) {
        if (keep.at(r, i) != i) {
          first_changed = i;
          break;
        }
      }
    }
    const index_t first_block = first_changed / b;
    index_t* table = table_of(slot, layer);
    index_t* copies = scratch_of(slot, layer);  // pairs (table index, fresh block), then (., old block)
    pool& p = pools_[static_cast<std::size_t>(layer)];
    index_t copy_count = 0;
    {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
      index_t shared = 0;
      for (index_t j = first_block; j < new_blocks; ++j) shared += p.refs[static_cast<std::size_t>(table[j])] > 1;
      require(shared <= p.free_count, "paged_cache::evict_tokens: layer ", layer, " pool exhausted: copying ", shared,
              " shared block(s) before compacting them needs as many free blocks, ", p.free_count, " left");
      for (index_t j = first_block; j < new_blocks; ++j) {
        if (p.refs[static_cast<std::size_t>(table[j])] > 1) {
          copies[2 * copy_count] = j;
          copies[2 * copy_count + 1] = take_block(p);
          ++copy_count;
        }
      }
    }
    // Move the tokens, block by block of destination. A source token is at
    // or after its destination, so it lies in the destination block (read
    // from the block's old id when that block is being copied) or in a later
    // block whose table entry has not changed yet.
    const index_t heads = cfg_.kv_heads, d = cfg_.head_dim;
    const auto token_bytes = static_cast<std::size_t>(heads * d) * sizeof(T);
    const auto row_bytes = static_cast<std::size_t>(d) * sizeof(T);
    index_t next_copy = 0;
    for (index_t j = first_block; j < new_blocks; ++j) {
      const index_t old_id = table[j];
      if (next_copy < copy_count && copies[2 * next_copy] == j) {
        const index_t fresh = copies[2 * next_copy + 1];
        if (j == first_block) copy_slots(p, old_id, fresh, 0, first_changed - j * b);
        table[j] = fresh;
        copies[2 * next_copy + 1] = old_id;  // released below
        ++next_copy;
      }
      const index_t dst_block = table[j];
      const index_t begin = j * b > first_changed ? j * b : first_changed;
      const index_t end = (j + 1) * b < new_len ? (j + 1) * b : new_len;
      auto source_block = [&](index_t s) { return s / b == j ? old_id : table[s / b]; };
      if (keep.is_shared()) {
        for (index_t i = begin; i < end; ++i) {
          const index_t s = keep.at(0, i);
          const index_t src_block = source_block(s);
          if (src_block == dst_block && s % b == i % b) continue;
          impl::move_bytes(key_row(p, dst_block, i % b, 0), key_row(p, src_block, s % b, 0), token_bytes);
          impl::move_bytes(value_row(p, dst_block, i % b, 0), value_row(p, src_block, s % b, 0), token_bytes);
          impl::move_bytes(position_row(p, dst_block, i % b), position_row(p, src_block, s % b),
                           static_cast<std::size_t>(heads) * sizeof(index_t));
        }
      } else {
        for (index_t i = begin; i < end; ++i) {
          for (index_t h = 0; h < heads; ++h) {
            const index_t s = keep.at(h, i);
            const index_t src_block = source_block(s);
            if (src_block == dst_block && s % b == i % b) continue;
            impl::move_bytes(key_row(p, dst_block, i % b, h), key_row(p, src_block, s % b, h), row_bytes);
            impl::move_bytes(value_row(p, dst_block, i % b, h), value_row(p, src_block, s % b, h), row_bytes);
            position_row(p, dst_block, i % b)[h] = position_row(p, src_block, s % b)[h];
          }
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
      for (index_t k = 0; k < copy_count; ++k) unref(layer, copies[2 * k + 1]);
      for (index_t j = new_blocks; j < old_blocks; ++j) unref(layer, table[j]);
    }
    len = new_len;
  }

  // Block-granular eviction (SPEC 4.4): kept_blocks holds the sorted
  // indices (into the sequence's block table) of the blocks to keep; the
  // partial last block, if any, must be among them.
  void evict_blocks(sequence_id id, index_t layer, vector_view<const index_t> kept_blocks) {
    using kvcrush::detail::require;
    const index_t slot = slot_of(id, "evict_blocks");
    checked_layer(layer, "evict_blocks");
    index_t& len = length_ref(slot, layer);
    const index_t b = cfg_.block_size;
    const index_t old_blocks = blocks_for(len);
    validate_keep(keep_view::shared(kept_blocks), 1, old_blocks, "paged_cache::evict_blocks");
    const index_t kept = kept_blocks.extent(0);
    const bool partial = len % b != 0;
    require(!partial || (kept > 0 && kept_blocks[kept - 1] == old_blocks - 1),
            "paged_cache::evict_blocks: the partial last block (", old_blocks - 1,
            ") must be kept (SPEC 4.4); every other block is full");
    index_t* table = table_of(slot, layer);
    index_t* dropped = scratch_of(slot, layer);
    index_t dropped_count = 0;
    index_t k = 0;
    for (index_t j = 0; j < old_blocks; ++j) {
      if (k < kept && kept_blocks[k] == j) {
        table[k++] = table[j];
      } else {
        dropped[dropped_count++] = table[j];
      }
    }
    {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
      for (index_t i = 0; i < dropped_count; ++i) unref(layer, dropped[i]);
    }
    len = partial ? (kept - 1) * b + len % b : kept * b;
  }

  // ---- reading ---------------------------------------------------------

  // Calls f(const paged_block<T>&) for each block of the sequence, in order.
  template <class F>
  void for_each_block(sequence_id id, index_t layer, F&& f) const {
    const index_t slot = slot_of(id, "for_each_block");
    checked_layer(layer, "for_each_block");
    const index_t len = length_ref(slot, layer);
    const index_t* table = table_of(slot, layer);
    const index_t b = cfg_.block_size;
    for (index_t j = 0; j * b < len; ++j) {
      const index_t count = len - j * b < b ? len - j * b : b;
      f(block_view(layer, table[j], j * b, count));
    }
  }

  // Copies the sequence's tokens of a layer into caller-owned views
  // (kv_heads heads, >= length tokens, head_dim dims; any layout and
  // storage) and, optionally, their positions ((kv_heads, >= length)).
  // Returns the number of tokens copied.
  template <class U>
  index_t gather(sequence_id id, index_t layer, kv_view<U> keys, kv_view<U> values,
                 matrix_view<index_t> positions = {}) const {
    using kvcrush::detail::require;
    const index_t slot = slot_of(id, "gather");
    checked_layer(layer, "gather");
    const index_t len = length_ref(slot, layer);
    const index_t heads = cfg_.kv_heads, d = cfg_.head_dim;
    for (const kv_view<U>* v : {&keys, &values}) {
      require(v->heads() == heads && v->head_dim() == d && v->tokens() >= len, "paged_cache::gather: output is (",
              v->heads(), " heads, ", v->tokens(), " tokens, ", v->head_dim(), " dims), needs (", heads, ", >= ", len,
              ", ", d, ")");
    }
    require(positions.extent(0) == 0 || (positions.extent(0) == heads && positions.extent(1) >= len),
            "paged_cache::gather: positions must be (", heads, ", >= ", len, ")");
    const pool& p = pools_[static_cast<std::size_t>(layer)];
    const index_t* table = table_of(slot, layer);
    const index_t b = cfg_.block_size;
    for (index_t t = 0; t < len; ++t) {
      const index_t block = table[t / b], offset = t % b;
      for (index_t h = 0; h < heads; ++h) {
        copy_row(key_row(p, block, offset, h), keys.row(h, t), d);
        copy_row(value_row(p, block, offset, h), values.row(h, t), d);
        if (positions.extent(0)) positions(h, t) = position_row(p, block, offset)[h];
      }
    }
    return len;
  }

  // ---- the pool --------------------------------------------------------

  index_t free_blocks(index_t layer) const {
    std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(checked_layer(layer, "free_blocks"))]);
    return pools_[static_cast<std::size_t>(layer)].free_count;
  }
  // Number of block tables that hold the block (0: free).
  std::int32_t refcount(index_t layer, index_t block) const {
    checked_layer(layer, "refcount");
    kvcrush::detail::require(block >= 0 && block < cfg_.blocks, "paged_cache::refcount: block ", block,
                             " out of range");
    std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(layer)]);
    return pools_[static_cast<std::size_t>(layer)].refs[static_cast<std::size_t>(block)];
  }
  // The free block ids of a layer (valid until the next call that changes
  // the pool).
  vector_view<const index_t> free_list(index_t layer) const {
    const pool& p = pools_[static_cast<std::size_t>(checked_layer(layer, "free_list"))];
    return vector_view<const index_t>(p.free_list.data(), {p.free_count}, {1});
  }
  // A whole block (all block_size slots), whatever holds it.
  paged_block<T> block(index_t layer, index_t block_id) const {
    checked_layer(layer, "block");
    kvcrush::detail::require(block_id >= 0 && block_id < cfg_.blocks, "paged_cache::block: block ", block_id,
                             " out of range");
    return block_view(layer, block_id, 0, cfg_.block_size);
  }

  // Checks the pool against the block tables of the live sequences: every
  // table entry a valid block, every reference count equal to the number of
  // table entries naming the block, the free list exactly the unreferenced
  // blocks, each once. Throws std::logic_error. Allocates: for tests and
  // debugging, not for the hot path.
  void check_invariants() const {
    for (index_t l = 0; l < cfg_.layers; ++l) {
      std::lock_guard<std::mutex> lock(locks_[static_cast<std::size_t>(l)]);
      const pool& p = pools_[static_cast<std::size_t>(l)];
      std::vector<std::int32_t> counted(static_cast<std::size_t>(cfg_.blocks), 0);
      for (index_t s = 0; s < cfg_.max_sequences; ++s) {
        if (!slots_[static_cast<std::size_t>(s)].live) continue;
        const index_t len = length_ref(s, l);
        const index_t n = blocks_for(len);
        invariant(n <= cfg_.max_blocks_per_sequence, "a sequence holds more blocks than its table");
        const index_t* table = table_of(s, l);
        for (index_t j = 0; j < n; ++j) {
          invariant(table[j] >= 0 && table[j] < cfg_.blocks, "a block table names a block outside the pool");
          ++counted[static_cast<std::size_t>(table[j])];
        }
      }
      std::vector<char> in_free_list(static_cast<std::size_t>(cfg_.blocks), 0);
      invariant(p.free_count >= 0 && p.free_count <= cfg_.blocks, "free count out of range");
      for (index_t i = 0; i < p.free_count; ++i) {
        const index_t block = p.free_list[static_cast<std::size_t>(i)];
        invariant(block >= 0 && block < cfg_.blocks, "the free list names a block outside the pool");
        invariant(!in_free_list[static_cast<std::size_t>(block)], "a block is twice in the free list");
        in_free_list[static_cast<std::size_t>(block)] = 1;
      }
      for (index_t block = 0; block < cfg_.blocks; ++block) {
        const auto i = static_cast<std::size_t>(block);
        invariant(p.refs[i] == counted[i], "a reference count differs from the number of tables holding the block");
        invariant((p.refs[i] == 0) == (in_free_list[i] != 0), "a block is leaked, or free while in use");
      }
    }
  }

 private:
  struct pool {
    std::vector<T> keys, values;     // [block][slot][head][dim]
    std::vector<index_t> positions;  // [block][slot][head]
    std::vector<std::int32_t> refs;  // tables holding each block
    std::vector<index_t> free_list;  // stack of free block ids
    index_t free_count = 0;
  };
  struct slot_state {
    bool live = false;
    std::uint32_t generation = 0;
  };

  static void invariant(bool ok, const char* what) {
    if (!ok) throw std::logic_error(std::string("kvcrush: paged_cache invariant broken: ") + what);
  }

  index_t blocks_for(index_t tokens) const noexcept { return (tokens + cfg_.block_size - 1) / cfg_.block_size; }

  index_t checked_layer(index_t layer, const char* what) const {
    kvcrush::detail::require(layer >= 0 && layer < cfg_.layers, "paged_cache::", what, ": layer ", layer,
                             " out of range [0, ", cfg_.layers, ")");
    return layer;
  }

  index_t slot_of(sequence_id id, const char* what) const {
    kvcrush::detail::require(contains(id), "paged_cache::", what, ": unknown sequence (never created, or released)");
    return static_cast<index_t>(id.value & 0xffffffffu);
  }

  sequence_id id_of(index_t slot) const noexcept {
    return {(static_cast<std::uint64_t>(slots_[static_cast<std::size_t>(slot)].generation) << 32) |
            static_cast<std::uint64_t>(slot)};
  }

  // Under registry_.
  index_t take_slot(const char* what) {
    kvcrush::detail::require(free_slot_count_ > 0, "paged_cache::", what, ": all ", cfg_.max_sequences,
                             " sequence slots are live");
    const index_t slot = free_slots_[static_cast<std::size_t>(--free_slot_count_)];
    slots_[static_cast<std::size_t>(slot)].live = true;
    return slot;
  }

  // Under the layer's lock.
  static index_t take_block(pool& p) noexcept {
    const index_t block = p.free_list[static_cast<std::size_t>(--p.free_count)];
    p.refs[static_cast<std::size_t>(block)] = 1;
    return block;
  }
  void unref(index_t layer, index_t block) noexcept {
    pool& p = pools_[static_cast<std::size_t>(layer)];
    if (--p.refs[static_cast<std::size_t>(block)] == 0) p.free_list[static_cast<std::size_t>(p.free_count++)] = block;
  }

  std::size_t per_sequence() const noexcept {
    return static_cast<std::size_t>(cfg_.layers) * static_cast<std::size_t>(cfg_.max_blocks_per_sequence);
  }
  index_t* table_of(index_t slot, index_t layer) noexcept {
    return tables_.data() + static_cast<std::size_t>(slot) * per_sequence() +
           static_cast<std::size_t>(layer * cfg_.max_blocks_per_sequence);
  }
  const index_t* table_of(index_t slot, index_t layer) const noexcept {
    return const_cast<paged_cache*>(this)->table_of(slot, layer);
  }
  index_t* scratch_of(index_t slot, index_t layer) noexcept {
    return scratch_.data() + 2 * (static_cast<std::size_t>(slot) * per_sequence() +
                                  static_cast<std::size_t>(layer * cfg_.max_blocks_per_sequence));
  }
  index_t& length_ref(index_t slot, index_t layer) noexcept {
    return lengths_[static_cast<std::size_t>(slot * cfg_.layers + layer)];
  }
  index_t length_ref(index_t slot, index_t layer) const noexcept {
    return lengths_[static_cast<std::size_t>(slot * cfg_.layers + layer)];
  }
  index_t& appended_ref(index_t slot, index_t layer) noexcept {
    return appended_[static_cast<std::size_t>(slot * cfg_.layers + layer)];
  }
  index_t appended_ref(index_t slot, index_t layer) const noexcept {
    return appended_[static_cast<std::size_t>(slot * cfg_.layers + layer)];
  }

  std::size_t token_offset(index_t block, index_t offset) const noexcept {
    return static_cast<std::size_t>(block * cfg_.block_size + offset);
  }
  T* key_row(pool& p, index_t block, index_t offset, index_t head) const noexcept {
    return p.keys.data() + (token_offset(block, offset) * static_cast<std::size_t>(cfg_.kv_heads) +
                            static_cast<std::size_t>(head)) * static_cast<std::size_t>(cfg_.head_dim);
  }
  T* value_row(pool& p, index_t block, index_t offset, index_t head) const noexcept {
    return p.values.data() + (token_offset(block, offset) * static_cast<std::size_t>(cfg_.kv_heads) +
                              static_cast<std::size_t>(head)) * static_cast<std::size_t>(cfg_.head_dim);
  }
  const T* key_row(const pool& p, index_t block, index_t offset, index_t head) const noexcept {
    return key_row(const_cast<pool&>(p), block, offset, head);
  }
  const T* value_row(const pool& p, index_t block, index_t offset, index_t head) const noexcept {
    return value_row(const_cast<pool&>(p), block, offset, head);
  }
  index_t* position_row(pool& p, index_t block, index_t offset) const noexcept {
    return p.positions.data() + token_offset(block, offset) * static_cast<std::size_t>(cfg_.kv_heads);
  }
  const index_t* position_row(const pool& p, index_t block, index_t offset) const noexcept {
    return position_row(const_cast<pool&>(p), block, offset);
  }

  // Slots [0, count) of block `from` into block `to` (keys, values, positions).
  void copy_slots(pool& p, index_t from, index_t to, index_t first, index_t count) const noexcept {
    if (count <= 0) return;
    const auto tokens = static_cast<std::size_t>(count);
    const auto token_elements = static_cast<std::size_t>(cfg_.kv_heads * cfg_.head_dim);
    std::memcpy(key_row(p, to, first, 0), key_row(p, from, first, 0), tokens * token_elements * sizeof(T));
    std::memcpy(value_row(p, to, first, 0), value_row(p, from, first, 0), tokens * token_elements * sizeof(T));
    std::memcpy(position_row(p, to, first), position_row(p, from, first),
                tokens * static_cast<std::size_t>(cfg_.kv_heads) * sizeof(index_t));
  }

  paged_block<T> block_view(index_t layer, index_t block_id, index_t first_token, index_t count) const {
    const pool& p = pools_[static_cast<std::size_t>(layer)];
    paged_block<T> out;
    out.block = block_id;
    out.first_token = first_token;
    out.tokens = count;
    out.keys = make_token_head_dim(key_row(p, block_id, 0, 0), count, cfg_.kv_heads, cfg_.head_dim);
    out.values = make_token_head_dim(value_row(p, block_id, 0, 0), count, cfg_.kv_heads, cfg_.head_dim);
    out.positions = matrix_view<const index_t>(position_row(p, block_id, 0), {cfg_.kv_heads, count}, {1, cfg_.kv_heads});
    return out;
  }

  paged_cache_config cfg_;
  std::vector<pool> pools_;
  mutable std::unique_ptr<std::mutex[]> locks_;
  mutable std::mutex registry_;
  std::vector<slot_state> slots_;
  std::vector<index_t> tables_;   // [slot][layer][max_blocks_per_sequence]
  std::vector<index_t> scratch_;  // [slot][layer][2 * max_blocks_per_sequence]: blocks in flight
  std::vector<index_t> lengths_, appended_;
  std::vector<index_t> free_slots_;
  index_t free_slot_count_ = 0;
};

// One sequence of a paged cache, as the eviction controller drives it.
template <class T>
class paged_sequence {
 public:
  using storage_type = T;
  paged_sequence(paged_cache<T>& cache, sequence_id id) : cache_(&cache), id_(id) {
    kvcrush::detail::require(cache.contains(id), "paged_sequence: unknown sequence");
  }
  paged_cache<T>& cache() const noexcept { return *cache_; }
  sequence_id id() const noexcept { return id_; }
  index_t layers() const noexcept { return cache_->layers(); }
  index_t kv_heads() const noexcept { return cache_->kv_heads(); }
  index_t block_size() const noexcept { return cache_->block_size(); }
  index_t length(index_t layer) const { return cache_->length(id_, layer); }
  void evict_tokens(index_t layer, const keep_view& keep) { cache_->evict_tokens(id_, layer, keep); }
  void evict_blocks(index_t layer, vector_view<const index_t> blocks, index_t block_size) {
    kvcrush::detail::require(block_size == cache_->block_size(), "paged_sequence::evict_blocks: selection block size ",
                             block_size, " differs from the pool's ", cache_->block_size());
    cache_->evict_blocks(id_, layer, blocks);
  }

 private:
  paged_cache<T>* cache_;
  sequence_id id_;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

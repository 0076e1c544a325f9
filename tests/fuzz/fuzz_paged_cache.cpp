// Sequences of paged-cache operations (append, evict tokens, evict blocks,
// fork with copy on write, release) on a fuzzer-sized pool, checked after
// every operation
//  - differentially: every live sequence holds, layer by layer, exactly the
//    keys, values and positions of a contiguous_cache that received the
//    same operations (a fork copies it);
//  - against the pool invariants, recounted here from the public block
//    tables: each block's reference count is the number of tables naming
//    it, the free list holds exactly the unreferenced blocks, once each (no
//    block leaked, none shared without a reference); and check_invariants();
//  - on refusal: a call may only throw std::invalid_argument for a reason
//    the model can see (bad keep set, pool or table exhausted, no free
//    slot), and must then leave pool and sequence as they were.
// Releasing everything at the end must return every block.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/paged_cache.hpp"

namespace {

using kvcrush::index_t;
using kvcrush::sequence_id;

struct sequence {
  sequence_id id;
  kvcrush::contiguous_cache<float> model;
};

struct harness {
  kvcrush::paged_cache_config cfg;
  kvcrush::paged_cache<float> cache;
  std::vector<sequence> live;
  index_t capacity;  // tokens a block table can hold
  float next_value = 1.0f;

  explicit harness(const kvcrush::paged_cache_config& c)
      : cfg(c),
        cache(c),
        capacity((c.max_blocks_per_sequence > 0 ? c.max_blocks_per_sequence : c.blocks) * c.block_size) {}

  index_t blocks_for(index_t tokens) const { return (tokens + cfg.block_size - 1) / cfg.block_size; }

  void check_sequence(const sequence& s) const {
    const index_t heads = cfg.kv_heads, d = cfg.head_dim;
    for (index_t l = 0; l < cfg.layers; ++l) {
      const index_t len = s.model.length(l);
      KVCRUSH_FUZZ_CHECK(cache.length(s.id, l) == len);
      KVCRUSH_FUZZ_CHECK(cache.appended(s.id, l) == s.model.appended(l));
      KVCRUSH_FUZZ_CHECK(cache.block_table(s.id, l).extent(0) == blocks_for(len));
      std::vector<float> k(static_cast<std::size_t>(heads * len * d)), v(k.size());
      std::vector<index_t> p(static_cast<std::size_t>(heads * len));
      cache.gather(s.id, l, kvcrush::make_head_token_dim(k.data(), heads, len, d),
                   kvcrush::make_head_token_dim(v.data(), heads, len, d),
                   kvcrush::make_matrix_view(p.data(), heads, len));
      const auto mk = s.model.keys(l), mv = s.model.values(l);
      const auto mp = s.model.positions(l);
      for (index_t h = 0; h < heads; ++h) {
        for (index_t t = 0; t < len; ++t) {
          KVCRUSH_FUZZ_CHECK(p[static_cast<std::size_t>(h * len + t)] == mp(h, t));
          for (index_t i = 0; i < d; ++i) {
            KVCRUSH_FUZZ_CHECK(k[static_cast<std::size_t>((h * len + t) * d + i)] == mk.row(h, t)[i]);
            KVCRUSH_FUZZ_CHECK(v[static_cast<std::size_t>((h * len + t) * d + i)] == mv.row(h, t)[i]);
          }
        }
      }
    }
  }

  void check_all() const {
    cache.check_invariants();
    KVCRUSH_FUZZ_CHECK(cache.live_sequences() == static_cast<index_t>(live.size()));
    for (index_t l = 0; l < cfg.layers; ++l) {
      std::vector<std::int32_t> counted(static_cast<std::size_t>(cfg.blocks), 0);
      for (const sequence& s : live) {
        const auto table = cache.block_table(s.id, l);
        for (index_t j = 0; j < table.extent(0); ++j) {
          KVCRUSH_FUZZ_CHECK(table[j] >= 0 && table[j] < cfg.blocks);
          ++counted[static_cast<std::size_t>(table[j])];
        }
      }
      std::vector<int> free_seen(static_cast<std::size_t>(cfg.blocks), 0);
      const auto free = cache.free_list(l);
      KVCRUSH_FUZZ_CHECK(free.extent(0) == cache.free_blocks(l));
      for (index_t i = 0; i < free.extent(0); ++i) {
        KVCRUSH_FUZZ_CHECK(free[i] >= 0 && free[i] < cfg.blocks);
        KVCRUSH_FUZZ_CHECK(free_seen[static_cast<std::size_t>(free[i])]++ == 0);
      }
      for (index_t b = 0; b < cfg.blocks; ++b) {
        const auto i = static_cast<std::size_t>(b);
        KVCRUSH_FUZZ_CHECK(cache.refcount(l, b) == counted[i]);
        KVCRUSH_FUZZ_CHECK((counted[i] == 0) == (free_seen[i] == 1));
      }
    }
    for (const sequence& s : live) check_sequence(s);
  }

  // How many blocks of the sequence's table in [first, end) others share.
  index_t shared_blocks(const sequence& s, index_t layer, index_t first, index_t end) const {
    const auto table = cache.block_table(s.id, layer);
    index_t n = 0;
    for (index_t j = first; j < end && j < table.extent(0); ++j) n += cache.refcount(layer, table[j]) > 1;
    return n;
  }

  void create() {
    const bool room = static_cast<index_t>(live.size()) < cfg.max_sequences;
    try {
      const sequence_id id = cache.create();
      KVCRUSH_FUZZ_CHECK(room);
      live.push_back({id, kvcrush::contiguous_cache<float>(cfg.layers, cfg.kv_heads, cfg.head_dim, capacity)});
    } catch (const std::invalid_argument&) {
      KVCRUSH_FUZZ_CHECK(!room);
    }
  }

  void fork(std::size_t parent) {
    const bool room = static_cast<index_t>(live.size()) < cfg.max_sequences;
    try {
      const sequence_id id = cache.fork(live[parent].id);
      KVCRUSH_FUZZ_CHECK(room);
      live.push_back({id, live[parent].model});
    } catch (const std::invalid_argument&) {
      KVCRUSH_FUZZ_CHECK(!room);
    }
  }

  void release(std::size_t which) {
    const sequence_id id = live[which].id;
    cache.release(id);
    live.erase(live.begin() + static_cast<std::ptrdiff_t>(which));
    // A released handle is dead for good, even once its slot is reused.
    KVCRUSH_FUZZ_CHECK(!cache.contains(id));
    bool threw = false;
    try {
      (void)cache.length(id, 0);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    KVCRUSH_FUZZ_CHECK(threw);
  }

  void append(kvcrush_fuzz::reader& in, std::size_t which) {
    sequence& s = live[which];
    const index_t layer = in.in_range(0, cfg.layers - 1);
    const index_t n = in.in_range(0, 2 * cfg.block_size + 1);
    const index_t heads = cfg.kv_heads, d = cfg.head_dim;
    std::vector<float> k(static_cast<std::size_t>(heads * n * d)), v(k.size());
    // Distinct values, so that a token or head in the wrong place shows.
    for (auto& x : k) x = next_value++;
    for (auto& x : v) x = -(next_value++);
    std::vector<index_t> positions;
    if (in.byte() % 4 == 0) {
      for (index_t t = 0; t < n; ++t) positions.push_back(in.in_range(-2, 1000));
    }
    const kvcrush::vector_view<const index_t> pos(positions.data(), {static_cast<index_t>(positions.size())}, {1});
    const index_t len = s.model.length(layer);
    const index_t old_blocks = blocks_for(len), new_blocks = blocks_for(len + n);
    const bool copy_last = len % cfg.block_size != 0 && n > 0 && shared_blocks(s, layer, old_blocks - 1, old_blocks) > 0;
    const index_t needed = new_blocks - old_blocks + (copy_last ? 1 : 0);
    const index_t table_blocks = cfg.max_blocks_per_sequence > 0 ? cfg.max_blocks_per_sequence : cfg.blocks;
    const bool fits = new_blocks <= table_blocks && needed <= cache.free_blocks(layer);
    const auto keys = kvcrush::make_head_token_dim<const float>(k.data(), heads, n, d);
    const auto values = kvcrush::make_head_token_dim<const float>(v.data(), heads, n, d);
    try {
      cache.append(s.id, layer, keys, values, pos);
      KVCRUSH_FUZZ_CHECK(fits);
      s.model.append(layer, keys, values, pos);
    } catch (const std::invalid_argument&) {
      KVCRUSH_FUZZ_CHECK(!fits);
    }
  }

  // A sorted subset of [0, n): each element kept with a fuzzed bit.
  static std::vector<index_t> subset(kvcrush_fuzz::reader& in, index_t n) {
    std::vector<index_t> out;
    std::uint8_t bits = 0;
    for (index_t i = 0; i < n; ++i) {
      if (i % 8 == 0) bits = in.byte();
      if (bits & (1u << (i % 8))) out.push_back(i);
    }
    return out;
  }

  void evict_tokens(kvcrush_fuzz::reader& in, std::size_t which) {
    sequence& s = live[which];
    const index_t layer = in.in_range(0, cfg.layers - 1);
    const index_t len = s.model.length(layer);
    const bool per_head = in.flag();
    const index_t rows = per_head ? cfg.kv_heads : 1;
    std::vector<std::vector<index_t>> keep(static_cast<std::size_t>(rows));
    for (auto& row : keep) row = subset(in, len);
    // Per-head rows must hold as many tokens each; trim to the shortest
    // unless the input asks for a ragged (refused) set.
    const bool ragged = in.byte() == 255;
    std::size_t count = keep[0].size();
    for (const auto& row : keep) count = std::min(count, row.size());
    if (!ragged) {
      for (auto& row : keep) row.resize(count);
    }
    const bool corrupt = in.byte() == 254 && count > 0;  // out of order or out of range
    if (corrupt) keep[0][0] = keep[0].back() + (in.flag() ? 0 : len);
    std::size_t width = 0;
    for (const auto& row : keep) width = std::max(width, row.size());
    std::vector<index_t> flat(static_cast<std::size_t>(rows) * width, 0);
    std::vector<index_t> counts;
    for (index_t r = 0; r < rows; ++r) {
      std::copy(keep[r].begin(), keep[r].end(), flat.begin() + static_cast<std::ptrdiff_t>(r * width));
      counts.push_back(static_cast<index_t>(keep[r].size()));
    }
    const auto matrix = kvcrush::make_matrix_view<const index_t>(flat.data(), rows, static_cast<index_t>(width));
    const kvcrush::keep_view view =
        ragged ? kvcrush::keep_view::ragged(matrix, kvcrush::vector_view<const index_t>(counts.data(), {rows}, {1}))
               : (per_head ? kvcrush::keep_view::per_head(matrix)
                           : kvcrush::keep_view::shared(flat.data(), static_cast<index_t>(width)));
    bool uniform = true;
    for (const auto& row : keep) uniform = uniform && row.size() == keep[0].size();
    const bool valid = uniform && !(corrupt && (count > 1 || keep[0][0] >= len));
    // Compacting into blocks others share first copies them.
    const index_t could_copy = shared_blocks(s, layer, 0, blocks_for(static_cast<index_t>(count)));
    try {
      cache.evict_tokens(s.id, layer, view);
      KVCRUSH_FUZZ_CHECK(valid);
      s.model.evict_tokens(layer, view);
    } catch (const std::invalid_argument&) {
      KVCRUSH_FUZZ_CHECK(!valid || could_copy > cache.free_blocks(layer));
    }
  }

  void evict_blocks(kvcrush_fuzz::reader& in, std::size_t which) {
    sequence& s = live[which];
    const index_t layer = in.in_range(0, cfg.layers - 1);
    const index_t len = s.model.length(layer);
    const index_t old_blocks = blocks_for(len);
    std::vector<index_t> kept = subset(in, old_blocks);
    const bool partial = len % cfg.block_size != 0;
    // The partial last block must be kept; now and then it is not (refused).
    const bool drop_partial = in.byte() == 255;
    if (partial && !drop_partial && (kept.empty() || kept.back() != old_blocks - 1)) kept.push_back(old_blocks - 1);
    const bool valid = !partial || (!kept.empty() && kept.back() == old_blocks - 1);
    const kvcrush::vector_view<const index_t> blocks(kept.data(), {static_cast<index_t>(kept.size())}, {1});
    try {
      cache.evict_blocks(s.id, layer, blocks);
      KVCRUSH_FUZZ_CHECK(valid);
      s.model.evict_blocks(layer, blocks, cfg.block_size);
    } catch (const std::invalid_argument&) {
      KVCRUSH_FUZZ_CHECK(!valid);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  kvcrush_fuzz::reader in(data, size);
  kvcrush::paged_cache_config cfg;
  cfg.layers = in.in_range(1, 2);
  cfg.kv_heads = in.in_range(1, 3);
  cfg.head_dim = in.in_range(1, 3);
  cfg.block_size = in.in_range(1, 8);
  cfg.blocks = in.in_range(0, 40);
  cfg.max_sequences = in.in_range(1, 4);
  cfg.max_blocks_per_sequence = in.in_range(0, cfg.blocks);
  harness h(cfg);
  for (int step = 0; step < 64 && in.remaining() > 0; ++step) {
    const std::uint8_t op = in.byte() % 8;
    if (h.live.empty() || op == 0) {
      h.create();
    } else {
      const std::size_t which = static_cast<std::size_t>(in.byte()) % h.live.size();
      switch (op) {
        case 1: h.fork(which); break;
        case 2: h.release(which); break;
        case 3: h.evict_tokens(in, which); break;
        case 4: h.evict_blocks(in, which); break;
        default: h.append(in, which); break;
      }
    }
    h.check_all();
  }
  while (!h.live.empty()) h.release(h.live.size() - 1);
  h.check_all();
  for (index_t l = 0; l < cfg.layers; ++l) KVCRUSH_FUZZ_CHECK(h.cache.free_blocks(l) == cfg.blocks);
  return 0;
}

// Steady state allocates nothing: after warm-up, append + evict cycles
// (contiguous and paged caches, the decode controller, batches on threads)
// make no heap allocation.
//
// This file replaces the global operator new/delete for the whole test
// binary (it is the only one that does). The replacements forward to
// malloc/free and count an allocation only while the calling thread has
// set its thread_local flag, so every other test is unaffected.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string_view>
#include <vector>

#include "cache_test_support.hpp"
#include "kvcrush/cache/batch.hpp"
#include "kvcrush/cache/contiguous_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/executor.hpp"
#include "kvcrush/cache/paged_cache.hpp"
#include "kvcrush/cache/per_head_cache.hpp"
#include "kvcrush/cache/precision_demoter.hpp"
#include "kvcrush/cache/tiered_cache.hpp"
#include "test_support.hpp"

namespace {

thread_local bool counting_allocations = false;
std::atomic<long> counted_allocations{0};

void* allocate(std::size_t n) {
  if (counting_allocations) counted_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}

void* allocate_aligned(std::size_t n, std::align_val_t alignment) {
  if (counting_allocations) counted_allocations.fetch_add(1, std::memory_order_relaxed);
  std::size_t a = static_cast<std::size_t>(alignment);
  if (a < sizeof(void*)) a = sizeof(void*);
  void* p = nullptr;
  if (posix_memalign(&p, a, n != 0 ? n : 1) != 0) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t n) { return allocate(n); }
void* operator new[](std::size_t n) { return allocate(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new(std::size_t n, std::align_val_t a) { return allocate_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate_aligned(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return allocate_aligned(n, a);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

using kvcrush::index_t;

namespace {

// Counts the allocations the current thread makes while it lives.
class allocation_scope {
 public:
  allocation_scope() {
    counted_allocations.store(0);
    counting_allocations = true;
  }
  ~allocation_scope() { counting_allocations = false; }
  long count() const { return counted_allocations.load(); }
};

// A thread pool whose workers count their allocations too.
class counting_executor final : public kvcrush::executor {
 public:
  explicit counting_executor(index_t threads) : inner_(threads) {}
  index_t workers() const noexcept override { return inner_.workers(); }
  void run(index_t count, kvcrush::task_ref task) override {
    auto counted = [&](index_t i, index_t worker) {
      const bool was = counting_allocations;
      counting_allocations = true;
      task(i, worker);
      counting_allocations = was;
    };
    inner_.run(count, kvcrush::task_ref(counted));
  }

 private:
  kvcrush::thread_executor inner_;
};

struct decode_shape {
  index_t layers = 2, heads = 4, query_heads = 8, d = 16;
  kvcrush::layer_budget budget{64, 4, 8};
  index_t slack = 16;
};

// Everything a decode step needs, allocated up front.
struct step_buffers {
  std::vector<float> rows, queries, probs, keys_float, values_float;
  explicit step_buffers(const decode_shape& s) {
    rows = kvcrush_test::random_floats(static_cast<std::size_t>(64 * s.heads * s.d), 1);
    queries = kvcrush_test::random_floats(static_cast<std::size_t>(64 * s.query_heads * s.d), 2, -3.0f, 3.0f);
    const index_t most = s.budget.budget + s.slack;
    probs.reserve(static_cast<std::size_t>(s.query_heads * most));
    keys_float.resize(static_cast<std::size_t>(s.heads * most * s.d));
    values_float.resize(keys_float.size());
  }
  kvcrush::kv_view<const float> new_token(int step, const decode_shape& s) const {
    return kvcrush::make_head_token_dim<const float>(rows.data() + static_cast<std::size_t>((step % 60) * s.d), s.heads, 1,
                                                     s.d, 4);
  }
  const float* query(int step, const decode_shape& s) const {
    return queries.data() + static_cast<std::size_t>((step % 64) * s.query_heads * s.d);
  }
};

// One decode step on every layer of a contiguous cache. Returns false on
// an inconsistency (no gtest macros inside counted regions).
template <class T>
bool contiguous_step(kvcrush::contiguous_cache<T>& cache,
                     kvcrush::eviction_controller<kvcrush::contiguous_cache<T>>& controller, kvcrush::workspace& ws,
                     step_buffers& buffers, const decode_shape& s, int step) {
  for (index_t l = 0; l < s.layers; ++l) {
    controller.make_room(l, 1, ws);
    const auto token = buffers.new_token(step, s);
    cache.append(l, token, token);
    const index_t n = cache.length(l);
    if (n > s.budget.budget + s.slack) return false;
    const auto keys = cache.keys(l);
    cache_test::attention_probabilities(buffers.query(step, s), s.query_heads, s.heads, s.d, n,
                                        [&](index_t h, index_t t) { return keys.row(h, t); }, buffers.probs);
    controller.observe(l, kvcrush::make_matrix_view<const float>(buffers.probs.data(), s.query_heads, n));
  }
  return true;
}

template <class T>
bool paged_step(kvcrush::paged_sequence<T>& seq, kvcrush::eviction_controller<kvcrush::paged_sequence<T>>& controller,
                kvcrush::workspace* ws, step_buffers& buffers, const decode_shape& s, int step) {
  for (index_t l = 0; l < s.layers; ++l) {
    if (ws) controller.make_room(l, 1, *ws);
    const auto token = buffers.new_token(step, s);
    seq.cache().append(seq.id(), l, token, token);
    const index_t n = seq.length(l);
    if (n > s.budget.budget + s.slack) return false;
    const index_t d = s.d, heads = s.heads;
    seq.cache().gather(seq.id(), l, kvcrush::make_head_token_dim(buffers.keys_float.data(), heads, n, d),
                       kvcrush::make_head_token_dim(buffers.values_float.data(), heads, n, d));
    cache_test::attention_probabilities(buffers.query(step, s), s.query_heads, heads, d, n,
                                        [&](index_t h, index_t t) { return buffers.keys_float.data() + (h * n + t) * d; },
                                        buffers.probs);
    controller.observe(l, kvcrush::make_matrix_view<const float>(buffers.probs.data(), s.query_heads, n));
  }
  return true;
}

}  // namespace

TEST(CacheAllocation, HookCountsOnlyInsideTheScope) {
  static int* volatile sink = nullptr;
  sink = new int(1);
  delete sink;
  long inside = 0;
  {
    allocation_scope scope;
    sink = new int(2);
    delete sink;
    std::vector<double> v(100);
    sink = reinterpret_cast<int*>(v.data());
    inside = scope.count();
  }
  EXPECT_EQ(inside, 2);
}

TEST(CacheAllocation, ContiguousDecodeSteadyStateAllocatesNothing) {
  const decode_shape s;
  for (const char* name : {"h2o+kvcrush", "snapkv+kvcrush", "tova", "snapkv+kvcrush adaptive"}) {
    for (bool per_head : {false, true}) {
      kvcrush::contiguous_cache<kvcrush::float16> cache(s.layers, s.heads, s.d, s.budget.budget + s.slack,
                                                        kvcrush::kv_layout::token_head_dim);
      kvcrush::eviction_settings settings;
      const std::string_view spelled(name);
      const bool adaptive = spelled.find(' ') != std::string_view::npos;
      settings.policy = kvcrush::policy_config::parse(spelled.substr(0, spelled.find(' ')));
      // The adaptive KVCrush split sorts each row's scores at each event:
      // in the workspace, like everything else.
      if (adaptive) settings.policy.crush.split = kvcrush::crush_split::adaptive;
      settings.policy.layout.per_head = per_head;
      settings.policy.window.kernel = 5;
      settings.window = 8;
      settings.budgets = {s.budget};
      settings.slack = s.slack;
      settings.query_heads = s.query_heads;
      kvcrush::eviction_controller<kvcrush::contiguous_cache<kvcrush::float16>> controller(cache, settings);
      kvcrush::workspace ws;
      step_buffers buffers(s);
      int step = 0;
      for (; step < 140; ++step) ASSERT_TRUE(contiguous_step(cache, controller, ws, buffers, s, step));  // warm-up
      const index_t selections_before = controller.selections(0);
      long allocations = 0;
      bool ok = true;
      {
        allocation_scope scope;
        for (int i = 0; i < 160; ++i, ++step) ok &= contiguous_step(cache, controller, ws, buffers, s, step);
        allocations = scope.count();
      }
      EXPECT_TRUE(ok);
      EXPECT_EQ(controller.selections(0) - selections_before, 10) << name << ": one selection per slack tokens";
      EXPECT_EQ(allocations, 0) << name << " per_head " << per_head;
    }
  }
}

TEST(CacheAllocation, PagedDecodeWithBlocksAndForksAllocatesNothing) {
  const decode_shape s;
  kvcrush::paged_cache_config cfg;
  cfg.layers = s.layers;
  cfg.kv_heads = s.heads;
  cfg.head_dim = s.d;
  cfg.block_size = 8;
  cfg.blocks = 40;
  cfg.max_sequences = 4;
  kvcrush::paged_cache<kvcrush::bfloat16> pool(cfg);
  kvcrush::paged_sequence<kvcrush::bfloat16> tokens_seq(pool, pool.create()), blocks_seq(pool, pool.create());
  kvcrush::eviction_settings token_settings;
  token_settings.policy = kvcrush::policy_config::parse("h2o+kvcrush");
  token_settings.policy.layout.per_head = true;
  token_settings.budgets = {s.budget};
  token_settings.slack = s.slack;
  token_settings.query_heads = s.query_heads;
  auto block_settings = token_settings;
  block_settings.policy.layout = {false, 8};
  block_settings.budgets = {kvcrush::layer_budget{64, 8, 8}};
  using controller = kvcrush::eviction_controller<kvcrush::paged_sequence<kvcrush::bfloat16>>;
  controller token_controller(tokens_seq, token_settings), block_controller(blocks_seq, block_settings);
  kvcrush::workspace ws;
  step_buffers buffers(s);
  auto cycle = [&](int step) {
    bool ok = paged_step(tokens_seq, token_controller, &ws, buffers, s, step);
    ok &= paged_step(blocks_seq, block_controller, &ws, buffers, s, step);
    // A short-lived fork that appends (copy on write of the shared last
    // block) and is released again.
    if (step % 7 == 0) {
      const auto child = pool.fork(tokens_seq.id());
      const auto token = buffers.new_token(step, s);
      pool.append(child, 0, token, token);
      pool.release(child);
    }
    return ok;
  };
  int step = 0;
  for (; step < 140; ++step) ASSERT_TRUE(cycle(step));
  long allocations = 0;
  bool ok = true;
  const index_t before = token_controller.selections(1) + block_controller.selections(1);
  {
    allocation_scope scope;
    for (int i = 0; i < 160; ++i, ++step) ok &= cycle(step);
    allocations = scope.count();
  }
  EXPECT_TRUE(ok);
  EXPECT_GE(token_controller.selections(1) + block_controller.selections(1) - before, 15);
  EXPECT_EQ(allocations, 0);
  pool.check_invariants();
}

TEST(CacheAllocation, BatchOnThreadsAllocatesNothing) {
  const decode_shape s;
  const index_t sequences = 4;
  kvcrush::paged_cache_config cfg;
  cfg.layers = s.layers;
  cfg.kv_heads = s.heads;
  cfg.head_dim = s.d;
  cfg.block_size = 16;
  cfg.blocks = sequences * 6;
  cfg.max_sequences = sequences;
  kvcrush::paged_cache<float> pool(cfg);
  std::vector<kvcrush::paged_sequence<float>> seqs;
  for (index_t i = 0; i < sequences; ++i) seqs.emplace_back(pool, pool.create());
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o+kvcrush");
  settings.budgets = {s.budget};
  settings.slack = s.slack;
  settings.query_heads = s.query_heads;
  using controller = kvcrush::eviction_controller<kvcrush::paged_sequence<float>>;
  std::vector<std::unique_ptr<controller>> owned;
  std::vector<controller*> controllers;
  for (auto& seq : seqs) {
    owned.push_back(std::make_unique<controller>(seq, settings));
    controllers.push_back(owned.back().get());
  }
  counting_executor ex(3);
  kvcrush::worker_workspaces spaces(ex);
  // Which worker runs which selection is up to the scheduler: a worker that
  // happened to run no eviction while warming up would grow its workspace
  // later. Reserved workspaces never grow.
  spaces.reserve(s.heads, s.budget.budget + s.slack + 1, s.query_heads);
  step_buffers buffers(s);
  auto cycle = [&](int step) {
    // Sequences start staggered so that they evict at different steps.
    kvcrush::make_room_all(controllers.data(), sequences, 1, ex, spaces);
    bool ok = true;
    for (index_t i = 0; i < sequences; ++i) {
      if (step < 20 * i) continue;
      ok &= paged_step(seqs[static_cast<std::size_t>(i)], *controllers[static_cast<std::size_t>(i)], nullptr, buffers, s,
                       step + static_cast<int>(i));
    }
    return ok;
  };
  int step = 0;
  for (; step < 200; ++step) ASSERT_TRUE(cycle(step));
  long allocations = 0;
  bool ok = true;
  {
    allocation_scope scope;
    for (int i = 0; i < 100; ++i, ++step) ok &= cycle(step);
    allocations = scope.count();
  }
  EXPECT_TRUE(ok);
  EXPECT_EQ(allocations, 0);
  pool.check_invariants();
}

// Decode-time AdaKV (one head-wise controller over a per_head_cache) and
// decode-time mixed precision (tiered_cache + precision_demoter): after
// warm-up, steps allocate nothing either.
namespace {

// Attention-like rows for a step: deterministic, positive, no allocation.
void fill_probabilities(std::vector<float>& probs, index_t rows, index_t width, int step) {
  for (index_t q = 0; q < rows; ++q)
    for (index_t t = 0; t < width; ++t) {
      const auto x = static_cast<std::uint32_t>((step * 977 + q * 131 + t * 29) * 2654435761u);
      probs[static_cast<std::size_t>(q * width + t)] = static_cast<float>(x % 1000 + 1) / 1000.0f;
    }
}

}  // namespace

TEST(CacheAllocation, HeadWiseAdaKVDecodeAllocatesNothing) {
  const decode_shape s;
  for (const char* name : {"snapkv+adakv+kvcrush", "h2o+adakv"}) {
    kvcrush::per_head_cache<float> cache(s.layers, s.heads, s.d, s.budget.budget + 2 * s.slack);
    kvcrush::eviction_settings settings;
    settings.policy = kvcrush::policy_config::parse(name);
    settings.window = 8;
    settings.budgets = {s.budget};
    settings.slack = s.slack;
    settings.query_heads = s.query_heads;
    kvcrush::eviction_controller<kvcrush::per_head_cache<float>> controller(cache, settings);
    kvcrush::workspace ws;
    step_buffers buffers(s);
    std::vector<float> probs(static_cast<std::size_t>(s.query_heads * (s.budget.budget + 2 * s.slack)));
    auto step = [&](int i) {
      bool ok = true;
      for (index_t l = 0; l < s.layers; ++l) {
        controller.make_room(l, 1, ws);
        const auto token = buffers.new_token(i, s);
        cache.append(l, token, token);
        index_t width = 0;
        for (index_t h = 0; h < s.heads; ++h) {
          width = std::max(width, cache.length(l, h));
          ok &= cache.length(l, h) <= controller.head_budget(l, h).budget + s.slack;
        }
        fill_probabilities(probs, s.query_heads, width, i);
        controller.observe(l, kvcrush::make_matrix_view<const float>(probs.data(), s.query_heads, width));
      }
      return ok;
    };
    int i = 0;
    for (; i < 140; ++i) ASSERT_TRUE(step(i));
    ASSERT_TRUE(controller.shared_out(0));
    const index_t selections_before = controller.selections(0);
    long allocations = 0;
    bool ok = true;
    {
      allocation_scope scope;
      for (int j = 0; j < 160; ++j, ++i) ok &= step(i);
      allocations = scope.count();
    }
    EXPECT_TRUE(ok);
    EXPECT_GT(controller.selections(0), selections_before) << name;
    EXPECT_EQ(allocations, 0) << name;
  }
}

TEST(CacheAllocation, TieredDecodeWithDemotionAllocatesNothing) {
  const decode_shape s;
  kvcrush::quant_config low;
  low.key_bits = low.value_bits = 4;
  low.group_size = 16;
  low.window = 0;
  const index_t capacity = s.budget.budget + s.slack;
  kvcrush::tiered_cache<kvcrush::float16> cache(s.layers, s.heads, s.d, capacity, low);
  kvcrush::eviction_settings settings;
  settings.policy = kvcrush::policy_config::parse("h2o");
  settings.budgets = {s.budget};
  settings.slack = s.slack;
  settings.query_heads = s.query_heads;
  kvcrush::eviction_controller<kvcrush::tiered_cache<kvcrush::float16>> controller(cache, settings);
  kvcrush::precision_demoter demoter(capacity);
  kvcrush::workspace ws;
  step_buffers buffers(s);
  std::vector<float> probs(static_cast<std::size_t>(s.query_heads * capacity));
  const auto policy = kvcrush::policy_config::parse("h2o");
  auto step = [&](int i) {
    bool ok = true;
    for (index_t l = 0; l < s.layers; ++l) {
      controller.make_room(l, 1, ws);
      demoter.keep_high(controller, l, policy, {24, s.budget.sink, s.budget.recent}, ws);
      ok &= cache.high_tokens(l) <= 24;
      const auto token = buffers.new_token(i, s);
      cache.append(l, token, token);
      fill_probabilities(probs, s.query_heads, cache.length(l), i);
      controller.observe(l, kvcrush::make_matrix_view<const float>(probs.data(), s.query_heads, cache.length(l)));
    }
    return ok;
  };
  int i = 0;
  for (; i < 140; ++i) ASSERT_TRUE(step(i));
  ASSERT_GT(cache.low_tokens(0), 16);
  long allocations = 0;
  bool ok = true;
  {
    allocation_scope scope;
    for (int j = 0; j < 160; ++j, ++i) ok &= step(i);
    allocations = scope.count();
  }
  EXPECT_TRUE(ok);
  EXPECT_EQ(allocations, 0);
}

// The C API (include/kvcrush/c_api.h) over the header-only library.
//
// Why a compiled source outside include/: include/ holds what consumers
// compile themselves, with their own flags; this file is compiled once, for
// baseline x86-64, into libkvcrush_c, and nothing consumers include depends
// on it. Every call that runs a kernel goes through kvcrush::dispatch (the
// static component src/dispatch/, linked in with hidden symbols), which
// picks the AVX2 or AVX-512 kernels at run time where the CPU has them.
//
// Every exported function funnels through guarded(): C++ exceptions become
// status codes plus a thread-local message, so none crosses the ABI. Checks
// happen before any output is written; where a library routine would write
// part of an output before detecting bad input (window scores' per-query
// rows, signatures on NaN), the work goes through workspace memory or a
// pre-check instead, so a failed call leaves the caller's buffers untouched.
#include "kvcrush/c_api.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string_view>

#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/dispatch/dispatch.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/policy/budgets.hpp"
#include "kvcrush/policy/select.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/version.hpp"

// Positions cross the ABI as int64_t and are used in place as index_t: no
// copy, so no allocation, in the hot path.
static_assert(sizeof(kvcrush::index_t) == sizeof(std::int64_t) && std::is_signed_v<kvcrush::index_t>,
              "the C API passes int64_t positions straight to kvcrush::index_t views");
static_assert(sizeof(kvcrush::float16) == 2 && sizeof(kvcrush::bfloat16) == 2,
              "half-precision caches are arrays of 16-bit values");

struct kvcrush_workspace {
  kvcrush::workspace ws;
};

namespace {

using kvcrush::index_t;
using kvcrush::detail::require;

// A fixed buffer, not a std::string: recording an error must not itself be
// able to fail for lack of memory. Long messages are cut, not lost.
thread_local char last_error[1024] = "";

void set_error(const char* message) noexcept {
  std::size_t n = std::strlen(message);
  if (n >= sizeof last_error) n = sizeof last_error - 1;
  std::memcpy(last_error, message, n);
  last_error[n] = '\0';
  // One line, as the CLI prints it.
  for (std::size_t i = 0; i < n; ++i) {
    if (last_error[i] == '\n') last_error[i] = ' ';
  }
}

// An output buffer the caller sized too small: its own status, so bindings
// can tell "ask kvcrush_keep_shape" from "your input is wrong".
class buffer_too_small : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

template <class Body>
kvcrush_status guarded(Body&& body) noexcept {
  try {
    body();
    return KVCRUSH_OK;
  } catch (const buffer_too_small& e) {
    set_error(e.what());
    return KVCRUSH_BUFFER_TOO_SMALL;
  } catch (const std::invalid_argument& e) {
    set_error(e.what());
    return KVCRUSH_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    set_error("kvcrush: out of memory");
    return KVCRUSH_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_error(e.what());
    return KVCRUSH_INTERNAL_ERROR;
  } catch (...) {
    set_error("kvcrush: unknown internal error");
    return KVCRUSH_INTERNAL_ERROR;
  }
}

kvcrush::workspace& workspace_of(kvcrush_workspace* ws) {
  // NULL: a workspace private to the thread, so that even callers who do
  // not manage handles stop allocating once warmed up.
  thread_local kvcrush::workspace fallback;
  return ws ? ws->ws : fallback;
}

template <class... Parts>
[[noreturn]] void throw_too_small(const Parts&... parts) {
  throw buffer_too_small(kvcrush::detail::concat("kvcrush: ", parts...));
}

// Extents must be >= minimum and their product must fit in memory sizes
// (a caller's int64 shape would otherwise wrap in the views' index math).
void check_extents(const char* what, std::initializer_list<std::pair<const char*, std::int64_t>> extents,
                   std::int64_t minimum = 0) {
  std::int64_t product = 1;
  for (const auto& [name, value] : extents) {
    require(value >= minimum, what, ": ", name, " must be >= ", minimum, " (got ", value, ")");
    require(!__builtin_mul_overflow(product, value, &product) && product <= PTRDIFF_MAX / 8, what,
            ": shape is too large");
  }
}

void require_pointer(const void* p, const char* what, const char* name) {
  require(p != nullptr, what, ": ", name, " is NULL");
}

template <class Parse, class Value>
Value parse_or(const char* text, Value fallback, Parse parse) {
  return text ? parse(std::string_view(text)) : fallback;
}

// ---- Selection options -----------------------------------------------------

enum class input_kind { scores, attention };

struct resolved_selection {
  kvcrush::policy_config policy;
  kvcrush::layer_budget budget;
  bool tova_last_row = false;  // tova reads the window's last attention row
};

// Turns the C options into the runtime policy and budget, checking every
// field the same way whether the call is a shape query or a selection.
resolved_selection resolve(const kvcrush_select_options* o, input_kind kind, index_t window) {
  require_pointer(o, "select", "options");
  require(o->struct_size >= offsetof(kvcrush_select_options, crush_split),
          "select: options are not initialised (call kvcrush_select_options_init first)");
  resolved_selection r;
  const bool from_scores = kind == input_kind::scores;
  const char* name = o->policy ? o->policy : (from_scores ? "precomputed" : "snapkv");
  r.policy = kvcrush::policy_config::parse(name);
  auto& cfg = r.policy;
  using kvcrush::base_policy;
  switch (cfg.base) {
    case base_policy::precomputed:
      require(from_scores, "select: policy '", name, "' reads scores; pass scores instead of attention");
      break;
    case base_policy::h2o:
      // Accumulated attention is what the engine passes as scores; H2O's
      // selection on it is the precomputed one.
      require(from_scores, "select: policy '", name,
              "' reads accumulated attention; pass it as scores (H, N)");
      cfg.base = base_policy::precomputed;
      break;
    case base_policy::snapkv:
    case base_policy::pyramidkv:
      require(!from_scores, "select: policy '", name,
              "' computes its scores from window attention; pass attention (Hq, W, N), or use 'precomputed' "
              "for scores computed elsewhere");
      break;
    case base_policy::tova:
      require(!from_scores, "select: policy '", name, "' reads the last query's attention; pass attention");
      r.tova_last_row = true;
      break;
    case base_policy::knorm:
      kvcrush::detail::throw_invalid("select: policy '", name,
                                     "' reads the key cache, which the C API does not take; compute -||k|| as "
                                     "scores and use 'precomputed'");
    case base_policy::keydiff:
    case base_policy::expected_attention:
    case base_policy::rkv:
      kvcrush::detail::throw_invalid("select: policy '", name,
                                     "' reads the key cache, which the C API does not take; use the C++ API "
                                     "(policy::keydiff, policy::expected_attention, policy::rkv)");
    case base_policy::full:
    case base_policy::streaming:
    case base_policy::random:
      break;
  }

  require(!std::isnan(o->crush) && (o->crush == -1.0 || (o->crush >= 0.0 && o->crush <= 1.0)),
          "select: crush must be in [0, 1], or -1 for the policy's default (got ", o->crush, ")");
  if (o->crush == -1.0) {
    cfg.crush.fraction = cfg.kvcrush ? 0.5 : 0.0;
  } else {
    cfg.crush.fraction = o->crush;
    // As the CLI's --crush: asking for representatives turns KVCrush on.
    if (o->crush > 0.0) cfg.kvcrush = true;
  }
  // Fields added later are read only from callers whose struct has them.
  const bool has_split = o->struct_size >= sizeof(kvcrush_select_options);
  cfg.crush.split = has_split ? parse_or(o->crush_split, kvcrush::crush_split::fixed, kvcrush::parse_crush_split)
                              : kvcrush::crush_split::fixed;
  cfg.crush.mass = has_split ? o->crush_mass : 0.9;
  require(!std::isnan(cfg.crush.mass) && cfg.crush.mass > 0.0 && cfg.crush.mass <= 1.0,
          "select: crush_mass must be in (0, 1] (got ", cfg.crush.mass, ")");
  if (cfg.crush.split == kvcrush::crush_split::adaptive) {
    require(o->crush == -1.0, "select: crush applies to the fixed split; leave it -1 with crush_split 'adaptive'");
    cfg.kvcrush = true;
  }
  require(!(cfg.base == base_policy::full && cfg.kvcrush), "select: policy 'full' keeps everything; crush must be 0");
  cfg.crush.anchor = parse_or(o->anchor, kvcrush::anchor_mode::mean, kvcrush::parse_anchor_mode);
  cfg.crush.representative =
      parse_or(o->representative, kvcrush::representative_rule::bucket_center, kvcrush::parse_representative_rule);
  cfg.crush.threshold = parse_or(o->threshold, kvcrush::threshold_mode::median, kvcrush::parse_threshold_mode);
  cfg.crush.heads = parse_or(o->signature_heads, kvcrush::signature_heads::kv, kvcrush::parse_signature_heads);
  require(!(from_scores && cfg.crush.heads == kvcrush::signature_heads::query),
          "select: signature_heads 'query' needs attention (the per-query-head scores)");
  cfg.crush.seed = o->seed;
  cfg.seed = o->seed;
  require(!std::isnan(o->adakv_alpha) && o->adakv_alpha >= 0.0 && o->adakv_alpha <= 1.0,
          "select: adakv_alpha must be in [0, 1] (got ", o->adakv_alpha, ")");
  cfg.adakv_alpha = o->adakv_alpha;
  cfg.layout.per_head = cfg.layout.per_head || o->per_head != 0;
  cfg.layout.block_size = o->block_size;
  require(!(cfg.adakv && o->block_size != 1), "select: '+adakv' works at token granularity (block_size 1)");

  cfg.window.pooling = parse_or(o->pool, kvcrush::pooling_mode::avg, kvcrush::parse_pooling_mode);
  cfg.window.kernel = o->kernel;
  cfg.window.gqa = parse_or(o->gqa, kvcrush::gqa_reduction::mean, kvcrush::parse_gqa_reduction);
  require(o->kernel >= 1 && o->kernel % 2 == 1, "select: pooling kernel must be odd and >= 1 (got ", o->kernel, ")");

  require(o->recent >= -1, "select: recent must be >= 0, or -1 for the default (got ", o->recent, ")");
  // Bounded so that sums like sink + recent cannot overflow.
  constexpr std::int64_t most = PTRDIFF_MAX / 8;
  require(o->budget <= most && o->sink <= most && o->recent <= most && o->block_size <= most,
          "select: budget, sink, recent and block_size must be below ", most);
  r.budget.budget = o->budget;
  r.budget.sink = o->sink;
  r.budget.recent = o->recent == -1 ? (from_scores ? 0 : window) : o->recent;

  // The same configuration check select() runs, here so that shape queries
  // reject what a selection would reject.
  kvcrush::keep_config kc;
  kc.budget = r.budget.budget;
  kc.sink = r.budget.sink;
  kc.recent = r.budget.recent;
  kc.crush_fraction = cfg.kvcrush ? cfg.crush.fraction : 0.0;
  kc.split = cfg.kvcrush ? cfg.crush.split : kvcrush::crush_split::fixed;
  kc.crush_mass = cfg.crush.mass;
  kc.block_size = cfg.layout.block_size;
  kc.rank_importance = cfg.base != base_policy::streaming;
  if (cfg.base != base_policy::full) kvcrush::validate(kc);
  require(cfg.layout.block_size >= 1, "select: block_size must be >= 1 (got ", cfg.layout.block_size, ")");
  return r;
}

struct keep_shape {
  index_t rows = 0;
  index_t width = 0;
};

keep_shape shape_of(const resolved_selection& r, index_t heads, index_t tokens) {
  const auto& cfg = r.policy;
  const index_t b = cfg.layout.block_size;
  keep_shape s;
  s.rows = cfg.layout.per_head ? heads : 1;
  if (cfg.base == kvcrush::base_policy::full) {
    s.width = (tokens + b - 1) / b;
    return s;
  }
  kvcrush::keep_config kc;
  kc.budget = r.budget.budget;
  kc.sink = r.budget.sink;
  kc.recent = r.budget.recent;
  kc.block_size = b;
  s.width = kvcrush::keep_count(kc, tokens);
  if (cfg.adakv && tokens > kc.budget) {
    // Head-wise budgets share H * (B - s - r) picks out among the heads, at
    // most all |E| evictable tokens for one head.
    const index_t evictable = tokens - kc.sink - kc.recent;
    const index_t rest = kc.budget - kc.sink - kc.recent;
    const index_t most = heads > 0 && rest > evictable / heads ? evictable : rest * heads;
    s.width = kc.sink + kc.recent + (most < evictable ? most : evictable);
  }
  return s;
}

void check_keep_output(const keep_shape& shape, const int64_t* keep, int64_t keep_rows, int64_t keep_width,
                       const int64_t* counts) {
  require_pointer(keep, "select", "keep");
  require_pointer(counts, "select", "counts");
  require(keep_rows == shape.rows, "select: keep needs ", shape.rows, " row(s) (", shape.rows == 1 ? "shared" : "per head",
          "), got ", keep_rows);
  if (keep_width < shape.width) {
    throw_too_small("select: keep rows hold ", keep_width, " entries, ", shape.width,
                    " needed (see kvcrush_keep_shape)");
  }
}

void run_select(kvcrush::workspace& ws, const resolved_selection& r, const kvcrush::layer_inputs& in, int64_t* keep,
                int64_t keep_rows, int64_t keep_width, int64_t* counts) {
  const keep_shape shape = shape_of(r, in.kv_heads, in.tokens);
  check_keep_output(shape, keep, keep_rows, keep_width, counts);
  const kvcrush::keep_sets out{kvcrush::make_matrix_view<index_t>(keep, keep_rows, keep_width),
                               kvcrush::make_vector_view<index_t>(counts, keep_rows)};
  kvcrush::dispatch::select(r.policy, in, r.budget, out, ws);
}

// ---- Compaction --------------------------------------------------------------

template <class T>
kvcrush::kv_view<T> cache_view(void* data, kvcrush_layout layout, index_t heads, index_t tokens, index_t dim,
                               index_t capacity) {
  T* p = static_cast<T*>(data);
  return layout == KVCRUSH_HEAD_TOKEN_DIM ? kvcrush::make_head_token_dim(p, heads, tokens, dim, capacity)
                                          : kvcrush::make_token_head_dim(p, tokens, heads, dim);
}

template <class T>
index_t compact_typed(void* keys, void* values, kvcrush_layout layout, index_t heads, index_t tokens, index_t dim,
                      index_t capacity, const kvcrush::keep_view& keep, index_t block_size) {
  const auto k = cache_view<T>(keys, layout, heads, tokens, dim, capacity);
  // A missing values cache is a view with no elements per row: compaction
  // then moves the keys alone.
  const auto v = values ? cache_view<T>(values, layout, heads, tokens, dim, capacity)
                        : cache_view<T>(nullptr, layout, heads, tokens, 0, -1);
  if (block_size > 1) {
    const kvcrush::vector_view<const index_t> blocks(keep.rows.data(), {keep.count(0)}, {1});
    return kvcrush::dispatch::compact_blocks(k, v, blocks, block_size);
  }
  return kvcrush::dispatch::compact(k, v, keep);
}

}  // namespace

// ---- Exported functions --------------------------------------------------------

extern "C" {

const char* kvcrush_version(void) { return KVCRUSH_VERSION_STRING; }

const char* kvcrush_isa(void) {
  try {
    // to_string views a string literal, so data() is NUL-terminated.
    return kvcrush::dispatch::active_isa_name().data();
  } catch (const std::exception& e) {
    set_error(e.what());  // KVCRUSH_ISA asked for a level this machine lacks
    return "unavailable";
  }
}

kvcrush_status kvcrush_use_isa(const char* isa) {
  return guarded([&] {
    if (isa == nullptr) {
      kvcrush::dispatch::use_isa(kvcrush::dispatch::detected_isa());
    } else {
      kvcrush::dispatch::use_isa(std::string_view(isa));
    }
  });
}

int kvcrush_c_api_version(void) { return KVCRUSH_C_API_VERSION; }

const char* kvcrush_last_error(void) { return last_error; }

const char* kvcrush_status_string(kvcrush_status status) {
  switch (status) {
    case KVCRUSH_OK: return "ok";
    case KVCRUSH_INVALID_ARGUMENT: return "invalid argument";
    case KVCRUSH_BUFFER_TOO_SMALL: return "buffer too small";
    case KVCRUSH_OUT_OF_MEMORY: return "out of memory";
    case KVCRUSH_INTERNAL_ERROR: return "internal error";
  }
  return "unknown status";
}

kvcrush_status kvcrush_workspace_create(kvcrush_workspace** out) {
  return guarded([&] {
    require_pointer(out, "workspace_create", "out");
    *out = new kvcrush_workspace{};
  });
}

void kvcrush_workspace_destroy(kvcrush_workspace* ws) { delete ws; }

kvcrush_status kvcrush_workspace_reserve(kvcrush_workspace* ws, int64_t heads, int64_t tokens,
                                         int64_t signature_heads, int64_t block_size) {
  return guarded([&] {
    check_extents("workspace_reserve", {{"heads", heads}, {"tokens", tokens}, {"signature_heads", signature_heads}});
    check_extents("workspace_reserve", {{"tokens", tokens}, {"block_size", block_size}});
    workspace_of(ws).reserve(heads, tokens, signature_heads, block_size);
  });
}

uint64_t kvcrush_workspace_allocations(const kvcrush_workspace* ws) {
  return ws ? static_cast<uint64_t>(ws->ws.allocations()) : 0;
}

void kvcrush_select_options_init(kvcrush_select_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->policy = nullptr;
  o->budget = 0;
  o->sink = 0;
  o->recent = -1;
  o->crush = -1.0;
  o->seed = 0;
  o->per_head = 0;
  o->block_size = 1;
  o->adakv_alpha = 0.2;
  o->kv_heads = 0;
  o->window = 0;
  o->kernel = 7;
  o->crush_split = nullptr;
  o->crush_mass = 0.9;
}

kvcrush_status kvcrush_keep_shape(const kvcrush_select_options* options, int64_t heads, int64_t tokens,
                                  int64_t attention_rows, int64_t* rows, int64_t* width) {
  return guarded([&] {
    require_pointer(rows, "keep_shape", "rows");
    require_pointer(width, "keep_shape", "width");
    require_pointer(options, "keep_shape", "options");
    check_extents("keep_shape", {{"heads", heads}}, 1);
    check_extents("keep_shape", {{"heads", heads}, {"tokens", tokens}, {"attention rows", attention_rows}});
    // The input kind decides the default policy and recent region, as in
    // the selection calls.
    const bool attention = attention_rows > 0;
    const int64_t window = attention && options->window != 0 ? options->window : attention_rows;
    require(!attention || (window >= 1 && window <= attention_rows), "keep_shape: window ", window,
            " must be in [1, ", attention_rows, "]");
    const auto r = resolve(options, attention ? input_kind::attention : input_kind::scores, window);
    const keep_shape s = shape_of(r, heads, tokens);
    *rows = s.rows;
    *width = s.width;
  });
}

kvcrush_status kvcrush_select_scores(kvcrush_workspace* ws, const float* scores, int64_t heads, int64_t tokens,
                                     const kvcrush_select_options* options, int64_t* keep, int64_t keep_rows,
                                     int64_t keep_width, int64_t* counts) {
  return guarded([&] {
    require_pointer(scores, "select", "scores");
    check_extents("select", {{"heads", heads}}, 1);
    check_extents("select", {{"heads", heads}, {"tokens", tokens}});
    const resolved_selection r = resolve(options, input_kind::scores, 0);
    kvcrush::layer_inputs in;
    in.kv_heads = heads;
    in.tokens = tokens;
    in.scores = kvcrush::make_matrix_view(scores, heads, tokens);
    run_select(workspace_of(ws), r, in, keep, keep_rows, keep_width, counts);
  });
}

kvcrush_status kvcrush_select_attention(kvcrush_workspace* ws, const float* attention, int64_t query_heads,
                                        int64_t rows, int64_t tokens, const kvcrush_select_options* options,
                                        int64_t* keep, int64_t keep_rows, int64_t keep_width, int64_t* counts) {
  return guarded([&] {
    require_pointer(attention, "select", "attention");
    require_pointer(options, "select", "options");
    check_extents("select", {{"query heads", query_heads}, {"attention rows", rows}}, 1);
    check_extents("select", {{"query heads", query_heads}, {"attention rows", rows}, {"tokens", tokens}});
    const int64_t kv_heads = options->kv_heads;
    require(kv_heads >= 1 && query_heads % kv_heads == 0, "select: kv_heads ", kv_heads, " must divide the ",
            query_heads, " query heads of the attention");
    const int64_t window = options->window == 0 ? rows : options->window;
    require(window >= 1 && window <= rows, "select: window ", window, " must be in [1, ", rows, "]");
    require(window <= tokens, "select: window ", window, " exceeds the ", tokens, " tokens");
    const resolved_selection r = resolve(options, input_kind::attention, window);
    kvcrush::layer_inputs in;
    in.kv_heads = kv_heads;
    in.tokens = tokens;
    // The last `window` query rows of each head, without a copy.
    in.window_attention = kvcrush::strided_view<const float, 3>(attention + (rows - window) * tokens,
                                                                {query_heads, window, tokens}, {rows * tokens, tokens, 1});
    if (r.tova_last_row) {
      in.last_attention = kvcrush::matrix_view<const float>(attention + (rows - 1) * tokens, {query_heads, tokens},
                                                            {rows * tokens, 1});
    }
    run_select(workspace_of(ws), r, in, keep, keep_rows, keep_width, counts);
  });
}

kvcrush_status kvcrush_window_scores(kvcrush_workspace* ws, const float* attention, int64_t query_heads, int64_t rows,
                                     int64_t tokens, int64_t kv_heads, int64_t window, const char* pool,
                                     int64_t kernel, const char* gqa, float* kv_scores, float* query_scores) {
  return guarded([&] {
    require_pointer(attention, "window_scores", "attention");
    require_pointer(kv_scores, "window_scores", "kv_scores");
    check_extents("window_scores", {{"query heads", query_heads}, {"attention rows", rows}}, 1);
    check_extents("window_scores", {{"query heads", query_heads}, {"attention rows", rows}, {"tokens", tokens}});
    require(kv_heads >= 1 && query_heads % kv_heads == 0, "window_scores: kv_heads ", kv_heads, " must divide the ",
            query_heads, " query heads of the attention");
    if (window == 0) window = rows;
    require(window >= 1 && window <= rows, "window_scores: window ", window, " must be in [1, ", rows, "]");
    kvcrush::window_options opt;
    opt.pooling = parse_or(pool, kvcrush::pooling_mode::avg, kvcrush::parse_pooling_mode);
    opt.kernel = kernel;
    opt.gqa = parse_or(gqa, kvcrush::gqa_reduction::mean, kvcrush::parse_gqa_reduction);
    kvcrush::workspace& w = workspace_of(ws);
    const kvcrush::strided_view<const float, 3> view(attention + (rows - window) * tokens,
                                                     {query_heads, window, tokens}, {rows * tokens, tokens, 1});
    // window_scores() fills the per-query-head rows before it reports NaN,
    // and writes the KV rows only after; so the query rows go to workspace
    // memory first and reach the caller only on success.
    float* query_rows = w.query_scores(static_cast<std::size_t>(query_heads * tokens) + 1);
    kvcrush::dispatch::window_scores(view, opt, kvcrush::make_matrix_view(kv_scores, kv_heads, tokens), w,
                           kvcrush::make_matrix_view(query_rows, query_heads, tokens));
    if (query_scores) {
      std::memcpy(query_scores, query_rows, static_cast<std::size_t>(query_heads * tokens) * sizeof(float));
    }
  });
}

kvcrush_status kvcrush_signature_shape(int64_t heads, int64_t tokens, int64_t sink, int64_t recent, int64_t* rows,
                                       int64_t* words) {
  return guarded([&] {
    require_pointer(rows, "signature_shape", "rows");
    require_pointer(words, "signature_shape", "words");
    check_extents("signatures", {{"heads", heads}}, 1);
    check_extents("signatures", {{"heads", heads}, {"tokens", tokens}, {"sink", sink}, {"recent", recent}});
    const int64_t begin = sink < tokens ? sink : tokens;
    const int64_t end = tokens - recent > begin ? tokens - recent : begin;
    *rows = end - begin;
    *words = kvcrush::signature_words(heads);
  });
}

kvcrush_status kvcrush_signatures(kvcrush_workspace* ws, const float* scores, int64_t heads, int64_t tokens,
                                  int64_t sink, int64_t recent, const char* threshold, uint64_t* out,
                                  int64_t out_rows, int64_t out_words) {
  return guarded([&] {
    require_pointer(scores, "signatures", "scores");
    check_extents("signatures", {{"heads", heads}}, 1);
    check_extents("signatures", {{"heads", heads}, {"tokens", tokens}, {"sink", sink}, {"recent", recent}});
    const int64_t begin = sink < tokens ? sink : tokens;
    const int64_t end = tokens - recent > begin ? tokens - recent : begin;
    const int64_t words = kvcrush::signature_words(heads);
    const auto mode = parse_or(threshold, kvcrush::threshold_mode::median, kvcrush::parse_threshold_mode);
    if (end > begin) require_pointer(out, "signatures", "out");
    if (out_rows != end - begin || out_words != words) {
      // Larger is as wrong as smaller here: the output is dense.
      throw_too_small("signatures: output must be (", end - begin, ", ", words, "), got (", out_rows, ", ", out_words,
                      ") (see kvcrush_signature_shape)");
    }
    // compute_signatures() reports NaN only after writing signatures, so
    // look for it first: one read of the evictable scores.
    for (int64_t h = 0; h < heads; ++h) {
      const float* row = scores + h * tokens;
      bool nan = false;
      for (int64_t t = begin; t < end; ++t) nan |= std::isnan(row[t]);
      require(!nan, "signatures: scores contain NaN (head ", h, ")");
    }
    static_assert(sizeof(std::uint64_t) == sizeof(uint64_t));
    kvcrush::dispatch::compute_signatures(kvcrush::make_matrix_view(scores, heads, tokens), begin, end, mode,
                                kvcrush::make_matrix_view(reinterpret_cast<std::uint64_t*>(out), end - begin, words),
                                workspace_of(ws));
  });
}

kvcrush_status kvcrush_budgets(int pyramid, int64_t budget, int64_t window, int64_t layers, int64_t tokens,
                               int64_t beta, int64_t* out, int64_t out_length) {
  return guarded([&] {
    require(layers >= 1, "budgets: need at least one layer (got ", layers, ")");
    require_pointer(out, "budgets", "out");
    if (out_length < layers) throw_too_small("budgets: out holds ", out_length, " entries for ", layers, " layers");
    if (beta <= 0) beta = 20;
    // Off the hot path (once per prompt), so the library's vector is fine.
    const auto values = pyramid ? kvcrush::pyramid_budgets(budget, window, layers, tokens, beta)
                                : kvcrush::uniform_budgets(budget, layers);
    for (std::size_t l = 0; l < values.size(); ++l) out[l] = values[l];
  });
}

kvcrush_status kvcrush_compact(void* keys, void* values, kvcrush_dtype dtype, kvcrush_layout layout, int64_t heads,
                               int64_t tokens, int64_t head_dim, int64_t token_capacity, const int64_t* keep,
                               int64_t keep_rows, int64_t keep_width, const int64_t* counts, int64_t block_size,
                               int64_t* new_tokens) {
  // C callers may pass any int (C enums are ints, ctypes passes ints), but
  // in C++ reading an enum holding a value outside its enumerators' range
  // is undefined (found by fuzzing: UBSan stops here, and -fstrict-enums
  // may drop the checks below). So the values are read as the ints they
  // are and checked before they are used as enums.
  int raw_dtype = 0, raw_layout = 0;
  static_assert(sizeof raw_dtype == sizeof dtype && sizeof raw_layout == sizeof layout, "C enums are int-sized");
  std::memcpy(&raw_dtype, &dtype, sizeof raw_dtype);
  std::memcpy(&raw_layout, &layout, sizeof raw_layout);
  return guarded([&] {
    require_pointer(keys, "compact", "keys");
    require_pointer(keep, "compact", "keep");
    require(raw_dtype == KVCRUSH_FLOAT32 || raw_dtype == KVCRUSH_FLOAT16 || raw_dtype == KVCRUSH_BFLOAT16,
            "compact: unknown dtype ", raw_dtype);
    require(raw_layout == KVCRUSH_HEAD_TOKEN_DIM || raw_layout == KVCRUSH_TOKEN_HEAD_DIM, "compact: unknown layout ",
            raw_layout);
    if (token_capacity == 0 || layout == KVCRUSH_TOKEN_HEAD_DIM) token_capacity = tokens;
    require(token_capacity >= tokens, "compact: token_capacity ", token_capacity, " is below tokens ", tokens);
    check_extents("compact", {{"heads", heads}, {"token capacity", token_capacity}, {"head_dim", head_dim}});
    check_extents("compact", {{"keep rows", keep_rows}, {"keep width", keep_width}});
    require(block_size >= 1, "compact: block_size must be >= 1 (got ", block_size, ")");
    require(block_size == 1 || keep_rows == 1, "compact: block keep sets are shared (one row), got ", keep_rows,
            " rows");
    if (counts) {
      for (int64_t r = 0; r < keep_rows; ++r) {
        require(counts[r] >= 0 && counts[r] <= keep_width, "compact: counts[", r, "] = ", counts[r],
                " outside [0, ", keep_width, "]");
      }
    }
    const kvcrush::keep_view kv(kvcrush::make_matrix_view<const index_t>(keep, keep_rows, keep_width),
                                counts ? kvcrush::make_vector_view<const index_t>(counts, keep_rows)
                                       : kvcrush::vector_view<const index_t>());
    index_t length = 0;
    switch (dtype) {
      case KVCRUSH_FLOAT32:
        length = compact_typed<float>(keys, values, layout, heads, tokens, head_dim, token_capacity, kv, block_size);
        break;
      case KVCRUSH_FLOAT16:
        length = compact_typed<kvcrush::float16>(keys, values, layout, heads, tokens, head_dim, token_capacity, kv,
                                                 block_size);
        break;
      case KVCRUSH_BFLOAT16:
        length = compact_typed<kvcrush::bfloat16>(keys, values, layout, heads, tokens, head_dim, token_capacity, kv,
                                                  block_size);
        break;
    }
    if (new_tokens) *new_tokens = length;
  });
}

}  // extern "C"

// The C API (include/kvcrush/c_api.h) through its entry points, with
// fuzzed options (strings included, NULL and garbage), shapes, declared
// buffer sizes and data. Every output buffer is allocated exactly as large
// as the call is told, so AddressSanitizer sees any write past it.
//
// Checked: no call ever returns KVCRUSH_INTERNAL_ERROR or
// KVCRUSH_OUT_OF_MEMORY (shapes are small); a failed call leaves every
// output untouched and sets a message; a selection the shape query refuses
// is refused too; keep sets are sorted, in range and within the width the
// shape query promised, nothing written past counts; compaction moves
// exactly the kept rows (against a plain model).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcrush/c_api.h"

// c_api_raw_calls.c: kvcrush_compact with plain ints for dtype and layout.
extern "C" kvcrush_status kvcrush_fuzz_compact_raw(void* keys, void* values, int dtype, int layout, int64_t heads,
                                                   int64_t tokens, int64_t head_dim, int64_t token_capacity,
                                                   const int64_t* keep, int64_t keep_rows, int64_t keep_width,
                                                   const int64_t* counts, int64_t block_size, int64_t* new_tokens);

namespace {

constexpr std::int64_t sentinel = -7;

void check_status(kvcrush_status s) {
  KVCRUSH_FUZZ_CHECK(s == KVCRUSH_OK || s == KVCRUSH_INVALID_ARGUMENT || s == KVCRUSH_BUFFER_TOO_SMALL);
  if (s != KVCRUSH_OK) KVCRUSH_FUZZ_CHECK(std::strlen(kvcrush_last_error()) > 0);
}

// One of the option spellings, a fuzzed word, or NULL.
const char* word(kvcrush_fuzz::reader& in, std::deque<std::string>& storage, const std::vector<const char*>& known) {
  const std::uint8_t b = in.byte();
  if (b < 200) return known[b % known.size()];
  if (b < 230) return nullptr;
  storage.push_back(in.text(24));
  return storage.back().c_str();
}

float value(kvcrush_fuzz::reader& in) {
  switch (in.byte() % 16) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return std::numeric_limits<float>::infinity();
    case 2: return -std::numeric_limits<float>::infinity();
    case 3: return in.f32();
    default: return static_cast<float>(in.byte() % 8) / 8.0f;
  }
}

std::vector<float> values(kvcrush_fuzz::reader& in, std::int64_t n) {
  std::vector<float> out(static_cast<std::size_t>(n > 0 ? n : 0));
  // Few distinct values: ties; the rest of the input decides them.
  const float a = value(in), b = value(in), c = value(in);
  for (auto& v : out) {
    const std::uint8_t k = in.byte();
    v = k % 3 == 0 ? a : k % 3 == 1 ? b : c;
  }
  return out;
}

std::int64_t extent(kvcrush_fuzz::reader& in, std::int64_t limit) {
  const std::uint8_t b = in.byte();
  if (b == 255) return -in.in_range(1, 3);            // negative now and then
  if (b == 254) return std::int64_t{1} << in.in_range(31, 62);  // absurd now and then
  return in.in_range(0, limit);
}

kvcrush_select_options options(kvcrush_fuzz::reader& in, std::deque<std::string>& storage) {
  kvcrush_select_options o;
  kvcrush_select_options_init(&o);
  if (in.byte() == 255) o.struct_size = in.in_range(0, sizeof o - 1);  // not initialised
  o.policy = word(in, storage, {"precomputed", "h2o", "streaming", "random", "full", "snapkv", "pyramidkv", "tova",
                                "knorm", "snapkv+kvcrush", "precomputed+adakv", "snapkv+adakv+kvcrush",
                                "h2o+kvcrush", "full+kvcrush"});
  o.budget = extent(in, 300);
  o.sink = in.flag() ? 0 : extent(in, 40);
  o.recent = in.flag() ? -1 : extent(in, 40);
  const double crushes[] = {-1.0, 0.0, 0.25, 0.5, 1.0, 1.5, std::nan("")};
  o.crush = crushes[in.byte() % 7];
  o.anchor = word(in, storage, {"mean", "inv_mean", "zeros", "ones", "alternating", "random"});
  o.seed = in.u32();
  o.representative = word(in, storage, {"bucket_center", "bucket_start", "linspace", "stride"});
  o.threshold = word(in, storage, {"median", "mean"});
  o.per_head = in.flag();
  const std::int64_t blocks[] = {1, 1, 1, 2, 4, 16, 0, -1};
  o.block_size = blocks[in.byte() % 8];
  o.adakv_alpha = in.byte() % 8 == 0 ? -0.5 : 0.2;
  o.signature_heads = word(in, storage, {"kv", "query"});
  o.kv_heads = in.in_range(-1, 8);
  o.window = in.in_range(-1, 12);
  o.pool = word(in, storage, {"avg", "max"});
  const std::int64_t kernels[] = {7, 1, 3, 5, 0, 2, -1};
  o.kernel = kernels[in.byte() % 7];
  o.gqa = word(in, storage, {"mean", "max", "sum"});
  return o;
}

// A selection from scores or attention, with the shape query first.
void select(kvcrush_fuzz::reader& in, kvcrush_workspace* ws, bool attention) {
  std::deque<std::string> storage;  // a deque: c_str() pointers stay valid as it grows
  const kvcrush_select_options o = options(in, storage);
  const std::int64_t heads = extent(in, 16);        // KV heads (scores) or query heads (attention)
  const std::int64_t rows = attention ? extent(in, 12) : 0;
  const std::int64_t tokens = extent(in, 600);
  const bool sane = heads >= 0 && heads <= 64 && rows >= 0 && rows <= 64 && tokens >= 0 && tokens <= 4096;
  const std::int64_t kv_heads = attention ? o.kv_heads : heads;
  std::int64_t shape_rows = -1, shape_width = -1;
  const kvcrush_status shape = kvcrush_keep_shape(&o, attention ? (kv_heads > 0 ? kv_heads : 1) : heads, tokens,
                                                  rows, &shape_rows, &shape_width);
  check_status(shape);
  if (shape != KVCRUSH_OK) KVCRUSH_FUZZ_CHECK(shape_rows == -1 && shape_width == -1);
  // Declared output sizes: as the shape query said, or a little off.
  std::int64_t keep_rows = shape == KVCRUSH_OK ? shape_rows : in.in_range(0, 4);
  std::int64_t keep_width = shape == KVCRUSH_OK ? shape_width : in.in_range(0, 40);
  const std::uint8_t skew = in.byte();
  if (skew == 1) keep_rows += 1;
  if (skew == 2) keep_width -= 1;
  if (skew == 3) keep_width += 3;
  if (!sane || keep_rows < 0 || keep_width < 0 || keep_rows * keep_width > 1 << 20) return;
  const std::vector<float> data = values(in, attention ? heads * rows * tokens : heads * tokens);
  const bool null_data = in.byte() == 255;
  std::vector<std::int64_t> keep(static_cast<std::size_t>(keep_rows * keep_width), sentinel);
  std::vector<std::int64_t> counts(static_cast<std::size_t>(keep_rows), sentinel);
  const float* p = null_data ? nullptr : data.data();
  const kvcrush_status s =
      attention ? kvcrush_select_attention(ws, p, heads, rows, tokens, &o, keep.data(), keep_rows, keep_width,
                                           counts.data())
                : kvcrush_select_scores(ws, p, heads, tokens, &o, keep.data(), keep_rows, keep_width, counts.data());
  check_status(s);
  if (s != KVCRUSH_OK) {
    for (auto v : keep) KVCRUSH_FUZZ_CHECK(v == sentinel);
    for (auto v : counts) KVCRUSH_FUZZ_CHECK(v == sentinel);
    return;
  }
  // What the shape query refused, the selection must refuse as well.
  KVCRUSH_FUZZ_CHECK(shape == KVCRUSH_OK);
  const std::int64_t b = o.block_size;
  const std::int64_t units = (tokens + b - 1) / b;
  for (std::int64_t r = 0; r < keep_rows; ++r) {
    const std::int64_t n = counts[static_cast<std::size_t>(r)];
    KVCRUSH_FUZZ_CHECK(n >= 0 && n <= shape_width && n <= keep_width);
    const std::int64_t* row = keep.data() + r * keep_width;
    for (std::int64_t i = 0; i < n; ++i) {
      KVCRUSH_FUZZ_CHECK(row[i] >= 0 && row[i] < units);
      if (i > 0) KVCRUSH_FUZZ_CHECK(row[i] > row[i - 1]);
    }
    for (std::int64_t i = n; i < keep_width; ++i) KVCRUSH_FUZZ_CHECK(row[i] == sentinel);
  }
}

void window_scores(kvcrush_fuzz::reader& in, kvcrush_workspace* ws) {
  std::deque<std::string> storage;  // a deque: c_str() pointers stay valid as it grows
  const std::int64_t qh = extent(in, 8), rows = extent(in, 8), tokens = extent(in, 300), kvh = extent(in, 8);
  const std::int64_t window = in.in_range(-1, 9), kernel = in.in_range(-1, 9);
  const char* pool = word(in, storage, {"avg", "max"});
  const char* gqa = word(in, storage, {"mean", "max", "sum"});
  if (qh < 0 || qh > 64 || rows < 0 || rows > 64 || tokens < 0 || tokens > 4096 || kvh < 0 || kvh > 64) return;
  const std::vector<float> a = values(in, qh * rows * tokens);
  std::vector<float> kv(static_cast<std::size_t>(kvh * tokens), -7.0f), q(static_cast<std::size_t>(qh * tokens), -7.0f);
  const bool with_query = in.flag();
  const kvcrush_status s =
      kvcrush_window_scores(ws, a.data(), qh, rows, tokens, kvh, window, pool, kernel, gqa, kv.data(),
                            with_query ? q.data() : nullptr);
  check_status(s);
  if (s != KVCRUSH_OK) {
    for (auto v : kv) KVCRUSH_FUZZ_CHECK(v == -7.0f);
    for (auto v : q) KVCRUSH_FUZZ_CHECK(v == -7.0f);
  }
}

void signatures(kvcrush_fuzz::reader& in, kvcrush_workspace* ws) {
  std::deque<std::string> storage;  // a deque: c_str() pointers stay valid as it grows
  const std::int64_t heads = extent(in, 140), tokens = extent(in, 300), sink = extent(in, 20), recent = extent(in, 20);
  const char* threshold = word(in, storage, {"median", "mean"});
  std::int64_t rows = -1, words = -1;
  const kvcrush_status shape = kvcrush_signature_shape(heads, tokens, sink, recent, &rows, &words);
  check_status(shape);
  if (shape != KVCRUSH_OK) {
    KVCRUSH_FUZZ_CHECK(rows == -1 && words == -1);
    return;
  }
  KVCRUSH_FUZZ_CHECK(rows >= 0 && words >= 0);
  if (heads > 256 || tokens > 4096) return;
  const std::int64_t declared_rows = rows + (in.byte() == 1 ? 1 : 0);
  const std::vector<float> scores = values(in, heads * tokens);
  std::vector<std::uint64_t> out(static_cast<std::size_t>(declared_rows * words), 7);
  const kvcrush_status s =
      kvcrush_signatures(ws, scores.data(), heads, tokens, sink, recent, threshold, out.data(), declared_rows, words);
  check_status(s);
  if (s != KVCRUSH_OK) {
    for (auto v : out) KVCRUSH_FUZZ_CHECK(v == 7);
    return;
  }
  // Bits past the heads stay clear.
  if (heads % 64 != 0) {
    for (std::int64_t r = 0; r < rows; ++r) {
      KVCRUSH_FUZZ_CHECK((out[static_cast<std::size_t>(r * words + words - 1)] >> (heads % 64)) == 0);
    }
  }
}

void budgets(kvcrush_fuzz::reader& in) {
  const int pyramid = in.flag();
  const std::int64_t budget = extent(in, 2000), window = extent(in, 64), layers = extent(in, 40),
                     tokens = extent(in, 5000), beta = in.in_range(-2, 40);
  if (layers > 4096) return;
  const std::int64_t length = layers > 0 ? layers + (in.byte() == 1 ? -1 : 0) : 0;
  std::vector<std::int64_t> out(static_cast<std::size_t>(length > 0 ? length : 0), sentinel);
  const kvcrush_status s = kvcrush_budgets(pyramid, budget, window, layers, tokens, beta, out.data(), length);
  check_status(s);
  if (s != KVCRUSH_OK) {
    for (auto v : out) KVCRUSH_FUZZ_CHECK(v == sentinel);
  }
}

// Compaction against a plain model on the raw elements (any dtype: the
// call moves elements, it never converts them).
void compact(kvcrush_fuzz::reader& in) {
  // Unknown dtype and layout values included.
  const int dtype = static_cast<int>(in.in_range(-1, 3));
  const int layout = static_cast<int>(in.in_range(-1, 2));
  const std::int64_t heads = extent(in, 4), tokens = extent(in, 40), dim = extent(in, 4);
  std::int64_t capacity = in.flag() ? 0 : tokens + in.in_range(-1, 3);
  const std::int64_t block = in.byte() % 4 == 0 ? in.in_range(0, 5) : 1;
  const bool shared = block > 1 || in.flag();
  std::int64_t keep_rows = shared ? 1 : heads;
  if (in.byte() == 1) keep_rows += 1;
  const std::int64_t keep_width = in.in_range(0, 44);
  if (heads < 0 || heads > 64 || tokens < 0 || tokens > 4096 || dim < 0 || dim > 64 || keep_rows < 0) return;
  const std::int64_t cap = capacity == 0 || layout == KVCRUSH_TOKEN_HEAD_DIM ? tokens : capacity;
  if (cap < 0) return;
  const std::size_t element = dtype == KVCRUSH_FLOAT32 ? 4 : 2;
  const std::size_t bytes = static_cast<std::size_t>(heads * cap * dim) * element;
  // Keep sets: mostly valid (sorted subsets), sometimes anything.
  std::vector<std::int64_t> keep(static_cast<std::size_t>(keep_rows * keep_width));
  std::vector<std::int64_t> counts(static_cast<std::size_t>(keep_rows));
  const std::int64_t units = block > 1 ? (tokens + block - 1) / block : tokens;
  const bool garbage = in.byte() == 255;
  for (std::int64_t r = 0; r < keep_rows; ++r) {
    std::int64_t n = 0;
    for (std::int64_t u = 0; u < units && n < keep_width; ++u) {
      if (in.flag()) keep[static_cast<std::size_t>(r * keep_width + n++)] = u;
    }
    counts[static_cast<std::size_t>(r)] = n;
    if (garbage && n > 0) keep[static_cast<std::size_t>(r * keep_width)] = in.in_range(-2, units + 2);
  }
  const bool with_counts = in.byte() % 4 != 0;
  const bool with_values = in.byte() % 4 != 0;
  std::vector<unsigned char> k(bytes), v(bytes);
  for (std::size_t i = 0; i < bytes; ++i) {
    k[i] = static_cast<unsigned char>(i * 7 + 1);
    v[i] = static_cast<unsigned char>(i * 13 + 5);
  }
  const std::vector<unsigned char> k0 = k, v0 = v;
  std::int64_t new_tokens = sentinel;
  const kvcrush_status s = kvcrush_fuzz_compact_raw(k.data(), with_values ? v.data() : nullptr, dtype, layout, heads,
                                                    tokens, dim, capacity, keep.data(), keep_rows, keep_width,
                                                    with_counts ? counts.data() : nullptr, block, &new_tokens);
  check_status(s);
  if (s != KVCRUSH_OK) {
    KVCRUSH_FUZZ_CHECK(k == k0 && v == v0 && new_tokens == sentinel);
    return;
  }
  // Where (head h, token t) lives, in elements.
  const auto at = [&](std::int64_t h, std::int64_t t) {
    return static_cast<std::size_t>(layout == KVCRUSH_HEAD_TOKEN_DIM ? (h * cap + t) * dim : (t * heads + h) * dim);
  };
  std::int64_t longest = 0;
  for (std::int64_t h = 0; h < heads; ++h) {
    // The call reads one row as shared and `heads` rows as per head,
    // whatever the input meant (keep_rows may have been skewed).
    const std::int64_t r = keep_rows == 1 ? 0 : h;
    const std::int64_t n = with_counts ? counts[static_cast<std::size_t>(r)] : keep_width;
    std::vector<std::int64_t> sources;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t u = keep[static_cast<std::size_t>(r * keep_width + i)];
      if (block > 1) {
        for (std::int64_t t = u * block; t < (u + 1) * block && t < tokens; ++t) sources.push_back(t);
      } else {
        sources.push_back(u);
      }
    }
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(sources.size()));
    for (std::size_t i = 0; i < sources.size(); ++i) {
      const std::size_t to = at(h, static_cast<std::int64_t>(i)) * element;
      const std::size_t from = at(h, sources[i]) * element;
      const std::size_t row = static_cast<std::size_t>(dim) * element;
      KVCRUSH_FUZZ_CHECK(std::memcmp(k.data() + to, k0.data() + from, row) == 0);
      if (with_values) KVCRUSH_FUZZ_CHECK(std::memcmp(v.data() + to, v0.data() + from, row) == 0);
    }
  }
  if (heads > 0) KVCRUSH_FUZZ_CHECK(new_tokens == longest);
  if (!with_values) KVCRUSH_FUZZ_CHECK(v == v0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static kvcrush_workspace* ws = [] {
    kvcrush_workspace* w = nullptr;
    if (kvcrush_workspace_create(&w) != KVCRUSH_OK) std::abort();
    return w;
  }();
  kvcrush_fuzz::reader in(data, size);
  // NULL workspace: the thread's own, as documented.
  kvcrush_workspace* w = in.byte() % 4 == 0 ? nullptr : ws;
  switch (in.byte() % 6) {
    case 0: select(in, w, false); break;
    case 1: select(in, w, true); break;
    case 2: window_scores(in, w); break;
    case 3: signatures(in, w); break;
    case 4: budgets(in); break;
    default: compact(in); break;
  }
  return 0;
}

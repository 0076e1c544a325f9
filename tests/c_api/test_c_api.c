/* The C API, compiled as C99: every call against the C++ API (reference.h),
 * and every documented failure: status, message, and untouched buffers. */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcrush/c_api.h"
#include "reference.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    ++checks;                                                             \
    if (!(cond)) {                                                        \
      ++failures;                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                     \
  } while (0)

/* A call that must fail with `status` and a message containing `needle`. */
#define CHECK_FAILS(call, status, needle)                                            \
  do {                                                                               \
    kvcrush_status got_ = (call);                                                    \
    CHECK(got_ == (status));                                                         \
    if (strstr(kvcrush_last_error(), (needle)) == NULL) {                            \
      ++failures;                                                                    \
      fprintf(stderr, "%s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__,        \
              kvcrush_last_error(), (needle));                                       \
    }                                                                                \
  } while (0)

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}
/* Scores on a coarse grid, so that ties (broken by position) are common. */
static void fill_scores(float* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = (float)(next_u32() % 64) * 0.25f;
}
/* Attention-like rows: positive values (they need not sum to one here). */
static void fill_attention(float* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = (float)(next_u32() % 1000) / 1000.0f;
}

static int same_i64(const int64_t* a, const int64_t* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return 0;
  return 1;
}
static int all_equal_i64(const int64_t* a, int64_t n, int64_t value) {
  for (int64_t i = 0; i < n; ++i)
    if (a[i] != value) return 0;
  return 1;
}

/* The level the library should use: KVCRUSH_ISA's when the test runs under
 * it (the ctest entries c_api.c_program.<level>), else the build machine's
 * best. */
static int misspelt_env = 0; /* KVCRUSH_ISA is not a level: refused until kvcrush_use_isa */

static const char* expected_isa(void) {
  const char* env = getenv("KVCRUSH_ISA");
  if (misspelt_env) return KVCRUSH_TEST_ISA;
  return env && *env ? env : KVCRUSH_TEST_ISA;
}

/* Under a KVCRUSH_ISA that names no level (ctest c_api.c_program.misspelt_isa):
 * every kernel call fails cleanly, and kvcrush_use_isa(NULL) recovers. */
static void test_refused_env(void) {
  const char* env = getenv("KVCRUSH_ISA");
  float scores[2 * 8] = {0};
  int64_t keep[4], count = 0;
  kvcrush_select_options o;
  if (!env || !*env || !strcmp(env, "scalar") || !strcmp(env, "avx2") || !strcmp(env, "avx512")) return;
  misspelt_env = 1;
  CHECK(strcmp(kvcrush_isa(), "unavailable") == 0);
  CHECK(strstr(kvcrush_last_error(), "KVCRUSH_ISA") != NULL);
  kvcrush_select_options_init(&o);
  o.budget = 4;
  CHECK(kvcrush_select_scores(NULL, scores, 2, 8, &o, keep, 1, 4, &count) == KVCRUSH_INVALID_ARGUMENT);
  CHECK(strstr(kvcrush_last_error(), "KVCRUSH_ISA") != NULL);
  CHECK(kvcrush_use_isa(NULL) == KVCRUSH_OK);
  CHECK(strcmp(kvcrush_isa(), KVCRUSH_TEST_ISA) == 0);
}

/* Run-time dispatch: a level this machine lacks or an unknown name is an
 * error and changes nothing; scalar always works; NULL restores the best. */
static void test_use_isa(void) {
  CHECK(kvcrush_use_isa("avx1024") == KVCRUSH_INVALID_ARGUMENT);
  CHECK(strstr(kvcrush_last_error(), "avx1024") != NULL);
  CHECK(strcmp(kvcrush_isa(), expected_isa()) == 0);
  if (strcmp(KVCRUSH_TEST_ISA, "avx512") != 0) {
    CHECK(kvcrush_use_isa("avx512") == KVCRUSH_INVALID_ARGUMENT);
    CHECK(strcmp(kvcrush_isa(), expected_isa()) == 0);
  }
  CHECK(kvcrush_use_isa("scalar") == KVCRUSH_OK);
  CHECK(strcmp(kvcrush_isa(), "scalar") == 0);
  CHECK(kvcrush_use_isa(NULL) == KVCRUSH_OK);
  CHECK(strcmp(kvcrush_isa(), KVCRUSH_TEST_ISA) == 0);
  CHECK(kvcrush_use_isa(expected_isa()) == KVCRUSH_OK); /* the rest runs at the level asked for */
}

static void test_version(void) {
  CHECK(strcmp(kvcrush_version(), KVCRUSH_TEST_VERSION) == 0);
  CHECK(strcmp(kvcrush_isa(), expected_isa()) == 0);
  CHECK(kvcrush_c_api_version() == KVCRUSH_C_API_VERSION);
  CHECK(strcmp(kvcrush_status_string(KVCRUSH_BUFFER_TOO_SMALL), "buffer too small") == 0);
}

/* Every CLI select option on scores, shared / per head / block mode. */
static void test_select_scores(kvcrush_workspace* ws) {
  static const char* anchors[] = {"mean", "inv_mean", "zeros", "ones", "alternating", "random"};
  static const char* reps[] = {"bucket_center", "bucket_start", "linspace", "stride"};
  static const char* thresholds[] = {"median", "mean"};
  static const double crushes[] = {0.0, 0.5, 1.0};
  static const int64_t head_counts[] = {3, 8, 70};
  enum { max_heads = 70, max_tokens = 203 };
  static float scores[max_heads * max_tokens];
  static int64_t got[max_heads * max_tokens], want[max_heads * max_tokens], counts[max_heads];
  int combos = 0;
  for (int hi = 0; hi < 3; ++hi) {
    const int64_t heads = head_counts[hi];
    for (int64_t tokens = 41; tokens <= max_tokens; tokens += 162) {
      fill_scores(scores, heads * tokens);
      for (int block = 1; block <= 4; block += 3) {
        for (int per_head = 0; per_head <= 1; ++per_head) {
          for (int ci = 0; ci < 3; ++ci) {
            for (int ai = 0; ai < 6; ++ai) {
              for (int ri = 0; ri < 4; ++ri) {
                for (int ti = 0; ti < 2; ++ti) {
                  /* Mean thresholds need values away from the mean (SPEC
                   * 4.1: its last bits may differ between ISAs) and these
                   * grid scores hit it; test_signatures covers "mean". */
                  if (ti == 1) continue;
                  kvcrush_select_options o;
                  kvcrush_select_options_init(&o);
                  o.budget = 32;
                  o.sink = 4;
                  o.recent = 8;
                  o.crush = crushes[ci];
                  o.anchor = anchors[ai];
                  o.seed = 7;
                  o.representative = reps[ri];
                  o.threshold = thresholds[ti];
                  o.per_head = per_head;
                  o.block_size = block;
                  ref_keep_options r = {32, 4, 8, crushes[ci], anchors[ai], 7, reps[ri], thresholds[ti], per_head,
                                        block};
                  int64_t rows = 0, width = 0;
                  CHECK(kvcrush_keep_shape(&o, heads, tokens, 0, &rows, &width) == KVCRUSH_OK);
                  CHECK(rows == (per_head ? heads : 1));
                  const int64_t count = ref_select_keep(scores, heads, tokens, &r, NULL, 0, want, width);
                  CHECK(count == width);
                  CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, rows, width, counts) == KVCRUSH_OK);
                  CHECK(all_equal_i64(counts, rows, count));
                  CHECK(same_i64(got, want, rows * width));
                  ++combos;
                }
              }
            }
          }
        }
      }
    }
  }
  CHECK(combos > 500);

  /* N <= budget keeps everything. */
  {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.budget = 64;
    o.crush = 0.5;
    int64_t rows, width, keep[20], count = -1;
    fill_scores(scores, 3 * 20);
    CHECK(kvcrush_keep_shape(&o, 3, 20, 0, &rows, &width) == KVCRUSH_OK && rows == 1 && width == 20);
    CHECK(kvcrush_select_scores(ws, scores, 3, 20, &o, keep, 1, 20, &count) == KVCRUSH_OK);
    CHECK(count == 20 && keep[0] == 0 && keep[19] == 19);
  }
}

/* The adaptive KVCrush split (crush_split, crush_mass) against the C++ API,
 * its errors, and callers built before the two fields existed. */
static void test_select_adaptive(kvcrush_workspace* ws) {
  static const double masses[] = {0.3, 0.9, 1.0};
  enum { max_heads = 8, tokens = 203 };
  static float scores[max_heads * tokens];
  static int64_t got[max_heads * tokens], want[max_heads * tokens], counts[max_heads];
  for (int64_t heads = 3; heads <= max_heads; heads += 5) {
    fill_scores(scores, heads * tokens);
    for (int block = 1; block <= 4; block += 3) {
      for (int per_head = 0; per_head <= 1; ++per_head) {
        for (int mi = 0; mi < 3; ++mi) {
          kvcrush_select_options o;
          kvcrush_select_options_init(&o);
          CHECK(o.crush_split == NULL && o.crush_mass == 0.9);
          o.budget = 32;
          o.sink = 4;
          o.recent = 8;
          o.per_head = per_head;
          o.block_size = block;
          o.crush_split = "adaptive";
          o.crush_mass = masses[mi];
          ref_keep_options r = {32, 4, 8, 0.0, "mean", 0, "bucket_center", "median", per_head, block};
          int64_t rows = 0, width = 0;
          CHECK(kvcrush_keep_shape(&o, heads, tokens, 0, &rows, &width) == KVCRUSH_OK);
          const int64_t count = ref_select_adaptive(scores, heads, tokens, &r, masses[mi], want, width);
          CHECK(count == width);
          CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, rows, width, counts) == KVCRUSH_OK);
          CHECK(all_equal_i64(counts, rows, count));
          CHECK(same_i64(got, want, rows * width));
        }
      }
    }
  }
  {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.budget = 32;
    o.sink = 4;
    o.recent = 8;
    o.crush_split = "adaptive";
    int64_t keep[32], count = -1;
    fill_scores(scores, 2 * 100);
    o.crush = 0.5;
    CHECK_FAILS(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count), KVCRUSH_INVALID_ARGUMENT,
                "crush applies to the fixed split");
    o.crush = -1.0;
    o.crush_mass = 0.0;
    CHECK_FAILS(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count), KVCRUSH_INVALID_ARGUMENT,
                "crush_mass must be in (0, 1]");
    o.crush_mass = 0.9;
    o.crush_split = "sometimes";
    CHECK_FAILS(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count), KVCRUSH_INVALID_ARGUMENT,
                "unknown crush split 'sometimes'");
    o.crush_split = "adaptive";
    o.policy = "streaming";
    CHECK_FAILS(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count), KVCRUSH_INVALID_ARGUMENT,
                "StreamingLLM");
    o.policy = NULL;
    scores[150] = -1.0f; /* head 1, token 50: evictable */
    CHECK_FAILS(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count), KVCRUSH_INVALID_ARGUMENT,
                "non-negative");
    CHECK(count == -1);
    /* A caller built before crush_split existed: the fixed split. */
    scores[150] = 1.0f;
    int64_t want_keep[32];
    ref_keep_options r = {32, 4, 8, 0.5, "mean", 0, "bucket_center", "median", 0, 1};
    CHECK(ref_select_keep(scores, 2, 100, &r, NULL, 0, want_keep, 32) == 32);
    o.struct_size = offsetof(kvcrush_select_options, crush_split);
    o.policy = "precomputed+kvcrush";
    o.crush_mass = -5.0; /* beyond the old struct: never read */
    CHECK(kvcrush_select_scores(ws, scores, 2, 100, &o, keep, 1, 32, &count) == KVCRUSH_OK);
    CHECK(count == 32 && same_i64(keep, want_keep, 32));
  }
}

/* Policy strings: "+adakv" gives ragged rows, equal to the C++ policy types. */
static void test_policies(kvcrush_workspace* ws) {
  enum { heads = 8, tokens = 300 };
  static float scores[heads * tokens];
  static int64_t got[heads * tokens], want[heads * tokens], got_counts[heads], want_counts[heads];
  for (int i = 0; i < heads * tokens; ++i) {
    /* Heads with very different score scales, so AdaKV's budgets differ. */
    scores[i] = (float)(next_u32() % 1000) * (float)(1 + (i / tokens) * (i / tokens));
  }
  for (int crush = 0; crush <= 1; ++crush) {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.policy = crush ? "precomputed+adakv+kvcrush" : "precomputed+adakv";
    o.budget = 64;
    o.sink = 4;
    o.recent = 16;
    int64_t rows = 0, width = 0;
    CHECK(kvcrush_keep_shape(&o, heads, tokens, 0, &rows, &width) == KVCRUSH_OK);
    CHECK(rows == heads); /* +adakv implies per head */
    CHECK(width >= 64 && width <= tokens);
    memset(want, 0, sizeof want);
    memset(got, 0, sizeof got);
    CHECK(ref_select_adakv(scores, heads, tokens, 64, 4, 16, crush ? 0.5 : 0.0, 0.2, want, width, want_counts) == 0);
    CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, rows, width, got_counts) == KVCRUSH_OK);
    CHECK(same_i64(got_counts, want_counts, heads));
    CHECK(same_i64(got, want, heads * width));
    int64_t total = 0, ragged = 0;
    for (int h = 0; h < heads; ++h) {
      total += got_counts[h];
      ragged |= got_counts[h] != got_counts[0];
    }
    CHECK(total == heads * 64); /* the layer's budget, shared out */
    CHECK(ragged);
  }
  /* "h2o" takes accumulated attention as scores: the precomputed answer. */
  {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.policy = "h2o+kvcrush";
    o.budget = 64;
    o.sink = 4;
    o.recent = 16;
    int64_t count = 0;
    ref_keep_options r = {64, 4, 16, 0.5, "mean", 0, "bucket_center", "median", 0, 1};
    CHECK(ref_select_keep(scores, heads, tokens, &r, NULL, 0, want, 64) == 64);
    CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, 1, 64, &count) == KVCRUSH_OK);
    CHECK(count == 64 && same_i64(got, want, 64));
  }
  /* "streaming" keeps sink + recent only; "full" keeps everything. */
  {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.policy = "streaming";
    o.budget = 20;
    o.sink = 4;
    o.recent = 16;
    int64_t count = 0;
    CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, 1, 20, &count) == KVCRUSH_OK);
    CHECK(count == 20 && got[3] == 3 && got[4] == tokens - 16 && got[19] == tokens - 1);
    o.policy = "full";
    int64_t rows = 0, width = 0;
    CHECK(kvcrush_keep_shape(&o, heads, tokens, 0, &rows, &width) == KVCRUSH_OK && width == tokens);
    CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, got, 1, tokens, &count) == KVCRUSH_OK);
    CHECK(count == tokens && got[tokens - 1] == tokens - 1);
  }
}

/* Window attention: SnapKV scores and selection with query-head signatures,
 * the CLI's --attention path. */
static void test_attention(kvcrush_workspace* ws) {
  enum { qh = 8, kvh = 2, rows = 12, tokens = 150, window = 10 };
  static float attention[qh * rows * tokens];
  static float kv[kvh * tokens], query[qh * tokens], want_kv[kvh * tokens], want_query[qh * tokens];
  static int64_t got[kvh * 64], want[kvh * 64], counts[kvh];
  fill_attention(attention, qh * rows * tokens);
  static const char* pools[] = {"avg", "max"};
  static const char* gqas[] = {"mean", "max", "sum"};
  for (int p = 0; p < 2; ++p) {
    for (int g = 0; g < 3; ++g) {
      CHECK(ref_window_scores(attention, qh, rows, tokens, kvh, window, pools[p], 5, gqas[g], want_kv, want_query) == 0);
      CHECK(kvcrush_window_scores(ws, attention, qh, rows, tokens, kvh, window, pools[p], 5, gqas[g], kv, query) ==
            KVCRUSH_OK);
      CHECK(memcmp(kv, want_kv, sizeof kv) == 0);
      CHECK(memcmp(query, want_query, sizeof query) == 0);
    }
  }
  for (int per_head = 0; per_head <= 1; ++per_head) {
    for (int sig = 0; sig <= 1; ++sig) {
      kvcrush_select_options o;
      kvcrush_select_options_init(&o);
      o.kv_heads = kvh;
      o.window = window;
      o.pool = "max";
      o.kernel = 5;
      o.budget = 64;
      o.sink = 4;
      o.crush = 0.5;
      o.per_head = per_head;
      o.signature_heads = sig ? "query" : "kv";
      int64_t r = 0, width = 0;
      CHECK(kvcrush_keep_shape(&o, kvh, tokens, rows, &r, &width) == KVCRUSH_OK);
      CHECK(r == (per_head ? kvh : 1) && width == 64);
      CHECK(ref_window_scores(attention, qh, rows, tokens, kvh, window, "max", 5, "mean", want_kv, want_query) == 0);
      /* recent defaults to the window, as in the CLI. */
      ref_keep_options ro = {64, 4, window, 0.5, "mean", 0, "bucket_center", "median", per_head, 1};
      CHECK(ref_select_keep(want_kv, kvh, tokens, &ro, sig ? want_query : NULL, qh, want, 64) == 64);
      CHECK(kvcrush_select_attention(ws, attention, qh, rows, tokens, &o, got, r, 64, counts) == KVCRUSH_OK);
      CHECK(same_i64(got, want, r * 64));
      CHECK(got[63] == tokens - 1 && got[64 - window] == tokens - window);
    }
  }
  /* Policy strings on attention: snapkv+adakv+kvcrush is ragged per head;
   * tova runs on the last row. */
  {
    kvcrush_select_options o;
    kvcrush_select_options_init(&o);
    o.policy = "snapkv+adakv+kvcrush";
    o.kv_heads = kvh;
    o.budget = 40;
    int64_t r = 0, width = 0, c[kvh];
    static int64_t keep[kvh * tokens];
    CHECK(kvcrush_keep_shape(&o, kvh, tokens, rows, &r, &width) == KVCRUSH_OK && r == kvh);
    CHECK(kvcrush_select_attention(ws, attention, qh, rows, tokens, &o, keep, r, width, c) == KVCRUSH_OK);
    CHECK(c[0] + c[1] == 2 * 40);
    o.policy = "tova";
    CHECK(kvcrush_keep_shape(&o, kvh, tokens, rows, &r, &width) == KVCRUSH_OK && r == 1 && width == 40);
    CHECK(kvcrush_select_attention(ws, attention, qh, rows, tokens, &o, keep, 1, 40, c) == KVCRUSH_OK);
    CHECK(c[0] == 40 && keep[39] == tokens - 1);
  }
}

static void test_signatures_and_budgets(kvcrush_workspace* ws) {
  enum { heads = 70, tokens = 90, sink = 3, recent = 5 };
  static float scores[heads * tokens];
  static uint64_t got[tokens * 2], want[tokens * 2];
  for (int i = 0; i < heads * tokens; ++i) scores[i] = (float)(next_u32() % 100000);
  int64_t rows = 0, words = 0;
  CHECK(kvcrush_signature_shape(heads, tokens, sink, recent, &rows, &words) == KVCRUSH_OK);
  CHECK(rows == tokens - sink - recent && words == 2);
  for (int t = 0; t < 2; ++t) {
    const char* threshold = t ? "mean" : "median";
    CHECK(ref_signatures(scores, heads, tokens, sink, recent, threshold, want) == 0);
    CHECK(kvcrush_signatures(ws, scores, heads, tokens, sink, recent, threshold, got, rows, words) == KVCRUSH_OK);
    CHECK(memcmp(got, want, (size_t)(rows * words) * sizeof(uint64_t)) == 0);
  }

  int64_t b[32], wb[32];
  CHECK(ref_pyramid_budgets(256, 32, 32, 4096, 20, wb) == 0);
  CHECK(kvcrush_budgets(1, 256, 32, 32, 4096, 0, b, 32) == KVCRUSH_OK);
  CHECK(same_i64(b, wb, 32));
  CHECK(b[0] > b[31]); /* a pyramid: shrinking with depth */
  CHECK(kvcrush_budgets(0, 256, 32, 32, 4096, 0, b, 32) == KVCRUSH_OK);
  CHECK(all_equal_i64(b, 32, 256));
  CHECK_FAILS(kvcrush_budgets(1, 256, 32, 32, 4096, 0, b, 31), KVCRUSH_BUFFER_TOO_SMALL, "31");
  CHECK_FAILS(kvcrush_budgets(1, 16, 32, 32, 4096, 0, b, 32), KVCRUSH_INVALID_ARGUMENT, "window");
}

/* Element (h, t, d) of a cache in either layout, as 16-bit words or floats. */
static int64_t at(int layout, int64_t heads, int64_t capacity, int64_t dim, int64_t h, int64_t t, int64_t d) {
  return layout == KVCRUSH_HEAD_TOKEN_DIM ? (h * capacity + t) * dim + d : (t * heads + h) * dim + d;
}

/* Compaction: token keep[h][i] of head h becomes token i, in every dtype and
 * layout, shared, per-head ragged and block keep sets. */
static void test_compact(void) {
  enum { heads = 3, tokens = 20, dim = 5, capacity = 24 };
  static const int64_t shared_keep[] = {0, 1, 5, 6, 7, 12, 19};
  static const int64_t ragged_keep[] = {0, 2, 4, 6, 8, 0, /* head 0: 5 */ 0, 1, 19, 0, 0, 0, /* head 1: 3 */
                                        3, 0, 0, 0, 0, 0 /* head 2: 1 */};
  static const int64_t ragged_counts[] = {5, 3, 1};
  static const int64_t blocks[] = {0, 2, 4}; /* block size 4: tokens 0-3, 8-11, 16-19 */
  for (int dtype = 0; dtype < 3; ++dtype) {
    const size_t elem = dtype == KVCRUSH_FLOAT32 ? 4 : 2;
    for (int layout = 0; layout < 2; ++layout) {
      for (int mode = 0; mode < 3; ++mode) {
        const int64_t cap = layout == KVCRUSH_HEAD_TOKEN_DIM ? capacity : tokens;
        const size_t n = (size_t)(heads * cap * dim);
        unsigned char* k = malloc(n * elem);
        unsigned char* v = malloc(n * elem);
        unsigned char* k0 = malloc(n * elem);
        /* Each element stores its own (h, t, d) code, so moves are visible
         * in any dtype (codes stay below 2^11: exact in float16 too, and
         * compared as bit patterns anyway). */
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t t = 0; t < cap; ++t)
            for (int64_t d = 0; d < dim; ++d) {
              const uint16_t code = (uint16_t)(h * 600 + t * 5 + d);
              const int64_t i = at(layout, heads, cap, dim, h, t, d);
              if (elem == 4) {
                const float f = (float)code;
                memcpy(k + i * 4, &f, 4);
                const float g = -f;
                memcpy(v + i * 4, &g, 4);
              } else {
                const uint16_t g = (uint16_t)(code ^ 0x8000u);
                memcpy(k + i * 2, &code, 2);
                memcpy(v + i * 2, &g, 2);
              }
            }
        memcpy(k0, k, n * elem);
        int64_t new_tokens = -1;
        kvcrush_status s;
        if (mode == 0) {
          s = kvcrush_compact(k, v, (kvcrush_dtype)dtype, (kvcrush_layout)layout, heads, tokens, dim,
                              layout == KVCRUSH_HEAD_TOKEN_DIM ? capacity : 0, shared_keep, 1, 7, NULL, 1, &new_tokens);
        } else if (mode == 1) {
          s = kvcrush_compact(k, v, (kvcrush_dtype)dtype, (kvcrush_layout)layout, heads, tokens, dim,
                              layout == KVCRUSH_HEAD_TOKEN_DIM ? capacity : 0, ragged_keep, heads, 6, ragged_counts, 1,
                              &new_tokens);
        } else {
          s = kvcrush_compact(k, v, (kvcrush_dtype)dtype, (kvcrush_layout)layout, heads, tokens, dim,
                              layout == KVCRUSH_HEAD_TOKEN_DIM ? capacity : 0, blocks, 1, 3, NULL, 4, &new_tokens);
        }
        CHECK(s == KVCRUSH_OK);
        if (s != KVCRUSH_OK) fprintf(stderr, "  dtype %d layout %d mode %d: %s\n", dtype, layout, mode, kvcrush_last_error());
        CHECK(new_tokens == (mode == 0 ? 7 : mode == 1 ? 5 : 12));
        int ok = 1;
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t count = mode == 0 ? 7 : mode == 1 ? ragged_counts[h] : 12;
          for (int64_t i = 0; i < count; ++i) {
            const int64_t src = mode == 0 ? shared_keep[i] : mode == 1 ? ragged_keep[h * 6 + i] : blocks[i / 4] * 4 + i % 4;
            for (int64_t d = 0; d < dim; ++d) {
              const int64_t now = at(layout, heads, cap, dim, h, i, d);
              const int64_t was = at(layout, heads, cap, dim, h, src, d);
              ok &= memcmp(k + now * elem, k0 + was * elem, elem) == 0;
              uint16_t code = (uint16_t)(h * 600 + src * 5 + d);
              if (elem == 4) {
                const float g = -(float)code;
                ok &= memcmp(v + now * 4, &g, 4) == 0;
              } else {
                code ^= 0x8000u;
                ok &= memcmp(v + now * 2, &code, 2) == 0;
              }
            }
          }
        }
        CHECK(ok);

        /* A keep set that is not increasing: rejected, cache untouched. */
        memcpy(k0, k, n * elem);
        static const int64_t bad[] = {0, 3, 2};
        CHECK_FAILS(kvcrush_compact(k, v, (kvcrush_dtype)dtype, (kvcrush_layout)layout, heads, tokens, dim, 0, bad, 1,
                                    3, NULL, 1, NULL),
                    KVCRUSH_INVALID_ARGUMENT, "strictly increasing");
        CHECK(memcmp(k, k0, n * elem) == 0);
        free(k);
        free(v);
        free(k0);
      }
    }
  }
  /* Unknown dtype and layout values, as a C caller may pass them: refused
   * with a message (found by fuzzing: the C++ side read them as enums out
   * of range, undefined behaviour that UBSan stops on). */
  {
    float k[4] = {0, 1, 2, 3};
    static const int64_t keep[] = {1};
    CHECK_FAILS(kvcrush_compact(k, NULL, (kvcrush_dtype)7, KVCRUSH_HEAD_TOKEN_DIM, 1, 4, 1, 0, keep, 1, 1, NULL, 1,
                                NULL),
                KVCRUSH_INVALID_ARGUMENT, "unknown dtype 7");
    CHECK_FAILS(kvcrush_compact(k, NULL, KVCRUSH_FLOAT32, (kvcrush_layout)-1, 1, 4, 1, 0, keep, 1, 1, NULL, 1, NULL),
                KVCRUSH_INVALID_ARGUMENT, "unknown layout -1");
    CHECK(k[0] == 0 && k[1] == 1);
  }
  /* Keys alone (values NULL). */
  {
    float k[2 * 4 * 1] = {0, 1, 2, 3, 10, 11, 12, 13};
    static const int64_t keep[] = {1, 3};
    int64_t len = 0;
    CHECK(kvcrush_compact(k, NULL, KVCRUSH_FLOAT32, KVCRUSH_HEAD_TOKEN_DIM, 2, 4, 1, 0, keep, 1, 2, NULL, 1, &len) ==
          KVCRUSH_OK);
    CHECK(len == 2 && k[0] == 1 && k[1] == 3 && k[4] == 11 && k[5] == 13);
  }
}

/* Bad input: a status, a message naming the problem, untouched outputs. */
static void test_errors(kvcrush_workspace* ws) {
  enum { heads = 4, tokens = 64 };
  static float scores[heads * tokens];
  int64_t keep[heads * 64], counts[heads]; /* room for AdaKV's widest rows */
  fill_scores(scores, heads * tokens);
  kvcrush_select_options o;
  kvcrush_select_options_init(&o);
  o.budget = 32;
  o.sink = 4;
  o.recent = 4;
  o.crush = 0.5;

  for (int i = 0; i < heads * 64; ++i) keep[i] = -7;
  for (int i = 0; i < heads; ++i) counts[i] = -7;
  scores[40] = NAN;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "NaN");
  CHECK(all_equal_i64(keep, heads * 64, -7) && all_equal_i64(counts, heads, -7));
  o.per_head = 1;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, heads, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "NaN");
  CHECK(all_equal_i64(keep, heads * 64, -7) && all_equal_i64(counts, heads, -7));
  o.per_head = 0;
  o.policy = "precomputed+adakv+kvcrush"; /* head-wise budgets read the scores first */
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, heads, 64, counts), KVCRUSH_INVALID_ARGUMENT,
              "NaN");
  CHECK(all_equal_i64(keep, heads * 64, -7) && all_equal_i64(counts, heads, -7));
  o.policy = NULL;
  scores[40] = 1.0f;

  o.budget = 6; /* below sink + recent */
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "below sink + recent");
  CHECK(all_equal_i64(keep, heads * 64, -7));
  o.budget = INT64_MAX; /* sink + recent must not overflow on the way */
  o.sink = INT64_MAX;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "must be below");
  o.sink = 4;
  o.budget = 32;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 31, counts), KVCRUSH_BUFFER_TOO_SMALL,
              "32 needed");
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 2, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "1 row");
  CHECK_FAILS(kvcrush_select_scores(ws, scores, 0, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "heads must be >= 1");
  CHECK_FAILS(kvcrush_select_scores(ws, NULL, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "scores is NULL");
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, (int64_t)1 << 62, &o, keep, 1, 32, counts),
              KVCRUSH_INVALID_ARGUMENT, "too large");
  CHECK(all_equal_i64(keep, heads * 64, -7) && all_equal_i64(counts, heads, -7));

  o.crush = 1.5;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "crush");
  o.crush = 0.5;
  o.anchor = "middle";
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "middle");
  o.anchor = NULL;
  o.policy = "snapkv+turbo";
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "turbo");
  o.policy = "snapkv";
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "attention");
  o.policy = NULL;
  o.block_size = 3;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "multiples of the block size");
  o.block_size = 1;
  o.struct_size = 3;
  CHECK_FAILS(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, 1, 32, counts), KVCRUSH_INVALID_ARGUMENT,
              "kvcrush_select_options_init");
  CHECK(all_equal_i64(keep, heads * 64, -7) && all_equal_i64(counts, heads, -7));

  /* Attention: kv_heads must divide; NaN leaves both outputs untouched. */
  {
    enum { qh = 4, rows = 3, n = 16 };
    static float a[qh * rows * n], kv[2 * n], q[qh * n];
    fill_attention(a, qh * rows * n);
    a[2 * rows * n + 5] = NAN;
    for (int i = 0; i < 2 * n; ++i) kv[i] = 42.0f;
    for (int i = 0; i < qh * n; ++i) q[i] = 42.0f;
    CHECK_FAILS(kvcrush_window_scores(ws, a, qh, rows, n, 2, 0, NULL, 7, NULL, kv, q), KVCRUSH_INVALID_ARGUMENT, "NaN");
    int untouched = 1;
    for (int i = 0; i < 2 * n; ++i) untouched &= kv[i] == 42.0f;
    for (int i = 0; i < qh * n; ++i) untouched &= q[i] == 42.0f;
    CHECK(untouched);
    CHECK_FAILS(kvcrush_window_scores(ws, a, qh, rows, n, 3, 0, NULL, 7, NULL, kv, q), KVCRUSH_INVALID_ARGUMENT,
                "divide");
    CHECK_FAILS(kvcrush_window_scores(ws, a, qh, rows, n, 2, 0, NULL, 4, NULL, kv, q), KVCRUSH_INVALID_ARGUMENT, "odd");
    kvcrush_select_options ao;
    kvcrush_select_options_init(&ao);
    ao.budget = 8;
    CHECK_FAILS(kvcrush_select_attention(ws, a, qh, rows, n, &ao, keep, 1, 8, counts), KVCRUSH_INVALID_ARGUMENT,
                "kv_heads");
    ao.kv_heads = 2;
    CHECK_FAILS(kvcrush_select_attention(ws, a, qh, rows, n, &ao, keep, 1, 8, counts), KVCRUSH_INVALID_ARGUMENT,
                "NaN");
    CHECK(all_equal_i64(keep, heads * 64, -7));
  }

  /* Signatures: NaN and a wrong output shape leave the output untouched. */
  {
    uint64_t sig[64];
    for (int i = 0; i < 64; ++i) sig[i] = 0xdeadbeefu;
    scores[10] = NAN;
    CHECK_FAILS(kvcrush_signatures(ws, scores, heads, tokens, 4, 4, NULL, sig, 56, 1), KVCRUSH_INVALID_ARGUMENT, "NaN");
    scores[10] = 0.0f;
    CHECK_FAILS(kvcrush_signatures(ws, scores, heads, tokens, 4, 4, NULL, sig, 55, 1), KVCRUSH_BUFFER_TOO_SMALL,
                "(56, 1)");
    CHECK_FAILS(kvcrush_signatures(ws, scores, heads, tokens, 4, 4, "mode", sig, 56, 1), KVCRUSH_INVALID_ARGUMENT,
                "mode");
    int untouched = 1;
    for (int i = 0; i < 64; ++i) untouched &= sig[i] == 0xdeadbeefu;
    CHECK(untouched);
  }
}

/* The last error is per thread: a failure elsewhere does not replace it. */
static void* fail_in_thread(void* arg) {
  (void)arg;
  int64_t b[1];
  kvcrush_budgets(0, 1, 0, 0, 0, 0, b, 1); /* no layers */
  return strstr(kvcrush_last_error(), "layer") ? (void*)1 : NULL;
}

static void test_thread_local_error(void) {
  int64_t b[1];
  CHECK(kvcrush_budgets(0, 1, 0, 1, 0, 0, NULL, 1) == KVCRUSH_INVALID_ARGUMENT);
  CHECK(strstr(kvcrush_last_error(), "out is NULL") != NULL);
  pthread_t thread;
  void* result = NULL;
  CHECK(pthread_create(&thread, NULL, fail_in_thread, NULL) == 0);
  CHECK(pthread_join(thread, &result) == 0);
  CHECK(result == (void*)1);
  CHECK(strstr(kvcrush_last_error(), "out is NULL") != NULL);
  (void)b;
}

/* A warmed-up workspace serves repeated calls without allocating. */
static void test_no_allocation(void) {
  enum { heads = 8, tokens = 512 };
  static float scores[heads * tokens];
  static int64_t keep[heads * 128], counts[heads];
  fill_scores(scores, heads * tokens);
  kvcrush_workspace* ws = NULL;
  CHECK(kvcrush_workspace_create(&ws) == KVCRUSH_OK && ws != NULL);
  kvcrush_select_options o;
  kvcrush_select_options_init(&o);
  o.budget = 128;
  o.sink = 4;
  o.recent = 32;
  o.crush = 0.5;
  o.per_head = 1;
  CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, heads, 128, counts) == KVCRUSH_OK);
  const uint64_t warm = kvcrush_workspace_allocations(ws);
  CHECK(warm > 0);
  for (int i = 0; i < 5; ++i) {
    scores[i * 97 % (heads * tokens)] += 3.0f;
    CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, heads, 128, counts) == KVCRUSH_OK);
  }
  CHECK(kvcrush_workspace_allocations(ws) == warm);
  kvcrush_workspace_destroy(ws);

  /* reserve() makes even the first call allocation-free. */
  CHECK(kvcrush_workspace_create(&ws) == KVCRUSH_OK);
  CHECK(kvcrush_workspace_reserve(ws, heads, tokens, 0, 1) == KVCRUSH_OK);
  const uint64_t reserved = kvcrush_workspace_allocations(ws);
  CHECK(kvcrush_select_scores(ws, scores, heads, tokens, &o, keep, heads, 128, counts) == KVCRUSH_OK);
  CHECK(kvcrush_workspace_allocations(ws) == reserved);
  kvcrush_workspace_destroy(ws);
  kvcrush_workspace_destroy(NULL);
  CHECK(kvcrush_workspace_create(NULL) == KVCRUSH_INVALID_ARGUMENT);
}

int main(void) {
  kvcrush_workspace* ws = NULL;
  if (kvcrush_workspace_create(&ws) != KVCRUSH_OK) return 1;
  test_refused_env();
  test_version();
  test_use_isa();
  test_select_scores(ws);
  test_select_scores(NULL); /* the thread's own workspace */
  test_select_adaptive(ws);
  test_policies(ws);
  test_attention(ws);
  test_signatures_and_budgets(ws);
  test_compact();
  test_errors(ws);
  test_thread_local_error();
  test_no_allocation();
  kvcrush_workspace_destroy(ws);
  printf("%d checks, %d failures (kvcrush %s, %s)\n", checks, failures, kvcrush_version(), kvcrush_isa());
  return failures == 0 ? 0 : 1;
}

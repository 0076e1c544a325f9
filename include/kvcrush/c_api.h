/* kvcrush C API: the library's selection, scoring and compaction for C
 * engines and foreign-function interfaces (the Python package uses it
 * through ctypes). C99; link against libkvcrush_c (CMake: kvcrush::c).
 *
 * Conventions (the same for every call):
 *  - Every call returns a kvcrush_status. On failure, kvcrush_last_error()
 *    returns a one-line message for the calling thread; no C++ exception
 *    ever crosses this interface.
 *  - Inputs are checked before any output is written: bad shapes, NaN
 *    scores, bad budgets or options leave the caller's buffers untouched.
 *  - Arrays are dense, row-major (C order); shapes are given as int64_t.
 *    Positions and counts are int64_t.
 *  - Calls that need scratch memory take a kvcrush_workspace. Reuse one per
 *    thread: once it has grown to the largest call, calls allocate nothing.
 *    Passing NULL uses a workspace private to the calling thread.
 *  - Selection semantics are those of the C++ library, defined in
 *    docs/SEMANTICS.md of the kvcrush repository (exact,
 *    deterministic, ties broken by position).
 */
#ifndef KVCRUSH_C_API_H
#define KVCRUSH_C_API_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define KVCRUSH_C_EXPORT
#elif defined(__GNUC__)
#define KVCRUSH_C_EXPORT __attribute__((visibility("default")))
#else
#define KVCRUSH_C_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a call or a struct of this header changes incompatibly. */
#define KVCRUSH_C_API_VERSION 1

typedef enum kvcrush_status {
  KVCRUSH_OK = 0,
  /* Bad shape, option, budget, NaN in the input, or a null pointer. */
  KVCRUSH_INVALID_ARGUMENT = 1,
  /* An output buffer is smaller than the result (see the *_shape calls). */
  KVCRUSH_BUFFER_TOO_SMALL = 2,
  KVCRUSH_OUT_OF_MEMORY = 3,
  /* A failure that is kvcrush's fault; please report it. */
  KVCRUSH_INTERNAL_ERROR = 4
} kvcrush_status;

/* Library version ("0.1.0") and the instruction set its kernels use
 * ("scalar", "avx2", "avx512"); static strings. The library is built for
 * baseline x86-64 and chooses its kernels at run time: the best level this
 * CPU and OS support, capped by the environment variable
 * KVCRUSH_ISA=scalar|avx2|avx512 or by kvcrush_use_isa(). When KVCRUSH_ISA
 * asks for a level this machine lacks (or is misspelt), kvcrush_isa()
 * returns "unavailable" and every call fails with KVCRUSH_INVALID_ARGUMENT
 * until kvcrush_use_isa() picks a level. */
KVCRUSH_C_EXPORT const char* kvcrush_version(void);
KVCRUSH_C_EXPORT const char* kvcrush_isa(void);
/* Use the kernels of level `isa` ("scalar", "avx2", "avx512") from now on, in
 * every thread; NULL: the best this machine supports. A level this machine
 * lacks, or an unknown name, is KVCRUSH_INVALID_ARGUMENT and changes
 * nothing. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_use_isa(const char* isa);
/* KVCRUSH_C_API_VERSION of the library that is loaded. */
KVCRUSH_C_EXPORT int kvcrush_c_api_version(void);

/* Message of the calling thread's last failed call ("" if none yet). Valid
 * until the thread's next kvcrush call. */
KVCRUSH_C_EXPORT const char* kvcrush_last_error(void);
/* "ok", "invalid argument", ... for a status code. */
KVCRUSH_C_EXPORT const char* kvcrush_status_string(kvcrush_status status);

/* ---- Workspace ---------------------------------------------------------- */

typedef struct kvcrush_workspace kvcrush_workspace;

KVCRUSH_C_EXPORT kvcrush_status kvcrush_workspace_create(kvcrush_workspace** out);
KVCRUSH_C_EXPORT void kvcrush_workspace_destroy(kvcrush_workspace* ws); /* NULL is fine */
/* Grows the workspace for calls over up to `heads` KV heads (or query heads
 * for query-head signatures: signature_heads), `tokens` tokens and blocks of
 * `block_size`, so that even the first such call does not allocate. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_workspace_reserve(kvcrush_workspace* ws, int64_t heads, int64_t tokens,
                                                          int64_t signature_heads, int64_t block_size);
/* How many times the workspace has grown so far: constant across calls that
 * no longer allocate (what an engine's warm-up can check). */
KVCRUSH_C_EXPORT uint64_t kvcrush_workspace_allocations(const kvcrush_workspace* ws);

/* ---- Selection ---------------------------------------------------------- */

/* The options of `kvcrush select` (the CLI), plus the policy. Always start
 * from kvcrush_select_options_init(), then set what differs; strings are
 * the CLI's spellings and NULL means the default. */
typedef struct kvcrush_select_options {
  size_t struct_size; /* set by kvcrush_select_options_init */

  /* Policy as policy_config::parse takes it: "snapkv", "h2o+kvcrush",
   * "snapkv+adakv+kvcrush", ... NULL: "precomputed" for scores, "snapkv"
   * for attention. From scores: precomputed, h2o (the scores are the
   * accumulated attention), streaming, random, full. From attention:
   * snapkv, pyramidkv (pass the layer's budget, see kvcrush_budgets), tova
   * (the window's last row), streaming, random, full. "+adakv" gives
   * ragged per-head keep sets and implies per_head. */
  const char* policy;

  int64_t budget; /* tokens kept per KV head, sink and recent included (required) */
  int64_t sink;   /* default 0 */
  int64_t recent; /* default -1: 0 for scores, the window for attention */
  /* Share of the unprotected budget kept as KVCrush representatives, in
   * [0, 1]. Default -1: 0.5 when the policy has "+kvcrush", otherwise 0. A
   * value > 0 turns KVCrush on as the CLI's --crush does. */
  double crush;
  const char* anchor;          /* mean|inv_mean|zeros|ones|alternating|random */
  uint64_t seed;               /* random anchor, and the random policy's scores */
  const char* representative;  /* bucket_center|bucket_start|linspace|stride */
  const char* threshold;       /* median|mean */
  int per_head;                /* nonzero: one keep set per KV head */
  int64_t block_size;          /* > 1: keep whole blocks; results are block indices */
  double adakv_alpha;          /* "+adakv": per-head floor share of the budget (0.2) */
  const char* signature_heads; /* kv|query (query: attention only) */

  /* Window attention (kvcrush_select_attention only). */
  int64_t kv_heads; /* H; must divide the query heads (required) */
  int64_t window;   /* use the last `window` rows of the attention; 0: all */
  const char* pool; /* avg|max */
  int64_t kernel;   /* odd pooling kernel, default 7 */
  const char* gqa;  /* mean|max|sum */

  /* KVCrush split (docs/SEMANTICS.md 4.5), after every older field so that
   * callers built before it (a smaller struct_size) keep working with the
   * fixed split. "adaptive": the importance policy keeps the fewest
   * evictable tokens covering crush_mass of their (non-negative) score mass,
   * within the budget, and KVCrush the rest; it turns KVCrush on, as
   * crush > 0 does, and `crush` must then stay -1. NULL: "fixed". */
  const char* crush_split; /* fixed|adaptive */
  double crush_mass;       /* in (0, 1], default 0.9 */
} kvcrush_select_options;

KVCRUSH_C_EXPORT void kvcrush_select_options_init(kvcrush_select_options* options);

/* Shape of the keep-set output for `heads` KV heads and `tokens` tokens:
 * *rows is 1 (shared) or heads (per head); *width is the most entries any
 * row can hold (the exact count unless ragged). attention_rows: 0 for a
 * selection from scores, W (the attention's rows) for one from attention;
 * it decides the default policy and recent region as the selection does. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_keep_shape(const kvcrush_select_options* options, int64_t heads,
                                                   int64_t tokens, int64_t attention_rows, int64_t* rows,
                                                   int64_t* width);

/* Keep sets from per-KV-head scores S (heads, tokens), float32.
 * keep: (keep_rows, keep_width) int64 with keep_rows and keep_width as
 * kvcrush_keep_shape gives them (keep_width may be larger); row r receives
 * counts[r] sorted positions (block indices in block mode); entries past
 * counts[r] are left as they were. counts: keep_rows entries. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_select_scores(kvcrush_workspace* ws, const float* scores, int64_t heads,
                                                      int64_t tokens, const kvcrush_select_options* options,
                                                      int64_t* keep, int64_t keep_rows, int64_t keep_width,
                                                      int64_t* counts);

/* Keep sets from window attention A (query_heads, rows, tokens), float32
 * softmax probabilities of the last `rows` queries; SnapKV scores are formed
 * as kvcrush_window_scores does (options->kv_heads, window, pool, kernel,
 * gqa). Outputs as for kvcrush_select_scores with heads = kv_heads. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_select_attention(kvcrush_workspace* ws, const float* attention,
                                                         int64_t query_heads, int64_t rows, int64_t tokens,
                                                         const kvcrush_select_options* options, int64_t* keep,
                                                         int64_t keep_rows, int64_t keep_width, int64_t* counts);

/* ---- Scores, signatures, budgets ---------------------------------------- */

/* SnapKV scores from window attention A (query_heads, rows, tokens): the
 * last `window` rows (0: all) are summed, pooled (pool avg|max, odd kernel)
 * outside the window and reduced over each KV head's query heads (gqa
 * mean|max|sum; NULL strings mean avg/mean). kv_scores: (kv_heads, tokens);
 * query_scores (NULL to skip): (query_heads, tokens), the pooled per-query-
 * head rows. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_window_scores(kvcrush_workspace* ws, const float* attention,
                                                      int64_t query_heads, int64_t rows, int64_t tokens,
                                                      int64_t kv_heads, int64_t window, const char* pool,
                                                      int64_t kernel, const char* gqa, float* kv_scores,
                                                      float* query_scores);

/* Shape of the signatures of scores (heads, tokens) with sink and recent
 * protected: one row per evictable token, ceil(heads / 64) words each. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_signature_shape(int64_t heads, int64_t tokens, int64_t sink, int64_t recent,
                                                        int64_t* rows, int64_t* words);

/* KVCrush head-behaviour signatures of the evictable tokens [sink,
 * tokens - recent): bit h of word h / 64 is set when the token is in head
 * h's top half (threshold "median", NULL) or above its mean ("mean").
 * out: (out_rows, out_words) exactly as kvcrush_signature_shape gives. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_signatures(kvcrush_workspace* ws, const float* scores, int64_t heads,
                                                   int64_t tokens, int64_t sink, int64_t recent,
                                                   const char* threshold, uint64_t* out, int64_t out_rows,
                                                   int64_t out_words);

/* Per-layer budgets: PyramidKV's (pyramid nonzero; beta <= 0 means 20, as
 * in KVCache-Factory) or uniform. out: `layers` entries (out_length >=
 * layers). */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_budgets(int pyramid, int64_t budget, int64_t window, int64_t layers,
                                                int64_t tokens, int64_t beta, int64_t* out, int64_t out_length);

/* ---- Compaction ----------------------------------------------------------- */

typedef enum kvcrush_dtype { KVCRUSH_FLOAT32 = 0, KVCRUSH_FLOAT16 = 1, KVCRUSH_BFLOAT16 = 2 } kvcrush_dtype;

typedef enum kvcrush_layout {
  KVCRUSH_HEAD_TOKEN_DIM = 0, /* [head][token_capacity][dim]: PyTorch, HF, kvpress */
  KVCRUSH_TOKEN_HEAD_DIM = 1  /* [token][head][dim]: llama.cpp, vLLM */
} kvcrush_layout;

/* Compacts one layer's keys and values in place: for every head h, token
 * keep[h][i] becomes token i (kept tokens move to the front, in order).
 * keys, values: the cache (values may be NULL); token_capacity: allocated
 * tokens per head in KVCRUSH_HEAD_TOKEN_DIM (0: tokens), ignored otherwise.
 * keep: (keep_rows, keep_width), keep_rows 1 (shared) or heads, strictly
 * increasing positions; counts: entries used per row (NULL: keep_width
 * each), as kvcrush_select_* write them. block_size > 1: keep holds sorted
 * block indices (one row), as block-mode selection writes them.
 * *new_tokens (may be NULL) receives the longest row's new length. The
 * cache is checked whole before the first byte moves. */
KVCRUSH_C_EXPORT kvcrush_status kvcrush_compact(void* keys, void* values, kvcrush_dtype dtype, kvcrush_layout layout,
                                                int64_t heads, int64_t tokens, int64_t head_dim,
                                                int64_t token_capacity, const int64_t* keep, int64_t keep_rows,
                                                int64_t keep_width, const int64_t* counts, int64_t block_size,
                                                int64_t* new_tokens);

#ifdef __cplusplus
}
#endif

#endif /* KVCRUSH_C_API_H */

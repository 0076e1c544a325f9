/* The C++ API's answers, callable from the C test program (reference.cpp).
 * Each mirrors what the CLI or an engine would do with the C++ API directly,
 * so the C API is checked against the library itself, not against itself. */
#ifndef KVCRUSH_TEST_C_API_REFERENCE_H
#define KVCRUSH_TEST_C_API_REFERENCE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ref_keep_options {
  int64_t budget, sink, recent;
  double crush;
  const char* anchor;
  uint64_t seed;
  const char* representative;
  const char* threshold;
  int per_head;
  int64_t block_size;
} ref_keep_options;

/* select_keep() as the CLI calls it; signature_rows (NULL: none) are
 * (signature_heads, tokens). Writes (per_head ? heads : 1) rows of `width`
 * entries and returns keep_count(); -1 on an exception. */
int64_t ref_select_keep(const float* scores, int64_t heads, int64_t tokens, const ref_keep_options* o,
                        const float* signature_rows, int64_t signature_heads, int64_t* out, int64_t width);

/* ref_select_keep with the adaptive KVCrush split of mass `mass` (o->crush
 * unused). */
int64_t ref_select_adaptive(const float* scores, int64_t heads, int64_t tokens, const ref_keep_options* o,
                            double mass, int64_t* out, int64_t width);

/* select() with with_kvcrush<adakv<precomputed>> (crush > 0) or
 * adakv<precomputed>: ragged rows of `width` entries and counts. */
int ref_select_adakv(const float* scores, int64_t heads, int64_t tokens, int64_t budget, int64_t sink,
                     int64_t recent, double crush, double alpha, int64_t* out, int64_t width, int64_t* counts);

/* window_scores() on the last `window` of `rows` attention rows. */
int ref_window_scores(const float* attention, int64_t query_heads, int64_t rows, int64_t tokens, int64_t kv_heads,
                      int64_t window, const char* pool, int64_t kernel, const char* gqa, float* kv_out,
                      float* query_out);

/* compute_signatures() over [sink, tokens - recent). */
int ref_signatures(const float* scores, int64_t heads, int64_t tokens, int64_t sink, int64_t recent,
                   const char* threshold, uint64_t* out);

/* pyramid_budgets() into out (layers entries). */
int ref_pyramid_budgets(int64_t budget, int64_t window, int64_t layers, int64_t tokens, int64_t beta, int64_t* out);

#ifdef __cplusplus
}
#endif

#endif

/* C callers may pass any int where c_api.h declares an enum (C enums are
 * ints; ctypes passes ints). The C API fuzz target makes such calls
 * through this C file, since producing an out-of-range enum value in C++
 * would be undefined behaviour on the caller's side. */
#include "kvcrush/c_api.h"

kvcrush_status kvcrush_fuzz_compact_raw(void* keys, void* values, int dtype, int layout, int64_t heads,
                                        int64_t tokens, int64_t head_dim, int64_t token_capacity,
                                        const int64_t* keep, int64_t keep_rows, int64_t keep_width,
                                        const int64_t* counts, int64_t block_size, int64_t* new_tokens) {
  return kvcrush_compact(keys, values, (kvcrush_dtype)dtype, (kvcrush_layout)layout, heads, tokens, head_dim,
                         token_capacity, keep, keep_rows, keep_width, counts, block_size, new_tokens);
}

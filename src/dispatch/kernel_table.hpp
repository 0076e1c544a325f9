// The table of entry points one ISA level's translation unit fills in
// (levels.inc) and the baseline dispatcher (dispatch.cpp) chooses among.
// Private to src/dispatch: the public API is kvcrush/dispatch/dispatch.hpp.
#pragma once

#include "kvcrush/dispatch/dispatch.hpp"

namespace kvcrush::dispatch::detail {

template <class T>
using compact_fn = index_t (*)(kv_view<T>, kv_view<T>, const keep_view&, matrix_view<index_t>);
template <class T>
using compact_blocks_fn = index_t (*)(kv_view<T>, kv_view<T>, vector_view<const index_t>, index_t,
                                      matrix_view<index_t>);
template <class U>
using encode_fn = void (*)(kv_view<const U>, kv_view<const U>, const quant_block_layout&, std::uint8_t*,
                           quant_scratch&);
template <class P>
using block_fn = void (*)(const quant_block_view<P>&, index_t, const float*, float*);

struct kernel_table {
  isa::level level;
  void (*select)(const policy_config&, const layer_inputs&, const layer_budget&, keep_sets, workspace&);
  void (*compute_signatures)(matrix_view<const float>, index_t, index_t, threshold_mode, matrix_view<std::uint64_t>,
                             selection_scratch&, vector_view<index_t>);
  void (*hamming_distances)(matrix_view<const std::uint64_t>, vector_view<const std::uint64_t>,
                            vector_view<std::uint32_t>);
  void (*window_scores)(strided_view<const float, 3>, const window_options&, matrix_view<float>, attention_scratch&,
                        matrix_view<float>);
  void (*h2o_scores)(strided_view<const float, 3>, gqa_reduction, bool, matrix_view<float>);
  compact_fn<float> compact_f32;
  compact_fn<float16> compact_f16;
  compact_fn<bfloat16> compact_bf16;
  compact_blocks_fn<float> compact_blocks_f32;
  compact_blocks_fn<float16> compact_blocks_f16;
  compact_blocks_fn<bfloat16> compact_blocks_bf16;
  encode_fn<float> encode_f32;
  encode_fn<float16> encode_f16;
  encode_fn<bfloat16> encode_bf16;
  block_fn<float16> key_scores_f16;
  block_fn<float> key_scores_f32;
  block_fn<float16> value_sum_f16;
  block_fn<float> value_sum_f32;
};

// One per level built (levels.inc); null pointers never: a level that is not
// built (non-x86) has no table and is never chosen.
extern const kernel_table table_scalar;
#if KVCRUSH_DISPATCH_X86
extern const kernel_table table_avx2;
extern const kernel_table table_avx512;
#endif

}  // namespace kvcrush::dispatch::detail

// Run-time ISA dispatch: the library's per-ISA entry points, chosen once at
// run time from what the CPU and OS support (kvcrush::isa::detected_level),
// for programs built with baseline flags (-march=x86-64) that should still
// run the AVX2 or AVX-512 kernels where the machine has them.
//
// This header only declares; the definitions are compiled into the CMake
// target kvcrush::dispatch (src/dispatch/), which holds one translation unit
// per ISA level built with that level's flags, and a baseline one that
// chooses among them. Link it and include this header; everything else stays
// header-only. Results are bit-identical to the compile-time path
// (kvcrush::select<isa::scalar>(...) etc.), at every level.
//
// Why a compiled component rather than header-only target attributes
// (#pragma GCC target / __attribute__((target)), as Highway's
// foreach_target.h): the kernels pick their code with the preprocessor
// (config.hpp reads __AVX2__, __AVX512F__, ...), which clang does not
// redefine under a target pragma; every header is #pragma once, so it cannot
// be compiled a second time for another ISA in the same translation unit;
// and the standard library's and Eigen's inline templates would be compiled
// under one target and shared by all. Separate translation units with real
// flags reuse the inline-namespace scheme that already keeps per-ISA symbols
// apart (KVCRUSH_TARGET_NS, tests/mixed_isa) and need no change to a kernel.
//
// Choosing the level: the first dispatched call (or kvcrush::dispatch::active_isa())
// detects the CPU; the environment variable KVCRUSH_ISA=scalar|avx2|avx512
// then caps the level, and use_isa() sets it later. A level the CPU lacks is
// an error (std::invalid_argument), never an illegal instruction: an
// unsupported or misspelt KVCRUSH_ISA makes every dispatched call throw
// until use_isa() picks a valid level. Each call costs one atomic load and an
// indirect call on top of the compile-time path.
//
// Types that live in the per-ISA inline namespace (h2o_accumulator,
// quantized_layer, tiered and paged caches) cannot cross between the
// translation units; their entry points here take plain views instead
// (h2o_scores for H2O; the quantized block format for the quantized
// kernels), and select() refuses layer_inputs::h2o (pass the accumulated
// scores as scores with the 'precomputed' policy, which is H2O's selection).
#pragma once

#include <cstdint>
#include <string_view>

#include "kvcrush/cache/compaction.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/quant/block.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush::dispatch {

// ---- Level -------------------------------------------------------------------

// The level the dispatched calls use. Throws std::invalid_argument when
// KVCRUSH_ISA asked for a level this machine lacks (or is not a level name)
// and use_isa() has not picked one since.
isa::level active_isa();
std::string_view active_isa_name();  // to_string(active_isa())

// What the CPU and OS support (the cap does not change it).
isa::level detected_isa() noexcept;

// Use level l from now on, for every thread. Throws std::invalid_argument,
// changing nothing, when the machine lacks it. Calls already running finish
// on the level they started with.
void use_isa(isa::level l);
// The same from a name ("scalar", "avx2", "avx512").
void use_isa(std::string_view name);

// ---- Entry points ------------------------------------------------------------
// Each one is the function of the same name in the compile-time API, with
// the same checks, exceptions and results.

// policy/runtime.hpp: every policy and mode. in.h2o must be null (see the
// header comment).
void select(const policy_config& cfg, const layer_inputs& in, const layer_budget& budget, keep_sets out,
            workspace& ws);

// select/signatures.hpp and select/hamming.hpp.
void compute_signatures(matrix_view<const float> scores, index_t begin, index_t end, threshold_mode mode,
                        matrix_view<std::uint64_t> out, selection_scratch& ws, vector_view<index_t> bit_counts = {});
void hamming_distances(matrix_view<const std::uint64_t> signatures, vector_view<const std::uint64_t> anchor,
                       vector_view<std::uint32_t> out);

// scores/window_attention.hpp.
void window_scores(strided_view<const float, 3> attention, const window_options& opt, matrix_view<float> kv_out,
                   attention_scratch& ws, matrix_view<float> query_out = {});

// H2O scores of a prefill (scores/h2o.hpp, h2o_accumulator::prefill):
// attention (Hq, N, N) with row i the causal attention of query i; out
// (H, >= N) receives the accumulated sums, or with normalised the sums over
// the number of queries that saw each token. Allocates an accumulator.
void h2o_scores(strided_view<const float, 3> attention, gqa_reduction gqa, bool normalised, matrix_view<float> out);

// cache/compaction.hpp, for float32, float16 and bfloat16 caches. An empty
// values view (head_dim 0) compacts the keys alone.
index_t compact(kv_view<float> keys, kv_view<float> values, const keep_view& keep,
                matrix_view<index_t> positions = {});
index_t compact(kv_view<float16> keys, kv_view<float16> values, const keep_view& keep,
                matrix_view<index_t> positions = {});
index_t compact(kv_view<bfloat16> keys, kv_view<bfloat16> values, const keep_view& keep,
                matrix_view<index_t> positions = {});
index_t compact_blocks(kv_view<float> keys, kv_view<float> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions = {});
index_t compact_blocks(kv_view<float16> keys, kv_view<float16> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions = {});
index_t compact_blocks(kv_view<bfloat16> keys, kv_view<bfloat16> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions = {});

// The quantized kernels over the quantized block format (quant/block.hpp):
// encoding G tokens of every head into a block, and attention's two halves
// over a block (q . k_t for its G tokens; the weighted sum of its values).
void encode_block(kv_view<const float> keys, kv_view<const float> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws);
void encode_block(kv_view<const float16> keys, kv_view<const float16> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws);
void encode_block(kv_view<const bfloat16> keys, kv_view<const bfloat16> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws);
void block_key_scores(const quant_block_view<float16>& block, index_t head, const float* q, float* out);
void block_key_scores(const quant_block_view<float>& block, index_t head, const float* q, float* out);
void block_value_sum(const quant_block_view<float16>& block, index_t head, const float* weights, float* out);
void block_value_sum(const quant_block_view<float>& block, index_t head, const float* weights, float* out);

}  // namespace kvcrush::dispatch

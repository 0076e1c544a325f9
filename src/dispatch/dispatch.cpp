// The dispatcher: chooses one level's kernel_table at run time and forwards
// every entry point of kvcrush/dispatch/dispatch.hpp to it. Compiled with
// baseline flags, so that it runs on every x86-64 CPU; it executes no
// instruction of a level before checking that the CPU and OS support it.
//
// The choice is made once, on first use (a thread-safe static: detection plus
// KVCRUSH_ISA), and kept in an atomic pointer that use_isa() may replace;
// every call then costs one atomic load (acquire) and an indirect call.
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernel_table.hpp"
#include "kvcrush/error.hpp"

namespace kvcrush::dispatch {
namespace detail {
namespace {

const kernel_table* table_of(isa::level l) noexcept {
#if KVCRUSH_DISPATCH_X86
  switch (l) {
    case isa::level::avx512: return &table_avx512;
    case isa::level::avx2: return &table_avx2;
    case isa::level::scalar: return &table_scalar;
  }
  return nullptr;
#else
  return l == isa::level::scalar ? &table_scalar : nullptr;
#endif
}

isa::level detect() noexcept {
#if KVCRUSH_DISPATCH_X86
  return isa::detected_level();
#else
  return isa::level::scalar;
#endif
}

// Why a requested level cannot be used; empty when it can.
std::string refusal(isa::level wanted, isa::level detected) {
  if (static_cast<int>(wanted) <= static_cast<int>(detected)) return {};
  return kvcrush::detail::concat("kvcrush: ISA level '", isa::to_string(wanted), "' is not supported here (this ",
                                 "CPU and OS support up to '", isa::to_string(detected), "')");
}

struct state {
  isa::level detected = detect();
  std::atomic<const kernel_table*> table{nullptr};
  std::string env_error;  // why KVCRUSH_ISA was refused (table stays null)

  state() {
    isa::level chosen = detected;
    if (const char* env = std::getenv("KVCRUSH_ISA"); env != nullptr && *env != '\0') {
      isa::level wanted{};
      if (!isa::parse_level(env, wanted)) {
        env_error = kvcrush::detail::concat("kvcrush: KVCRUSH_ISA='", env,
                                            "' is not an ISA level (scalar, avx2 or avx512)");
      } else {
        env_error = refusal(wanted, detected);
        if (!env_error.empty()) env_error += " (asked for by KVCRUSH_ISA)";
        chosen = wanted;
      }
    }
    if (env_error.empty()) table.store(table_of(chosen), std::memory_order_release);
  }
};

state& shared_state() {
  static state s;
  return s;
}

const kernel_table& table() {
  state& s = shared_state();
  const kernel_table* t = s.table.load(std::memory_order_acquire);
  if (KVCRUSH_UNLIKELY(t == nullptr)) throw std::invalid_argument(s.env_error);
  return *t;
}

}  // namespace
}  // namespace detail

isa::level active_isa() { return detail::table().level; }

std::string_view active_isa_name() { return isa::to_string(active_isa()); }

isa::level detected_isa() noexcept { return detail::shared_state().detected; }

void use_isa(isa::level l) {
  detail::state& s = detail::shared_state();
  const detail::kernel_table* t = nullptr;
  const std::string why = detail::refusal(l, s.detected);
  if (why.empty()) t = detail::table_of(l);
  if (t == nullptr) throw std::invalid_argument(why.empty() ? "kvcrush: unknown ISA level" : why);
  s.table.store(t, std::memory_order_release);
}

void use_isa(std::string_view name) {
  isa::level l{};
  if (!isa::parse_level(name, l)) {
    kvcrush::detail::throw_invalid("'", name, "' is not an ISA level (scalar, avx2 or avx512)");
  }
  use_isa(l);
}

void select(const policy_config& cfg, const layer_inputs& in, const layer_budget& budget, keep_sets out,
            workspace& ws) {
  kvcrush::detail::require(in.h2o == nullptr,
                           "dispatch::select: layer_inputs::h2o cannot cross ISA levels; pass the accumulated "
                           "scores as scores (dispatch::h2o_scores) with the 'precomputed' policy");
  detail::table().select(cfg, in, budget, out, ws);
}

void compute_signatures(matrix_view<const float> scores, index_t begin, index_t end, threshold_mode mode,
                        matrix_view<std::uint64_t> out, selection_scratch& ws, vector_view<index_t> bit_counts) {
  detail::table().compute_signatures(scores, begin, end, mode, out, ws, bit_counts);
}

void hamming_distances(matrix_view<const std::uint64_t> signatures, vector_view<const std::uint64_t> anchor,
                       vector_view<std::uint32_t> out) {
  detail::table().hamming_distances(signatures, anchor, out);
}

void window_scores(strided_view<const float, 3> attention, const window_options& opt, matrix_view<float> kv_out,
                   attention_scratch& ws, matrix_view<float> query_out) {
  detail::table().window_scores(attention, opt, kv_out, ws, query_out);
}

void h2o_scores(strided_view<const float, 3> attention, gqa_reduction gqa, bool normalised, matrix_view<float> out) {
  detail::table().h2o_scores(attention, gqa, normalised, out);
}

index_t compact(kv_view<float> keys, kv_view<float> values, const keep_view& keep, matrix_view<index_t> positions) {
  return detail::table().compact_f32(keys, values, keep, positions);
}
index_t compact(kv_view<float16> keys, kv_view<float16> values, const keep_view& keep,
                matrix_view<index_t> positions) {
  return detail::table().compact_f16(keys, values, keep, positions);
}
index_t compact(kv_view<bfloat16> keys, kv_view<bfloat16> values, const keep_view& keep,
                matrix_view<index_t> positions) {
  return detail::table().compact_bf16(keys, values, keep, positions);
}

index_t compact_blocks(kv_view<float> keys, kv_view<float> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions) {
  return detail::table().compact_blocks_f32(keys, values, blocks, block_size, positions);
}
index_t compact_blocks(kv_view<float16> keys, kv_view<float16> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions) {
  return detail::table().compact_blocks_f16(keys, values, blocks, block_size, positions);
}
index_t compact_blocks(kv_view<bfloat16> keys, kv_view<bfloat16> values, vector_view<const index_t> blocks,
                       index_t block_size, matrix_view<index_t> positions) {
  return detail::table().compact_blocks_bf16(keys, values, blocks, block_size, positions);
}

void encode_block(kv_view<const float> keys, kv_view<const float> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws) {
  detail::table().encode_f32(keys, values, b, block, ws);
}
void encode_block(kv_view<const float16> keys, kv_view<const float16> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws) {
  detail::table().encode_f16(keys, values, b, block, ws);
}
void encode_block(kv_view<const bfloat16> keys, kv_view<const bfloat16> values, const quant_block_layout& b,
                  std::uint8_t* block, quant_scratch& ws) {
  detail::table().encode_bf16(keys, values, b, block, ws);
}

void block_key_scores(const quant_block_view<float16>& block, index_t head, const float* q, float* out) {
  detail::table().key_scores_f16(block, head, q, out);
}
void block_key_scores(const quant_block_view<float>& block, index_t head, const float* q, float* out) {
  detail::table().key_scores_f32(block, head, q, out);
}
void block_value_sum(const quant_block_view<float16>& block, index_t head, const float* weights, float* out) {
  detail::table().value_sum_f16(block, head, weights, out);
}
void block_value_sum(const quant_block_view<float>& block, index_t head, const float* weights, float* out) {
  detail::table().value_sum_f32(block, head, weights, out);
}

}  // namespace kvcrush::dispatch

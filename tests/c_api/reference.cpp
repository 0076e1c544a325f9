// The C++ side of the C API test: the library's C++ API called the way the
// CLI and engines call it, exposed with C linkage (see reference.h). Built
// without ISA flags, so it also cross-checks libkvcrush_c's ISA build
// against the scalar kernels.
#include "reference.h"

#include <exception>
#include <vector>

#include "kvcrush/kvcrush.hpp"

using kvcrush::index_t;

namespace {

kvcrush::keep_config to_config(const ref_keep_options* o) {
  kvcrush::keep_config cfg;
  cfg.budget = o->budget;
  cfg.sink = o->sink;
  cfg.recent = o->recent;
  cfg.crush_fraction = o->crush;
  cfg.anchor = kvcrush::parse_anchor_mode(o->anchor);
  cfg.seed = o->seed;
  cfg.representative = kvcrush::parse_representative_rule(o->representative);
  cfg.threshold = kvcrush::parse_threshold_mode(o->threshold);
  cfg.per_head = o->per_head != 0;
  cfg.block_size = o->block_size;
  return cfg;
}

}  // namespace

extern "C" {

int64_t ref_select_keep(const float* scores, int64_t heads, int64_t tokens, const ref_keep_options* o,
                        const float* signature_rows, int64_t signature_heads, int64_t* out, int64_t width) {
  try {
    const auto cfg = to_config(o);
    kvcrush::workspace ws;
    const index_t rows = cfg.per_head ? heads : 1;
    kvcrush::matrix_view<const float> sig;
    if (signature_rows) sig = kvcrush::make_matrix_view(signature_rows, signature_heads, tokens);
    return kvcrush::select_keep(kvcrush::make_matrix_view(scores, heads, tokens), cfg,
                                kvcrush::make_matrix_view(out, rows, width), ws, sig);
  } catch (const std::exception&) {
    return -1;
  }
}

int64_t ref_select_adaptive(const float* scores, int64_t heads, int64_t tokens, const ref_keep_options* o,
                            double mass, int64_t* out, int64_t width) {
  try {
    auto cfg = to_config(o);
    cfg.split = kvcrush::crush_split::adaptive;
    cfg.crush_mass = mass;
    kvcrush::workspace ws;
    const index_t rows = cfg.per_head ? heads : 1;
    return kvcrush::select_keep(kvcrush::make_matrix_view(scores, heads, tokens), cfg,
                                kvcrush::make_matrix_view(out, rows, width), ws);
  } catch (const std::exception&) {
    return -1;
  }
}

int ref_select_adakv(const float* scores, int64_t heads, int64_t tokens, int64_t budget, int64_t sink,
                     int64_t recent, double crush, double alpha, int64_t* out, int64_t width, int64_t* counts) {
  try {
    using namespace kvcrush;
    layer_inputs in;
    in.kv_heads = heads;
    in.tokens = tokens;
    in.scores = make_matrix_view(scores, heads, tokens);
    const layer_budget b{budget, sink, recent};
    selection_layout layout;
    layout.per_head = true;
    const keep_sets outs{make_matrix_view(out, heads, width), make_vector_view(counts, heads)};
    workspace ws;
    const policy::adakv<policy::precomputed> ada{{}, alpha};
    if (crush > 0) {
      crush_options c;
      c.fraction = crush;
      select(policy::with_kvcrush<policy::adakv<policy::precomputed>>{ada, c}, in, b, layout, outs, ws);
    } else {
      select(ada, in, b, layout, outs, ws);
    }
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}

int ref_window_scores(const float* attention, int64_t query_heads, int64_t rows, int64_t tokens, int64_t kv_heads,
                      int64_t window, const char* pool, int64_t kernel, const char* gqa, float* kv_out,
                      float* query_out) {
  try {
    kvcrush::window_options opt;
    opt.pooling = kvcrush::parse_pooling_mode(pool);
    opt.kernel = kernel;
    opt.gqa = kvcrush::parse_gqa_reduction(gqa);
    const kvcrush::strided_view<const float, 3> view(attention + (rows - window) * tokens,
                                                     {query_heads, window, tokens}, {rows * tokens, tokens, 1});
    kvcrush::workspace ws;
    kvcrush::window_scores(view, opt, kvcrush::make_matrix_view(kv_out, kv_heads, tokens), ws,
                           kvcrush::make_matrix_view(query_out, query_heads, tokens));
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}

int ref_signatures(const float* scores, int64_t heads, int64_t tokens, int64_t sink, int64_t recent,
                   const char* threshold, uint64_t* out) {
  try {
    const index_t begin = sink < tokens ? sink : tokens;
    const index_t end = tokens - recent > begin ? tokens - recent : begin;
    kvcrush::workspace ws;
    kvcrush::compute_signatures(kvcrush::make_matrix_view(scores, heads, tokens), begin, end,
                                kvcrush::parse_threshold_mode(threshold),
                                kvcrush::make_matrix_view(reinterpret_cast<std::uint64_t*>(out), end - begin,
                                                          kvcrush::signature_words(heads)),
                                ws);
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}

int ref_pyramid_budgets(int64_t budget, int64_t window, int64_t layers, int64_t tokens, int64_t beta, int64_t* out) {
  try {
    const auto b = kvcrush::pyramid_budgets(budget, window, layers, tokens, beta);
    for (std::size_t i = 0; i < b.size(); ++i) out[i] = b[i];
    return 0;
  } catch (const std::exception&) {
    return -1;
  }
}

}  // extern "C"

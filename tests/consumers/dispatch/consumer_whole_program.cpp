// One copy per ISA level (kvcrush_add_dispatched_executable): each copy
// selects with its own level's compile-time kernels and must match the
// scalar reference. argv[1] is the level the test expects to run; exit 77
// (skipped) when this machine cannot run it.
#include <cstdio>
#include <string_view>
#include <vector>

#include "kvcrush/kvcrush.hpp"

namespace {

std::vector<kvcrush::index_t> keep_set(bool scalar) {
  const kvcrush::index_t heads = 4, tokens = 777;
  std::vector<float> scores(static_cast<std::size_t>(heads * tokens));
  for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>((i * 2654435761u) % 911);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto cfg = kvcrush::policy_config::parse("precomputed+kvcrush");
  const kvcrush::layer_budget budget{150, 4, 16};
  std::vector<kvcrush::index_t> keep(150), count(1);
  kvcrush::workspace ws;
  const kvcrush::keep_sets out{kvcrush::make_matrix_view(keep.data(), 1, 150),
                               kvcrush::make_vector_view(count.data(), 1)};
  if (scalar) {
    kvcrush::select<kvcrush::isa::scalar>(cfg, in, budget, out, ws);
  } else {
    kvcrush::select<kvcrush::isa::active>(cfg, in, budget, out, ws);
  }
  keep.resize(static_cast<std::size_t>(count[0]));
  return keep;
}

}  // namespace

int KVCRUSH_TOOL_ENTRY(int argc, char** argv) {
  const std::string_view expected = argc > 1 ? argv[1] : "";
  if (kvcrush::isa::name() != expected) {
    std::printf("SKIPPED: running %s, not %s (level not built or not supported)\n",
                kvcrush::isa::name().data(), argv[1]);
    return 77;
  }
  const bool same = keep_set(false) == keep_set(true);
  std::printf("%s: %s\n", kvcrush::isa::name().data(), same ? "same keep set as scalar" : "DIFFERENT keep set");
  return same ? 0 : 1;
}

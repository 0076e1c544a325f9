// Selects the same keep set at every level this machine runs, through the
// installed kvcrush::dispatch, and against the compile-time scalar path.
#include <cstdio>
#include <vector>

#include "kvcrush/dispatch/dispatch.hpp"

int main() {
  const kvcrush::index_t heads = 4, tokens = 999;
  std::vector<float> scores(static_cast<std::size_t>(heads * tokens));
  for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>((i * 2654435761u) % 977);
  kvcrush::layer_inputs in;
  in.kv_heads = heads;
  in.tokens = tokens;
  in.scores = kvcrush::make_matrix_view(scores.data(), heads, tokens);
  const auto cfg = kvcrush::policy_config::parse("precomputed+kvcrush");
  const kvcrush::layer_budget budget{200, 4, 16};
  auto run = [&](bool dispatched) {
    std::vector<kvcrush::index_t> keep(200), count(1);
    kvcrush::workspace ws;
    const kvcrush::keep_sets out{kvcrush::make_matrix_view(keep.data(), 1, 200),
                                 kvcrush::make_vector_view(count.data(), 1)};
    if (dispatched) {
      kvcrush::dispatch::select(cfg, in, budget, out, ws);
    } else {
      kvcrush::select<kvcrush::isa::scalar>(cfg, in, budget, out, ws);
    }
    return keep;
  };
  const auto reference = run(false);
  int levels = 0;
  for (auto level : {kvcrush::isa::level::scalar, kvcrush::isa::level::avx2, kvcrush::isa::level::avx512}) {
    if (static_cast<int>(level) > static_cast<int>(kvcrush::dispatch::detected_isa())) break;
    kvcrush::dispatch::use_isa(level);
    if (run(true) != reference) {
      std::printf("level %s differs from the scalar path\n", kvcrush::isa::to_string(level).data());
      return 1;
    }
    ++levels;
  }
  std::printf("%d level(s) agree with the scalar path\n", levels);
  return 0;
}

// What a downstream engine compiles: the umbrella header and a real call.
#include <kvcrush/kvcrush.hpp>

#include <cstdio>
#include <vector>

int main() {
  std::vector<float> keys(2 * 4 * 8, 1.0f);
  auto kv = kvcrush::make_head_token_dim(keys.data(), 2, 4, 8);
  const auto file = kvcrush::io::serialize_npy(kvcrush::io::npy_dtype::float32, {2, 4, 8}, keys.data());
  const auto back = kvcrush::io::parse_npy(file.data(), file.size());
  std::printf("kvcrush %s, ISA %s, %td heads\n", kvcrush::version_string,
              std::string(kvcrush::isa::name()).c_str(), kv.heads());
  return back.values<float>() == keys ? 0 : 1;
}

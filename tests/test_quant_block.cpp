// The quantized paged block: layout and alignment, encoding equal to the
// quantized layer's (and the same bytes on every ISA), and quantized blocks
// carried by cache/paged_cache.hpp's pool through append, fork, block
// eviction and copy on write, read back by walking the block table.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kvcrush/cache/paged_cache.hpp"
#include "kvcrush/quant/attention.hpp"
#include "kvcrush/quant/block.hpp"
#include "kvcrush/quant/layer.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "quant_test_support.hpp"
#include "test_support.hpp"

namespace isa = kvcrush::isa;
using kvcrush::float16;
using kvcrush::index_t;
using kvcrush::quant_block_layout;
using quant_test::kv_rows;

namespace {

kvcrush::quant_config block_config(int key_bits, int value_bits, index_t group, kvcrush::param_format params,
                                   index_t value_group = 0) {
  kvcrush::quant_config cfg;
  cfg.key_bits = key_bits;
  cfg.value_bits = value_bits;
  cfg.group_size = group;
  cfg.window = 0;
  cfg.params = params;
  cfg.value_group = value_group;
  return cfg;
}

// 16-byte aligned storage for blocks.
struct block_buffer {
  std::vector<std::uint64_t> words;
  explicit block_buffer(std::size_t bytes) : words(bytes / 8 + 2) {}
  std::uint8_t* data() { return reinterpret_cast<std::uint8_t*>(words.data()); }
};

}  // namespace

TEST(QuantBlock, LayoutSectionsAreAlignedAndCounted) {
  for (auto params : {kvcrush::param_format::float16, kvcrush::param_format::float32}) {
    for (index_t d : {64, 80, 96, 128}) {
      const auto cfg = block_config(4, 2, 32, params);
      const auto b = quant_block_layout::make(cfg, 3, d);
      for (std::size_t offset : {b.key_scale_offset, b.key_zero_offset, b.value_codes_offset, b.value_scale_offset,
                                 b.value_zero_offset, b.bytes()})
        EXPECT_EQ(offset % 16, 0u);
      EXPECT_EQ(b.payload_bytes(), 3u * kvcrush::quant_layout::make(cfg, d).group_bytes());
      EXPECT_GE(b.bytes(), b.payload_bytes());
      EXPECT_LT(b.bytes(), b.payload_bytes() + 6 * 16);
      EXPECT_EQ(b.tokens(), 32);
    }
  }
}

TEST(QuantBlock, EncodingEqualsTheLayerAndEveryIsa) {
  const index_t heads = 2, g = 32;
  for (auto params : {kvcrush::param_format::float16, kvcrush::param_format::float32}) {
    for (index_t d : {64, 80, 128}) {
      const auto cfg = block_config(2, 4, g, params, d == 128 ? 32 : 0);
      const kv_rows k = quant_test::model_like_keys(heads, g, d, 1), v = quant_test::model_like_values(heads, g, d, 2);
      const auto b = quant_block_layout::make(cfg, heads, d);
      block_buffer block(b.bytes());
      kvcrush::workspace ws;
      kvcrush::encode_block<isa::scalar>(k.view(), v.view(), b, block.data(), ws);
      const auto layer = kvcrush::quantize_layer<float, isa::scalar>(k.view(), v.view(), cfg);
      const auto q = quant_test::random_queries(1, d, 3);
      const auto w = kvcrush_test::random_floats(static_cast<std::size_t>(g), 4, 0.0f, 1.0f);
      for (index_t h = 0; h < heads; ++h) {
        std::vector<float> keys(static_cast<std::size_t>(g * d)), values(keys.size()), lk(keys.size()), lv(keys.size());
        std::vector<float> scores(static_cast<std::size_t>(g)), layer_scores(scores.size());
        std::vector<float> sum(static_cast<std::size_t>(d)), layer_sum(sum.size());
        auto run = [&](auto tag) {
          using P = decltype(tag);
          const kvcrush::quant_block_view<P> view{block.data(), &b};
          kvcrush::decode_block(view, h, kvcrush::make_matrix_view(keys.data(), g, d), kvcrush::make_matrix_view(values.data(), g, d));
          kvcrush::block_key_scores<isa::scalar>(view, h, q.data(), scores.data());
          kvcrush::block_value_sum<isa::scalar>(view, h, w.data(), sum.data());
        };
        params == kvcrush::param_format::float16 ? run(float16{}) : run(float{});
        layer.dequantize_keys(h, kvcrush::make_matrix_view(lk.data(), g, d));
        layer.dequantize_values(h, kvcrush::make_matrix_view(lv.data(), g, d));
        kvcrush::key_scores<isa::scalar>(layer, h, kvcrush::make_vector_view(q.data(), d), kvcrush::make_vector_view(layer_scores.data(), g));
        kvcrush::value_sum<isa::scalar>(layer, h, kvcrush::make_vector_view(w.data(), g), kvcrush::make_vector_view(layer_sum.data(), d));
        EXPECT_EQ(keys, lk);
        EXPECT_EQ(values, lv);
        EXPECT_EQ(scores, layer_scores);
        EXPECT_EQ(sum, layer_sum);
      }
      // Every ISA writes the same bytes.
      kvcrush_test::for_each_simd_isa([&](auto tag) {
        using Isa = decltype(tag);
        block_buffer other(b.bytes());
        kvcrush::encode_block<Isa>(k.view(), v.view(), b, other.data(), ws);
        EXPECT_EQ(std::memcmp(other.data(), block.data(), b.bytes()), 0) << Isa::name;
      });
    }
  }
}

TEST(QuantBlock, BadBlocksAreRefused) {
  const auto cfg = block_config(4, 4, 16, kvcrush::param_format::float32);
  const auto b = quant_block_layout::make(cfg, 1, 16);
  kv_rows k = quant_test::model_like_keys(1, 16, 16, 5);
  block_buffer block(b.bytes());
  kvcrush::workspace ws;
  EXPECT_THROW(kvcrush::encode_block(k.view(), k.view(), b, block.data() + 2, ws), std::invalid_argument);  // misaligned
  EXPECT_THROW(kvcrush::encode_block(k.slice(0, 15), k.slice(0, 15), b, block.data(), ws), std::invalid_argument);
  k.row(0, 3)[2] = std::nanf("");
  EXPECT_THROW(kvcrush::encode_block(k.view(), k.view(), b, block.data(), ws), std::invalid_argument);
}

TEST(QuantBlock, PagedPoolCarriesQuantizedBlocks) {
  // A paged_cache<float> pool used as byte storage: each pool block (G
  // slots) holds one quantized block in the memory of its key rows. Append,
  // fork, evict_blocks (SPEC 4.4) and copy on write move the bytes intact,
  // and attention walks the block table. (A dedicated pool would allocate
  // quant_block_layout::bytes() per block instead of G float rows.)
  const index_t heads = 2, d = 64, g = 32, groups = 5, n = g * groups;
  const auto cfg = block_config(4, 4, g, kvcrush::param_format::float16);
  const auto b = quant_block_layout::make(cfg, heads, d);
  ASSERT_LE(b.bytes(), static_cast<std::size_t>(g * heads * d) * sizeof(float));
  const kv_rows k = quant_test::model_like_keys(heads, n, d, 6), v = quant_test::model_like_values(heads, n, d, 7);

  kvcrush::paged_cache_config pc;
  pc.kv_heads = heads;
  pc.head_dim = d;
  pc.block_size = g;
  pc.blocks = 12;
  pc.max_sequences = 2;
  kvcrush::paged_cache<float> pool(pc);
  const auto parent = pool.create();
  kvcrush::workspace ws;
  std::vector<std::vector<std::uint8_t>> encoded;
  for (index_t j = 0; j < groups; ++j) {
    // The block's bytes, as G token rows of (heads, d) floats.
    std::vector<float> rows(static_cast<std::size_t>(g * heads * d), 0.0f);
    block_buffer block(b.bytes());
    kvcrush::encode_block(k.slice(j * g, g), v.slice(j * g, g), b, block.data(), ws);
    std::memcpy(rows.data(), block.data(), b.bytes());
    encoded.emplace_back(block.data(), block.data() + b.bytes());
    const auto view = kvcrush::make_token_head_dim<const float>(rows.data(), g, heads, d);
    pool.append(parent, 0, view, view);
  }
  const auto child = pool.fork(parent);
  const std::vector<index_t> keep = {0, 2, 4};
  pool.evict_blocks(child, 0, kvcrush::make_vector_view<const index_t>(keep.data(), 3));
  pool.check_invariants();
  EXPECT_EQ(pool.length(child, 0), 3 * g);
  EXPECT_EQ(pool.length(parent, 0), n);
  // The child's blocks are the parent's (shared, not copied) and hold the
  // quantized bytes; positions still say where each token came from.
  const auto q = quant_test::random_queries(1, d, 8, 0.5f);
  std::vector<float> scores(static_cast<std::size_t>(3 * g));
  index_t seen = 0;
  pool.for_each_block(child, 0, [&](const kvcrush::paged_block<float>& pb) {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(pb.keys.view().data());
    const index_t source = keep[static_cast<std::size_t>(seen)];
    EXPECT_EQ(std::memcmp(bytes, encoded[static_cast<std::size_t>(source)].data(), b.bytes()), 0) << "block " << seen;
    EXPECT_EQ(pool.refcount(0, pb.block), 2);
    EXPECT_EQ(pb.positions(0, 0), source * g);
    const kvcrush::quant_block_view<float16> view{bytes, &b};
    kvcrush::block_key_scores(view, 1, q.data(), scores.data() + seen * g);
    ++seen;
  });
  EXPECT_EQ(seen, 3);
  // The same scores as a quantized layer holding the kept tokens (block =
  // group, so the codes are the same).
  kv_rows kept_k(heads, 3 * g, d), kept_v(heads, 3 * g, d);
  for (index_t h = 0; h < heads; ++h)
    for (std::size_t i = 0; i < keep.size(); ++i)
      for (index_t t = 0; t < g; ++t) {
        std::memcpy(kept_k.row(h, static_cast<index_t>(i) * g + t), k.row(h, keep[i] * g + t), static_cast<std::size_t>(d) * sizeof(float));
        std::memcpy(kept_v.row(h, static_cast<index_t>(i) * g + t), v.row(h, keep[i] * g + t), static_cast<std::size_t>(d) * sizeof(float));
      }
  const auto layer = kvcrush::quantize_layer<float>(kept_k.view(), kept_v.view(), cfg);
  std::vector<float> expected(scores.size());
  kvcrush::key_scores(layer, 1, kvcrush::make_vector_view(q.data(), d), kvcrush::make_vector_view(expected.data(), 3 * g));
  EXPECT_EQ(scores, expected);
  // Releasing the parent frees only the blocks the child dropped.
  pool.release(parent);
  pool.check_invariants();
  EXPECT_EQ(pool.free_blocks(0), 12 - 3);
}

// Run-time dispatch (kvcrush/dispatch/dispatch.hpp), built with baseline
// flags (-march=x86-64). Each ctest entry runs this binary at one level,
// forced by --level=<isa> (the API cap, use_isa) or by KVCRUSH_ISA, and every
// dispatched entry point must give the bits of the compile-time scalar path
// (instantiated here, in this baseline unit) or refuse with the same message.
// Detection is tested on synthetic CPUID/XGETBV words.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kvcrush/dispatch/dispatch.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/select/hamming.hpp"

namespace isa = kvcrush::isa;
namespace dispatch = kvcrush::dispatch;
using kvcrush::index_t;

namespace {

std::string expected_level;  // --level= or --expect=, empty: any

// ---- Detection on synthetic words ---------------------------------------------

isa::cpuid_words zen4_words() {
  namespace b = isa::cpuid_bit;
  isa::cpuid_words w;
  w.max_leaf = 16;
  w.leaf1_ecx = b::fma | b::popcnt | b::osxsave | b::avx;
  w.leaf7_ebx = b::avx2 | b::bmi2 | b::avx512f | b::avx512dq | b::avx512bw | b::avx512vl;
  w.leaf7_ecx = b::avx512vbmi | b::gfni | b::avx512vpopcntdq;
  w.xcr0 = b::xcr0_ymm | b::xcr0_zmm | 1;
  return w;
}

isa::level level_of(const isa::cpuid_words& w) { return isa::best_level(isa::decode(w)); }

TEST(DispatchDetection, FullAvx512MachineIsAvx512) { EXPECT_EQ(level_of(zen4_words()), isa::level::avx512); }

TEST(DispatchDetection, Avx512WithoutOsZmmStateIsAvx2) {
  auto w = zen4_words();
  w.xcr0 = isa::cpuid_bit::xcr0_ymm | 1;  // the OS saves YMM but not opmask/ZMM
  EXPECT_EQ(level_of(w), isa::level::avx2);
  EXPECT_FALSE(isa::decode(w).os_zmm);
  w.xcr0 = isa::cpuid_bit::xcr0_ymm | 0x20 | 0x40 | 1;  // one ZMM component missing
  EXPECT_EQ(level_of(w), isa::level::avx2);
}

TEST(DispatchDetection, NoOsxsaveMeansNoAvxState) {
  auto w = zen4_words();
  w.leaf1_ecx &= ~isa::cpuid_bit::osxsave;  // XCR0 must then be ignored
  EXPECT_EQ(level_of(w), isa::level::scalar);
  w = zen4_words();
  w.xcr0 = 1;  // x87 only
  EXPECT_EQ(level_of(w), isa::level::scalar);
}

TEST(DispatchDetection, EachRequiredBitMatters) {
  namespace b = isa::cpuid_bit;
  // Any one missing bit of the AVX2 level drops to scalar.
  for (std::uint32_t bit : {b::fma, b::popcnt, b::avx}) {
    auto w = zen4_words();
    w.leaf1_ecx &= ~bit;
    EXPECT_EQ(level_of(w), isa::level::scalar) << "leaf 1 ECX bit " << bit;
  }
  for (std::uint32_t bit : {b::avx2, b::bmi2}) {
    auto w = zen4_words();
    w.leaf7_ebx &= ~bit;
    EXPECT_EQ(level_of(w), isa::level::scalar) << "leaf 7 EBX bit " << bit;
  }
  // Any one missing bit of the AVX-512 level drops to AVX2.
  for (std::uint32_t bit : {b::avx512f, b::avx512dq, b::avx512bw, b::avx512vl}) {
    auto w = zen4_words();
    w.leaf7_ebx &= ~bit;
    EXPECT_EQ(level_of(w), isa::level::avx2) << "leaf 7 EBX bit " << bit;
  }
  for (std::uint32_t bit : {b::avx512vbmi, b::gfni, b::avx512vpopcntdq}) {
    auto w = zen4_words();
    w.leaf7_ecx &= ~bit;
    EXPECT_EQ(level_of(w), isa::level::avx2) << "leaf 7 ECX bit " << bit;
  }
}

TEST(DispatchDetection, LowMaximumLeafHidesLeaf7) {
  auto w = zen4_words();
  w.max_leaf = 6;  // leaf 7 words are then garbage and must not count
  EXPECT_FALSE(isa::decode(w).avx2);
  EXPECT_EQ(level_of(w), isa::level::scalar);
  w.max_leaf = 0;
  EXPECT_FALSE(isa::decode(w).fma);
  EXPECT_EQ(level_of(isa::cpuid_words{}), isa::level::scalar);
}

TEST(DispatchDetection, ThisMachineAgreesWithTheCompilerBuiltins) {
  // Two independent readings of the same CPU: ours and GCC's
  // __builtin_cpu_supports (behind isa::cpu_supports).
  const isa::level l = isa::detected_level();
  EXPECT_EQ(l == isa::level::avx512, isa::cpu_supports<isa::avx512>() && __builtin_cpu_supports("avx512vbmi") &&
                                         __builtin_cpu_supports("gfni"));
  EXPECT_EQ(static_cast<int>(l) >= static_cast<int>(isa::level::avx2), isa::cpu_supports<isa::avx2>());
  EXPECT_EQ(dispatch::detected_isa(), l);
}

TEST(DispatchDetection, LevelNames) {
  isa::level l{};
  EXPECT_TRUE(isa::parse_level("avx2", l));
  EXPECT_EQ(l, isa::level::avx2);
  EXPECT_FALSE(isa::parse_level("AVX2", l));
  EXPECT_FALSE(isa::parse_level("", l));
  EXPECT_EQ(isa::to_string(isa::level::avx512), "avx512");
}

// ---- Choosing the level --------------------------------------------------------

TEST(DispatchLevel, RunsAtTheRequestedLevel) {
  if (expected_level.empty()) GTEST_SKIP() << "no level requested";
  EXPECT_EQ(dispatch::active_isa_name(), expected_level);
}

TEST(DispatchLevel, UnsupportedLevelIsRefusedAndChangesNothing) {
  const isa::level before = dispatch::active_isa();
  // A level above every one this machine has: above AVX-512 everywhere, and
  // AVX-512 itself on a CPU without it.
  EXPECT_THROW(dispatch::use_isa(static_cast<isa::level>(KVCRUSH_ISA_LEVEL_avx512 + 1)), std::invalid_argument);
  if (dispatch::detected_isa() != isa::level::avx512) {
    EXPECT_THROW(dispatch::use_isa(isa::level::avx512), std::invalid_argument);
  }
  EXPECT_THROW(dispatch::use_isa("avx1024"), std::invalid_argument);
  EXPECT_THROW(dispatch::use_isa(""), std::invalid_argument);
  EXPECT_EQ(dispatch::active_isa(), before);
}

TEST(DispatchLevel, BadEnvironmentIsAnErrorUntilUseIsa) {
  const char* env = std::getenv("KVCRUSH_ISA");
  isa::level wanted{};
  const bool refused = env && *env && (!isa::parse_level(env, wanted) ||
                                       static_cast<int>(wanted) > static_cast<int>(dispatch::detected_isa()));
  if (!refused) GTEST_SKIP() << "KVCRUSH_ISA is usable here";
  try {
    dispatch::active_isa();
    FAIL() << "KVCRUSH_ISA=" << env << " was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("KVCRUSH_ISA"), std::string::npos) << e.what();
  }
  std::vector<std::uint64_t> sig(1), anchor(1);
  std::vector<std::uint32_t> out(1);
  EXPECT_THROW(dispatch::hamming_distances(kvcrush::make_matrix_view<const std::uint64_t>(sig.data(), 1, 1),
                                           kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), 1),
                                           kvcrush::make_vector_view(out.data(), 1)),
               std::invalid_argument);
  dispatch::use_isa(isa::level::scalar);
  EXPECT_EQ(dispatch::active_isa(), isa::level::scalar);
}

TEST(DispatchLevel, SwitchingWhileOtherThreadsRunGivesTheSameBits) {
  // One thread switches levels while another keeps computing: every call
  // runs on one complete level and gives the scalar bits.
  const isa::level before = dispatch::active_isa();
  const index_t n = 513, words = 2;
  std::vector<std::uint64_t> sig(static_cast<std::size_t>(n * words));
  for (std::size_t i = 0; i < sig.size(); ++i) sig[i] = 0x9e3779b97f4a7c15ull * (i + 1);
  const std::vector<std::uint64_t> anchor{0x0123456789abcdefull, 0xfedcba9876543210ull};
  const auto sv = kvcrush::make_matrix_view<const std::uint64_t>(sig.data(), n, words);
  const auto av = kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), words);
  std::vector<std::uint32_t> reference(static_cast<std::size_t>(n));
  kvcrush::hamming_distances<isa::scalar>(sv, av, kvcrush::make_vector_view(reference.data(), n));
  std::atomic<bool> stop{false};
  std::thread switcher([&] {
    for (int i = 0; !stop.load(); ++i) {
      const int top = static_cast<int>(dispatch::detected_isa());
      dispatch::use_isa(static_cast<isa::level>(1 + i % top));
    }
  });
  int mismatches = 0;
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::uint32_t> out(static_cast<std::size_t>(n), 0);
    dispatch::hamming_distances(sv, av, kvcrush::make_vector_view(out.data(), n));
    mismatches += out != reference;
  }
  stop = true;
  switcher.join();
  EXPECT_EQ(mismatches, 0);
  dispatch::use_isa(before);
}

// ---- Same bits as the compile-time scalar path -----------------------------------

// Runs f, returning "" or the message it threw.
std::string outcome(const std::function<void()>& f) {
  try {
    f();
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::vector<float> scores_with_ties(std::size_t n, unsigned seed, bool infinities) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(0, 7);  // few distinct values: ties
  std::uniform_real_distribution<float> real(-3.0f, 3.0f);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = (i % 3 == 0) ? static_cast<float>(small(rng)) : real(rng);
  if (infinities && n > 4) {
    v[1] = std::numeric_limits<float>::infinity();
    v[n / 2] = -std::numeric_limits<float>::infinity();
  }
  return v;
}

std::vector<float> probabilities(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

template <class T>
T from_float(float x) {
  if constexpr (std::is_same_v<T, kvcrush::float16>) {
    return kvcrush::to_float16(x);
  } else if constexpr (std::is_same_v<T, kvcrush::bfloat16>) {
    return kvcrush::to_bfloat16(x);
  } else {
    return x;
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DispatchMatchesScalar, SelectEveryPolicyAndMode) {
  int cases = 0, refused = 0;
  for (index_t h : {1, 3, 8, 33}) {
    const index_t group = h == 1 ? 3 : 2, hq = h * group, d = 8;
    for (index_t n : {1, 2, 17, 131, 257}) {
      const index_t w = std::min<index_t>(n, 5);
      const auto scores = scores_with_ties(static_cast<std::size_t>(h * n), static_cast<unsigned>(h * 1000 + n),
                                           n % 2 == 1);
      const auto attention = probabilities(static_cast<std::size_t>(hq * w * n), static_cast<unsigned>(n));
      const auto last = probabilities(static_cast<std::size_t>(hq * n), static_cast<unsigned>(n + 1));
      const auto keys = scores_with_ties(static_cast<std::size_t>(h * n * d), static_cast<unsigned>(n + 2), false);
      kvcrush::layer_inputs in;
      in.kv_heads = h;
      in.tokens = n;
      in.scores = kvcrush::make_matrix_view(scores.data(), h, n);
      in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n});
      in.keys.f32 = kvcrush::make_head_token_dim(keys.data(), h, n, d);
      in.last_attention = kvcrush::make_matrix_view(last.data(), hq, n);
      for (const char* base : {"full", "streaming", "random", "h2o", "snapkv", "pyramidkv", "tova", "knorm",
                               "precomputed"}) {
        for (const char* modifier : {"", "+kvcrush", "+adakv", "+adakv+kvcrush"}) {
          const std::string name = std::string(base) + modifier;
          if (name.rfind("full+", 0) == 0 || (std::string(base) == "h2o")) continue;  // h2o: see below
          for (int mode = 0; mode < 3; ++mode) {  // shared, per head, blocks of 4
            auto cfg = kvcrush::policy_config::parse(name);
            if (mode == 1) cfg.layout.per_head = true;
            if (mode == 2) {
              if (cfg.adakv) continue;
              cfg.layout.block_size = 4;
            }
            cfg.seed = 7;
            // Vary the KVCrush options with the shape: every anchor, rule,
            // threshold and signature-row choice is met somewhere.
            const int variant = static_cast<int>((h + n + mode) % 6);
            cfg.crush.anchor = static_cast<kvcrush::anchor_mode>(variant);
            cfg.crush.representative = static_cast<kvcrush::representative_rule>(variant % 4);
            cfg.crush.threshold = variant % 2 ? kvcrush::threshold_mode::mean : kvcrush::threshold_mode::median;
            if (variant == 5 && (cfg.base == kvcrush::base_policy::snapkv || cfg.base == kvcrush::base_policy::pyramidkv)) {
              cfg.crush.heads = kvcrush::signature_heads::query;
            }
            // Sink and recent (multiples of the block size in block mode);
            // StreamingLLM keeps exactly those.
            const index_t unit = cfg.layout.block_size, sink = n > 8 ? unit : 0, recent = n > 8 ? 3 * unit : 0;
            index_t keep = (n / 2 + unit) / unit * unit;
            if (cfg.base == kvcrush::base_policy::streaming) keep = sink + recent;
            const kvcrush::layer_budget budget{std::max(keep, sink + recent), sink, recent};
            const index_t rows = cfg.layout.per_head ? h : 1, width = n + 1;
            std::vector<index_t> pos_d(static_cast<std::size_t>(rows * width), -1), cnt_d(rows, -1);
            auto pos_s = pos_d, cnt_s = cnt_d;
            kvcrush::workspace ws_d, ws_s;
            const std::string e_d = outcome([&] {
              dispatch::select(cfg, in, budget,
                               {kvcrush::make_matrix_view(pos_d.data(), rows, width),
                                kvcrush::make_vector_view(cnt_d.data(), rows)},
                               ws_d);
            });
            const std::string e_s = outcome([&] {
              kvcrush::select<isa::scalar>(cfg, in, budget,
                                           {kvcrush::make_matrix_view(pos_s.data(), rows, width),
                                            kvcrush::make_vector_view(cnt_s.data(), rows)},
                                           ws_s);
            });
            ASSERT_EQ(e_d, e_s) << name << " mode " << mode << " h " << h << " n " << n;
            ASSERT_EQ(pos_d, pos_s) << name << " mode " << mode << " h " << h << " n " << n;
            ASSERT_EQ(cnt_d, cnt_s) << name << " mode " << mode << " h " << h << " n " << n;
            ++cases;
            refused += !e_d.empty();
            if (!e_d.empty() && std::getenv("KVCRUSH_TEST_VERBOSE")) std::printf("%s: %s\n", name.c_str(), e_d.c_str());
          }
        }
      }
    }
  }
  std::printf("%d selections agree at %.*s (%d of them refused alike)\n", cases,
              static_cast<int>(dispatch::active_isa_name().size()), dispatch::active_isa_name().data(), refused);
  EXPECT_LT(refused, cases / 10) << "most cases must select, not refuse";
}

TEST(DispatchMatchesScalar, SelectRefusesNaNAlike) {
  const index_t h = 4, n = 50;
  auto scores = scores_with_ties(static_cast<std::size_t>(h * n), 9, true);
  scores[77] = std::nanf("");
  kvcrush::layer_inputs in;
  in.kv_heads = h;
  in.tokens = n;
  in.scores = kvcrush::make_matrix_view(scores.data(), h, n);
  for (const char* name : {"precomputed", "precomputed+kvcrush", "precomputed+adakv+kvcrush"}) {
    const auto cfg = kvcrush::policy_config::parse(name);
    const index_t rows = cfg.layout.per_head ? h : 1;
    std::vector<index_t> pos_d(static_cast<std::size_t>(rows * n), -1), cnt_d(rows, -1);
    auto pos_s = pos_d, cnt_s = cnt_d;
    kvcrush::workspace ws;
    const std::string e_d = outcome([&] {
      dispatch::select(cfg, in, {20, 2, 4},
                       {kvcrush::make_matrix_view(pos_d.data(), rows, n), kvcrush::make_vector_view(cnt_d.data(), rows)},
                       ws);
    });
    const std::string e_s = outcome([&] {
      kvcrush::select<isa::scalar>(
          cfg, in, {20, 2, 4},
          {kvcrush::make_matrix_view(pos_s.data(), rows, n), kvcrush::make_vector_view(cnt_s.data(), rows)}, ws);
    });
    EXPECT_FALSE(e_d.empty()) << name << ": NaN scores were accepted";
    EXPECT_EQ(e_d, e_s) << name;
    EXPECT_EQ(pos_d, pos_s) << name;
  }
}

// What dispatch::select documents for H2O: the accumulated scores as scores
// with 'precomputed' select what policy h2o selects from the accumulator.
TEST(DispatchMatchesScalar, H2oThroughScoresEqualsTheAccumulatorPolicy) {
  for (bool normalised : {false, true}) {
    for (const char* modifier : {"", "+kvcrush", "+adakv"}) {
      const index_t h = 3, hq = 6, n = 61;
      const auto attention = probabilities(static_cast<std::size_t>(hq * n * n), 17);
      const auto view = kvcrush::strided_view<const float, 3>(attention.data(), {hq, n, n});
      kvcrush::h2o_accumulator acc(h, hq, n);
      acc.prefill(view);
      std::vector<float> sums(static_cast<std::size_t>(h * n));
      dispatch::h2o_scores(view, kvcrush::gqa_reduction::mean, normalised, kvcrush::make_matrix_view(sums.data(), h, n));

      auto by_acc = kvcrush::policy_config::parse(std::string("h2o") + modifier);
      by_acc.h2o_normalised = normalised;
      auto by_scores = by_acc;
      by_scores.base = kvcrush::base_policy::precomputed;
      kvcrush::layer_inputs in_acc, in_scores;
      in_acc.kv_heads = in_scores.kv_heads = h;
      in_acc.tokens = in_scores.tokens = n;
      in_acc.h2o = &acc;
      in_scores.scores = kvcrush::make_matrix_view<const float>(sums.data(), h, n);
      const index_t rows = by_acc.layout.per_head ? h : 1;
      std::vector<index_t> pos_a(static_cast<std::size_t>(rows * n), -1), cnt_a(rows), pos_d = pos_a, cnt_d = cnt_a;
      kvcrush::workspace ws_a, ws_d;
      kvcrush::select<isa::scalar>(
          by_acc, in_acc, {20, 2, 4},
          {kvcrush::make_matrix_view(pos_a.data(), rows, n), kvcrush::make_vector_view(cnt_a.data(), rows)}, ws_a);
      dispatch::select(by_scores, in_scores, {20, 2, 4},
                       {kvcrush::make_matrix_view(pos_d.data(), rows, n), kvcrush::make_vector_view(cnt_d.data(), rows)},
                       ws_d);
      EXPECT_EQ(pos_a, pos_d) << modifier << " normalised " << normalised;
      EXPECT_EQ(cnt_a, cnt_d) << modifier << " normalised " << normalised;
    }
  }
}

TEST(DispatchMatchesScalar, SelectRefusesAnH2oAccumulator) {
  kvcrush::h2o_accumulator acc(1, 1, 4);
  kvcrush::layer_inputs in;
  in.kv_heads = 1;
  in.tokens = 0;
  in.h2o = &acc;
  std::vector<index_t> pos(4), cnt(1);
  kvcrush::workspace ws;
  EXPECT_THROW(dispatch::select(kvcrush::policy_config::parse("h2o"), in, {2, 0, 0},
                                {kvcrush::make_matrix_view(pos.data(), 1, 4), kvcrush::make_vector_view(cnt.data(), 1)},
                                ws),
               std::invalid_argument);
}

TEST(DispatchMatchesScalar, SignaturesAndHamming) {
  for (index_t h = 1; h <= 33; h += (h < 9 ? 1 : 8)) {
    for (index_t n : {1, 7, 64, 129, 333}) {
      const auto scores = scores_with_ties(static_cast<std::size_t>(h * n), static_cast<unsigned>(h + 31 * n), n > 4);
      const index_t words = kvcrush::signature_words(h);
      for (auto mode : {kvcrush::threshold_mode::median, kvcrush::threshold_mode::mean}) {
        const index_t begin = n > 7 ? 3 : 0, end = n;
        const index_t m = end - begin;
        std::vector<std::uint64_t> sig_d(static_cast<std::size_t>(m * words), 0), sig_s = sig_d;
        std::vector<index_t> bits_d(static_cast<std::size_t>(h), -1), bits_s = bits_d;
        kvcrush::selection_scratch ws_d, ws_s;
        const auto view = kvcrush::make_matrix_view<const float>(scores.data(), h, n);
        const std::string e_d = outcome([&] {
          dispatch::compute_signatures(view, begin, end, mode, kvcrush::make_matrix_view(sig_d.data(), m, words), ws_d,
                                       kvcrush::make_vector_view(bits_d.data(), h));
        });
        const std::string e_s = outcome([&] {
          kvcrush::compute_signatures<isa::scalar>(view, begin, end, mode,
                                                   kvcrush::make_matrix_view(sig_s.data(), m, words), ws_s,
                                                   kvcrush::make_vector_view(bits_s.data(), h));
        });
        ASSERT_EQ(e_d, e_s) << "h " << h << " n " << n;
        ASSERT_EQ(sig_d, sig_s) << "h " << h << " n " << n;
        ASSERT_EQ(bits_d, bits_s) << "h " << h << " n " << n;
        std::vector<std::uint64_t> anchor(static_cast<std::size_t>(words), 0x5555555555555555ull);
        std::vector<std::uint32_t> dist_d(static_cast<std::size_t>(m), 7), dist_s = dist_d;
        const auto sv = kvcrush::make_matrix_view<const std::uint64_t>(sig_d.data(), m, words);
        const auto av = kvcrush::make_vector_view<const std::uint64_t>(anchor.data(), words);
        dispatch::hamming_distances(sv, av, kvcrush::make_vector_view(dist_d.data(), m));
        kvcrush::hamming_distances<isa::scalar>(sv, av, kvcrush::make_vector_view(dist_s.data(), m));
        ASSERT_EQ(dist_d, dist_s) << "h " << h << " n " << n;
      }
    }
  }
}

TEST(DispatchMatchesScalar, WindowAndH2oScores) {
  for (index_t h : {1, 2, 5, 33}) {
    for (index_t n : {1, 9, 100}) {
      const index_t hq = 2 * h, w = std::min<index_t>(n, 4);
      auto attention = probabilities(static_cast<std::size_t>(hq * w * n), static_cast<unsigned>(h * n));
      kvcrush::window_options opt;
      opt.kernel = 3;
      opt.gqa = h % 2 ? kvcrush::gqa_reduction::max : kvcrush::gqa_reduction::mean;
      const auto view = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n});
      std::vector<float> kv_d(static_cast<std::size_t>(h * n), -1.0f), kv_s = kv_d;
      std::vector<float> q_d(static_cast<std::size_t>(hq * n), -1.0f), q_s = q_d;
      kvcrush::attention_scratch ws_d, ws_s;
      dispatch::window_scores(view, opt, kvcrush::make_matrix_view(kv_d.data(), h, n), ws_d,
                              kvcrush::make_matrix_view(q_d.data(), hq, n));
      kvcrush::window_scores<isa::scalar>(view, opt, kvcrush::make_matrix_view(kv_s.data(), h, n), ws_s,
                                          kvcrush::make_matrix_view(q_s.data(), hq, n));
      ASSERT_TRUE(same_bits(kv_d, kv_s) && same_bits(q_d, q_s)) << "h " << h << " n " << n;

      // H2O over a causal prefill (hq, n, n).
      auto prefill = probabilities(static_cast<std::size_t>(hq * n * n), static_cast<unsigned>(h + n));
      const auto pv = kvcrush::strided_view<const float, 3>(prefill.data(), {hq, n, n});
      for (bool normalised : {false, true}) {
        std::vector<float> out_d(static_cast<std::size_t>(h * n), -1.0f), out_s = out_d;
        dispatch::h2o_scores(pv, opt.gqa, normalised, kvcrush::make_matrix_view(out_d.data(), h, n));
        kvcrush::h2o_accumulator acc(h, hq, n, opt.gqa);
        acc.prefill(pv);
        if (normalised) {
          acc.normalised_scores(kvcrush::make_matrix_view(out_s.data(), h, n));
        } else {
          for (index_t k = 0; k < h; ++k) {
            for (index_t t = 0; t < n; ++t) out_s[static_cast<std::size_t>(k * n + t)] = acc.scores()(k, t);
          }
        }
        ASSERT_TRUE(same_bits(out_d, out_s)) << "h2o h " << h << " n " << n << " normalised " << normalised;
      }
    }
  }
  // NaN is refused the same way.
  std::vector<float> bad(2 * 3 * 5, 0.1f);
  bad[7] = std::nanf("");
  std::vector<float> out(2 * 5);
  kvcrush::attention_scratch ws;
  EXPECT_THROW(dispatch::window_scores(kvcrush::strided_view<const float, 3>(bad.data(), {2, 3, 5}), {},
                                       kvcrush::make_matrix_view(out.data(), 2, 5), ws),
               std::invalid_argument);
}

template <class T>
void check_compaction() {
  for (index_t h : {1, 4, 33}) {
    const index_t n = 37, d = 5;
    std::vector<T> base(static_cast<std::size_t>(h * n * d));
    for (std::size_t i = 0; i < base.size(); ++i) base[i] = from_float<T>(static_cast<float>(i % 251) - 100.0f);
    // Per-head keep sets of the same length (every head keeps its own tokens).
    const index_t keep_n = 11;
    std::vector<index_t> keep(static_cast<std::size_t>(h * keep_n));
    for (index_t r = 0; r < h; ++r) {
      for (index_t i = 0; i < keep_n; ++i) keep[static_cast<std::size_t>(r * keep_n + i)] = (i * 3 + r) % n;
      std::sort(keep.begin() + r * keep_n, keep.begin() + (r + 1) * keep_n);  // distinct: steps of 3 below n
    }
    for (int shared = 0; shared < 2; ++shared) {
      auto kd = base, vd = base, ks = base, vs = base;
      const index_t rows = shared ? 1 : h;
      std::vector<index_t> counts(static_cast<std::size_t>(rows), keep_n);
      const kvcrush::keep_view kv{kvcrush::make_matrix_view<const index_t>(keep.data(), rows, keep_n),
                                  kvcrush::make_vector_view<const index_t>(counts.data(), rows)};
      const std::string e_d = outcome([&] {
        dispatch::compact(kvcrush::make_head_token_dim(kd.data(), h, n, d), kvcrush::make_head_token_dim(vd.data(), h, n, d), kv);
      });
      const std::string e_s = outcome([&] {
        kvcrush::compact<isa::scalar>(kvcrush::make_head_token_dim(ks.data(), h, n, d),
                                      kvcrush::make_head_token_dim(vs.data(), h, n, d), kv);
      });
      ASSERT_EQ(e_d, e_s);
      ASSERT_EQ(0, std::memcmp(kd.data(), ks.data(), kd.size() * sizeof(T)));
      ASSERT_EQ(0, std::memcmp(vd.data(), vs.data(), vd.size() * sizeof(T)));
    }
    // Blocks of 4 tokens, token-major layout; the partial last block kept.
    std::vector<index_t> blocks{0, 2, 3, 9};
    auto kd = base, ks = base;
    const auto bv = kvcrush::make_vector_view<const index_t>(blocks.data(), 4);
    const index_t len_d = dispatch::compact_blocks(kvcrush::make_token_head_dim(kd.data(), n, h, d),
                                                   kvcrush::make_token_head_dim<T>(nullptr, n, h, 0), bv, 4);
    const index_t len_s = kvcrush::compact_blocks<isa::scalar>(kvcrush::make_token_head_dim(ks.data(), n, h, d),
                                                               kvcrush::make_token_head_dim<T>(nullptr, n, h, 0), bv, 4);
    ASSERT_EQ(len_d, len_s);
    ASSERT_EQ(0, std::memcmp(kd.data(), ks.data(), kd.size() * sizeof(T)));
  }
}

TEST(DispatchMatchesScalar, Compaction) {
  check_compaction<float>();
  check_compaction<kvcrush::float16>();
  check_compaction<kvcrush::bfloat16>();
}

template <class U>
void check_quant(kvcrush::param_format params, int key_bits, int value_bits, index_t heads, index_t d) {
  kvcrush::quant_config cfg;
  cfg.key_bits = key_bits;
  cfg.value_bits = value_bits;
  cfg.group_size = 16;
  cfg.window = 16;
  cfg.params = params;
  const auto b = kvcrush::quant_block_layout::make(cfg, heads, d);
  const index_t g = cfg.group_size;
  const auto kf = scores_with_ties(static_cast<std::size_t>(heads * g * d), static_cast<unsigned>(heads * d), false);
  const auto vf = probabilities(static_cast<std::size_t>(heads * g * d), static_cast<unsigned>(heads + d));
  std::vector<U> k(kf.size()), v(vf.size());
  for (std::size_t i = 0; i < kf.size(); ++i) {
    k[i] = from_float<U>(kf[i]);
    v[i] = from_float<U>(vf[i]);
  }
  const auto kv = kvcrush::make_head_token_dim<const U>(k.data(), heads, g, d);
  const auto vv = kvcrush::make_head_token_dim<const U>(v.data(), heads, g, d);
  std::vector<std::uint8_t> block_d(b.bytes() + 64, 0xAB), block_s = block_d;
  kvcrush::quant_scratch ws_d, ws_s;
  dispatch::encode_block(kv, vv, b, block_d.data(), ws_d);
  kvcrush::encode_block<isa::scalar>(kv, vv, b, block_s.data(), ws_s);
  ASSERT_EQ(block_d, block_s) << "heads " << heads << " d " << d;
  const auto q = scores_with_ties(static_cast<std::size_t>(d), 5, false);
  const auto p = probabilities(static_cast<std::size_t>(g), 6);
  auto run = [&](auto param_tag) {
    using P = decltype(param_tag);
    const kvcrush::quant_block_view<P> view{block_d.data(), &b};
    for (index_t head = 0; head < heads; ++head) {
      std::vector<float> s_d(static_cast<std::size_t>(g)), s_s = s_d, o_d(static_cast<std::size_t>(d)), o_s = o_d;
      dispatch::block_key_scores(view, head, q.data(), s_d.data());
      kvcrush::block_key_scores<isa::scalar>(view, head, q.data(), s_s.data());
      dispatch::block_value_sum(view, head, p.data(), o_d.data());
      kvcrush::block_value_sum<isa::scalar>(view, head, p.data(), o_s.data());
      ASSERT_TRUE(same_bits(s_d, s_s) && same_bits(o_d, o_s)) << "head " << head << " d " << d;
    }
  };
  if (params == kvcrush::param_format::float16) {
    run(kvcrush::float16{});
  } else {
    run(float{});
  }
}

TEST(DispatchMatchesScalar, QuantizedBlocks) {
  for (auto params : {kvcrush::param_format::float16, kvcrush::param_format::float32}) {
    for (int bits : {2, 4, 8}) {
      for (index_t heads : {1, 3}) {
        for (index_t d : {16, 40, 128}) {
          check_quant<float>(params, bits, bits == 8 ? 2 : bits * 2, heads, d);
          check_quant<kvcrush::float16>(params, bits, 4, heads, d);
          check_quant<kvcrush::bfloat16>(params, bits, 4, heads, d);
        }
      }
    }
  }
}

}  // namespace

// --level=<isa>: run at that level (use_isa), skip (77) if the CPU lacks it.
// --expect=<isa>: the level KVCRUSH_ISA should have chosen.
int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--level=", 0) == 0) {
      expected_level = arg.substr(8);
      isa::level l{};
      if (!isa::parse_level(expected_level, l)) {
        std::fprintf(stderr, "unknown level %s\n", expected_level.c_str());
        return 2;
      }
      if (static_cast<int>(l) > static_cast<int>(dispatch::detected_isa())) {
        std::printf("SKIPPED: this CPU lacks %s\n", expected_level.c_str());
        return 77;
      }
      dispatch::use_isa(l);
    } else if (arg.rfind("--expect=", 0) == 0) {
      expected_level = arg.substr(9);
      isa::level l{};
      if (isa::parse_level(expected_level, l) && static_cast<int>(l) > static_cast<int>(dispatch::detected_isa())) {
        std::printf("SKIPPED: this CPU lacks %s\n", expected_level.c_str());
        return 77;
      }
    }
  }
  std::printf("dispatch tests: detected %.*s\n", static_cast<int>(isa::to_string(dispatch::detected_isa()).size()),
              isa::to_string(dispatch::detected_isa()).data());
  return RUN_ALL_TESTS();
}

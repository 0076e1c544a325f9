// The kvcrush executable end to end: real .npy files in, real .npy files
// out, compared with the library and with SPEC written plainly (every
// policy, ragged AdaKV output, float16/float64 inputs); and every bad input
// exits 2 with one line on stderr and writes nothing.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kvcrush/kvcrush.hpp"
#include "spec_reference.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using kvcrush::index_t;

namespace {

struct outcome {
  int code = -1;
  std::string out, err;
};

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kvcrush_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  outcome run(const std::string& arguments) const {
    const std::string out = path("stdout.txt"), err = path("stderr.txt");
    const std::string command = std::string(KVCRUSH_CLI_PATH) + " " + arguments + " > " + out + " 2> " + err;
    const int status = std::system(command.c_str());
    outcome o;
    o.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    o.out = slurp(out);
    o.err = slurp(err);
    return o;
  }

  static std::string slurp(const std::string& file) {
    std::ifstream in(file);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  std::string write_scores(const std::string& name, const std::vector<float>& data, std::vector<std::int64_t> shape) const {
    kvcrush::io::write_npy<float>(path(name), shape, data.data());
    return path(name);
  }

  static std::vector<long> as_longs(const std::vector<std::int64_t>& v) { return {v.begin(), v.end()}; }

  fs::path dir_;
};

// The library's own answer through the runtime facade: one row per keep set,
// each cut to its count.
std::vector<std::vector<long>> library_select(const kvcrush::policy_config& policy, const kvcrush::layer_inputs& in,
                                              const kvcrush::layer_budget& budget) {
  const index_t rows = policy.layout.per_head ? in.kv_heads : 1;
  std::vector<index_t> keep(static_cast<std::size_t>(rows * in.tokens));
  std::vector<index_t> counts(static_cast<std::size_t>(rows));
  kvcrush::workspace ws;
  kvcrush::select(policy, in, budget,
                  {kvcrush::make_matrix_view(keep.data(), rows, in.tokens), kvcrush::make_vector_view(counts.data(), rows)},
                  ws);
  std::vector<std::vector<long>> out;
  for (index_t r = 0; r < rows; ++r) out.emplace_back(keep.begin() + r * in.tokens, keep.begin() + r * in.tokens + counts[r]);
  return out;
}

// A (rows, K) int64 output padded with -1, as rows of their kept entries;
// the padding must all be at the end of each row.
std::vector<std::vector<long>> unpad(const kvcrush::io::npy_array& keep) {
  EXPECT_EQ(keep.dtype, kvcrush::io::npy_dtype::int64);
  const auto values = keep.values<std::int64_t>();
  const index_t rows = keep.shape.size() == 2 ? keep.shape[0] : 1;
  const index_t width = keep.shape.back();
  std::vector<std::vector<long>> out(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) {
    bool padding = false;
    for (index_t i = 0; i < width; ++i) {
      const auto v = values[static_cast<std::size_t>(r * width + i)];
      if (v < 0) {
        EXPECT_EQ(v, -1) << "padding is -1";
        padding = true;
      } else {
        EXPECT_FALSE(padding) << "row " << r << ": an entry after the padding";
        out[static_cast<std::size_t>(r)].push_back(static_cast<long>(v));
      }
    }
  }
  return out;
}

// A float64 .npy, which kvcrush::io does not write: the bytes of a uint64
// array of the same shape with the descr changed (NumPy's own layout).
void write_float64(const std::string& file, const std::vector<double>& data, std::vector<std::int64_t> shape) {
  auto bytes = kvcrush::io::serialize_npy(kvcrush::io::npy_dtype::uint64, shape, data.data());
  std::string text(bytes.begin(), bytes.end());
  const auto at = text.find("'<u8'");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 2] = 'f';
  std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

spec::Rows rows_of(const std::vector<float>& flat, index_t rows, index_t tokens) {
  spec::Rows out(static_cast<std::size_t>(rows), std::vector<float>(static_cast<std::size_t>(tokens)));
  for (index_t r = 0; r < rows; ++r)
    for (index_t t = 0; t < tokens; ++t) out[r][t] = flat[r * tokens + t];
  return out;
}

}  // namespace

TEST_F(Cli, SelectFromScoresMatchesSpec) {
  const index_t h = 4, n = 200;
  const auto scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(h * n), 3, 11, 0.0);
  const auto file = write_scores("s.npy", scores, {h, n});
  struct variant {
    std::string flags;
    kvcrush::keep_config cfg;
  };
  kvcrush::keep_config base;
  base.budget = 48;
  base.sink = 4;
  base.recent = 8;
  std::vector<variant> variants;
  variants.push_back({"", base});
  auto crush = base;
  crush.crush_fraction = 0.5;
  crush.anchor = kvcrush::anchor_mode::alternating;
  crush.representative = kvcrush::representative_rule::linspace;
  variants.push_back({"--crush 0.5 --anchor alternating --representative linspace", crush});
  auto per_head = crush;
  per_head.per_head = true;
  per_head.threshold = kvcrush::threshold_mode::median;
  variants.push_back({"--crush 0.5 --anchor alternating --representative linspace --per-head", per_head});
  auto random = crush;
  random.anchor = kvcrush::anchor_mode::random;
  random.seed = 77;
  variants.push_back({"--crush 0.5 --anchor random --seed 77 --representative linspace", random});
  auto blocks = base;
  blocks.block_size = 4;
  blocks.crush_fraction = 0.25;
  blocks.representative = kvcrush::representative_rule::stride;
  variants.push_back({"--block-size 4 --crush 0.25 --representative stride", blocks});
  for (const auto& v : variants) {
    const auto o = run("select --scores " + file + " --budget 48 --sink 4 --recent 8 " + v.flags + " --out " + path("keep.npy"));
    ASSERT_EQ(o.code, 0) << v.flags << ": " << o.err;
    ASSERT_TRUE(o.err.empty());
    const auto keep = kvcrush::io::read_npy(path("keep.npy"));
    const auto expected = spec::keep(rows_of(scores, h, n), rows_of(scores, h, n), v.cfg);
    const auto values = keep.values<std::int64_t>();
    if (v.cfg.per_head) {
      ASSERT_EQ(keep.shape, (std::vector<std::int64_t>{h, 48}));
      for (index_t r = 0; r < h; ++r)
        ASSERT_EQ(std::vector<long>(values.begin() + r * 48, values.begin() + (r + 1) * 48), expected[r]);
    } else {
      ASSERT_EQ(keep.shape, (std::vector<std::int64_t>{static_cast<std::int64_t>(expected[0].size())}));
      ASSERT_EQ(as_longs(values), expected[0]) << v.flags;
    }
  }
  // Nothing to evict: every position, shape (N,).
  const auto small = write_scores("small.npy", std::vector<float>(2 * 10, 0.5f), {2, 10});
  ASSERT_EQ(run("select --scores " + small + " --budget 16 --out " + path("all.npy")).code, 0);
  EXPECT_EQ(kvcrush::io::read_npy(path("all.npy")).values<std::int64_t>(), (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST_F(Cli, SelectWithTheAdaptiveSplitMatchesSpec) {
  const index_t h = 3, n = 150;
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 21, 0.0f, 1.0f);
  const auto file = write_scores("s.npy", scores, {h, n});
  kvcrush::keep_config base;
  base.budget = 48;
  base.sink = 4;
  base.recent = 8;
  base.split = kvcrush::crush_split::adaptive;
  base.crush_mass = 0.9;
  struct variant {
    std::string flags;
    kvcrush::keep_config cfg;
  };
  std::vector<variant> variants;
  variants.push_back({"--crush-split adaptive", base});
  auto low = base;
  low.crush_mass = 0.3;
  variants.push_back({"--policy precomputed+kvcrush --crush-split adaptive --crush-mass 0.3", low});
  auto per_head = low;
  per_head.per_head = true;
  variants.push_back({"--crush-split adaptive --crush-mass 0.3 --per-head", per_head});
  auto blocks = low;
  blocks.block_size = 4;
  variants.push_back({"--crush-split adaptive --crush-mass 0.3 --block-size 4", blocks});
  for (const auto& v : variants) {
    const auto o = run("select --scores " + file + " --budget 48 --sink 4 --recent 8 " + v.flags + " --out " + path("keep.npy"));
    ASSERT_EQ(o.code, 0) << v.flags << ": " << o.err;
    const auto values = kvcrush::io::read_npy(path("keep.npy")).values<std::int64_t>();
    const auto expected = spec::keep(rows_of(scores, h, n), rows_of(scores, h, n), v.cfg);
    std::vector<long> flat;
    for (const auto& row : expected) flat.insert(flat.end(), row.begin(), row.end());
    EXPECT_EQ(as_longs(values), flat) << v.flags;
  }
}

TEST_F(Cli, SelectFromAttentionIsSnapKV) {
  const index_t hq = 8, h = 2, rows = 6, n = 120;
  auto attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * rows * n), 9, 0.0f, 1.0f);
  const auto file = write_scores("a.npy", attention, {hq, rows, n});
  const index_t window = 4;
  const auto o = run("select --attention " + file + " --kv-heads 2 --window 4 --pool max --kernel 5 --gqa max --budget 40 "
                     "--sink 2 --crush 0.5 --signature-heads query --out " + path("keep.npy"));
  ASSERT_EQ(o.code, 0) << o.err;
  // The same through the library: last 4 rows, SnapKV scores, recent = window.
  kvcrush::workspace ws;
  std::vector<float> s(static_cast<std::size_t>(h * n)), sq(static_cast<std::size_t>(hq * n));
  const kvcrush::strided_view<const float, 3> last(attention.data() + (rows - window) * n, {hq, window, n}, {rows * n, n, 1});
  kvcrush::window_scores(last, {kvcrush::pooling_mode::max, 5, kvcrush::gqa_reduction::max},
                         kvcrush::make_matrix_view(s.data(), h, n), ws, kvcrush::make_matrix_view(sq.data(), hq, n));
  kvcrush::keep_config cfg;
  cfg.budget = 40;
  cfg.sink = 2;
  cfg.recent = window;
  cfg.crush_fraction = 0.5;
  const auto expected = spec::keep(rows_of(s, h, n), rows_of(sq, hq, n), cfg);
  EXPECT_EQ(as_longs(kvcrush::io::read_npy(path("keep.npy")).values<std::int64_t>()), expected[0]);
}

TEST_F(Cli, SignaturesMatchSpec) {
  const index_t h = 70, n = 50;
  const auto scores = kvcrush_test::tricky_floats(static_cast<std::size_t>(h * n), 4, 7, 0.0);
  const auto file = write_scores("s.npy", scores, {h, n});
  for (const char* threshold : {"median", "mean"}) {
    const auto o = run("signatures --scores " + file + " --sink 3 --recent 5 --threshold " + threshold + " --out " + path("sig.npy"));
    ASSERT_EQ(o.code, 0) << o.err;
    const auto sig = kvcrush::io::read_npy(path("sig.npy"));
    ASSERT_EQ(sig.dtype, kvcrush::io::npy_dtype::uint64);
    ASSERT_EQ(sig.shape, (std::vector<std::int64_t>{n - 8, 2}));
    const auto words = sig.values<std::uint64_t>();
    const auto expected = spec::signatures(rows_of(scores, h, n), 3, n - 5, kvcrush::parse_threshold_mode(threshold));
    for (index_t t = 0; t < n - 8; ++t)
      for (index_t b = 0; b < h; ++b) ASSERT_EQ((words[t * 2 + b / 64] >> (b % 64)) & 1u, static_cast<unsigned>(expected[t][b]));
  }
}

TEST_F(Cli, BudgetsPrintPyramidKV) {
  const auto o = run("budgets --pyramid --budget 128 --window 8 --layers 5 --tokens 1000");
  ASSERT_EQ(o.code, 0) << o.err;
  std::string expected;
  for (auto b : kvcrush::pyramid_budgets(128, 8, 5, 1000)) expected += std::to_string(b) + "\n";
  EXPECT_EQ(o.out, expected);
  const auto uniform = run("budgets --budget 64 --window 8 --layers 3 --tokens 1000");
  EXPECT_EQ(uniform.out, "64\n64\n64\n");
}

TEST_F(Cli, HelpAndVersion) {
  const auto help = run("--help");
  EXPECT_EQ(help.code, 0);
  for (const char* option : {"--policy", "--scores", "--attention", "--keys", "--tokens", "--kv-heads", "--window",
                             "--pool", "--kernel", "--gqa", "--h2o-normalised", "--alpha", "--signature-heads",
                             "--budget", "--sink", "--recent", "--crush", "--anchor", "--seed", "--representative",
                             "--threshold", "--per-head", "--block-size", "--out", "--counts", "--pyramid", "--layers",
                             "ISA in use", "float16", "float64", "t.float().numpy()", "Exit status"}) {
    EXPECT_NE(help.out.find(option), std::string::npos) << option;
  }
  // Every base policy is documented with the input it reads.
  for (const char* policy : {"precomputed", "h2o", "snapkv", "pyramidkv", "tova", "knorm", "full", "streaming",
                             "random", "+adakv", "+kvcrush"}) {
    EXPECT_NE(help.out.find(policy), std::string::npos) << policy;
  }
  EXPECT_EQ(run("--version").out.rfind("kvcrush ", 0), 0u);
  // The CLI is built for baseline x86-64 and names the level it chose at run
  // time: this machine's best, or KVCRUSH_ISA's.
  const char* env_isa = std::getenv("KVCRUSH_ISA");
  const std::string isa_in_use = env_isa && *env_isa ? std::string(env_isa)
                                                     : std::string(kvcrush::isa::to_string(kvcrush::isa::detected_level()));
  EXPECT_NE(run("--version").out.find("(ISA " + isa_in_use + ")"), std::string::npos) << run("--version").out;
  // COMMAND --help (or -h, anywhere): that command's options only, exit 0.
  for (const auto& [command, title] : std::vector<std::pair<std::string, std::string>>{
           {"select --help", "kvcrush select:"}, {"select --budget 3 -h", "kvcrush select:"},
           {"signatures --help", "kvcrush signatures:"}, {"budgets --help", "kvcrush budgets:"}}) {
    const auto o = run(command);
    EXPECT_EQ(o.code, 0) << command << ": " << o.err;
    EXPECT_EQ(o.out.rfind(title, 0), 0u) << command << " -> " << o.out;
    EXPECT_TRUE(o.err.empty()) << command;
  }
  EXPECT_EQ(run("budgets --help").out.find("--attention"), std::string::npos) << "only the command's own options";
}

TEST_F(Cli, OptionEqualsValueIsTheSameAsTwoWords) {
  const auto scores = write_scores("s.npy", kvcrush_test::random_floats(3 * 90, 4), {3, 90});
  ASSERT_EQ(run("select --scores " + scores + " --budget 20 --sink 2 --recent 4 --crush 0.5 --out " + path("a.npy")).code, 0);
  const auto o = run("select --scores=" + scores + " --budget=20 --sink=2 --recent=4 --crush=0.5 --out=" + path("b.npy"));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(kvcrush::io::read_npy(path("a.npy")).values<std::int64_t>(),
            kvcrush::io::read_npy(path("b.npy")).values<std::int64_t>());
  ASSERT_EQ(run("budgets --budget=64 --window=8 --layers=2 --tokens=1000").out, "64\n64\n");
}

TEST_F(Cli, Float16AndFloat64InputsAreConverted) {
  const index_t h = 3, n = 120;
  // float16: widened exactly, so the keep set is that of the same values in
  // float32.
  const auto wide = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 8, 0.0f, 4.0f);
  std::vector<kvcrush::float16> halves;
  std::vector<float> widened;
  for (float x : wide) {
    halves.push_back(kvcrush::to_float16(x));
    widened.push_back(kvcrush::to_float(halves.back()));
  }
  kvcrush::io::write_npy<kvcrush::float16>(path("h.npy"), {h, n}, halves.data());
  kvcrush::keep_config cfg;
  cfg.budget = 30;
  cfg.sink = 2;
  cfg.recent = 3;
  cfg.crush_fraction = 0.5;
  auto o = run("select --scores " + path("h.npy") + " --budget 30 --sink 2 --recent 3 --crush 0.5 --out " + path("k.npy"));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(as_longs(kvcrush::io::read_npy(path("k.npy")).values<std::int64_t>()),
            spec::keep(rows_of(widened, h, n), rows_of(widened, h, n), cfg)[0]);

  // float64: rounded to the nearest float32. Pairs of values that differ
  // only below float32's precision become ties, broken by position.
  std::vector<double> doubles(static_cast<std::size_t>(h * n));
  std::vector<float> rounded(doubles.size());
  for (std::size_t i = 0; i < doubles.size(); ++i) {
    doubles[i] = static_cast<double>(wide[i]) + (i % 2 == 0 ? 1e-12 * static_cast<double>(i) : 0.0);
    rounded[i] = static_cast<float>(doubles[i]);
  }
  doubles[10] = 2.5;
  doubles[11] = 2.5 + 1e-9;  // bigger in float64, equal in float32
  rounded[10] = rounded[11] = 2.5f;
  write_float64(path("d.npy"), doubles, {h, n});
  o = run("select --scores " + path("d.npy") + " --budget 30 --sink 2 --recent 3 --crush 0.5 --out " + path("k.npy"));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(as_longs(kvcrush::io::read_npy(path("k.npy")).values<std::int64_t>()),
            spec::keep(rows_of(rounded, h, n), rows_of(rounded, h, n), cfg)[0]);
  // Attention and keys are converted the same way.
  std::vector<double> keys(static_cast<std::size_t>(2 * 40 * 4));
  for (std::size_t i = 0; i < keys.size(); ++i) keys[i] = std::sin(static_cast<double>(i));
  write_float64(path("keys.npy"), keys, {2, 40, 4});
  EXPECT_EQ(run("select --policy knorm --keys " + path("keys.npy") + " --budget 10 --out " + path("k.npy")).code, 0);
}

TEST_F(Cli, EveryPolicyMatchesTheLibraryAndSpec) {
  const index_t hq = 8, h = 2, q = 6, n = 90, d = 4;
  const auto attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * q * n), 21, 0.0f, 1.0f);
  const auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 22, 0.0f, 1.0f);
  const auto keys = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 23);
  const auto a_file = write_scores("a.npy", attention, {hq, q, n});
  const auto s_file = write_scores("s.npy", scores, {h, n});
  kvcrush::io::write_npy<float>(path("k.npy"), {h, n, d}, keys.data());
  const std::string out = " --out " + path("keep.npy");
  auto got = [&](const std::string& arguments) {
    const auto o = run(arguments + out);
    EXPECT_EQ(o.code, 0) << arguments << ": " << o.err;
    return unpad(kvcrush::io::read_npy(path("keep.npy")));
  };
  kvcrush::keep_config cfg;
  cfg.budget = 24;
  cfg.sink = 2;
  cfg.recent = 3;
  const std::string budget = " --budget 24 --sink 2 --recent 3";

  // H2O from sums: the sums are S.
  EXPECT_EQ(got("select --policy h2o --scores " + s_file + budget), spec::keep(rows_of(scores, h, n), rows_of(scores, h, n), cfg));

  // H2O from the attention of the last Q queries, by hand: token t is seen
  // by the rows whose query is at or after it; GQA mean in head order.
  std::vector<float> sums(static_cast<std::size_t>(h * n), 0.0f), normalised(sums.size());
  std::vector<int> seen(sums.size(), 0);
  for (index_t r = 0; r < q; ++r) {
    const index_t length = n - q + r + 1;
    for (index_t k = 0; k < h; ++k)
      for (index_t t = 0; t < length; ++t) {
        float group = 0.0f;
        for (index_t g = 0; g < hq / h; ++g) group += attention[static_cast<std::size_t>(((k * (hq / h) + g) * q + r) * n + t)];
        sums[k * n + t] += group / static_cast<float>(hq / h);
        seen[k * n + t] += 1;
      }
  }
  for (std::size_t i = 0; i < sums.size(); ++i) normalised[i] = sums[i] / static_cast<float>(seen[i]);
  EXPECT_EQ(got("select --policy h2o --attention " + a_file + " --kv-heads 2" + budget + " --per-head"),
            [&] { auto c = cfg; c.per_head = true; return spec::keep(rows_of(sums, h, n), rows_of(sums, h, n), c); }());
  EXPECT_EQ(got("select --policy h2o --h2o-normalised --attention " + a_file + " --kv-heads 2" + budget),
            spec::keep(rows_of(normalised, h, n), rows_of(normalised, h, n), cfg));

  // TOVA: the last row averaged over the query heads, in head order.
  std::vector<float> tova(static_cast<std::size_t>(n), 0.0f);
  for (index_t t = 0; t < n; ++t) {
    for (index_t g = 0; g < hq; ++g) tova[t] += attention[static_cast<std::size_t>((g * q + q - 1) * n + t)];
    tova[t] /= static_cast<float>(hq);
  }
  EXPECT_EQ(got("select --policy tova --attention " + a_file + " --kv-heads 2" + budget), spec::keep({tova}, {tova}, cfg));

  // Key norm: S = -||k|| (accumulated with fma in dim order, as SPEC's
  // arithmetic order note says).
  std::vector<float> norms(static_cast<std::size_t>(h * n));
  for (index_t k = 0; k < h; ++k)
    for (index_t t = 0; t < n; ++t) {
      float squares = 0.0f;
      for (index_t j = 0; j < d; ++j) squares = std::fma(keys[(k * n + t) * d + j], keys[(k * n + t) * d + j], squares);
      norms[k * n + t] = -std::sqrt(squares);
    }
  EXPECT_EQ(got("select --policy knorm --keys " + path("k.npy") + budget), spec::keep(rows_of(norms, h, n), rows_of(norms, h, n), cfg));

  // Streaming: sink + recent, recent defaulting to the rest of the budget.
  std::vector<long> streaming = {0, 1};
  for (long t = 20 - 8; t < 20; ++t) streaming.push_back(t);
  EXPECT_EQ(got("select --policy streaming --tokens 20 --kv-heads 3 --budget 10 --sink 2"), std::vector<std::vector<long>>{streaming});
  // Full: every position, per head too.
  EXPECT_EQ(got("select --policy full --tokens 5 --kv-heads 2 --per-head"),
            (std::vector<std::vector<long>>{{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}}));

  // The library through the runtime facade, for the rest (same inputs,
  // same options): random, snapkv/pyramidkv (= today's --attention path),
  // compositions.
  kvcrush::layer_inputs by_tokens;
  by_tokens.kv_heads = 3;
  by_tokens.tokens = 50;
  auto random = kvcrush::policy_config::parse("random+kvcrush");
  random.seed = random.crush.seed = 5;
  EXPECT_EQ(got("select --policy random+kvcrush --tokens 50 --kv-heads 3 --seed 5" + budget),
            library_select(random, by_tokens, {24, 2, 3}));
  kvcrush::layer_inputs window;
  window.kv_heads = h;
  window.tokens = n;
  window.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, q, n}, {q * n, n, 1});
  auto snap = kvcrush::policy_config::parse("snapkv+kvcrush");
  snap.window.pooling = kvcrush::pooling_mode::max;
  snap.crush.heads = kvcrush::signature_heads::query;
  const auto snap_expected = library_select(snap, window, {24, 2, q});
  EXPECT_EQ(got("select --policy snapkv+kvcrush --attention " + a_file + " --kv-heads 2 --pool max --signature-heads query --budget 24 --sink 2"),
            snap_expected);
  EXPECT_EQ(got("select --policy pyramidkv+kvcrush --attention " + a_file + " --kv-heads 2 --pool max --signature-heads query --budget 24 --sink 2"),
            snap_expected);
  EXPECT_EQ(got("select --attention " + a_file + " --kv-heads 2 --pool max --signature-heads query --crush 0.5 --budget 24 --sink 2"),
            snap_expected) << "without --policy: snapkv, +kvcrush when --crush > 0";
  auto h2o_crush = kvcrush::policy_config::parse("h2o+kvcrush");
  h2o_crush.crush.fraction = 0.25;
  h2o_crush.crush.anchor = kvcrush::anchor_mode::ones;
  kvcrush::layer_inputs with_scores;
  with_scores.kv_heads = h;
  with_scores.tokens = n;
  with_scores.scores = kvcrush::make_matrix_view<const float>(scores.data(), h, n);
  h2o_crush.base = kvcrush::base_policy::precomputed;
  EXPECT_EQ(got("select --policy h2o+kvcrush --crush 0.25 --anchor ones --scores " + s_file + budget),
            library_select(h2o_crush, with_scores, {24, 2, 3}));
}

// The policies that need no attention matrix (SPEC 11): each command line
// against the library's select() on the same arrays and options, and their
// missing or conflicting inputs.
TEST_F(Cli, KeyDiffExpectedAttentionAndRkvMatchTheLibrary) {
  const index_t hq = 8, h = 2, w = 6, n = 90, d = 8, dv = 6;
  const auto attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), 41, 0.0f, 1.0f);
  const auto keys = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 42);
  const auto queries = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * d), 43);
  const auto values = kvcrush_test::random_floats(static_cast<std::size_t>(h * n * dv), 44);
  const auto a_file = write_scores("a.npy", attention, {hq, w, n});
  const auto k_file = write_scores("k.npy", keys, {h, n, d});
  const auto q_file = write_scores("q.npy", queries, {hq, w, d});
  const auto v_file = write_scores("v.npy", values, {h, n, dv});
  const std::string out = " --out " + path("keep.npy");
  auto got = [&](const std::string& arguments) {
    const auto o = run(arguments + out);
    EXPECT_EQ(o.code, 0) << arguments << ": " << o.err;
    return unpad(kvcrush::io::read_npy(path("keep.npy")));
  };
  kvcrush::layer_inputs in;
  in.kv_heads = h;
  in.tokens = n;
  in.keys.f32 = kvcrush::make_head_token_dim<const float>(keys.data(), h, n, d);
  const std::string budget = " --budget 24 --sink 2 --recent 3";
  const kvcrush::layer_budget b{24, 2, 3};

  // KeyDiff, also with +kvcrush per head and +adakv.
  EXPECT_EQ(got("select --policy keydiff --keys " + k_file + budget), library_select(kvcrush::policy_config::parse("keydiff"), in, b));
  auto kd = kvcrush::policy_config::parse("keydiff+kvcrush");
  kd.layout.per_head = true;
  kd.crush.fraction = 0.25;
  EXPECT_EQ(got("select --policy keydiff+kvcrush --crush 0.25 --per-head --keys " + k_file + budget), library_select(kd, in, b));
  EXPECT_EQ(got("select --policy keydiff+adakv --keys " + k_file + budget),
            library_select(kvcrush::policy_config::parse("keydiff+adakv"), in, b));
  // KeyDiff by hand from the score function, so that the CLI is not only
  // compared with the facade it calls.
  std::vector<float> s(static_cast<std::size_t>(h * n));
  kvcrush::keydiff_scores(in.keys.f32, kvcrush::make_matrix_view(s.data(), h, n));
  kvcrush::keep_config cfg;
  cfg.budget = 24;
  cfg.sink = 2;
  cfg.recent = 3;
  EXPECT_EQ(got("select --policy keydiff --keys " + k_file + budget), spec::keep(rows_of(s, h, n), rows_of(s, h, n), cfg));

  // Expected Attention: kvpress defaults, then every option.
  auto ea_in = in;
  ea_in.window_queries = kvcrush::strided_view<const float, 3>(queries.data(), {hq, w, d});
  ea_in.values.f32 = kvcrush::make_head_token_dim<const float>(values.data(), h, n, dv);
  EXPECT_EQ(got("select --policy expected_attention --keys " + k_file + " --queries " + q_file + " --values " + v_file + budget),
            library_select(kvcrush::policy_config::parse("expected_attention"), ea_in, b));
  auto ea = kvcrush::policy_config::parse("expected_attention+kvcrush");
  ea.expected_attention.use_vnorm = false;
  ea.expected_attention.use_covariance = false;
  ea.expected_attention.rope_interleaved = true;
  ea.expected_attention.future_positions = 16;
  ea.expected_attention.rope_theta = 500.0;
  auto no_values = ea_in;
  no_values.values = {};
  EXPECT_EQ(got("select --policy expected_attention+kvcrush --keys " + k_file + " --queries " + q_file +
                " --no-vnorm --no-covariance --rope-interleaved --future-positions 16 --rope-theta 500" + budget),
            library_select(ea, no_values, b));

  // R-KV from the window attention (default --recent: W) and from queries.
  auto rkv_in = in;
  rkv_in.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n});
  EXPECT_EQ(got("select --policy rkv --keys " + k_file + " --attention " + a_file + " --budget 24 --sink 2"),
            library_select(kvcrush::policy_config::parse("rkv"), rkv_in, {24, 2, w}));
  auto rkv = kvcrush::policy_config::parse("rkv+adakv+kvcrush");
  rkv.rkv.lambda = 0.5f;
  rkv.rkv.threshold = 0.25f;
  rkv.rkv.comparison_tokens = 0;
  rkv.window.pooling = kvcrush::pooling_mode::avg;
  rkv.window.kernel = 3;
  rkv.crush.heads = kvcrush::signature_heads::query;
  auto last_rows = in;  // --window 4: the last 4 rows
  last_rows.window_attention =
      kvcrush::strided_view<const float, 3>(attention.data() + (w - 4) * n, {hq, 4, n}, {w * n, n, 1});
  EXPECT_EQ(got("select --policy rkv+adakv+kvcrush --keys " + k_file + " --attention " + a_file +
                " --lambda 0.5 --similarity 0.25 --comparison-tokens 0 --pool avg --kernel 3 --window 4"
                " --signature-heads query" + budget),
            library_select(rkv, last_rows, b));
  auto rkv_q = in;
  rkv_q.window_queries = ea_in.window_queries;
  EXPECT_EQ(got("select --policy rkv --keys " + k_file + " --queries " + q_file + budget),
            library_select(kvcrush::policy_config::parse("rkv"), rkv_q, b));

  // Missing and conflicting inputs: exit 2, one line naming the fix.
  const std::string never = " --out " + path("never.npy");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"select --policy keydiff --attention " + a_file + " --kv-heads 2 --budget 10", "policy 'keydiff' needs --keys K.npy (H, N, D), not --attention"},
      {"select --policy expected_attention --keys " + k_file + " --values " + v_file + " --budget 10", "needs --keys K.npy (H, N, D), --queries Q.npy"},
      {"select --policy expected_attention --keys " + k_file + " --queries " + q_file + " --budget 10", "needs --values V.npy (H, N, Dv) for the value norm, or --no-vnorm"},
      {"select --policy expected_attention --keys " + k_file + " --queries " + q_file + " --values " + v_file + " --no-vnorm --budget 10", "exclude each other"},
      {"select --policy expected_attention --keys " + k_file + " --queries " + a_file + " --no-vnorm --budget 10", "--queries have head_dim 90, --keys 8"},
      {"select --policy expected_attention --keys " + k_file + " --queries " + q_file + " --values " + a_file + " --budget 10", "--values must be (2, 90, Dv)"},
      {"select --policy rkv --keys " + k_file + " --budget 10", "policy 'rkv' needs --keys K.npy (H, N, D) and --attention"},
      {"select --policy rkv --attention " + a_file + " --kv-heads 2 --budget 10", "policy 'rkv' needs --keys"},
      {"select --policy rkv --keys " + k_file + " --attention " + a_file + " --queries " + q_file + " --budget 10", "not both"},
      {"select --policy rkv --keys " + k_file + " --attention " + a_file + " --lambda 2 --budget 10", "lambda must be in [0, 1]"},
      {"select --policy rkv --keys " + k_file + " --attention " + k_file + " --budget 10", "--attention covers 8 tokens, --keys 90"},
      {"select --policy keydiff --keys " + k_file + " --lambda 0.5 --budget 10", "--lambda applies to rkv only"},
      {"select --policy knorm --keys " + k_file + " --queries " + q_file + " --budget 10", "--queries applies to expected_attention and rkv only"},
      {"select --policy rkv --keys " + k_file + " --attention " + a_file + " --no-vnorm --budget 10", "--no-vnorm applies to expected_attention only"},
  };
  for (const auto& [arguments, fragment] : cases) {
    const auto o = run(arguments + never);
    EXPECT_EQ(o.code, 2) << arguments;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << "one line: " << o.err;
    EXPECT_NE(o.err.find(fragment), std::string::npos) << arguments << " -> " << o.err;
    EXPECT_FALSE(fs::exists(path("never.npy"))) << arguments << " wrote an output";
  }
}

TEST_F(Cli, AdaKVWritesRaggedRowsPaddedWithMinusOne) {
  const index_t h = 4, n = 120;
  // Heads of different spread, so that AdaKV shares the budget unevenly.
  auto scores = kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 31, 0.0f, 1.0f);
  for (index_t t = 0; t < n; ++t) {
    scores[0 * n + t] = 0.5f + 0.001f * static_cast<float>(t % 17);
    scores[3 * n + t] = t % 40 == 0 ? 10.0f : 0.0f;
  }
  const auto file = write_scores("s.npy", scores, {h, n});
  const auto o = run("select --policy precomputed+adakv --alpha 0.3 --scores " + file +
                     " --budget 32 --sink 4 --recent 8 --out " + path("keep.npy") + " --counts " + path("counts.npy"));
  ASSERT_EQ(o.code, 0) << o.err;
  const auto keep = kvcrush::io::read_npy(path("keep.npy"));
  const auto rows = unpad(keep);
  const auto counts = kvcrush::io::read_npy(path("counts.npy"));
  ASSERT_EQ(counts.dtype, kvcrush::io::npy_dtype::int64);
  ASSERT_EQ(counts.shape, (std::vector<std::int64_t>{h}));
  const auto c = counts.values<std::int64_t>();
  ASSERT_EQ(rows.size(), static_cast<std::size_t>(h));
  std::int64_t total = 0, widest = 0;
  for (index_t k = 0; k < h; ++k) {
    ASSERT_EQ(static_cast<std::int64_t>(rows[k].size()), c[k]) << "counts match the unpadded rows";
    total += c[k];
    widest = std::max(widest, c[k]);
    // Each row: the protected tokens and the head's own top evictable ones
    // (SPEC's top-k written plainly).
    std::vector<long> expected = spec::range(0, 4);
    for (long t : spec::top_k(spec::range(4, n - 8), [&](long t) { return scores[k * n + t]; }, c[k] - 12)) expected.push_back(t);
    for (long t = n - 8; t < n; ++t) expected.push_back(t);
    EXPECT_EQ(rows[k], expected) << "head " << k;
  }
  EXPECT_EQ(keep.shape, (std::vector<std::int64_t>{h, widest}));
  EXPECT_EQ(total, h * 32) << "the layer's budget is shared out";
  // The shares, by brute force (README: a floor of alpha x the budget after
  // sink and recent per head, then the best remaining (head, token) pairs of
  // all heads, ties by (head, position)).
  const long rest = 32 - 12, floor_share = static_cast<long>(std::floor(0.3 * static_cast<double>(rest)));
  std::vector<std::pair<float, long>> remaining;  // (score, head * n + position)
  std::vector<long> shares(static_cast<std::size_t>(h), floor_share);
  for (index_t k = 0; k < h; ++k) {
    const auto top = spec::top_k(spec::range(4, n - 8), [&](long t) { return scores[k * n + t]; }, floor_share);
    for (long t = 4; t < n - 8; ++t)
      if (!std::binary_search(top.begin(), top.end(), t)) remaining.push_back({scores[k * n + t], k * n + t});
  }
  std::stable_sort(remaining.begin(), remaining.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (long i = 0; i < h * (rest - floor_share); ++i) shares[static_cast<std::size_t>(remaining[i].second / n)] += 1;
  for (index_t k = 0; k < h; ++k) EXPECT_EQ(c[k], 12 + shares[k]) << "head " << k << "'s share";
  EXPECT_NE(*std::min_element(c.begin(), c.end()), widest) << "heads got different shares, so the rows are ragged";
  // The allocation and the rows are the library's.
  kvcrush::layer_inputs in;
  in.kv_heads = h;
  in.tokens = n;
  in.scores = kvcrush::make_matrix_view<const float>(scores.data(), h, n);
  auto policy = kvcrush::policy_config::parse("precomputed+adakv");
  policy.adakv_alpha = 0.3;
  EXPECT_EQ(rows, library_select(policy, in, {32, 4, 8}));
  // snapkv+adakv+kvcrush from attention: the library's ragged rows too.
  const index_t hq = 8, w = 4;
  const auto attention = kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), 32, 0.0f, 1.0f);
  const auto a_file = write_scores("a.npy", attention, {hq, w, n});
  const auto crushed = run("select --policy snapkv+adakv+kvcrush --attention " + a_file + " --kv-heads 4 --budget 32 --sink 4 --out " + path("keep.npy"));
  ASSERT_EQ(crushed.code, 0) << crushed.err;
  kvcrush::layer_inputs window;
  window.kv_heads = h;
  window.tokens = n;
  window.window_attention = kvcrush::strided_view<const float, 3>(attention.data(), {hq, w, n}, {w * n, n, 1});
  EXPECT_EQ(unpad(kvcrush::io::read_npy(path("keep.npy"))),
            library_select(kvcrush::policy_config::parse("snapkv+adakv+kvcrush"), window, {32, 4, w}));
}

TEST_F(Cli, EveryBadInputExitsTwoWithOneLine) {
  const auto scores = write_scores("s.npy", kvcrush_test::random_floats(2 * 40, 1), {2, 40});
  auto nan = kvcrush_test::random_floats(2 * 40, 1);
  nan[17] = std::numeric_limits<float>::quiet_NaN();
  const auto nan_file = write_scores("nan.npy", nan, {2, 40});
  const auto rank3 = write_scores("r3.npy", kvcrush_test::random_floats(2 * 2 * 40, 1), {2, 2, 40});
  const auto attention = write_scores("a.npy", kvcrush_test::random_floats(4 * 3 * 40, 1, 0, 1), {4, 3, 40});
  write_scores("no_rows.npy", {}, {4, 0, 40});
  write_scores("no_tokens.npy", {}, {2, 0});
  write_scores("a_wide.npy", kvcrush_test::random_floats(4 * 3 * 2, 1, 0, 1), {4, 3, 2});
  std::vector<std::int64_t> ints(80, 1);
  kvcrush::io::write_npy<std::int64_t>(path("ints.npy"), {2, 40}, ints.data());
  { std::ofstream(path("garbage.npy")) << "not a numpy file at all"; }
  { std::ofstream(path("torch.pt"), std::ios::binary) << std::string("PK\x03\x04", 4) << "archive/data.pkl"; }
  { std::ofstream(path("legacy.pt"), std::ios::binary) << std::string("\x80\x02\x8a\x0a", 4) << "pickle"; }
  write_float64(path("huge.npy"), {1.0, 1e39, 2.0, 3.0}, {2, 2});
  const auto keys = write_scores("k.npy", kvcrush_test::random_floats(2 * 40 * 4, 1), {2, 40, 4});
  const std::string out = " --out " + path("never.npy");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "missing command"},
      {"frobnicate", "unknown command"},
      {"select --scores " + scores + " --budget 10 --wat 3" + out, "unknown option --wat"},
      {"select --scores " + scores + " --budget 10", "missing required option --out"},
      {"select --scores " + scores + out, "missing required option --budget"},
      {"select --budget 10" + out, "exactly one of --scores and --attention, or a --policy"},
      {"select --scores " + scores + " --attention " + attention + " --budget 10" + out, "exactly one of"},
      {"select --scores " + path("missing.npy") + " --budget 10" + out, "cannot open"},
      {"select --scores " + path("garbage.npy") + " --budget 10" + out, "not a .npy file"},
      {"select --scores " + path("ints.npy") + " --budget 10" + out, "must hold floating-point values (float32, float16 or float64)"},
      {"select --scores " + path("torch.pt") + " --budget 10" + out, "zip archive (torch.save or numpy.savez), not a .npy file; save the tensor with numpy.save('" + path("torch.npy") + "', t.float().numpy())"},
      {"select --scores " + path("legacy.pt") + " --budget 10" + out, "Python pickle (torch.save's legacy format), not a .npy file; save the tensor with numpy.save("},
      {"select --scores " + path("huge.npy") + " --budget 10" + out, "beyond float32's range"},
      {"select --scores " + scores + " --budget 0" + out, "--budget 0 keeps no token"},
      {"select --scores " + scores + " --budget -3" + out, "--budget -3 keeps no token"},
      {"select --policy tova --tokens 40 --budget 0" + out, "needs --attention"},
      {"select --policy snapkv+magic --scores " + scores + " --budget 10" + out, "unknown policy modifier 'magic'"},
      {"select --policy lru --scores " + scores + " --budget 10" + out, "unknown policy 'lru'"},
      {"select --policy full+kvcrush --tokens 10" + out, "takes no modifiers"},
      {"select --policy snapkv --scores " + scores + " --budget 10" + out, "policy 'snapkv' needs --attention A.npy (Hq, W, N): the window's attention, not --scores"},
      {"select --policy tova --keys " + keys + " --budget 10" + out, "policy 'tova' needs --attention"},
      {"select --policy knorm --scores " + scores + " --budget 10" + out, "policy 'knorm' needs --keys K.npy (H, N, D), not --scores"},
      {"select --policy precomputed --attention " + attention + " --kv-heads 2 --budget 10" + out, "needs --scores"},
      {"select --policy random --scores " + scores + " --budget 10" + out, "reads no input; give --tokens N"},
      {"select --policy streaming --budget 10" + out, "missing required option --tokens"},
      {"select --policy random --tokens 0 --budget 10" + out, "--tokens must be >= 1"},
      {"select --policy h2o --scores " + scores + " --keys " + keys + " --budget 10" + out, "exactly one of --scores, --attention and --keys"},
      {"select --policy knorm --keys " + scores + " --budget 10" + out, "--keys must have 3 dimensions"},
      {"select --policy full --tokens 10 --budget 10" + out, "does not apply to policy 'full'"},
      {"select --policy snapkv --attention " + attention + " --kv-heads 2 --budget 10 --alpha 0.1" + out, "--alpha applies to +adakv policies only"},
      {"select --policy adakv --attention " + attention + " --kv-heads 2 --budget 10 --alpha 2" + out, "--alpha must be in [0, 1]"},
      {"select --policy snapkv --attention " + attention + " --kv-heads 2 --budget 10 --crush 0.5" + out, "--crush applies to +kvcrush policies only (policy 'snapkv')"},
      {"select --policy tova --attention " + attention + " --kv-heads 2 --budget 10 --window 2" + out, "--window applies to snapkv, pyramidkv and rkv only"},
      {"select --policy tova --attention " + attention + " --kv-heads 2 --budget 10 --gqa max" + out, "does not apply to tova"},
      {"select --policy h2o --scores " + scores + " --budget 10 --h2o-normalised" + out, "--h2o-normalised applies to --attention only"},
      {"select --policy snapkv --attention " + attention + " --kv-heads 2 --budget 10 --h2o-normalised" + out, "applies to h2o only"},
      {"select --policy h2o --attention " + path("a_wide.npy") + " --kv-heads 2 --budget 3" + out, "h2o reads the causal attention of the last Q <= N queries"},
      {"select --policy random --tokens 40 --scores " + scores + " --budget 10" + out, "reads no input; give --tokens N (and --kv-heads H), not --scores"},
      {"select --policy knorm --keys " + keys + " --tokens 40 --budget 10" + out, "--tokens applies to policies that read no input"},
      {"select --scores " + scores + " --budget 10 --counts " + path("never.npy") + out, "--counts applies to per-head output"},
      {"select --scores " + scores + " --budget=10 --per-head=yes" + out, "option --per-head takes no value"},
      {"select --scores " + scores + " --budget=" + out, "--budget expects an integer, got ''"},
      {"select --scores " + scores + " --budget 10 --block-size 0" + out, "--block-size must be >= 1"},
      {"select --policy random --tokens 10 --kv-heads 0 --budget 4" + out, "--kv-heads must be >= 1"},
      {"select --policy tova --attention " + path("no_rows.npy") + " --kv-heads 2 --budget 4" + out, "--attention holds no query rows"},
      {"select --scores " + path("no_tokens.npy") + " --budget 4" + out, "--scores holds no tokens"},
      {"select --scores " + scores + " --budget 10 positional" + out, "unexpected argument 'positional'"},
      {"select --policy streaming+kvcrush --tokens 40 --budget 10 --sink 2 --recent 2 --crush 0.5" + out, "StreamingLLM ranks no tokens"},
      {"select --scores " + rank3 + " --budget 10" + out, "must have 2 dimensions"},
      {"select --scores " + nan_file + " --budget 10" + out, "NaN"},
      {"select --scores " + scores + " --budget 4 --sink 3 --recent 3" + out, "below sink + recent"},
      {"select --scores " + scores + " --budget 10 --crush 1.5" + out, "crush_fraction"},
      {"select --scores " + scores + " --budget 10 --crush abc" + out, "expects a number"},
      {"select --scores " + scores + " --budget 10 --crush -0.5" + out, "crush_fraction must be in [0, 1]"},
      {"select --scores " + scores + " --budget 10 --crush-split sometimes" + out, "unknown crush split 'sometimes' (expected one of: fixed, adaptive)"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive --crush-mass 0" + out, "--crush-mass must be in (0, 1], got 0"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive --crush-mass 1.5" + out, "--crush-mass must be in (0, 1]"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive --crush-mass nan" + out, "--crush-mass must be in (0, 1]"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive --crush-mass x" + out, "--crush-mass expects a number"},
      {"select --scores " + scores + " --budget 10 --crush 0.5 --crush-mass 0.5" + out, "--crush-mass applies to --crush-split adaptive only"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive --crush 0.5" + out, "--crush applies to --crush-split fixed"},
      {"select --policy snapkv --attention " + attention + " --kv-heads 2 --budget 10 --crush-split adaptive" + out, "--crush-split applies to +kvcrush policies only"},
      {"select --policy knorm+kvcrush --keys " + keys + " --budget 10 --crush-split adaptive" + out, "policy 'knorm' scores are signed"},
      {"select --scores " + scores + " --budget 10 --crush-split adaptive" + out, "needs non-negative importance scores"},
      {"select --scores " + scores + " --budget 10x" + out, "expects an integer"},
      {"select --scores " + scores + " --budget 10 --budget 12" + out, "given twice"},
      {"select --scores " + scores + " --budget" , "needs a value"},
      {"select --scores " + scores + " --budget 10 --anchor middle" + out, "unknown anchor 'middle'"},
      {"select --scores " + scores + " --budget 10 --representative any" + out, "unknown representative rule"},
      {"select --scores " + scores + " --budget 10 --threshold mode" + out, "unknown threshold mode"},
      {"select --scores " + scores + " --budget 10 --block-size 4" + out, "multiples of the block size"},
      {"select --scores " + scores + " --budget 10 --kv-heads 2" + out, "--kv-heads applies to --attention only (the heads of --scores"},
      {"select --scores " + scores + " --budget 10 --signature-heads query" + out, "applies to --attention only"},
      {"select --attention " + attention + " --budget 10" + out, "missing required option --kv-heads"},
      {"select --attention " + attention + " --kv-heads 3 --budget 10" + out, "must divide"},
      {"select --attention " + attention + " --kv-heads 2 --window 9 --budget 10" + out, "--window 9 must be in"},
      {"select --attention " + attention + " --kv-heads 2 --kernel 4 --budget 10" + out, "odd"},
      {"select --attention " + attention + " --kv-heads 2 --pool median --budget 10" + out, "unknown pooling"},
      {"select --attention " + attention + " --kv-heads 2 --gqa avg --budget 10" + out, "unknown GQA reduction"},
      {"select --attention " + scores + " --kv-heads 2 --budget 10" + out, "must have 3 dimensions"},
      {"select --scores " + scores + " --budget 10 --out /nonexistent/dir/k.npy", "cannot open file for writing"},
      {"signatures --scores " + scores + " --threshold top" + out, "unknown threshold mode"},
      {"signatures --scores " + scores + " --sink -1" + out, "must be >= 0"},
      {"signatures --scores " + scores, "missing required option --out"},
      {"budgets --pyramid --budget 8 --window 8 --layers 4 --tokens 100", "must exceed the window"},
      {"budgets --pyramid --budget 64 --window 8 --layers 0 --tokens 100", "at least one layer"},
      {"budgets --budget 64 --window 8 --layers 2", "missing required option --tokens"},
      {"budgets --budget 0 --window 0 --layers 2 --tokens 100", "--budget 0 keeps no token"},
  };
  for (const auto& [arguments, fragment] : cases) {
    const auto o = run(arguments);
    EXPECT_EQ(o.code, 2) << arguments;
    EXPECT_EQ(o.err.rfind("kvcrush: error: ", 0), 0u) << arguments << " -> " << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << "one line: " << o.err;
    EXPECT_NE(o.err.find(fragment), std::string::npos) << arguments << " -> " << o.err;
    EXPECT_TRUE(o.out.empty()) << arguments;
    EXPECT_FALSE(fs::exists(path("never.npy"))) << arguments << " wrote an output";
  }
}

// The README's CLI commands, as printed there, on inputs of the shapes they
// name (H 8, Hq 32, W 32, N 600): each must succeed and write its output.
TEST_F(Cli, ReadmeCommandsRun) {
  std::ifstream readme(KVCRUSH_README_PATH);
  ASSERT_TRUE(readme) << KVCRUSH_README_PATH;
  std::stringstream text;
  text << readme.rdbuf();
  const std::string all = text.str();
  const auto begin = all.find("<!-- readme-example:cli -->");
  ASSERT_NE(begin, std::string::npos) << "README.md lacks the <!-- readme-example:cli --> block";
  const auto end = all.find("<!-- /readme-example:cli -->", begin);
  std::istringstream block(all.substr(begin, end - begin));
  std::vector<std::string> commands;
  std::string line, pending;
  while (std::getline(block, line)) {
    if (pending.empty() && line.rfind("kvcrush ", 0) != 0) continue;
    const auto comment = line.find("  #");
    if (comment != std::string::npos) line = line.substr(0, comment);
    const bool continued = !line.empty() && line.back() == '\\';
    pending += continued ? line.substr(0, line.size() - 1) : line;
    if (!continued) {
      commands.push_back(pending.substr(std::string("kvcrush ").size()));
      pending.clear();
    }
  }
  ASSERT_GE(commands.size(), 7u);
  const index_t h = 8, hq = 32, w = 32, n = 600, d = 16;
  write_scores("S.npy", kvcrush_test::random_floats(static_cast<std::size_t>(h * n), 41, 0.0f, 1.0f), {h, n});
  write_scores("A.npy", kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * n), 42, 0.0f, 1.0f), {hq, w, n});
  write_scores("K.npy", kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 43), {h, n, d});
  write_scores("Q.npy", kvcrush_test::random_floats(static_cast<std::size_t>(hq * w * d), 44), {hq, w, d});
  write_scores("V.npy", kvcrush_test::random_floats(static_cast<std::size_t>(h * n * d), 45), {h, n, d});
  for (const auto& command : commands) {
    // Relative file names are the README's: run from the test's folder.
    std::string local = command;
    for (const char* name : {"S.npy", "A.npy", "K.npy", "Q.npy", "V.npy", "keep.npy", "counts.npy", "sig.npy"}) {
      for (auto at = local.find(std::string(" ") + name); at != std::string::npos;
           at = local.find(std::string(" ") + name, at + 1)) {
        local.replace(at + 1, std::string(name).size(), path(name));
      }
    }
    fs::remove(path("keep.npy"));
    const auto o = run(local);
    EXPECT_EQ(o.code, 0) << command << ": " << o.err;
    EXPECT_TRUE(o.err.empty()) << command;
    if (command.find("--out keep.npy") != std::string::npos) {
      EXPECT_TRUE(fs::exists(path("keep.npy"))) << command;
    }
  }
}

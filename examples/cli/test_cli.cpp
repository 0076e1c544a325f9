// The kvcrush executable end to end: real .npy files in, real .npy files
// out, compared with the library and with SPEC written plainly; and every
// bad input exits 2 with one line on stderr and writes nothing.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

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
  for (const char* option : {"--scores", "--attention", "--kv-heads", "--window", "--pool", "--kernel", "--gqa",
                             "--signature-heads", "--budget", "--sink", "--recent", "--crush", "--anchor", "--seed",
                             "--representative", "--threshold", "--per-head", "--block-size", "--out", "--pyramid",
                             "--layers", "--tokens", "ISA in use"}) {
    EXPECT_NE(help.out.find(option), std::string::npos) << option;
  }
  EXPECT_EQ(run("--version").out.rfind("kvcrush ", 0), 0u);
}

TEST_F(Cli, EveryBadInputExitsTwoWithOneLine) {
  const auto scores = write_scores("s.npy", kvcrush_test::random_floats(2 * 40, 1), {2, 40});
  auto nan = kvcrush_test::random_floats(2 * 40, 1);
  nan[17] = std::numeric_limits<float>::quiet_NaN();
  const auto nan_file = write_scores("nan.npy", nan, {2, 40});
  const auto rank3 = write_scores("r3.npy", kvcrush_test::random_floats(2 * 2 * 40, 1), {2, 2, 40});
  const auto attention = write_scores("a.npy", kvcrush_test::random_floats(4 * 3 * 40, 1, 0, 1), {4, 3, 40});
  std::vector<std::int64_t> ints(80, 1);
  kvcrush::io::write_npy<std::int64_t>(path("ints.npy"), {2, 40}, ints.data());
  { std::ofstream(path("garbage.npy")) << "not a numpy file at all"; }
  const std::string out = " --out " + path("never.npy");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "missing command"},
      {"frobnicate", "unknown command"},
      {"select --scores " + scores + " --budget 10 --wat 3" + out, "unknown option --wat"},
      {"select --scores " + scores + " --budget 10", "missing required option --out"},
      {"select --scores " + scores + out, "missing required option --budget"},
      {"select --budget 10" + out, "exactly one of --scores and --attention"},
      {"select --scores " + scores + " --attention " + attention + " --budget 10" + out, "exactly one of"},
      {"select --scores " + path("missing.npy") + " --budget 10" + out, "cannot open"},
      {"select --scores " + path("garbage.npy") + " --budget 10" + out, "not a .npy file"},
      {"select --scores " + path("ints.npy") + " --budget 10" + out, "must be float32"},
      {"select --scores " + rank3 + " --budget 10" + out, "must have 2 dimensions"},
      {"select --scores " + nan_file + " --budget 10" + out, "NaN"},
      {"select --scores " + scores + " --budget 4 --sink 3 --recent 3" + out, "below sink + recent"},
      {"select --scores " + scores + " --budget 10 --crush 1.5" + out, "crush_fraction"},
      {"select --scores " + scores + " --budget 10 --crush abc" + out, "expects a number"},
      {"select --scores " + scores + " --budget 10x" + out, "expects an integer"},
      {"select --scores " + scores + " --budget 10 --budget 12" + out, "given twice"},
      {"select --scores " + scores + " --budget" , "needs a value"},
      {"select --scores " + scores + " --budget 10 --anchor middle" + out, "unknown anchor 'middle'"},
      {"select --scores " + scores + " --budget 10 --representative any" + out, "unknown representative rule"},
      {"select --scores " + scores + " --budget 10 --threshold mode" + out, "unknown threshold mode"},
      {"select --scores " + scores + " --budget 10 --block-size 4" + out, "multiples of the block size"},
      {"select --scores " + scores + " --budget 10 --kv-heads 2" + out, "--kv-heads applies to --attention only"},
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

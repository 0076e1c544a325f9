// kvcrush: try every eviction policy on NumPy/PyTorch dumps.
//
//   kvcrush select ...      keep sets from scores or window attention
//   kvcrush signatures ...  KVCrush head-behaviour signatures
//   kvcrush budgets ...     PyramidKV layer budgets
//
// Exit codes: 0 on success, 2 on bad input or usage (one line on stderr).
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "arguments.hpp"
#include "kvcrush/kvcrush.hpp"

namespace {

using kvcrush::index_t;
using kvcrush_cli::arguments;
using kvcrush_cli::cli_error;

const char* const usage_text = R"(kvcrush - choose which tokens of an LLM's KV cache to keep

usage:
  kvcrush select (--scores S.npy | --attention A.npy --kv-heads H [--window W]
                  [--pool avg|max] [--kernel K] [--gqa mean|max|sum]
                  [--signature-heads kv|query])
                 --budget B [--sink S] [--recent R]
                 [--crush F] [--anchor mean|inv_mean|zeros|ones|alternating|random] [--seed N]
                 [--representative bucket_center|bucket_start|linspace|stride]
                 [--threshold median|mean] [--per-head] [--block-size b]
                 --out keep.npy
  kvcrush signatures --scores S.npy [--sink S] [--recent R] [--threshold median|mean] --out sig.npy
  kvcrush budgets [--pyramid] --budget B --window W --layers L --tokens N [--beta 20]
  kvcrush --help | --version

select
  --scores S.npy      float32 (H, N): per-KV-head scores, used as S directly.
  --attention A.npy   float32 (Hq, W, N): attention probabilities of the last W queries,
                      turned into S as SnapKV does (sum over the window, pooling, GQA
                      reduction); needs --kv-heads. --window uses only the last W rows
                      (default: all). --recent then defaults to W.
  --pool, --kernel    pooling along tokens (default avg, kernel 7, odd).
  --gqa               reduction of each KV head's query heads (default mean).
  --signature-heads   KVCrush bits from the KV heads (kv, default) or from the Hq pooled
                      query heads (query; --attention only).
  --budget B          tokens kept per KV head, sink and recent included.
  --sink S, --recent R  always-kept first and last tokens (default 0).
  --crush F           share of the unprotected budget kept as KVCrush representatives,
                      in [0, 1] (default 0: importance only).
  --anchor, --seed, --representative, --threshold
                      KVCrush options (defaults: mean, 0, bucket_center, median).
  --per-head          one keep set per KV head.
  --block-size b      keep whole blocks of b tokens (paged caches); S, R, B multiples of b.
  --out keep.npy      int64 positions: (B,), or (H, B) with --per-head, or the kept block
                      indices with --block-size. With N <= B everything is kept.

signatures
  Writes uint64 (|E|, ceil(H/64)): the signature of every evictable token in order
  (E = [sink, N - recent)); bit h of word h/64 is set when the token is in head h's
  top half (--threshold median) or above its mean (--threshold mean).

budgets
  Prints one budget per layer, one per line: PyramidKV's (--pyramid, beta 20 as in
  KVCache-Factory) or uniform.

Selection semantics: docs/SEMANTICS.md (exact, deterministic, ties broken by position).
)";

void write_positions(const std::string& path, const std::vector<index_t>& data, std::vector<std::int64_t> shape) {
  kvcrush::io::write_npy<std::int64_t>(path, shape, reinterpret_cast<const std::int64_t*>(data.data()));
}

kvcrush::io::npy_array read_float_matrix(const std::string& path, std::size_t rank, const char* what) {
  auto array = kvcrush::io::read_npy(path);
  if (array.dtype != kvcrush::io::npy_dtype::float32) {
    throw cli_error(std::string(what) + " must be float32, " + path + " holds " + kvcrush::io::to_string(array.dtype));
  }
  if (array.shape.size() != rank) {
    throw cli_error(std::string(what) + " must have " + std::to_string(rank) + " dimensions, " + path + " has " +
                    std::to_string(array.shape.size()));
  }
  return array;
}

int run_select(int argc, char** argv) {
  const arguments args(argc, argv, 2,
                       {"scores", "attention", "kv-heads", "window", "pool", "kernel", "gqa", "signature-heads",
                        "budget", "sink", "recent", "crush", "anchor", "seed", "representative", "threshold",
                        "block-size", "out"},
                       {"per-head"});
  if (args.has("scores") == args.has("attention")) throw cli_error("give exactly one of --scores and --attention");
  const std::string out_path = args.text("out");
  kvcrush::workspace ws;

  kvcrush::keep_config cfg;
  cfg.budget = args.integer("budget");
  cfg.sink = args.integer("sink", 0);
  cfg.crush_fraction = args.real("crush", 0.0);
  cfg.anchor = kvcrush::parse_anchor_mode(args.text("anchor", "mean"));
  cfg.seed = static_cast<std::uint64_t>(args.integer("seed", 0));
  cfg.representative = kvcrush::parse_representative_rule(args.text("representative", "bucket_center"));
  cfg.threshold = kvcrush::parse_threshold_mode(args.text("threshold", "median"));
  cfg.per_head = args.has("per-head");
  cfg.block_size = args.integer("block-size", 1);

  std::vector<float> scores, query_scores;
  index_t heads = 0, tokens = 0, query_heads = 0;
  kvcrush::io::npy_array input;
  if (args.has("scores")) {
    for (const char* option : {"kv-heads", "window", "pool", "kernel", "gqa", "signature-heads"}) {
      if (args.has(option)) throw cli_error(std::string("--") + option + " applies to --attention only");
    }
    input = read_float_matrix(args.text("scores"), 2, "--scores");
    heads = input.shape[0];
    tokens = input.shape[1];
    scores = input.values<float>();
    cfg.recent = args.integer("recent", 0);
  } else {
    input = read_float_matrix(args.text("attention"), 3, "--attention");
    query_heads = input.shape[0];
    const index_t rows = input.shape[1];
    tokens = input.shape[2];
    heads = args.integer("kv-heads");
    if (heads < 1 || query_heads % heads != 0) {
      throw cli_error("--kv-heads " + std::to_string(heads) + " must divide the " + std::to_string(query_heads) +
                      " query heads of the attention");
    }
    const index_t window = args.integer("window", rows);
    if (window < 1 || window > rows) {
      throw cli_error("--window " + std::to_string(window) + " must be in [1, " + std::to_string(rows) + "]");
    }
    kvcrush::window_options opt;
    opt.pooling = kvcrush::parse_pooling_mode(args.text("pool", "avg"));
    opt.kernel = args.integer("kernel", 7);
    opt.gqa = kvcrush::parse_gqa_reduction(args.text("gqa", "mean"));
    const auto attention = input.values<float>();
    // The last `window` query rows of each head.
    const kvcrush::strided_view<const float, 3> view(attention.data() + (rows - window) * tokens,
                                                     {query_heads, window, tokens}, {rows * tokens, tokens, 1});
    scores.resize(static_cast<std::size_t>(heads * tokens));
    query_scores.resize(static_cast<std::size_t>(query_heads * tokens));
    kvcrush::window_scores(view, opt, kvcrush::make_matrix_view(scores.data(), heads, tokens), ws,
                           kvcrush::make_matrix_view(query_scores.data(), query_heads, tokens));
    cfg.recent = args.integer("recent", window);
  }
  kvcrush::matrix_view<const float> signature_rows;
  const auto signature_choice = kvcrush::parse_signature_heads(args.text("signature-heads", "kv"));
  if (signature_choice == kvcrush::signature_heads::query) {
    signature_rows = kvcrush::make_matrix_view<const float>(query_scores.data(), query_heads, tokens);
  }
  kvcrush::validate(cfg);
  const index_t rows = cfg.per_head ? heads : 1;
  const index_t count = kvcrush::keep_count(cfg, tokens);
  std::vector<index_t> keep(static_cast<std::size_t>(rows * count));
  kvcrush::select_keep(kvcrush::make_matrix_view<const float>(scores.data(), heads, tokens), cfg,
                       kvcrush::make_matrix_view(keep.data(), rows, count), ws, signature_rows);
  if (cfg.per_head) {
    write_positions(out_path, keep, {rows, count});
  } else {
    write_positions(out_path, keep, {count});
  }
  return 0;
}

int run_signatures(int argc, char** argv) {
  const arguments args(argc, argv, 2, {"scores", "sink", "recent", "threshold", "out"}, {});
  const auto input = read_float_matrix(args.text("scores"), 2, "--scores");
  const index_t heads = input.shape[0], tokens = input.shape[1];
  const index_t sink = args.integer("sink", 0), recent = args.integer("recent", 0);
  if (sink < 0 || recent < 0) throw cli_error("--sink and --recent must be >= 0");
  const index_t begin = std::min(sink, tokens);
  const index_t end = std::max(begin, tokens - recent);
  const auto mode = kvcrush::parse_threshold_mode(args.text("threshold", "median"));
  const std::string out_path = args.text("out");
  const auto scores = input.values<float>();
  const index_t words = kvcrush::signature_words(heads);
  std::vector<std::uint64_t> sig(static_cast<std::size_t>((end - begin) * words));
  kvcrush::workspace ws;
  kvcrush::compute_signatures(kvcrush::make_matrix_view(scores.data(), heads, tokens), begin, end, mode,
                              kvcrush::make_matrix_view(sig.data(), end - begin, words), ws);
  kvcrush::io::write_npy<std::uint64_t>(out_path, {end - begin, words}, sig.data());
  return 0;
}

int run_budgets(int argc, char** argv) {
  const arguments args(argc, argv, 2, {"budget", "window", "layers", "tokens", "beta"}, {"pyramid"});
  const index_t budget = args.integer("budget"), window = args.integer("window");
  const index_t layers = args.integer("layers"), tokens = args.integer("tokens");
  const auto budgets = args.has("pyramid")
                           ? kvcrush::pyramid_budgets(budget, window, layers, tokens, args.integer("beta", 20))
                           : kvcrush::uniform_budgets(budget, layers);
  for (index_t b : budgets) std::printf("%td\n", b);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw cli_error("missing command (select, signatures or budgets); see kvcrush --help");
    const std::string command = argv[1];
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << usage_text << "\nkvcrush " << kvcrush::version_string << ", ISA in use: " << kvcrush::isa::name()
                << "\n";
      return 0;
    }
    if (command == "--version") {
      std::cout << "kvcrush " << kvcrush::version_string << " (" << kvcrush::isa::name() << ")\n";
      return 0;
    }
    if (command == "select") return run_select(argc, argv);
    if (command == "signatures") return run_signatures(argc, argv);
    if (command == "budgets") return run_budgets(argc, argv);
    throw cli_error("unknown command '" + command + "' (expected select, signatures or budgets)");
  } catch (const std::exception& error) {
    std::string message = error.what();
    if (message.rfind("kvcrush: ", 0) == 0) message = message.substr(9);
    for (char& c : message) {
      if (c == '\n') c = ' ';
    }
    std::cerr << "kvcrush: error: " << message << "\n";
    return 2;
  }
}

// kvcrush: try every eviction policy on NumPy/PyTorch dumps.
//
//   kvcrush select ...      keep sets of any policy from scores, attention or keys
//   kvcrush signatures ...  KVCrush head-behaviour signatures
//   kvcrush budgets ...     PyramidKV layer budgets
//
// Exit codes (the same in every kvcrush tool): 0 on success, 2 on bad usage
// or input (one line "kvcrush: error: ..." on stderr), 1 on an internal
// failure.
#include <algorithm>
#include <cstdio>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "arguments.hpp"
#include "inputs.hpp"
#include "kvcrush/dispatch/dispatch.hpp"
#include "kvcrush/kvcrush.hpp"

namespace {

using kvcrush::index_t;
using kvcrush_cli::arguments;
using kvcrush_cli::cli_error;

const char* const overview_text = R"(kvcrush - choose which tokens of an LLM's KV cache to keep

usage:
  kvcrush select [--policy P] (--scores S.npy | --attention A.npy | --keys K.npy | --tokens N)
                 --budget B [options] --out keep.npy
  kvcrush signatures --scores S.npy [--sink S] [--recent R] [--threshold median|mean] --out sig.npy
  kvcrush budgets [--pyramid] --budget B --window W --layers L --tokens N [--beta 20]
  kvcrush COMMAND --help      the options of one command
  kvcrush --help | --version

Options take a value as "--name value" or "--name=value". Inputs are .npy files of float32,
float16 (widened exactly) or float64 (rounded to the nearest float32, ties to even; values
that differ only beyond float32's precision become ties, broken by position; finite values
beyond float32's range are refused). A PyTorch tensor t: numpy.save('A.npy', t.float().numpy()).

Exit status: 0 success, 2 bad usage or input, a file that cannot be read or written
included (one line "kvcrush: error: ..." on stderr, no output written), 1 internal failure.
Selection semantics: docs/SEMANTICS.md (exact, deterministic, ties broken by position).
)";

const char* const select_text = R"(kvcrush select: keep sets of one layer

usage:
  kvcrush select [--policy P] INPUT --budget B [--sink S] [--recent R] [--per-head]
                 [--block-size b] [--out keep.npy] [--counts counts.npy] [policy options]

--policy P            a policy string as policy_config::parse reads it: a base policy
                      (full streaming random h2o snapkv pyramidkv tova knorm precomputed keydiff
                      expected_attention rkv), optionally followed by +adakv and/or +kvcrush,
                      e.g. snapkv+adakv+kvcrush, h2o+kvcrush, keydiff+kvcrush, rkv+adakv; "adakv" alone is snapkv+adakv. Without --policy: precomputed
                      with --scores, snapkv with --attention, +kvcrush when --crush > 0.
INPUT, by policy (exactly one):
  precomputed         --scores S.npy (H, N): per-KV-head scores, used as S directly.
  h2o                 --scores S.npy (H, N): accumulated attention sums, used as S; or
                      --attention A.npy (Hq, Q, N) with --kv-heads H: the causal attention of the
                      last Q queries (Q <= N, row r is the query at position N-Q+r; Q = N is the
                      whole prefill), accumulated as H2O does (tokens 0..N-Q are in the cache
                      before row 0, token N-Q+r enters with row r; GQA reduction --gqa).
                      --h2o-normalised divides each sum by the number of rows that saw the
                      token (OpenVINO's NORM_SUM; --attention only).
  snapkv, pyramidkv   --attention A.npy (Hq, W, N) with --kv-heads H: attention probabilities of
                      the last W queries, turned into S as SnapKV does (sum over the window,
                      pooling, GQA reduction). --window uses only the last W rows (default: all);
                      --recent then defaults to W. pyramidkv is snapkv on one layer: its
                      per-layer budgets come from "kvcrush budgets --pyramid".
  tova                --attention A.npy (Hq, Q, N) with --kv-heads H: the last row (the newest
                      query) averaged over the query heads.
  knorm               --keys K.npy (H, N, D): the layer's keys; S = -||k||.
  keydiff             --keys K.npy (H, N, D): S = minus each key's cosine similarity to the mean
                      unit key of its head (KeyDiff, SPEC 11.1).
  expected_attention  --keys K.npy (H, N, D) --queries Q.npy (Hq, W, D) --values V.npy (H, N, Dv):
                      the attention the next queries are expected to pay, from the statistics
                      of the last W queries (pre-RoPE when --future-positions > 0), times the
                      value norm (Expected Attention, SPEC 11.2). --no-vnorm: no --values.
                      --future-positions F (default 512; 0: no RoPE averaging), --rope-theta T
                      (10000), --rope-interleaved (pairs (2i, 2i+1)), --no-covariance.
  rkv                 --keys K.npy (H, N, D) and --attention A.npy (Hq, W, N) (or --queries
                      Q.npy (Hq, W, D)): R-KV, importance from the window attention (SnapKV's
                      sums, max-pooled by default, divided by W) combined with the redundancy of
                      the keys in [sink, N - recent) (SPEC 11.3). --lambda L (0.07),
                      --similarity S (0.5), --comparison-tokens R (256; 0 compares all pairs).
  full, streaming, random
                      read no input: --tokens N [--kv-heads H] (default H 1). full keeps every
                      token and takes no --budget; streaming keeps sink + recent (--recent
                      defaults to B - S); random uses --seed.
--budget B            tokens kept per KV head (per layer with +adakv: heads share H x B), sink
                      and recent included; at least 1. With N <= B everything is kept.
--sink S, --recent R  always-kept first and last tokens (default 0).
--per-head            one keep set per KV head (always with +adakv).
--block-size b        keep whole blocks of b tokens (paged caches); S, R, B multiples of b.
--kv-heads H          KV heads (H) for --attention (must divide Hq) and input-free policies.
--window W, --pool avg|max, --kernel K
                      snapkv/pyramidkv/rkv: rows used, pooling along tokens (default avg, rkv max;
                      kernel 7, odd).
--gqa mean|max|sum    reduction of each KV head's query heads (snapkv, pyramidkv, h2o;
                      default mean).
--alpha A             +adakv: each head's floor, a share of its budget after sink and recent
                      (default 0.2).
--crush F             +kvcrush: share of the unprotected budget kept as KVCrush
                      representatives, in [0, 1] (default 0.5; without --policy default 0).
--crush-split fixed|adaptive
                      +kvcrush: fixed (default) gives --crush of the unprotected budget to
                      KVCrush; adaptive lets the importance policy keep the fewest evictable
                      tokens covering --crush-mass of their (non-negative) score mass, within
                      the budget, and gives the rest to KVCrush, per layer and head row.
--crush-mass M        adaptive split: the mass share to cover, in (0, 1] (default 0.9).
--anchor mean|inv_mean|zeros|ones|alternating|random, --representative
bucket_center|bucket_start|linspace|stride, --threshold median|mean
                      KVCrush options (defaults: mean, bucket_center, median).
--signature-heads kv|query
                      KVCrush bits from the KV heads (kv, default) or from the Hq query heads
                      (query; --attention with snapkv, pyramidkv or tova).
--seed N              random policy and random anchor (default 0).
--out keep.npy        int64 positions (block indices with --block-size), sorted: shape (K,)
                      for a shared keep set; (H, K) with --per-head. AdaKV heads keep different
                      numbers of tokens: (H, max count), each row padded at the end with -1; a
                      row's count is its number of entries >= 0.
--counts counts.npy   per-head output: also write each row's number of entries, int64 (H,).
)";

const char* const signatures_text = R"(kvcrush signatures: KVCrush head-behaviour signatures

usage:
  kvcrush signatures --scores S.npy [--sink S] [--recent R] [--threshold median|mean] --out sig.npy

Writes uint64 (|E|, ceil(H/64)): the signature of every evictable token in order
(E = [sink, N - recent)); bit h of word h/64 is set when the token is in head h's
top half (--threshold median) or above its mean (--threshold mean).
)";

const char* const budgets_text = R"(kvcrush budgets: per-layer budgets

usage:
  kvcrush budgets [--pyramid] --budget B --window W --layers L --tokens N [--beta 20]

Prints one budget per layer, one per line: PyramidKV's (--pyramid, beta 20 as in
KVCache-Factory) or uniform.
)";

// The input a base policy reads (see select_text).
enum class input_kind { none, scores, attention, keys };

bool reads_keys_first(kvcrush::base_policy base) {
  return base == kvcrush::base_policy::keydiff || base == kvcrush::base_policy::expected_attention ||
         base == kvcrush::base_policy::rkv;
}

std::vector<input_kind> inputs_of(kvcrush::base_policy base) {
  using kvcrush::base_policy;
  switch (base) {
    case base_policy::full:
    case base_policy::streaming:
    case base_policy::random: return {input_kind::none};
    case base_policy::precomputed: return {input_kind::scores};
    case base_policy::h2o: return {input_kind::scores, input_kind::attention};
    case base_policy::snapkv:
    case base_policy::pyramidkv:
    case base_policy::tova: return {input_kind::attention};
    case base_policy::knorm:
    case base_policy::keydiff:
    case base_policy::expected_attention:
    case base_policy::rkv: return {input_kind::keys};
  }
  return {};
}

const char* needs_text(kvcrush::base_policy base) {
  using kvcrush::base_policy;
  switch (base) {
    case base_policy::full:
    case base_policy::streaming:
    case base_policy::random: return "reads no input; give --tokens N (and --kv-heads H)";
    case base_policy::precomputed: return "needs --scores S.npy (H, N)";
    case base_policy::h2o: return "needs --scores S.npy (H, N) holding accumulated sums, or --attention A.npy (Hq, Q, N)";
    case base_policy::snapkv:
    case base_policy::pyramidkv: return "needs --attention A.npy (Hq, W, N): the window's attention";
    case base_policy::tova: return "needs --attention A.npy (Hq, Q, N): its last row is the newest query's";
    case base_policy::knorm:
    case base_policy::keydiff: return "needs --keys K.npy (H, N, D)";
    case base_policy::expected_attention:
      return "needs --keys K.npy (H, N, D), --queries Q.npy (Hq, W, D) and --values V.npy (H, N, Dv)";
    case base_policy::rkv: return "needs --keys K.npy (H, N, D) and --attention A.npy (Hq, W, N) or --queries Q.npy";
  }
  return "";
}

const char* option_of(input_kind kind) {
  switch (kind) {
    case input_kind::scores: return "--scores";
    case input_kind::attention: return "--attention";
    case input_kind::keys: return "--keys";
    case input_kind::none: return "--tokens";
  }
  return "";
}

void write_positions(const std::string& path, const std::vector<index_t>& data, std::vector<std::int64_t> shape) {
  static_assert(sizeof(index_t) == sizeof(std::int64_t), "positions are written as int64");
  kvcrush::io::write_npy<std::int64_t>(path, shape, reinterpret_cast<const std::int64_t*>(data.data()));
}

void forbid(const arguments& args, std::initializer_list<const char*> options, const std::string& why) {
  for (const char* option : options) {
    if (args.has(option)) throw cli_error(std::string("--") + option + " " + why);
  }
}

int run_select(int argc, char** argv) {
  const arguments args(argc, argv, 2,
                       {"policy", "scores", "attention", "keys", "queries", "values", "tokens", "kv-heads",
                        "window", "pool", "kernel", "gqa", "signature-heads", "budget", "sink", "recent", "crush",
                        "crush-split", "crush-mass", "alpha", "anchor", "seed", "representative", "threshold", "block-size", "out", "counts",
                        "future-positions", "rope-theta", "lambda", "similarity", "comparison-tokens"},
                       {"per-head", "h2o-normalised", "no-vnorm", "no-covariance", "rope-interleaved"});
  // The policy: explicit, or today's behaviour (scores used directly, or
  // SnapKV from attention, KVCrush when --crush > 0) for older command lines.
  const bool explicit_policy = args.has("policy");
  kvcrush::policy_config policy;
  if (explicit_policy) policy = kvcrush::policy_config::parse(args.text("policy"));
  // R-KV reads the window attention beside its keys: then --keys is the input.
  const bool keys_first = explicit_policy && reads_keys_first(policy.base);
  const bool rkv_attention = keys_first && policy.base == kvcrush::base_policy::rkv && args.has("attention");

  // What the user gave as input.
  std::vector<input_kind> given;
  for (input_kind kind : {input_kind::scores, input_kind::attention, input_kind::keys}) {
    if (kind == input_kind::attention && rkv_attention) continue;
    if (args.has(std::string(option_of(kind)).substr(2))) given.push_back(kind);
  }
  if (given.size() > 1) throw cli_error("give exactly one of --scores, --attention and --keys");

  if (!explicit_policy) {
    if (given.empty() || given[0] == input_kind::keys) {
      throw cli_error("give exactly one of --scores and --attention, or a --policy (see kvcrush select --help)");
    }
    policy.base = given[0] == input_kind::scores ? kvcrush::base_policy::precomputed : kvcrush::base_policy::snapkv;
    // Any nonzero --crush turns KVCrush on, so that the library checks the
    // fraction's range (a negative one is refused, not ignored).
    policy.kvcrush = args.real("crush", 0.0) != 0.0 || args.text("crush-split", "fixed") == "adaptive";
  }
  const kvcrush::base_policy base = policy.base;
  const std::string name = policy.name();
  const auto accepted = inputs_of(base);
  const input_kind input = given.empty() ? input_kind::none : given[0];
  if (std::find(accepted.begin(), accepted.end(), input) == accepted.end()) {
    throw cli_error("policy '" + name + "' " + needs_text(base) +
                    (input == input_kind::none ? std::string() : std::string(", not ") + option_of(input)));
  }
  const bool window_policy = base == kvcrush::base_policy::snapkv || base == kvcrush::base_policy::pyramidkv;
  const bool rkv = base == kvcrush::base_policy::rkv;
  const bool expected = base == kvcrush::base_policy::expected_attention;
  if (input != input_kind::attention && !rkv) {
    forbid(args, {"gqa", "signature-heads", "h2o-normalised"}, "applies to --attention only");
  }
  if (rkv && !rkv_attention) forbid(args, {"signature-heads"}, "applies to --attention only");
  if (!expected && !rkv) forbid(args, {"queries"}, "applies to expected_attention and rkv only");
  if (!expected) {
    forbid(args, {"values", "no-vnorm", "no-covariance", "rope-interleaved", "future-positions", "rope-theta"},
           "applies to expected_attention only");
  }
  if (!rkv) forbid(args, {"lambda", "similarity", "comparison-tokens"}, "applies to rkv only");
  if (rkv && rkv_attention && args.has("queries")) {
    throw cli_error("rkv: give --attention or --queries for its importance, not both");
  }
  if (rkv && !rkv_attention && !args.has("queries")) {
    throw cli_error("policy '" + name + "' " + needs_text(base));
  }
  if (expected && !args.has("queries")) throw cli_error("policy '" + name + "' " + needs_text(base));
  if (expected && !args.has("values") && !args.has("no-vnorm")) {
    throw cli_error("policy '" + name + "' needs --values V.npy (H, N, Dv) for the value norm, or --no-vnorm");
  }
  if (args.has("values") && args.has("no-vnorm")) throw cli_error("--values and --no-vnorm exclude each other");
  if (input == input_kind::scores || input == input_kind::keys) {
    forbid(args, {"kv-heads"}, std::string("applies to --attention only (the heads of ") + option_of(input) +
                                   " are its first dimension)");
  }
  if (input != input_kind::none) forbid(args, {"tokens"}, "applies to policies that read no input (full, streaming, random)");
  if (!window_policy && !rkv) forbid(args, {"window", "pool", "kernel"}, "applies to snapkv, pyramidkv and rkv only");
  if (base != kvcrush::base_policy::h2o) forbid(args, {"h2o-normalised"}, "applies to h2o only");
  if (base == kvcrush::base_policy::tova) forbid(args, {"gqa"}, "does not apply to tova (it averages every query head)");
  if (!policy.adakv) forbid(args, {"alpha"}, "applies to +adakv policies only");
  if (explicit_policy && !policy.kvcrush) {
    forbid(args, {"crush", "crush-split", "crush-mass", "anchor", "representative", "threshold", "signature-heads"},
           "applies to +kvcrush policies only (policy '" + name + "')");
  }
  if (base == kvcrush::base_policy::full) {
    forbid(args, {"budget", "sink", "recent", "crush", "crush-split", "crush-mass"},
           "does not apply to policy 'full', which keeps every token");
  }
  const kvcrush::crush_split split = kvcrush::parse_crush_split(args.text("crush-split", "fixed"));
  if (split == kvcrush::crush_split::adaptive) {
    forbid(args, {"crush"}, "applies to --crush-split fixed (the adaptive split decides the share)");
  } else {
    forbid(args, {"crush-mass"}, "applies to --crush-split adaptive only");
  }
  const double mass = args.real("crush-mass", 0.9);
  if (!(mass > 0.0 && mass <= 1.0)) {
    throw cli_error("--crush-mass must be in (0, 1], got " + args.text("crush-mass"));
  }

  // Options into the policy.
  if (policy.kvcrush) {
    policy.crush.fraction = args.real("crush", policy.crush.fraction);
    policy.crush.split = split;
    policy.crush.mass = mass;
    policy.crush.anchor = kvcrush::parse_anchor_mode(args.text("anchor", "mean"));
    policy.crush.representative = kvcrush::parse_representative_rule(args.text("representative", "bucket_center"));
    policy.crush.threshold = kvcrush::parse_threshold_mode(args.text("threshold", "median"));
    policy.crush.heads = kvcrush::parse_signature_heads(args.text("signature-heads", "kv"));
  } else {
    // Older command lines without KVCrush still validate these words.
    (void)kvcrush::parse_anchor_mode(args.text("anchor", "mean"));
    (void)kvcrush::parse_representative_rule(args.text("representative", "bucket_center"));
    (void)kvcrush::parse_threshold_mode(args.text("threshold", "median"));
    (void)kvcrush::parse_signature_heads(args.text("signature-heads", "kv"));
  }
  const auto seed = static_cast<std::uint64_t>(args.integer("seed", 0));
  policy.crush.seed = seed;
  policy.seed = seed;
  policy.adakv_alpha = args.real("alpha", policy.adakv_alpha);
  if (!(policy.adakv_alpha >= 0.0 && policy.adakv_alpha <= 1.0)) {
    throw cli_error("--alpha must be in [0, 1] (got " + args.text("alpha") + ")");
  }
  policy.window.pooling = kvcrush::parse_pooling_mode(args.text("pool", rkv ? "max" : "avg"));
  policy.window.kernel = args.integer("kernel", 7);
  policy.window.gqa = kvcrush::parse_gqa_reduction(args.text("gqa", "mean"));
  policy.h2o_normalised = args.has("h2o-normalised");
  if (expected) {
    auto& ea = policy.expected_attention;
    ea.use_vnorm = !args.has("no-vnorm");
    ea.use_covariance = !args.has("no-covariance");
    ea.rope_interleaved = args.has("rope-interleaved");
    ea.future_positions = args.integer("future-positions", ea.future_positions);
    ea.rope_theta = args.real("rope-theta", ea.rope_theta);
  }
  if (rkv) {
    policy.rkv.lambda = static_cast<float>(args.real("lambda", policy.rkv.lambda));
    policy.rkv.threshold = static_cast<float>(args.real("similarity", policy.rkv.threshold));
    policy.rkv.comparison_tokens = args.integer("comparison-tokens", policy.rkv.comparison_tokens);
  }
  if (args.has("per-head")) policy.layout.per_head = true;
  policy.layout.block_size = args.integer("block-size", 1);
  if (policy.layout.block_size < 1) throw cli_error("--block-size must be >= 1");
  if (args.has("counts") && !policy.layout.per_head) {
    throw cli_error("--counts applies to per-head output (--per-head or +adakv)");
  }
  const std::string out_path = args.text("out");

  // The layer's inputs.
  kvcrush::workspace ws;
  kvcrush::layer_inputs in;
  kvcrush_cli::float_array data, queries, values, attention_rows;
  kvcrush::h2o_accumulator accumulated;
  std::vector<float> h2o_scores;  // its scores, handed to the selection
  index_t window = 0;
  switch (input) {
    case input_kind::none:
      in.kv_heads = args.integer("kv-heads", 1);
      in.tokens = args.integer("tokens");
      if (in.kv_heads < 1) throw cli_error("--kv-heads must be >= 1");
      if (in.tokens < 1) throw cli_error("--tokens must be >= 1");
      break;
    case input_kind::scores:
      data = kvcrush_cli::read_float_array(args.text("scores"), 2, "--scores");
      in.kv_heads = data.shape[0];
      in.tokens = data.shape[1];
      in.scores = kvcrush::make_matrix_view<const float>(data.values.data(), in.kv_heads, in.tokens);
      break;
    case input_kind::keys:
      data = kvcrush_cli::read_float_array(args.text("keys"), 3, "--keys");
      in.kv_heads = data.shape[0];
      in.tokens = data.shape[1];
      in.keys.f32 = kvcrush::make_head_token_dim<const float>(data.values.data(), in.kv_heads, in.tokens, data.shape[2]);
      if (args.has("queries")) {
        queries = kvcrush_cli::read_float_array(args.text("queries"), 3, "--queries");
        if (queries.shape[1] < 1) throw cli_error("--queries holds no query rows");
        if (queries.shape[2] != data.shape[2]) {
          throw cli_error("--queries have head_dim " + std::to_string(queries.shape[2]) + ", --keys " +
                          std::to_string(data.shape[2]));
        }
        // R-KV's window (and so the default --recent) is the queries' rows;
        // Expected Attention reads them all and protects no recent window.
        const index_t rows = queries.shape[1], dim = queries.shape[2];
        const index_t used = rkv ? args.integer("window", rows) : rows;
        if (used < 1 || used > rows) {
          throw cli_error("--window " + std::to_string(used) + " must be in [1, " + std::to_string(rows) + "]");
        }
        if (rkv) window = used;
        in.window_queries = kvcrush::strided_view<const float, 3>(queries.values.data() + (rows - used) * dim,
                                                                  {queries.shape[0], used, dim}, {rows * dim, dim, 1});
      }
      if (args.has("values")) {
        values = kvcrush_cli::read_float_array(args.text("values"), 3, "--values");
        if (values.shape[0] != in.kv_heads || values.shape[1] != in.tokens) {
          throw cli_error("--values must be (" + std::to_string(in.kv_heads) + ", " + std::to_string(in.tokens) +
                          ", Dv) like --keys, got (" + std::to_string(values.shape[0]) + ", " +
                          std::to_string(values.shape[1]) + ", " + std::to_string(values.shape[2]) + ")");
        }
        in.values.f32 = kvcrush::make_head_token_dim<const float>(values.values.data(), in.kv_heads, in.tokens,
                                                                  values.shape[2]);
      }
      if (rkv_attention) {
        attention_rows = kvcrush_cli::read_float_array(args.text("attention"), 3, "--attention");
        const index_t query_heads = attention_rows.shape[0], rows = attention_rows.shape[1];
        if (attention_rows.shape[2] != in.tokens) {
          throw cli_error("--attention covers " + std::to_string(attention_rows.shape[2]) + " tokens, --keys " +
                          std::to_string(in.tokens));
        }
        if (query_heads % in.kv_heads != 0) {
          throw cli_error("the " + std::to_string(query_heads) + " query heads of --attention do not split over the " +
                          std::to_string(in.kv_heads) + " KV heads of --keys");
        }
        if (rows < 1) throw cli_error("--attention holds no query rows");
        window = args.integer("window", rows);
        if (window < 1 || window > rows) {
          throw cli_error("--window " + std::to_string(window) + " must be in [1, " + std::to_string(rows) + "]");
        }
        in.window_attention = kvcrush::strided_view<const float, 3>(attention_rows.values.data() + (rows - window) * in.tokens,
                                                                    {query_heads, window, in.tokens},
                                                                    {rows * in.tokens, in.tokens, 1});
      }
      break;
    case input_kind::attention: {
      data = kvcrush_cli::read_float_array(args.text("attention"), 3, "--attention");
      const index_t query_heads = data.shape[0], rows = data.shape[1];
      in.tokens = data.shape[2];
      in.kv_heads = args.integer("kv-heads");
      if (in.kv_heads < 1 || query_heads % in.kv_heads != 0) {
        throw cli_error("--kv-heads " + std::to_string(in.kv_heads) + " must divide the " +
                        std::to_string(query_heads) + " query heads of the attention");
      }
      if (rows < 1) throw cli_error("--attention holds no query rows");
      const float* attention = data.values.data();
      if (window_policy) {
        window = args.integer("window", rows);
        if (window < 1 || window > rows) {
          throw cli_error("--window " + std::to_string(window) + " must be in [1, " + std::to_string(rows) + "]");
        }
        // The last `window` query rows of each head.
        in.window_attention = kvcrush::strided_view<const float, 3>(
            attention + (rows - window) * in.tokens, {query_heads, window, in.tokens}, {rows * in.tokens, in.tokens, 1});
      } else if (base == kvcrush::base_policy::tova) {
        in.last_attention = kvcrush::matrix_view<const float>(attention + (rows - 1) * in.tokens,
                                                              {query_heads, in.tokens}, {rows * in.tokens, 1});
      } else {
        // H2O: the cache holds tokens 0..N-Q when the first row's query
        // arrives; each row then brings its own token and its attention.
        if (rows > in.tokens) {
          throw cli_error("--attention has " + std::to_string(rows) + " query rows over " + std::to_string(in.tokens) +
                          " tokens; h2o reads the causal attention of the last Q <= N queries");
        }
        accumulated = kvcrush::h2o_accumulator(in.kv_heads, query_heads, in.tokens, policy.window.gqa,
                                               policy.kvcrush && policy.crush.heads == kvcrush::signature_heads::query);
        accumulated.append(in.tokens - rows);
        for (index_t r = 0; r < rows; ++r) {
          accumulated.append(1);
          accumulated.accumulate(kvcrush::matrix_view<const float>(attention + r * in.tokens, {query_heads, in.tokens},
                                                                   {rows * in.tokens, 1}));
        }
        // Run-time dispatch takes the accumulated scores as scores (an
        // accumulator cannot cross ISA levels): H2O's selection is the
        // precomputed one on them, bit for bit.
        h2o_scores.assign(static_cast<std::size_t>(in.kv_heads * in.tokens), 0.0f);
        const auto rows_out = kvcrush::make_matrix_view(h2o_scores.data(), in.kv_heads, in.tokens);
        if (policy.h2o_normalised) {
          accumulated.normalised_scores(rows_out);
        } else {
          for (index_t h = 0; h < in.kv_heads; ++h) {
            for (index_t t = 0; t < in.tokens; ++t) rows_out(h, t) = accumulated.scores()(h, t);
          }
        }
        in.scores = kvcrush::make_matrix_view<const float>(h2o_scores.data(), in.kv_heads, in.tokens);
        policy.base = kvcrush::base_policy::precomputed;
      }
      break;
    }
  }
  if (input != input_kind::none && in.tokens < 1) throw cli_error(std::string(option_of(input)) + " holds no tokens");
  if (input == input_kind::scores && base == kvcrush::base_policy::h2o) {
    // Sums the caller accumulated are H2O's scores as they are.
    policy.base = kvcrush::base_policy::precomputed;
  }

  // The budget. A keep set of nothing is refused: no engine can attend over
  // an empty cache, so budget 0 is always a mistake.
  kvcrush::layer_budget budget;
  if (base != kvcrush::base_policy::full) {
    budget.budget = args.integer("budget");
    if (budget.budget < 1) {
      throw cli_error("--budget " + std::to_string(budget.budget) + " keeps no token; give --budget >= 1");
    }
    budget.sink = args.integer("sink", 0);
    const index_t default_recent = base == kvcrush::base_policy::streaming && !policy.kvcrush
                                       ? budget.budget - budget.sink
                                       : window;
    budget.recent = args.integer("recent", default_recent);
  }

  // Room for every unit in every row: the widest keep set (AdaKV heads get
  // different shares) never exceeds the layer's units.
  const index_t rows = policy.layout.per_head ? in.kv_heads : 1;
  const index_t units = (in.tokens + policy.layout.block_size - 1) / policy.layout.block_size;
  std::vector<index_t> keep(static_cast<std::size_t>(rows * units), -1);
  std::vector<index_t> counts(static_cast<std::size_t>(rows), 0);
  kvcrush::dispatch::select(
      policy, in, budget,
      {kvcrush::make_matrix_view(keep.data(), rows, units), kvcrush::make_vector_view(counts.data(), rows)}, ws);

  const index_t widest = *std::max_element(counts.begin(), counts.end());
  std::vector<index_t> packed(static_cast<std::size_t>(rows * widest), -1);
  for (index_t r = 0; r < rows; ++r) {
    std::copy(keep.begin() + r * units, keep.begin() + r * units + counts[static_cast<std::size_t>(r)],
              packed.begin() + r * widest);
  }
  if (policy.layout.per_head) {
    write_positions(out_path, packed, {rows, widest});
    if (args.has("counts")) write_positions(args.text("counts"), counts, {rows});
  } else {
    write_positions(out_path, packed, {widest});
  }
  return 0;
}

int run_signatures(int argc, char** argv) {
  const arguments args(argc, argv, 2, {"scores", "sink", "recent", "threshold", "out"}, {});
  const auto input = kvcrush_cli::read_float_array(args.text("scores"), 2, "--scores");
  const index_t heads = input.shape[0], tokens = input.shape[1];
  const index_t sink = args.integer("sink", 0), recent = args.integer("recent", 0);
  if (sink < 0 || recent < 0) throw cli_error("--sink and --recent must be >= 0");
  const index_t begin = std::min(sink, tokens);
  const index_t end = std::max(begin, tokens - recent);
  const auto mode = kvcrush::parse_threshold_mode(args.text("threshold", "median"));
  const std::string out_path = args.text("out");
  const auto& scores = input.values;
  const index_t words = kvcrush::signature_words(heads);
  std::vector<std::uint64_t> sig(static_cast<std::size_t>((end - begin) * words));
  kvcrush::workspace ws;
  kvcrush::dispatch::compute_signatures(kvcrush::make_matrix_view(scores.data(), heads, tokens), begin, end, mode,
                                        kvcrush::make_matrix_view(sig.data(), end - begin, words), ws);
  kvcrush::io::write_npy<std::uint64_t>(out_path, {end - begin, words}, sig.data());
  return 0;
}

int run_budgets(int argc, char** argv) {
  const arguments args(argc, argv, 2, {"budget", "window", "layers", "tokens", "beta"}, {"pyramid"});
  const index_t budget = args.integer("budget"), window = args.integer("window");
  const index_t layers = args.integer("layers"), tokens = args.integer("tokens");
  if (budget < 1) throw cli_error("--budget " + std::to_string(budget) + " keeps no token; give --budget >= 1");
  const auto budgets = args.has("pyramid")
                           ? kvcrush::pyramid_budgets(budget, window, layers, tokens, args.integer("beta", 20))
                           : kvcrush::uniform_budgets(budget, layers);
  for (index_t b : budgets) std::printf("%td\n", b);
  return 0;
}

// The help of one command, or nullptr for an unknown one.
const char* help_of(const std::string& command) {
  if (command == "select") return select_text;
  if (command == "signatures") return signatures_text;
  if (command == "budgets") return budgets_text;
  return nullptr;
}

// One line on stderr, whatever the message held.
int fail(const std::string& what, int code) {
  std::string message = what;
  if (message.rfind("kvcrush: ", 0) == 0) message = message.substr(9);
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  std::cerr << "kvcrush: error: " << message << "\n";
  return code;
}

constexpr int exit_usage = 2;     // bad usage or input
constexpr int exit_internal = 1;  // anything the user could not have caused

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw cli_error("missing command (select, signatures or budgets); see kvcrush --help");
    const std::string command = argv[1];
    if (command == "--help" || command == "-h" || command == "help") {
      const std::string_view isa_in_use = kvcrush::dispatch::active_isa_name();  // may refuse KVCRUSH_ISA
      std::cout << overview_text << "\n" << select_text << "\n" << signatures_text << "\n" << budgets_text
                << "\nkvcrush " << kvcrush::version_string << ", ISA in use: " << isa_in_use
                << " (chosen at run time; KVCRUSH_ISA=scalar|avx2|avx512 caps it)\n";
      return 0;
    }
    if (command == "--version") {
      const std::string_view isa_in_use = kvcrush::dispatch::active_isa_name();  // may refuse KVCRUSH_ISA
      std::cout << "kvcrush " << kvcrush::version_string << " (ISA " << isa_in_use << ")\n";
      return 0;
    }
    const char* help = help_of(command);
    if (help == nullptr) throw cli_error("unknown command '" + command + "' (expected select, signatures or budgets)");
    for (int i = 2; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::cout << help;
        return 0;
      }
    }
    if (command == "select") return run_select(argc, argv);
    if (command == "signatures") return run_signatures(argc, argv);
    return run_budgets(argc, argv);
  } catch (const cli_error& error) {
    return fail(error.what(), exit_usage);
  } catch (const kvcrush::io::npy_error& error) {
    return fail(error.what(), exit_usage);
  } catch (const std::invalid_argument& error) {
    // The library reports every bad argument this way (error.hpp).
    return fail(error.what(), exit_usage);
  } catch (const std::bad_alloc&) {
    return fail("out of memory", exit_internal);
  } catch (const std::exception& error) {
    return fail(std::string("internal: ") + error.what(), exit_internal);
  }
}

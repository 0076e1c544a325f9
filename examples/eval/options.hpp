// kvcrush-eval's command line. Defaults point at the shared folder the build
// was configured with (the CMake cache variable KVCRUSH_SHARED_DIR, an
// absolute path; --help prints it), so that running it without arguments
// reproduces the README's tables.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <system_error>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvcrush/policy/runtime.hpp"

namespace kvcrush_eval {

class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

#ifndef KVCRUSH_EVAL_SHARED_DIR
#define KVCRUSH_EVAL_SHARED_DIR "../shared"
#endif

// A default file in the shared folder, with "dir/../shared" resolved, so
// that --help and errors name the file as it is.
inline std::string shared_file(const std::string& relative) {
  std::error_code ignored;
  const std::filesystem::path path = std::filesystem::path(KVCRUSH_EVAL_SHARED_DIR) / relative;
  const std::filesystem::path resolved = std::filesystem::weakly_canonical(path, ignored);
  return (resolved.empty() ? path : resolved).string();
}

struct options {
  // Default: austen-kjv-14m (32 query / 8 KV heads) and stories260K.
  std::vector<std::string> models;
  std::string tokenizer = shared_file("models/tok512.bin");
  std::vector<std::string> texts;  // default: both shared texts
  std::vector<std::string> policies = {"full",           "streaming",        "random",
                                       "h2o",            "snapkv",           "tova",
                                       "knorm",          "pyramidkv",        "adakv",
                                       "keydiff",        "expected_attention", "rkv",
                                       "h2o+kvcrush",    "snapkv+kvcrush",   "tova+kvcrush",
                                       "pyramidkv+kvcrush", "keydiff+kvcrush", "expected_attention+kvcrush",
                                       "rkv+kvcrush"};
  std::vector<double> budgets = {0.5, 0.25, 0.125};
  kvcrush::crush_options crush{};
  long context = 0;  // tokens per chunk; 0: the model's seq_len
  double prefill = 0.5;  // fraction of the chunk (< 1), or a token count (>= 1)
  long chunks = 0;  // chunks per text; 0: 4096 tokens' worth (8 of 512, 4 of 1024)
  long sink = 4;
  long window = 16;  // recent tokens kept, and SnapKV's observation window
  long slack = 0;    // decode-time eviction: cache <= budget + slack
  std::uint64_t seed = 0;
  std::string format = "md";
  std::string plot;      // SVG file, empty: no plot
  std::string output;    // table file, empty: stdout
  bool ablation = false;
  double ablation_budget = 0.25;
  std::vector<std::string> ablation_bases = {"snapkv", "h2o"};
  bool paged = false;    // run the engine on the paged cache
  bool progress = true;
  long batch = 256;    // most runs decoded together (whole chunks: at least one chunk's runs)
  long threads = 0;    // 0: every core
  // Equal-byte comparisons (byte_runner.hpp): fractions of the full float16
  // cache's bytes, storage kinds, and the ranking policies they use.
  std::vector<double> byte_budgets = {0.25, 0.125};
  std::vector<std::string> precisions = {"fp16",       "int8",       "int4",       "int2",
                                         "mixed-int4", "mixed-int2", "crush-int4", "crush-int2"};
  std::vector<std::string> byte_policies = {"snapkv"};
  long quant_group = 16;        // G: tokens per key group
  std::string quant_eviction = "token";  // intN storage: evict tokens (regrouping) or whole groups
  double high_fraction = 0.5;   // share of the bytes the float16 tier may take (mixed precision)
  // The equal-byte rows run when nothing chose what to run (the README's
  // full evaluation) or when an option about them was given: choosing
  // --policies or --budgets alone runs exactly those rows.
  bool byte_rows = true;

  std::vector<std::string> model_paths() const {
    if (!models.empty()) return models;
    return {shared_file("models/austen-kjv-14m.bin"), shared_file("models/stories260K.bin")};
  }

  // The texts a model is evaluated on: --text when given; otherwise both
  // shared texts, except for austen-kjv-14m, trained on Austen and the
  // King James Bible, for which the children's stories are out of domain.
  std::vector<std::string> text_paths(const std::string& model_path = "") const {
    if (!texts.empty()) return texts;
    if (std::filesystem::path(model_path).stem() == "austen-kjv-14m") return {shared_file("data/pride_and_prejudice.txt")};
    return {shared_file("data/pride_and_prejudice.txt"), shared_file("data/stories_sampled.txt")};
  }

  // Chunks per text for chunks of `context` tokens.
  long chunks_for(long context) const { return chunks > 0 ? chunks : std::max(1L, 4096 / context); }
};

// The help, with the defaults this build really uses.
inline std::string usage() {
  const options defaults;
  const auto models = defaults.model_paths();
  const auto texts = defaults.text_paths();
  return R"(kvcrush-eval - accuracy of KV-cache eviction policies on a real model

usage: kvcrush-eval [options]

For every text chunk (BOS + context - 1 tokens): prefill the first part with the full cache,
compress each layer to the budget with the policy, then decode the rest teacher-forced with
decode-time eviction (the cache never exceeds budget + slack tokens per layer), and compare
every next-token prediction with the full cache's: perplexity and its change, top-1 agreement,
mean KL(full || policy). The prefill runs once per chunk; all the runs of a chunk then
decode together, one batched step per token (--batch, --threads).

It runs each of --policies at each of --budgets, then the equal-byte rows (--byte-policies x
--precisions x --byte-budgets). The equal-byte rows run by default and whenever one of
--byte-budgets, --precisions, --byte-policies is given; with --policies or --budgets alone
only those rows run. --ablation runs the ablation alone. Options take "--name value" or
"--name=value".

  --model FILE          llama2.c checkpoint, repeatable (default: )" + models[0] + R"(
                        on )" + texts[0] + R"(, then
                        )" + models[1] + R"( on it and on
                        )" + texts[1] + R"()
  --tokenizer FILE      llama2.c tokenizer (default )" + defaults.tokenizer + R"()
  --text FILE           evaluation text, repeatable; every model runs on every --text
  --policies LIST       comma-separated: full streaming random h2o snapkv tova knorm pyramidkv
                        adakv keydiff expected_attention rkv, and compositions like
                        snapkv+kvcrush (default: all bases and h2o/snapkv/tova/pyramidkv/
                        keydiff/expected_attention/rkv+kvcrush)
  --budgets LIST        fractions of the context (default 0.5,0.25,0.125)
  --crush F             KVCrush share of the unprotected budget (default 0.5)
  --crush-split S       fixed (--crush's share) or adaptive: per layer and compression,
                        the policy keeps the fewest evictable tokens covering --crush-mass
                        of their score mass (within the budget), KVCrush the rest; the
                        default rows then leave out the signed-score knorm/keydiff/rkv+kvcrush
                        and crush-intN rows (default fixed)
  --crush-mass M        adaptive split: the mass share to cover, in (0, 1] (default 0.9)
  --anchor A            mean inv_mean zeros ones alternating random (default mean)
  --representative R    bucket_center bucket_start linspace stride (default bucket_center)
  --threshold T         median mean (default median)
  --signature-heads H   kv query (default kv)
  --seed N              random policy and random anchor seed (default 0)
  --context N           tokens per chunk, at most each model's seq_len (default: each model's
                        seq_len, read from its file)
  --prefill P           prefill length: a fraction of the chunk if < 1, else tokens (default 0.5)
  --chunks N            chunks per text, spread over it (default: 4096 tokens' worth, 8
                        chunks of 512 tokens, 4 of 1024; austen-kjv-14m needs 144 on
                        pride_and_prejudice for top-1 intervals of at most +-0.5 points)
  --sink N              first tokens always kept (default 4)
  --window N            recent tokens always kept, and SnapKV's window (default 16)
  --slack N             decode-time eviction once per N new tokens (every token with 0):
                        cache <= budget + N (default 0)
  --paged               run the engine on the paged cache (block size 16)
  --byte-budgets LIST   equal-byte rows: fractions of the full cache's float16 bytes
                        (default 0.25,0.125; 'none' for no such rows)
  --precisions LIST     storage at those budgets: fp16 (eviction only), int8 int4 int2
                        (eviction + KIVI quantization with a float16 recent window),
                        mixed-intN (float16 top tokens + intN next ones, MiKV-style),
                        crush-intN (float16 top tokens + intN KVCrush representatives)
                        (default: all of fp16 int8 int4 int2 mixed-int4 mixed-int2
                        crush-int4 crush-int2)
  --byte-policies LIST  ranking policies of the equal-byte rows: streaming random h2o
                        snapkv tova (default snapkv; streaming ranks nothing, so only
                        fp16 and intN)
  --quant-group N       tokens per key group, a multiple of 16 (default 16)
  --quant-eviction E    intN storage evicts tokens, one selection per G new tokens (token:
                        the groups after an evicted token are requantized), or whole groups
                        (group: blocks of G, sink and recent rounded up to G, no
                        requantization) (default token)
  --high-fraction F     mixed precision: share of the bytes for float16 (default 0.5)
  --ablation            instead: the KVCrush ablation (signature heads x split: crush 0.25,
                        0.5 or adaptive x anchor x representative) of each base at
                        --ablation-budget
  --ablation-budget F   (default 0.25)
  --ablation-bases LIST the ablation's base policies, each run alone and as X+kvcrush
                        (default snapkv,h2o)
  --format md|csv       table format (default md)
  --output FILE         write the table there instead of stdout
  --plot FILE.svg       accuracy-against-budget plot
  --batch N             decode up to N runs together: the runs of as many chunks as fit,
                        at least one chunk's (default 256)
  --threads N           threads of the batched engine, 0 for every core (default 0)
  --quiet               no progress bar on stderr
  --help

Exit status: 0 success, 2 bad usage or input (one line "kvcrush-eval: error: ..." on
stderr), 1 internal failure.
)";
}

inline long round_up(long n, long multiple) { return (n + multiple - 1) / multiple * multiple; }

inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

inline double parse_real(const std::string& option, const std::string& value) {
  std::size_t used = 0;
  double out = 0;
  try {
    out = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty()) throw usage_error(option + " expects a number, got '" + value + "'");
  return out;
}

inline long parse_integer(const std::string& option, const std::string& value) {
  long out = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (error != std::errc() || end != value.data() + value.size()) {
    throw usage_error(option + " expects an integer, got '" + value + "'");
  }
  return out;
}

inline options parse_options(int argc, char** argv) {
  options o;
  bool rows_chosen = false, byte_option = false;
  bool policies_chosen = false, precisions_chosen = false, crush_given = false, mass_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    // "--name=value" is the same as "--name value", as in the other tools.
    std::optional<std::string> inline_value;
    const auto equals = arg.find('=');
    if (arg.rfind("--", 0) == 0 && equals != std::string::npos) {
      inline_value = arg.substr(equals + 1);
      arg = arg.substr(0, equals);
    }
    auto value = [&]() -> std::string {
      if (inline_value) {
        std::string v = *inline_value;
        inline_value.reset();
        return v;
      }
      if (i + 1 >= argc) throw usage_error("option " + arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      throw usage_error("");
    } else if (arg == "--model") {
      o.models.push_back(value());
    } else if (arg == "--tokenizer") {
      o.tokenizer = value();
    } else if (arg == "--text") {
      o.texts.push_back(value());
    } else if (arg == "--policies") {
      o.policies = split_list(value());
      rows_chosen = true;
      policies_chosen = true;
    } else if (arg == "--budgets") {
      o.budgets.clear();
      for (const auto& b : split_list(value())) o.budgets.push_back(parse_real("--budgets", b));
      rows_chosen = true;
    } else if (arg == "--crush") {
      o.crush.fraction = parse_real(arg, value());
      crush_given = true;
    } else if (arg == "--crush-split") {
      o.crush.split = kvcrush::parse_crush_split(value());
    } else if (arg == "--crush-mass") {
      o.crush.mass = parse_real(arg, value());
      mass_given = true;
    } else if (arg == "--anchor") {
      o.crush.anchor = kvcrush::parse_anchor_mode(value());
    } else if (arg == "--representative") {
      o.crush.representative = kvcrush::parse_representative_rule(value());
    } else if (arg == "--threshold") {
      o.crush.threshold = kvcrush::parse_threshold_mode(value());
    } else if (arg == "--signature-heads") {
      o.crush.heads = kvcrush::parse_signature_heads(value());
    } else if (arg == "--seed") {
      o.seed = static_cast<std::uint64_t>(parse_integer(arg, value()));
      o.crush.seed = o.seed;
    } else if (arg == "--context") {
      o.context = parse_integer(arg, value());
      if (o.context < 16) throw usage_error("--context must be >= 16");
    } else if (arg == "--prefill") {
      o.prefill = parse_real(arg, value());
    } else if (arg == "--chunks") {
      o.chunks = parse_integer(arg, value());
      if (o.chunks < 1) throw usage_error("--chunks must be >= 1");
        } else if (arg == "--sink") {
      o.sink = parse_integer(arg, value());
    } else if (arg == "--window") {
      o.window = parse_integer(arg, value());
    } else if (arg == "--slack") {
      o.slack = parse_integer(arg, value());
    } else if (arg == "--paged") {
      o.paged = true;
    } else if (arg == "--byte-budgets") {
      o.byte_budgets.clear();
      byte_option = true;
      const std::string list = value();
      if (list != "none")
        for (const auto& b : split_list(list)) o.byte_budgets.push_back(parse_real(arg, b));
    } else if (arg == "--precisions") {
      o.precisions = split_list(value());
      byte_option = true;
      precisions_chosen = true;
    } else if (arg == "--byte-policies") {
      o.byte_policies = split_list(value());
      byte_option = true;
    } else if (arg == "--quant-eviction") {
      o.quant_eviction = value();
    } else if (arg == "--quant-group") {
      o.quant_group = parse_integer(arg, value());
    } else if (arg == "--high-fraction") {
      o.high_fraction = parse_real(arg, value());
    } else if (arg == "--ablation") {
      o.ablation = true;
    } else if (arg == "--ablation-bases") {
      o.ablation_bases = split_list(value());
      for (const auto& b : o.ablation_bases) {
        const kvcrush::policy_config parsed = kvcrush::policy_config::parse(b);
        if (parsed.kvcrush || parsed.adakv || parsed.base == kvcrush::base_policy::full ||
            parsed.base == kvcrush::base_policy::streaming || parsed.base == kvcrush::base_policy::random) {
          throw usage_error("--ablation-bases takes ranking base policies (snapkv, h2o, tova, ...), not '" + b + "'");
        }
      }
    } else if (arg == "--ablation-budget") {
      o.ablation_budget = parse_real(arg, value());
    } else if (arg == "--format") {
      o.format = value();
    } else if (arg == "--output") {
      o.output = value();
    } else if (arg == "--plot") {
      o.plot = value();
    } else if (arg == "--batch") {
      o.batch = parse_integer(arg, value());
    } else if (arg == "--threads") {
      o.threads = parse_integer(arg, value());
    } else if (arg == "--quiet") {
      o.progress = false;
    } else {
      throw usage_error("unknown option " + arg + " (see kvcrush-eval --help)");
    }
    if (inline_value) throw usage_error("option " + arg + " takes no value");  // a switch given "=..."
  }
  if (o.format != "md" && o.format != "csv") throw usage_error("--format must be md or csv");
  if (o.batch < 1) throw usage_error("--batch must be >= 1");
  if (o.threads < 0 || o.threads > 256) throw usage_error("--threads must be in [0, 256]");
  if (o.sink < 0 || o.window < 1 || o.slack < 0) throw usage_error("--sink >= 0, --window >= 1, --slack >= 0 required");
  if (o.prefill <= 0) throw usage_error("--prefill must be positive");
  for (double b : o.budgets) {
    if (!(b > 0.0 && b <= 1.0)) throw usage_error("--budgets are fractions in (0, 1]");
  }
  if (!(o.crush.fraction >= 0.0 && o.crush.fraction <= 1.0)) throw usage_error("--crush must be in [0, 1]");
  for (const auto& p : o.policies) (void)kvcrush::policy_config::parse(p);  // unknown names fail here
  if (!(o.crush.mass > 0.0 && o.crush.mass <= 1.0)) throw usage_error("--crush-mass must be in (0, 1]");
  if (o.crush.split == kvcrush::crush_split::adaptive) {
    if (crush_given) throw usage_error("--crush applies to --crush-split fixed (the adaptive split decides the share)");
    if (o.ablation) throw usage_error("--ablation varies the fixed split's fraction; it takes --crush-split fixed");
    // Policies whose KVCrush rows cannot take the adaptive split: signed
    // scores, or nothing ranked (streaming).
    auto refuses = [](const std::string& name) {
      const auto cfg = kvcrush::policy_config::parse(name);
      return cfg.kvcrush && (kvcrush::signed_scores(cfg.base) || cfg.base == kvcrush::base_policy::streaming);
    };
    std::vector<std::string> kept;
    for (const auto& p : o.policies) {
      if (!refuses(p)) {
        kept.push_back(p);
      } else if (policies_chosen) {
        throw usage_error("--crush-split adaptive needs non-negative importance scores; policy '" + p +
                          "' cannot take it (use --crush-split fixed)");
      }
    }
    o.policies = kept;
    // crush-intN rows plan their KVCrush share from the bytes (a fixed split).
    std::vector<std::string> precisions;
    for (const auto& p : o.precisions) {
      if (p.rfind("crush-", 0) != 0) {
        precisions.push_back(p);
      } else if (precisions_chosen) {
        throw usage_error("--precisions " + p + " plans its KVCrush share from the bytes; it takes --crush-split fixed");
      }
    }
    o.precisions = precisions;
  } else if (mass_given) {
    throw usage_error("--crush-mass applies to --crush-split adaptive only");
  }
  for (double b : o.byte_budgets) {
    if (!(b > 0.0 && b <= 1.0)) throw usage_error("--byte-budgets are fractions in (0, 1]");
  }
  if (o.quant_group < 16 || o.quant_group > 256 || o.quant_group % 16 != 0)
    throw usage_error("--quant-group must be a multiple of 16 in [16, 256]");
  if (o.quant_eviction != "group" && o.quant_eviction != "token") throw usage_error("--quant-eviction must be group or token");
  if (!(o.high_fraction > 0.0 && o.high_fraction <= 1.0)) throw usage_error("--high-fraction must be in (0, 1]");
  for (const auto& p : o.byte_policies) {
    if (p != "streaming" && p != "random" && p != "h2o" && p != "snapkv" && p != "tova")
      throw usage_error("--byte-policies takes streaming random h2o snapkv tova, not '" + p + "'");
  }
  o.byte_rows = byte_option || !rows_chosen;
  return o;
}

}  // namespace kvcrush_eval

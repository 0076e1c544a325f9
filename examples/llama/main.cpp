// kvcrush-llama: text generation from a llama2.c checkpoint, optionally with
// the KV cache held to a budget by one of kvcrush's eviction policies.
//
//   kvcrush-llama [--model PATH] [--tokenizer PATH] [--prompt TEXT] [--steps N]
//                 [--temperature T] [--seed N] [--policy P --budget B ...]
//
// stdout receives the text alone, then a newline. At temperature 0 with the
// full cache the text is llama2.c's `run` output byte for byte (for a prompt
// of P tokens and --steps N, llama2.c's -n is N + P - 1, since its count
// includes the prompt). Exit codes, as in every kvcrush tool: 0 success,
// 2 bad usage or input (one line "kvcrush-llama: error: ..." on stderr),
// 1 internal failure.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "decode_eviction.hpp"
#include "engine.hpp"
#include "generate.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

#if !defined(KVCRUSH_LLAMA_DEFAULT_MODEL)
#define KVCRUSH_LLAMA_DEFAULT_MODEL "../shared/models/stories260K.bin"
#endif
#if !defined(KVCRUSH_LLAMA_DEFAULT_TOKENIZER)
#define KVCRUSH_LLAMA_DEFAULT_TOKENIZER "../shared/models/tok512.bin"
#endif

namespace {

constexpr int exit_internal = 1;
constexpr int exit_usage = 2;
constexpr long default_steps = 256;  // llama2.c's default

struct options {
  std::string model = KVCRUSH_LLAMA_DEFAULT_MODEL;
  std::string tokenizer = KVCRUSH_LLAMA_DEFAULT_TOKENIZER;
  long steps = default_steps;
  std::string prompt;
  bool paged = false;
  bool help = false;
  float temperature = 0.0f;
  long seed = 1;
  std::string policy = "full";
  long budget = -1;  // -1: not given
  long sink = 4;
  long window = 16;
  long slack = 0;
  double crush = -1;  // -1: not given
  double alpha = -1;  // -1: not given
};

struct usage_error {
  std::string message;
};

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: kvcrush-llama [--model PATH] [--tokenizer PATH] [--prompt TEXT] [--steps N]\n"
               "                     [--temperature T] [--seed N] [--paged]\n"
               "                     [--policy P --budget B [--sink S] [--window W] [--slack N] [--crush F]\n"
               "                      [--alpha A]]\n"
               "  --model PATH      llama2.c checkpoint (default %s)\n"
               "  --tokenizer PATH  llama2.c tokenizer (default %s)\n"
               "  --prompt TEXT     text to start from (default: none, start from BOS)\n"
               "  --steps N         tokens to generate after the prompt (default %ld; 0: up to the\n"
               "                    model's seq_len, which prompt + N must not exceed). Generation\n"
               "                    also stops when the model produces BOS.\n"
               "  --temperature T   0 (default): greedy; > 0: sample from softmax(logits / T) with\n"
               "                    llama2.c's generator (as its run -t T -s N -p 1)\n"
               "  --seed N          seed of the sampler, >= 1 (default 1)\n"
               "  --paged           keep the KV cache in kvcrush's paged cache (blocks of 16 tokens)\n"
               "                    instead of the contiguous one; the output is the same\n"
               "  --policy P        KV-cache eviction policy while generating, a policy_config string\n"
               "                    (full streaming random h2o snapkv pyramidkv tova knorm, +kvcrush,\n"
               "                    +adakv). Default full: nothing is evicted. +adakv: when a layer first\n"
               "                    exceeds B + slack, B per KV head is shared out across its heads\n"
               "                    from SnapKV scores of the last W queries (AdaKV, --alpha); each\n"
               "                    head then keeps to its share. A share is at most the B + slack\n"
               "                    tokens then held, so heads differ only with --slack > 0 (not with\n"
               "                    --paged).\n"
               "  --budget B        tokens each layer's cache holds (needed with a policy other than\n"
               "                    full); before a token would exceed B + slack, the policy evicts\n"
               "                    down to B (kvcrush::eviction_controller). The cache is allocated\n"
               "                    at B + slack rows (AdaKV: B + 2 x slack per KV head).\n"
               "  --sink S          first tokens always kept (default 4)\n"
               "  --window W        recent tokens always kept, and the attention rows SnapKV and\n"
               "                    PyramidKV score with (default 16; streaming keeps B - S recent)\n"
               "  --slack N         tokens allowed above the budget between selections (default 0:\n"
               "                    one selection per token once the cache is full)\n"
               "  --crush F         +kvcrush: share of the unprotected budget for KVCrush\n"
               "                    representatives (default 0.5)\n"
               "  --alpha A         +adakv: each KV head's floor, a share of its budget after sink\n"
               "                    and recent (default 0.2)\n"
               "With a policy, one line on stderr reports what the cache held.\n"
               "Exit status: 0 success, 2 bad usage or input, 1 internal failure.\n",
               KVCRUSH_LLAMA_DEFAULT_MODEL, KVCRUSH_LLAMA_DEFAULT_TOKENIZER, default_steps);
}

long parse_count(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < 0 || text.front() == '-' || text.front() == '+' ||
      text.front() == ' ') {
    throw usage_error{flag + " needs a non-negative integer, got '" + text + "'"};
  }
  return value;
}

double parse_number(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(value) || text.front() == ' ') {
    throw usage_error{flag + " needs a number, got '" + text + "'"};
  }
  return value;
}

options parse_arguments(int argc, char** argv) {
  options parsed;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      parsed.help = true;
      continue;
    }
    // "--name=value" is the same as "--name value", as in the other tools.
    std::string value;
    bool inline_value = false;
    const auto equals = flag.find('=');
    if (flag.rfind("--", 0) == 0 && equals != std::string::npos) {
      value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
      inline_value = true;
    }
    if (flag == "--paged") {
      if (inline_value) throw usage_error{"--paged takes no value"};
      parsed.paged = true;
      continue;
    }
    static const char* const valued[] = {"--model",  "--tokenizer", "--steps", "--prompt", "--temperature",
                                         "--seed",   "--policy",    "--budget", "--sink",  "--window",
                                         "--slack",  "--crush",       "--alpha"};
    if (std::find(std::begin(valued), std::end(valued), flag) == std::end(valued)) {
      throw usage_error{"unknown argument '" + flag + "' (see --help)"};
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw usage_error{flag + " needs a value"};
      value = argv[++i];
    }
    if (flag == "--model") parsed.model = value;
    else if (flag == "--tokenizer") parsed.tokenizer = value;
    else if (flag == "--steps") parsed.steps = parse_count(flag, value);
    else if (flag == "--prompt") parsed.prompt = value;
    else if (flag == "--temperature") parsed.temperature = static_cast<float>(parse_number(flag, value));
    else if (flag == "--seed") parsed.seed = parse_count(flag, value);
    else if (flag == "--policy") parsed.policy = value;
    else if (flag == "--budget") parsed.budget = parse_count(flag, value);
    else if (flag == "--sink") parsed.sink = parse_count(flag, value);
    else if (flag == "--window") parsed.window = parse_count(flag, value);
    else if (flag == "--slack") parsed.slack = parse_count(flag, value);
    else if (flag == "--alpha") parsed.alpha = parse_number(flag, value);
    else parsed.crush = parse_number(flag, value);
  }
  if (parsed.help) return parsed;
  if (parsed.temperature < 0.0f) throw usage_error{"--temperature must be >= 0"};
  if (parsed.seed < 1) throw usage_error{"--seed must be >= 1 (llama2.c's generator stays at 0 from 0)"};
  return parsed;
}

// The eviction plan of the options, or nothing for the full cache; usage
// errors for combinations that cannot work.
std::unique_ptr<kvcrush_llama::eviction_plan> plan_of(const options& o) {
  kvcrush::policy_config policy;
  try {
    policy = kvcrush::policy_config::parse(o.policy);
  } catch (const std::invalid_argument& e) {
    throw usage_error{std::string(e.what()).substr(std::string("kvcrush: ").size())};
  }
  policy.expected_attention.rope_interleaved = true;  // the engine's RoPE pairs (2i, 2i+1), llama2.c's
  if (policy.base == kvcrush::base_policy::full) {
    if (o.budget >= 0) throw usage_error{"--budget needs a --policy other than full (the full cache keeps every token)"};
    if (o.crush >= 0) throw usage_error{"--crush applies to +kvcrush policies only"};
    return nullptr;
  }
  if (policy.base == kvcrush::base_policy::precomputed) {
    throw usage_error{"--policy precomputed needs scores from the caller; an engine has none"};
  }
  if (policy.adakv && o.paged) {
    throw usage_error{"--policy " + o.policy + ": AdaKV's heads keep different tokens, which the paged cache's "
                      "shared blocks cannot hold; drop --paged"};
  }
  if (o.budget < 0) throw usage_error{"--policy " + o.policy + " needs --budget B (tokens per layer)"};
  if (o.budget < 1) throw usage_error{"--budget 0 keeps no token; give --budget >= 1"};
  if (o.window < 1) throw usage_error{"--window must be >= 1"};
  if (o.crush >= 0 && !policy.kvcrush) throw usage_error{"--crush applies to +kvcrush policies only"};
  if (o.crush > 1) throw usage_error{"--crush must be in [0, 1]"};
  if (o.crush >= 0) policy.crush.fraction = o.crush;
  if (o.alpha != -1 && !policy.adakv) throw usage_error{"--alpha applies to +adakv policies only"};
  if (o.alpha != -1 && !(o.alpha >= 0 && o.alpha <= 1)) throw usage_error{"--alpha must be in [0, 1]"};
  if (o.alpha != -1) policy.adakv_alpha = o.alpha;
  auto plan = std::make_unique<kvcrush_llama::eviction_plan>();
  plan->policy = policy;
  plan->slack = o.slack;
  plan->window = o.window;
  plan->budget = kvcrush_llama::plan_budget(policy, o.budget, o.sink, o.window);
  if (plan->budget.budget < plan->budget.sink + plan->budget.recent) {
    throw usage_error{"--budget " + std::to_string(o.budget) + " is below --sink + --window (" +
                      std::to_string(o.sink) + " + " + std::to_string(o.window) + ")"};
  }
  return plan;
}


void report_error(const std::string& message) {
  std::string line = message;
  for (char& c : line) {
    if (c == '\n') c = ' ';
  }
  std::fprintf(stderr, "kvcrush-llama: error: %s\n", line.c_str());
}

}  // namespace

int KVCRUSH_TOOL_ENTRY(int argc, char** argv) {
  options opts;
  std::unique_ptr<kvcrush_llama::eviction_plan> plan;
  try {
    opts = parse_arguments(argc, argv);
    if (opts.help) {
      print_usage(stdout);
      return 0;
    }
    plan = plan_of(opts);
  } catch (const usage_error& e) {
    report_error(e.message);
    return exit_usage;
  }
  // Input: the files, and what they allow (the context length).
  std::unique_ptr<kvcrush_llama::model> model;
  std::unique_ptr<kvcrush_llama::tokenizer> vocabulary;
  std::vector<int> prompt_tokens;
  long positions = 0;
  try {
    model = std::make_unique<kvcrush_llama::model>(kvcrush_llama::model::load(opts.model));
    vocabulary = std::make_unique<kvcrush_llama::tokenizer>(
        kvcrush_llama::tokenizer::load(opts.tokenizer, model->config().vocab_size));
    prompt_tokens = vocabulary->encode(opts.prompt, /*bos=*/true, /*eos=*/false);
    const long seq_len = static_cast<long>(model->config().seq_len);
    const long prompt_positions = static_cast<long>(prompt_tokens.size()) - 1;  // BOS is fed, not generated
    if (prompt_positions >= seq_len) {
      throw usage_error{"the prompt's " + std::to_string(prompt_tokens.size()) + " tokens fill the model's " +
                        std::to_string(seq_len) + " positions"};
    }
    positions = opts.steps == 0 ? seq_len : prompt_positions + opts.steps;
    if (positions > seq_len) {
      throw usage_error{"--steps " + std::to_string(opts.steps) + " after a prompt of " +
                        std::to_string(prompt_tokens.size()) + " tokens needs " + std::to_string(positions) +
                        " positions; the model has " + std::to_string(seq_len) + " (--steps 0: all of them)"};
    }
  } catch (const usage_error& e) {
    report_error(e.message);
    return exit_usage;
  } catch (const std::exception& e) {
    report_error(e.what());  // a missing or malformed model or tokenizer file
    return exit_usage;
  }
  try {
    const auto& c = model->config();
    // With a policy, the cache is allocated at budget + slack rows: the
    // engine itself refuses a token that would overflow it.
    const long capacity = plan ? std::min<long>(positions, kvcrush_llama::eviction_capacity(*plan)) : positions;
    kvcrush_llama::engine engine(*model, kvcrush_llama::make_store(c, plan.get(), capacity, opts.paged));
    std::unique_ptr<kvcrush_llama::decode_eviction> eviction;
    try {
      if (plan) eviction = kvcrush_llama::make_decode_eviction(engine, *plan);
    } catch (const std::invalid_argument& e) {
      // The controller refuses what cannot work (kvcrush's messages).
      std::string message = e.what();
      if (message.rfind("kvcrush: ", 0) == 0) message = message.substr(9);
      report_error("--policy " + opts.policy + ": " + message);
      return exit_usage;
    }
    engine.set_observer(eviction.get());
    kvcrush::workspace ws;
    kvcrush_llama::sampler pick(opts.temperature, static_cast<std::uint64_t>(opts.seed));
    kvcrush_llama::generate(
        engine, *vocabulary, prompt_tokens, positions, pick,
        [&] {
          if (eviction) eviction->before_token(ws);
        },
        [](std::string_view piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        });
    std::fputc('\n', stdout);
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      report_error("cannot write the output");
      return exit_internal;
    }
    if (eviction && !plan->policy.adakv) {
      std::fprintf(stderr,
                   "kvcrush-llama: policy %s, budget %td (sink %td, recent %td, slack %ld): at most %td of %td "
                   "positions cached per layer, %td selections\n",
                   plan->policy.name().c_str(), plan->budget.budget, plan->budget.sink, plan->budget.recent,
                   opts.slack, eviction->peak_head_rows(), engine.position(), eviction->selections());
    } else if (eviction) {
      // Heads hold different numbers of rows; the budget bounds their mean.
      std::fprintf(stderr,
                   "kvcrush-llama: policy %s, budget %td (sink %td, recent %td, slack %ld): at most %.2f of %td "
                   "positions cached per layer (mean over its KV heads; longest head %td), %td selections\n",
                   plan->policy.name().c_str(), plan->budget.budget, plan->budget.sink, plan->budget.recent,
                   opts.slack, eviction->peak_mean_rows(), engine.position(), eviction->peak_head_rows(),
                   eviction->selections());
    }
  } catch (const std::exception& e) {
    report_error(e.what());
    return exit_internal;
  }
  return 0;
}

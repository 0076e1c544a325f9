// Command-line parsing: the CLI's arguments class (examples/cli/arguments.hpp)
// over fuzzed argument vectors, and kvcrush::policy_config::parse plus the
// option-value parsers (anchor, threshold, ...) over fuzzed words.
//
// Input: a byte choosing the option sets of one subcommand, then the
// arguments separated by NUL bytes. Only cli_error and
// std::invalid_argument may come out; what is accepted must read back as
// given.
#include <cstddef>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "arguments.hpp"
#include "fuzz_support.hpp"
#include "kvcrush/kvcrush.hpp"

namespace {

struct option_sets {
  std::set<std::string> valued, switches;
};

// The option sets of `kvcrush select`, `signatures` and `budgets`, as
// examples/cli/main.cpp declares them.
const option_sets subcommands[] = {
    {{"scores", "attention", "kv-heads", "window", "pool", "kernel", "gqa", "signature-heads", "budget", "sink",
      "recent", "crush", "crush-split", "crush-mass", "anchor", "seed", "representative", "threshold", "block-size", "out"},
     {"per-head"}},
    {{"scores", "sink", "recent", "threshold", "out"}, {}},
    {{"budget", "window", "layers", "tokens", "beta"}, {"pyramid"}},
};

void parse_policy(const std::string& word) {
  kvcrush::policy_config cfg;
  try {
    cfg = kvcrush::policy_config::parse(word);
  } catch (const std::invalid_argument&) {
    return;
  }
  // The canonical name parses to the same policy, and is its own name.
  const kvcrush::policy_config again = kvcrush::policy_config::parse(cfg.name());
  KVCRUSH_FUZZ_CHECK(again.base == cfg.base && again.adakv == cfg.adakv && again.kvcrush == cfg.kvcrush);
  KVCRUSH_FUZZ_CHECK(again.name() == cfg.name());
  KVCRUSH_FUZZ_CHECK(cfg.layout.per_head == cfg.adakv);
  KVCRUSH_FUZZ_CHECK(!(cfg.base == kvcrush::base_policy::full && (cfg.adakv || cfg.kvcrush)));
}

// Each value parser either accepts the word, and then prints it back, or
// throws std::invalid_argument.
template <class Parse>
void parse_value(const std::string& word, Parse parse) {
  try {
    KVCRUSH_FUZZ_CHECK(kvcrush::to_string(parse(word)) == word);
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  kvcrush_fuzz::reader in(data, size);
  const option_sets& sets = subcommands[in.byte() % 3];
  std::vector<std::string> words;
  const std::string_view rest = in.rest();
  for (std::size_t begin = 0; begin <= rest.size();) {
    std::size_t end = rest.find('\0', begin);
    if (end == std::string_view::npos) end = rest.size();
    words.emplace_back(rest.substr(begin, end - begin));
    begin = end + 1;
  }
  for (const std::string& w : words) {
    parse_policy(w);
    parse_value(w, kvcrush::parse_anchor_mode);
    parse_value(w, kvcrush::parse_threshold_mode);
    parse_value(w, kvcrush::parse_representative_rule);
    parse_value(w, kvcrush::parse_pooling_mode);
    parse_value(w, kvcrush::parse_gqa_reduction);
    parse_value(w, kvcrush::parse_signature_heads);
    parse_value(w, kvcrush::parse_crush_split);
  }

  // argv as main() gets it: program name and subcommand first.
  std::vector<char*> argv = {const_cast<char*>("kvcrush"), const_cast<char*>("fuzz")};
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const int argc = static_cast<int>(argv.size()) - 1;
  try {
    const kvcrush_cli::arguments args(argc, argv.data(), 2, sets.valued, sets.switches);
    for (int i = 2; i < argc; ++i) {
      const std::string name = std::string(argv[i]).substr(2);
      KVCRUSH_FUZZ_CHECK(args.has(name));
      if (sets.valued.count(name)) KVCRUSH_FUZZ_CHECK(args.text(name) == argv[++i]);
    }
    for (const std::string& name : sets.valued) {
      if (!args.has(name)) {
        KVCRUSH_FUZZ_CHECK(args.integer(name, 42) == 42);
        KVCRUSH_FUZZ_CHECK(args.text(name, "fallback") == "fallback");
        continue;
      }
      try {
        const std::int64_t v = args.integer(name);
        // Accepted integers are plain decimal numbers.
        const std::string& t = args.text(name);
        KVCRUSH_FUZZ_CHECK(!t.empty() && t.find_first_not_of("-0123456789") == std::string::npos);
        KVCRUSH_FUZZ_CHECK(std::to_string(v).size() <= t.size());
      } catch (const kvcrush_cli::cli_error&) {
      }
      try {
        (void)args.real(name, 0.0);
      } catch (const kvcrush_cli::cli_error&) {
      }
    }
  } catch (const kvcrush_cli::cli_error&) {
  }
  return 0;
}

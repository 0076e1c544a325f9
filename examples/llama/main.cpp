// kvcrush-llama: greedy decoding of a llama2.c checkpoint, printing the text
// exactly as llama2.c's `run` does at temperature 0.
//
//   kvcrush-llama [--model PATH] [--tokenizer PATH] [--steps N] [--prompt TEXT]
//
// stdout receives the text alone, so that redirecting it gives llama2.c's
// output byte for byte (without run's final newline, which is added only
// when stdout is a terminal). Exit codes: 0 success, 1 a file or runtime
// error, 2 bad arguments.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

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

constexpr int exit_runtime_error = 1;
constexpr int exit_usage = 2;
constexpr long default_steps = 256;  // llama2.c's default

struct options {
  std::string model = KVCRUSH_LLAMA_DEFAULT_MODEL;
  std::string tokenizer = KVCRUSH_LLAMA_DEFAULT_TOKENIZER;
  long steps = default_steps;
  std::string prompt;
  bool paged = false;
  bool help = false;
};

struct usage_error {
  std::string message;
};

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "usage: kvcrush-llama [--model PATH] [--tokenizer PATH] [--steps N] [--prompt TEXT] [--paged]\n"
               "  --model PATH      llama2.c checkpoint (default %s)\n"
               "  --tokenizer PATH  llama2.c tokenizer (default %s)\n"
               "  --steps N         positions to run, prompt included (default %ld; 0 or more than\n"
               "                    the model's seq_len means seq_len, as in llama2.c)\n"
               "  --prompt TEXT     text to start from (default: none, start from BOS)\n"
               "  --paged           keep the KV cache in kvcrush's paged cache (blocks of 16 tokens)\n"
               "                    instead of the contiguous one; the output is the same\n",
               KVCRUSH_LLAMA_DEFAULT_MODEL, KVCRUSH_LLAMA_DEFAULT_TOKENIZER, default_steps);
}

long parse_steps(const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < 0 || text.front() == '-' || text.front() == '+' ||
      text.front() == ' ') {
    throw usage_error{"--steps needs a non-negative integer, got '" + text + "'"};
  }
  return value;
}

options parse_arguments(int argc, char** argv) {
  options parsed;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      parsed.help = true;
      continue;
    }
    if (flag == "--paged") {
      parsed.paged = true;
      continue;
    }
    const bool known = flag == "--model" || flag == "--tokenizer" || flag == "--steps" || flag == "--prompt";
    if (!known) throw usage_error{"unknown argument '" + std::string(flag) + "' (see --help)"};
    if (i + 1 >= argc) throw usage_error{std::string(flag) + " needs a value"};
    const std::string value = argv[++i];
    if (flag == "--model") parsed.model = value;
    else if (flag == "--tokenizer") parsed.tokenizer = value;
    else if (flag == "--steps") parsed.steps = parse_steps(value);
    else parsed.prompt = value;
  }
  return parsed;
}

bool stdout_is_terminal() {
#if defined(__unix__) || defined(__APPLE__)
  return isatty(STDOUT_FILENO) != 0;
#else
  return false;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  options opts;
  try {
    opts = parse_arguments(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "kvcrush-llama: %s\n", e.message.c_str());
    return exit_usage;
  }
  if (opts.help) {
    print_usage(stdout);
    return 0;
  }
  try {
    const kvcrush_llama::model model = kvcrush_llama::model::load(opts.model);
    const kvcrush_llama::tokenizer vocabulary =
        kvcrush_llama::tokenizer::load(opts.tokenizer, model.config().vocab_size);
    const long seq_len = static_cast<long>(model.config().seq_len);
    const long steps = opts.steps == 0 || opts.steps > seq_len ? seq_len : opts.steps;
    const auto& c = model.config();
    kvcrush_llama::engine engine =
        opts.paged ? kvcrush_llama::engine(model, std::make_unique<kvcrush_llama::paged_store>(
                                                      c.n_layers, c.n_kv_heads, c.head_dim(), steps, 16))
                   : kvcrush_llama::engine(model, steps);
    kvcrush_llama::generate_greedy(engine, vocabulary, opts.prompt, steps, [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    if (stdout_is_terminal()) std::fputc('\n', stdout);
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      std::fprintf(stderr, "kvcrush-llama: error writing the output\n");
      return exit_runtime_error;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvcrush-llama: %s\n", e.what());
    return exit_runtime_error;
  }
  return 0;
}

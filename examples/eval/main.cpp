// kvcrush-eval: what each eviction policy costs in accuracy at a given
// memory budget, on a real pretrained model (see options.hpp for the flags,
// runner.hpp for one run).
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "batch_runner.hpp"
#include "corpus.hpp"
#include "kvcrush/kvcrush.hpp"
#include "model.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "tokenizer.hpp"

namespace {

using namespace kvcrush_eval;

kvcrush::policy_config configure(const std::string& name, const options& o) {
  kvcrush::policy_config cfg = kvcrush::policy_config::parse(name);
  cfg.crush = o.crush;
  cfg.seed = o.seed;
  cfg.window.kernel = 7;
  // The engine's RoPE (llama2.c): pairs (2i, 2i+1), theta 10000.
  cfg.expected_attention.rope_interleaved = true;
  return cfg;
}

std::vector<job> plan(const options& o) {
  std::vector<job> jobs;
  if (!o.ablation) {
    for (const auto& name : o.policies) {
      if (name == "full") {
        jobs.push_back({name, "", configure(name, o), 1.0});
        continue;
      }
      for (double b : o.budgets) jobs.push_back({name, "", configure(name, o), b});
    }
    // Equal-byte rows: every storage kind at every byte budget, when asked
    // (options.hpp: byte_rows).
    for (const auto& name : o.byte_rows ? o.byte_policies : std::vector<std::string>{}) {
      for (const auto& storage : o.precisions) {
        const precision p = parse_precision(storage);
        if (name == "streaming" && p.kind == storage_kind::mixed) {
          throw usage_error("streaming ranks no tokens, so it has no " + storage + " tiers");
        }
        for (double b : o.byte_budgets) jobs.push_back({name, "", configure(name, o), b, true, p});
      }
    }
    return jobs;
  }
  // The KVCrush ablation, at one budget, for each base X of
  // --ablation-bases: X, then X+kvcrush over signature heads x split (crush
  // fraction 0.25, 0.5, or the adaptive split) x anchor x representative.
  jobs.push_back({"full", "", configure("full", o), 1.0});
  for (const auto& base : o.ablation_bases) {
    jobs.push_back({base, "", configure(base, o), o.ablation_budget});
    const std::string composed = base + "+kvcrush";
    for (auto heads : {kvcrush::signature_heads::kv, kvcrush::signature_heads::query}) {
      for (double fraction : {0.25, 0.5, -1.0}) {  // -1: adaptive
        for (auto anchor : {kvcrush::anchor_mode::mean, kvcrush::anchor_mode::inv_mean, kvcrush::anchor_mode::zeros,
                            kvcrush::anchor_mode::ones, kvcrush::anchor_mode::alternating,
                            kvcrush::anchor_mode::random}) {
          for (auto rule : {kvcrush::representative_rule::bucket_center, kvcrush::representative_rule::bucket_start,
                            kvcrush::representative_rule::linspace, kvcrush::representative_rule::stride}) {
            job j{composed, "", configure(composed, o), o.ablation_budget};
            j.config.crush.heads = heads;
            j.config.crush.anchor = anchor;
            j.config.crush.representative = rule;
            std::string split;
            if (fraction < 0) {
              j.config.crush.split = kvcrush::crush_split::adaptive;
              split = "adaptive " + fixed(j.config.crush.mass, 2);
            } else {
              j.config.crush.split = kvcrush::crush_split::fixed;
              j.config.crush.fraction = fraction;
              split = "crush " + fixed(fraction, 2);
            }
            j.variant = std::string(kvcrush::to_string(heads)) + " heads, " + split + ", " +
                        std::string(kvcrush::to_string(anchor)) + ", " + std::string(kvcrush::to_string(rule));
            jobs.push_back(j);
          }
        }
      }
    }
  }
  return jobs;
}

int run(const options& given) {
  options o = given;
  const std::vector<job> jobs = plan(o);
  // Input: the models, tokenizer and texts. What goes wrong here is the
  // user's to fix (a path, a file, a context a model cannot hold): exit 2.
  struct model_run {
    std::string name;
    std::unique_ptr<kvcrush_llama::model> weights;
    std::vector<text_chunks> corpora;
  };
  std::vector<model_run> runs;
  try {
    for (const auto& path : o.model_paths()) {
      model_run r;
      r.name = stem_of(path);
      r.weights = std::make_unique<kvcrush_llama::model>(kvcrush_llama::model::load(path));
      const auto& c = r.weights->config();
      const kvcrush_llama::tokenizer vocabulary = kvcrush_llama::tokenizer::load(o.tokenizer, c.vocab_size);
      const long context = o.context == 0 ? static_cast<long>(c.seq_len) : o.context;
      if (context > c.seq_len) {
        throw usage_error("--context " + std::to_string(context) + " exceeds the " + std::to_string(c.seq_len) +
                          " positions of " + path);
      }
      // Every budget must hold the tokens always kept (StreamingLLM keeps
      // sink + the rest of its budget, so it needs one token more than the
      // sink; see runner.hpp's budget_of).
      for (const auto& j : jobs) {
        if (j.bytes || j.config.base == kvcrush::base_policy::full) continue;
        const auto tokens = static_cast<long>(j.budget * static_cast<double>(context));
        const bool streaming = j.config.base == kvcrush::base_policy::streaming && !j.config.kvcrush;
        const long needed = streaming ? o.sink + 1 : o.sink + o.window;
        if (tokens < needed) {
          throw usage_error("budget " + fixed(j.budget, 3) + " of the " + std::to_string(context) +
                            "-token context is " + std::to_string(tokens) + " tokens, fewer than " + j.policy +
                            " keeps always (" + std::to_string(needed) + ": --sink" +
                            (streaming ? " + 1" : " + --window") + ")");
        }
      }
      for (const auto& text : o.text_paths(path)) {
        r.corpora.push_back(make_chunks(text, vocabulary, context, o.chunks_for(context)));
      }
      runs.push_back(std::move(r));
    }
  } catch (const usage_error&) {
    throw;
  } catch (const std::exception& e) {
    throw usage_error(e.what());
  }
  long total = 0;
  for (const auto& r : runs) {
    for (const auto& corpus : r.corpora) {
      for (const auto& chunk : corpus.chunks) {
        total += static_cast<long>((jobs.size() + 1) * (chunk.size() - 1)) * work_per_token(r.weights->config());
      }
    }
  }
  progress_bar bar(total, o.progress);
  kvcrush::thread_executor executor(static_cast<kvcrush::index_t>(o.threads));
  std::fprintf(stderr, "kvcrush-eval: %zu runs per chunk, up to %ld decoded together on %ld threads, %s kernels\n",
               jobs.size(), std::max<long>(o.batch, static_cast<long>(jobs.size() + 1)),
               static_cast<long>(executor.workers()), std::string(kvcrush::isa::name()).c_str());

  std::vector<result_row> rows;
  for (const auto& r : runs) {
    corpus_runner runner(*r.weights, o, executor);
    for (const auto& corpus : r.corpora) {
      std::vector<result_row> text_rows(jobs.size());
      runner.run(corpus, jobs, text_rows, bar, r.name + ": " + corpus.name);
      for (auto& row : text_rows) row.model = r.name;
      rows.insert(rows.end(), text_rows.begin(), text_rows.end());
    }
  }
  add_statistics(rows);

  const std::string table = o.format == "csv" ? csv(rows) : markdown(rows, o.ablation);
  if (o.output.empty()) {
    std::cout << table;
  } else {
    std::ofstream out(o.output);
    if (!(out << table)) throw usage_error("cannot write " + o.output);
  }
  if (!o.plot.empty()) {
    std::ofstream out(o.plot);
    if (!(out << svg_plot(rows))) throw usage_error("cannot write " + o.plot);
  }
  return 0;
}

}  // namespace

int KVCRUSH_TOOL_ENTRY(int argc, char** argv) {
  options o;
  try {
    o = parse_options(argc, argv);
  } catch (const usage_error& e) {
    if (std::string(e.what()).empty()) {
      std::cout << usage();
      return 0;
    }
    std::cerr << "kvcrush-eval: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kvcrush-eval: error: " << e.what() << "\n";
    return 2;
  }
  try {
    return run(o);
  } catch (const usage_error& e) {
    std::cerr << "kvcrush-eval: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kvcrush-eval: error: " << e.what() << "\n";
    return 1;
  }
}

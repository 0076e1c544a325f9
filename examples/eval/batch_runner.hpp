// All the runs of a text, decoded together by the batched engine.
//
// A chunk's runs share everything up to the compression: the prefill runs
// with the full cache whatever the policy. So the prefill runs once per
// chunk, on a sequence of its own, and each run's lane receives what it
// would have computed itself: the prefill's key/value rows (stored the way
// its store holds them: float32, float16 or quantized) and the prefill's
// attention events (for its eviction controller). Then every lane compresses
// to its budget and the lanes decode the rest of the chunk together, one
// batched step per position: each lane makes room, the batched engine
// advances every lane by the chunk's next token, and each lane scores its
// prediction against the full cache's, which is itself a lane of the batch.
// Several chunks share a batch when they fit in --batch sequences.
//
// The prefill is computed in float32 for every run, as an engine computes a
// prompt before it stores the cache; a quantized run's cache holds the
// quantized prefill rows from then on.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "batch_engine.hpp"
#include "byte_runner.hpp"
#include "corpus.hpp"
#include "kvcrush/cache/batch.hpp"
#include "kvcrush/cache/executor.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "runner.hpp"

namespace kvcrush_eval {

// What to run: a policy at a token budget (a fraction of the context), or
// a ranking policy with a storage kind at a byte budget.
struct job {
  std::string policy;
  std::string variant;
  kvcrush::policy_config config;
  double budget;
  bool bytes = false;  // budget is a fraction of the full cache's float16 bytes
  precision storage{};
};

inline std::unique_ptr<run_lane> make_lane(const kvcrush_llama::model_config& c, const options& o, const job& j,
                                           index_t length) {
  if (j.bytes) return make_byte_lane(c, o, j.config, j.storage, j.budget, length);
  const auto tokens = static_cast<index_t>(j.budget * static_cast<double>(length));
  return make_policy_lane(c, o, j.config, tokens, length);
}

// The prefill's events of one token, per layer, copied for the lanes to
// replay: the attention rows and queries, and the token's key/value rows.
class prefill_recorder final : public kvcrush_llama::attention_observer {
 public:
  explicit prefill_recorder(const kvcrush_llama::model_config& c)
      : layers_(static_cast<std::size_t>(c.n_layers)), heads_(c.n_heads), kv_heads_(c.n_kv_heads),
        head_dim_(c.head_dim()) {}

  void on_attention(const kvcrush_llama::attention_event& event) override {
    layer_record& r = layers_[static_cast<std::size_t>(event.layer)];
    const index_t width = event.probabilities.extent(1);
    r.width = width;
    r.position = event.position;
    r.probabilities.resize(static_cast<std::size_t>(heads_ * width));
    r.queries.resize(static_cast<std::size_t>(heads_ * head_dim_));
    r.keys.resize(static_cast<std::size_t>(kv_heads_ * head_dim_));
    r.values.resize(r.keys.size());
    for (index_t h = 0; h < heads_; ++h) {
      for (index_t t = 0; t < width; ++t) r.probabilities[static_cast<std::size_t>(h * width + t)] = event.probabilities(h, t);
      for (index_t j = 0; j < head_dim_; ++j) r.queries[static_cast<std::size_t>(h * head_dim_ + j)] = event.queries(h, j);
    }
    // The token's own row is the newest one of the prefill's contiguous cache.
    for (index_t h = 0; h < kv_heads_; ++h) {
      const float* k = event.keys.row(h, width - 1);
      const float* v = event.values.row(h, width - 1);
      std::copy(k, k + head_dim_, r.keys.begin() + h * head_dim_);
      std::copy(v, v + head_dim_, r.values.begin() + h * head_dim_);
    }
    r.lengths.assign(static_cast<std::size_t>(kv_heads_), width);
  }

  // Appends the recorded token to a lane's store, layer by layer, and shows
  // its observer the event it would have seen.
  void replay(kvcrush_llama::sequence& s) const {
    for (index_t l = 0; l < static_cast<index_t>(layers_.size()); ++l) {
      const layer_record& r = layers_[static_cast<std::size_t>(l)];
      s.append(l, r.keys.data(), r.values.data());
      if (s.observer() == nullptr) continue;
      kvcrush_llama::attention_event event;
      event.layer = l;
      event.position = r.position;
      event.probabilities = kvcrush::make_matrix_view<const float>(r.probabilities.data(), heads_, r.width);
      event.queries = kvcrush::make_matrix_view<const float>(r.queries.data(), heads_, head_dim_);
      event.head_lengths = kvcrush::make_vector_view<const index_t>(r.lengths.data(), kv_heads_);
      s.observer()->on_attention(event);
    }
    s.advance();
  }

 private:
  struct layer_record {
    index_t width = 0, position = 0;
    std::vector<float> probabilities, queries, keys, values;
    std::vector<index_t> lengths;
  };
  std::vector<layer_record> layers_;
  index_t heads_, kv_heads_, head_dim_;
};

// The progress bar's weight of one token of one run: layers x query heads
// x context / 1024, the scale of a token's attention and eviction work
// (a token of austen-kjv-14m costs about ten of stories260K).
inline long work_per_token(const kvcrush_llama::model_config& c) {
  return std::max<long>(1, static_cast<long>(c.n_layers * c.n_heads * c.seq_len) / 1024);
}

// Runs every job on every chunk of a corpus; rows[j] gets job j's results
// chunk by chunk, in chunk order (so they do not depend on the batching).
class corpus_runner {
 public:
  corpus_runner(const kvcrush_llama::model& m, const options& o, kvcrush::executor& ex)
      : model_(&m), options_(&o), executor_(&ex), batch_(m, ex), spaces_(ex) {}

  // `label` names the runs on the progress bar (model and text).
  void run(const text_chunks& corpus, const std::vector<job>& jobs, std::vector<result_row>& rows, progress_bar& bar,
           const std::string& label) {
    const std::size_t per_chunk = jobs.size() + 1;  // + the full cache
    const std::size_t fit = std::max<std::size_t>(1, static_cast<std::size_t>(options_->batch) / per_chunk);
    // Groups as even as can be: 4 chunks that fit 3 at a time run as 2 + 2.
    const std::size_t n = corpus.chunks.size();
    const std::size_t groups = (n + fit - 1) / fit;
    for (std::size_t g = 0, first = 0; g < groups; ++g) {
      const std::size_t last = first + (n - first + (groups - g) - 1) / (groups - g);
      run_group(corpus, first, last, jobs, rows, bar, label);
      first = last;
    }
  }

 private:
  struct chunk_state {
    const std::vector<int>* tokens = nullptr;
    index_t length = 0, prefill = 0;
    std::unique_ptr<kvcrush_llama::sequence> prefill_sequence;
    std::unique_ptr<prefill_recorder> recorder;
    std::unique_ptr<run_lane> full;
    std::vector<std::unique_ptr<run_lane>> lanes;  // one per job
  };

  void run_group(const text_chunks& corpus, std::size_t first, std::size_t last, const std::vector<job>& jobs,
                 std::vector<result_row>& rows, progress_bar& bar, const std::string& name) {
    const kvcrush_llama::model_config& c = model_->config();
    const options& o = *options_;
    std::vector<chunk_state> chunks(last - first);
    index_t longest = 0;
    for (std::size_t k = 0; k < chunks.size(); ++k) {
      chunk_state& s = chunks[k];
      s.tokens = &corpus.chunks[first + k];
      s.length = static_cast<index_t>(s.tokens->size());
      s.prefill = prefill_length(o, s.length);
      s.prefill_sequence = std::make_unique<kvcrush_llama::sequence>(
          c, std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), s.length));
      s.recorder = std::make_unique<prefill_recorder>(c);
      s.prefill_sequence->set_observer(s.recorder.get());
      s.full = std::make_unique<full_lane>(c, s.length);
      for (const job& j : jobs) s.lanes.push_back(make_lane(c, o, j, s.length));
      longest = std::max(longest, s.length);
    }
    const std::string label = name + " chunks " + std::to_string(first + 1) + "-" + std::to_string(last);

    for (index_t p = 0; p + 1 < longest; ++p) {
      // Chunks still in their prefill: one batched step for their prefill
      // sequences, then every lane replays it.
      std::vector<kvcrush_llama::sequence*> sequences;
      std::vector<int> tokens;
      std::vector<chunk_state*> prefilling, decoding;
      for (chunk_state& s : chunks) {
        if (p < s.prefill) {
          prefilling.push_back(&s);
          sequences.push_back(s.prefill_sequence.get());
          tokens.push_back((*s.tokens)[static_cast<std::size_t>(p)]);
        } else if (p + 1 < s.length) {
          decoding.push_back(&s);
        }
      }
      if (!prefilling.empty()) {
        batch_.forward(sequences, tokens);
        std::vector<std::pair<const prefill_recorder*, run_lane*>> replays;
        for (chunk_state* s : prefilling) {
          replays.emplace_back(s->recorder.get(), s->full.get());
          for (auto& lane : s->lanes) replays.emplace_back(s->recorder.get(), lane.get());
        }
        kvcrush::parallel_for(*executor_, static_cast<index_t>(replays.size()), [&](index_t i) {
          replays[static_cast<std::size_t>(i)].first->replay(replays[static_cast<std::size_t>(i)].second->seq());
        });
        bar.advance(static_cast<long>(replays.size()) * work_per_token(c), label + ": prefill");
      }
      if (decoding.empty()) continue;

      // Chunks decoding: compress right after the prefill, then room for
      // the token in every lane, one batched step, and the scores.
      std::vector<run_lane*> lanes;
      std::vector<char> compressing;
      for (chunk_state* s : decoding) {
        const bool first_decode = p == s->prefill;
        if (first_decode) s->prefill_sequence.reset();  // its rows live on in the lanes
        lanes.push_back(s->full.get());
        for (auto& lane : s->lanes) lanes.push_back(lane.get());
        compressing.resize(lanes.size(), first_decode ? 1 : 0);
      }
      kvcrush::parallel_for(*executor_, static_cast<index_t>(lanes.size()), [&](index_t i, index_t worker) {
        run_lane& lane = *lanes[static_cast<std::size_t>(i)];
        if (compressing[static_cast<std::size_t>(i)] != 0) lane.compress(spaces_[worker]);
        lane.make_room(spaces_[worker]);
      });
      sequences.clear();
      tokens.clear();
      for (chunk_state* s : decoding) {
        const int token = (*s->tokens)[static_cast<std::size_t>(p)];
        sequences.push_back(&s->full->seq());
        tokens.push_back(token);
        for (auto& lane : s->lanes) {
          sequences.push_back(&lane->seq());
          tokens.push_back(token);
        }
      }
      batch_.forward(sequences, tokens);
      // Lane order in the batch: per chunk, the full cache then its jobs.
      std::vector<Eigen::VectorXd> full(decoding.size());
      std::vector<index_t> offsets(decoding.size());
      index_t at = 0;
      for (std::size_t k = 0; k < decoding.size(); ++k) {
        offsets[k] = at;
        full[k] = log_softmax(batch_.logits(at));
        at += static_cast<index_t>(decoding[k]->lanes.size()) + 1;
      }
      kvcrush::parallel_for(*executor_, at, [&](index_t i) {
        const std::size_t k = static_cast<std::size_t>(
            std::upper_bound(offsets.begin(), offsets.end(), i) - offsets.begin() - 1);
        const chunk_state& s = *decoding[k];
        const int target = (*s.tokens)[static_cast<std::size_t>(p + 1)];
        run_lane& lane = i == offsets[k] ? *s.full : *s.lanes[static_cast<std::size_t>(i - offsets[k] - 1)];
        lane.score(full[k], batch_.logits(i), target);
      });
      bar.advance(static_cast<long>(at) * work_per_token(c), label);
    }

    for (std::size_t k = 0; k < chunks.size(); ++k) {
      for (std::size_t j = 0; j < jobs.size(); ++j) {
        const run_lane& lane = *chunks[k].lanes[j];
        result_row& row = rows[j];
        lane.describe(row);
        row.text = corpus.name;
        row.policy = jobs[j].policy;
        row.variant = jobs[j].variant;
        row.budget = jobs[j].budget;
        row.peak_tokens = std::max(row.peak_tokens, lane.result().peak_tokens);
        row.over_budget = std::max(row.over_budget, lane.result().over_budget);
        row.acc.merge(lane.result().acc);
        row.chunks.push_back(lane.result().acc);
      }
    }
  }

  const kvcrush_llama::model* model_;
  const options* options_;
  kvcrush::executor* executor_;
  kvcrush_llama::batch_engine batch_;
  kvcrush::worker_workspaces spaces_;
};

}  // namespace kvcrush_eval

// Result tables (Markdown or CSV) and the accuracy-against-budget plot (SVG).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "metrics.hpp"
#include "statistics.hpp"

namespace kvcrush_eval {

struct result_row {
  std::string model;      // the checkpoint's file stem
  std::string text;
  std::string policy;     // e.g. "snapkv+kvcrush"
  std::string variant;    // ablation settings, empty otherwise
  double budget = 1.0;    // fraction of the context
  long budget_tokens = 0; // per KV head and layer
  double peak_tokens = 0;  // most tokens a layer held while decoding (mean over KV heads)
  double over_budget = -1e30;  // most a layer held above its own budget
  accuracy acc;
  // Equal-byte rows (precision not empty): budget is a fraction of the full
  // cache's float16 bytes; budget_tokens = high_tokens + low_tokens.
  std::string precision;
  long budget_bytes = 0;   // per layer
  long high_tokens = 0;    // float16 tokens (all tokens for intN storage)
  long low_tokens = 0;     // quantized tokens of mixed precision
  double peak_bytes = 0;   // most K/V bytes a layer held while decoding
  // One accuracy per chunk (acc is their pooled sum), for the bootstrap.
  std::vector<accuracy> chunks;
  figure_intervals ci;      // 95% bootstrap intervals of the row's figures
  // X+kvcrush rows: the difference from X on the same chunks and tokens.
  std::string paired_with;  // X, or empty when the row has no pair
  figures paired;           // this row's figures minus X's
  figure_intervals paired_ci;
};

// The bootstrap intervals of every row, and for every token-budget
// X+kvcrush row its paired difference from the X row of the same model, text and
// budget (same chunks, same resamples).
inline void add_statistics(std::vector<result_row>& rows) {
  for (auto& r : rows) {
    if (!r.chunks.empty()) r.ci = bootstrap(r.chunks);
  }
  const std::string suffix = "+kvcrush";
  for (auto& r : rows) {
    const auto at = r.policy.find(suffix);
    if (at == std::string::npos || !r.precision.empty() || r.chunks.empty()) continue;
    const std::string base = r.policy.substr(0, at) + r.policy.substr(at + suffix.size());
    for (const auto& b : rows) {
      if (b.model != r.model || b.text != r.text || b.policy != base || !b.variant.empty() || !b.precision.empty() ||
          std::abs(b.budget - r.budget) > 1e-12 || b.chunks.size() != r.chunks.size()) {
        continue;
      }
      r.paired_with = base;
      r.paired = difference(figures_of(r.acc), figures_of(b.acc));
      r.paired_ci = bootstrap_paired(r.chunks, b.chunks);
      break;
    }
  }
}

// What a row's storage is, in words.
inline std::string storage_label(const result_row& r) {
  if (r.precision == "fp16") return "float16, evict";
  if (r.precision.rfind("int", 0) == 0) return r.precision + " KIVI, evict";
  const std::string bits = r.precision.substr(6);
  return r.precision.rfind("crush-", 0) == 0 ? "float16 + " + bits + " KVCrush reps" : "float16 + " + bits + " next";
}


inline std::string fixed(double v, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, v);
  return buffer;
}

inline std::string signed_percent(double change) {
  return (change >= 0 ? "+" : "") + fixed(100.0 * change, 2) + "%";
}

inline std::string signed_fixed(double v, int digits) { return (v >= 0 ? "+" : "") + fixed(v, digits); }

// A fraction as signed percentage points, e.g. +0.42.
inline std::string signed_points(double fraction) { return signed_fixed(100.0 * fraction, 2); }

// "[low, high]" of a fraction in percent (signed for changes).
inline std::string percent_interval(const interval& i, bool sign) {
  return "[" + (sign ? signed_fixed(100.0 * i.low, 2) : fixed(100.0 * i.low, 2)) + ", " +
         (sign ? signed_fixed(100.0 * i.high, 2) : fixed(100.0 * i.high, 2)) + "]";
}
inline std::string points_interval(const interval& i) {
  return "[" + signed_points(i.low) + ", " + signed_points(i.high) + "]";
}
inline std::string signed_interval(const interval& i, int digits) {
  return "[" + signed_fixed(i.low, digits) + ", " + signed_fixed(i.high, digits) + "]";
}
inline std::string plain_interval(const interval& i, int digits) {
  return "[" + fixed(i.low, digits) + ", " + fixed(i.high, digits) + "]";
}

inline std::string budget_label(double b) {
  if (b >= 1.0) return "1";
  const double inverse = 1.0 / b;
  if (std::abs(inverse - std::round(inverse)) < 1e-9) return "1/" + std::to_string(static_cast<long>(std::round(inverse)));
  return fixed(b, 3);
}

// The table a row belongs to: model and text.
inline std::string table_of(const result_row& r) { return r.model.empty() ? r.text : r.model + ": " + r.text; }

inline std::string markdown(const std::vector<result_row>& rows, bool with_variant) {
  std::ostringstream out;
  std::vector<std::string> texts;
  for (const auto& r : rows)
    if (std::find(texts.begin(), texts.end(), table_of(r)) == texts.end()) texts.push_back(table_of(r));
  for (const auto& text : texts) {
    out << "### " << text << "\n\n";
    out << "| policy |" << (with_variant ? " variant |" : "")
        << " budget | tokens kept | perplexity | Δ perplexity | top-1 agreement | KL(full‖policy) |\n";
    out << "|---|" << (with_variant ? "---|" : "") << "---|---:|---:|---:|---:|---:|\n";
    for (const auto& r : rows) {
      if (table_of(r) != text || !r.precision.empty()) continue;
      out << "| " << r.policy << " |" << (with_variant ? " " + r.variant + " |" : "") << " " << budget_label(r.budget)
          << " | " << r.budget_tokens << " | " << fixed(r.acc.perplexity(), 3) << " | "
          << signed_percent(r.acc.perplexity_change()) << " " << percent_interval(r.ci.perplexity_change, true)
          << " | " << fixed(100.0 * r.acc.agreement(), 2) << "% " << percent_interval(r.ci.agreement, false) << " | "
          << fixed(r.acc.mean_kl(), 4) << " " << plain_interval(r.ci.kl, 4) << " |\n";
    }
    const bool any_pair = std::any_of(rows.begin(), rows.end(),
                                      [&](const result_row& r) { return table_of(r) == text && !r.paired_with.empty(); });
    if (any_pair) {
      out << "\nKVCrush against its base policy on the same chunks and tokens (X+kvcrush minus X; 95% paired "
             "bootstrap intervals over chunks):\n\n";
      out << "| policy |" << (with_variant ? " variant |" : "")
          << " budget | Δ top-1 (points) | Δ KL | Δ of Δ perplexity (points) |\n";
      out << "|---|" << (with_variant ? "---|" : "") << "---|---:|---:|---:|\n";
      for (const auto& r : rows) {
        if (table_of(r) != text || r.paired_with.empty()) continue;
        out << "| " << r.policy << " − " << r.paired_with << " |" << (with_variant ? " " + r.variant + " |" : "")
            << " " << budget_label(r.budget) << " | " << signed_points(r.paired.agreement) << " "
            << points_interval(r.paired_ci.agreement) << " | " << signed_fixed(r.paired.kl, 4) << " "
            << signed_interval(r.paired_ci.kl, 4) << " | " << signed_points(r.paired.perplexity_change) << " "
            << points_interval(r.paired_ci.perplexity_change) << " |\n";
      }
    }
    const bool any_bytes =
        std::any_of(rows.begin(), rows.end(), [&](const result_row& r) { return table_of(r) == text && !r.precision.empty(); });
    if (any_bytes) {
      out << "\nAt equal bytes (fraction of the full cache's float16 K/V bytes, per layer):\n\n";
      out << "| policy | storage | bytes | budget (bytes) | most tokens held (float16 + quantized) | peak bytes | perplexity "
             "| Δ perplexity | top-1 agreement | KL(full‖policy) |\n";
      out << "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
      for (const auto& r : rows) {
        if (table_of(r) != text || r.precision.empty()) continue;
        out << "| " << r.policy << " | " << storage_label(r) << " | " << budget_label(r.budget) << " | " << r.budget_bytes
            << " | " << r.budget_tokens;
        if (r.low_tokens > 0) out << " (" << r.high_tokens << " + " << r.low_tokens << ")";
        out << " | " << static_cast<long>(r.peak_bytes) << " | " << fixed(r.acc.perplexity(), 3) << " | "
            << signed_percent(r.acc.perplexity_change()) << " | " << fixed(100.0 * r.acc.agreement(), 2) << "% | "
            << fixed(r.acc.mean_kl(), 4) << " |\n";
      }
    }
    if (!rows.empty()) {
      for (const auto& r : rows) {
        if (table_of(r) == text) {
          out << "\nFull-cache perplexity " << fixed(r.acc.perplexity_full(), 3) << " over " << r.acc.positions
              << " predicted tokens in " << r.chunks.size()
              << " chunks. Brackets: 95% percentile-bootstrap intervals over chunks (" << bootstrap_resamples
              << " resamples, fixed seed).\n\n";
          break;
        }
      }
    }
  }
  return out.str();
}

inline std::string csv(const std::vector<result_row>& rows) {
  std::ostringstream out;
  out << "model,text,policy,variant,budget,budget_tokens,peak_tokens,over_budget,positions,perplexity_full,perplexity,"
         "perplexity_change,top1_agreement,kl,precision,budget_bytes,high_tokens,low_tokens,peak_bytes,chunks,"
         "perplexity_change_low,perplexity_change_high,top1_low,top1_high,kl_low,kl_high,paired_with,"
         "perplexity_change_diff,perplexity_change_diff_low,perplexity_change_diff_high,top1_diff,top1_diff_low,"
         "top1_diff_high,kl_diff,kl_diff_low,kl_diff_high\n";
  for (const auto& r : rows) {
    out << r.model << "," << r.text << "," << r.policy << "," << r.variant << "," << fixed(r.budget, 6) << "," << r.budget_tokens << ","
        << fixed(r.peak_tokens, 2) << "," << fixed(r.over_budget, 2) << "," << r.acc.positions << "," << fixed(r.acc.perplexity_full(), 6) << ","
        << fixed(r.acc.perplexity(), 6) << "," << fixed(r.acc.perplexity_change(), 6) << ","
        << fixed(r.acc.agreement(), 6) << "," << fixed(r.acc.mean_kl(), 6) << "," << r.precision << ","
        << r.budget_bytes << "," << r.high_tokens << "," << r.low_tokens << "," << fixed(r.peak_bytes, 0) << ","
        << r.chunks.size() << "," << fixed(r.ci.perplexity_change.low, 6) << ","
        << fixed(r.ci.perplexity_change.high, 6) << "," << fixed(r.ci.agreement.low, 6) << ","
        << fixed(r.ci.agreement.high, 6) << "," << fixed(r.ci.kl.low, 6) << "," << fixed(r.ci.kl.high, 6) << ","
        << r.paired_with;
    if (r.paired_with.empty()) {
      out << ",,,,,,,,,\n";
      continue;
    }
    out << "," << fixed(r.paired.perplexity_change, 6) << "," << fixed(r.paired_ci.perplexity_change.low, 6) << ","
        << fixed(r.paired_ci.perplexity_change.high, 6) << "," << fixed(r.paired.agreement, 6) << ","
        << fixed(r.paired_ci.agreement.low, 6) << "," << fixed(r.paired_ci.agreement.high, 6) << ","
        << fixed(r.paired.kl, 6) << "," << fixed(r.paired_ci.kl.low, 6) << "," << fixed(r.paired_ci.kl.high, 6)
        << "\n";
  }
  return out.str();
}

// One panel per text: top-1 agreement with the full cache against the
// budget (log2 axis), one line per policy; +kvcrush dashed in its base's
// colour, so each composition sits next to what it composes.
inline std::string svg_plot(const std::vector<result_row>& rows) {
  std::vector<std::string> texts, policies;
  for (const auto& r : rows) {
    if (!r.precision.empty()) continue;  // equal-byte rows have their own axis
    if (std::find(texts.begin(), texts.end(), table_of(r)) == texts.end()) texts.push_back(table_of(r));
    if (r.policy != "full" && std::find(policies.begin(), policies.end(), r.policy) == policies.end())
      policies.push_back(r.policy);
  }
  std::set<double> budgets;
  for (const auto& r : rows)
    if (r.precision.empty()) budgets.insert(r.budget);
  budgets.insert(1.0);
  const double x_min = std::log2(*budgets.begin()), x_max = 0.0;
  const int panel_w = 420, panel_h = 300, margin_l = 60, margin_t = 50, legend_w = 190;
  const int width = margin_l + static_cast<int>(texts.size()) * (panel_w + 40) + legend_w;
  const int height = margin_t + panel_h + 70;
  static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::map<std::string, std::string> colour;
  int next = 0;
  for (const auto& p : policies) {
    const std::string base = p.substr(0, p.find('+'));
    if (!colour.count(base)) colour[base] = palette[next++ % 10];
  }
  // y range: the lowest agreement, rounded down to 10%.
  double y_min = 100.0;
  for (const auto& r : rows)
    if (r.precision.empty()) y_min = std::min(y_min, 100.0 * r.acc.agreement());
  y_min = std::max(0.0, std::floor(y_min / 10.0) * 10.0);
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << margin_l << "\" y=\"22\" font-size=\"15\">Top-1 agreement with the full cache vs. KV budget "
       "(fraction of the context)</text>\n";
  for (std::size_t p = 0; p < texts.size(); ++p) {
    const double x0 = margin_l + static_cast<double>(p) * (panel_w + 40), y0 = margin_t;
    auto X = [&](double b) { return x0 + (std::log2(b) - x_min) / (x_max - x_min) * panel_w; };
    auto Y = [&](double a) { return y0 + panel_h - (a - y_min) / (100.0 - y_min) * panel_h; };
    s << "<text x=\"" << x0 << "\" y=\"" << y0 - 8 << "\" font-weight=\"bold\">" << texts[p] << "</text>\n";
    s << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << panel_w << "\" height=\"" << panel_h
      << "\" fill=\"none\" stroke=\"#444\"/>\n";
    for (double yv = y_min; yv <= 100.0 + 1e-9; yv += 10.0) {
      s << "<line x1=\"" << x0 << "\" x2=\"" << x0 + panel_w << "\" y1=\"" << Y(yv) << "\" y2=\"" << Y(yv)
        << "\" stroke=\"#ddd\"/><text x=\"" << x0 - 6 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << yv
        << "%</text>\n";
    }
    for (double b : budgets) {
      s << "<text x=\"" << X(b) << "\" y=\"" << y0 + panel_h + 16 << "\" text-anchor=\"middle\">" << budget_label(b)
        << "</text>\n";
    }
    for (const auto& policy : policies) {
      std::vector<std::pair<double, double>> points;
      for (const auto& r : rows)
        if (table_of(r) == texts[p] && r.policy == policy && r.variant.empty() && r.precision.empty()) points.push_back({r.budget, 100.0 * r.acc.agreement()});
      points.push_back({1.0, 100.0});  // every policy keeps everything at budget 1
      std::sort(points.begin(), points.end());
      const std::string base = policy.substr(0, policy.find('+'));
      const bool dashed = policy.find("+kvcrush") != std::string::npos;
      s << "<polyline fill=\"none\" stroke=\"" << colour[base] << "\" stroke-width=\"2\""
        << (dashed ? " stroke-dasharray=\"6 4\"" : "") << " points=\"";
      for (const auto& [b, a] : points) s << X(b) << "," << Y(a) << " ";
      s << "\"/>\n";
      for (const auto& [b, a] : points)
        s << "<circle cx=\"" << X(b) << "\" cy=\"" << Y(a) << "\" r=\"2.5\" fill=\"" << colour[base] << "\"/>\n";
    }
  }
  const double lx = margin_l + static_cast<double>(texts.size()) * (panel_w + 40);
  for (std::size_t i = 0; i < policies.size(); ++i) {
    const double ly = margin_t + 10 + static_cast<double>(i) * 18;
    const std::string base = policies[i].substr(0, policies[i].find('+'));
    const bool dashed = policies[i].find("+kvcrush") != std::string::npos;
    s << "<line x1=\"" << lx << "\" x2=\"" << lx + 28 << "\" y1=\"" << ly << "\" y2=\"" << ly << "\" stroke=\""
      << colour[base] << "\" stroke-width=\"2\"" << (dashed ? " stroke-dasharray=\"6 4\"" : "") << "/><text x=\""
      << lx + 34 << "\" y=\"" << ly + 4 << "\">" << policies[i] << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace kvcrush_eval

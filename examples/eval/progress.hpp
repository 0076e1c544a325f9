// A one-line progress bar on stderr with the time left (redrawn in place on
// a terminal at most every 0.2 s, one line per 10% otherwise, so CI logs
// stay short). The time left assumes the remaining work goes at the
// average pace so far.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace kvcrush_eval {

class progress_bar {
 public:
  progress_bar(long total, bool enabled)
      : total_(total), enabled_(enabled), tty_(isatty(2) != 0), start_(std::chrono::steady_clock::now()) {}

  // `done` more units of work, the current one described by `what`.
  void advance(long done, const std::string& what) {
    done_ += done;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const long percent = total_ ? done_ * 100 / total_ : 100;
    const bool finished = done_ >= total_;
    // The time left once 2% is done: the first steps (prefill) say little
    // about the pace of the rest.
    const std::string eta = done_ * 50 >= total_ && !finished ? " ETA " + clock(elapsed * static_cast<double>(total_ - done_) /
                                                                    static_cast<double>(done_))
                                                   : "";
    if (tty_) {
      if (!finished && std::chrono::duration<double>(now - last_draw_).count() < 0.2) return;
      last_draw_ = now;
      constexpr int width = 30;
      const int filled = static_cast<int>(percent * width / 100);
      std::fprintf(stderr, "\r[%-*s] %3ld%% %s%s %-36.36s", width, std::string(filled, '#').c_str(), percent,
                   clock(elapsed).c_str(), eta.c_str(), what.c_str());
      if (finished) std::fprintf(stderr, "\n");
    } else if (percent / 10 != last_decile_ || finished) {
      last_decile_ = percent / 10;
      std::fprintf(stderr, "progress: %3ld%% after %s%s %s\n", percent, clock(elapsed).c_str(), eta.c_str(),
                   what.c_str());
    }
    std::fflush(stderr);
  }

  // m:ss
  static std::string clock(double seconds) {
    const long s = static_cast<long>(seconds + 0.5);
    char text[32];
    std::snprintf(text, sizeof text, "%ld:%02ld", s / 60, s % 60);
    return text;
  }

 private:
  long total_;
  long done_ = 0;
  long last_decile_ = -1;
  bool enabled_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_{};
};

}  // namespace kvcrush_eval

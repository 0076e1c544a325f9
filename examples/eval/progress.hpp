// A one-line progress bar on stderr (redrawn in place on a terminal, one
// line per 10% otherwise, so CI logs stay short).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <string>

namespace kvcrush_eval {

class progress_bar {
 public:
  progress_bar(long total, bool enabled) : total_(total), enabled_(enabled), tty_(isatty(2) != 0) {}

  void step(const std::string& what) {
    ++done_;
    if (!enabled_) return;
    const long percent = total_ ? done_ * 100 / total_ : 100;
    if (tty_) {
      constexpr int width = 30;
      const int filled = static_cast<int>(percent * width / 100);
      std::fprintf(stderr, "\r[%-*s] %3ld%% %ld/%ld %-40.40s", width, std::string(filled, '#').c_str(), percent,
                   done_, total_, what.c_str());
      if (done_ == total_) std::fprintf(stderr, "\n");
    } else if (percent / 10 != last_decile_ || done_ == total_) {
      last_decile_ = percent / 10;
      std::fprintf(stderr, "progress: %3ld%% (%ld/%ld) %s\n", percent, done_, total_, what.c_str());
    }
    std::fflush(stderr);
  }

 private:
  long total_;
  long done_ = 0;
  long last_decile_ = -1;
  bool enabled_;
  bool tty_;
};

}  // namespace kvcrush_eval

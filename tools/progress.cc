#include "progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace vmbackupctl {
namespace {

constexpr double kPlainIntervalSeconds = 2.0;

int TerminalWidth() {
  struct winsize ws {};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

std::string Percent(const vmbackup::Progress& p) {
  char buf[16];
  double pct = p.bytes_total > 0 ? 100.0 * static_cast<double>(p.bytes_scanned) /
                                       static_cast<double>(p.bytes_total)
                                 : 0.0;
  std::snprintf(buf, sizeof(buf), "%5.1f%%", std::min(pct, 100.0));
  return buf;
}

std::string Eta(const vmbackup::Progress& p) {
  double eta = p.eta_seconds;
  if (eta < 0 && p.bytes_per_second > 0 && p.bytes_total >= p.bytes_scanned) {
    eta = static_cast<double>(p.bytes_total - p.bytes_scanned) / p.bytes_per_second;
  }
  if (eta < 0) return "ETA -";
  unsigned s = static_cast<unsigned>(eta + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "ETA %u:%02u:%02u", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "ETA %u:%02u", s / 60, s % 60);
  }
  return buf;
}

double Rate(const vmbackup::Progress& p) {
  if (p.bytes_per_second > 0) return p.bytes_per_second;
  if (p.elapsed_seconds > 0) return static_cast<double>(p.bytes_scanned) / p.elapsed_seconds;
  return 0;
}

}  // namespace

ProgressMode EffectiveProgressMode(const GlobalOptions& options, bool explicit_mode) {
  if (!explicit_mode && (options.quiet || options.json)) return ProgressMode::kNone;
  if (options.progress == ProgressMode::kAuto) {
    return isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kNone;
  }
  return options.progress;
}

ProgressReporter::ProgressReporter(ProgressMode mode, Kind kind, std::string label)
    : mode_(mode), kind_(kind), label_(std::move(label)) {
  if (mode_ == ProgressMode::kAuto) {
    mode_ = isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kNone;
  }
}

vmbackup::ProgressCallback ProgressReporter::Callback() {
  if (!enabled()) return nullptr;
  return [this](const vmbackup::Progress& p) {
    Report(p);
    return true;
  };
}

std::string ProgressReporter::Line(const vmbackup::Progress& p, int width) const {
  using Phase = vmbackup::Progress::Phase;
  std::string core;   // percent, bytes, rate, ETA
  std::string extra;  // new vs reused (backup) or written (restore)
  if (p.phase == Phase::kPreparing) {
    core = "preparing...";
  } else {
    core = Percent(p) + "  " + FormatBytes(p.bytes_scanned) + "/" + FormatBytes(p.bytes_total) +
           "  " + FormatRate(Rate(p)) + "  " +
           (p.phase == Phase::kTransferring ? Eta(p)
            : p.phase == Phase::kFinalizing ? std::string("finalizing")
                                            : std::string("done"));
    extra = kind_ == Kind::kBackup
                ? "new " + FormatBytes(p.bytes_new) + ", reused " + FormatBytes(p.bytes_reused)
                : "written " + FormatBytes(p.bytes_written);
  }
  if (width <= 0) return label_ + "  " + core + (extra.empty() ? "" : "  " + extra);
  // Bar: "label [#####.....] core  extra". On narrow terminals the bar goes first, then the extra
  // field, then the line is cut.
  const int usable = width - 1;
  std::string tail = core + (extra.empty() ? "" : "  " + extra);
  int fixed = static_cast<int>(label_.size() + 1 + tail.size());
  if (fixed > usable) {
    tail = core;
    fixed = static_cast<int>(label_.size() + 1 + tail.size());
  }
  std::string bar;
  int cells = std::min(40, usable - fixed - 3);
  if (cells >= 10) {
    double frac = p.bytes_total > 0
                      ? static_cast<double>(p.bytes_scanned) / static_cast<double>(p.bytes_total)
                      : 0.0;
    int filled = static_cast<int>(std::clamp(frac, 0.0, 1.0) * cells);
    bar = "[" + std::string(filled, '#') + std::string(cells - filled, '.') + "] ";
  }
  std::string line = label_ + " " + bar + tail;
  if (static_cast<int>(line.size()) > usable) line.resize(std::max(0, usable));
  return line;
}

void ProgressReporter::Report(const vmbackup::Progress& p) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ || mode_ == ProgressMode::kNone) return;
  if (mode_ == ProgressMode::kBar) {
    std::string line = Line(p, TerminalWidth());
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
    std::fflush(stderr);
    drawn_ = true;
    return;
  }
  // Plain: one line every few seconds, plus the end of the transfer phase.
  double now = MonotonicSeconds();
  bool last = p.phase == vmbackup::Progress::Phase::kDone;
  if (!last && now - last_plain_ < kPlainIntervalSeconds) return;
  last_plain_ = now;
  std::fprintf(stderr, "%s\n", Line(p, 0).c_str());
  std::fflush(stderr);
}

void ProgressReporter::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  finished_ = true;
  if (mode_ == ProgressMode::kBar && drawn_) {
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }
}

void ProgressReporter::set_label(std::string label) {
  std::lock_guard<std::mutex> lock(mu_);
  label_ = std::move(label);
}

}  // namespace vmbackupctl

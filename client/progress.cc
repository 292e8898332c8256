#include "client/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace adaptd {

std::string ProgressBar(double fraction, int width) {
  if (!(fraction > 0)) fraction = 0;  // also NaN
  fraction = std::min(fraction, 1.0);
  const int filled = static_cast<int>(std::lround(fraction * width));
  return absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '-'), "]");
}

std::string FormatDuration(double seconds) {
  // Beyond 1e9 s (32 years) an estimate says nothing, and llround would overflow past 9e18.
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e9) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

namespace {
// "x2.2", "x0.74", "x57", "x101": a factor, to two significant digits below 10.
std::string Factor(double x) {
  return x < 10 ? absl::StrFormat("x%.2g", x) : absl::StrFormat("x%.0f", x);
}
}  // namespace

std::string JobStateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED:
      return "queued";
    case v1::JOB_STATE_RUNNING:
      return "running";
    case v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATE_FAILED:
      return "failed";
    case v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

std::string UploadProgressText(int64_t sent, int64_t total, double seconds) {
  const double fraction = total > 0 ? static_cast<double>(sent) / total : 1.0;
  const double rate = seconds > 0 ? sent / seconds : 0;
  const std::string rate_text =
      rate >= 1e4 ? absl::StrFormat("%.1fk/s", rate / 1e3) : absl::StrFormat("%.0f/s", rate);
  return absl::StrFormat("%s %d/%d examples %4.0f%%  %s", ProgressBar(fraction), sent, total,
                         100 * fraction, rate_text);
}

std::string JobProgressText(const v1::JobStatus& status) {
  const std::string state = JobStateName(status.state());
  if (status.total_steps() <= 0) return absl::StrCat(ProgressBar(0), " ", state);
  const double fraction = static_cast<double>(status.step()) / status.total_steps();
  std::string text = absl::StrFormat("%s step %d/%d  loss %.4f", ProgressBar(fraction),
                                     status.step(), status.total_steps(), status.loss());
  if (status.state() == v1::JOB_STATE_RUNNING) {
    absl::StrAppend(&text, "  ETA ", FormatDuration(status.eta_seconds()));
  } else if (status.elapsed_seconds() > 0) {
    absl::StrAppend(&text, "  in ", FormatDuration(status.elapsed_seconds()));
  }
  absl::StrAppend(&text, "  ", state);
  if (status.ivon_peak_step() >= kPeakStepWarning) {
    absl::StrAppend(&text, "  IVON step ", Factor(status.ivon_peak_step()),
                    " its first (docs/api.md: long jobs)");
  }
  return text;
}

std::string JobListLine(const v1::JobStatus& status) {
  std::string line = absl::StrFormat("%s  task %d  %-9s  %d examples", status.job_id(),
                                     status.task_id(), JobStateName(status.state()),
                                     status.examples());
  if (status.total_steps() > 0) {
    absl::StrAppend(&line, "  ",
                    status.step() == status.total_steps()
                        ? absl::StrCat(status.step(), " steps")
                        : absl::StrCat(status.step(), "/", status.total_steps(), " steps"),
                    absl::StrFormat("  loss %.4f", status.loss()),
                    status.ivon_peak_step() > 0 ? "  peak step " + Factor(status.ivon_peak_step())
                                                : "",
                    "  in ", FormatDuration(status.elapsed_seconds()));
  }
  absl::StrAppend(&line, "  ", status.message());
  return line;
}

ProgressLine::ProgressLine(std::FILE* out, bool interactive, absl::Duration log_every)
    : out_(out), interactive_(interactive), log_every_(log_every) {}

bool ProgressLine::IsTerminal(std::FILE* out) { return isatty(fileno(out)) == 1; }

void ProgressLine::Update(const std::string& text) {
  const absl::Time now = absl::Now();
  if (now - last_draw_ < (interactive_ ? absl::Milliseconds(100) : log_every_)) return;
  last_draw_ = now;
  if (interactive_) {
    Draw(text);
  } else {
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
  }
}

void ProgressLine::Finish(const std::string& text) {
  if (interactive_) {
    Draw(text);
    std::fputc('\n', out_);
  } else {
    std::fprintf(out_, "%s\n", text.c_str());
  }
  std::fflush(out_);
}

void ProgressLine::Draw(const std::string& text) {
  // Pad with spaces over what a longer previous line left behind.
  const size_t pad = last_width_ > text.size() ? last_width_ - text.size() : 0;
  std::fprintf(out_, "\r%s%s", text.c_str(), std::string(pad, ' ').c_str());
  std::fflush(out_);
  last_width_ = text.size();
}

}  // namespace adaptd

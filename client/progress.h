// Progress bars for adaptctl: uploads (examples sent) and adaptation jobs (steps, loss, ETA).
#ifndef ADAPTD_CLIENT_PROGRESS_H_
#define ADAPTD_CLIENT_PROGRESS_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/time/time.h"
#include "adaptd/v1/learning.pb.h"

namespace adaptd {

// "[#####---------------]": `width` cells, the first round(fraction * width) filled.
// `fraction` is clamped to [0, 1].
std::string ProgressBar(double fraction, int width = 30);
// "42s", "3m05s", "2h01m"; "?" for a negative or non-finite time.
std::string FormatDuration(double seconds);
// "queued", "running", "succeeded", "failed", "cancelled".
std::string JobStateName(v1::JobState state);

// "[#####-----] 12000/60000 examples  20%  4.1k/s".
std::string UploadProgressText(int64_t sent, int64_t total, double seconds);
// "[#####-----] step 120/600  loss 0.4312  ETA 12s  running"; before the first step only the
// state. From a peak step (JobStatus.ivon_peak_step) of kPeakStepWarning on, it adds
// "  IVON step x12 its first (docs/api.md: long jobs)".
std::string JobProgressText(const v1::JobStatus& status);
// Where an unclipped IVON job starts to overshoot: on docs/benchmarks.md's long digits-add
// runs, peak steps of 2 / 10 / 57 lost 0 / 0.2 / 5 points.
inline constexpr double kPeakStepWarning = 10;
// One job of `adaptctl jobs`: "ID  task 1  succeeded  2000 examples  160 steps  loss 0.3120
// peak step x2.2  in 4s  published version 2"; the steps, loss, peak step (IVON) and time once
// the job has taken a step.
std::string JobListLine(const v1::JobStatus& status);

// One status line, redrawn in place on a terminal. On anything else (a log file, a pipe) whole
// lines, the first update at once and then at most one every `log_every`, so that a log shows
// progress without filling with carriage returns.
//
// Thread-compatible.
class ProgressLine {
 public:
  // Not owned: `out` must outlive this object.
  ProgressLine(std::FILE* out, bool interactive, absl::Duration log_every = absl::Seconds(10));
  // Whether `out` is a terminal.
  static bool IsTerminal(std::FILE* out);

  // Redraws the line with `text`, at most ten times a second (not a terminal: see above).
  void Update(const std::string& text);
  // Writes `text` as the final state of the line and ends it.
  void Finish(const std::string& text);

 private:
  void Draw(const std::string& text);

  std::FILE* const out_;
  const bool interactive_;
  const absl::Duration log_every_;
  absl::Time last_draw_ = absl::InfinitePast();
  size_t last_width_ = 0;
};

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_PROGRESS_H_

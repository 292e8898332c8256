#include "client/progress.h"

#include <cmath>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace adaptd {
namespace {

TEST(ProgressTest, BarFillsInProportionAndClamps) {
  EXPECT_EQ(ProgressBar(0.5, 10), "[#####-----]");
  EXPECT_EQ(ProgressBar(0, 4), "[----]");
  EXPECT_EQ(ProgressBar(1.7, 4), "[####]");
  EXPECT_EQ(ProgressBar(-1, 4), "[----]");
  EXPECT_EQ(ProgressBar(std::nan(""), 4), "[----]");
}

TEST(ProgressTest, Durations) {
  EXPECT_EQ(FormatDuration(4.6), "5s");
  EXPECT_EQ(FormatDuration(65), "1m05s");
  EXPECT_EQ(FormatDuration(3725), "1h02m");
  EXPECT_EQ(FormatDuration(-1), "?");
  EXPECT_EQ(FormatDuration(1e20), "?");  // an ETA after a first step that took no time
}

TEST(ProgressTest, UploadAndJobTexts) {
  EXPECT_EQ(UploadProgressText(12000, 60000, 2),
            "[######------------------------] 12000/60000 "
            "examples   20%  6000/s");
  v1::JobStatus status;
  status.set_state(v1::JOB_STATE_QUEUED);
  EXPECT_EQ(JobProgressText(status), "[------------------------------] queued");
  status.set_state(v1::JOB_STATE_RUNNING);
  status.set_step(150);
  status.set_total_steps(600);
  status.set_loss(0.43125);
  status.set_eta_seconds(75);
  status.set_ivon_peak_step(9.9);  // below kPeakStepWarning: not shown while running
  EXPECT_EQ(JobProgressText(status),
            "[########----------------------] step 150/600  loss 0.4313  ETA 1m15s  running");
  status.set_ivon_peak_step(12.4);
  EXPECT_EQ(JobProgressText(status),
            "[########----------------------] step 150/600  loss 0.4313  ETA 1m15s  running  "
            "IVON step x12 its first (docs/api.md: long jobs)");
  status.set_ivon_peak_step(0);
  status.set_state(v1::JOB_STATE_SUCCEEDED);
  status.set_step(600);
  status.set_elapsed_seconds(12);
  EXPECT_NE(JobProgressText(status).find("in 12s  succeeded"), std::string::npos);
}

TEST(ProgressTest, JobListLines) {
  v1::JobStatus status;
  status.set_job_id("j1");
  status.set_task_id(2);
  status.set_state(v1::JOB_STATE_QUEUED);
  status.set_examples(2000);
  status.set_message("queued");
  EXPECT_EQ(JobListLine(status), "j1  task 2  queued     2000 examples  queued");
  status.set_state(v1::JOB_STATE_CANCELLED);
  status.set_step(57);
  status.set_total_steps(160);
  status.set_loss(0.31204);
  status.set_elapsed_seconds(75);
  status.set_message("cancelled while running");
  EXPECT_EQ(JobListLine(status),
            "j1  task 2  cancelled  2000 examples  57/160 steps  loss 0.3120  in 1m15s  "
            "cancelled while running");
  status.set_state(v1::JOB_STATE_SUCCEEDED);
  status.set_step(160);
  status.set_message("published version 3");
  EXPECT_EQ(JobListLine(status),
            "j1  task 2  succeeded  2000 examples  160 steps  loss 0.3120  in 1m15s  "
            "published version 3");
  status.set_ivon_peak_step(2.2);
  EXPECT_EQ(JobListLine(status),
            "j1  task 2  succeeded  2000 examples  160 steps  loss 0.3120  peak step x2.2  in "
            "1m15s  published version 3");
  status.set_ivon_peak_step(101.4);  // not "1e+02"
  EXPECT_EQ(JobListLine(status),
            "j1  task 2  succeeded  2000 examples  160 steps  loss 0.3120  peak step x101  in "
            "1m15s  published version 3");
}

std::string Contents(std::FILE* f) {
  std::rewind(f);
  std::string text;
  for (int c; (c = std::fgetc(f)) != EOF;) text += static_cast<char>(c);
  return text;
}

TEST(ProgressLineTest, WholeLinesAtIntervalsWhenNotATerminal) {
  for (const bool often : {false, true}) {
    std::FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    {
      ProgressLine line(f, /*interactive=*/false,
                        often ? absl::ZeroDuration() : absl::Hours(1));
      line.Update("one");
      line.Update("two");
      line.Finish("done");
    }
    EXPECT_EQ(Contents(f), often ? "one\ntwo\ndone\n" : "one\ndone\n");
    std::fclose(f);
  }
}

TEST(ProgressLineTest, RedrawsInPlaceOnATerminal) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ProgressLine line(f, /*interactive=*/true);
  line.Update("longer text");
  line.Finish("short");
  // The final draw blanks what the longer line left.
  EXPECT_EQ(Contents(f), "\rlonger text\rshort      \n");
  std::fclose(f);
}

}  // namespace
}  // namespace adaptd

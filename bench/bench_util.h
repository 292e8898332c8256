// Helpers shared by the benchmark programs: data loading, wall clocks, JSON-ish output.
#ifndef ADAPTD_BENCH_BENCH_UTIL_H_
#define ADAPTD_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/readers.h"
#include "core/model.h"
#include "core/train.h"

namespace adaptd::bench {

// The mean of `v` (0 when empty) and its sample standard deviation (0 below two values).
double Mean(const std::vector<double>& v);
double Std(const std::vector<double>& v);

// Fashion-MNIST train or test split from `dir` (the Debian package's layout).
absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train);

// LeNet-5 for 28x28 grey images with `classes` outputs.
ModelSpec LeNet5Spec(int64_t classes);

// The MPE paper's IVON settings for LeNet-5 on Fashion-MNIST: lr 0.1 with
// a cosine schedule to 0, h0 0.1, beta1 0.9, beta2 0.99999, weight decay 1e-3, batch 256, and
// ess = the training-set size.
TrainOptions MpeIvonOptions(int64_t train_size, uint64_t seed);

// Samples `count` distinct indices of [0, n) and gives each a new label different from its
// own, uniformly among the other classes: label noise for mislabel-detection benchmarks.
// Returns the noisy labels and a bool [n] mask of the flipped examples.
struct FlippedLabels {
  at::Tensor labels;
  at::Tensor flipped;
};
FlippedLabels FlipLabels(const at::Tensor& labels, int64_t classes, int64_t count, uint64_t seed);

// The median of `v` (the mean of the middle two for an even count); 0 for none.
double Median(std::vector<double> v);

// Writes `json` to `path` unless `path` is empty (the --json flag's contract).
void WriteJson(const std::string& path, const std::string& json);

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Exit with a message on error (benchmarks have no caller to return to).
[[noreturn]] void Die(const char* what, const absl::Status& s);
void OrDie(const absl::Status& s, const char* what);
template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(what, v.status());
  return *std::move(v);
}

// A --device flag's value ("cpu", "cuda", "cuda:N") as a device this process can use, or exit
// with the reason.
at::Device DeviceOrDie(const std::string& name);
// Waits for the GPU work queued on `t`'s device (nothing on the CPU), so that a timed
// iteration measures the work, not its launch.
void WaitFor(const at::Tensor& t);

}  // namespace adaptd::bench

#endif  // ADAPTD_BENCH_BENCH_UTIL_H_

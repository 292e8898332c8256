// Helpers shared by the benchmark programs: data loading, wall clocks, JSON-ish output.
#ifndef ADAPTD_BENCH_BENCH_UTIL_H_
#define ADAPTD_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <string>

#include "absl/status/statusor.h"
#include "core/data/readers.h"

namespace adaptd::bench {

// Fashion-MNIST train or test split from `dir` (the Debian package's layout).
absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train);

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

}  // namespace adaptd::bench

#endif  // ADAPTD_BENCH_BENCH_UTIL_H_

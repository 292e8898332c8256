// A Google Benchmark console reporter that also records each benchmark's median real time
// (or its single run's time when there are no repetitions), for the ratio tables the speed
// benchmarks print after the run.
#ifndef ADAPTD_BENCH_MEDIAN_REPORTER_H_
#define ADAPTD_BENCH_MEDIAN_REPORTER_H_

#include <benchmark/benchmark.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace adaptd::bench {

class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        medians_[r.run_name.str()] = r.GetAdjustedRealTime();
      } else if (r.run_type == Run::RT_Iteration) {
        singles_[r.run_name.str()] = r.GetAdjustedRealTime();
      }
    }
  }

  // The recorded time of the benchmark run named `name` (e.g. "BM_Step/net:0/opt:1/..."), in
  // the benchmark's unit; -1 when it did not run.
  double Time(const std::string& name) const {
    const auto& t = medians_.empty() ? singles_ : medians_;
    auto it = t.find(name);
    return it == t.end() ? -1.0 : it->second;
  }
  // What Time() reports, for the table's footnote.
  const char* Kind() const { return medians_.empty() ? "single runs" : "medians"; }

 private:
  std::map<std::string, double> medians_, singles_;
};

// The speed programs' run after flag parsing: sets LibTorch's intra-op threads, prints the
// device line, runs `prepare` (untimed), the registered benchmarks through `reporter`, and its
// table (Reporter::PrintRatios).
template <typename Reporter>
int RunBenchmarks(Reporter& reporter, const std::string& device, int threads,
                  const std::function<void()>& prepare = nullptr) {
  at::set_num_threads(threads);
  std::printf("device: %s, %d intra-op threads\n", device.c_str(), at::get_num_threads());
  if (prepare) prepare();
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  benchmark::Shutdown();
  return 0;
}

}  // namespace adaptd::bench

#endif  // ADAPTD_BENCH_MEDIAN_REPORTER_H_

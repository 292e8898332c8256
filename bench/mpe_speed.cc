// The cost of the sensitivity queries over a store of 60,000 examples, side by side in one
// process with the reference cost they are measured against: one forward and backward pass
// (mean cross-entropy, gradients into the flat buffer) over the same 60,000 Fashion-MNIST images
// with LeNet-5 at the same batch size. The model is IVON-trained for --train_epochs first, so
// that its ReLU pattern and posterior are a trained network's.
//   top-10 influence: one query's gradient, then a forward pass with a tangent per batch and
//                     a running top-10 (target: <= 3x the forward and backward pass)
//   memory map:       e, v = diag(J Sigma J^T), lambda and sensitivity per example (target <= 3x)
// and, for reference, the queries that need the K x K block J Sigma J^T per example
// (self-influence; influence excluding each example's curvature), and the MemoryMap RPC's work:
// the map with the leave-one-out estimate, as two passes and as one.
//
//   build/bench/mpe_speed --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//   build/bench/mpe_speed --device=cuda ...   (on a GPU machine)
#include <benchmark/benchmark.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_util.h"
#include "bench/median_reporter.h"
#include "core/mpe.h"
#include "core/train.h"

ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");
ABSL_FLAG(int64_t, examples, 60000, "stored examples (the first N of the training set)");
ABSL_FLAG(int64_t, train_epochs, 2, "IVON epochs before timing");

namespace adaptd::bench {
namespace {

at::Device Device() {
  static const at::Device device = DeviceOrDie(absl::GetFlag(FLAGS_device));
  return device;
}

// The trained model, its posterior and the store, built once.
struct Setup {
  Dataset store;
  at::Tensor query;
  std::unique_ptr<Model> model;
  std::unique_ptr<Trainer> trainer;
  Covariance sigma;
};

Setup& Shared() {
  static Setup* s = [] {
    auto* setup = new Setup;
    const Dataset train = OrDie(LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), true), "data");
    const int64_t n = std::min(absl::GetFlag(FLAGS_examples), train.size());
    setup->store = {train.x.narrow(0, 0, n), train.y.narrow(0, 0, n)};
    const Dataset test = OrDie(LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), false), "data");
    setup->query = test.x[0];
    setup->model = OrDie(BuildModel(LeNet5Spec(10), 0), "model");
    setup->model->To(Device());
    const int64_t epochs = absl::GetFlag(FLAGS_train_epochs);
    const TrainOptions o = MpeIvonOptions(train.size(), 0);
    setup->trainer = OrDie(Trainer::Create(setup->model.get(), o, std::max<int64_t>(1, epochs) * 235), "trainer");
    for (int64_t e = 0; e < epochs; ++e) OrDie(setup->trainer->TrainEpoch(train), "training");
    setup->sigma = Covariance::FromPosterior(setup->trainer->ivon()->posterior());
    return setup;
  }();
  return *s;
}

enum Query {
  kForwardBackward,
  kTopInfluence,
  kMemoryMap,
  kSelfInfluence,
  kInfluenceExcludeSelf,
  kMapThenLoo,
  kMapAndLoo,
  kLastQuery = kMapAndLoo
};
const char* kQueryNames[] = {"forward+backward", "top-10 influence", "memory map",
                             "self-influence", "top-10 influence, exclude self",
                             "memory map, then LOO (two passes)", "memory map and LOO (one pass)"};

void BM_Query(benchmark::State& state) {
  const Query q = static_cast<Query>(state.range(0));
  const int64_t batch = state.range(1);
  Setup& s = Shared();
  Model& model = *s.model;
  const int64_t n = s.store.size();
  for (auto _ : state) {
    switch (q) {
      case kForwardBackward: {
        model.SetTraining(true);
        for (int64_t b = 0; b < n; b += batch) {
          const int64_t len = std::min(batch, n - b);
          s.trainer->flat().ZeroGrad();
          at::cross_entropy_loss(model.Forward(s.store.x.narrow(0, b, len).to(Device())),
                                 s.store.y.narrow(0, b, len).to(Device()))
              .backward();
        }
        WaitFor(s.trainer->flat().grads());
        break;
      }
      case kTopInfluence:
      case kInfluenceExcludeSelf: {
        InfluenceOptions o;
        o.top_k = 10;
        o.batch_size = batch;
        o.exclude_self = q == kInfluenceExcludeSelf;
        auto top = OrDie(TopInfluences(model, s.sigma, s.query, s.store, o), "influence");
        benchmark::DoNotOptimize(top.data());
        break;
      }
      case kMemoryMap:
      case kMapThenLoo:
      case kMapAndLoo:
      case kSelfInfluence: {
        MpeOptions o;
        o.batch_size = batch;
        at::Tensor out;
        if (q == kSelfInfluence) {
          out = OrDie(SelfInfluence(model, s.sigma, s.store, o), "self-influence");
        } else if (q == kMapAndLoo) {
          out = OrDie(ComputeMemoryMapAndLoo(model, s.sigma, s.store, o), "map and LOO").loo.shift;
        } else {
          out = OrDie(ComputeMemoryMap(model, s.sigma, s.store, o), "memory map").sensitivity;
          if (q == kMapThenLoo) out = OrDie(EstimateLoo(model, s.sigma, s.store, o), "LOO").shift;
        }
        benchmark::DoNotOptimize(out.data_ptr());
        break;
      }
    }
  }
  state.counters["examples"] = static_cast<double>(n);
}

BENCHMARK(BM_Query)
    ->ArgNames({"query", "batch"})
    ->ArgsProduct({{kForwardBackward, kTopInfluence, kMemoryMap, kSelfInfluence,
                    kInfluenceExcludeSelf, kMapThenLoo, kMapAndLoo},
                   {256, 1000}})
    ->Unit(benchmark::kSecond)
    ->Iterations(1);

// Console output plus the ratio table.
class RatioReporter : public MedianReporter {
 public:
  void PrintRatios() const {
    std::printf("\n| batch | query | time over %lld examples (s) | x forward+backward | target |\n",
                static_cast<long long>(Shared().store.size()));
    std::printf("|---|---|---|---|---|\n");
    for (int64_t batch : {256, 1000}) {
      auto at = [&](int q) {
        return Time("BM_Query/query:" + std::to_string(q) + "/batch:" + std::to_string(batch) +
                    "/iterations:1");
      };
      const double base = at(kForwardBackward);
      for (int q = kForwardBackward; q <= kLastQuery; ++q) {
        const double ratio = at(q) / base;
        const char* target = q == kTopInfluence || q == kMemoryMap
                                 ? (ratio <= 3.0 ? "<= 3: PASS" : "<= 3: FAIL")
                                 : "";
        std::printf("| %lld | %s | %.2f | %.2f | %s |\n", static_cast<long long>(batch),
                    kQueryNames[q], at(q), ratio, target);
      }
    }
    std::printf("(%s of the per-run times)\n", Kind());
  }
};

}  // namespace
}  // namespace adaptd::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);  // takes its --benchmark_* flags out of argv
  absl::ParseCommandLine(argc, argv);
  adaptd::bench::RatioReporter reporter;
  // Trains the model before timing.
  return adaptd::bench::RunBenchmarks(reporter, absl::GetFlag(FLAGS_device),
                                      absl::GetFlag(FLAGS_threads), [] { adaptd::bench::Shared(); });
}

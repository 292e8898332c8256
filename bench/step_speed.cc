// One training step (forward, backward, optimizer) for IVON and Adam through the same training
// loop, side by side in one process: MLP 784-512-512-10 at batch 256 and LeNet-5 at batch 128.
// LibTorch's own torch::optim::Adam (per-tensor) runs beside them for reference. At the end the
// program prints the median IVON/Adam time ratio per model and each optimizer's persistent
// state, then the time of the measurement behind a job's IVON step figures (Ivon::StepScale)
// against the 100 steps it is taken once in.
//
//   build/bench/step_speed --benchmark_repetitions=15 --benchmark_enable_random_interleaving=true
//   build/bench/step_speed --device=cuda ...   (on a GPU machine)
#include <benchmark/benchmark.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_util.h"
#include "bench/median_reporter.h"
#include "core/model.h"
#include "core/train.h"

ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");

namespace adaptd::bench {
namespace {

at::Device Device() {
  static const at::Device device = DeviceOrDie(absl::GetFlag(FLAGS_device));
  return device;
}

enum Net { kMlp = 0, kLeNet = 1 };
enum Opt { kIvon = 0, kAdam = 1, kTorchAdam = 2 };
const char* kNetNames[] = {"mlp784-512-512-10/b256", "lenet5/b128"};
const char* kOptNames[] = {"ivon", "adam", "torch_optim_adam"};

std::map<std::string, int64_t>& StateBytes() {
  static std::map<std::string, int64_t> m;
  return m;
}

ModelSpec SpecFor(Net net) {
  ModelSpec s;
  s.num_classes = 10;
  if (net == kMlp) {
    s.architecture = Architecture::kMlp;
    s.input_shape = {784};
    s.hidden = {512, 512};
  } else {
    s.architecture = Architecture::kLeNet5;
    s.input_shape = {1, 28, 28};
  }
  return s;
}

// Uniform inputs of the model's shape and random labels, `batch` of them, on the device.
std::pair<at::Tensor, at::Tensor> RandomBatch(const Model& model, int64_t batch) {
  std::vector<int64_t> shape = {batch};
  for (int64_t d : model.spec().input_shape) shape.push_back(d);
  return {at::rand(shape).to(Device()), at::randint(0, 10, {batch}, at::kLong).to(Device())};
}

void BM_Step(benchmark::State& state) {
  const Net net = static_cast<Net>(state.range(0));
  const Opt opt = static_cast<Opt>(state.range(1));
  const int64_t batch = net == kMlp ? 256 : 128;
  auto model = OrDie(BuildModel(SpecFor(net), 0), "model");
  model->To(Device());
  const auto [x, y] = RandomBatch(*model, batch);
  if (opt == kTorchAdam) {
    torch::optim::Adam adam(model->Parameters(), torch::optim::AdamOptions(1e-3));
    for (auto _ : state) {
      adam.zero_grad();
      at::cross_entropy_loss(model->Forward(x), y).backward();
      adam.step();
      WaitFor(model->Parameters()[0]);
    }
    int64_t bytes = 0;
    for (const auto& entry : adam.state()) {
      const auto& s = static_cast<const torch::optim::AdamParamState&>(*entry.second);
      bytes += (s.exp_avg().numel() + s.exp_avg_sq().numel()) * 4;
    }
    StateBytes()[std::string(kNetNames[net]) + "/" + kOptNames[opt]] = bytes;
    return;
  }
  TrainOptions o;
  o.optimizer = opt == kIvon ? OptimizerKind::kIvon : OptimizerKind::kAdam;
  o.ivon.ess = 60000;
  o.ivon.hess_init = 0.1;
  o.ivon.weight_decay = 1e-3;
  o.lr = 1e-3;
  o.cosine = false;
  auto trainer = OrDie(Trainer::Create(model.get(), o, 1 << 30), "trainer");
  for (auto _ : state) {
    benchmark::DoNotOptimize(OrDie(trainer->Step(x, y), "step"));
    WaitFor(trainer->flat().params());
  }
  StateBytes()[std::string(kNetNames[net]) + "/" + kOptNames[opt]] = trainer->OptimizerStateBytes();
  state.counters["params"] = static_cast<double>(trainer->flat().numel());
}

BENCHMARK(BM_Step)
    ->ArgNames({"net", "opt"})
    ->ArgsProduct({{kMlp, kLeNet}, {kIvon, kAdam, kTorchAdam}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5);

// The progress figures' measurement (Ivon::StepScale, a median over the weights), which
// TrainEpoch takes once every kStepGrowthEvery IVON steps.
void BM_StepScale(benchmark::State& state) {
  auto model = OrDie(BuildModel(SpecFor(static_cast<Net>(state.range(0))), 0), "model");
  model->To(Device());
  TrainOptions o;
  o.ivon.ess = 60000;
  o.ivon.hess_init = 0.1;
  o.ivon.weight_decay = 1e-3;
  auto trainer = OrDie(Trainer::Create(model.get(), o, 1 << 30), "trainer");
  // A few steps, so that h holds distinct values as in training (a constant h selects faster).
  for (int i = 0; i < 3; ++i) {
    const auto [x, y] = RandomBatch(*model, 32);
    OrDie(trainer->Step(x, y), "step");
  }
  for (auto _ : state) benchmark::DoNotOptimize(trainer->ivon()->StepScale());
}

BENCHMARK(BM_StepScale)
    ->ArgNames({"net"})
    ->DenseRange(kMlp, kLeNet)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(0.5);

// Console output plus a record of each benchmark's median for the ratio table.
class RatioReporter : public MedianReporter {
 public:
  void PrintRatios() const {
    std::printf("\n| model | IVON (ms) | Adam (ms) | IVON/Adam | torch::optim::Adam (ms) | IVON state | Adam state |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (int net = 0; net < 2; ++net) {
      auto at = [&](int opt) {
        return Time("BM_Step/net:" + std::to_string(net) + "/opt:" + std::to_string(opt) + "/min_time:0.500");
      };
      auto bytes = [&](int opt) {
        auto it = StateBytes().find(std::string(kNetNames[net]) + "/" + kOptNames[opt]);
        return it == StateBytes().end() ? -1.0 : static_cast<double>(it->second) / (1 << 20);
      };
      std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.2f MiB | %.2f MiB |\n", kNetNames[net],
                  at(kIvon), at(kAdam), at(kIvon) / at(kAdam), at(kTorchAdam), bytes(kIvon),
                  bytes(kAdam));
    }
    std::printf("(%s of the per-run times; state = persistent optimizer buffers)\n", Kind());
    std::printf("\n| model | progress figures (ms) | their share of %lld IVON steps |\n|---|---|---|\n",
                static_cast<long long>(kStepGrowthEvery));
    for (int net = 0; net < 2; ++net) {
      const double growth = Time("BM_StepScale/net:" + std::to_string(net) + "/min_time:0.500");
      const double step = Time("BM_Step/net:" + std::to_string(net) + "/opt:0/min_time:0.500");
      if (growth < 0 || step < 0) continue;  // filtered out
      std::printf("| %s | %.3f | %.2f %% |\n", kNetNames[net], growth,
                  100 * growth / (growth + kStepGrowthEvery * step));
    }
  }
};

}  // namespace
}  // namespace adaptd::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);  // takes its --benchmark_* flags out of argv
  absl::ParseCommandLine(argc, argv);
  adaptd::bench::RatioReporter reporter;
  return adaptd::bench::RunBenchmarks(reporter, absl::GetFlag(FLAGS_device),
                                      absl::GetFlag(FLAGS_threads));
}

// Posterior-averaged prediction (Predict, bayes mode, 64 samples) on the service's MLP
// 784-256-256-10, two ways side by side in one process: drawing whole weight vectors, and
// drawing each layer's pre-activations (the local reparameterization, the default for MLPs).
// Both give each example the same predictive distribution (tests/core/predictive_test.cc); this
// measures what each costs at batch 1 and 256. The two run alternately; medians are printed.
//
//   build/bench/predict_speed --threads=1 --reps=30
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "bench/bench_util.h"
#include "core/flat_params.h"
#include "core/posterior.h"
#include "core/predictive.h"

ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(int, threads, 1, "LibTorch intra-op threads");
ABSL_FLAG(int, reps, 30, "timed calls per cell (each way, alternating)");
ABSL_FLAG(int64_t, samples, 64, "posterior samples per prediction");

namespace adaptd::bench {
namespace {

int Main() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const Dataset test = OrDie(LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), false), "data");
  ModelSpec spec;
  spec.architecture = Architecture::kMlp;
  spec.input_shape = {784};
  spec.num_classes = 10;
  spec.hidden = {256, 256};
  std::unique_ptr<Model> model = OrDie(BuildModel(spec, 0), "model");
  FlatParameters flat = OrDie(FlatParameters::Bind(model->Parameters()), "bind");
  // A posterior of the size the service trains (ess 12,000, h 0.1): the cost does not depend on
  // the values.
  const Posterior posterior = OrDie(
      Posterior::Create(flat.params().clone(), at::full({flat.numel()}, 0.1), 12000, 1e-3), "posterior");
  const at::Tensor x = test.x.view({test.size(), 784});
  std::printf("MLP 784-256-256-10 (%lld parameters), %lld samples, %d thread(s), %d calls per cell\n\n",
              static_cast<long long>(flat.numel()), static_cast<long long>(absl::GetFlag(FLAGS_samples)),
              absl::GetFlag(FLAGS_threads), absl::GetFlag(FLAGS_reps));
  std::printf("| batch | weight vectors (ms) | pre-activations (ms) | speed-up |\n|---|---|---|---|\n");
  for (int64_t batch : {1, 256}) {
    std::vector<double> times[2];
    for (int r = 0; r < absl::GetFlag(FLAGS_reps); ++r) {
      for (int local = 0; local < 2; ++local) {
        PredictOptions o;
        o.mode = PredictMode::kBayes;
        o.samples = absl::GetFlag(FLAGS_samples);
        o.local_reparameterization = local == 1;
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(r);
        const at::Tensor xb = x.narrow(0, (r * batch) % (test.size() - batch), batch);
        Stopwatch watch;
        const Prediction p = OrDie(Predict(*model, flat, &posterior, xb, o, gen), "predict");
        times[local].push_back(1e3 * watch.Seconds());
        if (p.probs.size(0) != batch) Die("predict", absl::InternalError("wrong batch"));
      }
    }
    const double w = Median(times[0]), l = Median(times[1]);
    std::printf("| %lld | %.2f | %.2f | %.1fx |\n", static_cast<long long>(batch), w, l, w / l);
  }
  std::printf("(medians)\n");
  return 0;
}

}  // namespace
}  // namespace adaptd::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::bench::Main();
}

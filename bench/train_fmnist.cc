// LeNet-5 on Fashion-MNIST with IVON at the MPE paper's settings (lr 0.1
// cosine to 0, h0 0.1, beta2 0.99999, ess 60000, weight decay 1e-3, batch 256, 100 epochs),
// against Adam with the same budget. Prints IVON@mean, IVON with posterior averaging, and Adam:
// accuracy, NLL, ECE (15 bins) and Brier score on the 10,000 test images.
//
//   build/bench/train_fmnist --epochs=100 --json=train_fmnist.json
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "core/metrics.h"
#include "core/model.h"
#include "core/predictive.h"
#include "core/train.h"

ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(int64_t, epochs, 100, "training epochs for every optimizer");
ABSL_FLAG(std::string, optimizers, "ivon,adam", "comma-separated: ivon, adam, sgd");
ABSL_FLAG(int64_t, eval_samples, 64, "weight samples for IVON's posterior averaging");
ABSL_FLAG(int64_t, eval_every, 10, "print test accuracy at the mean every N epochs (0: never)");
ABSL_FLAG(double, adam_lr, 1e-3, "Adam peak learning rate (cosine to 0)");
ABSL_FLAG(double, sgd_lr, 0.05, "SGD peak learning rate (cosine to 0, momentum 0.9)");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");
ABSL_FLAG(uint64_t, seed, 0, "seed for initialisation, shuffling and sampling");
ABSL_FLAG(std::string, json, "", "also write the results to this file");

namespace adaptd::bench {
namespace {

struct Row {
  std::string method;
  Calibration c;
  double train_seconds = 0;
};

int Main() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const Dataset train = OrDie(LoadFashionMnist(dir, true), "loading the training set");
  const Dataset test = OrDie(LoadFashionMnist(dir, false), "loading the test set");
  const int64_t epochs = absl::GetFlag(FLAGS_epochs);
  const int64_t batch = 256;
  const int64_t steps = epochs * ((train.size() + batch - 1) / batch);
  std::printf("Fashion-MNIST: %lld train, %lld test; LeNet-5; %lld epochs x batch %lld = %lld steps\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()),
              static_cast<long long>(epochs), static_cast<long long>(batch),
              static_cast<long long>(steps));
  std::vector<Row> rows;
  const std::vector<std::string> names = absl::StrSplit(absl::GetFlag(FLAGS_optimizers), ',');
  for (const std::string& name : names) {
    TrainOptions o;
    o.optimizer = OrDie(ParseOptimizer(name), "--optimizers");
    o.batch_size = batch;
    o.seed = absl::GetFlag(FLAGS_seed);
    o.cosine = true;
    o.ivon.lr = 0.1;
    o.ivon.ess = static_cast<double>(train.size());
    o.ivon.hess_init = 0.1;
    o.ivon.beta1 = 0.9;
    o.ivon.beta2 = 0.99999;
    o.ivon.weight_decay = 1e-3;
    o.lr = o.optimizer == OptimizerKind::kAdam ? absl::GetFlag(FLAGS_adam_lr) : absl::GetFlag(FLAGS_sgd_lr);
    ModelSpec spec;
    spec.architecture = Architecture::kLeNet5;
    spec.input_shape = {1, 28, 28};
    spec.num_classes = 10;
    auto model = OrDie(BuildModel(spec, o.seed), "building LeNet-5");
    auto trainer = OrDie(Trainer::Create(model.get(), o, steps), "creating the trainer");
    const Posterior* posterior = trainer->ivon() ? &trainer->ivon()->posterior() : nullptr;
    Stopwatch clock;
    for (int64_t e = 1; e <= epochs; ++e) {
      const double loss = OrDie(trainer->TrainEpoch(train), "training");
      const int64_t every = absl::GetFlag(FLAGS_eval_every);
      if (every > 0 && (e % every == 0 || e == epochs)) {
        PredictOptions po;
        const at::Tensor p = OrDie(PredictProbs(*model, trainer->flat(), posterior, test.x, po,
                                                trainer->generator()), "predicting");
        std::printf("[%s] epoch %3lld/%lld  loss %.4f  test acc@mean %.4f  %.0f s\n", name.c_str(),
                    static_cast<long long>(e), static_cast<long long>(epochs), loss,
                    Accuracy(p, test.y), clock.Seconds());
        std::fflush(stdout);
      }
    }
    const double seconds = clock.Seconds();
    PredictOptions mean_opts;
    const at::Tensor pm = OrDie(PredictProbs(*model, trainer->flat(), posterior, test.x, mean_opts,
                                             trainer->generator()), "predicting");
    rows.push_back({name == "ivon" ? "IVON@mean" : name,
                    OrDie(ComputeCalibration(pm, test.y), "metrics"), seconds});
    if (posterior) {
      PredictOptions bayes;
      bayes.mode = PredictMode::kBayes;
      bayes.samples = absl::GetFlag(FLAGS_eval_samples);
      const at::Tensor pb = OrDie(PredictProbs(*model, trainer->flat(), posterior, test.x, bayes,
                                               trainer->generator()), "predicting");
      rows.push_back({absl::StrCat("IVON (", bayes.samples, " samples)"),
                      OrDie(ComputeCalibration(pb, test.y), "metrics"), seconds});
    }
  }
  std::printf("\n| method | test accuracy | NLL | ECE | Brier | train time (s) |\n");
  std::printf("|---|---|---|---|---|---|\n");
  std::string json = "[";
  for (const Row& r : rows) {
    std::printf("| %s | %.2f%% | %.4f | %.4f | %.4f | %.0f |\n", r.method.c_str(),
                100 * r.c.accuracy, r.c.nll, r.c.ece, r.c.brier, r.train_seconds);
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\n {\"method\": \"", r.method,
                    "\", \"accuracy\": ", r.c.accuracy, ", \"nll\": ", r.c.nll, ", \"ece\": ",
                    r.c.ece, ", \"brier\": ", r.c.brier, ", \"train_seconds\": ", r.train_seconds, "}");
  }
  json += "\n]\n";
  WriteJson(absl::GetFlag(FLAGS_json), json);
  return 0;
}

}  // namespace
}  // namespace adaptd::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::bench::Main();
}

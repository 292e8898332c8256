// Out-of-distribution detection: LeNet-5 trained on 8 Fashion-MNIST classes, the other 2 held
// out. IVON (the MPE paper's settings, ess = the training-set size) against Adam with the same
// budget. Each uncertainty score's AUROC separates the 8 classes' test images (negatives) from
// the held-out classes' test images (positives). Target: the mutual information or entropy
// under IVON's posterior averaging scores at least Adam's softmax entropy.
//
//   build/bench/ood_fmnist --json=ood_fmnist.json
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "core/metrics.h"
#include "core/predictive.h"

ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(std::string, holdout, "8,9", "the two held-out classes (default: the last two)");
ABSL_FLAG(int64_t, epochs, 30, "training epochs for both optimizers");
ABSL_FLAG(double, adam_lr, 1e-3, "Adam peak learning rate (cosine to 0)");
ABSL_FLAG(int64_t, samples, 64, "weight samples for posterior averaging");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");
ABSL_FLAG(uint64_t, seed, 0, "seed for initialisation, shuffling and sampling");
ABSL_FLAG(std::string, json, "", "also write the results to this file");

namespace adaptd::bench {
namespace {

// The examples whose labels are not held out, relabelled 0..7 in order.
Dataset InDistribution(const Dataset& d, const at::Tensor& held, const at::Tensor& relabel) {
  const at::Tensor keep = held.index_select(0, d.y).logical_not().nonzero().squeeze(1);
  Dataset out = d.Select(keep);
  out.y = relabel.index_select(0, out.y);
  return out;
}

struct Row {
  std::string method, score;
  double auroc = 0, accuracy = 0;
};

}  // namespace

int OodMain() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const Dataset train_all = OrDie(LoadFashionMnist(dir, true), "loading the training set");
  const Dataset test_all = OrDie(LoadFashionMnist(dir, false), "loading the test set");
  at::Tensor held = at::zeros({10}, at::kBool);
  for (absl::string_view c : absl::StrSplit(absl::GetFlag(FLAGS_holdout), ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(c, &v) || v < 0 || v > 9) {
      Die("--holdout", absl::InvalidArgumentError(absl::StrCat("not a class in [0, 10): ", c)));
    }
    held[v] = true;
  }
  const int64_t classes = 10 - held.sum().item<int64_t>();
  const at::Tensor relabel = (held.logical_not().to(at::kLong).cumsum(0) - 1).clamp_min(0);
  const Dataset train = InDistribution(train_all, held, relabel);
  const Dataset test_in = InDistribution(test_all, held, relabel);
  const at::Tensor ood_index = held.index_select(0, test_all.y).nonzero().squeeze(1);
  const at::Tensor x_ood = test_all.x.index_select(0, ood_index);
  // Negatives (in-distribution) first, then positives (held out).
  const at::Tensor x_eval = at::cat({test_in.x, x_ood});
  const at::Tensor is_ood = at::cat({at::zeros({test_in.size()}, at::kBool),
                                     at::ones({x_ood.size(0)}, at::kBool)});
  const int64_t epochs = absl::GetFlag(FLAGS_epochs);
  std::printf("Fashion-MNIST, classes %s held out: %lld training images of %lld classes; test: %lld in-distribution, %lld held out; %lld epochs, %d threads\n",
              absl::GetFlag(FLAGS_holdout).c_str(), static_cast<long long>(train.size()),
              static_cast<long long>(classes), static_cast<long long>(test_in.size()),
              static_cast<long long>(x_ood.size(0)), static_cast<long long>(epochs),
              at::get_num_threads());
  std::vector<Row> rows;
  auto add = [&](const std::string& method, const std::string& score, const at::Tensor& s,
                 const at::Tensor& probs) {
    const double acc = Accuracy(probs.narrow(0, 0, test_in.size()), test_in.y);
    rows.push_back({method, score, OrDie(Auroc(s, is_ood), "AUROC"), acc});
  };
  for (const std::string name : {"ivon", "adam"}) {
    const uint64_t seed = absl::GetFlag(FLAGS_seed);
    TrainOptions o = MpeIvonOptions(train.size(), seed);
    if (name == "adam") {
      o.optimizer = OptimizerKind::kAdam;
      o.lr = absl::GetFlag(FLAGS_adam_lr);
    }
    auto model = OrDie(BuildModel(LeNet5Spec(classes), seed), "building LeNet-5");
    const int64_t steps = epochs * ((train.size() + o.batch_size - 1) / o.batch_size);
    auto trainer = OrDie(Trainer::Create(model.get(), o, steps), "creating the trainer");
    Stopwatch clock;
    for (int64_t e = 1; e <= epochs; ++e) OrDie(trainer->TrainEpoch(train), "training");
    std::printf("[%s] trained in %.0f s\n", name.c_str(), clock.Seconds());
    std::fflush(stdout);
    const Posterior* posterior = trainer->ivon() ? &trainer->ivon()->posterior() : nullptr;
    auto predict = [&](PredictMode mode) {
      PredictOptions po;
      po.mode = mode;
      po.samples = absl::GetFlag(FLAGS_samples);
      return OrDie(Predict(*model, trainer->flat(), posterior, x_eval, po, trainer->generator()),
                   "predicting");
    };
    const Prediction mean = predict(PredictMode::kMean);
    if (!posterior) {
      add("Adam", "softmax entropy", mean.total_entropy, mean.probs);
      continue;
    }
    add("IVON@mean", "softmax entropy", mean.total_entropy, mean.probs);
    const Prediction bayes = predict(PredictMode::kBayes);
    add("IVON, posterior averaging", "entropy", bayes.total_entropy, bayes.probs);
    add("IVON, posterior averaging", "mutual information", bayes.mutual_information, bayes.probs);
    const Prediction lin = predict(PredictMode::kLinearized);
    add("IVON, linearized", "entropy", lin.total_entropy, lin.probs);
    add("IVON, linearized", "mutual information", lin.mutual_information, lin.probs);
  }
  std::printf("\n| method | score | AUROC (held-out vs in-distribution) | in-distribution test accuracy |\n");
  std::printf("|---|---|---|---|\n");
  std::string json = "[";
  double adam = 0, ivon_best = 0;
  for (const Row& r : rows) {
    std::printf("| %s | %s | %.4f | %.2f%% |\n", r.method.c_str(), r.score.c_str(), r.auroc,
                100 * r.accuracy);
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\n {\"method\": \"", r.method,
                    "\", \"score\": \"", r.score, "\", \"auroc\": ", r.auroc, ", \"accuracy\": ",
                    r.accuracy, "}");
    if (r.method == "Adam") adam = r.auroc;
    if (r.method == "IVON, posterior averaging") ivon_best = std::max(ivon_best, r.auroc);
  }
  std::printf("\nIVON posterior averaging (best of entropy, MI) %.4f vs Adam softmax entropy %.4f: %s\n",
              ivon_best, adam, ivon_best >= adam ? "PASS" : "FAIL");
  WriteJson(absl::GetFlag(FLAGS_json), json + "\n]\n");
  return 0;
}

}  // namespace adaptd::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::bench::OodMain();
}

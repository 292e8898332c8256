// Generalization estimated during training without a validation set: IVON on Fashion-MNIST
// (LeNet-5 at the MPE paper's settings: lr 0.1 cosine to 0, h0 0.1,
// beta2 0.99999, ess 60000, weight decay 1e-3, batch 256, 100 epochs) with the memory-
// perturbation leave-one-out estimate (MPE Eq. 16) over all 60,000 training examples at several
// epochs, against the test NLL at the posterior mean. Prints the curves, |LOO-NLL - test NLL| at
// the end and the Pearson correlation between the two curves (targets: <= 0.05 and >= 0.9).
//
//   build/bench/mpe_fmnist --json=mpe_fmnist.json
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
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
#include "core/model.h"
#include "core/mpe.h"
#include "core/predictive.h"
#include "core/train.h"

ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(int64_t, epochs, 100, "training epochs");
ABSL_FLAG(std::string, eval_epochs, "1,2,5,10,20,30,40,50,75,100",
          "epochs after which to compute the LOO estimate and the test NLL");
ABSL_FLAG(int64_t, mpe_batch, 256, "examples per Jacobian pass");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");
ABSL_FLAG(uint64_t, seed, 0, "seed for initialisation, shuffling and sampling");
ABSL_FLAG(std::string, json, "", "also write the results to this file");

namespace adaptd::bench {
namespace {

struct Point {
  int64_t epoch = 0;
  double train_loss = 0, test_acc = 0, test_nll = 0;
  double loo_diag = 0, loo_full = 0, loo_acc = 0;
  double loo_seconds = 0;
};

}  // namespace

int LooDuringTrainingMain() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const Dataset train = OrDie(LoadFashionMnist(dir, true), "loading the training set");
  const Dataset test = OrDie(LoadFashionMnist(dir, false), "loading the test set");
  const int64_t epochs = absl::GetFlag(FLAGS_epochs);
  std::vector<int64_t> eval;
  for (absl::string_view e : absl::StrSplit(absl::GetFlag(FLAGS_eval_epochs), ',')) {
    int64_t v = 0;
    if (absl::SimpleAtoi(e, &v) && v >= 1 && v <= epochs) eval.push_back(v);
  }
  const TrainOptions o = MpeIvonOptions(train.size(), absl::GetFlag(FLAGS_seed));
  auto model = OrDie(BuildModel(LeNet5Spec(10), o.seed), "building LeNet-5");
  const int64_t steps = epochs * ((train.size() + o.batch_size - 1) / o.batch_size);
  auto trainer = OrDie(Trainer::Create(model.get(), o, steps), "creating the trainer");
  const Posterior& posterior = trainer->ivon()->posterior();
  std::printf("IVON LeNet-5 on Fashion-MNIST (%lld train, %lld test), %lld epochs, %d threads\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()),
              static_cast<long long>(epochs), at::get_num_threads());
  std::printf("\n| epoch | train loss | test acc | test NLL | LOO-NLL (Eq. 16, diag) | LOO-NLL (full) | LOO acc | LOO time (s) |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  std::vector<Point> points;
  Stopwatch total;
  double train_seconds = 0;
  for (int64_t e = 1; e <= epochs; ++e) {
    Stopwatch clock;
    const double loss = OrDie(trainer->TrainEpoch(train), "training");
    train_seconds += clock.Seconds();
    if (std::find(eval.begin(), eval.end(), e) == eval.end()) continue;
    Point pt;
    pt.epoch = e;
    pt.train_loss = loss;
    PredictOptions po;
    const at::Tensor p = OrDie(PredictProbs(*model, trainer->flat(), &posterior, test.x, po,
                                            trainer->generator()), "predicting");
    pt.test_acc = Accuracy(p, test.y);
    pt.test_nll = NegativeLogLikelihood(p, test.y);
    const Covariance sigma = Covariance::FromPosterior(posterior);
    MpeOptions mo;
    mo.batch_size = absl::GetFlag(FLAGS_mpe_batch);
    Stopwatch loo_clock;
    const LooEstimate diag = OrDie(EstimateLoo(*model, sigma, train, mo), "LOO (diagonal)");
    pt.loo_seconds = loo_clock.Seconds();
    mo.loo = LooMode::kFull;
    const LooEstimate full = OrDie(EstimateLoo(*model, sigma, train, mo), "LOO (full)");
    pt.loo_diag = diag.nll;
    pt.loo_full = full.nll;
    pt.loo_acc = diag.accuracy;
    points.push_back(pt);
    std::printf("| %lld | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.1f |\n",
                static_cast<long long>(e), pt.train_loss, pt.test_acc, pt.test_nll, pt.loo_diag,
                pt.loo_full, pt.loo_acc, pt.loo_seconds);
    std::fflush(stdout);
  }
  if (points.empty()) Die("no evaluation epochs", absl::InvalidArgumentError("--eval_epochs"));
  auto column = [&](double Point::*field) {
    std::vector<double> v;
    for (const Point& pt : points) v.push_back(pt.*field);
    return at::tensor(v, at::kDouble);
  };
  auto pearson = [](const at::Tensor& a, const at::Tensor& b) {
    const at::Tensor x = a - a.mean(), y = b - b.mean();
    return (x * y).sum().item<double>() /
           std::sqrt((x * x).sum().item<double>() * (y * y).sum().item<double>());
  };
  const Point& last = points.back();
  const double gap_diag = std::abs(last.loo_diag - last.test_nll);
  const double gap_full = std::abs(last.loo_full - last.test_nll);
  const double r_diag = pearson(column(&Point::loo_diag), column(&Point::test_nll));
  const double r_full = pearson(column(&Point::loo_full), column(&Point::test_nll));
  std::printf("\n| estimate | final LOO-NLL | final test NLL | abs gap (target <= 0.05) | Pearson over %zu epochs (target >= 0.9) |\n",
              points.size());
  std::printf("|---|---|---|---|---|\n");
  std::printf("| Eq. 16, diagonal (e v) | %.4f | %.4f | %.4f %s | %.4f %s |\n", last.loo_diag,
              last.test_nll, gap_diag, gap_diag <= 0.05 ? "PASS" : "FAIL", r_diag,
              r_diag >= 0.9 ? "PASS" : "FAIL");
  std::printf("| full K x K block (Gamma e) | %.4f | %.4f | %.4f %s | %.4f %s |\n", last.loo_full,
              last.test_nll, gap_full, gap_full <= 0.05 ? "PASS" : "FAIL", r_full,
              r_full >= 0.9 ? "PASS" : "FAIL");
  // The end of training for reference: posterior averaging as train_fmnist reports it.
  PredictOptions bayes;
  bayes.mode = PredictMode::kBayes;
  const at::Tensor pb = OrDie(PredictProbs(*model, trainer->flat(), &posterior, test.x, bayes,
                                           trainer->generator()), "predicting");
  std::printf("\nfinal test: acc@mean %.4f NLL@mean %.4f; posterior averaging (64 samples) acc %.4f NLL %.4f\n",
              last.test_acc, last.test_nll, Accuracy(pb, test.y), NegativeLogLikelihood(pb, test.y));
  std::printf("training %.0f s, total %.0f s\n", train_seconds, total.Seconds());
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::string json = "{\"points\": [";
    for (size_t i = 0; i < points.size(); ++i) {
      const Point& pt = points[i];
      absl::StrAppend(&json, i ? "," : "", "\n {\"epoch\": ", pt.epoch, ", \"train_loss\": ",
                      pt.train_loss, ", \"test_acc\": ", pt.test_acc, ", \"test_nll\": ",
                      pt.test_nll, ", \"loo_nll_diag\": ", pt.loo_diag, ", \"loo_nll_full\": ",
                      pt.loo_full, ", \"loo_acc\": ", pt.loo_acc, ", \"loo_seconds\": ",
                      pt.loo_seconds, "}");
    }
    absl::StrAppend(&json, "\n], \"gap_diag\": ", gap_diag, ", \"gap_full\": ", gap_full,
                    ", \"pearson_diag\": ", r_diag, ", \"pearson_full\": ", r_full, "}\n");
    WriteJson(absl::GetFlag(FLAGS_json), json);
  }
  return 0;
}

}  // namespace adaptd::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::bench::LooDuringTrainingMain();
}

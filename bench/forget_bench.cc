// Forgetting benchmark (the K-prior's remove_data, Khan & Swaroop 2021): a model learns
// scikit-learn's digits 0-8 mod 2 (the digits-add base task), then forgets a set R of its
// examples with Forget, keeping only its memory. The reference is batch retraining on the data
// without R, from the same initial weights. Three kinds of R:
//   mislabelled: a fraction of the labels flipped before training; R is exactly those (a user
//                who found them, e.g. with the memory map, asks the model to forget them);
//   boundary:    the examples the trained model is least sure of (largest lambda), as in the
//                K-prior paper's remove_data on Adult;
//   random:      examples drawn at random (deletion requests).
// Per seed it prints the test accuracy of the model before, after Forget, after one Newton step
// (the memory-perturbation estimate of the removal) and retrained, and how often each one's test
// predictions agree with the retrained model's; then a table row of the means.
//
//   build/bench/forget_bench --scenario=mislabelled --hidden=0 --seeds=10
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "core/continual.h"
#include "core/data/tasks.h"
#include "core/flat_params.h"
#include "core/memory.h"
#include "core/model.h"

ABSL_FLAG(std::string, scenario, "mislabelled", "mislabelled | boundary | random");
ABSL_FLAG(double, fraction, 0.1, "the share of the base task to forget");
ABSL_FLAG(double, memory_fraction, 0.1, "memory as a fraction of the base task");
ABSL_FLAG(std::string, selection, "lambda", "memory selection: lambda, sensitivity or random");
ABSL_FLAG(int, hidden, 0, "hidden width of a one-layer MLP; 0: logistic regression");
ABSL_FLAG(double, delta, 50, "prior precision over the base task (weight decay delta / N)");
ABSL_FLAG(int64_t, epochs, 150, "epochs of the base training and of batch retraining");
ABSL_FLAG(int64_t, forget_steps, 2000, "Forget's steps (at least)");
ABSL_FLAG(double, ess_factor, 1, "Forget's IVON training ess as a multiple of the memory");
ABSL_FLAG(std::string, weight_precision, "prior",
          "Forget's weight term: prior (the GLM identity) or posterior (IVON's precision)");
ABSL_FLAG(int, seeds, 10, "how many seeds, from --first_seed");
ABSL_FLAG(int, first_seed, 0, "the first seed");
ABSL_FLAG(int, threads, 1, "LibTorch intra-op threads");

namespace adaptd::bench {
namespace {

at::Tensor Predictions(const ContinualState& state, const Dataset& test) {
  auto model = OrDie(MaterializeModel(state), "model");
  model->SetTraining(false);
  return ChunkedLogits(*model, test.x, at::Tensor()).argmax(1);
}

int Main() {
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const std::string scenario = absl::GetFlag(FLAGS_scenario);
  const std::string precision = absl::GetFlag(FLAGS_weight_precision);
  if (precision != "prior" && precision != "posterior") {
    Die("--weight_precision", absl::InvalidArgumentError("expected prior or posterior; got " +
                                                         precision));
  }
  if (scenario != "mislabelled" && scenario != "boundary" && scenario != "random") {
    Die("--scenario", absl::InvalidArgumentError("expected mislabelled, boundary or random; got " +
                                                 scenario));
  }
  struct Row {
    std::vector<double> before, forget, retrain, agree_before, agree_forget, step, agree_step;
    int refused = 0;
  } row;
  const int first = absl::GetFlag(FLAGS_first_seed);
  for (int seed = first; seed < first + absl::GetFlag(FLAGS_seeds); ++seed) {
    const TaskStream stream = OrDie(DigitsAdd(kSklearnDataDir, seed), "digits");
    TaskData base = stream.tasks[0];
    const Dataset& test = stream.tests[0];
    const int64_t n = base.train.size();
    const int64_t r = std::lround(absl::GetFlag(FLAGS_fraction) * static_cast<double>(n));
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + seed);
    const at::Tensor shuffled = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
    if (scenario == "mislabelled") {
      base.train.y = base.train.y.clone();
      base.train.y.index_put_({shuffled.narrow(0, 0, r)},
                              1 - base.train.y.index_select(0, shuffled.narrow(0, 0, r)));
    }

    ModelSpec spec;
    spec.input_shape = {64};
    spec.num_classes = 2;
    spec.architecture = absl::GetFlag(FLAGS_hidden) > 0 ? Architecture::kMlp : Architecture::kLogReg;
    if (absl::GetFlag(FLAGS_hidden) > 0) spec.hidden = {absl::GetFlag(FLAGS_hidden)};
    AdaptConfig c;
    c.method = Method::kKPrior;
    c.ivon.lr = 0.2;
    c.ivon.hess_init = 1.0;
    c.ivon.beta2 = 0.999;
    c.ivon.weight_decay = absl::GetFlag(FLAGS_delta) / static_cast<double>(n);
    c.epochs = absl::GetFlag(FLAGS_epochs);
    c.batch_size = 64;
    c.memory_points = std::lround(absl::GetFlag(FLAGS_memory_fraction) * static_cast<double>(n));
    c.selection = OrDie(ParseSelection(absl::GetFlag(FLAGS_selection)), "--selection");
    c.posterior_precision = false;  // the prior's precision: the GLM identity
    c.seed = static_cast<uint64_t>(seed);
    const ContinualState initial = OrDie(InitialState(spec, seed), "initial state");
    const ContinualState learnt = OrDie(Adapt(initial, base, c), "base training").state;

    // The examples to forget.
    at::Tensor gone;
    if (scenario == "boundary") {
      auto model = OrDie(MaterializeModel(learnt), "model");
      at::NoGradGuard no_grad;
      gone = LambdaScores(at::softmax(model->Forward(base.train.x), 1))
                 .argsort(0, /*descending=*/true)
                 .narrow(0, 0, r);
    } else {
      gone = shuffled.narrow(0, 0, r);
    }
    at::Tensor keep_mask = at::ones({n}, at::kBool);
    keep_mask.index_fill_(0, gone, false);
    TaskData rest = base;
    rest.train = base.train.Select(keep_mask.nonzero().squeeze(1));
    rest.ids = base.ids.index_select(0, keep_mask.nonzero().squeeze(1));
    // Batch retraining under the same prior in total units (delta), the minimiser Forget aims
    // at: the weight decay per example grows as the examples shrink.
    AdaptConfig rc = c;
    rc.ivon.weight_decay = absl::GetFlag(FLAGS_delta) / static_cast<double>(n - r);
    const ContinualState retrained = OrDie(Adapt(initial, rest, rc), "batch retraining").state;

    AdaptConfig fc = c;
    fc.epochs = 1;
    fc.min_steps = absl::GetFlag(FLAGS_forget_steps);
    fc.ess_factor = absl::GetFlag(FLAGS_ess_factor);
    fc.posterior_precision = precision == "posterior";
    const ForgetData forget{base.train.Select(gone), at::zeros({r}, at::kLong),
                            base.ids.index_select(0, gone)};
    absl::StatusOr<AdaptResult> forgot = Forget(learnt, forget, fc);
    if (!forgot.ok()) {  // e.g. a lambda memory that holds only the boundary examples removed
      ++row.refused;
      std::printf("seed %d: Forget refused: %s\n", seed, forgot.status().ToString().c_str());
      continue;
    }

    // The one-step alternative, for comparison: a Newton step on the data without R from the
    // old solution, with the IVON posterior's diagonal precision P as the Hessian. At w* the
    // rest's gradient is minus R's, g = sum_R J_r^T (p_r - y_r), so the step is w* + g / P (the
    // memory-perturbation estimate of removing R, Nickl et al. 2023).
    ContinualState stepped = learnt;
    {
      auto model = OrDie(MaterializeModel(learnt), "model");
      FlatParameters flat = OrDie(FlatParameters::Bind(model->Parameters()), "flat");
      flat.ZeroGrad();
      at::cross_entropy_loss(model->Forward(forget.removed.x), forget.removed.y, {},
                             at::Reduction::Sum)
          .backward();
      stepped.mean = learnt.mean + flat.grads().detach().cpu() / learnt.Precision();
    }

    const at::Tensor ref = Predictions(retrained, test);
    auto accuracy = [&](const ContinualState& s) {
      return 100.0 * OrDie(EvaluateAccuracy(s, test, at::Tensor()), "eval");
    };
    auto agreement = [&](const ContinualState& s) {
      return 100.0 * Predictions(s, test).eq(ref).to(at::kDouble).mean().item<double>();
    };
    row.before.push_back(accuracy(learnt));
    row.forget.push_back(accuracy(forgot->state));
    row.retrain.push_back(accuracy(retrained));
    row.agree_before.push_back(agreement(learnt));
    row.agree_forget.push_back(agreement(forgot->state));
    row.step.push_back(accuracy(stepped));
    row.agree_step.push_back(agreement(stepped));
    std::printf(
        "seed %d: forget %lld of %lld (memory %lld, %lld of them kept); accuracy before %.2f, "
        "after Forget %.2f (%.1f s), one step %.2f, retrained %.2f; agreement with retrained "
        "%.2f -> %.2f (one step %.2f)\n",
        seed, static_cast<long long>(r), static_cast<long long>(n),
        static_cast<long long>(learnt.memory.size()),
        static_cast<long long>(forgot->state.memory.size()), row.before.back(), row.forget.back(),
        forgot->stats.seconds, row.step.back(), row.retrain.back(), row.agree_before.back(),
        row.agree_forget.back(), row.agree_step.back());
    std::fflush(stdout);
  }
  auto pm = [](const std::vector<double>& v) { return absl::StrFormat("%.2f ± %.2f", Mean(v), Std(v)); };
  std::printf("| scenario | model | memory | weight term | seeds (refused) | accuracy before | after Forget | one step | "
              "retrained | agreement with retrained, before | after Forget | one step |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::printf("| %s %.0f %% | %s | %.0f %% %s | %s | %zu (%d) | %s | %s | %s | %s | %s | %s | %s |\n",
              scenario.c_str(),
              100 * absl::GetFlag(FLAGS_fraction),
              absl::GetFlag(FLAGS_hidden) > 0
                  ? absl::StrFormat("MLP [%d]", absl::GetFlag(FLAGS_hidden)).c_str()
                  : "logistic regression",
              100 * absl::GetFlag(FLAGS_memory_fraction), absl::GetFlag(FLAGS_selection).c_str(),
              precision.c_str(), row.before.size(), row.refused, pm(row.before).c_str(),
              pm(row.forget).c_str(), pm(row.step).c_str(), pm(row.retrain).c_str(), pm(row.agree_before).c_str(),
              pm(row.agree_forget).c_str(), pm(row.agree_step).c_str());
  return 0;
}

}  // namespace
}  // namespace adaptd::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::bench::Main();
}

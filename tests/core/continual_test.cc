// K-priors and continual adaptation against oracles: the GLM gradient identity (K-prior with all
// old data == batch retraining), brute-force memory selection, and Adapt's contracts.
#include "core/continual.h"

#include <unistd.h>

#include <functional>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/data/tasks.h"
#include "core/kprior.h"
#include "core/jacobian.h"
#include "core/memory.h"
#include "core/mpe.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "tests/testing/data.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

using Objective = std::function<at::Tensor(const at::Tensor&)>;

// The state as a checkpoint stores it and a start reads it back (through the serialized bytes).
absl::StatusOr<ContinualState> Reloaded(const ContinualState& state) {
  TensorMap saved;
  state.AppendTo(saved);
  absl::StatusOr<TensorMap> parsed = ParseTensors(SerializeTensors(saved));
  if (!parsed.ok()) return parsed.status();
  return ContinualState::FromTensors(*parsed, state.spec);
}

// Newton's method with exact autograd Hessians, in float64: converges to machine precision on
// the smooth, strictly convex objectives below.
at::Tensor Newton(const Objective& f, at::Tensor w, int max_iters = 30) {
  for (int it = 0; it < max_iters; ++it) {
    w = w.detach().requires_grad_(true);
    const at::Tensor g = torch::autograd::grad({f(w)}, {w}, {}, true, true)[0];
    at::Tensor h = at::empty({w.numel(), w.numel()}, at::kDouble);
    for (int64_t i = 0; i < w.numel(); ++i) {
      h[i].copy_(torch::autograd::grad({g[i]}, {w}, {}, true)[0]);
    }
    const at::Tensor step = at::linalg_solve(h, g.detach().unsqueeze(1)).squeeze(1);
    w = w.detach() - step;
    if (g.abs().max().item<double>() < 1e-13) break;
  }
  return w.detach();
}

bool HaveDigits() {
  return ::access((std::string(kSklearnDataDir) + "/digits.csv.gz").c_str(), R_OK) == 0;
}

// Logistic regression (2-class softmax with bias) on digits mod 2: base digits 0-8, add 9.
TEST(KPriorTest, FullMemoryLogisticRegressionEqualsBatchRetraining) {
  if (!HaveDigits()) ADAPTD_SKIP_WITHOUT_DATA("no python3-sklearn");
  auto stream = DigitsAdd(kSklearnDataDir, 1);
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto features = [](const at::Tensor& x) {
    return at::cat({x.to(at::kDouble), at::ones({x.size(0), 1}, at::kDouble)}, 1);
  };
  const at::Tensor x_old = features(stream->tasks[0].train.x), y_old = stream->tasks[0].train.y;
  const at::Tensor x_new = features(stream->tasks[1].train.x), y_new = stream->tasks[1].train.y;
  const int64_t d = x_old.size(1);
  constexpr double kDelta = 50.0;  // prior precision, total units
  auto logits = [&](const at::Tensor& x, const at::Tensor& w) { return x.matmul(w.view({d, 2})); };
  auto nll = [&](const at::Tensor& x, const at::Tensor& y, const at::Tensor& w) {
    return at::cross_entropy_loss(logits(x, w), y, {}, at::Reduction::Sum);
  };
  const at::Tensor w0 = at::zeros({2 * d}, at::kDouble);
  const at::Tensor w_old = Newton([&](const at::Tensor& w) {
    return nll(x_old, y_old, w) + 0.5 * kDelta * w.square().sum();
  }, w0);
  const at::Tensor w_batch = Newton([&](const at::Tensor& w) {
    return nll(x_old, y_old, w) + nll(x_new, y_new, w) + 0.5 * kDelta * w.square().sum();
  }, w0);
  // K-prior with 100% memory: the old data only through soft labels and the weight term.
  const at::Tensor soft = at::softmax(logits(x_old, w_old), 1);
  const at::Tensor prec = at::full({1}, kDelta, at::kDouble);
  const at::Tensor w_kprior = Newton([&](const at::Tensor& w) {
    return nll(x_new, y_new, w) + FunctionSpaceTerm(logits(x_old, w), soft, Likelihood::kCategorical) +
           WeightSpaceTerm({w}, w_old, prec);
  }, w_old);
  const double rel = ((w_kprior - w_batch).abs().max() / w_batch.abs().max()).item<double>();
  std::cout << "K-prior vs batch, max relative weight difference: " << rel << "\n";
  EXPECT_LT(rel, 1e-8);  // the issue's bar is 1e-4; the identity is exact up to rounding
  // Sanity: the old solution itself is far from the batch solution, so the match is not trivial.
  EXPECT_GT(((w_old - w_batch).abs().max() / w_batch.abs().max()).item<double>(), 1e-2);
}

// Forgetting (the K-prior's remove_data): logistic regression on digits 0-8 mod 2, then the 100
// examples the model is least sure of removed. The soft labels of the rest, the weight term and
// the removal term, minimised from the old solution, give batch retraining without them.
TEST(KPriorTest, FullMemoryLogisticRegressionForgetsLikeBatchRetraining) {
  if (!HaveDigits()) ADAPTD_SKIP_WITHOUT_DATA("no python3-sklearn");
  auto stream = DigitsAdd(kSklearnDataDir, 1);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const at::Tensor x = at::cat({stream->tasks[0].train.x.to(at::kDouble),
                                at::ones({stream->tasks[0].train.size(), 1}, at::kDouble)}, 1);
  const at::Tensor y = stream->tasks[0].train.y;
  const int64_t d = x.size(1);
  constexpr double kDelta = 50.0;
  auto logits = [&](const at::Tensor& rows, const at::Tensor& w) {
    return x.index_select(0, rows).matmul(w.view({d, 2}));
  };
  auto objective = [&](const at::Tensor& rows) {
    return [&, rows](const at::Tensor& w) {
      return at::cross_entropy_loss(logits(rows, w), y.index_select(0, rows), {},
                                    at::Reduction::Sum) + 0.5 * kDelta * w.square().sum();
    };
  };
  const at::Tensor all = at::arange(x.size(0), at::kLong);
  const at::Tensor w_old = Newton(objective(all), at::zeros({2 * d}, at::kDouble));
  const at::Tensor p_old = at::softmax(logits(all, w_old), 1);
  const at::Tensor order = (p_old * (1 - p_old)).sum(1).argsort(0, /*descending=*/true);
  const at::Tensor gone = order.narrow(0, 0, 100), kept = order.narrow(0, 100, x.size(0) - 100);
  const at::Tensor w_batch = Newton(objective(kept), at::zeros({2 * d}, at::kDouble));
  const at::Tensor prec = at::full({1}, kDelta, at::kDouble);
  const at::Tensor w_forget = Newton([&](const at::Tensor& w) {
    return FunctionSpaceTerm(logits(kept, w), p_old.index_select(0, kept), Likelihood::kCategorical) +
           WeightSpaceTerm({w}, w_old, prec) +
           RemovalTerm(logits(gone, w), p_old.index_select(0, gone), y.index_select(0, gone));
  }, w_old);
  const double rel = ((w_forget - w_batch).abs().max() / w_batch.abs().max()).item<double>();
  std::cout << "K-prior forgetting vs batch, max relative weight difference: " << rel << "\n";
  EXPECT_LT(rel, 1e-8);
  EXPECT_GT(((w_old - w_batch).abs().max() / w_batch.abs().max()).item<double>(), 1e-2);
}

// Linear regression, Gaussian likelihood: the K-prior with all old data gives the closed-form
// batch solution (X^T X + delta I)^-1 X^T y.
TEST(KPriorTest, FullMemoryLinearRegressionEqualsClosedForm) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x_old = at::randn({300, 8}, gen, f64), x_new = at::randn({60, 8}, gen, f64) + 0.5;
  const at::Tensor w_true = at::randn({8}, gen, f64);
  const at::Tensor y_old = x_old.matmul(w_true) + 0.3 * at::randn({300}, gen, f64);
  const at::Tensor y_new = x_new.matmul(w_true) + 0.3 * at::randn({60}, gen, f64);
  constexpr double kDelta = 2.0;
  auto solve = [&](const at::Tensor& x, const at::Tensor& y) {
    return at::linalg_solve(x.t().matmul(x) + kDelta * at::eye(8, f64), x.t().matmul(y).unsqueeze(1)).squeeze(1);
  };
  const at::Tensor w_old = solve(x_old, y_old);
  const at::Tensor w_batch = solve(at::cat({x_old, x_new}), at::cat({y_old, y_new}));
  const at::Tensor f_old = x_old.matmul(w_old);
  const at::Tensor prec = at::full({1}, kDelta, f64);
  const at::Tensor w_kprior = Newton([&](const at::Tensor& w) {
    return 0.5 * (y_new - x_new.matmul(w)).square().sum() +
           FunctionSpaceTerm(x_old.matmul(w).unsqueeze(1), f_old.unsqueeze(1), Likelihood::kGaussian) +
           WeightSpaceTerm({w}, w_old, prec);
  }, at::zeros({8}, f64), 3);
  const double rel = ((w_kprior - w_batch).abs().max() / w_batch.abs().max()).item<double>();
  EXPECT_LT(rel, 1e-8) << rel;
}

// The replay correction turns the soft-label gradient into the true-label one.
TEST(KPriorTest, ReplayCorrectionGivesTrueLabelGradient) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2);
  const at::Tensor logits = at::randn({6, 4}, gen, at::kDouble).requires_grad_();
  const at::Tensor p_old = at::softmax(at::randn({6, 4}, gen, at::kDouble), 1);
  const at::Tensor y = at::tensor({0, 3, 1, 1, 2, 0}, at::kLong);
  const at::Tensor corrected = FunctionSpaceTerm(logits, p_old, Likelihood::kCategorical) +
                               ReplayCorrectionTerm(logits, p_old, y);
  const at::Tensor g1 = torch::autograd::grad({corrected}, {logits})[0];
  const at::Tensor g2 = torch::autograd::grad(
      {at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum)}, {logits})[0];
  EXPECT_TRUE(at::allclose(g1, g2, 1e-12, 1e-12));
}

// Distillation's gradient is T (softmax(f / T) - softmax(f_old / T)) (closed form, float64);
// T = 1 is the soft-label term itself, and masked classes (-inf) take no part.
TEST(KPriorTest, DistillationTermHasTheClosedFormGradient) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor raw = at::randn({5, 4}, gen, at::kDouble) * 3;
  at::Tensor old = at::randn({5, 4}, gen, at::kDouble) * 3;
  raw.select(1, 3).fill_(-inf);  // a masked class
  old.select(1, 3).fill_(-inf);
  for (double t : {1.0, 2.0, 4.5}) {
    const at::Tensor logits = raw.clone().requires_grad_();
    const at::Tensor term = DistillationTerm(logits, old, t);
    ASSERT_TRUE(std::isfinite(term.item<double>())) << t;
    const at::Tensor g = torch::autograd::grad({term}, {logits})[0];
    const at::Tensor expected = t * (at::softmax(raw / t, 1) - at::softmax(old / t, 1));
    EXPECT_TRUE(at::allclose(g, expected, 1e-12, 1e-12)) << "T = " << t;
    EXPECT_EQ(g.select(1, 3).abs().sum().item<double>(), 0.0);
    if (t == 1.0) {
      const at::Tensor soft = FunctionSpaceTerm(raw, at::softmax(old, 1), Likelihood::kCategorical);
      EXPECT_NEAR(term.item<double>(), soft.item<double>(), 1e-12);
    }
  }
}

// Per example, the gradient is the sum over the label sets of the restricted softmax
// differences; classes outside every set get none, and a shift of the old logits that is constant
// within each set changes nothing.
TEST(KPriorTest, LabelSetTermHasTheClosedFormGradient) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor raw = at::randn({6, 7}, gen, at::kDouble) * 3;
  const at::Tensor old = at::randn({6, 7}, gen, at::kDouble) * 3;
  // Two label sets, {0, 1, 2} and {3, 4}; classes 5 and 6 belong to neither.
  const at::Tensor groups = at::zeros({2, 7}, at::kBool);
  groups[0].narrow(0, 0, 3).fill_(true);
  groups[1].narrow(0, 3, 2).fill_(true);
  const at::Tensor logits = raw.clone().requires_grad_();
  const at::Tensor term = LabelSetTerm(logits, old, groups);
  const at::Tensor g = torch::autograd::grad({term}, {logits})[0];
  at::Tensor expected = at::zeros_like(raw);
  double value = 0;
  for (int64_t j = 0; j < 2; ++j) {
    const at::Tensor idx = groups[j].nonzero().squeeze(1);
    const at::Tensor p = at::softmax(raw.index_select(1, idx), 1);
    const at::Tensor q = at::softmax(old.index_select(1, idx), 1);
    expected.index_add_(1, idx, p - q);
    value += -(q * p.log()).sum().item<double>();
  }
  EXPECT_TRUE(at::allclose(g, expected, 1e-12, 1e-12));
  EXPECT_NEAR(term.item<double>(), value, 1e-10);
  EXPECT_EQ(g.narrow(1, 5, 2).abs().sum().item<double>(), 0.0);
  // Old logits shifted by a constant per set (and anything outside the sets): same gradient.
  at::Tensor shifted = old.clone();
  shifted.narrow(1, 0, 3).add_(1.5);
  shifted.narrow(1, 3, 2).sub_(4.0);
  shifted.narrow(1, 5, 2).add_(100.0);
  const at::Tensor logits2 = raw.clone().requires_grad_();
  const at::Tensor g2 = torch::autograd::grad({LabelSetTerm(logits2, shifted, groups)}, {logits2})[0];
  EXPECT_TRUE(at::allclose(g2, expected, 1e-12, 1e-12));
}

ModelSpec SmallMlp(int64_t classes = 4) {
  ModelSpec s;
  s.architecture = Architecture::kMlp;
  s.input_shape = {6};
  s.num_classes = classes;
  s.hidden = {8};
  return s;
}

// Multinomial logistic regression on the same inputs.
ModelSpec SmallLogReg() {
  ModelSpec s = SmallMlp();
  s.architecture = Architecture::kLogReg;
  s.hidden.clear();
  return s;
}

Dataset Blobs(int64_t n, int64_t classes, uint64_t seed) {
  return testing_models::Blobs(n, classes, /*dim=*/6, seed);
}

// lambda_i = sum_k p_ik (1 - p_ik), by hand.
TEST(MemoryTest, LambdaScoresAreTheSumOfBernoulliVariances) {
  const at::Tensor probs = at::tensor({0.5, 0.5, 0.0, 1.0, 0.0, 0.0, 0.2, 0.3, 0.5}, at::kDouble)
                               .reshape({3, 3});
  const at::Tensor scores = LambdaScores(probs);
  EXPECT_DOUBLE_EQ(scores[0].item<double>(), 0.5);
  EXPECT_DOUBLE_EQ(scores[1].item<double>(), 0.0);
  EXPECT_NEAR(scores[2].item<double>(), 0.16 + 0.21 + 0.25, 1e-15);
}

// Each mixed row lies on the segment between its own example and one of the same task: with
// one-hot inputs the row's mass is u on its example and 1 - u on the partner, and sums to 1.
TEST(MemoryTest, MixedInputsLieBetweenTwoExamplesOfOneTask) {
  Memory m;
  m.x = at::eye(6, at::kFloat).reshape({6, 1, 6});  // a non-flat input shape too
  m.y = at::tensor({3, 1, 4, 1, 5, 9}, at::kLong);
  m.task = at::tensor({0, 0, 0, 1, 1, 2}, at::kLong);
  m.id = at::arange(100, 106, at::kLong);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const int64_t k = 200;
  const Memory mixed = MixMemory(m, k, gen);
  ASSERT_EQ(mixed.size(), 6 * k);
  EXPECT_FALSE(mixed.soft.defined());
  EXPECT_EQ(mixed.x.sizes(), (std::vector<int64_t>{6 * k, 1, 6}));
  const at::Tensor x = mixed.x.reshape({6 * k, 6}).to(at::kDouble);
  std::vector<std::vector<int>> partners(6, std::vector<int>(6, 0));
  double u_min = 1, u_max = 0;
  for (int64_t r = 0; r < 6 * k; ++r) {
    const int64_t i = r % 6;
    ASSERT_EQ(mixed.y[r].item<int64_t>(), m.y[i].item<int64_t>());
    ASSERT_EQ(mixed.task[r].item<int64_t>(), m.task[i].item<int64_t>());
    ASSERT_EQ(mixed.id[r].item<int64_t>(), m.id[i].item<int64_t>());
    ASSERT_NEAR(x[r].sum().item<double>(), 1.0, 1e-6);
    const double u = x[r][i].item<double>();
    for (int64_t j = 0; j < 6; ++j) {
      if (j == i || x[r][j].item<double>() == 0) continue;
      ASSERT_EQ(m.task[j].item<int64_t>(), m.task[i].item<int64_t>()) << "row " << r;
      ++partners[i][j];
      u_min = std::min(u_min, u);
      u_max = std::max(u_max, u);
    }
  }
  // u ~ U(0, 1); every other example of the task is drawn (about k / 3 times in task 0), and a
  // task of one example mixes with itself only.
  EXPECT_LT(u_min, 0.05);
  EXPECT_GT(u_max, 0.95);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      if (i != j) {
        EXPECT_GT(partners[i][j], k / 5) << i << " with " << j;
      }
    }
  }
  EXPECT_GT(partners[3][4], k / 3);
  EXPECT_TRUE(at::equal(mixed.x.reshape({6 * k, 6}).index_select(0, at::arange(5, 6 * k, 6)),
                        at::eye(6, at::kFloat)[5].expand({k, 6})));
  EXPECT_EQ(MixMemory(Memory(), 3, gen).size(), 0);
}

// EWC's Fisher on logistic regression, whose per-example gradient has the closed form
// (p_i - y_i) [x_i, 1]: with batches of one it is sum_i g_i^2 exactly; with batches of 64 over
// 150 examples (64, 64, 22) it is N / 3 * sum_b len_b * (mean of g_i over b)^2, the short last
// batch weighted by its own length.
TEST(AdaptTest, EmpiricalFisherMatchesPerExampleGradientsOnLogisticRegression) {
  auto model = BuildModel(SmallLogReg(), 4);
  ASSERT_TRUE(model.ok());
  auto flat = FlatParameters::Bind((*model)->Parameters());
  ASSERT_TRUE(flat.ok()) << flat.status();
  const Dataset d = Blobs(150, 4, 9);
  at::Tensor per_example;  // [N, P] in float64, laid out as the flat parameters (W, then b)
  {
    at::NoGradGuard g;
    const at::Tensor p = at::softmax((*model)->Forward(d.x), 1).to(at::kDouble);
    const at::Tensor e = p - at::one_hot(d.y, 4).to(at::kDouble);  // [N, K]
    const at::Tensor x = d.x.to(at::kDouble);                     // [N, 6]
    per_example = at::cat({(e.unsqueeze(2) * x.unsqueeze(1)).reshape({150, -1}), e}, 1);
  }
  ASSERT_EQ(per_example.size(1), flat->numel());
  const at::Tensor one = EmpiricalFisher(**model, *flat, d, at::Tensor(), 1).to(at::kDouble);
  EXPECT_TRUE(at::allclose(one, per_example.square().sum(0), 1e-4, 1e-7));
  at::Tensor expected = at::zeros({flat->numel()}, at::kDouble);
  for (int64_t s = 0; s < 150; s += 64) {
    const int64_t len = std::min<int64_t>(64, 150 - s);
    expected += static_cast<double>(len) * per_example.narrow(0, s, len).mean(0).square();
  }
  expected *= 150.0 / 3.0;
  const at::Tensor batched = EmpiricalFisher(**model, *flat, d, at::Tensor(), 64).to(at::kDouble);
  EXPECT_TRUE(at::allclose(batched, expected, 1e-4, 1e-7))
      << (batched - expected).abs().max().item<double>() << " of " << expected.abs().max().item<double>();
}

// Top-lambda per class, streamed in small batches, equals sorting every score at once.
TEST(MemoryTest, StreamingSelectionMatchesBruteForce) {
  auto model = BuildModel(SmallMlp(), 3);
  ASSERT_TRUE(model.ok());
  const Dataset d = Blobs(500, 4, 8);
  SelectionOptions o;
  o.points = 40;
  o.batch_size = 37;  // many partial batches
  auto mem = SelectMemory(**model, d, at::Tensor(), 2, at::Tensor(), o);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ASSERT_EQ(mem->size(), 40);
  EXPECT_TRUE(mem->task.eq(2).all().item<bool>());
  at::NoGradGuard g;
  const at::Tensor scores = LambdaScores(at::softmax((*model)->Forward(d.x), 1));
  for (int64_t c = 0; c < 4; ++c) {
    const at::Tensor rows = d.y.eq(c).nonzero().squeeze(1);
    const at::Tensor top = rows.index_select(0, std::get<1>(scores.index_select(0, rows).topk(10)));
    const at::Tensor picked = mem->id.index_select(0, mem->y.eq(c).nonzero().squeeze(1));
    EXPECT_TRUE(at::equal(std::get<0>(top.sort()), std::get<0>(picked.sort()))) << "class " << c;
  }
  // The stored targets are the model's predictions on the stored inputs.
  EXPECT_TRUE(at::allclose(mem->soft, at::softmax((*model)->Forward(mem->x), 1)));
  // An example whose score is not a number ranks last, not first (as topk would rank it).
  Dataset with_nan{d.x.clone(), d.y};
  with_nan.x[0].fill_(std::numeric_limits<float>::quiet_NaN());
  auto picked = SelectMemory(**model, with_nan, at::Tensor(), 2, at::Tensor(), o);
  ASSERT_TRUE(picked.ok()) << picked.status();
  EXPECT_FALSE(picked->id.eq(0).any().item<bool>());
}

// Sensitivity selection keeps, per class, the examples with the largest MPE sensitivity.
TEST(MemoryTest, SensitivitySelectionMatchesTheMemoryMap) {
  auto model = BuildModel(SmallMlp(), 3);
  ASSERT_TRUE(model.ok());
  const Dataset d = Blobs(300, 4, 8);
  const int64_t p = (*model)->NumParameters();
  const at::Tensor variance = at::full({p}, 1e-3);
  SelectionOptions o;
  o.method = SelectionMethod::kSensitivity;
  o.points = 20;
  o.batch_size = 64;
  o.variance = variance;
  auto mem = SelectMemory(**model, d, at::Tensor(), 0, at::Tensor(), o);
  ASSERT_TRUE(mem.ok()) << mem.status();
  auto cov = Covariance::Diagonal(variance);
  auto map = ComputeMemoryMap(**model, *cov, d);
  ASSERT_TRUE(map.ok());
  for (int64_t c = 0; c < 4; ++c) {
    const at::Tensor rows = d.y.eq(c).nonzero().squeeze(1);
    const at::Tensor top = rows.index_select(0, std::get<1>(map->sensitivity.index_select(0, rows).topk(5)));
    const at::Tensor picked = mem->id.index_select(0, mem->y.eq(c).nonzero().squeeze(1));
    EXPECT_TRUE(at::equal(std::get<0>(top.sort()), std::get<0>(picked.sort()))) << "class " << c;
  }
  o.variance = at::Tensor();
  EXPECT_EQ(SelectMemory(**model, d, at::Tensor(), 0, at::Tensor(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Rows held from earlier runs on a task compete with the new rows. Under random selection each
// stands for the examples it was drawn from: 10 rows held for 60 earlier examples against 60
// new ones should keep about half of the 10 places, not the 10 / 70 that equal keys give.
TEST(MemoryTest, HeldRowsWeighAsTheExamplesTheyStandFor) {
  auto model = BuildModel(SmallMlp(), 3);
  ASSERT_TRUE(model.ok());
  const Dataset d = Blobs(70, 2, 12);  // rows 0-9 play the held ones
  SelectionOptions o;
  o.method = SelectionMethod::kRandom;
  o.points = 10;
  o.held = 10;
  o.held_weight = 6;
  double held_share = 0;
  constexpr int kDraws = 400;
  for (int seed = 0; seed < kDraws; ++seed) {
    o.seed = static_cast<uint64_t>(seed);
    auto mem = SelectMemory(**model, d, at::Tensor(), 0, at::Tensor(), o);
    ASSERT_TRUE(mem.ok()) << mem.status();
    ASSERT_EQ(mem->size(), 10);
    held_share += mem->id.lt(10).sum().item<double>() / 10.0 / kDraws;
  }
  // A uniform draw over the 120 examples gives 0.5 (sd of this mean about 0.008); equal keys
  // would give 1/7.
  EXPECT_NEAR(held_share, 0.5, 0.04);
  o.held_weight = 0.5;
  EXPECT_EQ(SelectMemory(**model, d, at::Tensor(), 0, at::Tensor(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MemoryTest, ShortClassesDonateTheirQuota) {
  auto model = BuildModel(SmallMlp(), 3);
  Dataset d = Blobs(400, 4, 9);
  const at::Tensor keep = d.y.ne(3).logical_or(at::arange(400).lt(40));  // few class-3 points
  d = d.Select(keep.nonzero().squeeze(1));
  const int64_t class3 = d.y.eq(3).sum().item<int64_t>();
  ASSERT_LT(class3, 15);
  SelectionOptions o;
  o.points = 60;
  auto mem = SelectMemory(**model, d, at::Tensor(), 0, at::Tensor(), o);
  ASSERT_TRUE(mem.ok()) << mem.status();
  EXPECT_EQ(mem->size(), 60);
  EXPECT_EQ(mem->y.eq(3).sum().item<int64_t>(), class3);
  EXPECT_EQ(std::get<0>(at::_unique(mem->id)).numel(), 60);  // no example twice
  // The shortfall goes evenly to the other classes, and each keeps its top-lambda examples.
  at::NoGradGuard g;
  const at::Tensor scores = LambdaScores(at::softmax((**model).Forward(d.x), 1));
  const int64_t rest = 60 - class3;
  for (int64_t c = 0; c < 3; ++c) {
    const at::Tensor picked = mem->id.index_select(0, mem->y.eq(c).nonzero().squeeze(1));
    EXPECT_GE(picked.numel(), rest / 3) << "class " << c;
    EXPECT_LE(picked.numel(), (rest + 2) / 3) << "class " << c;
    const at::Tensor rows = d.y.eq(c).nonzero().squeeze(1);
    const at::Tensor top = rows.index_select(
        0, std::get<1>(scores.index_select(0, rows).topk(picked.numel())));
    EXPECT_TRUE(at::equal(std::get<0>(top.sort()), std::get<0>(picked.sort()))) << "class " << c;
  }
}

AdaptConfig SmallConfig(Method m) {
  AdaptConfig c;
  c.method = m;
  c.ivon.lr = 0.2;
  c.ivon.hess_init = 0.1;
  c.ivon.weight_decay = 1e-3;
  c.ivon.beta2 = 0.999;
  c.epochs = 2;
  c.batch_size = 32;
  c.memory_points = 20;
  if (m == Method::kFromp) {
    // IVON's unnormalised Newton step needs a soft FROMP term and a clipped update (as in the
    // benchmarks); at tau 1 this run diverges.
    c.fromp_tau = 0.01;
    c.ivon.clip_radius = 0.1;
  }
  return c;
}

TEST(AdaptTest, EveryMethodRunsTwoTasksAndKeepsItsState) {
  for (Method m : {Method::kKPrior, Method::kFromp, Method::kEwc, Method::kReplay,
                   Method::kFinetune, Method::kJoint}) {
    auto s0 = InitialState(SmallMlp(), 1);
    ASSERT_TRUE(s0.ok());
    TaskData t0{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()};
    TaskData t1{1, Blobs(150, 4, 2), at::Tensor(), at::Tensor()};
    int64_t steps = 0;
    auto r0 = Adapt(*s0, t0, SmallConfig(m), [&](const StepReport& r) { steps = r.step; });
    ASSERT_TRUE(r0.ok()) << MethodName(m) << ": " << r0.status();
    EXPECT_EQ(steps, 2 * 7);
    auto r1 = Adapt(r0->state, t1, SmallConfig(m));
    ASSERT_TRUE(r1.ok()) << MethodName(m) << ": " << r1.status();
    EXPECT_EQ(r1->state.tasks_seen, 2);
    // A checkpoint of the state between the tasks continues bit-identically.
    auto restored = Reloaded(r0->state);
    ASSERT_TRUE(restored.ok()) << MethodName(m) << ": " << restored.status();
    auto r1_restored = Adapt(*restored, t1, SmallConfig(m));
    ASSERT_TRUE(r1_restored.ok()) << r1_restored.status();
    EXPECT_TRUE(at::equal(r1->state.mean, r1_restored->state.mean)) << MethodName(m);
    EXPECT_TRUE(at::equal(r1->state.hess, r1_restored->state.hess)) << MethodName(m);
    EXPECT_EQ(r1->state.memory.size(), r1_restored->state.memory.size()) << MethodName(m);
    EXPECT_FALSE(at::equal(r0->state.mean, r1->state.mean));
    switch (m) {
      case Method::kKPrior:
      case Method::kFromp:
        EXPECT_EQ(r1->state.memory.size(), 40) << MethodName(m);
        break;
      case Method::kReplay:
        EXPECT_EQ(r1->state.memory.size(), 40);  // capacity: 20 per task seen
        EXPECT_EQ(r1->state.stream_seen, 350);
        break;
      case Method::kJoint:
        EXPECT_EQ(r1->state.seen.size(), 350);
        EXPECT_EQ(r1->stats.steps, 2 * 11);
        break;
      case Method::kEwc:
        EXPECT_TRUE(r1->state.fisher.defined());
        EXPECT_GT(r1->state.fisher.sum().item<double>(), r0->state.fisher.sum().item<double>());
        break;
      case Method::kFinetune:
        EXPECT_EQ(r1->state.memory.size(), 0);
        break;
    }
  }
}

// A user's TorchScript module that passes the one-example check at creation but fails on a
// batch: the run ends FAILED_PRECONDITION, naming what the module did, rather than as an internal
// error of the service.
TEST(AdaptTest, AModuleThatFailsOnABatchIsTheModelsFault) {
  torch::jit::Module single("OneAtATime");
  single.register_parameter("w", at::full({4, 6}, 0.1f), false);
  single.define(R"(
    def forward(self, x):
        assert x.size(0) == 1, "this module takes one example at a time"
        return x.matmul(self.w.t())
  )");
  torch::jit::Module blind = testing_models::BatchBlindModule(4);
  const TaskData task{0, Blobs(64, 4, 1), at::Tensor(), at::Tensor()};
  for (const auto& [module, says] :
       {std::pair<torch::jit::Module*, std::string>{&single, "one example at a time"},
        {&blind, "maps [32, 6] to [1, 4]; expected [32, 4]"}}) {
    auto s0 = InitialState(testing_models::ScriptSpec(*module, 6, 4), 1);
    ASSERT_TRUE(s0.ok()) << s0.status();
    auto r = Adapt(*s0, task, SmallConfig(Method::kFinetune));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    // What went wrong comes first, before the interpreter's tracebacks.
    const std::string message(r.status().message());
    EXPECT_THAT(message.substr(0, message.find('\n')), testing::HasSubstr(says)) << message;
  }
}

TEST(AdaptTest, BadInputIsRejectedAndCancellationStops) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  const at::Tensor before = s0->mean.clone();
  TaskData bad{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()};
  bad.train.y[3] = 7;
  auto r = Adapt(*s0, bad, SmallConfig(Method::kKPrior));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("labels must lie in [0, 4)"));
  TaskData wrong_shape{0, Dataset{at::zeros({10, 5}), at::zeros({10}, at::kLong)}, at::Tensor(), at::Tensor()};
  EXPECT_EQ(Adapt(*s0, wrong_shape, SmallConfig(Method::kKPrior)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto head = MakeLabelMask({0, 1}, 4);
  TaskData outside{0, Blobs(50, 4, 1), *head, at::Tensor()};
  EXPECT_THAT(std::string(Adapt(*s0, outside, SmallConfig(Method::kKPrior)).status().message()),
              testing::HasSubstr("outside the task's label set"));
  AdaptConfig cold = SmallConfig(Method::kKPrior);
  cold.distill_temperature = -1;
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, cold)
                              .status().message()),
              testing::HasSubstr("distill_temperature must be 0 (off) or in [0.01, 100]; got -1"));
  cold.distill_temperature = 1e-46;  // f / T would overflow to inf and the softmax to NaN
  EXPECT_EQ(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, cold).status().code(),
            absl::StatusCode::kInvalidArgument);
  AdaptConfig frozen = SmallConfig(Method::kKPrior);
  frozen.ess_factor = 0;
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, frozen)
                              .status().message()),
              testing::HasSubstr("ess_factor must be in (0, 1e6] (1: the plain posterior); got 0"));
  frozen.ess_factor = 1e34;  // ess (h + delta) would leave float32's range
  EXPECT_EQ(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, frozen).status().code(),
            absl::StatusCode::kInvalidArgument);
  AdaptConfig curved = SmallConfig(Method::kKPrior);
  curved.curvature_points = 0;
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, curved)
                              .status().message()),
              testing::HasSubstr("curvature_points must be in [1, 2147483648]; got 0"));
  curved.curvature_points = 1000;
  curved.memory_mixup = 65;  // 65 more copies of the memory's inputs
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, curved)
                              .status().message()),
              testing::HasSubstr("memory_mixup must be in [0, 64]; got 65"));
  // Each of the regularizers' own settings is named when it alone is wrong.
  AdaptConfig strict = SmallConfig(Method::kKPrior);
  strict.ewc_lambda = -2;
  EXPECT_EQ(strict.Validate().message(), "ewc_lambda must be >= 0 and finite; got -2");
  strict.ewc_lambda = 1;
  strict.fromp_tau = -1;
  EXPECT_EQ(strict.Validate().message(), "fromp_tau must be >= 0 and finite; got -1");
  strict.fromp_tau = 1;
  strict.fromp_jitter = 0;
  EXPECT_EQ(strict.Validate().message(), "fromp_jitter must be > 0 and finite; got 0");
  AdaptConfig hasty = SmallConfig(Method::kKPrior);
  hasty.min_steps = -1;
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, hasty)
                              .status().message()),
              testing::HasSubstr("min_steps must be in [0, 1000000000]; got -1"));
  hasty.min_steps = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, hasty).status().code(),
            absl::StatusCode::kInvalidArgument);
  AdaptConfig heavy = SmallConfig(Method::kKPrior);
  heavy.new_input_weight = std::nan("");
  EXPECT_THAT(std::string(Adapt(*s0, TaskData{0, Blobs(50, 4, 1), at::Tensor(), at::Tensor()}, heavy)
                              .status().message()),
              testing::HasSubstr("new_input_weight must be >= 0 and finite (0: off); got nan"));
  TaskData good{0, Blobs(100, 4, 1), at::Tensor(), at::Tensor()};
  int calls = 0;
  auto cancelled = Adapt(*s0, good, SmallConfig(Method::kKPrior), nullptr, [&] { return ++calls > 3; });
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(at::equal(before, s0->mean));  // the input state never changes
  // A stop asked for after the last step (while the memory is selected) is still a cancelled
  // run, not a finished one that its caller would publish.
  for (const SelectionMethod m : {SelectionMethod::kLambda, SelectionMethod::kSensitivity}) {
    AdaptConfig c = SmallConfig(Method::kKPrior);
    c.selection = m;
    bool trained = false;
    auto late = Adapt(
        *s0, good, c, [&](const StepReport& r) { trained = r.step == r.total_steps; },
        [&] { return trained; });
    EXPECT_EQ(late.status().code(), absl::StatusCode::kCancelled) << late.status();
    EXPECT_THAT(std::string(late.status().message()), testing::HasSubstr("memory selection stopped"));
  }
  // EWC selects nothing; its Fisher comes after the last step.
  bool trained = false;
  auto late = Adapt(
      *s0, good, SmallConfig(Method::kEwc),
      [&](const StepReport& r) { trained = r.step == r.total_steps; }, [&] { return trained; });
  EXPECT_EQ(late.status().code(), absl::StatusCode::kCancelled) << late.status();
  EXPECT_THAT(std::string(late.status().message()), testing::HasSubstr("cancelled after training"));
}

// A task learnt in several runs (online mode) keeps memory_points of it, not memory_points per
// run: with lambda selection the memory holds the top-lambda rows of each class among those
// the first run kept and the second run's, under the second run's model; a replay buffer keeps
// memory_points per task as well.
TEST(AdaptTest, ATaskLearntInSeveralRunsKeepsOneBudget) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  const Dataset all = Blobs(160, 4, 21);
  TaskData first{0, all.Select(at::arange(80, at::kLong)), at::Tensor(), at::arange(80, at::kLong)};
  TaskData second{0, all.Select(at::arange(80, 160, at::kLong)), at::Tensor(),
                  at::arange(80, 160, at::kLong)};
  second.learnt_before = 80;
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.selection = SelectionMethod::kLambda;
  auto r1 = Adapt(*s0, first, c);
  ASSERT_TRUE(r1.ok()) << r1.status();
  ASSERT_EQ(r1->state.memory.size(), 20);
  auto r2 = Adapt(r1->state, second, c);
  ASSERT_TRUE(r2.ok()) << r2.status();
  const Memory& m = r2->state.memory;
  ASSERT_EQ(m.size(), 20);
  EXPECT_TRUE(m.task.eq(0).all().item<bool>());
  auto model = MaterializeModel(r2->state);
  ASSERT_TRUE(model.ok());
  (*model)->SetTraining(false);
  const at::Tensor candidates = at::cat({r1->state.memory.id, second.ids});
  const at::Tensor x = at::cat({r1->state.memory.x, second.train.x});
  const at::Tensor y = at::cat({r1->state.memory.y, second.train.y});
  const at::Tensor scores = LambdaScores(at::softmax((*model)->Forward(x), 1)).detach();
  for (int64_t cls = 0; cls < 4; ++cls) {
    const at::Tensor rows = y.eq(cls).nonzero().squeeze(1);
    const at::Tensor top = candidates.index_select(
        0, rows.index_select(0, std::get<1>(scores.index_select(0, rows).topk(5))));
    const at::Tensor picked = m.id.index_select(0, m.y.eq(cls).nonzero().squeeze(1));
    EXPECT_TRUE(at::equal(std::get<0>(top.sort()), std::get<0>(picked.sort()))) << "class " << cls;
  }
  AdaptConfig replay = SmallConfig(Method::kReplay);
  auto p1 = Adapt(*s0, first, replay);
  ASSERT_TRUE(p1.ok()) << p1.status();
  auto p2 = Adapt(p1->state, second, replay);
  ASSERT_TRUE(p2.ok()) << p2.status();
  EXPECT_EQ(p2->state.memory.size(), 20);
}

// Distilling on the memory keeps the old model's softened predictions there closer than the
// replay-corrected term alone does (same seeds, same data).
TEST(AdaptTest, DistillationKeepsTheMemoryCloserToTheOldModel) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.replay_correction = true;
  c.epochs = 5;
  auto r0 = Adapt(*s0, TaskData{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()}, c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  const Memory& m = r0->state.memory;
  auto divergence = [&](double t) {
    AdaptConfig d = c;
    d.distill_temperature = t;
    auto r1 = Adapt(r0->state, TaskData{1, Blobs(200, 4, 7), at::Tensor(), at::Tensor()}, d);
    EXPECT_TRUE(r1.ok()) << r1.status();
    auto model = MaterializeModel(r1->state);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::NoGradGuard no_grad;
    const at::Tensor now = at::log_softmax((*model)->Forward(m.x) / 2.0, 1);
    const at::Tensor before = at::softmax(m.logits / 2.0, 1);
    return (before * (before.log() - now)).sum(1).mean().item<double>();  // KL(old || new)
  };
  const double without = divergence(0);
  const double with = divergence(2);
  EXPECT_LT(with, without);
}

// Two task-incremental tasks on `all`'s four classes: {0, 1} and {2, 3}, each with its head.
std::vector<TaskData> TwoHeadTasks(const Dataset& all) {
  std::vector<TaskData> tasks;
  for (int t = 0; t < 2; ++t) {
    auto mask = MakeLabelMask({2 * t, 2 * t + 1}, 4);
    const at::Tensor keep = all.y.eq(2 * t).logical_or(all.y.eq(2 * t + 1));
    tasks.push_back(TaskData{t, all.Select(keep.nonzero().squeeze(1)), *mask, at::Tensor()});
  }
  return tasks;
}

// Two heads on 600 blobs under a K-prior with 4 memorable points per task, after the first task.
struct FirstHeadLearnt {
  std::vector<TaskData> tasks = TwoHeadTasks(Blobs(600, 4, 3));
  AdaptConfig config = SmallConfig(Method::kKPrior);
  ContinualState state;

  explicit FirstHeadLearnt(const std::function<void(AdaptConfig&)>& tweak = nullptr) {
    config.epochs = 5;
    config.memory_points = 4;
    if (tweak) tweak(config);
    auto s0 = InitialState(SmallMlp(), 1);
    EXPECT_TRUE(s0.ok());
    auto r0 = Adapt(*s0, tasks[0], config);
    EXPECT_TRUE(r0.ok()) << r0.status();
    state = r0->state;
  }
  // The first head's logits on `x` under `s`.
  at::Tensor Head0(const ContinualState& s, const at::Tensor& x) const {
    auto model = MaterializeModel(s);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::NoGradGuard no_grad;
    return (*model)->Forward(x).index_select(1, tasks[0].label_mask.nonzero().squeeze(1));
  }
  // The second task learnt from `state` with `config` changed by `tweak`.
  ContinualState Second(const std::function<void(AdaptConfig&)>& tweak) const {
    AdaptConfig d = config;
    tweak(d);
    auto r1 = Adapt(state, tasks[1], d);
    EXPECT_TRUE(r1.ok()) << r1.status();
    return r1->state;
  }
};

// The new-input term keeps the first head's predictions on the second task's inputs closer to the
// old model's than the plain K-prior does (same seeds, same data).
TEST(AdaptTest, NewInputTermKeepsThePastHeadsOnNewInputs) {
  const FirstHeadLearnt run;
  const at::Tensor x = run.tasks[1].train.x;
  const at::Tensor before = at::softmax(run.Head0(run.state, x), 1);
  auto divergence = [&](double weight) {
    const at::Tensor now =
        at::log_softmax(run.Head0(run.Second([&](AdaptConfig& d) { d.new_input_weight = weight; }), x), 1);
    return (before * (before.log() - now)).sum(1).mean().item<double>();  // KL(old || new)
  };
  const double with = divergence(2.0), without = divergence(0.0);
  EXPECT_LT(with, 0.5 * without);
}

// On a permuted stream (the second task: the first's classes with its input features reversed),
// the soft-label term on mixed memory inputs keeps the old function closer between the memorable
// points (fresh mixes, not the ones trained on) than the memory alone does.
TEST(AdaptTest, MixedMemoryKeepsTheOldFunctionBetweenMemorablePoints) {
  const Dataset first = Blobs(300, 4, 1);
  Dataset second = Blobs(300, 4, 7);
  second.x = second.x.flip({1});
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.epochs = 20;
  c.memory_points = 8;
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  auto r0 = Adapt(*s0, TaskData{0, first, at::Tensor(), at::Tensor()}, c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(99);
  const at::Tensor x = MixMemory(r0->state.memory, 50, gen).x;
  auto logits = [&](const ContinualState& s) {
    auto model = MaterializeModel(s);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::NoGradGuard no_grad;
    return (*model)->Forward(x);
  };
  const at::Tensor before = at::softmax(logits(r0->state), 1);
  auto divergence = [&](int64_t mixup) {
    AdaptConfig d = c;
    d.memory_mixup = mixup;
    auto r1 = Adapt(r0->state, TaskData{1, second, at::Tensor(), at::Tensor()}, d);
    EXPECT_TRUE(r1.ok()) << r1.status();
    const at::Tensor now = at::log_softmax(logits(r1->state), 1);
    return (before * (before.log() - now)).sum(1).mean().item<double>();  // KL(old || new)
  };
  // Summed over three seeds: one tiny run's KL moves by a third with IVON's noise alone.
  double with = 0, without = 0;
  for (uint64_t seed : {0, 1, 2}) {
    c.seed = seed;
    with += divergence(8);
    without += divergence(0);
  }
  EXPECT_LT(with, 0.75 * without);
}

// On a single head whose new task teaches every old class again (as a permuted stream does),
// no label set is left alone: the term is inert and training is bit-identical to leaving it off.
TEST(AdaptTest, NewInputTermIsInertWhenTheTaskTeachesEveryOldClass) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.epochs = 2;
  auto r0 = Adapt(*s0, TaskData{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()}, c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  const TaskData next{1, Blobs(200, 4, 9), at::Tensor(), at::Tensor()};
  auto off = Adapt(r0->state, next, c);
  c.new_input_weight = 3.0;
  auto on = Adapt(r0->state, next, c);
  ASSERT_TRUE(off.ok() && on.ok());
  EXPECT_TRUE(at::equal(off->state.mean, on->state.mean));
  // With new classes only, the old ones form a label set and the term changes the result.
  const Dataset fresh = Blobs(400, 4, 11);
  const at::Tensor keep = fresh.y.ge(2);
  AdaptConfig d = SmallConfig(Method::kKPrior);
  d.epochs = 2;
  const Dataset low = Blobs(400, 4, 12);
  const TaskData first{0, low.Select(low.y.lt(2).nonzero().squeeze(1)), at::Tensor(), at::Tensor()};
  auto base = Adapt(*s0, first, d);
  ASSERT_TRUE(base.ok()) << base.status();
  const TaskData high{1, fresh.Select(keep.nonzero().squeeze(1)), at::Tensor(), at::Tensor()};
  auto plain = Adapt(base->state, high, d);
  d.new_input_weight = 3.0;
  auto with = Adapt(base->state, high, d);
  ASSERT_TRUE(plain.ok() && with.ok());
  EXPECT_FALSE(at::equal(plain->state.mean, with->state.mean));
}

// For logistic regression f_k(x) = W_k x + b_k, d f_k / d W_kj = x_j and d f_k / d b_k = 1, so
// the logit curvature sum_i diag(J_i^T J_i) on a head is sum_i x_ij^2 on the head's rows of W, n on
// its biases and 0 elsewhere. A subsample is scaled up to the task's size. The state carries the
// sum over tasks and survives a round trip through its tensors.
TEST(AdaptTest, LogitCurvatureHasTheClosedFormOnLogisticRegression) {
  const ModelSpec spec = SmallLogReg();
  auto s0 = InitialState(spec, 1);
  ASSERT_TRUE(s0.ok());
  const std::vector<TaskData> tasks = TwoHeadTasks(Blobs(300, 4, 5));
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.curvature_weight = 1.0;
  c.curvature_points = 1 << 20;  // every example: the exact sum
  auto r0 = Adapt(*s0, tasks[0], c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  auto r1 = Adapt(r0->state, tasks[1], c);
  ASSERT_TRUE(r1.ok()) << r1.status();
  auto expected = [&](int t) {
    const at::Tensor x = tasks[t].train.x.to(at::kDouble);
    at::Tensor w = at::zeros({4, 6}, at::kDouble), b = at::zeros({4}, at::kDouble);
    for (int64_t k : {2 * t, 2 * t + 1}) {
      w[k].copy_(x.square().sum(0));
      b[k].fill_(static_cast<double>(x.size(0)));
    }
    return at::cat({w.reshape({-1}), b});
  };
  const at::Tensor after0 = r0->state.curvature.to(at::kDouble);
  const at::Tensor after1 = r1->state.curvature.to(at::kDouble);
  EXPECT_TRUE(at::allclose(after0, expected(0), 1e-5, 1e-4));
  EXPECT_TRUE(at::allclose(after1, expected(0) + expected(1), 1e-5, 1e-4));
  auto loaded = Reloaded(r1->state);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(at::equal(loaded->curvature, r1->state.curvature));
  // 40 of the 150 examples: an unbiased estimate, equal in total on the bias entries.
  c.curvature_points = 40;
  auto sub = Adapt(*s0, tasks[0], c);
  ASSERT_TRUE(sub.ok()) << sub.status();
  const int64_t n = tasks[0].train.size();
  EXPECT_NEAR(sub->state.curvature[24].item<double>(), static_cast<double>(n), 1e-3);
  EXPECT_NEAR(sub->state.curvature.narrow(0, 0, 24).sum().item<double>(),
              expected(0).narrow(0, 0, 24).sum().item<double>(),
              0.3 * expected(0).narrow(0, 0, 24).sum().item<double>());
}

// FROMP's kernel on memorable points that coincide is singular: with a negligible jitter its float32
// Cholesky fails, and the block is factored in float64 with the jitter raised until it does.
TEST(AdaptTest, FrompFactorsTheKernelOfCoincidingMemorablePoints) {
  std::vector<TaskData> tasks = TwoHeadTasks(Blobs(200, 4, 3));
  // Every example of a class at one point.
  const at::Tensor y = tasks[0].train.y;
  tasks[0].train.x = at::where(y.eq(0).unsqueeze(1), at::full({1, 6}, 1.0f), at::full({1, 6}, -1.0f));
  AdaptConfig c = SmallConfig(Method::kFromp);
  c.memory_points = 6;
  c.fromp_jitter = 1e-30;  // nothing in float32
  c.epochs = 30;
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  auto r0 = Adapt(*s0, tasks[0], c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  auto r1 = Adapt(r0->state, tasks[1], c);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_TRUE(r1->state.mean.isfinite().all().item<bool>());
  // The factored blocks act: the first head's probabilities at its two points drift less than
  // without the term (a block dropped, or a zero inverse, would leave them as free).
  AdaptConfig free = c;
  free.fromp_tau = 0;
  auto r1_free = Adapt(r0->state, tasks[1], free);
  ASSERT_TRUE(r1_free.ok()) << r1_free.status();
  const at::Tensor points = at::stack({at::full({6}, 1.0f), at::full({6}, -1.0f)});
  const at::Tensor head = tasks[0].label_mask.nonzero().squeeze(1);
  auto probs = [&](const ContinualState& s) {
    auto model = MaterializeModel(s);
    EXPECT_TRUE(model.ok()) << model.status();
    torch::NoGradGuard no_grad;
    return at::softmax((*model)->Forward(points).index_select(1, head), 1);
  };
  const at::Tensor before = probs(r0->state);
  const double held = (probs(r1->state) - before).abs().max().item<double>();
  const double drifted = (probs(r1_free->state) - before).abs().max().item<double>();
  std::cout << "first head's drift at its points: FROMP " << held << ", without " << drifted << "\n";
  EXPECT_LT(held, 0.8 * drifted);  // 0.036 against 0.058 here: a dropped block gives 0.058
}

// A posterior precision already holds the older curvature terms (each run's h starts from its
// weight term's P): it gains only the newest one, else task t's term would count once for every
// later task. With beta2 this close to 1, h keeps its start, so a run's posterior precision is
// exactly the P it started from (the K-prior runs after the first have no delta).
TEST(AdaptTest, APosteriorPrecisionGainsOnlyTheNewestCurvature) {
  const ModelSpec spec = SmallLogReg();
  auto s0 = InitialState(spec, 1);
  ASSERT_TRUE(s0.ok());
  const std::vector<TaskData> tasks = TwoHeadTasks(Blobs(300, 4, 5));
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.posterior_precision = true;
  c.curvature_weight = 0.5;
  c.curvature_points = 1 << 20;
  c.ivon.beta2 = 1 - 1e-9;
  auto r0 = Adapt(*s0, tasks[0], c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  auto r1 = Adapt(r0->state, tasks[1], c);
  ASSERT_TRUE(r1.ok()) << r1.status();
  auto r2 = Adapt(r1->state, tasks[0], c);  // the first task's head again
  ASSERT_TRUE(r2.ok()) << r2.status();
  ASSERT_TRUE(r1->state.curvature_last.defined());
  EXPECT_TRUE(at::allclose(r1->state.curvature_last, r1->state.curvature - r0->state.curvature,
                           1e-5, 1e-3));
  auto close = [](const at::Tensor& a, const at::Tensor& b) {
    return at::allclose(a, b, 1e-4, 1e-4 * b.abs().max().item<double>());
  };
  const at::Tensor once = r1->state.Precision() + 0.5 * r1->state.curvature_last;
  EXPECT_TRUE(close(r2->state.Precision(), once))
      << (r2->state.Precision() - once).abs().max().item<double>();
  EXPECT_FALSE(close(r2->state.Precision(), r1->state.Precision() + 0.5 * r1->state.curvature));
  auto loaded = Reloaded(r2->state);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(at::equal(loaded->curvature_last, r2->state.curvature_last));
  // Without the term, the next state carries no newest term: its posterior took the last one in.
  c.curvature_weight = 0;
  auto r3 = Adapt(r2->state, tasks[1], c);
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_FALSE(r3->state.curvature_last.defined());
}

// A stored state whose memory does not fit its model (an edited checkpoint or snapshot) is
// refused when it is read, naming the field, rather than failing the jobs that would use it.
TEST(AdaptTest, StateFromTensorsRefusesAMemoryThatDoesNotFitTheModel) {
  const ModelSpec spec = SmallLogReg();
  auto s0 = InitialState(spec, 1);
  ASSERT_TRUE(s0.ok());
  const std::vector<TaskData> tasks = TwoHeadTasks(Blobs(300, 4, 5));
  auto r0 = Adapt(*s0, tasks[0], SmallConfig(Method::kKPrior));
  ASSERT_TRUE(r0.ok()) << r0.status();
  ASSERT_GT(r0->state.memory.size(), 0);
  TensorMap good;
  r0->state.AppendTo(good);
  ASSERT_TRUE(ContinualState::FromTensors(good, spec).ok());
  const int64_t n = r0->state.memory.size();
  const std::vector<std::pair<std::string, at::Tensor>> edits = {
      {"state.memory.x", at::zeros({n, 5})},
      {"state.memory.y", at::full({n}, spec.num_classes, at::kLong)},
      {"state.memory.task", at::full({n}, 1, at::kLong)},  // one task learnt: masks [1, K]
      {"state.memory.soft", at::zeros({n, spec.num_classes + 1})},
      // The weights and the posterior every query and the next task start from.
      {"state.mean", at::full_like(r0->state.mean, std::nanf(""))},
      {"state.hess", at::full_like(r0->state.hess, -1.0f)},
      {"state.ess", ScalarTensor(std::numeric_limits<double>::infinity())},
      {"state.tasks_seen", ScalarTensor(int64_t{-1})},
  };
  for (const auto& [key, value] : edits) {
    TensorMap bad = good;
    ASSERT_TRUE(bad.count(key)) << key;
    bad[key] = value;
    const absl::Status status = ContinualState::FromTensors(bad, spec).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << key << ": " << status;
    EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(key)) << status;
  }
}

// A strong curvature term holds the first head's logits on its own inputs almost where they were
// while the second task is learnt; without it they move. The second task is still learnt.
TEST(AdaptTest, LogitCurvatureTermHoldsThePastHeads) {
  const FirstHeadLearnt run([](AdaptConfig& c) {
    c.curvature_weight = 1.0;
    c.curvature_points = 200;
  });
  const at::Tensor x = run.tasks[0].train.x;
  const at::Tensor before = run.Head0(run.state, x);
  ContinualState held;
  auto drift = [&](double weight) {
    held = run.Second([&](AdaptConfig& d) { d.curvature_weight = weight; });
    return (run.Head0(held, x) - before).square().mean().item<double>();
  };
  const double without = drift(0.0), with = drift(1.0);
  EXPECT_LT(with, 0.25 * without);
  auto acc = EvaluateAccuracy(held, run.tasks[1].train, run.tasks[1].label_mask);
  ASSERT_TRUE(acc.ok());
  EXPECT_GT(*acc, 0.9);
}

// EWC's Laplace term holds the weights that its Fisher says matter: the penalty
// sum F (w - w*)^2 ends far smaller than in the same run with lambda 0 (same seeds, same data).
TEST(AdaptTest, EwcHoldsTheWeightsItsFisherWeighs) {
  const FirstHeadLearnt run([](AdaptConfig& c) { c.method = Method::kEwc; });
  ASSERT_TRUE(run.state.fisher.defined());
  auto penalty = [&](double lambda) {
    const ContinualState next = run.Second([&](AdaptConfig& d) { d.ewc_lambda = lambda; });
    return (run.state.fisher * (next.mean - run.state.mean).square()).sum().item<double>();
  };
  // Well-fit blobs give a small Fisher, so the term needs a large lambda to bite (1e3 takes 17 %
  // off the penalty, 1e5 94 %; 1e6 makes IVON's steps overshoot).
  const double without = penalty(0.0), with = penalty(1e5);
  EXPECT_GT(without, 0.0);
  EXPECT_LT(with, 0.25 * without);
}

// Replay's stored examples keep the first task learnt while the second is: its cross-entropy
// on the first head ends lower than in the same run with the replay weight at 0.
TEST(AdaptTest, ReplayKeepsThePastTask) {
  const FirstHeadLearnt run([](AdaptConfig& c) {
    c.method = Method::kReplay;
    c.memory_points = 100;
  });
  const TaskData& past = run.tasks[0];
  const at::Tensor head = past.label_mask.nonzero().squeeze(1);
  const at::Tensor y = (past.train.y - head[0]).to(at::kLong);  // the head's own class indices
  auto loss = [&](double weight) {
    const ContinualState next = run.Second([&](AdaptConfig& d) { d.memory_weight = weight; });
    return at::cross_entropy_loss(run.Head0(next, past.train.x), y).item<double>();
  };
  const double start = at::cross_entropy_loss(run.Head0(run.state, past.train.x), y).item<double>();
  const double without = loss(0.0), with = loss(1.0);
  EXPECT_GT(without, start);  // the second task disturbs the first
  EXPECT_LT(with - start, 0.5 * (without - start)) << start << " " << with << " " << without;
}

// A run whose mean model ends worse than a uniform guess on the examples it trained on learnt
// nothing: Adapt refuses it (ABORTED) rather than return a state to publish. Here the start is
// confidently wrong (weights x 30) and the learning rate too small to mend it.
TEST(AdaptTest, ARunThatLearntNothingIsAborted) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  s0->mean.mul_(30);
  const at::Tensor before = s0->mean.clone();
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.ivon.lr = 1e-9;
  auto r = Adapt(*s0, TaskData{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()}, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("training learnt nothing of the task"));
  // Its weights are far wider than its samples: the message does not blame them.
  EXPECT_THAT(std::string(r.status().message()),
              testing::Not(testing::HasSubstr("weight samples were wider")));
  EXPECT_TRUE(at::equal(before, s0->mean));
  // The same start at the usual rate learns the task.
  c.ivon.lr = 0.2;
  c.epochs = 10;
  EXPECT_TRUE(Adapt(*s0, TaskData{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()}, c).ok());
}

// IVON at ess = N on a small task draws weights far wider than the weights themselves; the mean
// then learns nothing, and the refusal says so and names the remedy, which works.
TEST(AdaptTest, ASmallTaskLostInWideSamplesIsToldOfTheColderOnes) {
  if (::access((std::string(kFashionMnistDir) + "/train-images-idx3-ubyte.gz").c_str(), R_OK) != 0) {
    ADAPTD_SKIP_WITHOUT_DATA("dataset-fashion-mnist is not installed");
  }
  auto stream = SplitFashionMnist(kFashionMnistDir, /*multi_head=*/true);
  ASSERT_TRUE(stream.ok()) << stream.status();
  // 300 images of T-shirts and trousers (`adaptctl demo --per_task=300`'s first task), on the
  // demo's network at the service's defaults (server/convert.cc: NormalizeConfig).
  TaskData task = stream->tasks[0];
  task.train = Dataset{task.train.x.narrow(0, 0, 300), task.train.y.narrow(0, 0, 300)};
  task.ids = at::Tensor();
  ModelSpec spec = SmallMlp(10);
  spec.input_shape = {784};
  spec.hidden = {256, 256};
  auto s0 = InitialState(spec, 1);
  ASSERT_TRUE(s0.ok());
  AdaptConfig c;
  c.ivon.hess_init = 0.1;
  c.ivon.beta2 = 0.9999;
  c.ivon.weight_decay = 1e-3;
  auto lost = Adapt(*s0, task, c);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kAborted) << lost.status();
  EXPECT_THAT(std::string(lost.status().message()),
              testing::AllOf(testing::HasSubstr("training learnt nothing of the task"),
                             testing::HasSubstr("IVON's weight samples were wider than the weights"),
                             testing::HasSubstr("at ess = 300 (ess_factor 1 times the examples)")))
      << lost.status();
  c.ess_factor = 16;
  auto learnt = Adapt(*s0, task, c);
  ASSERT_TRUE(learnt.ok()) << learnt.status();
  auto accuracy = EvaluateAccuracy(learnt->state, task.train, task.label_mask);
  ASSERT_TRUE(accuracy.ok()) << accuracy.status();
  EXPECT_GE(*accuracy, 0.85);
}

// The curvature enters IVON's initial Hessian as well as the weight term, so even a very strong
// term needs no clip: the Newton-like step is scaled by the term's own curvature and holds the
// past head more tightly than a weak term, instead of overshooting it.
TEST(AdaptTest, StrongCurvatureTermIsStableWithoutAClip) {
  const FirstHeadLearnt run([](AdaptConfig& c) {
    c.curvature_weight = 1.0;
    c.curvature_points = 200;
  });
  ASSERT_TRUE(std::isinf(run.config.ivon.clip_radius));
  const at::Tensor x = run.tasks[0].train.x;
  const at::Tensor before = run.Head0(run.state, x);
  auto drift = [&](double weight) {
    AdaptConfig d = run.config;
    d.curvature_weight = weight;
    auto r1 = Adapt(run.state, run.tasks[1], d);
    EXPECT_TRUE(r1.ok()) << "weight " << weight << ": " << r1.status();
    return r1.ok() ? (run.Head0(r1->state, x) - before).square().mean().item<double>() : 1e30;
  };
  const double weak = drift(1.0), strong = drift(1e4);
  EXPECT_LT(strong, 0.5 * weak);
}

// Multinomial logistic regression on 200 blobs, fine-tuned for 60 epochs at delta 0.05, and the
// float64 MAP of the same objective (Newton): where IVON's mean should end.
struct ConvexTask {
  TaskData task{0, Blobs(200, 4, 9), at::Tensor(), at::Tensor()};
  AdaptConfig config = SmallConfig(Method::kFinetune);
  at::Tensor w_map;

  ConvexTask() {
    config.ivon.weight_decay = 0.05;
    config.epochs = 60;
    const at::Tensor x = task.train.x.to(at::kDouble);
    w_map = Newton([&](const at::Tensor& w) {
      const at::Tensor logits = x.matmul(w.narrow(0, 0, 24).view({4, 6}).t()) + w.narrow(0, 24, 4);
      return at::cross_entropy_loss(logits, task.train.y) +
             0.5 * config.ivon.weight_decay * w.square().sum();
    }, at::zeros({28}, at::kDouble));
  }
  // ||mean - MAP|| / ||MAP||.
  double Distance(const ContinualState& s) const {
    return (s.mean.to(at::kDouble) - w_map).norm().item<double>() / w_map.norm().item<double>();
  }
  // The K-prior with every example of the task in memory and the prior's precision: the GLM
  // identity's setting.
  AdaptConfig FullMemoryKPrior() const {
    AdaptConfig c = config;
    c.method = Method::kKPrior;
    c.memory_points = task.train.size();
    c.selection = SelectionMethod::kRandom;
    c.posterior_precision = false;
    return c;
  }
  // The state after this task under `c`, with the mean set to the MAP: the exact old solution.
  absl::StatusOr<ContinualState> StateAtTheMap(const AdaptConfig& c) const {
    ADAPTD_ASSIGN_OR_RETURN(ContinualState s0, InitialState(SmallLogReg(), 1));
    ADAPTD_ASSIGN_OR_RETURN(AdaptResult learnt, Adapt(s0, task, c));
    if (learnt.state.memory.size() != task.train.size()) {
      return absl::InternalError("the memory does not hold the whole task");
    }
    learnt.state.mean = w_map.to(at::kFloat);
    return learnt.state;
  }
};

// ess_factor only cools IVON's training samples: on logistic regression, whose MAP Newton
// finds in float64, a colder run ends nearer the MAP (the mean of the plain variational
// posterior is pulled off it by the weight noise), and both carry ess = N.
TEST(AdaptTest, EssFactorDrawsColderSamplesAndKeepsTheDataCount) {
  const ModelSpec spec = SmallLogReg();
  auto s0 = InitialState(spec, 1);
  ASSERT_TRUE(s0.ok());
  ConvexTask convex;
  auto distance = [&](double factor) {
    convex.config.ess_factor = factor;
    auto r = Adapt(*s0, convex.task, convex.config);
    if (!r.ok()) {
      ADD_FAILURE() << r.status();
      return 0.0;
    }
    EXPECT_EQ(r->state.ess, 200.0);
    return convex.Distance(r->state);
  };
  const double plain = distance(1), cold = distance(100);
  std::cout << "relative distance to the MAP: ess_factor 1 " << plain << ", 100 " << cold << "\n";
  EXPECT_LT(cold, 0.5 * plain);
}

// Forget on logistic regression, from the float64 MAP of 200 blobs with all of them in memory:
// IVON ends near batch retraining without the removed examples (a quarter of class 0), far
// from where it started, and the memory loses exactly their rows.
TEST(AdaptTest, ForgetEndsNearBatchRetrainingWithoutTheExamples) {
  ConvexTask convex;
  AdaptConfig c = convex.FullMemoryKPrior();
  auto at_map = convex.StateAtTheMap(c);
  ASSERT_TRUE(at_map.ok()) << at_map.status();
  ContinualState state = *std::move(at_map);

  const Dataset& data = convex.task.train;
  const at::Tensor gone = data.y.eq(0).nonzero().squeeze(1).narrow(0, 0, 25);
  std::vector<int64_t> kept_rows;
  for (int64_t i = 0; i < data.size(); ++i) {
    if (!(gone == i).any().item<bool>()) kept_rows.push_back(i);
  }
  const at::Tensor kept = at::tensor(kept_rows, at::kLong);
  const double delta_total = convex.config.ivon.weight_decay * static_cast<double>(data.size());
  const at::Tensor xk = data.x.index_select(0, kept).to(at::kDouble);
  const at::Tensor w_batch = Newton([&](const at::Tensor& w) {
    const at::Tensor logits = xk.matmul(w.narrow(0, 0, 24).view({4, 6}).t()) + w.narrow(0, 24, 4);
    return at::cross_entropy_loss(logits, data.y.index_select(0, kept), {}, at::Reduction::Sum) +
           0.5 * delta_total * w.square().sum();
  }, convex.w_map);

  ForgetData forget{data.Select(gone), at::zeros({25}, at::kLong), gone};
  c.ess_factor = 100;
  c.epochs = 100;
  const at::Tensor mean_before = state.mean.clone();
  auto r = Forget(state, forget, c);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(at::equal(state.mean, mean_before));  // the input state is left alone
  auto distance = [&](const at::Tensor& w) {
    return (w.to(at::kDouble) - w_batch).norm().item<double>() / w_batch.norm().item<double>();
  };
  const double before = distance(state.mean), after = distance(r->state.mean);
  // The removal term on minibatches of 5 of the 25, scaled to all of them.
  c.memory_batch_size = 5;
  auto sampled = Forget(state, forget, c);
  ASSERT_TRUE(sampled.ok()) << sampled.status();
  const double after_sampled = distance(sampled->state.mean);
  std::cout << "relative distance to batch retraining without the examples: before " << before
            << ", after Forget " << after << " (removal minibatches of 5: " << after_sampled
            << ")\n";
  EXPECT_GT(before, 0.05);
  EXPECT_LT(after, 0.25 * before);
  EXPECT_LT(after_sampled, 0.25 * before);
  EXPECT_EQ(r->state.memory.size(), 175);
  EXPECT_FALSE(at::isin(r->state.memory.id, gone).any().item<bool>());
  EXPECT_EQ(r->state.tasks_seen, 1);
  EXPECT_EQ(r->state.ess, 175.0);
}

// The float64 MAP of SmallLogReg's logistic regression on (x, y) under the prior
// delta_total / 2 ||w||^2 (total units), by Newton from `start`.
at::Tensor BatchMap(const at::Tensor& x, const at::Tensor& y, double delta_total,
                    const at::Tensor& start) {
  return Newton([&](const at::Tensor& w) {
    const at::Tensor logits = x.matmul(w.narrow(0, 0, 24).view({4, 6}).t()) + w.narrow(0, 24, 4);
    return at::cross_entropy_loss(logits, y, {}, at::Reduction::Sum) +
           0.5 * delta_total * w.square().sum();
  }, start);
}

// ||w - ref|| / ||ref||, in float64.
double RelativeDistance(const at::Tensor& w, const at::Tensor& ref) {
  return (w.to(at::kDouble) - ref).norm().item<double>() / ref.norm().item<double>();
}

// Joint retraining is batch retraining on every example so far under the first task's prior
// (weight decay x the first task's size, in total units), the reference that the K-prior
// approximates: after a second task of as many examples it ends near that MAP, not near the
// MAP under twice the prior that the weight decay per example over all 400 would give.
TEST(AdaptTest, JointRetrainingKeepsTheFirstTasksPrior) {
  ConvexTask convex;
  AdaptConfig c = convex.config;
  c.method = Method::kJoint;
  c.ess_factor = 100;
  c.epochs = 400;
  auto s0 = InitialState(SmallLogReg(), 1);
  ASSERT_TRUE(s0.ok()) << s0.status();
  auto first = Adapt(*s0, convex.task, c);
  ASSERT_TRUE(first.ok()) << first.status();
  TaskData next{1, Blobs(200, 4, 10), at::Tensor(), at::Tensor()};
  next.train.x = next.train.x + 1.5;
  auto joint = Adapt(first->state, next, c);
  ASSERT_TRUE(joint.ok()) << joint.status();
  const at::Tensor x = at::cat({convex.task.train.x, next.train.x}).to(at::kDouble);
  const at::Tensor y = at::cat({convex.task.train.y, next.train.y});
  const double delta_total = c.ivon.weight_decay * static_cast<double>(convex.task.train.size());
  const at::Tensor w_batch = BatchMap(x, y, delta_total, convex.w_map);
  const at::Tensor w_doubled = BatchMap(x, y, 2 * delta_total, convex.w_map);
  const double to_batch = RelativeDistance(joint->state.mean, w_batch);
  const double apart = RelativeDistance(w_doubled, w_batch);
  std::cout << "joint retraining: relative distance " << to_batch
            << " to batch retraining under the first task's prior, "
            << RelativeDistance(joint->state.mean, w_doubled)
            << " to the MAP under twice that prior, which lies " << apart << " from it\n";
  EXPECT_GT(apart, 0.05);
  EXPECT_LT(to_batch, 0.2 * apart);
}

// The GLM identity through Adapt itself (the memory term's scaling, the soft labels it refreshes
// and the weight term as the trainer adds it): logistic regression from the float64 MAP of 200
// blobs, all of them in memory at the exact scaling, then 200 shifted blobs. IVON ends near batch
// retraining on all 400, far nearer than fine-tuning without the memory does.
TEST(AdaptTest, FullMemoryKPriorEndsNearBatchRetraining) {
  ConvexTask convex;
  AdaptConfig c = convex.FullMemoryKPrior();
  c.memory_weight = -1;  // |M| / N_new: memory and new examples weigh the same
  auto at_map = convex.StateAtTheMap(c);
  ASSERT_TRUE(at_map.ok()) << at_map.status();
  ContinualState state = *std::move(at_map);

  TaskData next{1, Blobs(200, 4, 10), at::Tensor(), at::Tensor()};
  next.train.x = next.train.x + 1.5;
  const Dataset& old = convex.task.train;
  const at::Tensor x = at::cat({old.x, next.train.x}).to(at::kDouble);
  const at::Tensor y = at::cat({old.y, next.train.y});
  const double delta_total = convex.config.ivon.weight_decay * static_cast<double>(old.size());
  const at::Tensor w_batch = BatchMap(x, y, delta_total, convex.w_map);
  auto distance = [&](const at::Tensor& w) { return RelativeDistance(w, w_batch); };
  c.ess_factor = 100;
  c.epochs = 100;
  auto adapted = Adapt(state, next, c);
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  AdaptConfig f = c;
  f.method = Method::kFinetune;
  auto finetuned = Adapt(state, next, f);
  ASSERT_TRUE(finetuned.ok()) << finetuned.status();
  const double before = distance(state.mean), after = distance(adapted->state.mean),
               without = distance(finetuned->state.mean);
  std::cout << "relative distance to batch retraining: before " << before << ", K-prior "
            << after << ", fine-tuning " << without << "\n";
  EXPECT_GT(before, 0.05);
  EXPECT_LT(after, 0.1 * before);  // 0.015 here; a memory term at half its weight gives 0.16
  EXPECT_LT(after, 0.25 * without);
}

// Forget's contract: the K-prior only, something learnt, something left in the memory, and
// examples that name tasks and labels the model has.
TEST(AdaptTest, ForgetRefusesWhatItCannotDo) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  const TaskData t0{0, Blobs(60, 4, 4), at::Tensor(), at::Tensor()};
  AdaptConfig c = SmallConfig(Method::kKPrior);
  const ForgetData two{t0.train.Select(at::arange(2, at::kLong)), at::zeros({2}, at::kLong),
                       at::arange(2, at::kLong)};
  EXPECT_EQ(Forget(*s0, two, c).status().code(), absl::StatusCode::kFailedPrecondition);
  auto r0 = Adapt(*s0, t0, c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  EXPECT_EQ(Forget(r0->state, two, SmallConfig(Method::kEwc)).status().code(),
            absl::StatusCode::kInvalidArgument);
  ForgetData later = two;
  later.task_ids = at::ones({2}, at::kLong);
  EXPECT_EQ(Forget(r0->state, later, c).status().code(), absl::StatusCode::kInvalidArgument);
  ForgetData no_inputs = two;
  no_inputs.removed.x = at::Tensor();
  EXPECT_EQ(Forget(r0->state, no_inputs, c).status().code(), absl::StatusCode::kInvalidArgument);
  ForgetData bad_label = two;
  bad_label.removed.y = at::full({2}, 9, at::kLong);
  EXPECT_EQ(Forget(r0->state, bad_label, c).status().code(), absl::StatusCode::kInvalidArgument);
  // Each example once, and with the label it was learnt with.
  ForgetData twice = two;
  twice.ids = at::zeros({2}, at::kLong);
  EXPECT_THAT(std::string(Forget(r0->state, twice, c).status().message()),
              testing::HasSubstr("example 0 of task 0 is named twice"));
  const Memory& mem = r0->state.memory;
  ForgetData relabelled{Dataset{mem.x.narrow(0, 0, 1), (mem.y.narrow(0, 0, 1) + 1) % 4},
                        mem.task.narrow(0, 0, 1), mem.id.narrow(0, 0, 1)};
  EXPECT_THAT(std::string(Forget(r0->state, relabelled, c).status().message()),
              testing::HasSubstr("was learnt with label"));
  // Every memorable example removed: nothing is left to stand for the rest.
  const Memory& m = r0->state.memory;
  const ForgetData everything{Dataset{m.x, m.y}, m.task, m.id};
  EXPECT_EQ(Forget(r0->state, everything, c).status().code(), absl::StatusCode::kFailedPrecondition);
  // A state learnt without a memory (memory_points = 0) has nothing to stand for the rest.
  AdaptConfig no_memory = c;
  no_memory.memory_points = 0;
  auto bare = Adapt(*s0, t0, no_memory);
  ASSERT_TRUE(bare.ok()) << bare.status();
  const absl::Status empty = Forget(bare->state, two, c).status();
  EXPECT_EQ(empty.code(), absl::StatusCode::kFailedPrecondition) << empty;
  EXPECT_THAT(std::string(empty.message()), testing::HasSubstr("the memory is empty"));
  auto ok = Forget(r0->state, two, c);
  ASSERT_TRUE(ok.ok()) << ok.status();
}

// min_steps makes more passes over a task too small for `epochs` to train it: the step count
// is the smallest whole number of epochs that reaches it, and the task is learnt.
TEST(AdaptTest, MinStepsMakesMorePassesOverASmallTask) {
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  const TaskData small{0, Blobs(50, 4, 4), at::Tensor(), at::Tensor()};  // 2 steps per epoch
  AdaptConfig c = SmallConfig(Method::kFinetune);
  c.epochs = 1;
  c.ivon.lr = 0.05;
  auto run = [&](int64_t min_steps, int64_t* total) {
    c.min_steps = min_steps;
    auto r = Adapt(*s0, small, c, [&](const StepReport& s) { *total = s.total_steps; });
    if (!r.ok()) {
      ADD_FAILURE() << r.status();
      return 0.0;
    }
    EXPECT_EQ(r->stats.steps, *total);
    auto acc = EvaluateAccuracy(r->state, small.train, at::Tensor());
    return acc.ok() ? *acc : 0.0;
  };
  int64_t total = 0;
  const double hasty = run(0, &total);
  EXPECT_EQ(total, 2);
  const double thorough = run(99, &total);
  EXPECT_EQ(total, 100);  // 50 epochs of 2 steps
  std::cout << "accuracy after 2 steps " << hasty << ", after 100 " << thorough << "\n";
  EXPECT_GT(thorough, 0.95);
  EXPECT_GT(thorough, hasty + 0.2);
}

// A device this machine lacks is refused before anything is trained; misspelt ones are named.
TEST(AdaptTest, RefusesADeviceItCannotTrainOn) {
  EXPECT_TRUE(ParseDevice("cpu").ok());
  const auto bad = ParseDevice("gpu");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), testing::HasSubstr("\"gpu\""));
  // LibTorch keeps 8 bits of the index; a wrapped one must not name another device.
  EXPECT_EQ(ParseDevice("cuda:300").status().code(), absl::StatusCode::kInvalidArgument);
  const auto cuda = ParseDevice("cuda");
  if (torch::cuda::is_available()) {
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_EQ(cuda->str(), "cuda:0");
  } else {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  auto s0 = InitialState(SmallMlp(), 1);
  ASSERT_TRUE(s0.ok());
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.device = at::Device(at::kCUDA, 99);
  const TaskData task{0, Blobs(100, 4, 1), at::Tensor(), at::Tensor()};
  const auto r = Adapt(*s0, task, c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("cuda:99"));
}

// Training on a GPU: the same contracts and the same answers as on the CPU. On a convex problem
// both reach the float64 MAP. On two tasks every method learns both as well as on the CPU, the
// state comes back on the CPU, and the GPU's final weights lie no farther from the CPU's than a
// CPU run with another seed does: the GPU draws its own weight noise, so the runs agree to the
// noise, not bit for bit.
TEST(AdaptTest, CudaTrainingMatchesTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  {
    ConvexTask convex;
    convex.config.ess_factor = 100;
    auto s0 = InitialState(SmallLogReg(), 1);
    ASSERT_TRUE(s0.ok());
    at::Tensor means[2];
    for (int d = 0; d < 2; ++d) {
      convex.config.device = d == 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA);
      auto r = Adapt(*s0, convex.task, convex.config);
      ASSERT_TRUE(r.ok()) << convex.config.device << ": " << r.status();
      ASSERT_TRUE(r->state.mean.device().is_cpu());
      const double rel = convex.Distance(r->state);
      std::cout << convex.config.device << ": relative distance to the MAP " << rel << "\n";
      EXPECT_LT(rel, 0.1) << convex.config.device;
      means[d] = r->state.mean;
    }
    EXPECT_FALSE(at::equal(means[0], means[1])) << "the GPU draws its own noise";
  }
  const std::vector<TaskData> single = {TaskData{0, Blobs(200, 4, 1), at::Tensor(), at::Tensor()},
                                        TaskData{1, Blobs(150, 4, 2), at::Tensor(), at::Tensor()}};
  const std::vector<TaskData> heads = TwoHeadTasks(Blobs(400, 4, 3));
  struct Case {
    std::string name;
    AdaptConfig config;
    const std::vector<TaskData>* tasks;
  };
  std::vector<Case> cases;
  for (Method m : {Method::kKPrior, Method::kFromp, Method::kEwc, Method::kReplay,
                   Method::kFinetune, Method::kJoint}) {
    cases.push_back({MethodName(m), SmallConfig(m), &single});
  }
  // Every K-prior term at once, on two heads: correction, distillation, new-input and curvature
  // terms, sensitivity-selected memory.
  AdaptConfig all = SmallConfig(Method::kKPrior);
  all.replay_correction = true;
  all.distill_temperature = 2;
  all.new_input_weight = 1;
  all.curvature_weight = 10;
  all.selection = SelectionMethod::kSensitivity;
  cases.push_back({"kprior, every term", all, &heads});
  for (Case& k : cases) {
    k.config.epochs = 10;
    // Runs: the CPU, the GPU with the same seed, the CPU with another seed (the spread that
    // the weight noise alone gives).
    std::vector<double> accuracy[3];
    at::Tensor mean[3];
    for (int d = 0; d < 3; ++d) {
      AdaptConfig c = k.config;
      c.device = d == 1 ? at::Device(at::kCUDA) : at::Device(at::kCPU);
      c.seed = d == 2 ? 1 : 0;
      auto state = InitialState(SmallMlp(), 1);
      ASSERT_TRUE(state.ok());
      ContinualState s = *state;
      for (const TaskData& t : *k.tasks) {
        auto r = Adapt(s, t, c);
        ASSERT_TRUE(r.ok()) << k.name << " on " << c.device << ": " << r.status();
        s = std::move(r->state);
      }
      TensorMap saved;  // everything the state carries
      s.AppendTo(saved);
      for (const auto& [key, tensor] : saved) {
        EXPECT_TRUE(!tensor.defined() || tensor.device().is_cpu()) << k.name << ": " << key;
      }
      mean[d] = s.mean;
      for (const TaskData& t : *k.tasks) {
        auto acc = EvaluateAccuracy(s, t.train, t.label_mask);
        ASSERT_TRUE(acc.ok()) << acc.status();
        accuracy[d].push_back(*acc);
      }
    }
    const double gpu = (mean[1] - mean[0]).norm().item<double>();
    const double reseeded = (mean[2] - mean[0]).norm().item<double>();
    std::cout << k.name << ": |mean(cuda) - mean(cpu)| " << gpu << ", another seed on the cpu "
              << reseeded << "\n";
    EXPECT_GT(gpu, 0) << k.name << ": the GPU draws its own noise, so equal weights mean no GPU run";
    EXPECT_LT(gpu, 2 * reseeded) << k.name;
    for (size_t t = 0; t < accuracy[0].size(); ++t) {
      std::cout << k.name << " task " << t << ": cpu " << accuracy[0][t] << ", cuda "
                << accuracy[1][t] << ", another seed on the cpu " << accuracy[2][t] << "\n";
      EXPECT_NEAR(accuracy[1][t], accuracy[0][t],
                  std::max(0.06, 2 * std::abs(accuracy[2][t] - accuracy[0][t])))
          << k.name << " task " << t;
    }
  }
}

// Task-incremental heads: each task is evaluated within its own two classes.
TEST(AdaptTest, MultiHeadTasksTrainWithinTheirHeads) {
  auto s0 = InitialState(SmallMlp(), 1);
  const Dataset all = Blobs(400, 4, 3);
  const std::vector<TaskData> tasks = TwoHeadTasks(all);
  AdaptConfig c = SmallConfig(Method::kKPrior);
  c.epochs = 5;
  auto r0 = Adapt(*s0, tasks[0], c);
  ASSERT_TRUE(r0.ok()) << r0.status();
  auto r1 = Adapt(r0->state, tasks[1], c);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->state.task_masks.size(0), 2);
  for (int t = 0; t < 2; ++t) {
    auto acc = EvaluateAccuracy(r1->state, tasks[t].train, tasks[t].label_mask);
    ASSERT_TRUE(acc.ok());
    EXPECT_GT(*acc, 0.9) << "task " << t;
  }
  // A single-head task after multi-head ones is refused.
  TaskData single{2, all, at::Tensor(), at::Tensor()};
  EXPECT_EQ(Adapt(r1->state, single, c).status().code(), absl::StatusCode::kInvalidArgument);

  // Forget within the heads: five of task 1's memorable examples go, each task keeps its head
  // and its accuracy; a label outside its task's head is refused.
  const Memory& m = r1->state.memory;
  const at::Tensor of_task1 = m.task.eq(1).nonzero().squeeze(1).narrow(0, 0, 5);
  const ForgetData five{Dataset{m.x.index_select(0, of_task1), m.y.index_select(0, of_task1)},
                        m.task.index_select(0, of_task1), m.id.index_select(0, of_task1)};
  c.min_steps = 200;
  auto forgot = Forget(r1->state, five, c);
  ASSERT_TRUE(forgot.ok()) << forgot.status();
  EXPECT_EQ(forgot->state.memory.size(), m.size() - 5);
  EXPECT_TRUE(at::equal(forgot->state.task_masks, r1->state.task_masks));
  for (int t = 0; t < 2; ++t) {
    auto acc = EvaluateAccuracy(forgot->state, tasks[t].train, tasks[t].label_mask);
    ASSERT_TRUE(acc.ok());
    EXPECT_GT(*acc, 0.9) << "task " << t;
  }
  ForgetData outside = five;
  outside.task_ids = at::zeros({5}, at::kLong);  // task 0's head is classes 0 and 1
  EXPECT_THAT(std::string(Forget(r1->state, outside, c).status().message()),
              testing::HasSubstr("outside the task's label set"));
}

}  // namespace
}  // namespace adaptd

// MPE against oracles: brute-force refits (closed-form linear regression, Newton-refitted
// logistic regression on scikit-learn's breast-cancer data) and, for deep models, explicit
// per-example autograd Jacobians in float64.
#include "core/mpe.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_split.h"
#include "tests/testing/data.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

using testing::HasSubstr;
using namespace testing_models;  // NOLINT: test helpers

double Pearson(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kDouble) - a.to(at::kDouble).mean();
  const at::Tensor y = b.to(at::kDouble) - b.to(at::kDouble).mean();
  return (x * y).sum().item<double>() / std::sqrt((x * x).sum().item<double>() * (y * y).sum().item<double>());
}

// Writes a flat parameter vector into the model (the order of Model::Parameters()).
void SetParameters(Model& model, const at::Tensor& flat) {
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (at::Tensor& p : model.Parameters()) {
    p.copy_(flat.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
}

// Multi-output linear regression y = W x + b + noise, noise variance s2, prior precision alpha on
// every weight: the posterior is Gaussian and a leave-one-out refit has a closed form, so MPE with
// the posterior that excludes the example (Cook's formula, MPE Eq. 2) must be exact.
TEST(MpeTest, LinearRegressionLooShiftEqualsBruteForceRefits) {
  constexpr int64_t kN = 40, kD = 5, kOut = 2;
  constexpr double kNoiseVar = 0.25, kAlpha = 0.5;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = at::randn({kN, kD}, gen, f64);
  const at::Tensor y = x.matmul(at::randn({kD, kOut}, gen, f64)) + 0.3 +
                       std::sqrt(kNoiseVar) * at::randn({kN, kOut}, gen, f64);
  const at::Tensor phi = at::cat({x, at::ones({kN, 1}, f64)}, 1);  // [N, D + 1]
  const at::Tensor a = phi.t().matmul(phi) / kNoiseVar + kAlpha * at::eye(kD + 1, f64);
  const at::Tensor theta = at::linalg_solve(a, phi.t().matmul(y) / kNoiseVar);  // [D + 1, out]

  // The model holds the posterior mean; Sigma is block diagonal over outputs, in the flat order
  // [W row 0, W row 1, b].
  auto model = BuildOrDie(Spec(Architecture::kLogReg, {kD}, kOut));
  ConvertToDouble(*model);
  SetParameters(*model, at::cat({theta.narrow(0, 0, kD).t().reshape({-1}), theta[kD]}));
  const at::Tensor a_inv = at::linalg_inv(a);
  at::Tensor sigma = at::zeros({kOut * (kD + 1), kOut * (kD + 1)}, f64);
  for (int64_t o = 0; o < kOut; ++o) {
    std::vector<int64_t> idx;
    for (int64_t j = 0; j < kD; ++j) idx.push_back(o * kD + j);
    idx.push_back(kOut * kD + o);
    const at::Tensor ix = at::tensor(idx, at::kLong);
    sigma.index_put_({ix.unsqueeze(1), ix.unsqueeze(0)}, a_inv);
  }
  auto jac = LogitJacobian::Create(*model);
  ASSERT_TRUE(jac.ok());
  auto gram = (*jac)->SigmaGram(x, *Covariance::Dense(sigma), /*full=*/true);
  ASSERT_TRUE(gram.ok()) << gram.status();

  // Gaussian likelihood: e = d loss / d f = (f - y) / s2, Lambda = I / s2.
  const at::Tensor f = gram->logits;
  const at::Tensor e = (f - y) / kNoiseVar;
  const at::Tensor lambda = at::eye(kOut, f64).expand({kN, kOut, kOut}) / kNoiseVar;
  auto shift = LooLogitShift(e, lambda, gram->value, /*exclude_self=*/true);
  ASSERT_TRUE(shift.ok()) << shift.status();

  at::Tensor refit = at::empty({kN, kOut}, f64);
  for (int64_t i = 0; i < kN; ++i) {
    const at::Tensor p = phi[i].unsqueeze(1);
    const at::Tensor th = at::linalg_solve(a - p.matmul(p.t()) / kNoiseVar,
                                           (phi.t().matmul(y) - p.matmul(y[i].unsqueeze(0))) / kNoiseVar);
    refit[i] = phi[i].matmul(th) - f[i];
  }
  const double err = (*shift - refit).abs().max().item<double>();
  std::cout << "max |MPE - refit| = " << err << " (largest deviation "
            << refit.abs().max().item<double>() << ")\n";
  // float64, a 6x6 solve per example: agreement to ~1e-14; the acceptance bar is 1e-8.
  EXPECT_LT(err, 1e-8);

  // The same with Gamma and Lambda given as diagonals (the outputs are independent here).
  auto diag = LooLogitShift(e, lambda.diagonal(0, 1, 2), gram->value.diagonal(0, 1, 2), true);
  ASSERT_TRUE(diag.ok()) << diag.status();
  EXPECT_LT((*diag - refit).abs().max().item<double>(), 1e-8);
  // Without removing the example's own curvature the shift is h e instead of h e / (1 - h):
  // close, not exact.
  auto plain = LooLogitShift(e, lambda, gram->value, /*exclude_self=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_GT((*plain - refit).abs().max().item<double>(), 1e-3);
  EXPECT_GT(Pearson(plain->reshape({-1}), refit.reshape({-1})), 0.99);
}

// Scikit-learn's bundled breast-cancer data: a first line "569,30,..." then rows of 30
// features and the 0/1 label. Features are standardized.
bool LoadBreastCancer(at::Tensor* x, at::Tensor* y) {
  std::ifstream in("/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv");
  if (!in) return false;
  std::string line;
  std::getline(in, line);
  std::vector<double> values;
  std::vector<int64_t> labels;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> fields = absl::StrSplit(line, ',');
    for (size_t j = 0; j + 1 < fields.size(); ++j) values.push_back(std::stod(fields[j]));
    labels.push_back(std::stoll(fields.back()));
  }
  const int64_t n = static_cast<int64_t>(labels.size());
  at::Tensor raw = at::tensor(values, at::kDouble).view({n, -1});
  *x = (raw - raw.mean(0)) / raw.std(0);
  *y = at::tensor(labels, at::kLong);
  return true;
}

// Two-class softmax regression with a Gaussian prior N(0, I / alpha), fitted by Newton's method
// in float64, written independently of the code under test. Parameters in a logreg model's flat
// order: [W (2 x D) row-major, b (2)]. Each example's weight in `w` (0 leaves it out).
struct SoftmaxRegression {
  at::Tensor x, y, jac;  // jac [N, K, P]: d f_i / d theta, constant for a linear model
  int64_t k = 2;
  double alpha = 1.0;

  SoftmaxRegression(at::Tensor features, at::Tensor labels, double prior) : x(features), y(labels), alpha(prior) {
    const int64_t n = x.size(0), d = x.size(1);
    jac = at::zeros({n, k, k * d + k}, at::kDouble);
    for (int64_t c = 0; c < k; ++c) {
      jac.select(1, c).narrow(1, c * d, d).copy_(x);
      jac.select(1, c).select(1, k * d + c).fill_(1.0);
    }
  }
  at::Tensor Logits(const at::Tensor& theta) const { return at::matmul(jac, theta); }
  at::Tensor Fit(at::Tensor theta, const at::Tensor& w) const {
    for (int it = 0; it < 50; ++it) {
      const at::Tensor p = at::softmax(Logits(theta), 1);
      const at::Tensor e = p - at::one_hot(y, k).to(at::kDouble);
      const at::Tensor lam = at::diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1);
      const at::Tensor g = at::einsum("n,nkp,nk->p", {w, jac, e}) + alpha * theta;
      const at::Tensor h = at::einsum("n,nkp,nkl,nlq->pq", {w, jac, lam, jac}) +
                           alpha * at::eye(theta.size(0), at::kDouble);
      const at::Tensor step = at::linalg_solve(h, g);
      theta = theta - step;
      if (step.abs().max().item<double>() < 1e-13) break;
    }
    return theta;
  }
  // The Laplace covariance (H + alpha I)^-1 at theta.
  at::Tensor Covariance(const at::Tensor& theta) const {
    const at::Tensor p = at::softmax(Logits(theta), 1);
    const at::Tensor lam = at::diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1);
    return at::linalg_inv(at::einsum("nkp,nkl,nlq->pq", {jac, lam, jac}) +
                          alpha * at::eye(theta.size(0), at::kDouble));
  }
};

// Acceptance: MPE's predicted leave-one-out deviations against 569 brute-force refits, and the
// influence of every example on one query against the same refits.
TEST(MpeTest, LogisticRegressionLooMatchesBruteForceRefitsOnBreastCancer) {
  at::Tensor x, y;
  if (!LoadBreastCancer(&x, &y)) ADAPTD_SKIP_WITHOUT_DATA("scikit-learn's breast_cancer.csv not installed");
  const int64_t n = x.size(0), d = x.size(1);
  ASSERT_EQ(n, 569);
  ASSERT_EQ(d, 30);
  SoftmaxRegression reg(x, y, /*prior=*/1.0);
  const at::Tensor ones = at::ones({n}, at::kDouble);
  const at::Tensor theta = reg.Fit(at::zeros({2 * d + 2}, at::kDouble), ones);
  const at::Tensor f = reg.Logits(theta);
  // A query the model is unsure about, so that many examples move it.
  const at::Tensor p_all = at::softmax(f, 1);
  const int64_t q = (p_all.select(1, 1) - 0.5).abs().argmin().item<int64_t>();
  const int64_t qc = p_all[q].argmax().item<int64_t>();

  at::Tensor true_margin = at::empty({n}, at::kDouble);
  at::Tensor true_query = at::empty({n}, at::kDouble);
  at::Tensor true_prob = at::empty({n}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor w = ones.clone();
    w[i] = 0.0;
    const at::Tensor fi = reg.Logits(reg.Fit(theta, w));
    true_margin[i] = (fi[i][1] - fi[i][0]) - (f[i][1] - f[i][0]);
    true_prob[i] = at::softmax(fi[i], 0)[1] - p_all[i][1];
    true_query[i] = at::softmax(fi[q], 0)[qc] - p_all[q][qc];
  }

  auto model = BuildOrDie(Spec(Architecture::kLogReg, {d}, 2));
  ConvertToDouble(*model);
  SetParameters(*model, theta);
  const Covariance sigma = *Covariance::Dense(reg.Covariance(theta));
  const Dataset data{x, y};
  // Removing example i moves its margin f_1 - f_0 and its probability p_1. MPE with the
  // posterior that excludes i's own curvature, (S^{\i})^-1 as in Eq. 10 (Cook's form; the
  // classical approximate leave-one-out for GLMs), against the refits: observed Pearson 0.990
  // (margins) and 0.9992 (probabilities); the acceptance bar is 0.95. The paper's cheaper
  // S^{\i} ~= S gives 0.79 and 0.84 at this prior (0.97 only at alpha = 20): a guard, not the bar.
  struct Variant {
    bool exclude_self;
    double min_margin, min_prob;
  };
  for (const Variant& v : {Variant{true, 0.95, 0.95}, Variant{false, 0.75, 0.80}}) {
    MpeOptions o;
    o.loo = LooMode::kFull;
    o.exclude_self = v.exclude_self;
    o.batch_size = 100;
    auto loo = EstimateLoo(*model, sigma, data, o);
    ASSERT_TRUE(loo.ok()) << loo.status();
    const at::Tensor margin = loo->shift.select(1, 1) - loo->shift.select(1, 0);
    const at::Tensor prob = at::softmax(f + loo->shift, 1).select(1, 1) - p_all.select(1, 1);
    const double r_margin = Pearson(margin, true_margin), r_prob = Pearson(prob, true_prob);
    std::cout << "exclude_self " << v.exclude_self << ": Pearson(MPE, refit) margins " << r_margin
              << ", probabilities " << r_prob << "\n";
    EXPECT_GE(r_margin, v.min_margin) << v.exclude_self;
    EXPECT_GE(r_prob, v.min_prob) << v.exclude_self;
  }

  // Influence of every example on the query's probability, against the same refits: observed
  // 0.9986 excluding the example's curvature and 0.89 without.
  for (bool exclude : {true, false}) {
    InfluenceOptions io;
    io.top_k = 10;
    io.exclude_self = exclude;
    auto scorer = InfluenceScorer::Create(*model, sigma, x[q], io);
    ASSERT_TRUE(scorer.ok()) << scorer.status();
    EXPECT_EQ((*scorer)->query_class(), qc);
    auto influence = (*scorer)->Add(x, y, 0);
    ASSERT_TRUE(influence.ok()) << influence.status();
    const double r = Pearson(*influence, true_query);
    std::cout << "influence, exclude_self " << exclude << ": Pearson(MPE, refit) = " << r << "\n";
    EXPECT_GE(r, exclude ? 0.95 : 0.85);
    // The top-10 by magnitude are the examples with the ten largest |influence|, best first.
    const std::vector<InfluenceEntry> top = (*scorer)->Top();
    ASSERT_EQ(top.size(), 10u);
    const at::Tensor order = std::get<1>(influence->abs().topk(10));
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(top[i].index, order[i].item<int64_t>());
      EXPECT_DOUBLE_EQ(top[i].influence, (*influence)[top[i].index].item<double>());
    }
  }
}

// Oracle quantities for a deep model: explicit per-example Jacobians by autograd (one backward
// pass per example and class), then the MPE formulas written out.
struct Oracle {
  at::Tensor logits, probs, error, lambda, jac;  // jac [N, K, P]
};

Oracle ComputeOracle(Model& model, const at::Tensor& x, const at::Tensor& y) {
  const ExplicitJacobian j = ComputeExplicitJacobian(model, x);
  Oracle o;
  o.logits = j.logits;
  o.jac = j.jac;
  o.probs = at::softmax(o.logits, 1);
  o.error = o.probs - at::one_hot(y, o.logits.size(1)).to(o.probs.scalar_type());
  o.lambda = o.probs * (1 - o.probs);
  return o;
}

struct DeepCase {
  const char* name;
  std::function<std::unique_ptr<Model>()> make;
};

class MpeDeepTest : public testing::TestWithParam<DeepCase> {};

TEST_P(MpeDeepTest, DataSetQuantitiesMatchExplicitJacobians) {
  std::unique_ptr<Model> model = GetParam().make();
  ConvertToDouble(*model);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  constexpr int64_t kN = 13;
  const at::Tensor x = RandomInput(*model, kN, gen, at::kDouble);
  const int64_t k = model->spec().num_classes, p = model->NumParameters();
  const at::Tensor y = at::randint(0, k, {kN}, gen, at::TensorOptions().dtype(at::kLong));
  const at::Tensor var = (at::rand({p}, gen, at::kDouble) + 0.5) * 0.1;
  const Covariance sigma = *Covariance::Diagonal(var);
  const Dataset data{x, y};
  const Oracle o = ComputeOracle(*model, x, y);
  const at::Tensor gram = at::bmm(o.jac * var, o.jac.transpose(1, 2));  // J Sigma J^T [N, K, K]
  const at::Tensor v = gram.diagonal(0, 1, 2);
  MpeOptions opts;
  opts.batch_size = 5;  // batches of 5, 5 and 3
  // float64 throughout: agreement to rounding (~1e-15 relative); 1e-10 is slack.
  auto close = [](const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>() <= 1e-10 * (1 + b.abs().max().item<double>());
  };

  auto map = ComputeMemoryMap(*model, sigma, data, opts);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(map->error.device().is_cpu());
  EXPECT_TRUE(close(map->error, o.error));
  EXPECT_TRUE(close(map->variance, v));
  EXPECT_TRUE(close(map->lambda, o.lambda));
  EXPECT_TRUE(close(map->sensitivity, (o.error * o.lambda * v).abs().sum(1)));

  auto nll_of = [&](const at::Tensor& shift) {
    return -at::log_softmax(o.logits + shift, 1).gather(1, y.unsqueeze(1)).squeeze(1);
  };
  const at::Tensor shift_diag = o.error * v;
  const at::Tensor shift_full = at::bmm(gram, o.error.unsqueeze(2)).squeeze(2);
  auto loo = EstimateLoo(*model, sigma, data, opts);
  ASSERT_TRUE(loo.ok()) << loo.status();
  EXPECT_TRUE(close(loo->shift, shift_diag));
  EXPECT_TRUE(close(loo->nll_per_example, nll_of(shift_diag)));
  EXPECT_NEAR(loo->nll, nll_of(shift_diag).mean().item<double>(), 1e-12);
  EXPECT_NEAR(loo->accuracy,
              (o.logits + shift_diag).argmax(1).eq(y).to(at::kDouble).mean().item<double>(), 1e-12);
  opts.loo = LooMode::kFull;
  auto loo_full = EstimateLoo(*model, sigma, data, opts);
  ASSERT_TRUE(loo_full.ok()) << loo_full.status();
  EXPECT_TRUE(close(loo_full->shift, shift_full));

  // The map and the LOO estimate from one pass: the same figures, in either LOO mode (with the
  // full block, the map's variance is its diagonal).
  for (LooMode mode : {LooMode::kDiagonal, LooMode::kFull}) {
    opts.loo = mode;
    auto both = ComputeMemoryMapAndLoo(*model, sigma, data, opts);
    ASSERT_TRUE(both.ok()) << both.status();
    const at::Tensor shift = mode == LooMode::kFull ? shift_full : shift_diag;
    EXPECT_TRUE(close(both->map.error, o.error));
    EXPECT_TRUE(close(both->map.variance, v));
    EXPECT_TRUE(close(both->map.lambda, o.lambda));
    EXPECT_TRUE(close(both->map.sensitivity, (o.error * o.lambda * v).abs().sum(1)));
    EXPECT_TRUE(close(both->loo.shift, shift));
    EXPECT_TRUE(close(both->loo.nll_per_example, nll_of(shift)));
    EXPECT_NEAR(both->loo.nll, nll_of(shift).mean().item<double>(), 1e-12);
    EXPECT_NEAR(both->loo.accuracy,
                (o.logits + shift).argmax(1).eq(y).to(at::kDouble).mean().item<double>(), 1e-12);
  }

  // Self-influence: a^T Gamma e with a = d p_c / d f at the predicted class c.
  auto self = SelfInfluence(*model, sigma, data, opts);
  ASSERT_TRUE(self.ok()) << self.status();
  const at::Tensor c = o.probs.argmax(1, true);
  const at::Tensor a = o.probs.gather(1, c) * (at::zeros_like(o.probs).scatter_(1, c, 1.0) - o.probs);
  EXPECT_TRUE(close(*self, (a.unsqueeze(2) * gram * o.error.unsqueeze(1)).sum({1, 2})));
  // Excluding the example's own curvature: a^T Gamma (I - Lambda Gamma)^-1 e.
  const at::Tensor lam = at::diag_embed(o.probs) - o.probs.unsqueeze(2) * o.probs.unsqueeze(1);
  const at::Tensor z = at::linalg_solve(at::eye(k, at::kDouble) - at::bmm(lam, gram), o.error.unsqueeze(2));
  opts.exclude_self = true;
  auto self_excluded = SelfInfluence(*model, sigma, data, opts);
  ASSERT_TRUE(self_excluded.ok()) << self_excluded.status();
  EXPECT_TRUE(close(*self_excluded, (a * at::bmm(gram, z).squeeze(2)).sum(1)));
  opts.exclude_self = false;

  // Influence on a query: (Sigma grad p*)^T J_j^T e_j for every j, and the top-k lists.
  const at::Tensor query = RandomInput(*model, 1, gen, at::kDouble);
  const Oracle oq = ComputeOracle(*model, query, at::zeros({1}, at::kLong));
  const int64_t qc = oq.probs[0].argmax().item<int64_t>();
  const at::Tensor aq = oq.probs[0][qc] * (at::one_hot(at::tensor({qc}), k).to(at::kDouble)[0] - oq.probs[0]);
  const at::Tensor u = var * at::matmul(aq, oq.jac[0]);  // Sigma grad p*
  const at::Tensor expected = (at::matmul(o.jac, u) * o.error).sum(1);
  {
    // Excluding each example's curvature: (J_j u)^T (I - Lambda_j Gamma_j)^-1 e_j.
    const at::Tensor excluded = (at::matmul(o.jac, u) * z.squeeze(2)).sum(1);
    InfluenceOptions io;
    io.exclude_self = true;
    auto scorer = InfluenceScorer::Create(*model, sigma, query, io);
    ASSERT_TRUE(scorer.ok()) << scorer.status();
    auto scores = (*scorer)->Add(x, y, 0);
    ASSERT_TRUE(scores.ok()) << scores.status();
    EXPECT_TRUE(close(*scores, excluded));
  }
  for (InfluenceOrder order : {InfluenceOrder::kMagnitude, InfluenceOrder::kSupporting,
                               InfluenceOrder::kOpposing}) {
    InfluenceOptions io;
    io.top_k = 4;
    io.order = order;
    io.batch_size = 5;
    auto top = TopInfluences(*model, sigma, query, data, io);
    ASSERT_TRUE(top.ok()) << top.status();
    const at::Tensor key = order == InfluenceOrder::kMagnitude    ? expected.abs()
                           : order == InfluenceOrder::kSupporting ? -expected
                                                                  : expected;
    const at::Tensor best = std::get<1>(key.topk(4));
    ASSERT_EQ(top->size(), 4u);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ((*top)[i].index, best[i].item<int64_t>()) << static_cast<int>(order) << " " << i;
      EXPECT_NEAR((*top)[i].influence, expected[(*top)[i].index].item<double>(),
                  1e-10 * (1 + expected.abs().max().item<double>()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, MpeDeepTest,
    testing::Values(
        DeepCase{"mlp_tanh", [] { return BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5, 3}, "tanh")); }},
        DeepCase{"lenet5", [] { return BuildOrDie(Spec(Architecture::kLeNet5, {1, 28, 28}, 10)); }},
        DeepCase{"torchscript", [] { return BuildOrDie(ScriptedMlpSpec(6, 4)); }}),
    [](const testing::TestParamInfo<DeepCase>& info) { return info.param.name; });

// Under a head's mask, every MPE quantity is that of the softmax over the head's classes alone:
// the oracle restricts the explicit-Jacobian logits to classes {1, 2} and writes the formulas
// out; the other classes carry no error and no curvature.
TEST(MpeTest, LabelMaskKeepsEverythingInTheHead) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5}));
  ConvertToDouble(*model);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = RandomInput(*model, 8, gen, at::kDouble);
  const at::Tensor y = at::tensor({1, 2, 1, 2, 2, 1, 1, 2}, at::kLong);
  MpeOptions o;
  o.label_mask = *MakeLabelMask({1, 2}, 4);
  const at::Tensor var = at::full({model->NumParameters()}, 0.01, at::kDouble);
  const Covariance sigma = *Covariance::Diagonal(var);

  const at::Tensor head = at::tensor({1, 2}, at::kLong);
  const ExplicitJacobian j = ComputeExplicitJacobian(*model, x);
  const at::Tensor f = j.logits.index_select(1, head);
  const at::Tensor jac = j.jac.index_select(1, head);
  const at::Tensor p = at::softmax(f, 1);
  const at::Tensor e = p - at::one_hot(y - 1, 2).to(at::kDouble);
  const at::Tensor lambda = p * (1 - p);
  const at::Tensor v = (jac.square() * var).sum(2);  // diag(J Sigma J^T) over the head
  const at::Tensor shift = e * v;
  const at::Tensor nll = -at::log_softmax(f + shift, 1).gather(1, (y - 1).unsqueeze(1)).squeeze(1);
  auto close = [](const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>() <= 1e-10 * (1 + b.abs().max().item<double>());
  };

  auto map = ComputeMemoryMap(*model, sigma, {x, y}, o);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(close(map->error.index_select(1, head), e));
  EXPECT_TRUE(close(map->lambda.index_select(1, head), lambda));
  EXPECT_TRUE(close(map->variance.index_select(1, head), v));
  EXPECT_TRUE(close(map->sensitivity, (e * lambda * v).abs().sum(1)));
  for (int64_t c : {0, 3}) {
    EXPECT_EQ(map->error.select(1, c).abs().max().item<double>(), 0.0);
    EXPECT_EQ(map->lambda.select(1, c).abs().max().item<double>(), 0.0);
  }
  auto loo = EstimateLoo(*model, sigma, {x, y}, o);
  ASSERT_TRUE(loo.ok()) << loo.status();
  EXPECT_TRUE(close(loo->shift.index_select(1, head), shift));
  EXPECT_TRUE(close(loo->nll_per_example, nll));
  EXPECT_NEAR(loo->nll, nll.mean().item<double>(), 1e-12);
  // A label outside the head is rejected.
  auto bad = EstimateLoo(*model, sigma, {x, at::tensor({0, 2, 1, 2, 2, 1, 1, 2}, at::kLong)}, o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("label_mask"));
}

TEST(MpeTest, BadInputIsInvalidArgument) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5}));
  const int64_t p = model->NumParameters();
  const Covariance sigma = *Covariance::Diagonal(at::full({p}, 0.01));
  const at::Tensor x = at::zeros({3, 6});
  const at::Tensor y = at::tensor({0, 1, 2}, at::kLong);
  struct Bad {
    Dataset data;
    MpeOptions options;
    std::string message;
  };
  MpeOptions zero_batch;
  zero_batch.batch_size = 0;
  MpeOptions bad_mask;
  bad_mask.label_mask = at::ones({3}, at::kBool);
  const std::vector<Bad> cases = {
      {{at::zeros({3, 5}), y}, {}, "float32 [N, 6]"},
      {{x, at::tensor({0, 1, 4}, at::kLong)}, {}, "labels must lie in [0, 4); got values in [0, 4]"},
      {{x, at::tensor({0, 1}, at::kLong)}, {}, "labels must be int64 [3]"},
      {{x, y}, zero_batch, "batch_size must be >= 1; got 0"},
      {{x, y}, bad_mask, "label_mask must be bool [4]"},
  };
  for (const Bad& c : cases) {
    auto map = ComputeMemoryMap(*model, sigma, c.data, c.options);
    EXPECT_EQ(map.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(map.status().message()), HasSubstr(c.message));
  }
  auto short_sigma = EstimateLoo(*model, *Covariance::Diagonal(at::ones({p - 1})), {x, y});
  EXPECT_THAT(std::string(short_sigma.status().message()),
              HasSubstr("covariance covers " + std::to_string(p - 1)));
  InfluenceOptions io;
  io.query_class = 7;
  EXPECT_EQ(InfluenceScorer::Create(*model, sigma, x[0], io).status().code(),
            absl::StatusCode::kInvalidArgument);
  io.query_class = -1;
  io.top_k = 0;
  EXPECT_EQ(InfluenceScorer::Create(*model, sigma, x[0], io).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(InfluenceScorer::Create(*model, sigma, x, {}).status().message()),
              HasSubstr("one query example"));
  // A query whose features overflow a wider model's float32 outputs: refused, not scored as NaN.
  auto wide = BuildOrDie(Spec(Architecture::kMlp, {64}, 4, {32}));
  // (Signed as the first hidden unit's weights, so that its pre-activation overflows.)
  const at::Tensor huge = wide->Parameters()[0][0].detach().sign() * 3e38f;
  auto overflowed = InfluenceScorer::Create(
      *wide, *Covariance::Diagonal(at::full({wide->NumParameters()}, 0.01)), huge, {});
  EXPECT_EQ(overflowed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(overflowed.status().message()),
              HasSubstr(absl::StrCat("outputs for example 0 are not finite: its features reach |x| = ",
                                     huge.abs().max().item<double>())));
  // LooLogitShift: shapes, and a covariance that does not contain the example's curvature.
  const at::Tensor e = at::ones({2, 3});
  EXPECT_EQ(LooLogitShift(e, at::ones({2, 3}), at::ones({2, 4}), false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LooLogitShift(e, at::ones({2, 3}), at::full({2, 3}, 2.0), true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// should_stop is asked before every batch: a computation told to stop after two batches ends
// CANCELLED, saying how far it got; one never told to stop asks once per batch.
TEST(MpeTest, ShouldStopEndsTheComputationBetweenBatches) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5}));
  const Covariance sigma = *Covariance::Diagonal(at::full({model->NumParameters()}, 0.01));
  const Dataset data{at::randn({10, 6}), at::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1}, at::kLong)};
  MpeOptions o;
  o.batch_size = 3;
  int asked = 0;
  o.should_stop = [&] { return ++asked > 2; };
  auto stopped = ComputeMemoryMapAndLoo(*model, sigma, data, o);
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
  EXPECT_THAT(std::string(stopped.status().message()), HasSubstr("stopped after 6 of 10 examples"));
  asked = 0;
  o.should_stop = [&] { return ++asked > 100; };
  EXPECT_TRUE(ComputeMemoryMapAndLoo(*model, sigma, data, o).ok());
  EXPECT_EQ(asked, 4);
}

// A model of many classes takes fewer examples a batch, so that a batch's K x K blocks stay near
// 2^24 values (a batch of 256 at 3,000 classes held gigabytes and could not be cancelled for
// tens of seconds): 2,048 classes take 4 examples a batch, asked to stop before each, and the map
// is the one batches of a single example give.
TEST(MpeTest, ManyClassesTakeFewerExamplesABatch) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {6}, 2048, {5}));
  EXPECT_EQ(SweepRowsPerBatch(*model, 256), 4);
  EXPECT_EQ(SweepRowsPerBatch(*model, 2), 2);
  auto small = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5}));
  EXPECT_EQ(SweepRowsPerBatch(*small, 256), 256);
  // LeNet-5's widest output is its first convolution's, 6 x 28 x 28 = 4,704 a class: 256 rows
  // at 10 classes, 35 at 100.
  auto lenet = BuildOrDie(Spec(Architecture::kLeNet5, {1, 28, 28}, 100));
  EXPECT_EQ(SweepRowsPerBatch(*lenet, 256), (int64_t{1} << 24) / (100 * 4704));
  EXPECT_EQ(SweepRowsPerBatch(*BuildOrDie(Spec(Architecture::kLeNet5, {1, 28, 28}, 10)), 256), 256);
  const Covariance sigma = *Covariance::Diagonal(at::full({model->NumParameters()}, 0.01));
  const Dataset data{at::randn({10, 6}), at::randint(0, 2048, {10}, at::kLong)};
  MpeOptions o;
  int asked = 0;
  o.should_stop = [&] { return ++asked > 100; };
  auto map = ComputeMemoryMapAndLoo(*model, sigma, data, o);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(asked, 3);  // rows 0-3, 4-7, 8-9
  o.batch_size = 1;
  auto one = ComputeMemoryMapAndLoo(*model, sigma, data, o);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_TRUE(at::allclose(map->map.variance, one->map.variance, 1e-5, 1e-7));
  EXPECT_TRUE(at::allclose(map->loo.shift, one->loo.shift, 1e-5, 1e-7));
}

// The same queries on a CUDA copy of the model (the tensor-op path; the fused kernel is CPU
// only) agree with the CPU in float32.
TEST(MpeTest, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto [cpu, gpu] = LeNetOnCpuAndCuda(5);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = RandomInput(*cpu, 300, gen);
  const Dataset data{x, at::randint(0, 10, {300}, gen, at::TensorOptions().dtype(at::kLong))};
  const at::Tensor var = at::rand({cpu->NumParameters()}, gen) * 1e-3 + 1e-4;
  const Covariance sigma_cpu = *Covariance::Diagonal(var);
  const Covariance sigma_gpu = *Covariance::Diagonal(var.cuda());
  MpeOptions o;
  o.batch_size = 128;
  auto map_cpu = ComputeMemoryMap(*cpu, sigma_cpu, data, o);
  auto map_gpu = ComputeMemoryMap(*gpu, sigma_gpu, data, o);
  ASSERT_TRUE(map_cpu.ok() && map_gpu.ok()) << map_cpu.status() << map_gpu.status();
  EXPECT_TRUE(map_gpu->variance.device().is_cpu());
  // float32 sums over ~60,000 parameters in different orders (and TF32 off by default):
  // relative agreement ~1e-5.
  EXPECT_TRUE(at::allclose(map_gpu->variance, map_cpu->variance, 1e-3, 1e-7));
  EXPECT_TRUE(at::allclose(map_gpu->sensitivity, map_cpu->sensitivity, 1e-3, 1e-8));
  o.loo = LooMode::kFull;
  auto loo_cpu = EstimateLoo(*cpu, sigma_cpu, data, o);
  auto loo_gpu = EstimateLoo(*gpu, sigma_gpu, data, o);
  ASSERT_TRUE(loo_cpu.ok() && loo_gpu.ok()) << loo_cpu.status() << loo_gpu.status();
  EXPECT_NEAR(loo_gpu->nll, loo_cpu->nll, 1e-4);
  InfluenceOptions io;
  io.exclude_self = true;
  auto s_cpu = InfluenceScorer::Create(*cpu, sigma_cpu, x[0], io);
  auto s_gpu = InfluenceScorer::Create(*gpu, sigma_gpu, x[0].cuda(), io);
  ASSERT_TRUE(s_cpu.ok() && s_gpu.ok()) << s_cpu.status() << s_gpu.status();
  auto i_cpu = (*s_cpu)->Add(data.x, data.y, 0);
  auto i_gpu = (*s_gpu)->Add(data.x, data.y, 0);
  ASSERT_TRUE(i_cpu.ok() && i_gpu.ok()) << i_cpu.status() << i_gpu.status();
  EXPECT_TRUE(at::allclose(*i_gpu, *i_cpu, 1e-3, 1e-3 * i_cpu->abs().max().item<double>()));
  auto self_cpu = SelfInfluence(*cpu, sigma_cpu, data, o);
  auto self_gpu = SelfInfluence(*gpu, sigma_gpu, data, o);
  ASSERT_TRUE(self_cpu.ok() && self_gpu.ok());
  EXPECT_TRUE(at::allclose(*self_gpu, *self_cpu, 1e-3, 1e-3 * self_cpu->abs().max().item<double>()));
}

}  // namespace
}  // namespace adaptd

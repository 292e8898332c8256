// Predictive distributions and their uncertainty decomposition against hand-written sampling
// loops, the probit formula on explicit autograd Jacobians, and an independent Monte Carlo.
#include "core/predictive.h"

#include <cmath>
#include <memory>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/testing/models.h"

namespace adaptd {
namespace {

using namespace testing_models;  // NOLINT: test helpers

at::Tensor Entropy(const at::Tensor& p) { return -(p * p.clamp_min(1e-30).log()).sum(-1); }

// Population standard deviation over the first dimension: two passes in float64.
at::Tensor StdOverDraws(const at::Tensor& d) {
  const at::Tensor d64 = d.to(at::kDouble);
  return (d64 - d64.mean(0)).square().mean(0).sqrt().to(d.scalar_type());
}

class PredictiveTest : public testing::Test {
 protected:
  void SetUp() override {
    model_ = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {8}, "tanh"), 3);
    flat_ = *FlatParameters::Bind(model_->Parameters());
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
    // sigma^2 = 1 / (ess (h + delta)) between about 0.01 and 0.1: visible spread, sane logits.
    const at::Tensor hess = at::rand({flat_.numel()}, gen) * 0.9 + 0.1;
    posterior_ = *Posterior::Create(flat_.params().clone(), hess, /*ess=*/100, /*delta=*/0.0);
    x_ = RandomInput(*model_, 7, gen);
  }
  // The softmax of each of `samples` weight draws, drawn as Predict draws them for `seed`
  // without the local reparameterization: [S, N, K].
  at::Tensor HandDraws(int64_t samples, uint64_t seed) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    std::vector<at::Tensor> draws;
    at::NoGradGuard no_grad;
    at::Tensor params = flat_.params();
    for (int64_t s = 0; s < samples; ++s) {
      EXPECT_TRUE(posterior_.SampleInto(params, gen).ok());
      draws.push_back(at::softmax(model_->Forward(x_), 1));
    }
    params.copy_(posterior_.mean());
    return at::stack(draws);
  }
  Prediction Run(PredictMode mode, int64_t samples, uint64_t seed, int64_t batch_size = 3,
                 bool local_reparameterization = true) {
    PredictOptions o;
    o.mode = mode;
    o.samples = samples;
    o.batch_size = batch_size;
    o.local_reparameterization = local_reparameterization;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto p = Predict(*model_, flat_, &posterior_, x_, o, gen);
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  }

  std::unique_ptr<Model> model_;
  FlatParameters flat_;
  Posterior posterior_;
  at::Tensor x_;
};

TEST_F(PredictiveTest, MeanModeHasNoEpistemicPart) {
  const Prediction p = Run(PredictMode::kMean, 1, 0);
  at::NoGradGuard no_grad;
  const at::Tensor expected = at::softmax(model_->Forward(x_), 1);
  EXPECT_TRUE(at::allclose(p.probs, expected, 1e-6, 1e-7));
  EXPECT_TRUE(at::equal(p.label, expected.argmax(1)));
  EXPECT_TRUE(at::allclose(p.total_entropy, Entropy(expected), 1e-5, 1e-6));
  EXPECT_TRUE(at::equal(p.expected_entropy, p.total_entropy));
  EXPECT_EQ(p.mutual_information.abs().max().item<float>(), 0.f);
  EXPECT_EQ(p.std.abs().max().item<float>(), 0.f);
}

// Posterior averaging by weight draws against the loop written out: draw, forward, softmax,
// then moments.
TEST_F(PredictiveTest, BayesDecompositionMatchesHandSampling) {
  constexpr int64_t kSamples = 16;
  const Prediction p = Run(PredictMode::kBayes, kSamples, 7, 3, /*local_reparameterization=*/false);
  EXPECT_TRUE(at::equal(flat_.params(), posterior_.mean())) << "the mean must be restored";
  const at::Tensor d = HandDraws(kSamples, 7);  // [S, N, K]
  const at::Tensor mean = d.mean(0);
  // float32 sums of 16 draws: ~1e-7; 1e-5 is slack.
  EXPECT_TRUE(at::allclose(p.probs, mean, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(p.std, StdOverDraws(d), 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(p.expected_entropy, Entropy(d).mean(0), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(p.total_entropy, Entropy(mean), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(p.mutual_information, Entropy(mean) - Entropy(d).mean(0), 1e-4, 1e-5));
  EXPECT_GT(p.mutual_information.min().item<float>(), 0.f);
  // PredictProbs is the same distribution.
  PredictOptions o;
  o.mode = PredictMode::kBayes;
  o.samples = kSamples;
  o.batch_size = 3;
  o.local_reparameterization = false;
  at::Generator gen2 = at::make_generator<at::CPUGeneratorImpl>(7);
  auto probs = PredictProbs(*model_, flat_, &posterior_, x_, o, gen2);
  ASSERT_TRUE(probs.ok());
  EXPECT_TRUE(at::equal(*probs, p.probs));
}

// A confident posterior: large logits and little weight noise, so the top class has p near 1 and
// a spread of about 1e-5. Its standard deviation still matches the draws' own (two passes in
// float64) to 1e-3 relative; E p^2 - (E p)^2 in float32 gives noise of about 3e-4 there.
TEST_F(PredictiveTest, ConfidentPredictionsKeepTheirSmallSpread) {
  {
    const at::Tensor mean = flat_.params().clone() * 20.0;
    const at::Tensor hess = at::ones({flat_.numel()});
    posterior_ = *Posterior::Create(mean, hess, /*ess=*/1e6, /*delta=*/0.0);
    flat_.params().detach().copy_(mean);
  }
  constexpr int64_t kSamples = 32;
  const Prediction p = Run(PredictMode::kBayes, kSamples, 9, 7, /*local_reparameterization=*/false);
  const at::Tensor expected = StdOverDraws(HandDraws(kSamples, 9)).to(at::kDouble);
  const at::Tensor top = std::get<0>(p.probs.max(1));
  const at::Tensor top_std = expected.gather(1, p.probs.argmax(1, true)).squeeze(1);
  ASSERT_GT(top.max().item<float>(), 0.999f) << "the test needs a confident example";
  ASSERT_LT(top_std.min().item<double>(), 1e-4) << "and a small spread on it";
  const at::Tensor got = p.std.to(at::kDouble);
  const at::Tensor err = (got - expected).abs();
  EXPECT_TRUE((err <= 1e-3 * expected + 1e-9).all().item<bool>())
      << "largest error " << err.max().item<double>();
}

// Drawing pre-activations layer by layer (the default for this MLP) against drawing whole
// weight vectors: the same predictive distribution per example, so two independent estimates
// of 20000 draws each agree within their Monte Carlo error.
TEST_F(PredictiveTest, LocalReparameterizationHasTheWeightDrawsDistribution) {
  constexpr int64_t kSamples = 20000;
  const Prediction local = Run(PredictMode::kBayes, kSamples, 21);
  EXPECT_TRUE(at::equal(flat_.params(), posterior_.mean())) << "the mean must be restored";
  const Prediction weights = Run(PredictMode::kBayes, kSamples, 22, 3, false);
  const at::Tensor spread = weights.std.to(at::kDouble);
  ASSERT_GT(spread.max().item<double>(), 0.02) << "the posterior must spread the predictions";
  // The difference of two means of S draws has standard error sqrt(2 / S) std; allow 5 of them
  // (28 entries are compared).
  const at::Tensor se = (local.std.to(at::kDouble).square() + spread.square()).div(kSamples).sqrt();
  EXPECT_TRUE(((local.probs - weights.probs).to(at::kDouble).abs() <= 5 * se + 1e-7).all().item<bool>())
      << (local.probs - weights.probs).abs().max().item<float>() << " against " << se.max().item<double>();
  // The spread itself: relative error about 1 / sqrt(2 S) = 0.5 % per estimate.
  EXPECT_LT(((local.std.to(at::kDouble) - spread).abs() / (spread + 1e-3)).max().item<double>(), 0.03);
  EXPECT_LT((local.expected_entropy - weights.expected_entropy).abs().max().item<float>(), 5e-3);
}

// Logistic regression with two classes has a closed form to check the draws against: the logit
// difference d = f_1 - f_0 is N(m, v) with m = (mu_1 - mu_0) x + (b_1 - b_0) and
// v = (s_1^2 + s_0^2) x^2 + s_b1^2 + s_b0^2, and E p_1 = E sigmoid(d), E p_1^2 by quadrature.
TEST(PredictiveGlmTest, LocalReparameterizationMatchesTheGaussianLogitsOfLogisticRegression) {
  std::unique_ptr<Model> model = BuildOrDie(Spec(Architecture::kLogReg, {5}, 2), 4);
  FlatParameters flat = *FlatParameters::Bind(model->Parameters());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(17);
  const at::Tensor hess = at::rand({flat.numel()}, gen) + 0.2;
  Posterior posterior = *Posterior::Create(flat.params().clone(), hess, /*ess=*/4, /*delta=*/0.0);
  const at::Tensor x = RandomInput(*model, 6, gen);
  constexpr int64_t kSamples = 200000;
  PredictOptions o;
  o.mode = PredictMode::kBayes;
  o.samples = kSamples;
  at::Generator draw = at::make_generator<at::CPUGeneratorImpl>(5);
  auto p = Predict(*model, flat, &posterior, x, o, draw);
  ASSERT_TRUE(p.ok()) << p.status();

  // Parameters: weight [2, 5], then bias [2].
  const at::Tensor mu = posterior.mean().to(at::kDouble), var = posterior.Sigma().square().to(at::kDouble);
  const at::Tensor w = mu.narrow(0, 0, 10).view({2, 5}), b = mu.narrow(0, 10, 2);
  const at::Tensor wv = var.narrow(0, 0, 10).view({2, 5}), bv = var.narrow(0, 10, 2);
  const at::Tensor xd = x.to(at::kDouble);
  const at::Tensor m = at::matmul(xd, (w[1] - w[0])) + (b[1] - b[0]);                        // [N]
  const at::Tensor v = at::matmul(xd.square(), (wv[1] + wv[0])) + (bv[1] + bv[0]);           // [N]
  // Trapezoid rule on z in [-12, 12] with 48001 points: error far below 1e-9.
  const at::Tensor z = at::linspace(-12, 12, 48001, at::kDouble);
  const at::Tensor phi = at::exp(-0.5 * z.square()) / std::sqrt(2 * M_PI) * (24.0 / 48000);
  const at::Tensor s = at::sigmoid(m.unsqueeze(1) + v.sqrt().unsqueeze(1) * z.unsqueeze(0));  // [N, Z]
  const at::Tensor e1 = (s * phi).sum(1), e2 = (s.square() * phi).sum(1);
  const at::Tensor sd = (e2 - e1.square()).sqrt();
  ASSERT_GT(sd.min().item<double>(), 0.05) << "the logits must be uncertain";
  const at::Tensor got = p->probs.select(1, 1).to(at::kDouble);
  // 5 standard errors of a mean of 200000 draws.
  EXPECT_TRUE(((got - e1).abs() <= 5 * sd / std::sqrt(kSamples)).all().item<bool>())
      << (got - e1).abs().max().item<double>();
  EXPECT_LT((p->std.select(1, 1).to(at::kDouble) - sd).abs().max().item<double>(), 0.01);
}

// Linearized: the probit probabilities from J Sigma J^T of explicit autograd Jacobians, and the
// sampled parts against an independent float64 Monte Carlo with its own generator.
TEST_F(PredictiveTest, LinearizedMatchesProbitAndIndependentMonteCarlo) {
  constexpr int64_t kSamples = 20000;
  const Prediction p = Run(PredictMode::kLinearized, kSamples, 11);
  const ExplicitJacobian j = ComputeExplicitJacobian(*model_, x_);
  const at::Tensor var = posterior_.Sigma().square();
  const at::Tensor gram = at::bmm(j.jac * var, j.jac.transpose(1, 2)).to(at::kDouble);
  const at::Tensor f = j.logits.to(at::kDouble);
  const at::Tensor probit = at::softmax(f / (1 + M_PI / 8 * gram.diagonal(0, 1, 2)).sqrt(), 1);
  EXPECT_TRUE(at::allclose(p.probs.to(at::kDouble), probit, 1e-5, 1e-6));
  EXPECT_TRUE(at::equal(p.label, probit.argmax(1)));

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12345);
  const at::Tensor l = at::linalg_cholesky(gram + 1e-12 * at::eye(4, at::kDouble));
  const at::Tensor eps = at::randn({kSamples, 7, 4, 1}, gen, at::kDouble);
  const at::Tensor d = at::softmax(f + at::matmul(l, eps).squeeze(3), 2);  // [S, N, K]
  const at::Tensor spread = StdOverDraws(d);
  ASSERT_GT(spread.max().item<double>(), 0.02) << "the posterior must spread the predictions";
  // Two independent estimates from 20000 draws each: the standard deviation's relative error
  // is about 1/sqrt(2 S) = 0.5% per estimate, the expected entropy's below 1e-3; allow 4 sigma.
  EXPECT_LT(((p.std.to(at::kDouble) - spread).abs() / (spread + 1e-3)).max().item<double>(), 0.03);
  EXPECT_LT((p.expected_entropy.to(at::kDouble) - Entropy(d).mean(0)).abs().max().item<double>(),
            5e-3);
  EXPECT_GE(p.mutual_information.min().item<float>(), 0.f);
}

// A forward pass that fails in the middle of the weight draws (here a module that takes at most
// two examples at a time, asked for three) is an error, and the model is left at the mean,
// where MPE, memory selection and mean-mode prediction expect it, not at the draw that failed.
TEST(PredictiveFailureTest, AFailedWeightDrawLeavesTheMeanInPlace) {
  torch::jit::Module m("AtMostTwo");
  m.register_parameter("w", at::full({3, 6}, 0.1f), false);
  m.define(R"(
    def forward(self, x):
        assert x.size(0) <= 2, "at most two examples at a time"
        return x.matmul(self.w.t())
  )");
  std::unique_ptr<Model> model = BuildOrDie(ScriptSpec(m, 6, 3));
  ASSERT_NE(model, nullptr);
  FlatParameters flat = *FlatParameters::Bind(model->Parameters());
  const Posterior posterior =
      *Posterior::Create(flat.params().clone(), at::full({flat.numel()}, 0.5f), 10, 0.0);
  PredictOptions o;
  o.mode = PredictMode::kBayes;
  o.samples = 4;
  o.batch_size = 3;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto p = Predict(*model, flat, &posterior, at::ones({3, 6}), o, gen);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition) << p.status();
  EXPECT_TRUE(at::equal(flat.params(), posterior.mean())) << "a weight draw stayed in place";
}

TEST_F(PredictiveTest, BadInputIsInvalidArgument) {
  PredictOptions o;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  for (PredictMode mode : {PredictMode::kBayes, PredictMode::kLinearized}) {
    o.mode = mode;
    auto p = Predict(*model_, flat_, nullptr, x_, o, gen);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), testing::HasSubstr("need a posterior"));
  }
  o.mode = PredictMode::kMean;
  o.label_mask = at::ones({3}, at::kBool);
  EXPECT_THAT(std::string(Predict(*model_, flat_, nullptr, x_, o, gen).status().message()),
              testing::HasSubstr("label_mask must be bool [4]"));
  o.label_mask = at::Tensor();
  o.samples = 0;
  EXPECT_EQ(Predict(*model_, flat_, &posterior_, x_, o, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Predict(*model_, flat_, &posterior_, at::zeros({2, 5}), {}, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A posterior of another model is refused before anything is drawn, either way of drawing.
  o.samples = 4;
  o.mode = PredictMode::kBayes;
  const Posterior other = *Posterior::Create(at::zeros({flat_.numel() - 1}),
                                             at::ones({flat_.numel() - 1}), 100, 0.0);
  const at::Tensor before = flat_.params().clone();
  for (bool local : {true, false}) {
    o.local_reparameterization = local;
    auto p = Predict(*model_, flat_, &other, x_, o, gen);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), testing::HasSubstr("posterior must match"));
    EXPECT_TRUE(at::equal(flat_.params(), before));
  }
}

// An input far outside the model's scale overflows a ReLU network's float32 logits. Every mode
// refuses it, naming the example and its features' reach, rather than answering NaN (bayes and
// mean) or failing the eigendecomposition (linearized); the model is left at its mean.
TEST(PredictiveOverflowTest, AnInputThatOverflowsTheOutputsIsRefusedInEveryMode) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {64}, 4, {32}), 3);
  FlatParameters flat = *FlatParameters::Bind(model->Parameters());
  const Posterior posterior = *Posterior::Create(flat.params().clone(),
                                                 at::full({flat.numel()}, 0.5), 100, 0.0);
  at::Tensor x = at::rand({3, 64});
  // Signed as the first hidden unit's weights, so that its pre-activation overflows.
  x[1] = model->Parameters()[0][0].detach().sign() * 3e38f;
  const at::Tensor before = flat.params().clone();
  for (PredictMode mode : {PredictMode::kMean, PredictMode::kBayes, PredictMode::kLinearized}) {
    for (bool local : {true, false}) {
      PredictOptions o;
      o.mode = mode;
      o.samples = 8;
      o.local_reparameterization = local;
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
      auto p = Predict(*model, flat, &posterior, x, o, gen);
      EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << p.status();
      EXPECT_THAT(std::string(p.status().message()),
                  testing::HasSubstr(absl::StrCat(
                      "outputs for example 1 are not finite: its features reach |x| = ",
                      x[1].abs().max().item<double>())));
      EXPECT_TRUE(at::equal(flat.params(), before));
      // The same request without that row is answered.
      EXPECT_TRUE(Predict(*model, flat, &posterior, x.narrow(0, 0, 1), o, gen).ok());
    }
  }
}

// Linearized prediction on a CUDA copy: the same probit probabilities as on the CPU.
TEST_F(PredictiveTest, LinearizedOnCudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Prediction cpu = Run(PredictMode::kLinearized, 64, 11);
  auto gpu_model = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {8}, "tanh"), 3);
  gpu_model->To(at::kCUDA);
  FlatParameters flat = *FlatParameters::Bind(gpu_model->Parameters());
  Posterior post = *Posterior::Create(posterior_.mean().cuda(), posterior_.hess().cuda(),
                                      posterior_.ess(), posterior_.delta());
  PredictOptions o;
  o.mode = PredictMode::kLinearized;
  at::Generator gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, 0)).clone();
  auto gpu = Predict(*gpu_model, flat, &post, x_, o, gen);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_TRUE(gpu->probs.device().is_cpu());
  EXPECT_TRUE(at::allclose(gpu->probs, cpu.probs, 1e-4, 1e-6));
  EXPECT_GE(gpu->mutual_information.min().item<float>(), 0.f);
}

}  // namespace
}  // namespace adaptd

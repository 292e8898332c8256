#include "core/metrics.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace adaptd {
namespace {

TEST(MetricsTest, HandComputedExample) {
  const at::Tensor p = at::tensor({0.9, 0.1, 0.4, 0.6, 0.2, 0.8}, at::kDouble).view({3, 2});
  const at::Tensor y = at::tensor({0, 0, 1}, at::kLong);
  auto c = ComputeCalibration(p, y);
  ASSERT_TRUE(c.ok());
  EXPECT_DOUBLE_EQ(c->accuracy, 2.0 / 3.0);
  EXPECT_NEAR(c->nll, -(std::log(0.9) + std::log(0.4) + std::log(0.8)) / 3.0, 1e-15);
  EXPECT_NEAR(c->brier, (0.02 + 0.72 + 0.08) / 3.0, 1e-15);
  // Confidences 0.9, 0.6, 0.8 fall in three different bins: (0.1 + 0.6 + 0.2) / 3.
  EXPECT_NEAR(c->ece, 0.3, 1e-15);
}

// ECE against a direct loop over bins on random predictions.
TEST(MetricsTest, EceMatchesBruteForce) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const at::Tensor p = at::softmax(at::randn({2000, 7}, gen, at::kDouble) * 2, 1);
  const at::Tensor y = at::randint(0, 7, {2000}, gen, at::kLong);
  for (int bins : {1, 10, 15}) {
    double ece = 0;
    for (int b = 0; b < bins; ++b) {
      double n = 0, conf = 0, acc = 0;
      for (int i = 0; i < 2000; ++i) {
        const double c = p[i].max().item<double>();
        if (c > static_cast<double>(b) / bins && c <= static_cast<double>(b + 1) / bins) {
          n += 1;
          conf += c;
          acc += p[i].argmax().item<int64_t>() == y[i].item<int64_t>();
        }
      }
      if (n > 0) ece += n / 2000.0 * std::abs(acc / n - conf / n);
    }
    EXPECT_NEAR(ExpectedCalibrationError(p, y, bins), ece, 1e-12) << bins << " bins";
  }
}

TEST(MetricsTest, PerfectPredictionsScoreZero) {
  const at::Tensor y = at::tensor({0, 2, 1}, at::kLong);
  const at::Tensor p = at::one_hot(y, 3).to(at::kFloat);
  auto c = ComputeCalibration(p, y);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->accuracy, 1.0);
  EXPECT_NEAR(c->nll, 0.0, 1e-7);
  EXPECT_NEAR(c->ece, 0.0, 1e-7);
  EXPECT_NEAR(c->brier, 0.0, 1e-7);
}

TEST(MetricsTest, ContinualSummaryByHand) {
  // After task 0: 0.9; after task 1: 0.8 (task 0), 0.95; after task 2: 0.7, 0.9, 0.99.
  const std::vector<std::vector<double>> acc = {
      {0.90, 0, 0}, {0.80, 0.95, 0}, {0.70, 0.90, 0.99}};
  auto s = SummarizeAccuracyMatrix(acc);
  ASSERT_TRUE(s.ok());
  EXPECT_NEAR(s->average, (0.70 + 0.90 + 0.99) / 3, 1e-15);
  EXPECT_NEAR(s->forgetting, ((0.90 - 0.70) + (0.95 - 0.90)) / 2, 1e-15);
  EXPECT_NEAR(s->bwt, ((0.70 - 0.90) + (0.90 - 0.95)) / 2, 1e-15);
  // Accuracy that rises after training can make the best earlier value exceed the diagonal.
  auto up = SummarizeAccuracyMatrix({{0.5, 0}, {0.6, 0.9}});
  EXPECT_NEAR(up->forgetting, -0.1, 1e-15);
  EXPECT_NEAR(up->bwt, 0.1, 1e-15);
  EXPECT_EQ(SummarizeAccuracyMatrix({{0.5, 0}}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MetricsTest, RejectsMismatchedInput) {
  EXPECT_EQ(ComputeCalibration(at::zeros({3, 2}), at::zeros({4}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeCalibration(at::zeros({3, 2}), at::tensor({0, 1, 2}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeCalibration(at::zeros({3}), at::zeros({3}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MetricsTest, AurocMatchesPairCountingWithTies) {
  // Hand-computed: positives {0.9, 0.5, 0.3}, negatives {0.5, 0.2}. Pairs (pos > neg): 0.9 beats
  // both, 0.5 ties 0.5 (one half) and beats 0.2, 0.3 beats 0.2: 4.5 of 6.
  const at::Tensor s = at::tensor({0.9, 0.5, 0.3, 0.5, 0.2});
  const at::Tensor pos = at::tensor({1, 1, 1, 0, 0}).to(at::kBool);
  auto auc = Auroc(s, pos);
  ASSERT_TRUE(auc.ok()) << auc.status();
  EXPECT_DOUBLE_EQ(*auc, 4.5 / 6.0);
  EXPECT_DOUBLE_EQ(*Auroc(s, pos.logical_not()), 1.5 / 6.0);
  // Random scores with many ties against brute-force pair counting.
  at::Generator gen = at::detail::createCPUGenerator(/*seed_val=*/301);
  const at::Tensor r = at::randint(0, 20, {300}, gen).to(at::kFloat);
  const at::Tensor p = at::rand({300}, gen).lt(0.3);
  const at::Tensor sp = r.masked_select(p), sn = r.masked_select(p.logical_not());
  const at::Tensor gt = sp.unsqueeze(1).gt(sn.unsqueeze(0)).to(at::kDouble);
  const at::Tensor eq = sp.unsqueeze(1).eq(sn.unsqueeze(0)).to(at::kDouble);
  const double brute = (gt + 0.5 * eq).mean().item<double>();
  EXPECT_NEAR(*Auroc(r, p), brute, 1e-12);
}

TEST(MetricsTest, AurocRejectsBadInput) {
  EXPECT_EQ(Auroc(at::zeros({3}), at::ones({3}, at::kBool)).status().code(),
            absl::StatusCode::kInvalidArgument);  // no negatives
  EXPECT_EQ(Auroc(at::zeros({3}), at::ones({2}, at::kBool)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Auroc(at::tensor({0.f, NAN}), at::tensor({1, 0}).to(at::kBool)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Auroc(at::zeros({2}, at::kLong), at::tensor({1, 0}).to(at::kBool)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adaptd

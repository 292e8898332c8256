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

TEST(MetricsTest, RejectsMismatchedInput) {
  EXPECT_EQ(ComputeCalibration(at::zeros({3, 2}), at::zeros({4}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeCalibration(at::zeros({3, 2}), at::tensor({0, 1, 2}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeCalibration(at::zeros({3}), at::zeros({3}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adaptd

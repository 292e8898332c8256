#include "core/noise.h"

#include <cmath>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace adaptd {
namespace {

TEST(NoiseTest, FastLogMatchesLibm) {
  double worst = 0;
  for (int i = 1; i <= 1 << 20; ++i) {
    const float u = static_cast<float>(i) / static_cast<float>(1 << 20);
    const double exact = std::log(static_cast<double>(u));
    const double err = std::abs(internal::FastLog(u) - exact) / std::max(std::abs(exact), 1e-3);
    worst = std::max(worst, err);
  }
  EXPECT_LT(worst, 1e-6);
}

TEST(NoiseTest, FastSinCosMatchesLibm) {
  double worst = 0;
  for (int i = 0; i < 1 << 20; ++i) {
    const float t = static_cast<float>(i) / static_cast<float>(1 << 20);
    float s, c;
    internal::FastSinCos2Pi(t, &s, &c);
    const double a = 2 * M_PI * static_cast<double>(t);
    worst = std::max({worst, std::abs(s - std::sin(a)), std::abs(c - std::cos(a))});
  }
  EXPECT_LT(worst, 1e-6);
}

// Moments and the Kolmogorov-Smirnov distance of one million draws, in both dtypes.
TEST(NoiseTest, DrawsAreStandardNormal) {
  for (auto dtype : {at::kFloat, at::kDouble}) {
    constexpr int64_t kN = 1000001;
    at::Tensor z = at::empty({kN}, dtype);
    FillStandardNormal(z, 12345);
    const at::Tensor zd = z.to(at::kDouble);
    const double mean = zd.mean().item<double>();
    const double var = zd.var().item<double>();
    const double kurt = (zd - mean).pow(4).mean().item<double>() / (var * var);
    EXPECT_NEAR(mean, 0.0, 5e-3);  // 5 standard errors
    EXPECT_NEAR(var, 1.0, 7e-3);
    EXPECT_NEAR(kurt, 3.0, 0.03);
    const at::Tensor sorted = std::get<0>(zd.sort());
    const at::Tensor cdf = 0.5 * (1.0 + at::erf(sorted / std::sqrt(2.0)));
    const at::Tensor ecdf = at::arange(1, kN + 1, at::kDouble) / static_cast<double>(kN);
    const double ks = (cdf - ecdf).abs().max().item<double>();
    EXPECT_LT(ks, 1.63 / std::sqrt(static_cast<double>(kN)));  // 1% critical value
    // Neighbouring draws are uncorrelated (they share one Box-Muller pair).
    const double lag1 = (zd.narrow(0, 0, kN - 1) * zd.narrow(0, 1, kN - 1)).mean().item<double>();
    EXPECT_NEAR(lag1, 0.0, 5e-3);
  }
}

TEST(NoiseTest, SameSeedSameDrawsForAnyThreadCount) {
  at::Tensor a = at::empty({300001});
  at::Tensor b = at::empty({300001});
  at::Tensor c = at::empty({300001});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  FillStandardNormal(a, 99);
  at::set_num_threads(2);
  FillStandardNormal(b, 99);
  at::set_num_threads(threads);
  FillStandardNormal(c, 100);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));
}

TEST(NoiseTest, AffineSampleIsMeanPlusScaledNoise) {
  const int64_t n = 1001;
  const at::Tensor mean = at::linspace(-1, 1, n, at::kDouble);
  const at::Tensor hess = at::linspace(0.5, 2, n, at::kDouble);
  at::Tensor z = at::empty({n}, at::kDouble);
  at::Tensor out = at::empty({n}, at::kDouble);
  FillStandardNormal(z, 5);
  SampleDiagonalGaussian(out, mean, hess, /*ess=*/100, /*delta=*/0.1, 5);
  const at::Tensor expected = mean + z / (100 * (hess + 0.1)).sqrt();
  EXPECT_TRUE(at::allclose(out, expected, 1e-14, 1e-14));
}

}  // namespace
}  // namespace adaptd

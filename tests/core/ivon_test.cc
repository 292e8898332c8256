// IVON against oracles: the closed-form Bayesian linear-regression posterior, a hand-written
// float64 reference of Algorithm 1, and the plain tensor-op path (for the fused kernels).
#include "core/ivon.h"

#include <cmath>
#include <limits>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace adaptd {
namespace {

struct Buffers {
  at::Tensor params, grads;
};

Buffers MakeBuffers(const at::Tensor& init) {
  return {init.clone(), at::zeros_like(init)};
}

// Bayesian linear regression with an orthogonal design, so that the exact posterior is
// diagonal and a diagonal Gaussian can match it: y = X w + noise, noise ~ N(0, s^2),
// prior w ~ N(0, 1/alpha).
TEST(IvonTest, MatchesClosedFormBayesianLinearRegression) {
  constexpr int64_t kN = 500, kD = 5;
  // Prior precision alpha = N * delta = 50 against data precisions 500-8000 per coordinate
  // (2000 scale^2): the prior moves the posterior mean by 0.6-9 % from least squares, enough to
  // see. Not more: IVON's Hessian estimate g (theta - m) / sigma^2 uses the data's gradient,
  // which at the posterior mean is -delta m, so its noise grows as delta m / sigma; at
  // delta = 1 the variance of one coordinate comes out 58 % off.
  constexpr double kNoise = 0.5, kDelta = 0.1;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(42);
  at::Tensor q = std::get<0>(at::linalg_qr(at::randn({kN, kD}, gen, f64)));
  const at::Tensor scales = at::tensor({1.0, 0.5, 2.0, 1.5, 0.8}, f64);
  const at::Tensor x = q * scales * std::sqrt(static_cast<double>(kN));
  const at::Tensor w_true = at::tensor({1.0, -2.0, 0.5, 3.0, -1.0}, f64);
  const at::Tensor y = x.matmul(w_true) + kNoise * at::randn({kN}, gen, f64);

  // Closed form: A = X^T X / s^2 + alpha I, mean = A^-1 X^T y / s^2, cov = A^-1.
  const at::Tensor a = x.t().matmul(x) / (kNoise * kNoise) + kN * kDelta * at::eye(kD, f64);
  const at::Tensor post_cov = at::linalg_inv(a);
  const at::Tensor post_mean = post_cov.matmul(x.t().matmul(y)) / (kNoise * kNoise);
  const at::Tensor ols = at::linalg_solve(x.t().matmul(x), x.t().matmul(y));

  IvonOptions o;
  o.ess = kN;
  o.weight_decay = kDelta;
  o.hess_init = 1.0;
  o.beta1 = 0.9;
  o.beta2 = 0.9995;
  o.rescale_lr = false;
  Buffers b = MakeBuffers(at::zeros({kD}, f64));
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok()) << ivon.status();
  constexpr int kSteps = 30000;
  for (int t = 0; t < kSteps; ++t) {
    ASSERT_TRUE((*ivon)->BeginSample(gen).ok());
    // Gradient of the mean negative log-likelihood at the sampled weights.
    b.grads.copy_(x.t().matmul(x.matmul(b.params) - y) / (kN * kNoise * kNoise));
    ASSERT_TRUE((*ivon)->EndSample().ok());
    const double lr = 0.2 * 0.5 * (1.0 + std::cos(M_PI * t / kSteps));
    ASSERT_TRUE((*ivon)->Step(lr).ok());
  }
  const Posterior& post = (*ivon)->posterior();
  const at::Tensor mean_rel = ((post.mean() - post_mean) / post_mean).abs();
  const at::Tensor var_rel = (post.Sigma().square() / post_cov.diagonal() - 1.0).abs();
  std::cout << "max relative error: mean " << mean_rel.max().item<double>() << ", variance "
            << var_rel.max().item<double>() << "\n";
  EXPECT_EQ((*ivon)->step_count(), kSteps);
  EXPECT_LT(mean_rel.max().item<double>(), 0.02) << "IVON mean " << post.mean()
                                                 << "\nclosed form " << post_mean;
  EXPECT_LT(var_rel.max().item<double>(), 0.10) << "IVON variance " << post.Sigma().square()
                                                << "\nclosed form " << post_cov.diagonal();
  // The prior's pull is resolved: IVON is far nearer the posterior than least squares is.
  EXPECT_TRUE(((post.mean() - post_mean).abs() < 0.25 * (ols - post_mean).abs()).all().item<bool>())
      << "IVON " << post.mean() << "\nposterior " << post_mean << "\nleast squares " << ols;
}

// Algorithm 1 written out element by element in double, independent of the implementation.
struct ReferenceIvon {
  std::vector<double> m, g, h;
  double ess, delta, b1, b2, clip, lr_scale;
  int t = 0;
  // One step given the samples' weights thetas[s] and gradients grads[s].
  void Step(const std::vector<std::vector<double>>& thetas,
            const std::vector<std::vector<double>>& grads, double lr) {
    ++t;
    const size_t p = m.size(), s_count = thetas.size();
    for (size_t i = 0; i < p; ++i) {
      double ghat = 0, hhat = 0;
      const double inv_var = ess * (h[i] + delta);  // 1 / sigma^2
      for (size_t s = 0; s < s_count; ++s) {
        ghat += grads[s][i] / s_count;
        hhat += grads[s][i] * (thetas[s][i] - m[i]) * inv_var / s_count;
      }
      g[i] = b1 * g[i] + (1 - b1) * ghat;
      const double hn = b2 * h[i] + (1 - b2) * hhat +
                        0.5 * (1 - b2) * (1 - b2) * (h[i] - hhat) * (h[i] - hhat) / (h[i] + delta);
      const double gbar = g[i] / (1 - std::pow(b1, t));
      double u = (gbar + delta * m[i]) / (hn + delta);
      u = std::max(-clip, std::min(clip, u));
      m[i] -= lr * lr_scale * u;
      h[i] = hn;
    }
  }
};

enum class Path { kFused, kTensorOps, kCuda };

class IvonReferenceTest : public testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    if (GetParam() == Path::kCuda && !torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    internal::SetIvonFusedKernels(GetParam() == Path::kFused);
  }
  void TearDown() override { internal::SetIvonFusedKernels(true); }
};

TEST_P(IvonReferenceTest, ThreeStepsMatchHandDerivedReference) {
  const bool cuda = GetParam() == Path::kCuda;
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(cuda ? at::kCUDA : at::kCPU);
  // Loss 0.5 (theta - c)^T A (theta - c) with a non-diagonal SPD A.
  const at::Tensor a = at::tensor({2.0, 0.3, 0.0, 0.1,  //
                                   0.3, 1.0, 0.2, 0.0,  //
                                   0.0, 0.2, 3.0, 0.4,  //
                                   0.1, 0.0, 0.4, 0.5}, f64).view({4, 4});
  const at::Tensor c = at::tensor({1.0, -1.0, 0.5, 2.0}, f64);
  IvonOptions o;
  o.ess = 10;
  o.weight_decay = 0.1;
  o.hess_init = 0.5;
  o.beta1 = 0.9;
  o.beta2 = 0.8;
  o.clip_radius = 0.4;
  o.rescale_lr = true;
  o.debias = true;
  const at::Tensor init = at::tensor({0.2, -0.3, 0.1, 0.0}, f64);
  Buffers b = MakeBuffers(init);
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok()) << ivon.status();
  ReferenceIvon ref{{0.2, -0.3, 0.1, 0.0}, std::vector<double>(4, 0.0),
                    std::vector<double>(4, 0.5), 10, 0.1, 0.9, 0.8, 0.4, 0.5 + 0.1};
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  if (cuda) {
    gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, 0)).clone();
    gen.set_current_seed(7);
  }
  const std::vector<int> samples_per_step = {1, 3, 1};  // the middle step averages 3 samples
  const std::vector<double> lrs = {0.5, 0.3, 0.1};
  int clipped = 0;
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<double>> thetas, grads;
    for (int s = 0; s < samples_per_step[step]; ++s) {
      ASSERT_TRUE((*ivon)->BeginSample(gen).ok());
      const at::Tensor grad = a.matmul(b.params - c);
      b.grads.copy_(grad);
      auto to_vec = [](const at::Tensor& t) {
        const at::Tensor c = t.cpu().contiguous();
        return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
      };
      thetas.push_back(to_vec(b.params));
      grads.push_back(to_vec(grad.contiguous()));
      ASSERT_TRUE((*ivon)->EndSample().ok());
    }
    const std::vector<double> m_before = ref.m;
    ref.Step(thetas, grads, lrs[step]);
    ASSERT_TRUE((*ivon)->Step(lrs[step]).ok());
    const Posterior& post = (*ivon)->posterior();
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(post.mean()[i].item<double>(), ref.m[i], 1e-10) << "step " << step << " m" << i;
      EXPECT_NEAR(post.hess()[i].item<double>(), ref.h[i], 1e-10) << "step " << step << " h" << i;
      EXPECT_NEAR((*ivon)->momentum()[i].item<double>(), ref.g[i], 1e-10) << "g" << i;
      EXPECT_EQ(b.params[i].item<double>(), post.mean()[i].item<double>()) << "mean restored";
      if (std::abs(std::abs(ref.m[i] - m_before[i]) - lrs[step] * ref.lr_scale * 0.4) < 1e-12) {
        ++clipped;
      }
    }
  }
  EXPECT_GT(clipped, 0) << "the test must exercise clipping";
}

INSTANTIATE_TEST_SUITE_P(AllPaths, IvonReferenceTest,
                         testing::Values(Path::kFused, Path::kTensorOps, Path::kCuda),
                         [](const testing::TestParamInfo<Path>& info) {
                           switch (info.param) {
                             case Path::kFused: return "CpuFused";
                             case Path::kTensorOps: return "CpuTensorOps";
                             case Path::kCuda: return "Cuda";
                           }
                           return "Unknown";
                         });

// The fused float32 kernel agrees with the tensor-op path to float rounding.
TEST(IvonTest, FusedFloatKernelMatchesTensorOps) {
  const int64_t p = 100003;  // odd, and larger than one parallel grain
  at::Generator data_gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor init = at::randn({p}, data_gen);
  // With the clip most elements take the clipped branch; without it every element takes the
  // Newton step. beta2 = 0.9 moves h by far more than rounding within five steps, so that the
  // Hessian update is compared too, not only its starting value.
  for (double clip : {0.01, std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(clip);
    IvonOptions o;
    o.ess = 1000;
    o.weight_decay = 1e-3;
    o.hess_init = 0.1;
    o.beta2 = 0.9;
    o.clip_radius = clip;
    std::vector<at::Tensor> means, hess, momenta;
    for (bool fused : {true, false}) {
      internal::SetIvonFusedKernels(fused);
      Buffers b = MakeBuffers(init);
      auto ivon = Ivon::Create(b.params, b.grads, o);
      ASSERT_TRUE(ivon.ok());
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
      for (int t = 0; t < 5; ++t) {
        for (int s = 0; s < (t == 2 ? 2 : 1); ++s) {
          ASSERT_TRUE((*ivon)->BeginSample(gen).ok());
          b.grads.copy_(b.params.sin() * 0.5 + 0.1 * b.params);
          ASSERT_TRUE((*ivon)->EndSample().ok());
        }
        ASSERT_TRUE((*ivon)->Step(0.1).ok());
      }
      means.push_back((*ivon)->posterior().mean().clone());
      hess.push_back((*ivon)->posterior().hess().clone());
      momenta.push_back((*ivon)->momentum().clone());
    }
    internal::SetIvonFusedKernels(true);
    // The run moved h: the comparison below is not of two copies of hess_init.
    EXPECT_GT((hess[1] - 0.1).abs().max().item<double>(), 0.01);
    EXPECT_TRUE(at::allclose(means[0], means[1], /*rtol=*/1e-5, /*atol=*/1e-6))
        << "max diff " << (means[0] - means[1]).abs().max().item<double>();
    // h's estimate g (theta - m) / sigma^2 divides by a small theta - m, so the kernel's other
    // operation order (and fused multiply-adds) shows in h at up to 1.8e-5 relative here.
    // Dropping the update's (1 - beta2)^2 / 2 term or ess would move h by far more.
    EXPECT_TRUE(at::allclose(hess[0], hess[1], /*rtol=*/1e-4, /*atol=*/1e-6))
        << "max diff " << (hess[0] - hess[1]).abs().max().item<double>();
    EXPECT_TRUE(at::allclose(momenta[0], momenta[1], /*rtol=*/1e-5, /*atol=*/1e-6))
        << "max diff " << (momenta[0] - momenta[1]).abs().max().item<double>();
  }
}

TEST(IvonTest, StepWithoutSampleIsRefused) {
  Buffers b = MakeBuffers(at::zeros({3}));
  IvonOptions o;
  o.ess = 10;
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok());
  const absl::Status s = (*ivon)->Step(0.1);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("at least one weight sample"));
  EXPECT_EQ((*ivon)->step_count(), 0);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  ASSERT_TRUE((*ivon)->BeginSample(gen).ok());
  EXPECT_EQ((*ivon)->Step(0.1).code(), absl::StatusCode::kFailedPrecondition);  // still open
  EXPECT_EQ((*ivon)->BeginSample(gen).code(), absl::StatusCode::kFailedPrecondition);
}

// A parameter that gets no gradient sees g_hat = h_hat = 0: only weight decay moves it.
TEST(IvonTest, MissingGradientCountsAsZero) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  Buffers b = MakeBuffers(at::tensor({1.0, 2.0}, f64));
  IvonOptions o;
  o.ess = 10;
  o.weight_decay = 0.1;
  o.hess_init = 1.0;
  o.beta2 = 0.5;
  o.rescale_lr = false;
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  ASSERT_TRUE((*ivon)->BeginSample(gen).ok());  // zeroes grads; nothing writes them
  ASSERT_TRUE((*ivon)->EndSample().ok());
  ASSERT_TRUE((*ivon)->Step(0.1).ok());
  // h' = 0.5 * 1 + 0 + 0.5 * 0.25 * 1 / 1.1; m' = m - 0.1 * 0.1 m / (h' + 0.1).
  const double hn = 0.5 + 0.5 * 0.25 / 1.1;
  for (int i = 0; i < 2; ++i) {
    const double m0 = i + 1.0;
    EXPECT_NEAR((*ivon)->posterior().mean()[i].item<double>(), m0 - 0.1 * 0.1 * m0 / (hn + 0.1), 1e-15);
    EXPECT_NEAR((*ivon)->posterior().hess()[i].item<double>(), hn, 1e-15);
  }
}

// StepScale against h's own recursion: with zero gradients the estimate h_hat is 0, so each
// step takes h to beta2 h + (1 - beta2)^2 / 2 * h^2 / (h + delta), in closed form per step.
// Starting from a carried-over h, the growth is that of the median weight.
TEST(IvonTest, StepScaleFollowsTheFallOfH) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  IvonOptions o;
  o.ess = 100;
  o.weight_decay = 0.01;
  o.hess_init = 1.0;
  o.beta2 = 0.9;
  Buffers b = MakeBuffers(at::zeros({4}, f64));
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok());
  EXPECT_EQ((*ivon)->StepScale(), 1.0);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  double h = o.hess_init;
  for (int t = 1; t <= 40; ++t) {
    ASSERT_TRUE((*ivon)->BeginSample(gen).ok());  // the gradient stays zero
    ASSERT_TRUE((*ivon)->EndSample().ok());
    ASSERT_TRUE((*ivon)->Step(0.1).ok());
    h = o.beta2 * h + 0.5 * (1 - o.beta2) * (1 - o.beta2) * h * h / (h + o.weight_decay);
    EXPECT_NEAR((*ivon)->StepScale(), (o.hess_init + o.weight_decay) / (h + o.weight_decay),
                1e-12 * (*ivon)->StepScale())
        << "step " << t;
  }
  // h fell from 1 to 0.018 (0.9^40 = 0.015, and the correction term): the step grew 36 times.
  EXPECT_GT((*ivon)->StepScale(), 30);

  Buffers c = MakeBuffers(at::zeros({5}, f64));
  auto carried = Ivon::Create(c.params, c.grads, o, at::tensor({2.0, 0.05, 0.5, 8.0, 0.1}, f64));
  ASSERT_TRUE(carried.ok());
  EXPECT_DOUBLE_EQ((*carried)->StepScale(), (1.0 + 0.01) / (0.5 + 0.01));
}

TEST(IvonTest, RejectsBadOptionsAndBuffers) {
  Buffers b = MakeBuffers(at::zeros({3}));
  IvonOptions o;  // ess missing
  auto r = Ivon::Create(b.params, b.grads, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), testing::HasSubstr("ess"));
  o.ess = 10;
  o.beta2 = 1.0;
  EXPECT_THAT(std::string(Ivon::Create(b.params, b.grads, o).status().message()),
              testing::HasSubstr("beta2 must be in [0, 1); got 1"));
  o.beta2 = 0.999;
  o.hess_init = 0;
  EXPECT_EQ(Ivon::Create(b.params, b.grads, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.hess_init = 1;
  EXPECT_EQ(Ivon::Create(b.params, at::zeros({4}), o).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Ivon::Create(at::zeros({3}, at::kInt), b.grads, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Between steps IVON holds three vectors (m, g, h), as Adam holds two and its step count. A step
// of two samples holds the two means of its samples while it runs, and Step releases them.
TEST(IvonTest, PersistentStateIsThreeVectors) {
  Buffers b = MakeBuffers(at::zeros({1000}));
  IvonOptions o;
  o.ess = 10;
  auto ivon = Ivon::Create(b.params, b.grads, o);
  ASSERT_TRUE(ivon.ok());
  EXPECT_EQ((*ivon)->StateBytes(), 3 * 1000 * 4);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE((*ivon)->BeginSample(gen).ok());
    b.grads.copy_(b.params);
    ASSERT_TRUE((*ivon)->EndSample().ok());
  }
  EXPECT_EQ((*ivon)->StateBytes(), 5 * 1000 * 4);
  ASSERT_TRUE((*ivon)->Step(0.1).ok());
  EXPECT_EQ((*ivon)->StateBytes(), 3 * 1000 * 4);
}

}  // namespace
}  // namespace adaptd

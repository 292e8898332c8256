// The per-example gradient identities against exact autograd Jacobians (one backward pass per
// example and class), in float64 so that the two agree to rounding.
#include "core/jacobian.h"

#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

using testing::HasSubstr;
using namespace testing_models;  // NOLINT: test helpers

// A network outside the built-in architectures that exercises what they do not: a strided,
// padded convolution whose transpose needs output padding, tanh, and overlapping pooling
// windows. Its layer list is written by hand, independently of model.cc.
class StridedNet : public Model {
 public:
  StridedNet() : Model(MakeSpec()) {
    namespace nn = torch::nn;
    net_->push_back(nn::Conv2d(nn::Conv2dOptions(2, 3, 3).stride(2).padding(1)));
    net_->push_back(nn::Tanh());
    net_->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2)));
    net_->push_back(nn::Flatten());
    net_->push_back(nn::Linear(12, 4));
  }
  at::Tensor Forward(const at::Tensor& x) override { return net_->forward(x); }
  std::vector<at::Tensor> Parameters() override { return net_->parameters(); }
  void SetTraining(bool training) override { net_->train(training); }
  void To(const at::Device& device) override { net_->to(device); }
  std::vector<Layer> Layers() override {
    using K = Layer::Kind;
    return {{K::kConv2d, 0, 1, 3, 2, 1}, {K::kTanh}, {K::kMaxPool2d, -1, -1, 3, 2, 0},
            {K::kFlatten}, {K::kLinear, 2, 3}};
  }

 private:
  static ModelSpec MakeSpec() {
    ModelSpec s;
    s.input_shape = {2, 12, 12};  // 12 -> 6 with stride 2: the transpose needs output padding 1
    s.num_classes = 4;
    return s;
  }
  torch::nn::Sequential net_;
};

struct Case {
  const char* name;
  std::function<std::unique_ptr<Model>()> make;
};

std::vector<Case> Cases() {
  return {
      {"logreg", [] { return BuildOrDie(Spec(Architecture::kLogReg, {7}, 3)); }},
      {"mlp_tanh", [] { return BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5, 3}, "tanh")); }},
      {"lenet5", [] { return BuildOrDie(Spec(Architecture::kLeNet5, {1, 28, 28}, 10)); }},
      {"strided", [] { return std::unique_ptr<Model>(new StridedNet()); }},
  };
}

class JacobianTest : public testing::TestWithParam<Case> {};

TEST_P(JacobianTest, LayerIdentitiesMatchAutograd) {
  std::unique_ptr<Model> model = GetParam().make();
  ConvertToDouble(*model);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = RandomInput(*model, 5, gen, at::kDouble);
  const int64_t p = model->NumParameters();
  auto layers = LogitJacobian::Create(*model, LogitJacobian::Backend::kLayers);
  auto autograd = LogitJacobian::Create(*model, LogitJacobian::Backend::kAutograd);
  ASSERT_TRUE(layers.ok()) << layers.status();
  ASSERT_TRUE(autograd.ok()) << autograd.status();
  ASSERT_EQ((*layers)->backend(), LogitJacobian::Backend::kLayers);

  // The reference: one backward pass per example and logit, written apart from both engines.
  const testing_models::ExplicitJacobian ref = testing_models::ComputeExplicitJacobian(*model, x);
  // float64 with a few hundred terms per entry: agreement to ~1e-15 relative; 1e-12 is slack.
  const double scale = ref.jac.abs().max().item<double>();
  for (auto* engine : {layers->get(), autograd->get()}) {
    auto j = engine->Jacobian(x);
    ASSERT_TRUE(j.ok()) << j.status();
    ASSERT_EQ(j->value.sizes(), ref.jac.sizes());
    EXPECT_LT((j->value - ref.jac).abs().max().item<double>(), 1e-12 * scale);
    EXPECT_LT((j->logits - ref.logits).abs().max().item<double>(), 1e-12);
  }

  // Sigma Gram, diagonal covariance: J diag(s) J^T from the reference Jacobian.
  const at::Tensor var = at::rand({p}, gen, at::kDouble) + 0.1;
  const at::Tensor expected = at::bmm(ref.jac * var, ref.jac.transpose(1, 2));
  const Covariance diag = *Covariance::Diagonal(var);
  const double gscale = expected.abs().max().item<double>();
  for (bool fused : {true, false}) {  // the CPU kernel for conv-pool blocks, and tensor ops
    internal::SetJacobianFusedKernels(fused);
    auto full = (*layers)->SigmaGram(x, diag, /*full=*/true);
    auto v = (*layers)->SigmaGram(x, diag, /*full=*/false);
    internal::SetJacobianFusedKernels(true);
    ASSERT_TRUE(full.ok() && v.ok()) << full.status() << v.status();
    EXPECT_LT((full->value - expected).abs().max().item<double>(), 1e-12 * gscale) << fused;
    EXPECT_LT((v->value - expected.diagonal(0, 1, 2)).abs().max().item<double>(), 1e-12 * gscale)
        << fused;
  }

  // Dense covariance (small models only: LeNet-5's would take 30 GB).
  if (p <= 2000) {
    const at::Tensor a = at::randn({p, p}, gen, at::kDouble) / std::sqrt(static_cast<double>(p));
    const at::Tensor dense = a.matmul(a.t()) + at::eye(p, at::kDouble);
    const at::Tensor expected_dense = ref.jac.matmul(dense).bmm(ref.jac.transpose(1, 2));
    auto gd = (*layers)->SigmaGram(x, *Covariance::Dense(dense), /*full=*/true);
    ASSERT_TRUE(gd.ok()) << gd.status();
    EXPECT_LT((gd->value - expected_dense).abs().max().item<double>(),
              1e-12 * expected_dense.abs().max().item<double>());
  }

  // Squared entries summed over the batch and a subset of the logits, against the reference J.
  const at::Tensor classes = at::arange(1, model->spec().num_classes, at::kLong);
  const at::Tensor squared = ref.jac.index_select(1, classes).square().sum(at::IntArrayRef{0, 1});
  for (auto* engine : {layers->get(), autograd->get()}) {
    auto sq = engine->SquaredSum(x, classes);
    ASSERT_TRUE(sq.ok()) << sq.status();
    EXPECT_LT((sq->value - squared).abs().max().item<double>(), 1e-12 * squared.abs().max().item<double>());
  }
  EXPECT_EQ((*layers)->SquaredSum(x, at::tensor({model->spec().num_classes}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);

  // J u: forward-mode by hand and the double-backward identity, against the reference J u.
  const at::Tensor u = at::randn({p}, gen, at::kDouble);
  const at::Tensor ju = at::matmul(ref.jac, u);
  for (auto* engine : {layers->get(), autograd->get()}) {
    auto jvp = engine->Jvp(x, u);
    ASSERT_TRUE(jvp.ok()) << jvp.status();
    EXPECT_LT((jvp->value - ju).abs().max().item<double>(), 1e-12 * ju.abs().max().item<double>());
  }
}

INSTANTIATE_TEST_SUITE_P(Models, JacobianTest, testing::ValuesIn(Cases()),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(JacobianTest, BuiltInModelsDescribeTheirLayers) {
  for (const Case& c : Cases()) {
    std::unique_ptr<Model> m = c.make();
    EXPECT_FALSE(m->Layers().empty()) << c.name;
    auto j = LogitJacobian::Create(*m);
    ASSERT_TRUE(j.ok());
    EXPECT_EQ((*j)->backend(), LogitJacobian::Backend::kLayers) << c.name;
  }
}

TEST(JacobianTest, TorchScriptFallsBackToAutograd) {
  auto model = BuildOrDie(ScriptedMlpSpec(5, 3));
  ASSERT_TRUE(model->Layers().empty());
  auto j = LogitJacobian::Create(*model);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)->backend(), LogitJacobian::Backend::kAutograd);
  EXPECT_EQ(LogitJacobian::Create(*model, LogitJacobian::Backend::kLayers).status().code(),
            absl::StatusCode::kInvalidArgument);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = at::randn({4, 5}, gen);
  auto jac = (*j)->Jacobian(x);
  ASSERT_TRUE(jac.ok()) << jac.status();
  EXPECT_EQ(jac->value.sizes(), (std::vector<int64_t>{4, 3, model->NumParameters()}));
  // Rows of different examples are their own: example 0's Jacobian alone equals row 0.
  auto first = (*j)->Jacobian(x.narrow(0, 0, 1));
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(at::allclose(first->value[0], jac->value[0], 1e-6, 1e-7));
  const at::Tensor u = at::randn({model->NumParameters()}, gen);
  auto jvp = (*j)->Jvp(x, u);
  ASSERT_TRUE(jvp.ok()) << jvp.status();
  EXPECT_TRUE(at::allclose(jvp->value, at::matmul(jac->value, u), 1e-4, 1e-5));
}

TEST(JacobianTest, BadInputIsInvalidArgument) {
  auto model = BuildOrDie(Spec(Architecture::kMlp, {6}, 4, {5}));
  auto j = LogitJacobian::Create(*model);
  ASSERT_TRUE(j.ok());
  const int64_t p = model->NumParameters();
  auto wrong_dtype = (*j)->Jacobian(at::zeros({2, 6}, at::kDouble));
  EXPECT_EQ(wrong_dtype.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_dtype.status().message()), HasSubstr("Float"));
  auto short_cov = (*j)->SigmaGram(at::zeros({2, 6}), *Covariance::Diagonal(at::ones({p - 1})), true);
  EXPECT_EQ(short_cov.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(short_cov.status().message()),
              HasSubstr(absl::StrCat("covers ", p - 1, " parameters; the model has ", p)));
  EXPECT_EQ((*j)->Jvp(at::zeros({2, 6}), at::zeros({p + 1})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Covariance::Diagonal(at::zeros({3})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Covariance::Dense(at::ones({2, 3})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Covariance::Diagonal(at::full({2}, NAN)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The tensor-op path on CUDA against the CPU (where LeNet-5 takes the fused kernel).
TEST(JacobianTest, CudaMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto [cpu, gpu] = LeNetOnCpuAndCuda(5);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(301);
  const at::Tensor x = RandomInput(*cpu, 16, gen);
  const int64_t p = cpu->NumParameters();
  const at::Tensor var = at::rand({p}, gen) * 1e-3 + 1e-4;
  const at::Tensor u = at::randn({p}, gen);
  auto jc = LogitJacobian::Create(*cpu);
  auto jg = LogitJacobian::Create(*gpu);
  ASSERT_TRUE(jc.ok() && jg.ok());
  for (bool full : {false, true}) {
    auto c = (*jc)->SigmaGram(x, *Covariance::Diagonal(var), full);
    auto g = (*jg)->SigmaGram(x.cuda(), *Covariance::Diagonal(var.cuda()), full);
    ASSERT_TRUE(c.ok() && g.ok()) << c.status() << g.status();
    EXPECT_TRUE(g->value.is_cuda());
    EXPECT_TRUE(at::allclose(g->value.cpu(), c->value, 1e-3, 1e-7 * c->value.abs().max().item<double>()));
  }
  auto c = (*jc)->Jvp(x, u);
  auto g = (*jg)->Jvp(x.cuda(), u.cuda());
  ASSERT_TRUE(c.ok() && g.ok());
  EXPECT_TRUE(at::allclose(g->value.cpu(), c->value, 1e-3, 1e-4 * c->value.abs().max().item<double>()));
}

}  // namespace
}  // namespace adaptd

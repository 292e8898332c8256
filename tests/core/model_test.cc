#include "core/model.h"

#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "core/flat_params.h"
#include "core/torch_status.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

using testing_models::ScriptSpec;

ModelSpec Spec(Architecture a, std::vector<int64_t> input, std::vector<int64_t> hidden = {}) {
  ModelSpec s;
  s.architecture = a;
  s.input_shape = std::move(input);
  s.num_classes = 10;
  s.hidden = std::move(hidden);
  return s;
}

TEST(ModelTest, ParameterCountsMatchTheArchitectures) {
  struct Case {
    ModelSpec spec;
    int64_t params;
  };
  const std::vector<Case> cases = {
      {Spec(Architecture::kLogReg, {784}), 784 * 10 + 10},
      {Spec(Architecture::kMlp, {784}, {512, 512}), 784 * 512 + 512 + 512 * 512 + 512 + 5130},
      {Spec(Architecture::kLeNet5, {1, 28, 28}), 61706},
  };
  for (const Case& c : cases) {
    auto m = BuildModel(c.spec, 0);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->NumParameters(), c.params) << ArchitectureName(c.spec.architecture);
    std::vector<int64_t> shape = {3};
    shape.insert(shape.end(), c.spec.input_shape.begin(), c.spec.input_shape.end());
    const at::Tensor out = (*m)->Forward(at::randn(shape));
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 10}));
  }
}

TEST(ModelTest, InitialisationIsSeededAndWithinFanInBounds) {
  auto a = BuildModel(Spec(Architecture::kMlp, {20}, {8}), 5);
  auto b = BuildModel(Spec(Architecture::kMlp, {20}, {8}), 5);
  auto c = BuildModel(Spec(Architecture::kMlp, {20}, {8}), 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const auto pa = (*a)->Parameters(), pb = (*b)->Parameters(), pc = (*c)->Parameters();
  EXPECT_TRUE(at::equal(pa[0], pb[0]));
  EXPECT_FALSE(at::equal(pa[0], pc[0]));
  EXPECT_LE(pa[0].abs().max().item<double>(), 1.0 / std::sqrt(20.0));  // first layer fan-in 20
  EXPECT_LE(pa[2].abs().max().item<double>(), 1.0 / std::sqrt(8.0));   // second layer fan-in 8
}

TEST(ModelTest, SpecValidationNamesTheProblem) {
  auto expect_error = [](const ModelSpec& s, const std::string& text) {
    auto m = BuildModel(s);
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(m.status().message()), testing::HasSubstr(text));
  };
  ModelSpec s = Spec(Architecture::kLeNet5, {784});
  expect_error(s, "lenet5 needs input_shape [1, 28, 28]; got [784]");
  s = Spec(Architecture::kMlp, {784}, {0});
  expect_error(s, "hidden widths must be > 0");
  s = Spec(Architecture::kMlp, {784});
  s.num_classes = 1;
  expect_error(s, "num_classes must be >= 2; got 1");
  s = Spec(Architecture::kMlp, {784});
  s.activation = "gelu";
  expect_error(s, "activation must be 'relu' or 'tanh'; got 'gelu'");
  // Two hidden layers of 60,000: 3.6e9 weights, refused before any allocation.
  s = Spec(Architecture::kMlp, {784}, {60000, 60000});
  expect_error(s, "model spec: too large");
  // An input whose element count overflows int64.
  s = Spec(Architecture::kMlp, {int64_t{1} << 40, int64_t{1} << 40});
  expect_error(s, "model spec: too large");
  EXPECT_EQ(ParseArchitecture("resnet").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelTest, CheckInputRejectsWrongShapesAndDtypes) {
  auto m = BuildModel(Spec(Architecture::kLeNet5, {1, 28, 28}));
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE((*m)->CheckInput(at::zeros({2, 1, 28, 28})).ok());
  const absl::Status s = (*m)->CheckInput(at::zeros({2, 784}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("float32 [N, 1, 28, 28]"));
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("got [2, 784] Float"));
  EXPECT_FALSE((*m)->CheckInput(at::zeros({2, 1, 28, 28}, at::kDouble)).ok());
  EXPECT_FALSE((*m)->CheckInput(at::zeros({0, 1, 28, 28})).ok());
}

std::string ScriptedLinearBytes(int64_t in, int64_t out) {
  torch::jit::Module m("UserLinear");
  m.register_parameter("weight", at::randn({out, in}) * 0.1, false);
  m.register_parameter("bias", at::zeros({out}), false);
  m.define(R"(
    def forward(self, x):
        return x.matmul(self.weight.t()) + self.bias
  )");
  std::ostringstream bytes;
  m.save(bytes);
  return bytes.str();
}

TEST(ModelTest, TorchScriptModuleLoadsFromBytesAndTrainsInPlace) {
  ModelSpec s = Spec(Architecture::kTorchScript, {6});
  s.num_classes = 3;
  s.torchscript = ScriptedLinearBytes(6, 3);
  auto m = BuildModel(s);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->NumParameters(), 21);
  auto flat = FlatParameters::Bind((*m)->Parameters());
  ASSERT_TRUE(flat.ok());
  const at::Tensor x = at::randn({4, 6});
  const at::Tensor before = (*m)->Forward(x).detach().clone();
  // Writing the flat buffer changes the scripted module's weights in place.
  {
    at::NoGradGuard g;
    flat->params().zero_();
  }
  EXPECT_TRUE(at::allclose((*m)->Forward(x), at::zeros({4, 3})));
  EXPECT_FALSE(at::allclose(before, at::zeros({4, 3})));
  // And backward writes into the flat gradient.
  at::cross_entropy_loss((*m)->Forward(x), at::tensor({0, 1, 2, 0}, at::kLong)).backward();
  EXPECT_GT(flat->grads().abs().sum().item<double>(), 0.0);
}

TEST(ModelTest, MalformedTorchScriptIsInvalidArgument) {
  ModelSpec s = Spec(Architecture::kTorchScript, {6});
  s.torchscript = "this is not a zip archive";
  auto m = BuildModel(s);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), testing::HasSubstr("malformed TorchScript"));
  // A valid module whose output does not match the spec.
  s.torchscript = ScriptedLinearBytes(6, 4);
  s.num_classes = 3;
  m = BuildModel(s);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), testing::HasSubstr("expected [1, 3]"));
  // A module that cannot take the declared input: the interpreter reports it as a
  // std::runtime_error, not a c10::Error.
  s.torchscript = ScriptedLinearBytes(6, 3);
  s.input_shape = {5};
  m = BuildModel(s);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  EXPECT_THAT(std::string(m.status().message()),
              testing::HasSubstr("TorchScript module failed on an input of shape [1, 5]"));
}

// A module that ignores the batch (logits [1, K] whatever comes in) passes a one-example check;
// every forward is checked, so training or a query on a batch of 4 is an error, not a broadcast.
TEST(ModelTest, TorchScriptOutputIsCheckedOnEveryCall) {
  auto model = BuildModel(ScriptSpec(testing_models::BatchBlindModule(3), 6, 3));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THROW((*model)->Forward(at::zeros({4, 6})), ModuleError);
  // Through the exception seam: the model is at fault, not the server.
  const absl::Status s = CallTorch([&]() -> absl::Status {
    (*model)->Forward(at::zeros({4, 6}));
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("maps [4, 6] to [1, 3]; expected [4, 3]"));
}

// Buffers (BatchNorm's running statistics) are refused with the reason.
TEST(ModelTest, TorchScriptModuleWithBuffersIsRefused) {
  torch::jit::Module m("WithBuffer");
  m.register_parameter("w", at::zeros({3, 6}), false);
  m.register_buffer("running_mean", at::zeros({6}));
  m.define(R"(
    def forward(self, x):
        return (x - self.running_mean).matmul(self.w.t())
  )");
  auto model = BuildModel(ScriptSpec(m, 6, 3));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              testing::AllOf(testing::HasSubstr("buffers (running_mean)"),
                             testing::HasSubstr("BatchNorm")));
}

TEST(ModelTest, LabelMaskRestrictsSoftmaxToTheHead) {
  auto mask = MakeLabelMask({2, 3}, 5);
  ASSERT_TRUE(mask.ok());
  const at::Tensor logits = at::randn({4, 5}).requires_grad_();
  const at::Tensor masked = MaskLogits(logits, *mask);
  const at::Tensor p = at::softmax(masked, 1);
  EXPECT_TRUE(at::allclose(p.index({at::indexing::Slice(), at::tensor({0, 1, 4}, at::kLong)}), at::zeros({4, 3})));
  EXPECT_TRUE(at::allclose(p.sum(1), at::ones({4})));
  at::cross_entropy_loss(masked, at::tensor({2, 3, 3, 2}, at::kLong)).backward();
  EXPECT_TRUE(logits.grad().isfinite().all().item<bool>());
  EXPECT_EQ(logits.grad().index({at::indexing::Slice(), 0}).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(MakeLabelMask({1, 7}, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeLabelMask({1, 1}, 5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeLabelMask({}, 5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelTest, ChunkedLogitsMatchOneForwardPassWithTheHeads) {
  auto m = BuildModel(Spec(Architecture::kMlp, {6}, {5}), 3);
  ASSERT_TRUE(m.ok()) << m.status();
  const at::Tensor x = at::randn({7, 6});
  const at::Tensor full = (*m)->Forward(x).detach();
  auto head = MakeLabelMask({2, 3}, 10);
  ASSERT_TRUE(head.ok());
  // Per-example heads: even rows see classes 0-4, odd rows 5-9.
  const at::Tensor rows = at::arange(10).lt(5).unsqueeze(0).repeat({7, 1});
  rows.index_put_({at::arange(1, 7, 2)}, rows.index({at::arange(1, 7, 2)}).logical_not());
  EXPECT_EQ(ChunkedLogits(**m, at::zeros({0, 6})).sizes(), (std::vector<int64_t>{0, 10}));
  for (int64_t chunk : {1, 3, 7, 20}) {
    const at::Tensor plain = ChunkedLogits(**m, x, at::Tensor(), chunk);
    EXPECT_FALSE(plain.requires_grad());
    EXPECT_TRUE(at::allclose(plain, full, 1e-6, 1e-6)) << "chunk " << chunk;
    EXPECT_TRUE(at::equal(ChunkedLogits(**m, x, *head, chunk).isinf(), MaskLogits(full, *head).isinf()));
    const at::Tensor per_row = ChunkedLogits(**m, x, rows, chunk);
    EXPECT_TRUE(at::equal(per_row.isinf(), rows.logical_not())) << "chunk " << chunk;
    EXPECT_TRUE(at::allclose(per_row.masked_select(rows), full.masked_select(rows), 1e-6, 1e-6));
  }
}

}  // namespace
}  // namespace adaptd

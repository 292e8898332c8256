// Small models for tests: built-in specs, a scripted (TorchScript) MLP, float64 conversion and
// seeded inputs.
#ifndef ADAPTD_TESTS_TESTING_MODELS_H_
#define ADAPTD_TESTS_TESTING_MODELS_H_

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "core/data/readers.h"
#include "core/model.h"

namespace adaptd::testing_models {

inline ModelSpec Spec(Architecture a, std::vector<int64_t> input, int64_t classes,
                      std::vector<int64_t> hidden = {}, std::string activation = "relu") {
  ModelSpec s;
  s.architecture = a;
  s.input_shape = std::move(input);
  s.num_classes = classes;
  s.hidden = std::move(hidden);
  s.activation = std::move(activation);
  return s;
}

// n labelled points: one Gaussian blob (unit variance) per class around centres drawn with a
// fixed seed and scaled by 2, so every caller sees the same classes; `seed` draws the points.
inline Dataset Blobs(int64_t n, int64_t classes, int64_t dim, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Dataset d;
  d.y = at::randint(0, classes, {n}, gen, at::kLong);
  const at::Tensor centers = at::randn({classes, dim}, at::detail::createCPUGenerator(1)) * 2;
  d.x = centers.index_select(0, d.y) + at::randn({n, dim}, gen);
  return d;
}

inline std::unique_ptr<Model> BuildOrDie(const ModelSpec& spec, uint64_t seed = 0) {
  auto m = BuildModel(spec, seed);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(m).value() : nullptr;
}

// A spec carrying module `m`, saved as torch.jit.save would, for inputs [in] and `classes`.
inline ModelSpec ScriptSpec(const torch::jit::Module& m, int64_t in, int64_t classes) {
  std::ostringstream bytes;
  m.save(bytes);
  ModelSpec s = Spec(Architecture::kTorchScript, {in}, classes);
  s.torchscript = bytes.str();
  return s;
}

// A TorchScript module that ignores the batch: logits [1, classes] whatever comes in. It passes
// the one-example check at creation and fails on any larger batch.
inline torch::jit::Module BatchBlindModule(int64_t classes) {
  torch::jit::Module m("BatchBlind");
  m.register_parameter("b", at::zeros({classes}), false);
  m.define(R"(
    def forward(self, x):
        return self.b.unsqueeze(0) + x.sum() * 0.0
  )");
  return m;
}

// A TorchScript MLP in -> 8 (tanh) -> classes: no layer list, so it takes the autograd paths.
inline ModelSpec ScriptedMlpSpec(int64_t in, int64_t classes) {
  torch::jit::Module m("ScriptedMlp");
  at::Generator gen = at::detail::createCPUGenerator(/*seed_val=*/301);
  m.register_parameter("w1", at::randn({8, in}, gen) * 0.5, false);
  m.register_parameter("b1", at::randn({8}, gen) * 0.1, false);
  m.register_parameter("w2", at::randn({classes, 8}, gen) * 0.5, false);
  m.register_parameter("b2", at::zeros({classes}), false);
  m.define(R"(
    def forward(self, x):
        h = (x.matmul(self.w1.t()) + self.b1).tanh()
        return h.matmul(self.w2.t()) + self.b2
  )");
  return ScriptSpec(m, in, classes);
}

// Switches every parameter to float64 in place (the module keeps its structure), for oracles
// that compare to rounding.
inline void ConvertToDouble(Model& model) {
  at::NoGradGuard no_grad;
  for (at::Tensor& p : model.Parameters()) p.set_data(p.to(at::kDouble));
}

// Standard normal inputs [n, input_shape...].
inline at::Tensor RandomInput(Model& model, int64_t n, at::Generator& gen,
                              at::ScalarType dtype = at::kFloat) {
  std::vector<int64_t> shape = {n};
  for (int64_t d : model.spec().input_shape) shape.push_back(d);
  return at::randn(shape, gen, at::TensorOptions().dtype(dtype));
}

// The same LeNet-5 (same seed, so the same weights) on the CPU and on CUDA, for tests that
// check the device paths against each other. REQUIRES: a CUDA device.
struct CpuAndCuda {
  std::unique_ptr<Model> cpu, gpu;
};
inline CpuAndCuda LeNetOnCpuAndCuda(uint64_t seed) {
  const ModelSpec spec = Spec(Architecture::kLeNet5, {1, 28, 28}, 10);
  CpuAndCuda m{BuildOrDie(spec, seed), BuildOrDie(spec, seed)};
  m.gpu->To(at::kCUDA);
  return m;
}

// Exact per-example Jacobians of the logits by autograd, one backward pass per example and
// class, written independently of core/jacobian.h: logits [N, K] and jac [N, K, P].
struct ExplicitJacobian {
  at::Tensor logits, jac;
};
inline ExplicitJacobian ComputeExplicitJacobian(Model& model, const at::Tensor& x) {
  const std::vector<at::Tensor> params = model.Parameters();
  std::vector<at::Tensor> rows, logits;
  for (int64_t i = 0; i < x.size(0); ++i) {
    const at::Tensor f = model.Forward(x.narrow(0, i, 1));
    for (int64_t c = 0; c < f.size(1); ++c) {
      const std::vector<at::Tensor> g = torch::autograd::grad({f[0][c]}, params, {}, true, false, true);
      std::vector<at::Tensor> flat;
      for (size_t j = 0; j < g.size(); ++j) {
        flat.push_back(g[j].defined() ? g[j].reshape({-1})
                                      : at::zeros({params[j].numel()}, params[j].options()));
      }
      rows.push_back(at::cat(flat));
    }
    logits.push_back(f.detach());
  }
  ExplicitJacobian out;
  out.logits = at::cat(logits);
  out.jac = at::stack(rows).view({x.size(0), out.logits.size(1), -1});
  return out;
}

}  // namespace adaptd::testing_models

#endif  // ADAPTD_TESTS_TESTING_MODELS_H_

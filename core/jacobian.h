// Per-example Jacobians of a model's logits with respect to its parameters,
// J_i = d f(x_i) / d theta ([K, P] for each example), and the products with a posterior
// covariance Sigma that the memory-perturbation equation (Nickl et al., "The Memory-Perturbation
// Equation", NeurIPS 2023, arXiv:2310.19273, Eq. 12-16) and the linearized
// predictive need:
//   J Sigma J^T  [B, K, K] (or its diagonal v [B, K]),   J u  [B, K],   J  [B, K, P].
//
// For models made of known layers (Model::Layers(): Linear, Conv2d, ReLU, Tanh, MaxPool2d,
// Flatten) nothing runs one example at a time. One forward pass caches every layer's input; the
// K logit directions are back-propagated together as a batch [B, K, ...]; and the per-example
// gradient of a Linear or Conv2d layer is its input times the back-propagated signal s:
//   Linear:  dF_k/dW = s_k a^T,                 Conv2d:  dF_k/dW = S_k unfold(a)^T.
// With a diagonal Sigma a Linear layer needs no outer product at all:
//   (J Sigma J^T)_kk' += sum_o s_ko s_k'o (sum_j sigma2_oj a_j^2 + sigma2_bias_o).
// J u is one forward pass carrying a tangent (forward-mode differentiation by hand).
// Models without layers (TorchScript) fall back to exact autograd: per-example Jacobians with one
// backward pass per example and class, and J u by the double-backward identity.
#ifndef ADAPTD_CORE_JACOBIAN_H_
#define ADAPTD_CORE_JACOBIAN_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/posterior.h"

namespace adaptd {

// A posterior covariance Sigma over the flat parameter vector (the order of
// Model::Parameters()): diagonal (IVON's sigma^2 = 1 / (lambda (h + delta)), or an Adam or
// diagonal-Laplace variance) or dense (the Laplace covariance of a small model such as a GLM).
// Thread-compatible. The tensor is held, not copied.
class Covariance {
 public:
  Covariance() = default;

  // REQUIRES: 1-D floating [P], every entry finite and > 0. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<Covariance> Diagonal(at::Tensor variance);
  // REQUIRES: floating [P, P], finite. Symmetry and definiteness are the caller's.
  // INVALID_ARGUMENT otherwise.
  static absl::StatusOr<Covariance> Dense(at::Tensor covariance);
  // sigma^2 = 1 / (lambda (h + delta)) of an IVON posterior.
  static Covariance FromPosterior(const Posterior& posterior);

  bool dense() const { return matrix_.defined() && matrix_.dim() == 2; }
  int64_t numel() const { return matrix_.defined() ? matrix_.size(0) : 0; }
  // The variance [P] (diagonal) or the matrix [P, P] (dense).
  const at::Tensor& matrix() const { return matrix_; }
  // Sigma g for g [..., P].
  at::Tensor Apply(const at::Tensor& g) const;
  // The same covariance on `device` in `dtype` (no copy when they already match).
  Covariance To(const at::Device& device, at::ScalarType dtype) const;

 private:
  explicit Covariance(at::Tensor m) : matrix_(std::move(m)) {}
  at::Tensor matrix_;
};

// Views of `flat` (along its last dimension) shaped like each tensor of `like`, in order: a flat
// vector over Model::Parameters() seen parameter by parameter.
std::vector<at::Tensor> ParameterViews(const at::Tensor& flat, const std::vector<at::Tensor>& like);

// Not thread-safe (it runs the model). The model must outlive it; the model's current weights
// are the point the Jacobians are taken at, and every call uses the model as it is then.
// Inputs are moved to the parameters' device; outputs are on that device, in the parameters'
// dtype. Nothing depends on batch composition: each example's outputs are its own.
class LogitJacobian {
 public:
  enum class Backend {
    kAuto,      // kLayers when the model has layers, else kAutograd
    kLayers,    // per-example gradient identities (built-in models)
    kAutograd,  // exact autograd, one backward pass per example and class
  };

  // INVALID_ARGUMENT for kLayers on a model without layers.
  static absl::StatusOr<std::unique_ptr<LogitJacobian>> Create(Model& model,
                                                               Backend backend = Backend::kAuto);
  virtual ~LogitJacobian() = default;
  LogitJacobian(const LogitJacobian&) = delete;
  LogitJacobian& operator=(const LogitJacobian&) = delete;

  Backend backend() const { return backend_; }

  struct Output {
    at::Tensor logits;  // f(x) [B, K]
    at::Tensor value;   // as the method says
  };

  // Every method REQUIRES x [B >= 1, input...] in the parameters' dtype (INVALID_ARGUMENT
  // otherwise; a shape the model rejects is INTERNAL from LibTorch).
  //
  // value = J Sigma J^T [B, K, K] when `full`, else its diagonal v = diag(J Sigma J^T) [B, K].
  // INVALID_ARGUMENT when sigma.numel() != P.
  absl::StatusOr<Output> SigmaGram(const at::Tensor& x, const Covariance& sigma, bool full);
  // value = J u [B, K]. REQUIRES: u [P].
  absl::StatusOr<Output> Jvp(const at::Tensor& x, const at::Tensor& u);
  // value = J [B, K, P].
  absl::StatusOr<Output> Jacobian(const at::Tensor& x);
  // value = sum_i sum_{k in classes} J_ik^2 [P]: the squared entries summed over the batch and
  // the logits `classes` (int64 indices), the Gauss-Newton diagonal of 1/2 ||f_classes||^2.
  // Built-in models never hold J whole. INVALID_ARGUMENT for a class outside [0, K).
  absl::StatusOr<Output> SquaredSum(const at::Tensor& x, const at::Tensor& classes);

 protected:
  LogitJacobian(Model& model, Backend backend) : model_(model), backend_(backend) {}
  virtual Output SigmaGramImpl(const at::Tensor& x, const Covariance& sigma, bool full) = 0;
  virtual Output JvpImpl(const at::Tensor& x, const at::Tensor& u) = 0;
  virtual Output JacobianImpl(const at::Tensor& x) = 0;
  // Default: from JacobianImpl.
  virtual Output SquaredSumImpl(const at::Tensor& x, const at::Tensor& classes);

  Model& model_;

 private:
  absl::Status CheckBatch(const at::Tensor& x, const at::Tensor& params_like) const;
  Backend backend_;
};

// Concatenates per-parameter tensors (the order of Model::Parameters()) into one flat vector;
// an undefined entry (a parameter autograd did not reach) contributes zeros of `like[i]`'s size.
at::Tensor FlattenLike(const std::vector<at::Tensor>& parts, const std::vector<at::Tensor>& like);

// The rows a batch of SigmaGram, SquaredSum or Jacobian may take: `wanted`, fewer when each row's
// K back-propagated signals (as wide as the widest layer output: K x K at the output) plus
// `extra_per_class` values per class would make a batch hold more than 2^24 values; at least 1.
// The widths come from Model::Layers() (for a TorchScript module: a linear layer's outputs, or
// a convolution's channels times the input's plane). With thousands of classes a fixed batch of 256
// held gigabytes and ran for tens of seconds between two checks for a cancel.
int64_t SweepRowsPerBatch(Model& model, int64_t wanted, int64_t extra_per_class = 0);

namespace internal {
// Tests compare the fused CPU kernel (core/jacobian_kernels.h) against the tensor-op path with
// this switch. Not thread-safe; on by default.
void SetJacobianFusedKernels(bool enabled);
}  // namespace internal

}  // namespace adaptd

#endif  // ADAPTD_CORE_JACOBIAN_H_

// Diagonal Gaussian posterior over all of a model's parameters, in the parameterisation of the
// Bayesian learning rule's IVON variant (Shen et al., ICML 2024, arXiv:2402.17641):
//   q(theta) = N(m, diag(sigma^2)),   sigma = 1 / sqrt(lambda (h + delta)),
// with mean m, Hessian estimate h, effective sample size lambda (ess) and prior precision
// lambda * delta. sigma is derived, never stored.
#ifndef ADAPTD_CORE_POSTERIOR_H_
#define ADAPTD_CORE_POSTERIOR_H_

#include <string>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor_io.h"

namespace adaptd {

// Thread-compatible: const methods may run concurrently; mutation needs external
// synchronization. Tensors live on the device of `mean` (CPU or CUDA).
class Posterior {
 public:
  Posterior() = default;

  // REQUIRES: mean and hess 1-D, same size, dtype (float32/float64) and device; ess > 0;
  // delta >= 0; every h + delta > 0. INVALID_ARGUMENT otherwise. Takes the tensors as they are
  // (no copy).
  static absl::StatusOr<Posterior> Create(at::Tensor mean, at::Tensor hess, double ess,
                                          double delta);

  const at::Tensor& mean() const { return mean_; }
  const at::Tensor& hess() const { return hess_; }
  double ess() const { return ess_; }
  double delta() const { return delta_; }
  int64_t numel() const { return mean_.numel(); }

  // lambda (h + delta): the diagonal precision. K-priors and EWC use it as the weight-space
  // curvature of the old task.
  at::Tensor Precision() const;
  // 1 / sqrt(lambda (h + delta)).
  at::Tensor Sigma() const;

  // Writes one sample theta = m + sigma * eps, eps ~ N(0, I), into `out`.
  // REQUIRES: out has the mean's size, dtype and device; `gen` is a generator of that device.
  // On the CPU the draw is reproducible from the generator's state for any thread count.
  absl::Status SampleInto(at::Tensor& out, const at::Generator& gen) const;
  // SampleInto's REQUIRES as a status: INVALID_ARGUMENT when `out` is not a contiguous tensor of
  // the mean's size, dtype and device, or `gen` is not a generator of that device.
  absl::Status CheckDrawTarget(const at::Tensor& out, const at::Generator& gen) const;

  // Deep copy (for publishing immutable snapshots).
  Posterior Clone() const;

  // Serialization under `prefix` ("posterior." by default); bit-exact round trip.
  void AppendTo(TensorMap& out, const std::string& prefix = "posterior.") const;
  static absl::StatusOr<Posterior> FromTensors(const TensorMap& in,
                                               const std::string& prefix = "posterior.");

  // Mutable access for the optimizer that owns this posterior.
  at::Tensor& mutable_mean() { return mean_; }
  at::Tensor& mutable_hess() { return hess_; }

 private:
  at::Tensor mean_;
  at::Tensor hess_;
  double ess_ = 1.0;
  double delta_ = 0.0;
};

}  // namespace adaptd

#endif  // ADAPTD_CORE_POSTERIOR_H_

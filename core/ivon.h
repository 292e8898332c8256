// IVON: the Bayesian learning rule's improved variational online Newton optimizer
// (Shen et al., "Variational Learning is Effective for Large Deep Networks", ICML 2024,
// arXiv:2402.17641, Algorithm 1; reference implementation team-approx-bayes/ivon v0.1.3).
//
// Per step, with S >= 1 weight samples theta_s = m + sigma * eps_s:
//   g_hat = mean_s grad(theta_s)                       (the mean minibatch loss's gradient)
//   h_hat = mean_s grad(theta_s) * (theta_s - m) / sigma^2          (Price/reparam. estimator)
//   g     = beta1 g + (1 - beta1) g_hat
//   h     = beta2 h + (1 - beta2) h_hat + (1 - beta2)^2 / 2 * (h - h_hat)^2 / (h + delta)
//   m     = m - alpha * clip((g / (1 - beta1^t) + delta m) / (h + delta), -r, r)
// where alpha is the learning rate times (h0 + delta) when rescale_lr is set. The state is one
// flat buffer per quantity: no per-tensor loop, and persistent state m, g, h (Adam keeps m, v
// next to the weights; IVON keeps one more vector because the weights hold samples while
// training).
#ifndef ADAPTD_CORE_IVON_H_
#define ADAPTD_CORE_IVON_H_

#include <cstdint>
#include <limits>
#include <memory>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/posterior.h"
#include "core/tensor_io.h"

namespace adaptd {

// Defaults are the reference implementation's (team-approx-bayes/ivon).
struct IvonOptions {
  // Learning rate in "SGD units"; the effective rate is lr * (hess_init + weight_decay) when
  // rescale_lr is set. Schedules pass their own value to Step(lr).
  double lr = 0.1;
  // Effective sample size lambda, normally the training-set size. Required (> 0).
  double ess = 0.0;
  // Initial Hessian h0 (> 0): initial sigma = 1 / sqrt(ess (h0 + weight_decay)).
  double hess_init = 1.0;
  double beta1 = 0.9;      // gradient momentum, in [0, 1)
  double beta2 = 0.99999;  // Hessian EMA, in [0, 1)
  // delta: the prior precision is ess * weight_decay. Applied inside the preconditioned step.
  double weight_decay = 1e-4;
  // Element-wise clip of the preconditioned update (> 0; infinity disables).
  double clip_radius = std::numeric_limits<double>::infinity();
  bool debias = true;      // debias the momentum (never h)
  bool rescale_lr = true;  // multiply lr by hess_init + weight_decay

  // INVALID_ARGUMENT naming the first bad field, what it must be and what it is.
  absl::Status Validate() const;
};

// Owned by one training loop; not thread-safe.
class Ivon {
 public:
  // `params` is the model's flat parameter buffer (its values become the initial mean) and
  // `grads` the flat gradient buffer that backward fills (see FlatParameters).
  // REQUIRES: 1-D, same size, dtype float32/float64 and device. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<std::unique_ptr<Ivon>> Create(at::Tensor params, at::Tensor grads,
                                                      const IvonOptions& options);
  // As above, with the Hessian estimate starting at `initial_hess` (flat, like params) instead
  // of options.hess_init everywhere: a posterior carried over from earlier data. hess_init still
  // sets the learning-rate rescaling.
  static absl::StatusOr<std::unique_ptr<Ivon>> Create(at::Tensor params, at::Tensor grads,
                                                      const IvonOptions& options,
                                                      const at::Tensor& initial_hess);

  Ivon(const Ivon&) = delete;
  Ivon& operator=(const Ivon&) = delete;

  // Writes theta ~ q into the parameters and zeroes the gradients. Run forward and backward of
  // the mean minibatch loss next, then EndSample(). FAILED_PRECONDITION if a sample is open.
  absl::Status BeginSample(const at::Generator& gen);
  // Folds the gradient at the open sample into this step's statistics.
  absl::Status EndSample();
  // Applies the update with `lr` (SGD units, e.g. from a schedule) and writes the new mean into
  // the parameters. FAILED_PRECONDITION without a completed sample since the last step.
  absl::Status Step(double lr);
  absl::Status Step() { return Step(options_.lr); }
  // Drops the step in progress (an open sample and any samples folded since the last Step) and
  // writes the mean back into the parameters: the way out after an error between BeginSample
  // and Step, which would otherwise leave the sample open and sampled weights in place.
  void DiscardStep();

  const Posterior& posterior() const { return posterior_; }
  const at::Tensor& momentum() const { return momentum_; }
  const IvonOptions& options() const { return options_; }
  int64_t step_count() const { return step_; }
  // The step's size against a step at h = hess_init: the median over the weights of
  // (hess_init + delta) / (h + delta). The update moves m by lr (hess_init + delta) / (h + delta)
  // times (g + delta m) (with rescale_lr), so this is 1 where h still is hess_init. h moves
  // towards the data's curvature by a fraction 1 - beta2 a step; where that curvature is far
  // below hess_init, the scale grows as (h0 + delta) / (h0 beta2^t + delta) until h meets it,
  // and a long run at a high learning rate overshoots unless clip_radius bounds the step
  // (docs/api.md, long jobs). 1 for an empty model.
  double StepScale() const;
  // Bytes of optimizer state held now: m, g and h, plus the means of a multi-sample step while
  // it is under way (released by Step).
  int64_t StateBytes() const;

  // Serialization of everything needed to continue bit-identically (with the generator state,
  // which the caller saves): m, h, g, t and the options.
  void AppendTo(TensorMap& out) const;
  absl::Status LoadFrom(const TensorMap& in);

 private:
  Ivon(at::Tensor params, at::Tensor grads, Posterior posterior, const IvonOptions& options);
  void SpillPendingSample();

  at::Tensor params_;  // Not owned: the model's flat buffer.
  at::Tensor grads_;   // Not owned.
  Posterior posterior_;
  at::Tensor momentum_;
  IvonOptions options_;
  int64_t step_ = 0;
  bool sample_open_ = false;
  int64_t samples_ = 0;      // completed samples since the last step
  bool spilled_ = false;     // true once this step's samples live in avg_grad_/avg_hess_
  at::Tensor avg_grad_;      // Welford means for S > 1 samples; allocated on first need
  at::Tensor avg_hess_;
};

namespace internal {
// Tests compare the fused CPU kernels against the plain tensor-op path with this switch.
void SetIvonFusedKernels(bool enabled);
}  // namespace internal

}  // namespace adaptd

#endif  // ADAPTD_CORE_IVON_H_

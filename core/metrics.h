// Classification metrics over predicted probabilities. All take probs float [N, K] (rows sum to
// one) and labels int64 [N], and return a double (averaged over N).
#ifndef ADAPTD_CORE_METRICS_H_
#define ADAPTD_CORE_METRICS_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace adaptd {

struct Calibration {
  double accuracy = 0;  // fraction of argmax predictions equal to the label
  double nll = 0;       // mean -log p(y|x), probabilities clamped at 1e-12
  double ece = 0;       // expected calibration error, equal-width confidence bins
  double brier = 0;     // mean over examples of sum_k (p_k - [y == k])^2
};

// INVALID_ARGUMENT for mismatched shapes, labels outside [0, K) or an empty set.
absl::StatusOr<Calibration> ComputeCalibration(const at::Tensor& probs, const at::Tensor& labels,
                                               int num_bins = 15);

double Accuracy(const at::Tensor& probs, const at::Tensor& labels);
double NegativeLogLikelihood(const at::Tensor& probs, const at::Tensor& labels);
double ExpectedCalibrationError(const at::Tensor& probs, const at::Tensor& labels,
                                int num_bins = 15);
double BrierScore(const at::Tensor& probs, const at::Tensor& labels);

}  // namespace adaptd

#endif  // ADAPTD_CORE_METRICS_H_

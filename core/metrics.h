// Classification metrics over predicted probabilities. All take probs float [N, K] (rows sum to
// one) and labels int64 [N], and return a double (averaged over N).
#ifndef ADAPTD_CORE_METRICS_H_
#define ADAPTD_CORE_METRICS_H_

#include <vector>

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

// Continual-learning summary of an accuracy matrix acc[i][j] = accuracy on task j after
// training on tasks 0..i (T x T; entries with j > i are ignored).
struct ContinualSummary {
  double average = 0;     // mean_j acc[T-1][j]
  double forgetting = 0;  // mean_{j<T-1} (max_{j<=i<T-1} acc[i][j] - acc[T-1][j])
  double bwt = 0;         // backward transfer: mean_{j<T-1} (acc[T-1][j] - acc[j][j])
};
// INVALID_ARGUMENT unless the matrix is square with at least one row.
absl::StatusOr<ContinualSummary> SummarizeAccuracyMatrix(
    const std::vector<std::vector<double>>& acc);

// Area under the ROC curve of `scores` (float [N], higher meaning "more likely positive") for
// `positive` (bool [N]): the probability that a random positive outscores a random negative,
// ties counting one half (the Mann-Whitney U statistic over n_pos n_neg). For OOD detection the
// positives are the out-of-distribution inputs and the score an uncertainty (entropy, mutual
// information). INVALID_ARGUMENT for mismatched shapes, non-finite scores or an empty class.
absl::StatusOr<double> Auroc(const at::Tensor& scores, const at::Tensor& positive);

}  // namespace adaptd

#endif  // ADAPTD_CORE_METRICS_H_

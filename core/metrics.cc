#include "core/metrics.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/torch_status.h"

namespace adaptd {

double Accuracy(const at::Tensor& probs, const at::Tensor& labels) {
  return probs.argmax(1).eq(labels).to(at::kDouble).mean().item<double>();
}

double NegativeLogLikelihood(const at::Tensor& probs, const at::Tensor& labels) {
  return -probs.to(at::kDouble).gather(1, labels.unsqueeze(1)).clamp_min(1e-12).log().mean().item<double>();
}

double ExpectedCalibrationError(const at::Tensor& probs, const at::Tensor& labels, int num_bins) {
  const at::Tensor p = probs.to(at::kDouble);
  const auto [conf, pred] = p.max(1);
  const at::Tensor correct = pred.eq(labels).to(at::kDouble);
  // Bin b holds confidences in (b/B, (b+1)/B]; confidence is >= 1/K > 0.
  const at::Tensor bin = (conf * num_bins).ceil().sub_(1).clamp_(0, num_bins - 1).to(at::kLong);
  const at::Tensor count = at::zeros({num_bins}, at::kDouble).index_add_(0, bin, at::ones_like(conf));
  const at::Tensor conf_sum = at::zeros({num_bins}, at::kDouble).index_add_(0, bin, conf);
  const at::Tensor acc_sum = at::zeros({num_bins}, at::kDouble).index_add_(0, bin, correct);
  // sum_b |B_b|/N * |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / N.
  return (acc_sum - conf_sum).abs().sum().item<double>() / static_cast<double>(labels.size(0));
}

double BrierScore(const at::Tensor& probs, const at::Tensor& labels) {
  const at::Tensor p = probs.to(at::kDouble);
  const at::Tensor onehot = at::zeros_like(p).scatter_(1, labels.unsqueeze(1), 1.0);
  return (p - onehot).square().sum(1).mean().item<double>();
}

absl::StatusOr<Calibration> ComputeCalibration(const at::Tensor& probs, const at::Tensor& labels,
                                               int num_bins) {
  if (!probs.defined() || probs.dim() != 2 || !probs.is_floating_point() || probs.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("probs must be floating [N, K] with N >= 1; got ",
                                                   DescribeTensor(probs)));
  }
  if (!labels.defined() || labels.scalar_type() != at::kLong || labels.dim() != 1 ||
      labels.size(0) != probs.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("labels must be int64 [", probs.size(0),
                                                   "]; got ", DescribeTensor(labels)));
  }
  if (num_bins < 1) return absl::InvalidArgumentError(absl::StrCat("num_bins must be >= 1; got ", num_bins));
  return CallTorch([&]() -> absl::StatusOr<Calibration> {
    const at::Tensor p = probs.cpu();
    const at::Tensor y = labels.cpu();
    if (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= p.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat("labels must lie in [0, ", p.size(1), ")"));
    }
    Calibration c;
    c.accuracy = Accuracy(p, y);
    c.nll = NegativeLogLikelihood(p, y);
    c.ece = ExpectedCalibrationError(p, y, num_bins);
    c.brier = BrierScore(p, y);
    return c;
  });
}

}  // namespace adaptd

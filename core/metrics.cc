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

absl::StatusOr<ContinualSummary> SummarizeAccuracyMatrix(
    const std::vector<std::vector<double>>& acc) {
  const size_t t = acc.size();
  if (t == 0) return absl::InvalidArgumentError("accuracy matrix is empty");
  for (size_t i = 0; i < t; ++i) {
    if (acc[i].size() != t) {
      return absl::InvalidArgumentError(absl::StrCat("accuracy matrix row ", i, " has ",
                                                     acc[i].size(), " entries; expected ", t));
    }
  }
  ContinualSummary s;
  for (size_t j = 0; j < t; ++j) s.average += acc[t - 1][j] / static_cast<double>(t);
  if (t == 1) return s;
  for (size_t j = 0; j + 1 < t; ++j) {
    double best = acc[j][j];
    for (size_t i = j; i + 1 < t; ++i) best = std::max(best, acc[i][j]);
    s.forgetting += (best - acc[t - 1][j]) / static_cast<double>(t - 1);
    s.bwt += (acc[t - 1][j] - acc[j][j]) / static_cast<double>(t - 1);
  }
  return s;
}

absl::StatusOr<double> Auroc(const at::Tensor& scores, const at::Tensor& positive) {
  if (!scores.defined() || scores.dim() != 1 || !scores.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("scores must be floating [N]; got ", DescribeTensor(scores)));
  }
  if (!positive.defined() || positive.scalar_type() != at::kBool || positive.dim() != 1 ||
      positive.size(0) != scores.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("positive must be bool [", scores.size(0),
                                                   "]; got ", DescribeTensor(positive)));
  }
  return CallTorch([&]() -> absl::StatusOr<double> {
    const at::Tensor s = scores.to(at::kCPU, at::kDouble).contiguous();
    if (!s.isfinite().all().item<bool>()) {
      return absl::InvalidArgumentError("scores must be finite");
    }
    const at::Tensor pos = positive.cpu();
    const int64_t n = s.size(0), n_pos = pos.sum().item<int64_t>(), n_neg = n - n_pos;
    if (n_pos == 0 || n_neg == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AUROC needs both classes; got ", n_pos, " positives and ", n_neg, " negatives"));
    }
    // Sum of the positives' ranks (1-based, ties sharing their average rank) in ascending order.
    const auto [sorted, order] = s.sort();
    const double* v = sorted.data_ptr<double>();
    const at::Tensor pos_sorted = pos.index_select(0, order).contiguous();
    const bool* is_pos = pos_sorted.data_ptr<bool>();
    double rank_sum = 0;
    for (int64_t i = 0; i < n;) {
      int64_t j = i;
      int64_t tied_pos = 0;
      for (; j < n && v[j] == v[i]; ++j) tied_pos += is_pos[j];
      rank_sum += tied_pos * 0.5 * static_cast<double>(i + 1 + j);  // ranks i+1 .. j
      i = j;
    }
    const double u = rank_sum - 0.5 * static_cast<double>(n_pos) * static_cast<double>(n_pos + 1);
    return u / (static_cast<double>(n_pos) * static_cast<double>(n_neg));
  });
}

}  // namespace adaptd

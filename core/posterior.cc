#include "core/posterior.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/noise.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {

absl::StatusOr<Posterior> Posterior::Create(at::Tensor mean, at::Tensor hess, double ess,
                                            double delta) {
  if (!mean.defined() || mean.dim() != 1 ||
      (mean.scalar_type() != at::kFloat && mean.scalar_type() != at::kDouble)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "posterior mean must be a 1-D float32 or float64 tensor; got ", DescribeTensor(mean)));
  }
  if (!hess.defined() || !hess.sizes().equals(mean.sizes()) ||
      hess.scalar_type() != mean.scalar_type() || hess.device() != mean.device()) {
    return absl::InvalidArgumentError(absl::StrCat("posterior hess must match the mean (",
                                                   DescribeTensor(mean), "); got ",
                                                   DescribeTensor(hess)));
  }
  if (!(ess > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ess must be > 0; got ", ess));
  }
  if (!(delta >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("delta (weight decay) must be >= 0; got ", delta));
  }
  return CallTorch([&]() -> absl::StatusOr<Posterior> {
    const double min_precision = (hess.numel() ? hess.min().item<double>() : 1.0) + delta;
    if (!(min_precision > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("h + delta must be > 0 everywhere; the minimum is ", min_precision));
    }
    Posterior p;
    p.mean_ = mean.contiguous();
    p.hess_ = hess.contiguous();
    p.ess_ = ess;
    p.delta_ = delta;
    return p;
  });
}

at::Tensor Posterior::Precision() const { return (hess_ + delta_) * ess_; }

at::Tensor Posterior::Sigma() const { return Precision().rsqrt(); }

absl::Status Posterior::CheckDrawTarget(const at::Tensor& out, const at::Generator& gen) const {
  if (!out.sizes().equals(mean_.sizes()) || out.scalar_type() != mean_.scalar_type() ||
      out.device() != mean_.device() || !out.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the posterior must match the parameters it is drawn for: contiguous ",
        DescribeTensor(mean_), " on ", mean_.device().str(), "; got ", DescribeTensor(out), " on ",
        out.device().str()));
  }
  if (gen.device().type() != mean_.device().type()) {
    return absl::InvalidArgumentError(absl::StrCat("generator is on ", gen.device().str(),
                                                   "; the posterior is on ", mean_.device().str()));
  }
  return absl::OkStatus();
}

absl::Status Posterior::SampleInto(at::Tensor& out, const at::Generator& gen) const {
  ADAPTD_RETURN_IF_ERROR(CheckDrawTarget(out, gen));
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    if (mean_.device().is_cpu()) {
      SampleDiagonalGaussian(out, mean_, hess_, ess_, delta_, NextSeed(gen));
    } else {
      at::normal_out(out, 0.0, 1.0, out.sizes(), gen);
      out.mul_(Sigma()).add_(mean_);
    }
    return absl::OkStatus();
  });
}

Posterior Posterior::Clone() const {
  Posterior p;
  p.mean_ = mean_.clone();
  p.hess_ = hess_.clone();
  p.ess_ = ess_;
  p.delta_ = delta_;
  return p;
}

void Posterior::AppendTo(TensorMap& out, const std::string& prefix) const {
  out[prefix + "mean"] = mean_;
  out[prefix + "hess"] = hess_;
  out[prefix + "ess"] = ScalarTensor(ess_);
  out[prefix + "delta"] = ScalarTensor(delta_);
}

absl::StatusOr<Posterior> Posterior::FromTensors(const TensorMap& in, const std::string& prefix) {
  auto it = in.find(prefix + "mean");
  if (it == in.end()) return absl::InvalidArgumentError("missing tensor '" + prefix + "mean'");
  const at::Tensor mean = it->second;
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor hess,
                          GetTensor(in, prefix + "hess", mean.scalar_type(), mean.numel()));
  ADAPTD_ASSIGN_OR_RETURN(double ess, GetDouble(in, prefix + "ess"));
  ADAPTD_ASSIGN_OR_RETURN(double delta, GetDouble(in, prefix + "delta"));
  return Create(mean, hess, ess, delta);
}

}  // namespace adaptd

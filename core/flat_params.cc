#include "core/flat_params.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/torch_status.h"

namespace adaptd {

absl::StatusOr<FlatParameters> FlatParameters::Bind(std::vector<at::Tensor> parameters) {
  if (parameters.empty()) {
    return absl::InvalidArgumentError("FlatParameters: the model has no parameters");
  }
  int64_t total = 0;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const at::Tensor& p = parameters[i];
    if (p.scalar_type() != parameters[0].scalar_type() || p.device() != parameters[0].device()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FlatParameters: all parameters must share dtype and device; parameter 0 is ",
          DescribeTensor(parameters[0]), " on ", parameters[0].device().str(), ", parameter ", i,
          " is ", DescribeTensor(p), " on ", p.device().str()));
    }
    total += p.numel();
  }
  return CallTorch([&]() -> absl::StatusOr<FlatParameters> {
    at::NoGradGuard no_grad;
    FlatParameters flat;
    flat.params_ = at::empty({total}, parameters[0].options().requires_grad(false));
    flat.grads_ = at::zeros({total}, parameters[0].options().requires_grad(false));
    int64_t offset = 0;
    for (at::Tensor& p : parameters) {
      const int64_t n = p.numel();
      at::Tensor view = flat.params_.narrow(0, offset, n).view(p.sizes());
      view.copy_(p);
      p.set_data(view);
      p.mutable_grad() = flat.grads_.narrow(0, offset, n).view(p.sizes());
      flat.views_.push_back(p);
      offset += n;
    }
    return flat;
  });
}

void FlatParameters::ZeroGrad() { grads_.zero_(); }

}  // namespace adaptd

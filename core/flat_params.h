// Binds a model's parameters (and their gradients) into one flat buffer each, so that an
// optimizer step is a handful of passes over contiguous memory instead of a per-tensor loop.
#ifndef ADAPTD_CORE_FLAT_PARAMS_H_
#define ADAPTD_CORE_FLAT_PARAMS_H_

#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace adaptd {

// After Bind, every parameter is a view into `params()` and its `.grad()` a view into
// `grads()`; writing the flat buffer changes the model, and backward accumulates into the flat
// gradient. A parameter that receives no gradient keeps a zero gradient.
// Thread-compatible; owned by whoever trains the model.
class FlatParameters {
 public:
  FlatParameters() = default;

  // REQUIRES: at least one parameter; all share one dtype and device.
  // INVALID_ARGUMENT otherwise. Values are copied into the flat buffer.
  static absl::StatusOr<FlatParameters> Bind(std::vector<at::Tensor> parameters);

  const at::Tensor& params() const { return params_; }
  const at::Tensor& grads() const { return grads_; }
  int64_t numel() const { return params_.numel(); }
  const std::vector<at::Tensor>& views() const { return views_; }

  void ZeroGrad();

 private:
  at::Tensor params_;
  at::Tensor grads_;
  std::vector<at::Tensor> views_;
};

}  // namespace adaptd

#endif  // ADAPTD_CORE_FLAT_PARAMS_H_

// The one seam where LibTorch exceptions become absl::Status, plus small validators that
// describe tensors in error messages.
#ifndef ADAPTD_CORE_TORCH_STATUS_H_
#define ADAPTD_CORE_TORCH_STATUS_H_

#include <stdexcept>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd {

// An exception's message; a c10::Error's without its C++ backtrace.
std::string ExceptionText(const std::exception& e);

// What a model's user-supplied TorchScript module throws from its forward pass: its own error,
// or logits of the wrong shape for the batch.
class ModuleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs `fn` (returning absl::Status or absl::StatusOr<T>) and converts exceptions:
// out-of-memory becomes RESOURCE_EXHAUSTED; a ModuleError FAILED_PRECONDITION (the model's
// module is at fault, not the request or the server); anything else INTERNAL (inputs are
// validated before LibTorch sees them, so a throw after validation is our bug).
template <typename Fn>
auto CallTorch(Fn&& fn) -> decltype(fn()) {
  try {
    return std::forward<Fn>(fn)();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(std::string(e.what_without_backtrace()));
  } catch (const ModuleError& e) {
    return absl::FailedPreconditionError(e.what());
  } catch (const std::exception& e) {
    return absl::InternalError(ExceptionText(e));
  }
}

// "[256, 1, 28, 28] float32" style description for error messages.
std::string DescribeTensor(const at::Tensor& t);

// "[256, 1, 28, 28]".
std::string ShapeString(c10::IntArrayRef shape);

// "cpu", "cuda" (= "cuda:0") or "cuda:N" as a device this process can use. INVALID_ARGUMENT
// for another spelling; FAILED_PRECONDITION for a CUDA device this build or machine does not
// have.
absl::StatusOr<at::Device> ParseDevice(const std::string& name);

// OK for the CPU and for a CUDA device that exists here; FAILED_PRECONDITION otherwise.
absl::Status CheckDevice(const at::Device& device);

// The flat index of the first NaN or Inf of a floating tensor; -1 when there is none (or the
// tensor is not floating).
int64_t FirstNonFinite(const at::Tensor& t);

// INVALID_ARGUMENT unless every element of a floating tensor is finite. `what` names the
// tensor in the message.
absl::Status CheckFinite(const at::Tensor& t, const std::string& what);

}  // namespace adaptd

#endif  // ADAPTD_CORE_TORCH_STATUS_H_

#include "core/torch_status.h"

#include <optional>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace adaptd {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.end(), ", "), "]");
}

std::string ExceptionText(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

std::string DescribeTensor(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  return absl::StrCat(ShapeString(t.sizes()), " ", std::string(c10::toString(t.scalar_type())));
}

absl::Status CheckDevice(const at::Device& device) {
  if (device.is_cpu()) return absl::OkStatus();
  if (!device.is_cuda()) {
    return absl::FailedPreconditionError(
        absl::StrCat("only cpu and cuda devices are supported; got ", device.str()));
  }
  const int64_t count =
      torch::cuda::is_available() ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device ", device.str(), " asked for, but this ",
        at::hasCUDA() ? "machine has no CUDA device" : "build of LibTorch has no CUDA support",
        "; use cpu"));
  }
  if (device.has_index() && device.index() >= count) {
    return absl::FailedPreconditionError(absl::StrCat("device ", device.str(),
                                                      " asked for, but this machine has ", count,
                                                      " CUDA device(s): cuda:0..cuda:", count - 1));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  std::optional<at::Device> device;
  try {
    device.emplace(name);
  } catch (const c10::Error&) {
  }
  // LibTorch keeps the index in 8 bits: "cuda:300" would come back as another device, so the
  // parse must read back as what was written.
  if (!device || !(device->is_cpu() || device->is_cuda()) ||
      (device->has_index() && device->str() != name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device must be cpu, cuda or cuda:N; got \"", name, "\""));
  }
  // A bare "cuda" is the first GPU, named as such in reports.
  if (device->is_cuda() && !device->has_index()) device.emplace(at::kCUDA, 0);
  if (absl::Status s = CheckDevice(*device); !s.ok()) return s;
  return *device;
}

int64_t FirstNonFinite(const at::Tensor& t) {
  if (!t.is_floating_point()) return -1;
  const at::Tensor bad = t.isfinite().logical_not().reshape({-1});
  if (!bad.any().item<bool>()) return -1;
  return bad.nonzero()[0][0].item<int64_t>();
}

absl::Status CheckFinite(const at::Tensor& t, const std::string& what) {
  const int64_t first = FirstNonFinite(t);
  if (first < 0) return absl::OkStatus();
  const int64_t count = t.isfinite().logical_not().sum().item<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be finite; found ", count,
                                                 " NaN/Inf value(s), the first at flat index ",
                                                 first));
}

}  // namespace adaptd

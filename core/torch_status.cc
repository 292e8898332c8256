#include "core/torch_status.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace adaptd {

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.end(), ", "), "]");
}

std::string DescribeTensor(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  return absl::StrCat(ShapeString(t.sizes()), " ", std::string(c10::toString(t.scalar_type())));
}

absl::Status CheckFinite(const at::Tensor& t, const std::string& what) {
  if (!t.is_floating_point()) return absl::OkStatus();
  const at::Tensor bad = t.isfinite().logical_not();
  const int64_t count = bad.sum().item<int64_t>();
  if (count == 0) return absl::OkStatus();
  const int64_t first = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be finite; found ", count,
                                                 " NaN/Inf value(s), the first at flat index ",
                                                 first));
}

}  // namespace adaptd

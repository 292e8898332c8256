// A small, self-describing binary format for named tensors: what checkpoints and optimizer
// state are written in. Round trips are bit-exact; a CRC32 over the whole record catches
// corruption and truncation.
#ifndef ADAPTD_CORE_TENSOR_IO_H_
#define ADAPTD_CORE_TENSOR_IO_H_

#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adaptd {

// Ordered so that the serialized bytes are deterministic.
using TensorMap = std::map<std::string, at::Tensor>;

// Serializes `tensors` (any device; copied to CPU, made contiguous). Supported dtypes: uint8,
// int32, int64, float32, float64, bool.
std::string SerializeTensors(const TensorMap& tensors);

// Parses bytes written by SerializeTensors. INVALID_ARGUMENT (DATA_LOSS for a CRC mismatch or
// truncation) with what was expected and what was found; never crashes on malformed input.
absl::StatusOr<TensorMap> ParseTensors(absl::string_view bytes);

// Looks up `name` and checks its dtype and, when `numel` >= 0, its element count.
absl::StatusOr<at::Tensor> GetTensor(const TensorMap& map, const std::string& name,
                                     at::ScalarType dtype, int64_t numel = -1);

// Convenience for 0-d scalars stored as float64 / int64 tensors.
at::Tensor ScalarTensor(double v);
at::Tensor ScalarTensor(int64_t v);
absl::StatusOr<double> GetDouble(const TensorMap& map, const std::string& name);
absl::StatusOr<int64_t> GetInt(const TensorMap& map, const std::string& name);

}  // namespace adaptd

#endif  // ADAPTD_CORE_TENSOR_IO_H_

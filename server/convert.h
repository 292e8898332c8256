// Between the wire (adaptd.v1 messages) and core types. Every function that reads a request
// validates it completely and says what was expected and what came (INVALID_ARGUMENT).
#ifndef ADAPTD_SERVER_CONVERT_H_
#define ADAPTD_SERVER_CONVERT_H_

#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "adaptd/v1/model.pb.h"
#include "adaptd/v1/tensor.pb.h"
#include "google/protobuf/field_mask.pb.h"
#include "core/continual.h"
#include "core/model.h"

namespace adaptd {

// The spec, validated; TorchScript bytes are loaded once to check them.
absl::StatusOr<ModelSpec> SpecFromProto(const v1::ModelSpec& proto);
v1::ModelSpec SpecToProto(const ModelSpec& spec);

// LearningConfig.adapt_after_seconds: at most a year, so that a deadline cannot overflow.
inline constexpr int64_t kMaxAdaptAfterSeconds = 365 * 24 * 3600;

// `proto` with every default filled in (what GetModel reports) and validated.
absl::StatusOr<v1::LearningConfig> NormalizeConfig(const v1::LearningConfig& proto);
// REQUIRES: a normalized config.
absl::StatusOr<AdaptConfig> ConfigFromProto(const v1::LearningConfig& normalized);
// UpdateConfig: `current` (normalized) with the fields that `mask` names taken from `update`,
// normalized and validated. INVALID_ARGUMENT for an empty mask, a path that names no field,
// and a change of `method` or `head_mode`, which the model's state is built for.
absl::StatusOr<v1::LearningConfig> MergeConfig(const v1::LearningConfig& current,
                                               const v1::LearningConfig& update,
                                               const google::protobuf::FieldMask& mask);

// A CPU tensor with the message's dtype and shape (a copy of the bytes).
absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& proto, const std::string& what);
// A dtype's enum name, or "dtype number N" for a value the enum lacks.
std::string DataTypeText(v1::DataType dtype);
v1::Tensor TensorToProto(const at::Tensor& tensor);

// Model inputs: float32, or uint8 scaled by 1/255; shape [B, input_shape...] (B >= 1), or
// [input_shape...] when `allow_single` (then B = 1); every value finite.
absl::StatusOr<at::Tensor> InputsFromProto(const v1::Tensor& proto, const ModelSpec& spec,
                                           bool allow_single, const std::string& what);
// Labels: int64 [batch] in [0, num_classes).
absl::StatusOr<at::Tensor> LabelsFromProto(const v1::Tensor& proto, int64_t batch,
                                           int64_t num_classes, const std::string& what);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_CONVERT_H_

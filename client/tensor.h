// Wire tensors (adaptd.v1.Tensor) built from and read into plain vectors, without LibTorch.
//
// A Tensor is a dtype, a shape and product(shape) * sizeof(dtype) little-endian bytes in C
// order. These helpers check exactly that and say what was expected and what was found.
#ifndef ADAPTD_CLIENT_TENSOR_H_
#define ADAPTD_CLIENT_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "adaptd/v1/tensor.pb.h"

namespace adaptd {

// Bytes per element; 0 for DATA_TYPE_UNSPECIFIED and values this client does not know.
int64_t DataTypeSize(v1::DataType dtype);
// "float32", "float64", "uint8", "int64"; "unspecified" or "dtype(N)" otherwise.
std::string DataTypeName(v1::DataType dtype);
// "[2, 3]".
std::string FormatShape(absl::Span<const int64_t> shape);
// The product of the dimensions (1 for a scalar). INVALID_ARGUMENT for a negative dimension or
// a product that overflows int64.
absl::StatusOr<int64_t> NumElements(absl::Span<const int64_t> shape);

// OK if `tensor` has a known dtype, a valid shape and exactly the bytes they imply.
absl::Status CheckTensor(const v1::Tensor& tensor);

// Builds a tensor from `raw_data` (little-endian, C order); INVALID_ARGUMENT if the size does
// not match dtype and shape.
absl::StatusOr<v1::Tensor> MakeTensor(v1::DataType dtype, absl::Span<const int64_t> shape,
                                      std::string raw_data);
absl::StatusOr<v1::Tensor> FloatTensor(absl::Span<const float> values,
                                       absl::Span<const int64_t> shape);
absl::StatusOr<v1::Tensor> Int64Tensor(absl::Span<const int64_t> values,
                                       absl::Span<const int64_t> shape);
absl::StatusOr<v1::Tensor> Uint8Tensor(absl::Span<const uint8_t> values,
                                       absl::Span<const int64_t> shape);

// The elements in C order. INVALID_ARGUMENT unless the tensor has exactly this dtype and a
// consistent size.
absl::StatusOr<std::vector<float>> FloatValues(const v1::Tensor& tensor);
absl::StatusOr<std::vector<int64_t>> Int64Values(const v1::Tensor& tensor);
absl::StatusOr<std::vector<uint8_t>> Uint8Values(const v1::Tensor& tensor);

// Converts float64, int64 and uint8 tensors to float32 by value (uint8 is not rescaled);
// float32 is returned unchanged.
absl::StatusOr<v1::Tensor> ToFloat32(const v1::Tensor& tensor);

// The bytes of one row (the product of the dimensions after the first, times the element size).
// INVALID_ARGUMENT for a scalar or a product that overflows int64.
absl::StatusOr<int64_t> RowBytes(const v1::Tensor& tensor);
// Rows [begin, begin + count) along the first dimension.
// REQUIRES: CheckTensor(tensor) is OK.
absl::StatusOr<v1::Tensor> SliceRows(const v1::Tensor& tensor, int64_t begin, int64_t count);
// The rows `rows` (in that order, repeats allowed) along the first dimension.
// REQUIRES: CheckTensor(tensor) is OK.
absl::StatusOr<v1::Tensor> GatherRows(const v1::Tensor& tensor, absl::Span<const int64_t> rows);

// Appends the rows of `rows` to `to` along the first dimension. An empty `to` (no shape) becomes
// a copy of `rows`. INVALID_ARGUMENT, and `to` unchanged, if the dtypes or the other dimensions
// differ. REQUIRES: CheckTensor is OK for both.
absl::Status AppendRows(v1::Tensor* to, const v1::Tensor& rows);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_TENSOR_H_

#include "client/tensor.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// The wire format is little-endian; on such hosts it is also the memory layout, so values are
// copied byte for byte.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adaptd_client assumes a little-endian host"
#endif

namespace adaptd {
namespace {

template <typename T>
absl::StatusOr<v1::Tensor> FromValues(v1::DataType dtype, absl::Span<const T> values,
                                      absl::Span<const int64_t> shape) {
  std::string raw(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(raw.data(), values.data(), raw.size());
  return MakeTensor(dtype, shape, std::move(raw));
}

template <typename T>
absl::StatusOr<std::vector<T>> ToValues(v1::DataType dtype, const v1::Tensor& tensor) {
  if (tensor.dtype() != dtype) {
    return absl::InvalidArgumentError(absl::StrCat("expected a ", DataTypeName(dtype),
                                                   " tensor; got ", DataTypeName(tensor.dtype()),
                                                   " ", FormatShape(tensor.shape())));
  }
  if (absl::Status s = CheckTensor(tensor); !s.ok()) return s;
  std::vector<T> values(tensor.raw_data().size() / sizeof(T));
  if (!values.empty())
    std::memcpy(values.data(), tensor.raw_data().data(), tensor.raw_data().size());
  return values;
}

template <typename From>
std::vector<float> Convert(const std::string& raw) {
  std::vector<float> out(raw.size() / sizeof(From));
  for (size_t i = 0; i < out.size(); ++i) {
    From v;
    std::memcpy(&v, raw.data() + i * sizeof(From), sizeof(From));
    out[i] = static_cast<float>(v);
  }
  return out;
}

}  // namespace

absl::StatusOr<int64_t> RowBytes(const v1::Tensor& tensor) {
  if (tensor.shape_size() == 0) {
    return absl::InvalidArgumentError("a scalar tensor has no rows");
  }
  absl::StatusOr<int64_t> row = NumElements(absl::MakeConstSpan(tensor.shape()).subspan(1));
  if (!row.ok()) return row.status();
  if (*row > std::numeric_limits<int64_t>::max() / 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("a row of shape ", FormatShape(absl::MakeConstSpan(tensor.shape()).subspan(1)),
                     " overflows int64 bytes"));
  }
  return *row * DataTypeSize(tensor.dtype());
}

int64_t DataTypeSize(v1::DataType dtype) {
  switch (dtype) {
    case v1::DATA_TYPE_FLOAT32:
      return 4;
    case v1::DATA_TYPE_FLOAT64:
    case v1::DATA_TYPE_INT64:
      return 8;
    case v1::DATA_TYPE_UINT8:
      return 1;
    default:
      return 0;
  }
}

std::string DataTypeName(v1::DataType dtype) {
  switch (dtype) {
    case v1::DATA_TYPE_FLOAT32:
      return "float32";
    case v1::DATA_TYPE_FLOAT64:
      return "float64";
    case v1::DATA_TYPE_UINT8:
      return "uint8";
    case v1::DATA_TYPE_INT64:
      return "int64";
    case v1::DATA_TYPE_UNSPECIFIED:
      return "unspecified";
    default:
      return absl::StrCat("dtype(", static_cast<int>(dtype), ")");
  }
}

std::string FormatShape(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<int64_t> NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", FormatShape(shape), " has a negative dimension"));
    }
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", FormatShape(shape), " is too large"));
    }
    n *= d;
  }
  return n;
}

absl::Status CheckTensor(const v1::Tensor& tensor) {
  const int64_t size = DataTypeSize(tensor.dtype());
  if (size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor has dtype ",
                                                   DataTypeName(tensor.dtype()),
                                                   "; expected float32, float64, uint8 or int64"));
  }
  absl::StatusOr<int64_t> n = NumElements(tensor.shape());
  if (!n.ok()) return n.status();
  if (*n > std::numeric_limits<int64_t>::max() / size ||
      static_cast<int64_t>(tensor.raw_data().size()) != *n * size) {
    return absl::InvalidArgumentError(absl::StrCat(
        DataTypeName(tensor.dtype()), " tensor of shape ", FormatShape(tensor.shape()), " needs ",
        *n, " x ", size, " bytes; raw_data has ", tensor.raw_data().size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Tensor> MakeTensor(v1::DataType dtype, absl::Span<const int64_t> shape,
                                      std::string raw_data) {
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  for (int64_t d : shape) tensor.add_shape(d);
  *tensor.mutable_raw_data() = std::move(raw_data);
  if (absl::Status s = CheckTensor(tensor); !s.ok()) return s;
  return tensor;
}

absl::StatusOr<v1::Tensor> FloatTensor(absl::Span<const float> values,
                                       absl::Span<const int64_t> shape) {
  return FromValues(v1::DATA_TYPE_FLOAT32, values, shape);
}

absl::StatusOr<v1::Tensor> Int64Tensor(absl::Span<const int64_t> values,
                                       absl::Span<const int64_t> shape) {
  return FromValues(v1::DATA_TYPE_INT64, values, shape);
}

absl::StatusOr<v1::Tensor> Uint8Tensor(absl::Span<const uint8_t> values,
                                       absl::Span<const int64_t> shape) {
  return FromValues(v1::DATA_TYPE_UINT8, values, shape);
}

absl::StatusOr<std::vector<float>> FloatValues(const v1::Tensor& tensor) {
  return ToValues<float>(v1::DATA_TYPE_FLOAT32, tensor);
}

absl::StatusOr<std::vector<int64_t>> Int64Values(const v1::Tensor& tensor) {
  return ToValues<int64_t>(v1::DATA_TYPE_INT64, tensor);
}

absl::StatusOr<std::vector<uint8_t>> Uint8Values(const v1::Tensor& tensor) {
  return ToValues<uint8_t>(v1::DATA_TYPE_UINT8, tensor);
}

absl::StatusOr<v1::Tensor> ToFloat32(const v1::Tensor& tensor) {
  if (absl::Status s = CheckTensor(tensor); !s.ok()) return s;
  std::vector<float> values;
  switch (tensor.dtype()) {
    case v1::DATA_TYPE_FLOAT32:
      return tensor;
    case v1::DATA_TYPE_FLOAT64:
      values = Convert<double>(tensor.raw_data());
      break;
    case v1::DATA_TYPE_INT64:
      values = Convert<int64_t>(tensor.raw_data());
      break;
    default:
      values = Convert<uint8_t>(tensor.raw_data());
      break;
  }
  return FloatTensor(values, tensor.shape());
}

absl::StatusOr<v1::Tensor> SliceRows(const v1::Tensor& tensor, int64_t begin, int64_t count) {
  absl::StatusOr<int64_t> row_bytes = RowBytes(tensor);
  if (!row_bytes.ok()) return row_bytes.status();
  const int64_t rows = tensor.shape(0);
  if (begin < 0 || count < 0 || begin > rows || count > rows - begin) {
    return absl::OutOfRangeError(
        absl::StrCat("rows [", begin, ", ", begin + count, ") of a tensor with ", rows, " rows"));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  shape[0] = count;
  return MakeTensor(tensor.dtype(), shape,
                    tensor.raw_data().substr(begin * *row_bytes, count * *row_bytes));
}

absl::StatusOr<v1::Tensor> GatherRows(const v1::Tensor& tensor, absl::Span<const int64_t> rows) {
  absl::StatusOr<int64_t> row_bytes = RowBytes(tensor);
  if (!row_bytes.ok()) return row_bytes.status();
  std::string raw;
  raw.reserve(rows.size() * *row_bytes);
  for (int64_t r : rows) {
    if (r < 0 || r >= tensor.shape(0)) {
      return absl::OutOfRangeError(
          absl::StrCat("row ", r, " of a tensor with ", tensor.shape(0), " rows"));
    }
    raw.append(tensor.raw_data(), r * *row_bytes, *row_bytes);
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  shape[0] = static_cast<int64_t>(rows.size());
  return MakeTensor(tensor.dtype(), shape, std::move(raw));
}

absl::Status AppendRows(v1::Tensor* to, const v1::Tensor& rows) {
  if (to->shape_size() == 0) {
    *to = rows;
    return absl::OkStatus();
  }
  if (to->dtype() != rows.dtype() || rows.shape_size() != to->shape_size() ||
      !std::equal(to->shape().begin() + 1, to->shape().end(), rows.shape().begin() + 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows to append must be ", DataTypeName(to->dtype()), " rows of shape ",
                     FormatShape(absl::MakeConstSpan(to->shape()).subspan(1)), "; got ",
                     DataTypeName(rows.dtype()), " ", FormatShape(rows.shape())));
  }
  to->set_shape(0, to->shape(0) + rows.shape(0));
  to->mutable_raw_data()->append(rows.raw_data());
  return absl::OkStatus();
}

}  // namespace adaptd

#include "client/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/tensor.h"
#include "core/files.h"

namespace adaptd {
namespace {

absl::Status Malformed(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<std::string> Gunzip(const std::string& in, const std::string& path) {
  if (in.size() > UINT_MAX) return Malformed(path, "compressed file larger than 4 GiB");
  z_stream zs{};
  // 16 + MAX_WBITS: expect the gzip wrapper, not raw zlib.
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("inflateInit2 failed");
  struct End {
    z_stream* zs;
    ~End() { inflateEnd(zs); }
  } end{&zs};
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  char buffer[1 << 16];
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof(buffer);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    out.append(buffer, sizeof(buffer) - zs.avail_out);
    if (ret == Z_OK) continue;
    if (ret == Z_STREAM_END) {
      if (zs.avail_in == 0) return out;
      // Concatenated members (`cat a.gz b.gz`) decompress to the concatenation, as gunzip does.
      if (inflateReset(&zs) != Z_OK) return absl::InternalError("inflateReset failed");
      continue;
    }
    // With a whole free output buffer, no progress means the input ran out mid-stream.
    if (ret == Z_BUF_ERROR && zs.avail_in == 0) return Malformed(path, "truncated gzip data");
    return Malformed(path, absl::StrCat("corrupt gzip data (", zs.msg ? zs.msg : "no detail", ")"));
  }
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Decodes `n` big-endian elements of type `From` at `p` into little-endian `To`s.
template <typename From, typename To>
std::string FromBigEndian(const unsigned char* p, int64_t n) {
  std::string out(n * sizeof(To), '\0');
  for (int64_t i = 0; i < n; ++i) {
    unsigned char bytes[sizeof(From)];
    for (size_t b = 0; b < sizeof(From); ++b) bytes[b] = p[i * sizeof(From) + sizeof(From) - 1 - b];
    From v;
    std::memcpy(&v, bytes, sizeof(From));
    const To t = static_cast<To>(v);
    std::memcpy(out.data() + i * sizeof(To), &t, sizeof(To));
  }
  return out;
}

// Labels from a one-dimensional uint8 or int64 tensor; no label may be negative.
absl::StatusOr<std::vector<int64_t>> LabelsOf(const v1::Tensor& tensor, const std::string& path) {
  if (tensor.shape_size() != 1) {
    return Malformed(path, absl::StrCat("labels must be one-dimensional; got shape ",
                                        FormatShape(tensor.shape())));
  }
  std::vector<int64_t> labels;
  if (tensor.dtype() == v1::DATA_TYPE_UINT8) {
    absl::StatusOr<std::vector<uint8_t>> bytes = Uint8Values(tensor);
    if (!bytes.ok()) return bytes.status();
    labels.assign(bytes->begin(), bytes->end());
  } else if (tensor.dtype() == v1::DATA_TYPE_INT64) {
    absl::StatusOr<std::vector<int64_t>> values = Int64Values(tensor);
    if (!values.ok()) return values.status();
    labels = *std::move(values);
  } else {
    return Malformed(path,
                     absl::StrCat("labels must be integers; got ", DataTypeName(tensor.dtype())));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0) {
      return Malformed(path, absl::StrCat("labels must be >= 0; label ", i, " (counting from 0) is ",
                                          labels[i]));
    }
  }
  return labels;
}

// Examples from an example array and an optional labels array, read from the named files.
absl::StatusOr<ExampleSet> MakeExampleSet(v1::Tensor x, const std::string& x_path,
                                          const v1::Tensor* labels,
                                          const std::string& labels_path) {
  if (x.shape_size() < 1) return Malformed(x_path, "a scalar holds no examples");
  ExampleSet examples;
  if (x.dtype() == v1::DATA_TYPE_FLOAT32 || x.dtype() == v1::DATA_TYPE_UINT8) {
    examples.x = std::move(x);
  } else {
    absl::StatusOr<v1::Tensor> converted = ToFloat32(x);
    if (!converted.ok()) return converted.status();
    examples.x = *std::move(converted);
  }
  if (labels != nullptr) {
    absl::StatusOr<std::vector<int64_t>> y = LabelsOf(*labels, labels_path);
    if (!y.ok()) return y.status();
    if (static_cast<int64_t>(y->size()) != examples.size()) {
      return absl::InvalidArgumentError(absl::StrCat(labels_path, " has ", y->size(),
                                                     " labels but ", x_path, " has ",
                                                     examples.size(), " examples"));
    }
    examples.labels = *std::move(y);
  }
  examples.ids.resize(examples.size());
  for (int64_t i = 0; i < examples.size(); ++i) examples.ids[i] = i;
  return examples;
}

// Examples from the array `read` finds in `x_path` and, unless `labels_path` is empty, labels
// from the one in `labels_path`.
absl::StatusOr<ExampleSet> ReadArrays(const std::string& x_path, const std::string& labels_path,
                                      absl::StatusOr<v1::Tensor> (*read)(const std::string&)) {
  absl::StatusOr<v1::Tensor> x = read(x_path);
  if (!x.ok()) return x.status();
  if (labels_path.empty()) return MakeExampleSet(*std::move(x), x_path, nullptr, "");
  absl::StatusOr<v1::Tensor> labels = read(labels_path);
  if (!labels.ok()) return labels.status();
  return MakeExampleSet(*std::move(x), x_path, &*labels, labels_path);
}

// After `key` in a NumPy header dict: skips to the value following ':'.
absl::StatusOr<absl::string_view> NpyValue(absl::string_view header, absl::string_view key,
                                           const std::string& path) {
  const size_t at = header.find(key);
  if (at == absl::string_view::npos) {
    return Malformed(path, absl::StrCat("NPY header has no ", key));
  }
  const size_t colon = header.find(':', at + key.size());
  if (colon == absl::string_view::npos) return Malformed(path, "malformed NPY header");
  return absl::StripLeadingAsciiWhitespace(header.substr(colon + 1));
}

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view header, const std::string& path) {
  NpyHeader parsed;
  absl::StatusOr<absl::string_view> descr = NpyValue(header, "'descr'", path);
  if (!descr.ok()) return descr.status();
  if (descr->empty() || (descr->front() != '\'' && descr->front() != '"')) {
    return Malformed(path, "NPY descr is not a string (structured arrays are not supported)");
  }
  const size_t close = descr->find(descr->front(), 1);
  if (close == absl::string_view::npos) return Malformed(path, "malformed NPY descr");
  parsed.descr = std::string(descr->substr(1, close - 1));

  absl::StatusOr<absl::string_view> order = NpyValue(header, "'fortran_order'", path);
  if (!order.ok()) return order.status();
  if (absl::StartsWith(*order, "True")) {
    parsed.fortran_order = true;
  } else if (!absl::StartsWith(*order, "False")) {
    return Malformed(path, "malformed NPY fortran_order");
  }

  absl::StatusOr<absl::string_view> shape = NpyValue(header, "'shape'", path);
  if (!shape.ok()) return shape.status();
  const size_t end = shape->find(')');
  if (shape->empty() || shape->front() != '(' || end == absl::string_view::npos) {
    return Malformed(path, "malformed NPY shape");
  }
  for (absl::string_view dim : absl::StrSplit(shape->substr(1, end - 1), ',')) {
    dim = absl::StripAsciiWhitespace(dim);
    if (dim.empty()) continue;  // the trailing comma of a 1-tuple
    int64_t d;
    if (!absl::SimpleAtoi(dim, &d) || d < 0) {
      return Malformed(path, absl::StrCat("malformed NPY shape dimension '", dim, "'"));
    }
    parsed.shape.push_back(d);
  }
  return parsed;
}

absl::StatusOr<int> ResolveColumn(int column, int columns, const std::string& path) {
  const int resolved = column < 0 ? columns + column : column;
  if (resolved < 0 || resolved >= columns) {
    return Malformed(
        path, absl::StrCat("label column ", column, " is outside the ", columns, " columns"));
  }
  return resolved;
}

}  // namespace

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (bytes.ok() && bytes->size() >= 2 && static_cast<unsigned char>((*bytes)[0]) == 0x1f &&
      static_cast<unsigned char>((*bytes)[1]) == 0x8b) {
    return Gunzip(*bytes, path);
  }
  return bytes;
}

absl::StatusOr<v1::Tensor> ReadIdx(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes->data());
  const int64_t size = static_cast<int64_t>(bytes->size());
  if (size < 4) return Malformed(path, "too short for an IDX header");
  if (p[0] != 0 || p[1] != 0) return Malformed(path, "not an IDX file (bad magic)");
  const int type = p[2];
  const int ndim = p[3];
  if (ndim == 0) return Malformed(path, "IDX file with no dimensions");
  const int64_t header = 4 + 4 * int64_t{ndim};
  if (size < header) return Malformed(path, "truncated IDX header");
  std::vector<int64_t> shape(ndim);
  for (int i = 0; i < ndim; ++i) shape[i] = BigEndian32(p + 4 + 4 * i);
  absl::StatusOr<int64_t> n = NumElements(shape);
  if (!n.ok()) return Malformed(path, std::string(n.status().message()));

  int64_t element = 0;
  switch (type) {
    case 0x08:
    case 0x09:
      element = 1;
      break;
    case 0x0B:
      element = 2;
      break;
    case 0x0C:
    case 0x0D:
      element = 4;
      break;
    case 0x0E:
      element = 8;
      break;
    default:
      return Malformed(path, absl::StrCat("unknown IDX element type 0x", absl::Hex(type)));
  }
  if (*n > (size - header) / element) {
    return Malformed(path,
                     absl::StrCat("truncated: shape ", FormatShape(shape), " needs ", *n * element,
                                  " bytes of data; the file has ", size - header));
  }
  if (*n * element != size - header) {
    return Malformed(path, absl::StrCat(size - header - *n * element,
                                        " bytes after the data of shape ", FormatShape(shape)));
  }
  const unsigned char* data = p + header;
  switch (type) {
    case 0x08:
      return MakeTensor(v1::DATA_TYPE_UINT8, shape, bytes->substr(header));
    case 0x09:
      return MakeTensor(v1::DATA_TYPE_INT64, shape, FromBigEndian<int8_t, int64_t>(data, *n));
    case 0x0B:
      return MakeTensor(v1::DATA_TYPE_INT64, shape, FromBigEndian<int16_t, int64_t>(data, *n));
    case 0x0C:
      return MakeTensor(v1::DATA_TYPE_INT64, shape, FromBigEndian<int32_t, int64_t>(data, *n));
    case 0x0D:
      return MakeTensor(v1::DATA_TYPE_FLOAT32, shape, FromBigEndian<float, float>(data, *n));
    default:
      return MakeTensor(v1::DATA_TYPE_FLOAT64, shape, FromBigEndian<double, double>(data, *n));
  }
}

absl::StatusOr<ExampleSet> ReadIdxExamples(const std::string& images_path,
                                           const std::string& labels_path) {
  return ReadArrays(images_path, labels_path, ReadIdx);
}

absl::StatusOr<ExampleSet> ReadCsv(const std::string& path, const CsvOptions& options) {
  absl::StatusOr<std::string> text = ReadFileBytes(path);
  if (!text.ok()) return text.status();
  int columns = 0;
  int label = -1;
  int64_t first_line = 0;
  int64_t rows = 0;
  std::vector<float> x;
  std::vector<int64_t> labels;
  int64_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    if (line_number == 1 && options.skip_header) continue;
    line = absl::StripAsciiWhitespace(line);  // also the '\r' of CRLF files
    if (line.empty()) continue;
    const std::vector<absl::string_view> fields = absl::StrSplit(line, options.delimiter);
    const int count = static_cast<int>(fields.size());
    const std::string where = absl::StrCat(path, ":", line_number);
    if (columns == 0) {
      columns = count;
      first_line = line_number;
      if (options.has_labels) {
        absl::StatusOr<int> resolved = ResolveColumn(options.label_column, columns, path);
        if (!resolved.ok()) return resolved.status();
        label = *resolved;
        if (columns == 1) return Malformed(path, "no feature columns besides the label");
      }
    } else if (count != columns) {
      return Malformed(where, absl::StrCat(count, " columns; line ", first_line, " has ", columns));
    }
    for (int c = 0; c < count; ++c) {
      const absl::string_view field = absl::StripAsciiWhitespace(fields[c]);
      double value;
      // A feature must be finite as the float32 it is sent as (1e39 is not).
      if (!absl::SimpleAtod(field, &value) || !std::isfinite(value) ||
          (c != label && !std::isfinite(static_cast<float>(value)))) {
        std::string what = absl::StrCat("column ", c + 1, ": '", field, "' is not a finite number");
        if (rows == 0 && !options.skip_header) absl::StrAppend(&what, " (a header? skip it)");
        return Malformed(where, what);
      }
      if (c != label) {
        x.push_back(static_cast<float>(value));
      } else if (value < 0 || value != std::floor(value) || value > 9.0e15) {
        return Malformed(where, absl::StrCat("label '", field, "' is not a non-negative integer"));
      } else {
        labels.push_back(static_cast<int64_t>(value));
      }
    }
    ++rows;
  }
  if (rows == 0) return Malformed(path, "no examples");
  const int64_t features = columns - (label >= 0 ? 1 : 0);
  absl::StatusOr<v1::Tensor> tensor = FloatTensor(x, {rows, features});
  if (!tensor.ok()) return tensor.status();
  ExampleSet examples;
  examples.x = *std::move(tensor);
  examples.labels = std::move(labels);
  examples.ids.resize(rows);
  for (int64_t i = 0; i < rows; ++i) examples.ids[i] = i;
  return examples;
}

absl::StatusOr<v1::Tensor> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes->data());
  const int64_t size = static_cast<int64_t>(bytes->size());
  if (size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) {
    return Malformed(path, "not an NPY file (bad magic)");
  }
  const int major = p[6];
  int64_t header_len;
  int64_t offset;
  if (major == 1) {
    header_len = p[8] | (int64_t{p[9]} << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return Malformed(path, "truncated NPY header");
    header_len = p[8] | (int64_t{p[9]} << 8) | (int64_t{p[10]} << 16) | (int64_t{p[11]} << 24);
    offset = 12;
  } else {
    return Malformed(path, absl::StrCat("unsupported NPY format version ", major));
  }
  if (size < offset + header_len) return Malformed(path, "truncated NPY header");
  absl::StatusOr<NpyHeader> header =
      ParseNpyHeader(absl::string_view(bytes->data() + offset, header_len), path);
  if (!header.ok()) return header.status();
  if (header->fortran_order) {
    return Malformed(path, "Fortran-order arrays are not supported (save a C-order copy)");
  }
  const std::string& descr = header->descr;
  if (descr.size() == 3 && descr[0] == '>' && descr != ">u1" && descr != ">i1") {
    return Malformed(path, absl::StrCat("big-endian arrays ('", descr, "') are not supported"));
  }
  // int32 ("i4") is widened to int64 below: labels saved on some platforms default to it.
  struct NpyType {
    const char* kind;
    v1::DataType dtype;
    int64_t element;
  };
  static constexpr NpyType kTypes[] = {{"f4", v1::DATA_TYPE_FLOAT32, 4},
                                       {"f8", v1::DATA_TYPE_FLOAT64, 8},
                                       {"u1", v1::DATA_TYPE_UINT8, 1},
                                       {"i8", v1::DATA_TYPE_INT64, 8},
                                       {"i4", v1::DATA_TYPE_INT64, 4}};
  const absl::string_view kind = absl::string_view(descr).substr(std::min<size_t>(1, descr.size()));
  const NpyType* type = nullptr;
  for (const NpyType& t : kTypes) {
    if (kind == t.kind) type = &t;
  }
  if (type == nullptr) {
    return Malformed(path, absl::StrCat("unsupported NPY dtype '", descr,
                                        "'; expected float32, float64, uint8, int32 or int64"));
  }
  const v1::DataType dtype = type->dtype;
  const int64_t element = type->element;
  absl::StatusOr<int64_t> n = NumElements(header->shape);
  if (!n.ok()) return Malformed(path, std::string(n.status().message()));
  const int64_t data = size - offset - header_len;
  if (*n > data / element || *n * element != data) {
    return Malformed(path,
                     absl::StrCat("shape ", FormatShape(header->shape), " of ", descr, " needs ",
                                  *n * element, " bytes of data; the file has ", data));
  }
  std::string raw = bytes->substr(offset + header_len);
  if (element == 4 && dtype == v1::DATA_TYPE_INT64) {
    std::vector<int64_t> wide(*n);
    for (int64_t i = 0; i < *n; ++i) {
      int32_t v;
      std::memcpy(&v, raw.data() + 4 * i, 4);
      wide[i] = v;
    }
    return Int64Tensor(wide, header->shape);
  }
  return MakeTensor(dtype, header->shape, std::move(raw));
}

absl::StatusOr<ExampleSet> ReadNpyExamples(const std::string& x_path,
                                           const std::string& labels_path) {
  return ReadArrays(x_path, labels_path, ReadNpy);
}

absl::StatusOr<DataFormat> ParseDataFormat(const std::string& name) {
  if (name == "idx") return DataFormat::kIdx;
  if (name == "csv") return DataFormat::kCsv;
  if (name == "npy") return DataFormat::kNpy;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown data format '", name, "'; expected idx, csv or npy"));
}

absl::StatusOr<DataFormat> DataFormatOfPath(const std::string& path) {
  std::string name = absl::AsciiStrToLower(path.substr(path.find_last_of('/') + 1));
  if (absl::EndsWith(name, ".gz")) name.resize(name.size() - 3);
  if (absl::EndsWith(name, ".csv")) return DataFormat::kCsv;
  if (absl::EndsWith(name, ".npy")) return DataFormat::kNpy;
  if (absl::StrContains(name, "idx") || absl::StrContains(name, "ubyte")) return DataFormat::kIdx;
  return absl::InvalidArgumentError(
      absl::StrCat("cannot tell the format of ", path,
                   " from its name (.csv, .npy, or idx/ubyte in it); give --format=idx, csv or npy"));
}

absl::StatusOr<ExampleSet> ReadExamples(const std::string& path, DataFormat format,
                                        const std::string& labels_path, const CsvOptions& csv) {
  switch (format) {
    case DataFormat::kIdx:
      return ReadIdxExamples(path, labels_path);
    case DataFormat::kNpy:
      return ReadNpyExamples(path, labels_path);
    case DataFormat::kCsv:
      break;
  }
  return ReadCsv(path, csv);
}

absl::Status AppendExamples(ExampleSet& into, const ExampleSet& more) {
  if (into.x.dtype() == v1::DATA_TYPE_UNSPECIFIED && into.x.shape_size() == 0) {
    into = more;
    return absl::OkStatus();
  }
  const auto example_shape = [](const ExampleSet& d) {
    return std::vector<int64_t>(d.x.shape().begin() + 1, d.x.shape().end());
  };
  if (into.x.dtype() != more.x.dtype() || example_shape(into) != example_shape(more)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot append ", DataTypeName(more.x.dtype()), " examples of shape ",
                     FormatShape(example_shape(more)), " to ", DataTypeName(into.x.dtype()),
                     " examples of shape ", FormatShape(example_shape(into))));
  }
  if (into.labels.empty() != more.labels.empty() && into.size() > 0 && more.size() > 0) {
    return absl::InvalidArgumentError("cannot mix labelled and unlabelled examples");
  }
  const int64_t offset =
      into.ids.empty() ? 0 : *std::max_element(into.ids.begin(), into.ids.end()) + 1;
  into.x.mutable_raw_data()->append(more.x.raw_data());
  into.x.set_shape(0, into.x.shape(0) + more.size());
  into.labels.insert(into.labels.end(), more.labels.begin(), more.labels.end());
  for (int64_t id : more.ids) into.ids.push_back(offset + id);
  return absl::OkStatus();
}

absl::StatusOr<ExampleSet> TakeRows(const ExampleSet& examples, absl::Span<const int64_t> rows) {
  absl::StatusOr<v1::Tensor> x = GatherRows(examples.x, rows);
  if (!x.ok()) return x.status();
  ExampleSet out;
  out.x = *std::move(x);
  for (int64_t r : rows) {
    if (!examples.labels.empty()) out.labels.push_back(examples.labels[r]);
    out.ids.push_back(examples.ids[r]);
  }
  return out;
}

std::vector<int64_t> RowsWithLabels(const ExampleSet& examples, absl::Span<const int64_t> classes,
                                    int64_t limit) {
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < static_cast<int64_t>(examples.labels.size()); ++i) {
    if (limit > 0 && static_cast<int64_t>(rows.size()) == limit) break;
    if (std::find(classes.begin(), classes.end(), examples.labels[i]) != classes.end()) {
      rows.push_back(i);
    }
  }
  return rows;
}

absl::Status ReshapeExamples(ExampleSet& examples, absl::Span<const int64_t> example_shape) {
  const std::vector<int64_t> old(examples.x.shape().begin(), examples.x.shape().end());
  absl::StatusOr<int64_t> have = NumElements(absl::MakeConstSpan(old).subspan(1));
  absl::StatusOr<int64_t> want = NumElements(example_shape);
  if (!have.ok()) return have.status();
  if (!want.ok()) return want.status();
  if (*have != *want) {
    return absl::InvalidArgumentError(
        absl::StrCat("examples of shape ", FormatShape(absl::MakeConstSpan(old).subspan(1)),
                     " do not fit the model's input shape ", FormatShape(example_shape)));
  }
  // A reshape keeps the values in place, so it may only flatten, unflatten, or add and drop
  // axes of size 1: [32, 32, 3] -> [3, 32, 32] has the same count and would scramble every
  // image's channels.
  auto squeezed = [](absl::Span<const int64_t> shape) {
    std::vector<int64_t> out;
    for (int64_t d : shape) {
      if (d != 1) out.push_back(d);
    }
    return out;
  };
  const absl::Span<const int64_t> from = absl::MakeConstSpan(old).subspan(1);
  const std::vector<int64_t> a = squeezed(from), b = squeezed(example_shape);
  if (a.size() > 1 && b.size() > 1 && a != b) {
    return absl::InvalidArgumentError(absl::StrCat(
        "examples of shape ", FormatShape(from), " hold as many values as the model's input shape ",
        FormatShape(example_shape), " but in another layout; reorder their axes first (a "
        "reshape would mix them up)"));
  }
  examples.x.clear_shape();
  examples.x.add_shape(old.empty() ? 0 : old[0]);
  for (int64_t d : example_shape) examples.x.add_shape(d);
  return absl::OkStatus();
}

absl::StatusOr<v1::ExampleBatch> MakeBatch(const ExampleSet& examples, int64_t begin,
                                           int64_t count) {
  v1::ExampleBatch batch;
  absl::StatusOr<v1::Tensor> x = SliceRows(examples.x, begin, count);
  if (!x.ok()) return x.status();
  *batch.mutable_x() = *std::move(x);
  if (!examples.labels.empty()) {
    absl::StatusOr<v1::Tensor> y =
        Int64Tensor(absl::MakeConstSpan(examples.labels).subspan(begin, count), {count});
    if (!y.ok()) return y.status();
    *batch.mutable_y() = *std::move(y);
  }
  if (!examples.ids.empty()) {
    absl::StatusOr<v1::Tensor> ids =
        Int64Tensor(absl::MakeConstSpan(examples.ids).subspan(begin, count), {count});
    if (!ids.ok()) return ids.status();
    *batch.mutable_client_ids() = *std::move(ids);
  }
  return batch;
}

}  // namespace adaptd

#include "core/data/readers.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

// Caps what a header may claim before anything is allocated (4 GiB of payload).
constexpr int64_t kMaxElements = int64_t{1} << 32;

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

absl::Status CheckElements(const std::vector<int64_t>& shape, const char* format) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && n > kMaxElements / d)) {
      return absl::InvalidArgumentError(absl::StrCat(format, " header claims shape ",
                                                     ShapeString(shape), ": too large"));
    }
    n *= d;
  }
  return absl::OkStatus();
}

}  // namespace

Dataset Dataset::Select(const at::Tensor& index) const {
  return Dataset{x.index_select(0, index), y.index_select(0, index)};
}

absl::StatusOr<std::string> MaybeGunzip(absl::string_view bytes) {
  if (bytes.size() < 2 || static_cast<unsigned char>(bytes[0]) != 0x1f ||
      static_cast<unsigned char>(bytes[1]) != 0x8b) {
    return std::string(bytes);
  }
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("inflateInit2 failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  std::string out;
  char buf[1 << 16];
  int ret;
  do {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    ret = inflate(&zs, Z_NO_FLUSH);
    if (ret != Z_OK && ret != Z_STREAM_END) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError(absl::StrCat(
          "corrupt gzip data after ", out.size(), " decompressed bytes: ",
          zs.msg ? zs.msg : (ret == Z_BUF_ERROR ? "truncated stream" : "inflate error")));
    }
    out.append(buf, sizeof buf - zs.avail_out);
    if (out.size() > static_cast<size_t>(kMaxElements)) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError("gzip data decompresses to more than 4 GiB");
    }
  } while (ret != Z_STREAM_END);
  inflateEnd(&zs);
  return out;
}

absl::StatusOr<at::Tensor> ParseIdx(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 4 || p[0] != 0 || p[1] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an IDX file: expected a header starting with two zero bytes; got ", bytes.size(),
        " bytes", bytes.size() >= 2 ? absl::StrCat(" starting ", int{p[0]}, ", ", int{p[1]}) : ""));
  }
  const int type = p[2], rank = p[3];
  int elem = 0;
  at::ScalarType dtype;
  switch (type) {
    case 0x08: elem = 1; dtype = at::kByte; break;
    case 0x09: elem = 1; dtype = at::kChar; break;
    case 0x0B: elem = 2; dtype = at::kShort; break;
    case 0x0C: elem = 4; dtype = at::kInt; break;
    case 0x0D: elem = 4; dtype = at::kFloat; break;
    case 0x0E: elem = 8; dtype = at::kDouble; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "IDX type code 0x", absl::Hex(type), " is not one of 08, 09, 0B, 0C, 0D, 0E"));
  }
  if (rank < 1 || bytes.size() < 4 + 4 * static_cast<size_t>(rank)) {
    return absl::InvalidArgumentError(absl::StrCat("IDX header of rank ", rank, " needs ",
                                                   4 + 4 * rank, " bytes; got ", bytes.size()));
  }
  std::vector<int64_t> shape(rank);
  for (int i = 0; i < rank; ++i) shape[i] = BigEndian32(p + 4 + 4 * i);
  ADAPTD_RETURN_IF_ERROR(CheckElements(shape, "IDX"));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t offset = 4 + 4 * static_cast<size_t>(rank);
  const size_t need = offset + static_cast<size_t>(numel) * elem;
  if (bytes.size() != need) {
    return absl::InvalidArgumentError(absl::StrCat("IDX array of shape ", ShapeString(shape),
                                                   " needs ", need, " bytes; the file has ",
                                                   bytes.size()));
  }
  return CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor raw = at::empty(shape, at::TensorOptions().dtype(dtype));
    std::memcpy(raw.data_ptr(), p + offset, numel * elem);
    if (elem > 1) {  // IDX is big-endian; swap each element's bytes.
      auto* b = static_cast<unsigned char*>(raw.data_ptr());
      for (int64_t i = 0; i < numel; ++i) std::reverse(b + i * elem, b + (i + 1) * elem);
    }
    if (dtype == at::kByte) return raw;
    if (dtype == at::kFloat || dtype == at::kDouble) return raw.to(at::kFloat);
    return raw.to(at::kLong);
  });
}

absl::StatusOr<at::Tensor> ReadIdxFile(const std::string& path) {
  ADAPTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  ADAPTD_ASSIGN_OR_RETURN(std::string raw, MaybeGunzip(bytes));
  auto t = ParseIdx(raw);
  if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path, int64_t num_classes) {
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor images, ReadIdxFile(images_path));
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor labels, ReadIdxFile(labels_path));
  if (images.scalar_type() != at::kByte || images.dim() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(images_path, ": expected uint8 images [N, H, W]; got ",
                                                   DescribeTensor(images)));
  }
  if (labels.dim() != 1 || labels.size(0) != images.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(labels_path, ": expected ", images.size(0),
                                                   " labels; got ", DescribeTensor(labels)));
  }
  if (at::isFloatingType(labels.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(labels_path, ": expected integer labels; got ",
                                                   DescribeTensor(labels)));
  }
  labels = labels.to(at::kLong);
  if (labels.numel() > 0 && (labels.min().item<int64_t>() < 0 ||
                             labels.max().item<int64_t>() >= num_classes)) {
    return absl::InvalidArgumentError(absl::StrCat(labels_path, ": labels must lie in [0, ",
                                                   num_classes, "); found ", labels.min().item<int64_t>(),
                                                   "..", labels.max().item<int64_t>()));
  }
  Dataset d;
  d.x = images.to(at::kFloat).div_(255.0).unsqueeze(1);
  d.y = labels;
  return d;
}

absl::StatusOr<at::Tensor> ParseNpy(absl::string_view bytes) {
  static constexpr char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not an .npy file: expected the magic \\x93NUMPY and a header; got ", bytes.size(), " bytes"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  if (major == 1) {
    header_len = u[8] | (u[9] << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError(".npy header truncated");
    header_len = u[8] | (u[9] << 8) | (u[10] << 16) | (size_t{u[11]} << 24);
    offset = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(".npy format version ", major, " is not 1, 2 or 3"));
  }
  if (bytes.size() < offset + header_len) {
    return absl::InvalidArgumentError(absl::StrCat(".npy header needs ", offset + header_len,
                                                   " bytes; the file has ", bytes.size()));
  }
  const std::string header(bytes.substr(offset, header_len));
  auto field = [&](const std::string& key) -> std::string {
    const size_t k = header.find("'" + key + "'");
    if (k == std::string::npos) return "";
    size_t v = header.find(':', k);
    if (v == std::string::npos) return "";
    ++v;
    while (v < header.size() && header[v] == ' ') ++v;
    if (v >= header.size()) return "";
    if (header[v] == '\'') {
      const size_t e = header.find('\'', v + 1);
      return e == std::string::npos ? "" : header.substr(v + 1, e - v - 1);
    }
    if (header[v] == '(') {
      const size_t e = header.find(')', v);
      return e == std::string::npos ? "" : header.substr(v, e - v + 1);
    }
    const size_t e = header.find_first_of(",}", v);
    return header.substr(v, e == std::string::npos ? std::string::npos : e - v);
  };
  const std::string descr = field("descr"), fortran = field("fortran_order"), shape_s = field("shape");
  if (fortran != "False") {
    return absl::InvalidArgumentError(absl::StrCat(".npy must be C order (fortran_order False); got '", fortran, "'"));
  }
  if (shape_s.size() < 2 || shape_s.front() != '(' || shape_s.back() != ')') {
    return absl::InvalidArgumentError(absl::StrCat(".npy header has no readable shape: '", header, "'"));
  }
  std::vector<int64_t> shape;
  const std::string dims = shape_s.substr(1, shape_s.size() - 2);  // outlives the views below
  const std::vector<absl::string_view> parts = absl::StrSplit(dims, ',');
  for (size_t i = 0; i < parts.size(); ++i) {
    const absl::string_view part = absl::StripAsciiWhitespace(parts[i]);
    if (part.empty() && i + 1 == parts.size()) continue;  // "(3,)" and "()"
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(".npy shape has a bad dimension '", part, "'"));
    }
    shape.push_back(d);
  }
  ADAPTD_RETURN_IF_ERROR(CheckElements(shape, ".npy"));
  at::ScalarType dtype;
  int elem;
  if (descr == "<f4") { dtype = at::kFloat; elem = 4; }
  else if (descr == "<f8") { dtype = at::kDouble; elem = 8; }
  else if (descr == "|u1") { dtype = at::kByte; elem = 1; }
  else if (descr == "<i4") { dtype = at::kInt; elem = 4; }
  else if (descr == "<i8") { dtype = at::kLong; elem = 8; }
  else {
    return absl::InvalidArgumentError(absl::StrCat(".npy dtype '", descr,
                                                   "' is not one of <f4, <f8, |u1, <i4, <i8"));
  }
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t data_at = offset + header_len;
  const size_t need = data_at + static_cast<size_t>(numel) * elem;
  if (bytes.size() != need) {
    return absl::InvalidArgumentError(absl::StrCat(".npy array ", ShapeString(shape), " ", descr,
                                                   " needs ", need, " bytes; the file has ", bytes.size()));
  }
  return CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    if (numel > 0) std::memcpy(t.data_ptr(), bytes.data() + data_at, numel * elem);
    if (at::isFloatingType(dtype) && numel > 0 && !at::isfinite(t).all().item<bool>()) {
      return absl::InvalidArgumentError(".npy array holds values that are not finite (NaN or inf)");
    }
    if (dtype == at::kDouble) return t.to(at::kFloat);
    if (dtype == at::kInt) return t.to(at::kLong);
    return t;
  });
}

absl::StatusOr<at::Tensor> ReadNpyFile(const std::string& path) {
  ADAPTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  auto t = ParseNpy(bytes);
  if (!t.ok()) return absl::Status(t.status().code(), absl::StrCat(path, ": ", t.status().message()));
  return t;
}

absl::StatusOr<Dataset> ParseCsv(absl::string_view text, const CsvOptions& options) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  if (options.skip_lines < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CSV skip_lines must be >= 0; got ", options.skip_lines));
  }
  lines.erase(lines.begin(), lines.begin() + std::min<size_t>(lines.size(), options.skip_lines));
  if (lines.empty()) return absl::InvalidArgumentError("CSV is empty");
  size_t first = 0;
  int label_col = options.label_index;
  size_t ncols = std::vector<absl::string_view>(absl::StrSplit(lines[0], options.delimiter)).size();
  if (options.has_header) {
    first = 1;
    if (!options.label_column.empty()) {
      label_col = -2;
      int i = 0;
      for (absl::string_view name : absl::StrSplit(lines[0], options.delimiter)) {
        if (absl::StripAsciiWhitespace(name) == options.label_column) label_col = i;
        ++i;
      }
      if (label_col == -2) {
        return absl::InvalidArgumentError(absl::StrCat("CSV header has no column named '",
                                                       options.label_column, "'; header: '",
                                                       std::string(lines[0].substr(0, 200)), "'"));
      }
    }
  } else if (!options.label_column.empty()) {
    return absl::InvalidArgumentError("CSV label_column by name needs a header row");
  }
  if (ncols < 2) return absl::InvalidArgumentError(absl::StrCat("CSV needs at least 2 columns; got ", ncols));
  if (label_col == -1) label_col = static_cast<int>(ncols) - 1;
  if (label_col < 0 || label_col >= static_cast<int>(ncols)) {
    return absl::InvalidArgumentError(absl::StrCat("CSV label column ", label_col, " outside [0, ", ncols, ")"));
  }
  const int64_t n = static_cast<int64_t>(lines.size() - first);
  if (n == 0) return absl::InvalidArgumentError("CSV has a header but no rows");
  std::vector<float> feats;
  feats.reserve(n * (ncols - 1));
  std::vector<int64_t> labels;
  labels.reserve(n);
  for (size_t li = first; li < lines.size(); ++li) {
    std::vector<absl::string_view> cells = absl::StrSplit(lines[li], options.delimiter);
    if (cells.size() != ncols) {
      return absl::InvalidArgumentError(absl::StrCat("CSV line ", li + 1, " has ", cells.size(),
                                                     " columns; expected ", ncols));
    }
    for (size_t c = 0; c < ncols; ++c) {
      const absl::string_view cell = absl::StripAsciiWhitespace(cells[c]);
      if (static_cast<int>(c) == label_col) {
        int64_t label;
        double as_double;
        if (!absl::SimpleAtoi(cell, &label)) {
          // Cast only what fits: NaN or 1e19 to int64 is undefined behaviour.
          if (absl::SimpleAtod(cell, &as_double) && std::isfinite(as_double) &&
              std::abs(as_double) < 9.0e18 && as_double == std::trunc(as_double)) {
            label = static_cast<int64_t>(as_double);
          } else {
            return absl::InvalidArgumentError(absl::StrCat("CSV line ", li + 1, ": label '", cell,
                                                           "' is not an integer"));
          }
        }
        labels.push_back(label);
      } else {
        float v;
        if (!absl::SimpleAtof(cell, &v)) {
          return absl::InvalidArgumentError(absl::StrCat("CSV line ", li + 1, " column ", c + 1,
                                                         ": '", cell, "' is not a number"));
        }
        feats.push_back(v);
      }
    }
  }
  Dataset d;
  d.x = at::from_blob(feats.data(), {n, static_cast<int64_t>(ncols - 1)}, at::kFloat).clone();
  d.y = at::from_blob(labels.data(), {n}, at::kLong).clone();
  ADAPTD_RETURN_IF_ERROR(CheckFinite(d.x, "CSV features"));
  return d;
}

absl::StatusOr<Dataset> ReadCsvFile(const std::string& path, const CsvOptions& options) {
  ADAPTD_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  ADAPTD_ASSIGN_OR_RETURN(std::string text, MaybeGunzip(bytes));
  auto d = ParseCsv(text, options);
  if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(path, ": ", d.status().message()));
  return d;
}

}  // namespace adaptd

// Readers for the data formats users stream to adaptd: IDX (MNIST family, raw or gzip), CSV with
// a label column, and NumPy .npy arrays. Malformed input returns INVALID_ARGUMENT (NOT_FOUND for
// a missing file) naming what was expected and what was found; nothing crashes.
#ifndef ADAPTD_CORE_DATA_READERS_H_
#define ADAPTD_CORE_DATA_READERS_H_

#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adaptd {

// A labelled set: x float32 [N, ...], y int64 [N].
struct Dataset {
  at::Tensor x;
  at::Tensor y;
  int64_t size() const { return y.defined() ? y.size(0) : 0; }
  // Rows `index` (int64 [K]) of both tensors.
  Dataset Select(const at::Tensor& index) const;
};

// Decompresses gzip data, or returns the bytes unchanged when they carry no gzip magic.
absl::StatusOr<std::string> MaybeGunzip(absl::string_view bytes);

// Parses an IDX array (big-endian header: 0, 0, type, rank, dims). Types: 0x08 uint8 -> uint8
// tensor; 0x09 int8, 0x0B int16, 0x0C int32 -> int64; 0x0D float32, 0x0E float64 -> float32.
absl::StatusOr<at::Tensor> ParseIdx(absl::string_view bytes);
absl::StatusOr<at::Tensor> ReadIdxFile(const std::string& path);

// Fashion-MNIST style pair: images uint8 [N, 28, 28] scaled to [0, 1] as float32 [N, 1, 28, 28]
// and labels uint8 [N] as int64, checked against each other and against [0, num_classes).
absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path, int64_t num_classes = 10);

// Parses an .npy array (format 1.0/2.0/3.0, C order). dtypes: <f4, <f8 (-> float32), |u1, <i4,
// <i8 (-> uint8 / int64).
absl::StatusOr<at::Tensor> ParseNpy(absl::string_view bytes);
absl::StatusOr<at::Tensor> ReadNpyFile(const std::string& path);

struct CsvOptions {
  // Column holding the integer label: by name (needs a header) or by index when name is empty.
  std::string label_column;
  int label_index = -1;  // -1: the last column
  bool has_header = true;
  char delimiter = ',';
  // Lines to skip before the header (or the first row), e.g. 1 for scikit-learn's bundled CSVs,
  // whose first line holds counts and class names.
  int skip_lines = 0;
};

// Parses CSV text: every column other than the label is a float32 feature. ReadCsvFile also
// accepts gzip-compressed files.
absl::StatusOr<Dataset> ParseCsv(absl::string_view text, const CsvOptions& options);
absl::StatusOr<Dataset> ReadCsvFile(const std::string& path, const CsvOptions& options);

}  // namespace adaptd

#endif  // ADAPTD_CORE_DATA_READERS_H_

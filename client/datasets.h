// Example files read into wire tensors, without LibTorch: IDX (MNIST's format), CSV and NPY.
//
// Every reader also accepts its file gzip-compressed (recognised by its magic bytes, not its
// name). Malformed files give INVALID_ARGUMENT naming the file and what is wrong; unreadable
// ones NOT_FOUND.
#ifndef ADAPTD_CLIENT_DATASETS_H_
#define ADAPTD_CLIENT_DATASETS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "adaptd/v1/learning.pb.h"
#include "adaptd/v1/tensor.pb.h"

namespace adaptd {

// Examples as they go on the wire, with their labels.
struct ExampleSet {
  // float32 or uint8 [N, ...]; uint8 pixels are sent as they are (the server scales by 1/255).
  v1::Tensor x;
  // N labels, or empty when the file has none.
  std::vector<int64_t> labels;
  // N ids naming each example's place in its source: the row in the file, counted across the
  // files the set was concatenated from. Sent as client ids, so that Influence and MemoryMap
  // answers point back to the file.
  std::vector<int64_t> ids;

  int64_t size() const { return x.shape_size() > 0 ? x.shape(0) : 0; }
};

// The file's bytes, decompressed when it starts with the gzip magic.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);

// An IDX array: ubyte -> uint8, float -> float32, double -> float64, and the signed integer
// types -> int64. The IDX header and elements are big-endian; the result is little-endian.
absl::StatusOr<v1::Tensor> ReadIdx(const std::string& path);
// Images from an IDX file (e.g. uint8 [N, 28, 28]) and, unless `labels_path` is empty, labels
// from a one-dimensional integer IDX file with the same N.
absl::StatusOr<ExampleSet> ReadIdxExamples(const std::string& images_path,
                                           const std::string& labels_path);

struct CsvOptions {
  // Whether one column holds integer labels.
  bool has_labels = true;
  // That column; negative values count from the end (-1 = the last column).
  int label_column = -1;
  // Skip the first line (a header).
  bool skip_header = false;
  char delimiter = ',';
};
// One example per line: numeric columns, read as float32 [N, D]. Blank lines are skipped.
absl::StatusOr<ExampleSet> ReadCsv(const std::string& path, const CsvOptions& options = {});

// A NumPy .npy array (format 1.0 to 3.0) in C order and little-endian: float32, float64, uint8,
// int64 (int32 is widened to int64).
absl::StatusOr<v1::Tensor> ReadNpy(const std::string& path);
// Examples from an .npy array (float64 and int64 become float32, uint8 stays) and, unless
// `labels_path` is empty, labels from a one-dimensional integer .npy array with the same N.
absl::StatusOr<ExampleSet> ReadNpyExamples(const std::string& x_path,
                                           const std::string& labels_path);

enum class DataFormat { kIdx, kCsv, kNpy };
// "idx", "csv" or "npy".
absl::StatusOr<DataFormat> ParseDataFormat(const std::string& name);
// By file name: *.csv, *.npy (optionally with .gz), and IDX for names with "idx" or "ubyte".
absl::StatusOr<DataFormat> DataFormatOfPath(const std::string& path);
// Reads `path` in `format`; `labels_path` is the IDX or NPY labels file (ignored for CSV).
absl::StatusOr<ExampleSet> ReadExamples(const std::string& path, DataFormat format,
                                        const std::string& labels_path, const CsvOptions& csv = {});

// Appends `more` to `into`: same dtype and example shape, both labelled or neither. `more`'s
// ids are shifted to follow `into`'s, so that they keep counting rows.
absl::Status AppendExamples(ExampleSet& into, const ExampleSet& more);
// The examples at `rows`, in that order, with their labels and ids.
absl::StatusOr<ExampleSet> TakeRows(const ExampleSet& examples, absl::Span<const int64_t> rows);
// The rows whose label is one of `classes`, in file order, at most `limit` (0: all).
// REQUIRES: `examples` has labels.
std::vector<int64_t> RowsWithLabels(const ExampleSet& examples, absl::Span<const int64_t> classes,
                                    int64_t limit = 0);
// Gives every example the shape `example_shape` (e.g. [28, 28] -> [784], [784] -> [1, 28, 28]),
// keeping its values in order. INVALID_ARGUMENT if the element counts differ, or if both shapes
// have two or more axes (not counting axes of size 1) and differ: [32, 32, 3] -> [3, 32, 32]
// would need a transpose, not a reshape.
absl::Status ReshapeExamples(ExampleSet& examples, absl::Span<const int64_t> example_shape);
// Examples [begin, begin + count) as a batch: x, y (when labelled) and client ids.
absl::StatusOr<v1::ExampleBatch> MakeBatch(const ExampleSet& examples, int64_t begin,
                                           int64_t count);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_DATASETS_H_

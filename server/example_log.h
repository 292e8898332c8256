// The durable log of one task's examples (the on-disk layout: docs/api.md, "On disk").
//
// File format: a sequence of records [u32 length][u32 crc32c][u8 type][body], little-endian,
// where length counts the type byte and the body, and the checksum covers them. A kBatch body
// is a SerializeTensors map (split, x, y, ids, client_ids); a kCommit record has no body and
// makes every batch since the previous commit part of the log. One stream writes its batches
// and one commit record in a single append followed by fsync, so a stream is all-or-nothing:
// after a crash, Open() truncates whatever follows the last commit record (a torn write or a
// stream that never finished).
#ifndef ADAPTD_SERVER_EXAMPLE_LOG_H_
#define ADAPTD_SERVER_EXAMPLE_LOG_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace adaptd {

enum class ExampleSplit : int64_t { kTrain = 0, kEval = 1 };

// A validated batch: x float32 [B, input...], y int64 [B], ids int64 [B] (the server's),
// client_ids int64 [B] (-1 where the client gave none).
struct ExampleBatchData {
  ExampleSplit split = ExampleSplit::kTrain;
  at::Tensor x;
  at::Tensor y;
  at::Tensor ids;
  at::Tensor client_ids;
  int64_t size() const { return y.defined() ? y.size(0) : 0; }
};

// Rows [begin, end) of `batches` read as one sequence, as views of the batches that hold them
// (no copy; batches outside the range are skipped). 0 <= begin <= end <= the rows in all.
std::vector<ExampleBatchData> SliceBatches(const std::vector<ExampleBatchData>& batches,
                                           int64_t begin, int64_t end);

struct LogRecovery {
  std::vector<ExampleBatchData> batches;  // every committed batch, in order
  int64_t truncated_bytes = 0;            // dropped after the last commit record
};

// Thread-compatible: the owner serializes Append calls.
class ExampleLog {
 public:
  // Opens or creates the log at `path`, reads its committed batches into `recovery` and
  // truncates the file after the last commit record (a torn or uncommitted tail). DATA_LOSS if
  // a record fails its checksum while a valid record follows it (damage after the write, not
  // a crash), or if a whole record does not decode: the file is left as it is.
  static absl::StatusOr<std::unique_ptr<ExampleLog>> Open(const std::string& path,
                                                          LogRecovery* recovery);
  // An empty log at `path`: whatever a file there held (left by a model whose catalog rows are
  // gone) is discarded.
  static absl::StatusOr<std::unique_ptr<ExampleLog>> Create(const std::string& path);
  ~ExampleLog();

  ExampleLog(const ExampleLog&) = delete;
  ExampleLog& operator=(const ExampleLog&) = delete;

  // Appends the batches and a commit record, then fsyncs: durable when it returns OK. On
  // failure the file is cut back to its previous length.
  absl::Status AppendCommitted(const std::vector<ExampleBatchData>& batches);

  int64_t size_bytes() const { return size_; }

 private:
  static absl::StatusOr<std::unique_ptr<ExampleLog>> OpenFile(const std::string& path,
                                                              LogRecovery* recovery, bool fresh);
  ExampleLog(std::string path, int fd, int64_t size) : path_(std::move(path)), fd_(fd), size_(size) {}
  std::string path_;
  int fd_;
  int64_t size_;
  // Set when a failed append could not be cut back durably: what the file holds past size_ is
  // unknown, so no more appends until a restart recovers it from disk.
  bool broken_ = false;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_EXAMPLE_LOG_H_

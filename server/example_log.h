// The durable log of one task's examples (the on-disk layout: docs/api.md, "On disk").
//
// File format: a sequence of records [u32 length][u32 crc32c][u8 type][body], little-endian,
// where length counts the type byte and the body, and the checksum covers them. The first
// record is the log's key (16 random bytes, never sent to a client). A kBatch body is a
// SerializeTensors map (split, x, y, ids, client_ids); a kCommit record's body is the key, and
// it makes every batch since the previous commit part of the log. A stream writes its batches
// and fdatasyncs, then writes its commit record and fdatasyncs, so a stream is all-or-nothing
// and a commit on disk vouches for every byte before it: after a crash, Open() leaves out
// whatever follows the last commit record (a stream that never finished, torn in any order),
// and the next append cuts it from the file. No
// example's bytes can pass for a commit record without the key. (A log written before keys
// had none, and empty commit records: Open writes its committed records again under a key.)
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

// The memory a batch holds, as --max_stream_mb counts it: its inputs as float32, its labels,
// ids and client ids as int64, and 2 KiB for its four tensors themselves (about 1.7 KiB measured
// for four one-element tensors), so that many tiny batches cannot hold far more than they are
// charged.
int64_t HeldBytes(const ExampleBatchData& b);
// The most HeldBytes a batch may count: the log keeps each batch in one record, of at most 1 GiB.
constexpr int64_t kMaxBatchBytes = int64_t{1} << 30;

// Rows [begin, end) of `batches` read as one sequence, as views of the batches that hold them
// (no copy; batches outside the range are skipped). 0 <= begin <= end <= the rows in all.
std::vector<ExampleBatchData> SliceBatches(const std::vector<ExampleBatchData>& batches,
                                           int64_t begin, int64_t end);

struct LogRecovery {
  std::vector<ExampleBatchData> batches;  // every committed batch, in order
  int64_t truncated_bytes = 0;            // left out after the last commit record
};

// Thread-compatible: the owner serializes Append calls.
class ExampleLog {
 public:
  // Opens the log at `path` and reads its committed batches into `recovery`; what follows the
  // last commit record (an uncommitted tail) is ignored, and cut from the file by the first
  // AppendCommitted, so that opening alone leaves the file as it is (the evidence of damage,
  // if the caller finds some). A log without a key is replaced
  // by its committed records under a new key. DATA_LOSS, with the file left as
  // it is, if a commit record follows a record that cannot be read (damage after the write,
  // not a crash), if a whole record does not decode or is not one a log holds, or if the
  // first record is damaged.
  static absl::StatusOr<std::unique_ptr<ExampleLog>> Open(const std::string& path,
                                                          LogRecovery* recovery);
  // A new log at `path`, holding its key only, durable: whatever a file there held (left by a
  // model whose catalog rows are gone) is discarded.
  static absl::StatusOr<std::unique_ptr<ExampleLog>> Create(const std::string& path);

  ExampleLog(const ExampleLog&) = delete;
  ExampleLog& operator=(const ExampleLog&) = delete;

  // Appends the batches and then a commit record, each followed by fdatasync: durable when
  // it returns OK. On failure the file is cut back to its previous length.
  absl::Status AppendCommitted(const std::vector<ExampleBatchData>& batches);

  int64_t size_bytes() const { return size_; }
  // A failed append could not be cut back: the log takes no more until a restart.
  bool broken() const { return broken_; }

 private:
  static absl::StatusOr<std::unique_ptr<ExampleLog>> OpenFile(const std::string& path,
                                                              LogRecovery* recovery, bool fresh);
  ExampleLog(std::string path, int64_t size) : path_(std::move(path)), size_(size) {}
  // Durably cuts the uncommitted tail Open found, if any (a no-op otherwise).
  absl::Status CutUncommittedTail();
  std::string path_;  // opened for each append, not held: a server may hold many tasks' logs
  int64_t size_;
  std::string key_;  // the commit records' body
  // Set when a failed append could not be cut back durably: what the file holds past size_ is
  // unknown, so no more appends until a restart recovers it from disk.
  bool broken_ = false;
  // Open found an uncommitted tail past size_, still in the file.
  bool uncut_tail_ = false;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_EXAMPLE_LOG_H_

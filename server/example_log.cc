#include "server/example_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/tensor_io.h"
#include "server/crc32c.h"
#include "server/fs_util.h"

namespace adaptd {
namespace {

enum RecordType : uint8_t { kBatch = 1, kCommit = 2 };
constexpr size_t kHeaderBytes = 8;
// A batch larger than this is refused before it reaches the log (the gRPC limit is lower).
constexpr uint32_t kMaxRecordBytes = 1u << 30;

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

void AppendRecord(std::string& out, RecordType type, absl::string_view body) {
  std::string payload;
  payload.reserve(1 + body.size());
  payload.push_back(static_cast<char>(type));
  payload.append(body.data(), body.size());
  PutU32(out, static_cast<uint32_t>(payload.size()));
  PutU32(out, Crc32c(payload));
  out += payload;
}

// True when a whole record with a matching checksum starts at `pos`.
bool ValidRecordAt(const std::string& bytes, size_t pos) {
  if (pos + kHeaderBytes > bytes.size()) return false;
  const uint32_t len = GetU32(bytes.data() + pos);
  if (len == 0 || len > kMaxRecordBytes || pos + kHeaderBytes + len > bytes.size()) return false;
  return Crc32c(absl::string_view(bytes.data() + pos + kHeaderBytes, len)) ==
         GetU32(bytes.data() + pos + 4);
}

std::string EncodeBatch(const ExampleBatchData& b) {
  TensorMap m;
  m["split"] = ScalarTensor(static_cast<int64_t>(b.split));
  m["x"] = b.x;
  m["y"] = b.y;
  m["ids"] = b.ids;
  m["client_ids"] = b.client_ids;
  return SerializeTensors(m);
}

absl::StatusOr<ExampleBatchData> DecodeBatch(absl::string_view body) {
  ADAPTD_ASSIGN_OR_RETURN(TensorMap m, ParseTensors(body));
  ExampleBatchData b;
  ADAPTD_ASSIGN_OR_RETURN(int64_t split, GetInt(m, "split"));
  b.split = static_cast<ExampleSplit>(split);
  ADAPTD_ASSIGN_OR_RETURN(b.y, GetTensor(m, "y", at::kLong));
  const int64_t n = b.y.numel();
  ADAPTD_ASSIGN_OR_RETURN(b.x, GetTensor(m, "x", at::kFloat));
  ADAPTD_ASSIGN_OR_RETURN(b.ids, GetTensor(m, "ids", at::kLong, n));
  ADAPTD_ASSIGN_OR_RETURN(b.client_ids, GetTensor(m, "client_ids", at::kLong, n));
  return b;
}

absl::Status Errno(const std::string& what, const std::string& path);

absl::Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

std::vector<ExampleBatchData> SliceBatches(const std::vector<ExampleBatchData>& batches,
                                           int64_t begin, int64_t end) {
  std::vector<ExampleBatchData> out;
  int64_t offset = 0;  // rows before batch b
  for (const ExampleBatchData& b : batches) {
    const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + b.size());
    if (lo < hi) {
      ExampleBatchData part = b;
      if (hi - lo < b.size()) {
        part.x = b.x.narrow(0, lo - offset, hi - lo);
        part.y = b.y.narrow(0, lo - offset, hi - lo);
        part.ids = b.ids.narrow(0, lo - offset, hi - lo);
        part.client_ids = b.client_ids.narrow(0, lo - offset, hi - lo);
      }
      out.push_back(std::move(part));
    }
    offset += b.size();
    if (offset >= end) break;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ExampleLog>> ExampleLog::Open(const std::string& path,
                                                             LogRecovery* recovery) {
  return OpenFile(path, recovery, /*fresh=*/false);
}

absl::StatusOr<std::unique_ptr<ExampleLog>> ExampleLog::Create(const std::string& path) {
  LogRecovery ignored;
  return OpenFile(path, &ignored, /*fresh=*/true);
}

absl::StatusOr<std::unique_ptr<ExampleLog>> ExampleLog::OpenFile(const std::string& path,
                                                                 LogRecovery* recovery,
                                                                 bool fresh) {
  // Recovery opens a log that must exist: a task's row is written only after its first append
  // is durable, so a missing log lost acknowledged examples; creating it empty would hide that.
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (fresh ? O_CREAT | O_TRUNC : 0), 0644);
  if (fd < 0 && errno == ENOENT && !fresh) {
    return absl::DataLossError(absl::StrCat(path, " is missing: its acknowledged examples are lost"));
  }
  if (fd < 0) return Errno("open", path);
  auto log = std::unique_ptr<ExampleLog>(new ExampleLog(path, fd, 0));
  ADAPTD_RETURN_IF_ERROR(ServerFault(FsyncParentDirectory(path)));  // its entry is durable too
  absl::StatusOr<std::string> read = ReadFile(path);
  if (!read.ok()) return ServerFault(read.status());
  const std::string& bytes = *read;

  std::vector<ExampleBatchData> pending;
  size_t pos = 0;
  size_t committed_end = 0;
  while (pos + kHeaderBytes <= bytes.size()) {
    const uint32_t len = GetU32(bytes.data() + pos);
    const uint32_t crc = GetU32(bytes.data() + pos + 4);
    if (len == 0 || len > kMaxRecordBytes || pos + kHeaderBytes + len > bytes.size()) break;
    const absl::string_view payload(bytes.data() + pos + kHeaderBytes, len);
    if (Crc32c(payload) != crc) {
      // A torn write leaves a bad record only at the end. A valid record after this one means
      // the file was damaged after it was written: refuse rather than drop what follows.
      if (ValidRecordAt(bytes, pos + kHeaderBytes + len)) {
        return absl::DataLossError(absl::StrCat(path, ": the record at byte ", pos,
                                                " fails its checksum and valid records follow it"));
      }
      break;
    }
    // A record that passes its checksum was written whole: if it still does not decode, the
    // format is not ours (or a bug wrote it); never truncate acknowledged data over that.
    const auto type = static_cast<RecordType>(payload[0]);
    if (type == kBatch) {
      auto batch = DecodeBatch(payload.substr(1));
      if (!batch.ok()) {
        return absl::DataLossError(absl::StrCat(path, ": the batch record at byte ", pos,
                                                " does not decode: ", batch.status().message()));
      }
      pending.push_back(*std::move(batch));
    } else if (type == kCommit) {
      for (auto& b : pending) recovery->batches.push_back(std::move(b));
      pending.clear();
      committed_end = pos + kHeaderBytes + len;
    } else {
      return absl::DataLossError(absl::StrCat(path, ": the record at byte ", pos,
                                              " has unknown type ", static_cast<int>(type)));
    }
    pos += kHeaderBytes + len;
  }
  // What follows the last whole commit is cut, as the tail of a stream a crash interrupted. A
  // commit record anywhere in that tail means otherwise: a stream is acknowledged only after
  // fdatasync, which makes every byte before its commit durable, so damage before a commit that
  // reached the disk is damage to acknowledged data (a length field that lies, say, which the
  // loop above cannot step over). Refuse, rather than cut it away.
  const std::string commit = [] {
    std::string c;
    AppendRecord(c, kCommit, "");
    return c;
  }();
  if (committed_end != bytes.size() &&
      bytes.find(commit, committed_end + 1) != std::string::npos) {
    return absl::DataLossError(absl::StrCat(
        path, ": the log cannot be read past byte ", pos, ", and a committed stream follows; "
        "its examples were acknowledged, so the log is not cut there"));
  }
  recovery->truncated_bytes = static_cast<int64_t>(bytes.size() - committed_end);
  if (committed_end != bytes.size()) {
    if (::ftruncate(fd, static_cast<off_t>(committed_end)) != 0 || ::fsync(fd) != 0) {
      return Errno("truncate", path);
    }
  }
  log->size_ = static_cast<int64_t>(committed_end);
  return log;
}

ExampleLog::~ExampleLog() { ::close(fd_); }

absl::Status ExampleLog::AppendCommitted(const std::vector<ExampleBatchData>& batches) {
  if (broken_) {
    return absl::InternalError(absl::StrCat(
        path_, ": an earlier write failed and could not be undone; restart the server, which "
        "recovers the log from what is on disk"));
  }
  std::string out;
  for (const auto& b : batches) {
    const std::string body = EncodeBatch(b);
    if (body.size() + 1 > kMaxRecordBytes) {
      return absl::InvalidArgumentError(absl::StrCat("a batch of ", body.size(),
                                                     " bytes exceeds the log's record limit"));
    }
    AppendRecord(out, kBatch, body);
  }
  AppendRecord(out, kCommit, "");
  size_t done = 0;
  absl::Status status;
  while (done < out.size()) {
    const ssize_t n = ::pwrite(fd_, out.data() + done, out.size() - done,
                               static_cast<off_t>(size_ + static_cast<int64_t>(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      status = Errno("write", path_);
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (status.ok() && ::fdatasync(fd_) != 0) status = Errno("fsync", path_);
  if (!status.ok()) {
    // Leave no partial stream behind (Open() would drop it anyway). After a failed fdatasync
    // the page cache may already hold the commit: unless the cut is itself durable, a crash
    // could bring back a stream its client was told had failed, so the log takes no more.
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0 || ::fdatasync(fd_) != 0) broken_ = true;
    return status;
  }
  size_ += static_cast<int64_t>(out.size());
  return absl::OkStatus();
}

}  // namespace adaptd

#include "server/example_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/tensor_io.h"
#include "server/crc32c.h"
#include "server/fs_util.h"

namespace adaptd {
namespace {

enum RecordType : uint8_t { kBatch = 1, kCommit = 2, kKey = 3 };
constexpr size_t kHeaderBytes = 8;
constexpr size_t kKeyBytes = 16;
// A record's most bytes. Streams refuse batches over kMaxBatchBytes, which counts more than a
// batch's record takes.
constexpr uint32_t kMaxRecordBytes = static_cast<uint32_t>(kMaxBatchBytes);

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

absl::Status Errno(const std::string& what, const std::string& path) {
  return ServerErrno(what, path);
}

// Writes `bytes` at `offset`, whole.
absl::Status WriteAt(int fd, const std::string& path, absl::string_view bytes, int64_t offset) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                               static_cast<off_t>(offset + static_cast<int64_t>(done)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A file descriptor closed when it goes out of scope.
struct ScopedFd {
  explicit ScopedFd(int f) : fd(f) {}
  ~ScopedFd() {
    if (fd >= 0) ::close(fd);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  const int fd;
};

absl::Status Sync(int fd, const std::string& path) {
  return ::fdatasync(fd) == 0 ? absl::OkStatus() : Errno("fsync", path);
}

// A log's key: random, and never sent to a client, so no example's bytes can pass for one of
// its commit records.
std::string NewKey() {
  std::random_device random;
  std::string key;
  while (key.size() < kKeyBytes) {
    const uint32_t r = random();
    key.append(reinterpret_cast<const char*>(&r), sizeof r);
  }
  return key;
}

std::string CommitRecord(const std::string& key) {
  std::string c;
  AppendRecord(c, kCommit, key);
  return c;
}

// Durably cuts the file back to `size` bytes.
bool CutTo(int fd, int64_t size) {
  return ::ftruncate(fd, static_cast<off_t>(size)) == 0 && ::fdatasync(fd) == 0;
}

}  // namespace

int64_t HeldBytes(const ExampleBatchData& b) {
  constexpr int64_t kTensorsBytes = 2048;
  return b.x.numel() * static_cast<int64_t>(sizeof(float)) +
         b.size() * 3 * static_cast<int64_t>(sizeof(int64_t)) + kTensorsBytes;
}

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
  // The file is open only while it is read or written: a server may hold many tasks' logs.
  const ScopedFd file(::open(path.c_str(), O_RDWR | O_CLOEXEC | (fresh ? O_CREAT | O_TRUNC : 0), 0644));
  const int fd = file.fd;
  if (fd < 0 && errno == ENOENT && !fresh) {
    return absl::DataLossError(absl::StrCat(path, " is missing: its acknowledged examples are lost"));
  }
  if (fd < 0) return Errno("open", path);
  auto log = std::unique_ptr<ExampleLog>(new ExampleLog(path, 0));
  ADAPTD_RETURN_IF_ERROR(ServerFault(FsyncParentDirectory(path)));  // its entry is durable too
  if (fresh) {
    std::string key = NewKey();
    std::string record;
    AppendRecord(record, kKey, key);
    ADAPTD_RETURN_IF_ERROR(WriteAt(fd, path, record, 0));
    ADAPTD_RETURN_IF_ERROR(Sync(fd, path));
    log->key_ = std::move(key);
    log->size_ = static_cast<int64_t>(record.size());
    return log;
  }
  absl::StatusOr<std::string> read = ReadFile(path);
  if (!read.ok()) return ServerFault(read.status());
  const std::string& bytes = *read;

  std::vector<ExampleBatchData> pending;
  size_t pos = 0;
  size_t committed_end = 0;
  while (pos + kHeaderBytes <= bytes.size()) {
    const uint32_t len = GetU32(bytes.data() + pos);
    const uint32_t crc = GetU32(bytes.data() + pos + 4);
    // A torn write leaves a record that is cut short or fails its checksum, and not only at
    // the end of the file: pages of a stream that was being written reach the disk in any
    // order. Whether what follows was acknowledged is told by the commit records below.
    if (len == 0 || len > kMaxRecordBytes || pos + kHeaderBytes + len > bytes.size()) break;
    const absl::string_view payload(bytes.data() + pos + kHeaderBytes, len);
    if (Crc32c(payload) != crc) break;
    // A record that passes its checksum was written whole: if it still does not decode, the
    // format is not ours (or a bug wrote it); never truncate acknowledged data over that.
    const auto type = static_cast<RecordType>(payload[0]);
    const absl::string_view body = payload.substr(1);
    if (type == kBatch) {
      auto batch = DecodeBatch(body);
      if (!batch.ok()) {
        return absl::DataLossError(absl::StrCat(path, ": the batch record at byte ", pos,
                                                " does not decode: ", batch.status().message()));
      }
      pending.push_back(*std::move(batch));
    } else if (type == kCommit && body == log->key_) {
      for (auto& b : pending) recovery->batches.push_back(std::move(b));
      pending.clear();
      committed_end = pos + kHeaderBytes + len;
    } else if (type == kKey && pos == 0 && body.size() == kKeyBytes) {
      log->key_ = std::string(body);  // a log written before keys has none, and empty commits
      committed_end = pos + kHeaderBytes + len;
    } else {
      return absl::DataLossError(absl::StrCat(
          path, ": the record at byte ", pos, " (type ", static_cast<int>(type), ", ",
          body.size(), " bytes) is not one this log can hold"));
    }
    pos += kHeaderBytes + len;
  }
  // A log's first record was durable before its task was listed (the key at creation; in a log
  // without one, its first stream), so a log that cannot be read from its start is damaged.
  if (pos == 0 && !bytes.empty()) {
    return absl::DataLossError(absl::StrCat(path, ": the log's first record is damaged"));
  }
  // What follows the last whole commit is cut, as the tail of a stream a crash interrupted. A
  // commit record anywhere in that tail means otherwise: a commit is written only once its
  // stream's batches are durable, so damage before a commit that reached the disk is damage
  // to acknowledged data (a length field that lies, say, which the loop above cannot step
  // over). Refuse, rather than cut it away. (In a log without a key, the examples' own bytes
  // could pass for a commit record; such a log may be refused where cutting was safe.)
  if (committed_end != bytes.size() &&
      bytes.find(CommitRecord(log->key_), committed_end + 1) != std::string::npos) {
    return absl::DataLossError(absl::StrCat(
        path, ": the log cannot be read past byte ", pos, ", and a committed stream follows; "
        "its examples were acknowledged, so the log is not cut there"));
  }
  recovery->truncated_bytes = static_cast<int64_t>(bytes.size() - committed_end);
  if (log->key_.empty()) {
    // A log written before logs had keys: its committed records are written again under a new
    // key, in a new file that replaces it whole (what follows the last commit is left out), so
    // that from now on no example's bytes can pass for one of its commit records.
    const std::string key = NewKey();
    std::string upgraded;
    AppendRecord(upgraded, kKey, key);
    for (size_t p = 0; p < committed_end;) {
      const size_t whole = kHeaderBytes + GetU32(bytes.data() + p);
      if (static_cast<RecordType>(bytes[p + kHeaderBytes]) == kCommit) {
        upgraded += CommitRecord(key);
      } else {
        upgraded.append(bytes, p, whole);
      }
      p += whole;
    }
    ADAPTD_RETURN_IF_ERROR(ServerFault(WriteFileAtomically(path, upgraded)));
    log->key_ = key;
    log->size_ = static_cast<int64_t>(upgraded.size());
    return log;
  }
  // The tail is cut by the next append, not here: a model that the start then refuses as
  // damaged (a job that took more examples than the log holds, say) keeps its files as they
  // were, for whoever looks into it.
  log->size_ = static_cast<int64_t>(committed_end);
  log->uncut_tail_ = committed_end != bytes.size();
  return log;
}

absl::Status ExampleLog::CutUncommittedTail() {
  if (!uncut_tail_) return absl::OkStatus();
  const ScopedFd file(::open(path_.c_str(), O_WRONLY | O_CLOEXEC));
  if (file.fd < 0) return Errno("open", path_);
  if (!CutTo(file.fd, size_)) return Errno("truncate", path_);
  uncut_tail_ = false;
  return absl::OkStatus();
}

absl::Status ExampleLog::AppendCommitted(const std::vector<ExampleBatchData>& batches) {
  if (broken_) {
    return absl::InternalError(absl::StrCat(
        path_, ": an earlier write failed and could not be undone; restart the server, which "
        "recovers the log from what is on disk"));
  }
  // One record at a time, so that a stream is not held twice. The batches are durable before
  // their commit record is written, so a commit on disk vouches for every byte before it (Open
  // relies on it); one write and one fdatasync would let a crash leave the commit on disk and
  // an earlier page of its stream not.
  ADAPTD_RETURN_IF_ERROR(CutUncommittedTail());
  const ScopedFd file(::open(path_.c_str(), O_WRONLY | O_CLOEXEC));
  if (file.fd < 0) return Errno("open", path_);
  const int fd = file.fd;
  // Durably cuts the file back to size_ (what the log held before this append).
  auto cut = [&] { return CutTo(fd, size_); };
  // Leave no partial stream behind (Open() would drop it anyway), whether a write fails or
  // encoding throws. After a failed fdatasync the page cache may already hold the commit:
  // unless the cut is itself durable, a crash could bring back a stream its client was told
  // had failed, so the log takes no more.
  auto cut_back = [&] {
    if (!cut()) broken_ = true;
  };
  int64_t end = size_;
  absl::Status status;
  const std::string commit = CommitRecord(key_);
  try {
    for (const auto& b : batches) {
      std::string record;
      const std::string body = EncodeBatch(b);
      if (body.size() + 1 > kMaxRecordBytes) {
        status = absl::InvalidArgumentError(absl::StrCat("a batch of ", body.size(),
                                                         " bytes exceeds the log's record limit"));
        break;
      }
      AppendRecord(record, kBatch, body);
      status = WriteAt(fd, path_, record, end);
      if (!status.ok()) break;
      end += static_cast<int64_t>(record.size());
    }
  } catch (...) {
    cut_back();
    throw;
  }
  if (status.ok() && end > size_) status = Sync(fd, path_);
  if (status.ok()) status = WriteAt(fd, path_, commit, end);
  if (status.ok()) status = Sync(fd, path_);
  if (!status.ok()) {
    cut_back();
    return status;
  }
  size_ = end + static_cast<int64_t>(commit.size());
  return absl::OkStatus();
}

}  // namespace adaptd

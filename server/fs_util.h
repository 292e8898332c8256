// Directory helpers for the data directory.
#ifndef ADAPTD_SERVER_FS_UTIL_H_
#define ADAPTD_SERVER_FS_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd {

// A failure of the server's own files as a caller sees it: DATA_LOSS (damage) and
// RESOURCE_EXHAUSTED (a full disk or quota, no descriptor left: worth a retry once freed) as
// they are, anything else INTERNAL with the same message. core/files.h's other codes
// (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION) would read as a fault of the request.
absl::Status ServerFault(const absl::Status& status);

// `what path: strerror(errno)` for a failed call on one of the server's files, as ServerFault
// would pass it on.
absl::Status ServerErrno(const std::string& what, const std::string& path);

// mkdir -p; every directory it creates, and `path` itself, is made durable (its parent is
// fsynced).
absl::Status MakeDirs(const std::string& path);
// rm -r; OK if `path` does not exist. A direct child named `last` goes after every other.
absl::Status RemoveTree(const std::string& path, const std::string& last = "");
// The entries of a directory, without "." and "..".
absl::StatusOr<std::vector<std::string>> ReadDir(const std::string& path);
// The same, empty if it cannot be read.
std::vector<std::string> ListDir(const std::string& path);
// Whether `path` holds anything but directories, at any depth.
bool HoldsFiles(const std::string& path);

// An exclusive advisory lock (flock) on <dir>/LOCK, held until it is destroyed: two servers on
// one data directory would hand out the same example ids and version numbers and overwrite
// each other's checkpoints. The kernel drops it when the process dies, so a crash leaves none.
class DirectoryLock {
 public:
  // FAILED_PRECONDITION if another open file description holds it (another server, or this
  // process's own earlier lock).
  static absl::StatusOr<std::unique_ptr<DirectoryLock>> Acquire(const std::string& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  const int fd_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_FS_UTIL_H_

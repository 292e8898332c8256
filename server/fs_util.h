// Directory helpers for the data directory.
#ifndef ADAPTD_SERVER_FS_UTIL_H_
#define ADAPTD_SERVER_FS_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd {

// mkdir -p; every directory it creates is made durable (its parent is fsynced).
absl::Status MakeDirs(const std::string& path);
// rm -r; OK if `path` does not exist. A direct child named `last` goes after every other.
absl::Status RemoveTree(const std::string& path, const std::string& last = "");
// The entries of a directory, without "." and ".."; empty if it cannot be read.
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

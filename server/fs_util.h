// Directory helpers for the data directory.
#ifndef ADAPTD_SERVER_FS_UTIL_H_
#define ADAPTD_SERVER_FS_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace adaptd {

// mkdir -p; every directory it creates is made durable (its parent is fsynced).
absl::Status MakeDirs(const std::string& path);
// rm -r; OK if `path` does not exist.
absl::Status RemoveTree(const std::string& path);
// The entries of a directory, without "." and ".."; empty if it cannot be read.
std::vector<std::string> ListDir(const std::string& path);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_FS_UTIL_H_

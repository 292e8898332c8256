#include "server/fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace adaptd {

absl::Status ServerFault(const absl::Status& status) {
  if (status.ok() || status.code() == absl::StatusCode::kDataLoss ||
      status.code() == absl::StatusCode::kResourceExhausted) {
    return status;
  }
  return absl::InternalError(status.message());
}

absl::Status ServerErrno(const std::string& what, const std::string& path) {
  return ServerFault(FileError(errno, what, path));
}

absl::Status MakeDirs(const std::string& path) {
  std::string prefix;
  for (size_t pos = 0; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    prefix = path.substr(0, pos);
    if (prefix.empty()) continue;
    if (::mkdir(prefix.c_str(), 0755) == 0) {
      ADAPTD_RETURN_IF_ERROR(ServerFault(FsyncParentDirectory(prefix)));  // the entry is durable
    } else if (errno != EEXIST) {
      return ServerErrno("mkdir", prefix);
    } else if (struct stat st; ::stat(prefix.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
      // EEXIST says nothing of what exists: a file in a directory's place fails later, and
      // less clearly (a CreateModel's "Not a directory").
      return absl::InternalError(absl::StrCat("mkdir ", prefix, ": exists and is not a directory"));
    } else if (pos == std::string::npos) {
      // The directory asked for exists, but a crash may have come between its mkdir and that
      // fsync: make its entry durable now, as a fresh mkdir would have. (Ancestors that already
      // exist are the caller's, and may not be readable.)
      ADAPTD_RETURN_IF_ERROR(ServerFault(FsyncParentDirectory(prefix)));
    }
  }
  return absl::OkStatus();
}

absl::Status RemoveTree(const std::string& path, const std::string& last) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    return errno == ENOENT ? absl::OkStatus() : ServerErrno("stat", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0) {
      return ServerErrno("unlink", path);
    }
    return absl::OkStatus();
  }
  // A listing that fails must not pass for an empty directory: the marker would go first.
  ADAPTD_ASSIGN_OR_RETURN(const std::vector<std::string> children, ReadDir(path));
  for (const std::string& child : children) {
    if (child != last) ADAPTD_RETURN_IF_ERROR(RemoveTree(path + "/" + child));
  }
  if (!last.empty()) ADAPTD_RETURN_IF_ERROR(RemoveTree(path + "/" + last));
  if (::rmdir(path.c_str()) != 0) {
    return ServerErrno("rmdir", path);
  }
  return ServerFault(FsyncParentDirectory(path));
}

bool HoldsFiles(const std::string& path) {
  for (const std::string& child : ListDir(path)) {
    struct stat st;
    const std::string p = path + "/" + child;
    if (::lstat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || HoldsFiles(p)) return true;
  }
  return false;
}

absl::StatusOr<std::vector<std::string>> ReadDir(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) {
    return ServerErrno("opendir", path);
  }
  std::vector<std::string> out;
  int err = 0;
  while (true) {
    errno = 0;  // readdir's end and its failure both return null
    const dirent* e = ::readdir(dir);
    if (e == nullptr) {
      err = errno;
      break;
    }
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(dir);
  if (err != 0) return ServerFault(FileError(err, "readdir", path));
  return out;
}

std::vector<std::string> ListDir(const std::string& path) {
  absl::StatusOr<std::vector<std::string>> entries = ReadDir(path);
  return entries.ok() ? *std::move(entries) : std::vector<std::string>();
}

absl::StatusOr<std::unique_ptr<DirectoryLock>> DirectoryLock::Acquire(const std::string& dir) {
  const std::string path = dir + "/LOCK";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return ServerErrno("cannot open", path);
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          "data directory ", dir, " is in use by another adaptd server (", path,
          " is locked); one server per data directory"));
    }
    return ServerFault(FileError(err, "cannot lock", path));
  }
  return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd));
}

DirectoryLock::~DirectoryLock() { ::close(fd_); }

}  // namespace adaptd

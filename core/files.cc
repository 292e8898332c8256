#include "core/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace adaptd {
namespace {

absl::StatusCode CodeFor(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::StatusCode::kNotFound;
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
      return absl::StatusCode::kResourceExhausted;
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::StatusCode::kFailedPrecondition;
    case EISDIR:
      return absl::StatusCode::kInvalidArgument;
    default:
      return absl::StatusCode::kInternal;
  }
}


// What a pipe or a device may hold: /dev/zero would otherwise fill the memory.
constexpr size_t kMaxStreamBytes = size_t{1} << 30;

// Everything `fd` has from `out->size()` on (the offset, for a regular file), appended to
// `out`, up to `limit` bytes in all.
absl::Status ReadToEnd(int fd, const std::string& path, bool seekable, size_t limit,
                       std::string* out) {
  char buf[1 << 16];
  while (true) {
    const ssize_t n = seekable ? ::pread(fd, buf, sizeof buf, static_cast<off_t>(out->size()))
                               : ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::DataLossError(absl::StrCat("reading ", path, ": ", std::strerror(errno)));
    }
    if (n == 0) return absl::OkStatus();
    if (out->size() + static_cast<size_t>(n) > limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " holds more than ", limit >> 20, " MiB as a pipe or device; expected a file"));
    }
    out->append(buf, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> ReadOpen(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return FileError(errno, "cannot stat", path);
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory; expected a file"));
  }
  std::string out;
  if (!S_ISREG(st.st_mode)) {  // a pipe or a device: no size to check against
    absl::Status s = ReadToEnd(fd, path, /*seekable=*/false, kMaxStreamBytes, &out);
    if (!s.ok()) return s;
    return out;
  }
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, &out[done], out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(absl::StrCat(
          "reading ", path, " stopped at byte ", done, " of ", out.size(),
          n < 0 ? absl::StrCat(": ", std::strerror(errno)) : std::string(" (end of file)")));
    }
    done += static_cast<size_t>(n);
  }
  // Whatever was appended since the fstat (or all of a /proc file, whose size reads as 0).
  absl::Status s = ReadToEnd(fd, path, /*seekable=*/true, std::numeric_limits<size_t>::max(), &out);
  if (!s.ok()) return s;
  return out;
}

}  // namespace

absl::Status FileError(int err, absl::string_view what, absl::string_view path) {
  return absl::Status(CodeFor(err), absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FileError(errno, "cannot open", path);
  absl::StatusOr<std::string> out = ReadOpen(fd, path);
  ::close(fd);
  return out;
}

absl::Status FsyncParentDirectory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return FileError(errno, "cannot open directory", dir);
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) return FileError(err, "fsync", dir);
  return absl::OkStatus();
}

absl::Status ReplaceFile(const std::string& path,
                         const std::function<absl::Status(const WriteFn& write)>& produce) {
  // A name no other writer uses (this process's id and a counter), created exclusively, with
  // the ordinary mode under the umask (mkstemp's would be 0600).
  static std::atomic<uint64_t> counter{0};
  std::string temp;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; ++attempt) {
    temp = absl::StrCat(path, ".partial.", ::getpid(), ".", counter.fetch_add(1));
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) return FileError(errno, "cannot write", temp);
  absl::Status status = produce([&](absl::string_view data) {
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return FileError(errno, "writing", temp);
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  });
  if (status.ok() && ::fsync(fd) != 0) status = FileError(errno, "fsync", temp);
  if (::close(fd) != 0 && status.ok()) status = FileError(errno, "closing", temp);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = FileError(errno, absl::StrCat("cannot rename ", temp, " to"), path);
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return FsyncParentDirectory(path);  // the rename itself must survive a crash
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes) {
  return ReplaceFile(path, [&](const WriteFn& write) { return write(bytes); });
}

}  // namespace adaptd

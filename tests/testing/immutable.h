// Makes a file immutable (chattr +i), so that every write to it fails, even root's and even
// through a descriptor opened before: how the tests make the server's own files refuse writes.
// It needs root (CAP_LINUX_IMMUTABLE) and a filesystem that keeps the flag (ext4, xfs, btrfs).
#ifndef ADAPTD_TESTS_TESTING_IMMUTABLE_H_
#define ADAPTD_TESTS_TESTING_IMMUTABLE_H_

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <string>

namespace adaptd {

// Sets or clears the flag; false if this process or filesystem cannot.
inline bool SetImmutable(const std::string& path, bool on) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  int flags = 0;
  bool ok = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
  if (ok) {
    flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
    ok = ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
  }
  ::close(fd);
  return ok;
}

// Clears the flag when it goes out of scope, so that the temporary directory can be removed
// whatever the test's assertions did.
class ImmutableFile {
 public:
  explicit ImmutableFile(std::string path) : path_(std::move(path)), set_(SetImmutable(path_, true)) {}
  ~ImmutableFile() {
    if (set_) SetImmutable(path_, false);
  }
  ImmutableFile(const ImmutableFile&) = delete;
  ImmutableFile& operator=(const ImmutableFile&) = delete;
  bool set() const { return set_; }

 private:
  std::string path_;
  bool set_;
};

}  // namespace adaptd

#endif  // ADAPTD_TESTS_TESTING_IMMUTABLE_H_

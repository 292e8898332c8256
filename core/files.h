// Whole-file reads and durable replacement of a file: what the server, the core readers and the
// clients share. Abseil only (no LibTorch), so that the clients can link it too.
#ifndef ADAPTD_CORE_FILES_H_
#define ADAPTD_CORE_FILES_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adaptd {

// Failures name the file and carry one code for both the server and the clients (a server
// answering PERMISSION_DENIED would read as the caller's role): NOT_FOUND for a missing file or
// directory, RESOURCE_EXHAUSTED for a full disk or quota, FAILED_PRECONDITION for a file this
// process may not read or write, INTERNAL otherwise.

// "<what> <path>: <strerror>" with the code above for `err`, for callers that read or write a
// file themselves (in pieces, say).
absl::Status FileError(int err, absl::string_view what, absl::string_view path);

// The whole file, or an error. A directory is INVALID_ARGUMENT ("... is a directory; expected a
// file"). A pipe or a device is read to its end, up to 1 GiB (INVALID_ARGUMENT beyond: a device
// such as /dev/zero has none); a regular file to its end too, should it have grown (or report a
// size of 0, as /proc's do). A regular file that yields fewer bytes than its size is DATA_LOSS:
// a read that fails part-way must not pass for a shorter file, since callers (the example log's
// recovery) act on where a file ends.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// fsync()s the directory that holds `path`, so that a file created, renamed or removed there
// survives a crash.
absl::Status FsyncParentDirectory(const std::string& path);

// Replaces `path` with what `produce` hands to its `write` argument: a new file beside `path`
// under a name no other writer uses (`path`.partial.<pid>.<n>, created exclusively, mode 0644
// under the umask), fsync, rename over `path`, fsync of the directory. On an error before the
// rename, `produce`'s included, `path` is left as it was and the new file is removed. An error
// from the directory's fsync comes after the rename: `path` then holds the new content, but a
// crash may undo that.
using WriteFn = std::function<absl::Status(absl::string_view)>;
absl::Status ReplaceFile(const std::string& path,
                         const std::function<absl::Status(const WriteFn& write)>& produce);

// ReplaceFile with `bytes` as the whole content.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

}  // namespace adaptd

#endif  // ADAPTD_CORE_FILES_H_

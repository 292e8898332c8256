// Local files for the clients: whole reads with errno's codes, and writes that replace a file
// only once the new one is whole and on disk.
#ifndef ADAPTD_CLIENT_FILES_H_
#define ADAPTD_CLIENT_FILES_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adaptd {

// The bytes of a regular file. NOT_FOUND, PERMISSION_DENIED, ... from errno; INVALID_ARGUMENT
// for a directory or another file that is not a regular one.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// Writes what `produce` hands to its `write` argument into a new file beside `path` (a unique
// name, so concurrent writers do not mix), fsyncs it, renames it over `path` and fsyncs the
// directory. On any error, `produce`'s included, `path` is left as it was and the new file is
// removed. Local failures carry errno's code (RESOURCE_EXHAUSTED for a full disk).
absl::Status ReplaceFileDurably(
    const std::string& path,
    const std::function<absl::Status(const std::function<absl::Status(absl::string_view)>& write)>&
        produce);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_FILES_H_

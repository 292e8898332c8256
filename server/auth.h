// Bearer tokens with roles. A reader may query; a writer may also
// stream examples and cancel jobs; an admin may also create, delete, roll back, export and
// import models. With no tokens configured every call is allowed (a local, trusted setup).
#ifndef ADAPTD_SERVER_AUTH_H_
#define ADAPTD_SERVER_AUTH_H_

#include <string>
#include <utility>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"

namespace adaptd {

enum class Role { kReader = 0, kWriter = 1, kAdmin = 2 };

const char* RoleName(Role role);

class TokenAuth {
 public:
  TokenAuth() = default;
  // One "<token> <role>" per line; blank lines and lines starting with '#' are skipped.
  // INVALID_ARGUMENT naming the line for anything else.
  static absl::StatusOr<TokenAuth> Parse(const std::string& text);
  static absl::StatusOr<TokenAuth> FromFile(const std::string& path);

  bool enabled() const { return !tokens_.empty(); }
  // UNAUTHENTICATED without a known bearer token (metadata "authorization: Bearer <token>"),
  // PERMISSION_DENIED when its role is below `need`.
  absl::Status Check(const grpc::ServerContext& context, Role need) const;

 private:
  std::vector<std::pair<std::string, Role>> tokens_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_AUTH_H_

#include "server/auth.h"

#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/files.h"

namespace adaptd {
namespace {

// Compares without an early exit, so that timing does not reveal a token's prefix.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.empty() ? 1 : b.size())];
  return diff == 0 && !b.empty();
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kWriter:
      return "writer";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<TokenAuth> TokenAuth::Parse(const std::string& text) {
  TokenAuth auth;
  std::map<std::string, int> first_line;
  std::istringstream lines(text);
  std::string line;
  for (int n = 1; std::getline(lines, line); ++n) {
    std::istringstream words(line);
    std::string token, role, extra;
    if (!(words >> token) || token[0] == '#') continue;
    if (!(words >> role) || (words >> extra)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens file line ", n, ": expected \"<token> <role>\""));
    }
    Role r;
    if (role == "reader") {
      r = Role::kReader;
    } else if (role == "writer") {
      r = Role::kWriter;
    } else if (role == "admin") {
      r = Role::kAdmin;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokens file line ", n, ": role must be admin, writer or reader; got \"", role, "\""));
    }
    // Which of two roles a repeated token should have is not for the server to guess.
    const auto [first, added] = first_line.emplace(token, n);
    if (!added) {
      return absl::InvalidArgumentError(absl::StrCat("tokens file line ", n,
                                                     ": its token is already on line ",
                                                     first->second, "; each token must appear once"));
    }
    auth.tokens_.emplace_back(token, r);
  }
  return auth;
}

absl::StatusOr<TokenAuth> TokenAuth::FromFile(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text);
}

absl::Status TokenAuth::Check(const grpc::ServerContext& context, Role need) const {
  if (!enabled()) return absl::OkStatus();
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError(
        "this server requires a bearer token (metadata \"authorization: Bearer <token>\")");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("the authorization metadata must be \"Bearer <token>\"");
  }
  bool found = false;
  Role role = Role::kReader;
  for (const auto& [token, r] : tokens_) {
    if (ConstantTimeEquals(value, token)) {
      found = true;
      role = r;
    }
  }
  if (!found) return absl::UnauthenticatedError("unknown bearer token");
  if (static_cast<int>(role) < static_cast<int>(need)) {
    return absl::PermissionDeniedError(absl::StrCat("this call needs the ", RoleName(need),
                                                    " role; the token has ", RoleName(role)));
  }
  return absl::OkStatus();
}

}  // namespace adaptd

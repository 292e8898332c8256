// adaptd_client: the C++ client library. Links gRPC and the generated protos only (no LibTorch).
#ifndef ADAPTD_CLIENT_CLIENT_H_
#define ADAPTD_CLIENT_CLIENT_H_

#include <memory>
#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adaptd/v1/admin.grpc.pb.h"

namespace adaptd {

// The inverse of the server's ToGrpcStatus.
absl::Status FromGrpcStatus(const grpc::Status& status);

struct ClientOptions {
  // Must match the server's --max_message_mb.
  int max_message_bytes = 64 << 20;
  // Per-call deadline in seconds.
  double timeout_seconds = 30;
};

// Thread-safe: calls may run concurrently from many threads.
class AdaptdClient {
 public:
  // `target` is "host:port". Connects lazily; the first call reports UNAVAILABLE if no server
  // answers.
  static absl::StatusOr<std::unique_ptr<AdaptdClient>> Create(const std::string& target,
                                                              const ClientOptions& options = {});

  absl::StatusOr<v1::GetServerInfoResponse> GetServerInfo();

 private:
  AdaptdClient(std::unique_ptr<v1::AdminService::Stub> admin, const ClientOptions& options);
  std::unique_ptr<v1::AdminService::Stub> admin_;
  ClientOptions options_;
};

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_CLIENT_H_

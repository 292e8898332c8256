// The one place absl::Status becomes grpc::Status (and back, for the client).
#ifndef ADAPTD_SERVER_GRPC_STATUS_H_
#define ADAPTD_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace adaptd {

// Maps every absl::StatusCode to the gRPC code of the same meaning; the message is capped at
// 1 KiB with a truncation marker.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_GRPC_STATUS_H_

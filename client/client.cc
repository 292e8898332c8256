#include "client/client.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

namespace adaptd {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numeric values (both follow
  // google.rpc.Code); codes outside that range become UNKNOWN.
  const int code = static_cast<int>(status.error_code());
  const auto absl_code = (code > 0 && code <= 16) ? static_cast<absl::StatusCode>(code)
                                                   : absl::StatusCode::kUnknown;
  return absl::Status(absl_code, status.error_message());
}

AdaptdClient::AdaptdClient(std::unique_ptr<v1::AdminService::Stub> admin,
                           const ClientOptions& options)
    : admin_(std::move(admin)), options_(options) {}

absl::StatusOr<std::unique_ptr<AdaptdClient>> AdaptdClient::Create(const std::string& target,
                                                                   const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("target must be host:port; got ''");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  return std::unique_ptr<AdaptdClient>(
      new AdaptdClient(v1::AdminService::NewStub(channel), options));
}

absl::StatusOr<v1::GetServerInfoResponse> AdaptdClient::GetServerInfo() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_seconds * 1000)));
  v1::GetServerInfoResponse response;
  const absl::Status s =
      FromGrpcStatus(admin_->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &response));
  if (!s.ok()) return s;
  return response;
}

}  // namespace adaptd

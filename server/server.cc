#include "server/server.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/grpcpp.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "adaptd/v1/admin.grpc.pb.h"
#include "core/model.h"
#include "core/train.h"

#ifndef ADAPTD_VERSION
#define ADAPTD_VERSION "0.0.0"
#endif

namespace adaptd {
namespace {

class AdminServiceImpl final : public v1::AdminService::CallbackService {
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::GetServerInfoResponse* response) override {
    response->set_version(ADAPTD_VERSION);
    response->set_torch_version(TORCH_VERSION);
    response->set_device("cpu");
    response->set_intra_op_threads(at::get_num_threads());
    for (auto k : {OptimizerKind::kIvon, OptimizerKind::kAdam, OptimizerKind::kSgd}) {
      response->add_optimizers(OptimizerName(k));
    }
    for (auto a : {Architecture::kLogReg, Architecture::kMlp, Architecture::kLeNet5,
                   Architecture::kTorchScript}) {
      response->add_architectures(ArchitectureName(a));
    }
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

class Server::Impl {
 public:
  AdminServiceImpl admin;
  std::unique_ptr<grpc::Server> server;
};

Server::Server(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

Server::~Server() { Shutdown(0); }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&impl->admin);
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  return std::unique_ptr<Server>(new Server(std::move(impl), port));
}

void Server::Wait() { impl_->server->Wait(); }

void Server::Shutdown(double grace_seconds) {
  if (impl_ && impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  }
}

}  // namespace adaptd

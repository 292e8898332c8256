#include "server/server.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/server_credentials.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "server/services.h"

namespace adaptd {

class Server::Impl {
 public:
  Metrics metrics;
  int metrics_port = -1;
  TokenAuth auth;
  std::unique_ptr<BufferBudget> buffers;  // outlives the services and the gRPC server
  std::unique_ptr<Registry> registry;
  std::unique_ptr<v1::AdminService::Service> admin;
  std::unique_ptr<v1::LearningService::Service> learning;
  std::unique_ptr<v1::QueryService::Service> query;
  std::unique_ptr<grpc::Server> server;
  std::once_flag shutdown_once;
};

Server::Server(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

Server::~Server() { Shutdown(0); }

int Server::metrics_port() const { return impl_->metrics_port; }

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options) {
  if (options.max_message_bytes < (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("max_message_bytes must be at least 1 MiB; got ",
                                                   options.max_message_bytes));
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("mTLS (a client CA) needs the server's certificate and key");
  }
  if (options.keep_versions < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "keep_versions must be >= 0 (0: keep every version); got ", options.keep_versions));
  }
  if (options.max_buffered_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_buffered_bytes must be >= 1; got ", options.max_buffered_bytes));
  }
  if (options.queue_capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queue_capacity must be >= 1; got ", options.queue_capacity));
  }
  if (options.max_concurrent_jobs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrent_jobs must be >= 1; got ", options.max_concurrent_jobs));
  }
  if (options.max_threads < 4 || options.max_threads > 1000000) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_threads must be in [4, 1000000]; got ", options.max_threads));
  }
  if (options.training_nice < 0 || options.training_nice > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("training_nice must be in [0, 19]; got ", options.training_nice));
  }
  // gRPC and the metrics listener would take a port outside 16 bits modulo 65536, or say
  // "in use" for a negative one.
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port must be in [0, 65535] (0: any free port); got ", options.port));
  }
  if (options.metrics_port < -1 || options.metrics_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_port must be in [-1, 65535] (-1: off, 0: any free port); got ",
        options.metrics_port));
  }
  if (options.keep_jobs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_jobs must be >= 1; got ", options.keep_jobs));
  }
  ADAPTD_ASSIGN_OR_RETURN(const at::Device device, ParseDevice(options.device));
  auto impl = std::make_unique<Impl>();
  ADAPTD_ASSIGN_OR_RETURN(impl->auth, TokenAuth::Parse(options.tokens));
  RegistryOptions ro;
  ro.data_dir = options.data_dir;
  ro.queue_capacity = options.queue_capacity;
  ro.max_concurrent_jobs = options.max_concurrent_jobs;
  ro.training_nice = options.training_nice;
  ro.keep_versions = options.keep_versions;
  ro.keep_jobs = options.keep_jobs;
  ro.device = device;
  ro.metrics = &impl->metrics;
  ro.hold_training = true;  // until the port is bound
  ADAPTD_ASSIGN_OR_RETURN(impl->registry, Registry::Open(ro));
  if (options.metrics_port >= 0) {
    ADAPTD_ASSIGN_OR_RETURN(impl->metrics_port, impl->metrics.Serve(options.MetricsHost(), options.metrics_port));
  }

  ServiceContext sc;
  sc.registry = impl->registry.get();
  sc.metrics = &impl->metrics;
  sc.auth = &impl->auth;
  sc.max_message_bytes = options.max_message_bytes;
  sc.max_stream_bytes = options.max_stream_bytes;
  impl->buffers = std::make_unique<BufferBudget>(options.max_buffered_bytes, &impl->metrics);
  sc.buffers = impl->buffers.get();
  sc.device = device;
  impl->admin = MakeAdminService(sc);
  impl->learning = MakeLearningService(sc);
  impl->query = MakeQueryService(sc);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        options.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options.tls_client_ca;
    ssl.pem_key_cert_pairs.push_back({options.tls_key, options.tls_cert});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address, credentials, &port);
  // gRPC sets SO_REUSEPORT by default: a second server on a busy port would start and take
  // every other connection.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients ping calls that carry no data for a long time (the watch of a job queued behind a
  // long one) to find a connection that died silently; gRPC's default treats pings more often
  // than every 5 minutes as abuse and closes the connection. Every 10 s is accepted (the
  // clients' kMinKeepaliveSeconds and docs/api.md say the same).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10 * 1000);
  grpc::ResourceQuota quota("adaptd");
  // gRPC keeps one thread polling for new calls, so max_threads calls need one more.
  quota.SetMaxThreads(options.max_threads + 1);
  builder.SetResourceQuota(quota);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(impl->admin.get());
  builder.RegisterService(impl->learning.get());
  builder.RegisterService(impl->query.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address,
        options.tls_cert.empty()
            ? " (is the port in use?)"
            : " (is the port in use, or were the TLS certificate and key refused? gRPC's log "
              "above says which)"));
  }
  impl->registry->StartTraining();
  return std::unique_ptr<Server>(new Server(std::move(impl), port));
}

void Server::Wait() { impl_->server->Wait(); }

void Server::Shutdown(double grace_seconds) {
  if (!impl_) return;
  std::call_once(impl_->shutdown_once, [&] {
    // Training stops first: a job that a watcher keeps a call open for must not go on training
    // (and publish) through the grace period.
    if (impl_->registry) impl_->registry->InterruptJobs();
    if (impl_->server) {
      impl_->server->Shutdown(std::chrono::system_clock::now() +
                              std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
    }
    if (impl_->registry) impl_->registry->Shutdown();
  });
}

}  // namespace adaptd

// The adaptd gRPC server: owns the services and the grpc::Server that runs them.
#ifndef ADAPTD_SERVER_SERVER_H_
#define ADAPTD_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace adaptd {

struct ServerOptions {
  // Address to listen on; port 0 picks a free port (see Server::port()).
  std::string host = "127.0.0.1";
  int port = 50051;
  // Largest request or response message, in bytes. Clients must set the same limit.
  int max_message_bytes = 64 << 20;
};

// Thread-safe.
class Server {
 public:
  // Starts serving. UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The port actually bound.
  int port() const { return port_; }
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  // Stops accepting calls and waits (up to `grace_seconds`) for calls in flight.
  void Shutdown(double grace_seconds = 5.0);

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_SERVER_H_

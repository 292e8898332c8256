// The adaptd gRPC server: the registry of models, the three services, health and reflection,
// and the metrics endpoint.
#ifndef ADAPTD_SERVER_SERVER_H_
#define ADAPTD_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace adaptd {

struct ServerOptions {
  // Address to listen on; port 0 picks a free port (see Server::port()).
  std::string host = "127.0.0.1";
  int port = 50051;
  // Where the catalog, example logs and checkpoints live. Required.
  std::string data_dir;
  // Largest request or response message, in bytes. Clients must set the same limit.
  int max_message_bytes = 64 << 20;
  // "<token> <role>" lines (see server/auth.h); empty: no authentication.
  std::string tokens;
  // PEM contents. With a certificate and key the server speaks TLS only; with a client CA as
  // well it requires and verifies client certificates (mTLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Prometheus text on http://metrics_host:metrics_port/metrics; -1: off, 0: a free port. The
  // endpoint has neither TLS nor tokens: metrics_host (empty: `host`) can keep it on a private
  // interface while gRPC listens on every one.
  int metrics_port = -1;
  std::string metrics_host;
  const std::string& MetricsHost() const { return metrics_host.empty() ? host : metrics_host; }
  // Adaptation jobs queued per model, and trained at once across models.
  int64_t queue_capacity = 16;
  // Bytes of examples one stream may buffer before its end message.
  int64_t max_stream_bytes = int64_t{4} << 30;
  // What all streams and imports may hold together before their end.
  int64_t max_buffered_bytes = int64_t{8} << 30;
  int max_concurrent_jobs = 1;
  // gRPC handler threads (a synchronous server holds one per call in progress: an open stream or
  // WatchJob holds one for its whole life). A call that finds them all busy is refused with
  // RESOURCE_EXHAUSTED instead of starting a thread, so clients cannot exhaust the process's
  // threads. At least 4 (gRPC's pollers count against it).
  int max_threads = 1024;
  // Nice value of the threads that train (queries keep the server's priority).
  int training_nice = 10;
  // Retention: each model keeps the checkpoints of its newest N versions (0: every version).
  int64_t keep_versions = 0;
  // Each model keeps its unfinished jobs and its newest N finished ones in memory (ListJobs,
  // WatchJob, CancelJob); the catalog keeps them all. Bounds memory under online mode.
  int64_t keep_jobs = 1000;
  // Where adaptation jobs train: "cpu", "cuda" or "cuda:N". Queries and the stored state stay
  // on the CPU. A device this machine lacks fails Create with FAILED_PRECONDITION.
  std::string device = "cpu";
};

// Thread-safe.
class Server {
 public:
  // Recovers the data directory and starts serving. INVALID_ARGUMENT for bad options,
  // UNAVAILABLE if an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options);
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The ports actually bound (metrics: -1 when off).
  int port() const { return port_; }
  int metrics_port() const;
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  // Interrupts running adaptations first (they resume on the next start; no job starts after
  // this), stops accepting calls, waits (up to `grace_seconds`) for calls in flight, then stops
  // the models' actors.
  void Shutdown(double grace_seconds = 5.0);

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_SERVER_H_

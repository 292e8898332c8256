// The real `adaptd` binary as a child process, for tests that must see what a client sees:
// ports, restarts, kill -9.
#ifndef ADAPTD_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define ADAPTD_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "tests/testing/temp_dir.h"

namespace adaptd {

class ServerProcess {
 public:
  // Starts the binary with --data_dir, --port=0, --threads=1 and `extra_flags`, and waits for
  // its "listening on" line.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const std::string& data_dir, const std::vector<std::string>& extra_flags = {});
  ~ServerProcess();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  std::unique_ptr<AdaptdClient> Client(const std::string& token = "") const;

  // SIGKILL: no chance to flush or clean up.
  void Kill();
  // SIGTERM and wait; returns the exit status.
  int Terminate();

 private:
  ServerProcess(pid_t pid, int port, int metrics_port)
      : pid_(pid), port_(port), metrics_port_(metrics_port) {}
  pid_t pid_;
  int port_;
  int metrics_port_;
};

}  // namespace adaptd

#endif  // ADAPTD_TESTS_INTEGRATION_SERVER_PROCESS_H_

// The adaptd server binary. Flags become ServerOptions; SIGINT/SIGTERM shut down gracefully.
#include <signal.h>

#include <cstdio>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/server.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free one (printed on start)");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads");
ABSL_FLAG(int, max_message_mb, 64, "largest gRPC message in MiB; clients must match");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptd: continual-learning training service");
  absl::ParseCommandLine(argc, argv);
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  adaptd::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_mb) << 20;

  // Block the shutdown signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = adaptd::Server::Create(options);
  if (!server.ok()) {
    std::fprintf(stderr, "adaptd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("adaptd listening on %s:%d\n", options.host.c_str(), (*server)->port());
  std::fflush(stdout);
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::printf("adaptd: signal %d, shutting down\n", sig);
    std::fflush(stdout);
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  return 0;
}

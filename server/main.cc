// The adaptd server binary. Flags become ServerOptions; SIGINT/SIGTERM shut down gracefully
// (calls in flight get up to 5 s to finish, a running adaptation resumes on the next start).
#include <signal.h>

#include <cstdio>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "core/files.h"
#include "server/auth.h"
#include "server/server.h"

ABSL_FLAG(std::string, host, "127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)");
ABSL_FLAG(int, port, 50051, "gRPC port; 0 picks a free one (printed on start)");
ABSL_FLAG(std::string, data_dir, "", "catalog, example logs and checkpoints (required)");
ABSL_FLAG(int, threads, 1,
          "LibTorch intra-op threads shared by training and queries (more than the free cores "
          "makes OpenMP spin and everything slower)");
ABSL_FLAG(int, max_message_mb, 64, "largest gRPC message in MiB; clients must match");
ABSL_FLAG(std::string, tokens_file, "", "bearer tokens: one \"<token> <role>\" per line");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA for client certificates (enables mTLS)");
ABSL_FLAG(int, metrics_port, -1, "Prometheus metrics on this HTTP port; -1 off, 0 any free port");
ABSL_FLAG(std::string, metrics_host, "",
          "address the metrics port listens on (plain HTTP, no tokens); empty: --host");
ABSL_FLAG(int64_t, queue_capacity, 16, "adaptation jobs queued per model");
ABSL_FLAG(int64_t, max_stream_mb, 4096,
          "examples one stream may hold before its end message, in MiB (streams are "
          "all-or-nothing, so they are kept in memory until then); also the largest import");
ABSL_FLAG(int64_t, max_buffered_mb, 8192,
          "examples and snapshots that all streams and imports together may hold before their "
          "end, in MiB; a call that would pass it is refused with RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, keep_versions, 0,
          "each model keeps the checkpoints of its newest N versions; older versions stay listed "
          "but can no longer be queried or rolled back to (0: keep every version)");
ABSL_FLAG(int64_t, keep_jobs, 1000,
          "each model keeps its unfinished jobs and its newest N finished ones for ListJobs, "
          "WatchJob and CancelJob; older ones stay in the catalog only");
ABSL_FLAG(int, max_concurrent_jobs, 1, "adaptation jobs training at once across models");
ABSL_FLAG(int, max_threads, 1024,
          "calls in progress at once, each on its own gRPC handler thread (an open stream or "
          "WatchJob for its whole life); a call that finds none free is refused with "
          "RESOURCE_EXHAUSTED (4 to 1000000)");
ABSL_FLAG(int, training_nice, 10,
          "nice value of the training threads, so that queries come first (0: same priority)");

ABSL_FLAG(std::string, device, "cpu",
          "where adaptation jobs train: cpu, cuda or cuda:N (queries stay on the CPU)");

namespace {

std::string ReadOrDie(const std::string& path, const char* flag) {
  if (path.empty()) return "";
  auto text = adaptd::ReadFile(path);
  if (!text.ok()) {
    std::fprintf(stderr, "adaptd: --%s: %s\n", flag, text.status().ToString().c_str());
    std::exit(2);
  }
  return *text;
}

// A size flag in MiB as bytes; exits with the reason outside [1, max_mb].
int64_t MiB(int64_t mb, int64_t max_mb, const char* flag) {
  if (mb < 1 || mb > max_mb) {
    std::fprintf(stderr, "adaptd: --%s must be in [1, %lld] MiB; got %lld\n", flag,
                 static_cast<long long>(max_mb), static_cast<long long>(mb));
    std::exit(2);
  }
  return mb << 20;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (absl's default looks for a file named after the program).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] { return std::string("adaptd " ADAPTD_VERSION "\n"); };
  absl::SetFlagsUsageConfig(usage);
  // Abseil prints the program's name before this message.
  absl::SetProgramUsageMessage("continual-learning training service\n"
                               "  adaptd --data_dir=DIR [--port=50051] [--metrics_port=PORT (off by default)]");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "adaptd: takes flags only; got the argument \"%s\" (flags are --name=value)\n",
                 rest[1]);
    return 2;
  }
  if (absl::GetFlag(FLAGS_threads) < 1) {
    std::fprintf(stderr, "adaptd: --threads must be >= 1; got %d\n", absl::GetFlag(FLAGS_threads));
    return 2;
  }
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  adaptd::ServerOptions options;
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  // gRPC takes message sizes as an int.
  options.max_message_bytes =
      static_cast<int>(MiB(absl::GetFlag(FLAGS_max_message_mb), 2047, "max_message_mb"));
  options.tokens = ReadOrDie(absl::GetFlag(FLAGS_tokens_file), "tokens_file");
  if (!absl::GetFlag(FLAGS_tokens_file).empty()) {
    auto auth = adaptd::TokenAuth::Parse(options.tokens);
    if (auth.ok() && !auth->enabled()) {
      std::fprintf(stderr, "adaptd: --tokens_file names no token; refusing to run open\n");
      return 2;
    }
  }
  options.tls_cert = ReadOrDie(absl::GetFlag(FLAGS_tls_cert), "tls_cert");
  options.tls_key = ReadOrDie(absl::GetFlag(FLAGS_tls_key), "tls_key");
  options.tls_client_ca = ReadOrDie(absl::GetFlag(FLAGS_tls_client_ca), "tls_client_ca");
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  options.queue_capacity = absl::GetFlag(FLAGS_queue_capacity);
  options.max_stream_bytes =
      MiB(absl::GetFlag(FLAGS_max_stream_mb), int64_t{1} << 40, "max_stream_mb");
  options.max_buffered_bytes =
      MiB(absl::GetFlag(FLAGS_max_buffered_mb), int64_t{1} << 40, "max_buffered_mb");
  options.max_concurrent_jobs = absl::GetFlag(FLAGS_max_concurrent_jobs);
  options.max_threads = absl::GetFlag(FLAGS_max_threads);
  options.training_nice = absl::GetFlag(FLAGS_training_nice);
  options.keep_versions = absl::GetFlag(FLAGS_keep_versions);
  options.keep_jobs = absl::GetFlag(FLAGS_keep_jobs);
  options.device = absl::GetFlag(FLAGS_device);

  // Block the shutdown signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = adaptd::Server::Create(options);
  if (!server.ok()) {
    std::fprintf(stderr, "adaptd: %s\n", server.status().ToString().c_str());
    // A flag the server refuses is a usage error, as the checks above; any other failure to
    // start (a locked or damaged data directory, a port in use) is 1.
    return server.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("adaptd listening on %s:%d\n", options.host.c_str(), (*server)->port());
  if ((*server)->metrics_port() > 0) {
    std::printf("adaptd metrics on http://%s:%d/metrics\n", options.MetricsHost().c_str(),
                (*server)->metrics_port());
  }
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
  (*server)->Shutdown();
  return 0;
}

#include "tests/integration/server_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>
#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#ifndef ADAPTD_SERVER_BIN
#error "ADAPTD_SERVER_BIN must name the adaptd binary"
#endif

namespace adaptd {

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& data_dir, const std::vector<std::string>& extra_flags) {
  int out[2];
  if (::pipe(out) != 0) return absl::InternalError("pipe failed");
  std::vector<std::string> args = {ADAPTD_SERVER_BIN, "--data_dir=" + data_dir, "--port=0",
                                   "--threads=1"};
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // The server dies with the test, even when the test is killed before its destructors run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::perror("execv");
    ::_exit(127);
  }
  ::close(out[1]);
  // Read stdout lines until the gRPC port (and the metrics port, when asked for) are known.
  FILE* f = ::fdopen(out[0], "r");
  int port = -1, metrics_port = -1;
  const bool want_metrics = std::any_of(extra_flags.begin(), extra_flags.end(), [](const std::string& s) {
    return absl::StartsWith(s, "--metrics_port=") && s != "--metrics_port=-1";
  });
  char line[512];
  while ((port < 0 || (want_metrics && metrics_port < 0)) && std::fgets(line, sizeof(line), f)) {
    std::string s(line);
    const size_t colon = s.rfind(':');
    if (absl::StartsWith(s, "adaptd listening on ") && colon != std::string::npos) {
      (void)absl::SimpleAtoi(absl::StripSuffix(s.substr(colon + 1), "\n"), &port);
    } else if (absl::StartsWith(s, "adaptd metrics on ") && colon != std::string::npos) {
      (void)absl::SimpleAtoi(absl::StripSuffix(s.substr(colon + 1), "/metrics\n"), &metrics_port);
    }
  }
  // Keep draining stdout in the background so the server never blocks on a full pipe; the
  // thread ends when the server's end of the pipe closes.
  std::thread([f] {
    char rest[512];
    while (std::fgets(rest, sizeof(rest), f)) {
    }
    std::fclose(f);
  }).detach();
  if (port <= 0) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return absl::InternalError(absl::StrCat("adaptd did not start (exit status ", status, ")"));
  }
  return std::unique_ptr<ServerProcess>(new ServerProcess(pid, port, metrics_port));
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Kill();
}

std::unique_ptr<AdaptdClient> ServerProcess::Client(const std::string& token) const {
  ClientOptions o;
  o.token = token;
  o.timeout_seconds = 120;
  auto c = AdaptdClient::Create(target(), o);
  return c.ok() ? *std::move(c) : nullptr;
}

void ServerProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

int ServerProcess::Terminate() {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

}  // namespace adaptd

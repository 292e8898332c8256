// adaptctl: the command-line client.
//   adaptctl [--target=host:port] info
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_join.h"
#include "client/client.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "adaptd server address");
ABSL_FLAG(double, timeout, 30, "per-call deadline in seconds");

namespace {

int Info(adaptd::AdaptdClient& client) {
  auto info = client.GetServerInfo();
  if (!info.ok()) {
    std::fprintf(stderr, "adaptctl: %s\n", info.status().ToString().c_str());
    return 1;
  }
  std::printf("adaptd %s (LibTorch %s) on %s, %d intra-op threads\n", info->version().c_str(),
              info->torch_version().c_str(), info->device().c_str(), info->intra_op_threads());
  std::printf("optimizers:    %s\n", absl::StrJoin(info->optimizers(), ", ").c_str());
  std::printf("architectures: %s\n", absl::StrJoin(info->architectures(), ", ").c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptctl [--target=host:port] <command>\ncommands: info");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage());
    return 2;
  }
  adaptd::ClientOptions options;
  options.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  auto client = adaptd::AdaptdClient::Create(absl::GetFlag(FLAGS_target), options);
  if (!client.ok()) {
    std::fprintf(stderr, "adaptctl: %s\n", client.status().ToString().c_str());
    return 1;
  }
  const std::string command = args[1];
  if (command == "info") return Info(**client);
  std::fprintf(stderr, "adaptctl: unknown command '%s'\nusage: %s\n", command.c_str(),
               absl::ProgramUsageMessage());
  return 2;
}

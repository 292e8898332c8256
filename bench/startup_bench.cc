// What a server start costs per kept version, and the checksum that every start, publish and
// example-log record pays.
//  1. CRC-32C throughput over 64 MiB: the table (slicing-by-4) implementation against the
//     CPU's CRC32 instruction, alternating, median of the repetitions.
//  2. Server start: a data directory whose one model has many kept versions (the K-prior on an
//     MLP 784-256-256 with 200 memorable examples: each checkpoint holds the posterior and the
//     memory) against one with a single learnt version; the start is timed from
//     Server::Create to serving, alternating, and the difference per extra version reported.
//
//   ./build/bench/startup_bench --versions=100 --reps=5
#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <random>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/model_request.h"
#include "client/client.h"
#include "server/convert.h"
#include "server/crc32c.h"
#include "server/server.h"

ABSL_FLAG(int, versions, 100, "versions kept by the model of the many-version directory");
ABSL_FLAG(int, reps, 5, "repetitions of each measurement (alternating)");
ABSL_FLAG(std::string, json, "", "write the results here");

namespace adaptd {
namespace {

using bench::Median;
using bench::OrDie;
using bench::Stopwatch;

// GiB per second of each implementation over one buffer; dies if they disagree.
void CrcThroughput(int reps, double* portable_gbs, double* hardware_gbs) {
  std::string buffer(size_t{64} << 20, '\0');
  std::mt19937_64 gen(7);
  for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
    const uint64_t v = gen();
    std::copy_n(reinterpret_cast<const char*>(&v), 8, &buffer[i]);
  }
  const double gib = static_cast<double>(buffer.size()) / (1 << 30);
  std::vector<double> portable, hardware;
  for (int rep = 0; rep < reps; ++rep) {
    Stopwatch a;
    const uint32_t by_tables = crc32c_internal::ExtendPortable(0, buffer);
    portable.push_back(gib / a.Seconds());
    if (crc32c_internal::HardwareAvailable()) {
      Stopwatch b;
      const uint32_t by_instruction = crc32c_internal::ExtendHardware(0, buffer);
      hardware.push_back(gib / b.Seconds());
      if (by_instruction != by_tables) {
        bench::Die("CRC-32C", absl::InternalError("the two implementations disagree"));
      }
    }
  }
  *portable_gbs = Median(portable);
  *hardware_gbs = hardware.empty() ? 0 : Median(hardware);
}

ServerOptions Options(const std::string& dir) {
  ServerOptions o;
  o.port = 0;
  o.data_dir = dir;
  return o;
}

// A data directory with one model that learnt one task of 2,000 random examples, then
// `rollbacks` rollbacks (each publishes a version with a checkpoint of its own).
std::string MakeDataDir(int rollbacks) {
  char templ[] = "/tmp/adaptd_startup_XXXXXX";
  if (mkdtemp(templ) == nullptr) bench::Die("mkdtemp", absl::InternalError(std::strerror(errno)));
  const std::string dir = templ;
  auto server = OrDie(Server::Create(Options(dir)), "server");
  auto client = OrDie(AdaptdClient::Create(absl::StrCat("127.0.0.1:", server->port())), "client");
  OrDie(client->CreateModel(bench::MlpModelRequest("m", 1)).status(), "CreateModel");
  at::Generator gen = at::detail::createCPUGenerator(3);
  v1::ExampleBatch batch;
  *batch.mutable_x() = TensorToProto(at::rand({2000, 784}, gen));
  *batch.mutable_y() = TensorToProto(at::randint(0, 2, {2000}, gen, at::kLong));
  v1::StreamHeader h;
  h.set_model("m");
  auto streamed = OrDie(client->StreamExamples(h, {batch}), "StreamExamples");
  OrDie(client->WatchJob(streamed.job_ids(0)).status(), "WatchJob");
  for (int i = 0; i < rollbacks; ++i) OrDie(client->Rollback("m", 1).status(), "Rollback");
  server->Shutdown();
  return dir;
}

double StartSeconds(const std::string& dir) {
  Stopwatch clock;
  auto server = OrDie(Server::Create(Options(dir)), "server");
  const double seconds = clock.Seconds();
  server->Shutdown();
  return seconds;
}

int Main() {
  at::set_num_threads(1);
  const int reps = absl::GetFlag(FLAGS_reps);
  double portable = 0, hardware = 0;
  CrcThroughput(reps, &portable, &hardware);
  std::printf("CRC-32C over 64 MiB, median of %d: tables %.2f GiB/s, CRC32 instruction %.2f GiB/s "
              "(%.1fx)\n", reps, portable, hardware, hardware / portable);

  const int versions = absl::GetFlag(FLAGS_versions);
  const std::string one = MakeDataDir(0), many = MakeDataDir(versions - 2);
  std::vector<double> t_one, t_many;
  for (int rep = 0; rep < reps; ++rep) {
    t_one.push_back(StartSeconds(one));
    t_many.push_back(StartSeconds(many));
    std::printf("rep %d: start with 2 versions %.3f s, with %d versions %.3f s\n", rep,
                t_one.back(), versions, t_many.back());
    std::fflush(stdout);
  }
  const double per_version_ms = (Median(t_many) - Median(t_one)) / (versions - 2) * 1000;
  uintmax_t bytes = 0;
  for (const auto& f : std::filesystem::directory_iterator(many + "/models/m/versions")) {
    bytes += f.file_size();
  }
  std::printf("\ncheckpoints of the %d versions: %.1f MB in all\n", versions, bytes / 1e6);
  std::printf("\n| data directory | start (s, median of %d) |\n|---|---|\n", reps);
  std::printf("| 1 model, 2 versions | %.3f |\n| 1 model, %d versions | %.3f |\n", Median(t_one),
              versions, Median(t_many));
  std::printf("\nper extra version: %.2f ms\n", per_version_ms);
  bench::WriteJson(absl::GetFlag(FLAGS_json),
                   absl::StrCat("{\"crc_tables_gibs\": ", portable, ", \"crc_instruction_gibs\": ",
                                hardware, ", \"start_two_versions_s\": ", Median(t_one),
                                ", \"start_many_versions_s\": ", Median(t_many), ", \"versions\": ",
                                versions, ", \"per_version_ms\": ", per_version_ms, "}\n"));
  for (const std::string& d : {one, many}) {
    if (std::system(absl::StrCat("rm -rf '", d, "'").c_str()) != 0) {
      std::fprintf(stderr, "could not remove %s\n", d.c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace adaptd

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::Main();
}

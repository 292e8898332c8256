// The service's overhead, measured side by side in one process:
//  1. Ingest-and-adapt throughput: Split Fashion-MNIST (class-incremental, MLP 784-256-256,
//     the K-prior) learnt task by task, once by calling core's Adapt directly on tensors and
//     once through gRPC (stream every task to a server, wait for its job). Same config, same
//     seed; the service also validates, logs and fsyncs the examples, writes a checkpoint and
//     publishes a version per task. Repetitions alternate the two; medians are reported.
//  2. Predict latency at batch 1 and 256 (mean and Bayes modes), with the server idle and
//     while it adapts another model.
//
//   ./build/bench/service_bench --reps=3 --json=results/service.json
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bench/model_request.h"
#include "client/client.h"
#include "core/continual.h"
#include "core/data/tasks.h"
#include "server/convert.h"
#include "server/server.h"

ABSL_FLAG(int, tasks, 5, "Split Fashion-MNIST tasks to learn per run");
ABSL_FLAG(int64_t, per_task, 0, "training examples per task (0: all, about 12000)");
ABSL_FLAG(int64_t, epochs, 5, "epochs per task");
ABSL_FLAG(int, reps, 3, "repetitions of each throughput run (alternating)");
ABSL_FLAG(int, requests, 200, "Predict calls per latency cell (batch 256: a quarter)");
ABSL_FLAG(int64_t, stream_batch, 500, "examples per StreamExamples message");
ABSL_FLAG(std::string, json, "", "write the results here");

namespace adaptd {
namespace {

using bench::OrDie;
using bench::Median;
using bench::Stopwatch;

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return v[i];
}

std::vector<v1::ExampleBatch> Batches(const Dataset& d, int64_t size) {
  std::vector<v1::ExampleBatch> out;
  for (int64_t b = 0; b < d.size(); b += size) {
    const int64_t len = std::min(size, d.size() - b);
    v1::ExampleBatch batch;
    *batch.mutable_x() = TensorToProto(d.x.narrow(0, b, len));
    *batch.mutable_y() = TensorToProto(d.y.narrow(0, b, len));
    out.push_back(std::move(batch));
  }
  return out;
}

// Seconds to learn every task by calling Adapt directly.
double InProcess(const std::vector<TaskData>& tasks, const v1::CreateModelRequest& r) {
  const ModelSpec spec = OrDie(SpecFromProto(r.spec()), "spec");
  const AdaptConfig config = OrDie(ConfigFromProto(OrDie(NormalizeConfig(r.config()), "config")), "config");
  ContinualState state = OrDie(InitialState(spec, r.config().seed()), "initial state");
  Stopwatch clock;
  for (const TaskData& t : tasks) state = OrDie(Adapt(state, t, config), "Adapt").state;
  return clock.Seconds();
}

// Seconds from the first byte streamed to the last task's version published.
double ThroughService(const AdaptdClient& client, const std::vector<TaskData>& tasks,
                      const v1::CreateModelRequest& r) {
  OrDie(client.CreateModel(r).status(), "CreateModel");
  std::vector<std::vector<v1::ExampleBatch>> batches;
  for (const TaskData& t : tasks) batches.push_back(Batches(t.train, absl::GetFlag(FLAGS_stream_batch)));
  Stopwatch clock;
  for (size_t i = 0; i < tasks.size(); ++i) {
    v1::StreamHeader h;
    h.set_model(r.name());
    h.set_task_id(static_cast<int64_t>(i));
    auto response = OrDie(client.StreamExamples(h, batches[i]), "StreamExamples");
    for (const auto& id : response.job_ids()) {
      auto last = OrDie(client.WatchJob(id), "WatchJob");
      if (last.state() != v1::JOB_STATE_SUCCEEDED) {
        bench::Die("job", absl::InternalError(last.message()));
      }
    }
  }
  const double seconds = clock.Seconds();
  OrDie(client.DeleteModel(r.name()).status(), "DeleteModel");
  return seconds;
}

struct Latency {
  double p50_ms, p99_ms;
};

Latency MeasurePredict(const AdaptdClient& client, const v1::PredictRequest& request, int n) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) {
    Stopwatch clock;
    OrDie(client.Predict(request).status(), "Predict");
    ms.push_back(clock.Seconds() * 1000);
  }
  return {Quantile(ms, 0.5), Quantile(ms, 0.99)};
}

int Main() {
  at::set_num_threads(1);
  TaskStream stream = OrDie(SplitFashionMnist(kFashionMnistDir, /*multi_head=*/false), "data");
  std::vector<TaskData> tasks(stream.tasks.begin(), stream.tasks.begin() + absl::GetFlag(FLAGS_tasks));
  int64_t examples = 0;
  for (TaskData& t : tasks) {
    const int64_t n = absl::GetFlag(FLAGS_per_task);
    if (n > 0 && n < t.train.size()) t.train = t.train.Select(at::arange(n, at::kLong));
    t.ids = at::Tensor();
    examples += t.train.size();
  }

  char dir_template[] = "/tmp/adaptd_bench_XXXXXX";
  const std::string data_dir = OrDie(absl::StatusOr<std::string>(mkdtemp(dir_template)), "mkdtemp");
  ServerOptions options;
  options.port = 0;
  options.data_dir = data_dir;
  auto server = OrDie(Server::Create(options), "server");
  auto client = OrDie(AdaptdClient::Create(absl::StrCat("127.0.0.1:", server->port())), "client");

  // 1. Throughput.
  const int64_t epochs = absl::GetFlag(FLAGS_epochs);
  std::vector<double> direct, service, ratio;
  for (int rep = 0; rep < absl::GetFlag(FLAGS_reps); ++rep) {
    const double a = InProcess(tasks, bench::MlpModelRequest("unused", epochs));
    const double b = ThroughService(*client, tasks, bench::MlpModelRequest(absl::StrCat("tp", rep), epochs));
    direct.push_back(examples / a);
    service.push_back(examples / b);
    ratio.push_back(a / b);
    std::printf("rep %d: in-process %.1f s (%.0f ex/s), through gRPC %.1f s (%.0f ex/s), ratio %.3f\n",
                rep, a, examples / a, b, examples / b, a / b);
    std::fflush(stdout);
  }

  // 2. Latency: a model that has learnt task 0, idle and while another model adapts.
  OrDie(client->CreateModel(bench::MlpModelRequest("query", 1)).status(), "CreateModel");
  v1::StreamHeader h;
  h.set_model("query");
  auto r0 = OrDie(client->StreamExamples(h, Batches(tasks[0].train, 500)), "stream");
  OrDie(client->WatchJob(r0.job_ids(0)).status(), "WatchJob");
  const Dataset probe = stream.tests[0];
  struct Cell {
    std::string mode;
    int64_t batch;
    Latency idle, busy;
  };
  std::vector<Cell> cells;
  for (auto mode : {v1::PREDICT_MODE_MEAN, v1::PREDICT_MODE_BAYES}) {
    for (int64_t batch : {1, 256}) {
      cells.push_back({mode == v1::PREDICT_MODE_MEAN ? "mean" : "bayes (64 samples)", batch, {}, {}});
    }
  }
  auto request_for = [&](const Cell& c) {
    v1::PredictRequest p;
    p.set_model("query");
    p.set_mode(c.mode == "mean" ? v1::PREDICT_MODE_MEAN : v1::PREDICT_MODE_BAYES);
    *p.mutable_x() = TensorToProto(probe.x.narrow(0, 0, c.batch));
    return p;
  };
  const int n = absl::GetFlag(FLAGS_requests);
  for (Cell& c : cells) c.idle = MeasurePredict(*client, request_for(c), c.batch == 1 ? n : n / 4);
  OrDie(client->CreateModel(bench::MlpModelRequest("busy", 1000)).status(), "CreateModel");
  h.set_model("busy");
  auto busy = OrDie(client->StreamExamples(h, Batches(tasks[0].train, 500)), "stream");
  // Measure once the job is training (a watcher follows it in the background).
  std::atomic<bool> running{false};
  std::thread watcher([&] {
    (void)client->WatchJob(busy.job_ids(0), [&](const v1::JobStatus& st) {
      if (st.state() == v1::JOB_STATE_RUNNING && st.step() > 0) running = true;
    });
  });
  while (!running) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (Cell& c : cells) c.busy = MeasurePredict(*client, request_for(c), c.batch == 1 ? n : n / 4);
  const bool still_running = OrDie(client->GetModel("busy"), "GetModel").jobs_pending() > 0;
  OrDie(client->CancelJob(busy.job_ids(0)).status(), "CancelJob");
  watcher.join();

  std::printf("\n| | in-process Adapt | through gRPC | ratio |\n|---|---|---|---|\n");
  std::printf("| ingest + adapt (examples/s, median of %zu) | %.0f | %.0f | %.3f |\n", ratio.size(),
              Median(direct), Median(service), Median(ratio));
  std::printf("\n%lld examples in %d tasks, %lld epochs each\n", static_cast<long long>(examples),
              absl::GetFlag(FLAGS_tasks), static_cast<long long>(epochs));
  std::printf("\n| Predict | batch | idle p50 (ms) | idle p99 | adapting p50 | adapting p99 | p99 ratio |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::string json = absl::StrCat("{\"examples\": ", examples, ", \"ratio_median\": ", Median(ratio),
                                  ", \"direct_eps\": ", Median(direct), ", \"service_eps\": ",
                                  Median(service), ", \"latency\": [");
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    std::printf("| %s | %lld | %.2f | %.2f | %.2f | %.2f | %.2f |\n", c.mode.c_str(),
                static_cast<long long>(c.batch), c.idle.p50_ms, c.idle.p99_ms, c.busy.p50_ms,
                c.busy.p99_ms, c.busy.p99_ms / c.idle.p99_ms);
    absl::StrAppend(&json, i ? ", " : "", "{\"mode\": \"", c.mode, "\", \"batch\": ", c.batch,
                    ", \"idle_p50\": ", c.idle.p50_ms, ", \"idle_p99\": ", c.idle.p99_ms,
                    ", \"busy_p50\": ", c.busy.p50_ms, ", \"busy_p99\": ", c.busy.p99_ms, "}");
  }
  absl::StrAppend(&json, "]}\n");
  std::printf("\nthe adaptation was %s when the busy measurements ended\n",
              still_running ? "still running" : "already over (the busy figures are optimistic)");
  bench::WriteJson(absl::GetFlag(FLAGS_json), json);
  server->Shutdown();
  const std::string rm = absl::StrCat("rm -rf '", data_dir, "'");
  return std::system(rm.c_str()) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace adaptd

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::Main();
}

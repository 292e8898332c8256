// Every RPC of the real server, through the real C++ client.
#include <httplib.h>

#include "absl/synchronization/notification.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sqlite3.h>
#include <torch/torch.h>

#include "adaptd/v1/learning.grpc.pb.h"
#include "adaptd/v1/query.grpc.pb.h"
#include "core/status_macros.h"
#include "server/convert.h"
#include "tests/integration/fixtures.h"
#include "tests/integration/server_process.h"
#include "tests/testing/immutable.h"
#include "tests/testing/sqlite.h"

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

// Runs `sql` on the data directory's catalog beside the running server (WAL allows it).
void CatalogExec(const std::string& data_dir, const std::string& sql) {
  ASSERT_EQ(SqlExec(data_dir + "/catalog.sqlite", sql), "") << sql;
}

at::Tensor Floats(const v1::Tensor& t) {
  auto out = TensorFromProto(t, "response");
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : at::Tensor();
}

v1::PredictRequest PredictOn(const std::string& model, const at::Tensor& x, v1::PredictMode mode) {
  v1::PredictRequest r;
  r.set_model(model);
  *r.mutable_x() = TensorToProto(x);
  r.set_mode(mode);
  r.set_samples(32);
  r.set_seed(11);
  return r;
}

// Task 0 gets more examples after task 1: the store's ids, gathered task by task, are then not
// sorted (task 0's second stream has larger ids than task 1's). MemoryMap must still return each
// memorable example's own client id.
TEST(ServiceTest, MemoryMapClientIdsWhenATaskGrowsLater) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("o", /*multi=*/false)).ok());
  struct Range {
    int64_t first, count, client_base;
  };
  std::vector<Range> ranges;
  const std::vector<int> order = {0, 1, 0};
  for (size_t i = 0; i < order.size(); ++i) {
    const int t = order[i];
    const std::vector<int64_t> classes = {2 * t, 2 * t + 1};
    const int64_t base = 1000 * static_cast<int64_t>(i + 1);
    auto s = StreamData(*client, "o", t, v1::SPLIT_TRAIN, classes,
                        BlobTask(200, classes, 40 + static_cast<uint64_t>(i)), 64, false, base);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->ids_size(), 1);
    ranges.push_back({s->ids(0).first(), s->ids(0).count(), base});
    WaitJobs(*client, *s);
  }
  ASSERT_GT(ranges[2].first, ranges[1].first);  // task 0's second stream follows task 1's ids
  v1::MemoryMapRequest mm;
  mm.set_model("o");
  auto map = client->MemoryMap(mm);
  ASSERT_TRUE(map.ok()) << map.status();
  const at::Tensor ids = Floats(map->example_ids()), tasks = Floats(map->task_ids());
  const at::Tensor clients = Floats(map->client_ids());
  ASSERT_GT(ids.numel(), 0);
  EXPECT_GT(tasks.eq(1).sum().item<int64_t>(), 0);
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t id = ids[i].item<int64_t>();
    int64_t expected = -1;
    for (const Range& r : ranges) {
      if (id >= r.first && id < r.first + r.count) expected = r.client_base + id - r.first;
    }
    EXPECT_EQ(clients[i].item<int64_t>(), expected) << "example " << id;
  }
}

// A multi-head model's MemoryMap over every stored example, while a task it has no head for yet
// waits for its job: that task's examples are left out and the rest are scored.
TEST(ServiceTest, MemoryMapOfAllExamplesSkipsTasksWithoutAHead) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("h", /*multi=*/true, /*epochs=*/30)).ok());
  auto learnt = StreamData(*client, "h", 0, v1::SPLIT_TRAIN, {0, 1}, BlobTask(120, {0, 1}, 3));
  ASSERT_TRUE(learnt.ok()) << learnt.status();
  WaitJobs(*client, *learnt);
  ASSERT_TRUE(StreamData(*client, "h", 1, v1::SPLIT_TRAIN, {2, 3}, BlobTask(80, {2, 3}, 4), 64,
                         /*keep_open=*/true)
                  .ok());
  v1::MemoryMapRequest mm;
  mm.set_model("h");
  mm.set_scope(v1::SCOPE_ALL);
  auto map = client->MemoryMap(mm);
  ASSERT_TRUE(map.ok()) << map.status();
  const at::Tensor tasks = Floats(map->task_ids());
  EXPECT_EQ(tasks.numel(), 120);
  EXPECT_EQ(tasks.eq(0).sum().item<int64_t>(), 120);
  EXPECT_TRUE(std::isfinite(map->loo_nll()));
  EXPECT_GT(map->loo_accuracy(), 0.8);
}

// At the smallest message limit, on both sides, a snapshot larger than one message exports
// (each chunk and its framing under the limit) and imports back.
TEST(ServiceTest, ExportAndImportAtTheSmallestMessageLimit) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_message_mb=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions o;
  o.max_message_bytes = 1 << 20;
  auto client = AdaptdClient::Create((*server)->target(), o);
  ASSERT_TRUE(client.ok()) << client.status();
  v1::CreateModelRequest big = BlobModel("big", /*multi=*/false);
  big.mutable_spec()->clear_input_shape();
  big.mutable_spec()->add_input_shape(784);
  big.mutable_spec()->clear_hidden();
  big.mutable_spec()->add_hidden(600);  // 471k parameters: a snapshot of about 1.9 MB
  ASSERT_TRUE((*client)->CreateModel(big).ok());
  auto snapshot = (*client)->Export("big");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_GT(snapshot->size(), size_t{1} << 20);  // more than one message holds
  auto copy = (*client)->Import("copy", *snapshot);
  ASSERT_TRUE(copy.ok()) << copy.status();
  auto again = (*client)->Export("copy");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->size(), snapshot->size());
}

// A memory map of every example learnt can outgrow one message (84 bytes an example at 4
// classes: 13,000 examples take 1.1 MB). It is refused with the remedy the scope allows, and
// the memory's map, which fits, is answered.
TEST(ServiceTest, AMemoryMapOverTheMessageLimitNamesTheScopeThatFits) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_message_mb=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", /*multi=*/false, /*epochs=*/1)).ok());
  auto s = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(13000, {0, 1, 2}, 5), 4096);
  ASSERT_TRUE(s.ok()) << s.status();
  WaitJobs(*client, *s);
  v1::MemoryMapRequest all;
  all.set_model("m");
  all.set_scope(v1::SCOPE_ALL);
  const absl::Status refused = client->MemoryMap(all).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()),
              ::testing::HasSubstr("more than this server sends in one message (1048576, "
                                   "--max_message_mb): ask for scope memory"));
  // Refused from its lower bound, before any example was scored.
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("would take at least "));
  v1::MemoryMapRequest memory = all;
  memory.set_scope(v1::SCOPE_MEMORY);
  auto map = client->MemoryMap(memory);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(Floats(map->example_ids()).numel(), 20);
}

// Evaluate's matrix grows with versions times tasks: 500 versions of 300 tasks take 1.2 MB. The
// whole answer over the limit is refused by the server, with the page to ask for, and counted as
// such (not failed by gRPC's send and counted as OK). Pages answer, and the clients ask for the
// history a page at a time.
TEST(ServiceTest, AHistoryOverTheMessageLimitIsAskedForInPages) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_message_mb=1", "--metrics_port=0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", /*multi=*/false)).ok());
  for (int64_t task = 0; task < 300; ++task) {
    ASSERT_TRUE(StreamData(*client, "m", task, v1::SPLIT_EVAL, {}, BlobTask(4, {0, 1}, task)).ok());
  }
  for (int i = 0; i < 499; ++i) ASSERT_TRUE(client->Rollback("m", 0).ok());
  auto stub = v1::QueryService::NewStub(
      grpc::CreateChannel((*server)->target(), grpc::InsecureChannelCredentials()));
  auto evaluate = [&](int64_t first, int32_t max, v1::EvaluateResponse* response) {
    grpc::ClientContext ctx;
    v1::EvaluateRequest request;
    request.set_model("m");
    request.set_first_version(first);
    request.set_max_versions(max);
    return stub->Evaluate(&ctx, request, response);
  };
  v1::EvaluateResponse whole;
  const grpc::Status refused = evaluate(0, 0, &whole);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(),
              ::testing::HasSubstr("more than this server sends in one message (1048576, "
                                   "--max_message_mb): ask for a page of versions (max_versions, "
                                   "from first_version)"));
  EXPECT_EQ(MetricValue((*server)->metrics_port(),
                        "adaptd_requests_total{code=\"RESOURCE_EXHAUSTED\",method=\"Evaluate\"}"),
            1);
  v1::EvaluateResponse page;
  ASSERT_TRUE(evaluate(100, 150, &page).ok());
  ASSERT_EQ(page.rows_size(), 150);
  EXPECT_EQ(page.rows(0).version(), 100);
  EXPECT_EQ(page.rows(149).version(), 249);
  EXPECT_EQ(page.next_version(), 250);
  EXPECT_EQ(page.rows(0).accuracy_size(), 300);
  v1::EvaluateResponse tail;
  ASSERT_TRUE(evaluate(450, 150, &tail).ok());
  EXPECT_EQ(tail.rows_size(), 50);
  EXPECT_FALSE(tail.has_next_version());
  EXPECT_EQ(evaluate(-1, 10, &tail).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    // Refused before the model is looked up (and its late examples scored).
    grpc::ClientContext ctx;
    v1::EvaluateRequest bad;
    bad.set_model("absent");
    bad.set_max_versions(-1);
    const grpc::Status refused_page = stub->Evaluate(&ctx, bad, &tail);
    EXPECT_EQ(refused_page.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(refused_page.error_message(),
                ::testing::HasSubstr("first_version and max_versions must be >= 0"));
  }
  // The clients page: every row, in order, and the summaries.
  auto all = client->Evaluate("m");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows_size(), 500);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(all->rows(i).version(), i);
  EXPECT_FALSE(all->has_next_version());
  EXPECT_EQ(all->version(), 499);
  EXPECT_EQ(all->forgetting_size(), page.forgetting_size());
  auto versions = client->ListVersions("m");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->versions_size(), 500);
  EXPECT_EQ(versions->versions(499).version(), 499);
}

// The examples are durable in their log before their job is recorded in the catalog. When the
// catalog cannot record the job (here its write-ahead log refuses writes), a stream of examples
// is still acknowledged and says that no job learns them; a stream of none, which comes only to
// queue the job, fails with the reason. Once the catalog takes writes again, a closing stream
// queues the job, which learns them all.
TEST(ServiceTest, AStreamWhoseJobCannotBeQueuedSaysSo) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", /*multi=*/false)).ok());
  ASSERT_TRUE(StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(60, {0, 1}, 1), 64,
                         /*keep_open=*/true)
                  .ok());
  v1::StreamHeader header;
  header.set_model("m");
  header.set_task_id(0);
  {
    ImmutableFile frozen(dir.path() + "/catalog.sqlite-wal");
    if (!frozen.set()) GTEST_SKIP() << "needs root and a filesystem with immutable files";
    const absl::Status empty =
        client->StreamExamples(header, std::vector<v1::ExampleBatch>()).status();
    EXPECT_FALSE(empty.ok());
    EXPECT_THAT(std::string(empty.message()),
                ::testing::HasSubstr("no job was queued for task 0's examples not learnt yet: "
                                     "catalog " + dir.path() + "/catalog.sqlite"));
    EXPECT_THAT(std::string(empty.message()), ::testing::HasSubstr("nothing was stored"));
    auto stored = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 2));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->examples(), 40);
    EXPECT_EQ(stored->job_ids_size(), 0);
    EXPECT_THAT(stored->no_job_reason(),
                ::testing::HasSubstr("the examples are stored, but no job was queued to learn "
                                     "them"));
  }
  auto queued = client->StreamExamples(header, std::vector<v1::ExampleBatch>());
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_TRUE(queued->no_job_reason().empty());
  ASSERT_EQ(WaitJobs(*client, *queued), 1);
  auto info = client->GetModel("m");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tasks(0).train_examples(), 100);
  EXPECT_EQ(info->tasks(0).pending_examples(), 0);
}

// A new task's first stream is durable in its log before the task's row is written. When the
// catalog fails that write with anything but a full disk, the row may still have reached its
// file, so the stream may be stored: the answer says so, and its ids stay taken, so that a
// stream that comes back after a restart cannot share ids with a later one. (Here a trigger
// refuses the row, so it is not stored, and the task's next stream replaces the log.)
TEST(ServiceTest, ANewTasksStreamWhoseRowFailsMayBeStored) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", /*multi=*/false)).ok());
  auto first = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(30, {0, 1}, 1), 64,
                          /*keep_open=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_NO_FATAL_FAILURE(CatalogExec(
      dir.path(), "CREATE TRIGGER refuse_task BEFORE INSERT ON tasks WHEN NEW.task_id = 1 "
                  "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"));
  auto failed = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(20, {2, 3}, 2), 64,
                           /*keep_open=*/true);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
  EXPECT_THAT(std::string(failed.status().message()),
              ::testing::HasSubstr("refused by the test; the stream may or may not be stored"));
  EXPECT_EQ(client->GetModel("m")->tasks_size(), 1);
  ASSERT_NO_FATAL_FAILURE(CatalogExec(dir.path(), "DROP TRIGGER refuse_task;"));
  auto later = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(10, {2, 3}, 3), 64,
                          /*keep_open=*/true);
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(later->ids(0).first(), 30 + 20);
  auto info = client->GetModel("m");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->tasks_size(), 2);
  EXPECT_EQ(info->tasks(1).train_examples(), 10);
}

// An online stream whose first chunk's job the catalog refuses (a trigger refuses that one
// row) but whose second chunk's job it takes: the answer names the job and no reason, since the
// job takes every pending example when it starts, the first chunk's too.
TEST(ServiceTest, ALaterChunksJobCoversTheChunkThatHadNone) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest online = BlobModel("m", /*multi=*/false);
  online.mutable_config()->set_adapt_every(10);
  ASSERT_TRUE(client->CreateModel(online).ok());
  ASSERT_NO_FATAL_FAILURE(CatalogExec(
      dir.path(), "CREATE TRIGGER refuse_first BEFORE INSERT ON jobs WHEN NEW.end_pos = 10 "
                  "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"));
  auto stream = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(20, {0, 1}, 1), 10);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ(stream->examples(), 20);
  EXPECT_TRUE(stream->no_job_reason().empty()) << stream->no_job_reason();
  ASSERT_EQ(stream->job_ids_size(), 1);
  ASSERT_NO_FATAL_FAILURE(CatalogExec(dir.path(), "DROP TRIGGER refuse_first;"));
  WaitJobs(*client, *stream);
  auto info = client->GetModel("m");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tasks(0).pending_examples(), 0);
}

// CreateModel refuses spec fields that the architecture ignores, but a spec read back from
// GetModel, which shows the default activation for every model, creates its model again.
TEST(ServiceTest, ASpecReadBackCreatesItsModelAgain) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest lr = BlobModel("lr", /*multi=*/false);
  lr.mutable_spec()->set_architecture("logreg");
  lr.mutable_spec()->clear_hidden();
  ASSERT_TRUE(client->CreateModel(lr).ok());
  auto info = client->GetModel("lr");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->spec().activation(), "relu");
  v1::CreateModelRequest again = lr;
  again.set_name("lr2");
  *again.mutable_spec() = info->spec();
  const absl::Status created = client->CreateModel(again).status();
  EXPECT_TRUE(created.ok()) << created;
}

// A task's classes are a set: a later stream may name them in another order, not other ones.
TEST(ServiceTest, ALaterStreamNamesItsTasksClassesInAnyOrder) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("h", /*multi=*/true)).ok());
  ASSERT_TRUE(StreamData(*client, "h", 0, v1::SPLIT_TRAIN, {0, 1}, BlobTask(40, {0, 1}, 3), 64,
                         /*keep_open=*/true)
                  .ok());
  auto reordered = StreamData(*client, "h", 0, v1::SPLIT_TRAIN, {1, 0}, BlobTask(24, {0, 1}, 4),
                              64, /*keep_open=*/true);
  ASSERT_TRUE(reordered.ok()) << reordered.status();
  auto other = StreamData(*client, "h", 0, v1::SPLIT_TRAIN, {0, 2}, BlobTask(8, {0, 2}, 5), 64,
                          /*keep_open=*/true);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(other.status().message()),
              ::testing::HasSubstr("header.classes must match task 0's classes [0, 1]; got [0, 2]"));
  auto info = client->GetModel("h");
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->tasks_size(), 1);
  EXPECT_EQ(info->tasks(0).train_examples(), 64);
  EXPECT_THAT(std::vector<int64_t>(info->tasks(0).classes().begin(), info->tasks(0).classes().end()),
              ::testing::ElementsAre(0, 1));
}

TEST(ServiceTest, EveryRpcThroughTheClient) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();

  auto info = client->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->methods(0), "kprior");
  EXPECT_EQ(info->max_message_bytes(), 64 << 20);

  // A multi-head model learns two tasks; each task's evaluation data comes first.
  auto created = client->CreateModel(BlobModel("m", /*multi=*/true));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->current().version(), 0);
  EXPECT_EQ(created->config().method(), "kprior");  // defaults are filled in
  EXPECT_EQ(created->config().ivon().beta2(), 0.9999);
  EXPECT_EQ(created->config().weight_precision(), "posterior");
  const std::vector<std::vector<int64_t>> heads = {{0, 1}, {2, 3}};
  std::vector<Dataset> evals;
  int64_t version = 0;
  // Training example i of task t carries the client id 1000 (t + 1) + i; the server's ids for
  // the task start at first_id[t].
  std::vector<int64_t> first_id;
  for (int t = 0; t < 2; ++t) {
    evals.push_back(BlobTask(100, heads[t], 100 + t));
    ASSERT_TRUE(StreamData(*client, "m", t, v1::SPLIT_EVAL, heads[t], evals[t]).ok());
    auto streamed = StreamData(*client, "m", t, v1::SPLIT_TRAIN, heads[t], BlobTask(300, heads[t], t),
                               64, false, 1000 * (t + 1));
    ASSERT_TRUE(streamed.ok()) << streamed.status();
    EXPECT_EQ(streamed->examples(), 300);
    ASSERT_EQ(streamed->ids_size(), 1);
    first_id.push_back(streamed->ids(0).first());
    ASSERT_EQ(streamed->job_ids_size(), 1);
    std::vector<int64_t> steps;
    auto last = client->WatchJob(streamed->job_ids(0),
                                 [&](const v1::JobStatus& s) { steps.push_back(s.step()); });
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->state(), v1::JOB_STATE_SUCCEEDED) << last->message();
    EXPECT_EQ(last->total_steps(), 3 * 10);  // 3 epochs of ceil(300 / 32) steps
    EXPECT_GE(steps.size(), 2u);
    EXPECT_TRUE(std::is_sorted(steps.begin(), steps.end()));
    EXPECT_GT(last->version(), version);
    version = last->version();
  }

  auto model = client->GetModel("m");
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->current().version(), version);
  ASSERT_EQ(model->tasks_size(), 2);
  EXPECT_EQ(model->tasks(1).train_examples(), 300);
  EXPECT_EQ(model->tasks(1).pending_examples(), 0);
  EXPECT_EQ(model->current().memory_size(), 40);
  EXPECT_GT(model->current().mean_sigma(), 0);
  auto listed = client->ListModels();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->models_size(), 1);
  EXPECT_EQ(listed->models(0).name(), "m");

  // Predict in every mode, within task 1's head: the other head's classes get probability 0.
  for (auto mode : {v1::PREDICT_MODE_BAYES, v1::PREDICT_MODE_MEAN, v1::PREDICT_MODE_LINEARIZED}) {
    v1::PredictRequest r = PredictOn("m", evals[1].x.narrow(0, 0, 20), mode);
    r.set_task_id(1);
    auto p = client->Predict(r);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->version(), version);
    const at::Tensor probs = Floats(p->probs());
    ASSERT_EQ(probs.sizes(), (std::vector<int64_t>{20, kClasses}));
    EXPECT_TRUE(at::allclose(probs.sum(1), at::ones({20}), 1e-4, 1e-5));
    EXPECT_EQ(probs.narrow(1, 0, 2).abs().max().item<float>(), 0.0f);
    const at::Tensor labels = Floats(p->labels());
    EXPECT_GT(labels.eq(evals[1].y.narrow(0, 0, 20)).to(at::kFloat).mean().item<float>(), 0.7);
    const at::Tensor mi = Floats(p->mutual_information());
    if (mode == v1::PREDICT_MODE_MEAN) {
      EXPECT_EQ(mi.abs().max().item<float>(), 0.0f);
    } else {
      EXPECT_GT(mi.max().item<float>(), 0.0f);
    }
  }

  // Influence over the memory and over every stored example: ids the streams were given.
  for (auto scope : {v1::SCOPE_MEMORY, v1::SCOPE_ALL}) {
    v1::InfluenceRequest r;
    r.set_model("m");
    *r.mutable_x() = TensorToProto(evals[0].x[0]);
    r.set_top_k(5);
    r.set_scope(scope);
    r.set_task_id(0);
    auto inf = client->Influence(r);
    ASSERT_TRUE(inf.ok()) << inf.status();
    EXPECT_EQ(inf->examples_scored(), scope == v1::SCOPE_ALL ? 300 : 20);
    ASSERT_EQ(inf->examples_size(), 5);
    for (const auto& e : inf->examples()) {
      EXPECT_EQ(e.task_id(), 0);
      EXPECT_GE(e.example_id(), 100);  // task 0's train ids follow its 100 eval ids
      EXPECT_LT(e.example_id(), 400);
      EXPECT_EQ(e.client_id(), 1000 + e.example_id() - first_id[0]);
    }
    EXPECT_GE(std::abs(inf->examples(0).score()), std::abs(inf->examples(4).score()));
  }

  // The memory map: one row per memorable example, each scored in its own head.
  v1::MemoryMapRequest mm;
  mm.set_model("m");
  auto map = client->MemoryMap(mm);
  ASSERT_TRUE(map.ok()) << map.status();
  const at::Tensor err = Floats(map->error());
  ASSERT_EQ(err.sizes(), (std::vector<int64_t>{40, kClasses}));
  EXPECT_TRUE(at::allclose(err.sum(1), at::zeros({40}), 1e-4, 1e-5));  // p - onehot(y)
  EXPECT_GE(Floats(map->sensitivity()).min().item<float>(), 0.0f);
  // Each memorable example's client id is the one its stream gave it.
  const at::Tensor map_ids = Floats(map->example_ids()), map_tasks = Floats(map->task_ids());
  const at::Tensor map_clients = Floats(map->client_ids());
  for (int64_t i = 0; i < 40; ++i) {
    const int64_t t = map_tasks[i].item<int64_t>();
    EXPECT_EQ(map_clients[i].item<int64_t>(), 1000 * (t + 1) + map_ids[i].item<int64_t>() - first_id[t]);
  }
  EXPECT_GT(map->loo_nll(), 0.0);
  EXPECT_GT(map->loo_accuracy(), 0.8);

  // Evaluate: one row per version; task 0 measured after both tasks.
  auto eval = client->Evaluate("m");
  ASSERT_TRUE(eval.ok()) << eval.status();
  ASSERT_EQ(eval->rows_size(), 3);
  EXPECT_EQ(eval->rows(2).accuracy_size(), 2);
  EXPECT_GT(eval->rows(2).accuracy(0), 0.8);
  EXPECT_GT(eval->rows(2).accuracy(1), 0.8);
  EXPECT_NEAR(eval->average_accuracy(),
              (eval->rows(2).accuracy(0) + eval->rows(2).accuracy(1)) / 2, 1e-12);
  EXPECT_NEAR(eval->forgetting(0), eval->rows(1).accuracy(0) - eval->rows(2).accuracy(0), 1e-12);

  // Versions, rollback (a new version with the old state), pinned predictions.
  auto versions = client->ListVersions("m");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->versions_size(), 3);
  auto rolled = client->Rollback("m", 1);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->current().version(), 3);
  EXPECT_EQ(rolled->current().rolled_back_from(), 1);
  v1::PredictRequest now = PredictOn("m", evals[0].x, v1::PREDICT_MODE_MEAN);
  // A multi-head model answers within a head only.
  auto headless = client->Predict(now);
  EXPECT_EQ(headless.status().code(), absl::StatusCode::kInvalidArgument) << headless.status();
  EXPECT_THAT(std::string(headless.status().message()),
              ::testing::HasSubstr("this model is multi-head: name the query's task_id, in [0, 1)"));  // version 1's tasks
  now.set_task_id(0);
  v1::PredictRequest at1 = now;
  at1.set_version(1);
  auto p_now = client->Predict(now);
  auto p_at1 = client->Predict(at1);
  ASSERT_TRUE(p_now.ok() && p_at1.ok());
  EXPECT_EQ(p_now->version(), 3);
  EXPECT_EQ(p_now->probs().raw_data(), p_at1->probs().raw_data());

  // Export and import: the copy answers exactly as the original.
  auto snapshot = client->Export("m");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto imported = client->Import("copy", *snapshot);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->tasks_size(), 2);
  v1::PredictRequest on_copy = now;
  on_copy.set_model("copy");
  auto p_copy = client->Predict(on_copy);
  ASSERT_TRUE(p_copy.ok());
  EXPECT_EQ(p_copy->probs().raw_data(), p_now->probs().raw_data());

  // Cancel: a long job is cancelled while queued or running, and publishes nothing.
  v1::CreateModelRequest slow = BlobModel("slow", false, /*epochs=*/400);
  ASSERT_TRUE(client->CreateModel(slow).ok());
  auto streamed = StreamData(*client, "slow", 0, v1::SPLIT_TRAIN, {}, BlobTask(600, {0, 1, 2, 3}, 9));
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  auto cancelled = client->CancelJob(streamed->job_ids(0));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  auto final_status = client->WatchJob(streamed->job_ids(0));
  ASSERT_TRUE(final_status.ok());
  EXPECT_EQ(final_status->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(client->GetModel("slow")->current().version(), 0);
  auto jobs = client->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->jobs_size(), 2);
  EXPECT_EQ(jobs->jobs(1).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs->jobs(1).version(), 2);

  ASSERT_TRUE(client->DeleteModel("slow").ok());
  ASSERT_TRUE(client->DeleteModel("copy").ok());
  EXPECT_EQ(client->GetModel("copy").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->ListModels()->models_size(), 1);
}

// Online mode adapts every N examples within a stream; keep_open defers adaptation to a later
// stream of the same task.
TEST(ServiceTest, OnlineModeAndKeepOpen) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest online = BlobModel("online", false, 1);
  online.mutable_config()->set_adapt_every(100);
  ASSERT_TRUE(client->CreateModel(online).ok());
  // 250 examples in batches of 50: chunks of 100, 100 and (at the end) 50.
  auto s = StreamData(*client, "online", 0, v1::SPLIT_TRAIN, {}, BlobTask(250, {0, 1}, 1), 50);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->examples(), 250);
  // A job learns every example pending when it starts, so a chunk that comes while the task's
  // job waits in the queue joins that job (the stream outran the training): one to three jobs,
  // each with something to learn, and between them every example learnt once.
  ASSERT_GE(s->job_ids_size(), 1);
  ASSERT_LE(s->job_ids_size(), 3);
  int64_t learnt = 0, publishing = 0;
  for (const auto& id : s->job_ids()) {
    auto last = client->WatchJob(id);
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->state(), v1::JOB_STATE_SUCCEEDED) << last->message();
    EXPECT_GT(last->examples(), 0);
    learnt += last->examples();
    publishing += last->examples() > 0;
  }
  EXPECT_EQ(learnt, 250);
  EXPECT_EQ(client->ListJobs("online")->jobs_size(), s->job_ids_size());
  auto versions = client->ListVersions("online");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->versions_size(), 1 + publishing);
  for (int v = 1; v <= publishing; ++v) EXPECT_EQ(versions->versions(v).task_id(), 0);
  EXPECT_EQ(client->GetModel("online")->tasks(0).pending_examples(), 0);
  // However many jobs the task took, its memory keeps one budget.
  EXPECT_EQ(versions->versions(publishing).memory_size(), online.config().memory_points());

  // A config update during an online stream applies to the task's next streams: this one
  // keeps the chunk size it started with (here 100, though the update turns chunks off).
  v1::CreateModelRequest changing = BlobModel("changing", false, 1);
  changing.mutable_config()->set_adapt_every(100);
  ASSERT_TRUE(client->CreateModel(changing).ok());
  const Dataset data = BlobTask(250, {0, 1}, 5);
  int64_t sent = 0;
  v1::StreamHeader header;
  header.set_model("changing");
  header.set_task_id(0);
  auto changed = client->StreamExamples(header, [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
    // Once the first chunk's job is listed (the server has read the header and stored ids
    // [0, 100)), and before the batches of the second chunk: a stream that read the live
    // config would store the rest as one range, [100, 250).
    if (sent == 100) {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (client->ListJobs("changing")->jobs_size() == 0 &&
             std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      v1::UpdateConfigRequest off;
      off.set_name("changing");
      off.mutable_update_mask()->add_paths("adapt_every");
      if (!client->UpdateConfig(off).ok()) return absl::InternalError("update failed");
    }
    if (sent == data.size()) return std::nullopt;
    const int64_t n = std::min<int64_t>(50, data.size() - sent);
    v1::ExampleBatch batch = MakeBatch(data.x.narrow(0, sent, n), data.y.narrow(0, sent, n));
    sent += n;
    return batch;
  });
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(changed->ids_size(), 3);  // one id range per stored chunk: 100, 100, 50
  EXPECT_LE(changed->job_ids_size(), 3);
  EXPECT_EQ(client->GetModel("changing")->config().adapt_every(), 0);

  // Chunks that come while the task's job is queued join it: with one job training (for as long
  // as it is let), the second chunk queues a job and the third joins it.
  v1::CreateModelRequest outrun = BlobModel("outrun", false, 1);
  outrun.mutable_config()->set_adapt_every(100);
  outrun.mutable_config()->set_min_steps(1000000);  // trains until cancelled
  ASSERT_TRUE(client->CreateModel(outrun).ok());
  auto chunks = StreamData(*client, "outrun", 0, v1::SPLIT_TRAIN, {}, BlobTask(300, {0, 1}, 6), 50);
  ASSERT_TRUE(chunks.ok()) << chunks.status();
  EXPECT_EQ(chunks->ids_size(), 3);
  // Two jobs, or one if the first had not started when the second chunk came; never a job
  // that finds nothing to learn.
  EXPECT_LE(chunks->job_ids_size(), 2);
  EXPECT_EQ(client->ListJobs("outrun")->jobs_size(), chunks->job_ids_size());
  for (const auto& id : chunks->job_ids()) ASSERT_TRUE(client->CancelJob(id).ok());

  ASSERT_TRUE(client->CreateModel(BlobModel("open", false, 1)).ok());
  auto first = StreamData(*client, "open", 0, v1::SPLIT_TRAIN, {}, BlobTask(60, {0, 1}, 2), 64,
                          /*keep_open=*/true);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->job_ids_size(), 0);
  EXPECT_EQ(client->GetModel("open")->tasks(0).pending_examples(), 60);
  auto second = StreamData(*client, "open", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 3));
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->job_ids_size(), 1);
  auto last = client->WatchJob(second->job_ids(0));
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->examples(), 100);  // both streams' examples, learnt together
  EXPECT_EQ(client->GetModel("open")->tasks(0).pending_examples(), 0);
}

// A model whose first job diverges (a rate of 1e30).
v1::CreateModelRequest DivergingModel(const std::string& name) {
  v1::CreateModelRequest r = BlobModel(name, false, 5);
  r.mutable_config()->mutable_ivon()->set_lr(1e30);
  r.mutable_config()->mutable_ivon()->set_hess_init(1e-8);
  return r;
}

// Model "busy" (adapt_after_seconds 0.2) with one job of task 0 that trains until it is
// cancelled; the answer of the stream that queued it, once the job has started and taken its
// examples (a loaded machine can delay the training thread, which runs at a lower priority, and
// a stream before the start would join the job).
absl::StatusOr<v1::StreamExamplesResponse> StartABusyJob(const AdaptdClient& client) {
  v1::CreateModelRequest busy = BlobModel("busy", false, 1);
  busy.mutable_config()->set_min_steps(1000000);  // runs until cancelled
  busy.mutable_config()->set_adapt_after_seconds(0.2);
  ADAPTD_RETURN_IF_ERROR(client.CreateModel(busy).status());
  ADAPTD_ASSIGN_OR_RETURN(v1::StreamExamplesResponse running,
                          StreamData(client, "busy", 0, v1::SPLIT_TRAIN, {},
                                     BlobTask(100, {0, 1}, 8)));
  if (running.job_ids_size() != 1) return absl::InternalError("the stream queued no job");
  const auto started_by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (client.ListJobs("busy")->jobs(0).state() != v1::JOB_STATE_RUNNING) {
    if (std::chrono::steady_clock::now() > started_by) {
      return absl::DeadlineExceededError("the busy job did not start within a minute");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return running;
}

// The model's jobs once there are at least `n` of them and the last has ended (polls ListJobs
// for up to a minute; a test that needs a timer does not time it). `seen`: when a poll first
// found the n-th job (no earlier than the job was queued).
std::vector<v1::JobStatus> JobsOnceEnded(const AdaptdClient& client, const std::string& model,
                                         int n,
                                         std::chrono::steady_clock::time_point* seen = nullptr) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < give_up) {
    auto jobs = client.ListJobs(model);
    if (!jobs.ok()) break;
    if (jobs->jobs_size() >= n) {
      if (seen != nullptr) *seen = std::chrono::steady_clock::now();
      auto last = client.WatchJob(jobs->jobs(jobs->jobs_size() - 1).job_id());
      if (!last.ok()) break;
      jobs = client.ListJobs(model);
      if (!jobs.ok()) break;
      return {jobs->jobs().begin(), jobs->jobs().end()};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "model " << model << " did not reach " << n << " ended jobs";
  return {};
}

// An online stream refused half-way keeps the chunks it had committed, and the refusal says
// which ids they got, so that a client resends only the rest.
TEST(ServiceTest, AnOnlineStreamRefusedHalfWayNamesWhatItStored) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest online = BlobModel("online", false, 1);
  online.mutable_config()->set_adapt_every(100);
  ASSERT_TRUE(client->CreateModel(online).ok());
  const Dataset good = BlobTask(150, {0, 1}, 1);
  std::vector<v1::ExampleBatch> batches;
  for (int64_t s = 0; s < 150; s += 50) {
    batches.push_back(MakeBatch(good.x.narrow(0, s, 50), good.y.narrow(0, s, 50)));
  }
  batches.push_back(MakeBatch(good.x.narrow(0, 0, 2), at::full({2}, kClasses, at::kLong)));
  v1::StreamHeader h;
  h.set_model("online");
  h.set_task_id(0);
  const absl::Status refused = client->StreamExamples(h, batches).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(std::string(refused.message()),
              ::testing::AllOf(::testing::HasSubstr("batch 3"),
                               ::testing::HasSubstr("stored and queued (100 examples, ids [0, 100))")));
  auto info = client->GetModel("online");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tasks(0).train_examples(), 100);

  // Any refusal after an online chunk says so: here an end message that miscounts.
  auto stub = v1::LearningService::NewStub(
      grpc::CreateChannel((*server)->target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::StreamExamplesResponse response;
  auto writer = stub->StreamExamples(&ctx, &response);
  v1::StreamExamplesRequest msg;
  *msg.mutable_header() = h;
  ASSERT_TRUE(writer->Write(msg));
  for (int i = 0; i < 3; ++i) {
    *msg.mutable_batch() = batches[i];
    ASSERT_TRUE(writer->Write(msg));
  }
  msg.mutable_end()->set_examples(240);
  ASSERT_TRUE(writer->Write(msg));
  writer->WritesDone();
  const grpc::Status miscounted = writer->Finish();
  EXPECT_EQ(miscounted.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(miscounted.error_message(),
              ::testing::AllOf(::testing::HasSubstr("the end message counts 240 examples; 150 arrived"),
                               ::testing::HasSubstr("stored and queued (100 examples, ids [100, 200))")));

  // A client whose batch source fails half-way gets the source's error and the server's account
  // of the online chunk it had already stored.
  int64_t next = 0;
  const absl::Status failed =
      client
          ->StreamExamples(h,
                           [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
                             if (next == 3) return absl::DataLossError("row 151 is unreadable");
                             return std::optional<v1::ExampleBatch>(batches[next++]);
                           })
          .status();
  EXPECT_EQ(failed.code(), absl::StatusCode::kDataLoss) << failed;
  EXPECT_THAT(std::string(failed.message()),
              ::testing::AllOf(::testing::StartsWith("row 151 is unreadable; the server: "),
                               ::testing::HasSubstr("stored and queued (100 examples, ids [200, 300))")));
  info = client->GetModel("online");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tasks(0).train_examples(), 300);
}

// --keep_jobs bounds the finished jobs a model keeps in memory (online mode makes many): the
// newest ones stay listed and watchable, older ones are NOT_FOUND, and a restart applies it too.
TEST(ServiceTest, KeepJobsBoundsTheFinishedJobsKept) {
  TempDir dir;
  std::vector<std::string> ids;
  {
    auto server = ServerProcess::Start(dir.path(), {"--keep_jobs=2"});
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    ASSERT_TRUE(client->CreateModel(BlobModel("k", false, 1)).ok());
    for (int task = 0; task < 4; ++task) {
      auto s = StreamData(*client, "k", task, v1::SPLIT_TRAIN, {task % 4},
                          BlobTask(40, {task % 4}, 30 + task));
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(s->job_ids_size(), 1);
      WaitJobs(*client, *s);
      ids.push_back(s->job_ids(0));
    }
    auto listed = client->ListJobs("k");
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_EQ(listed->jobs_size(), 2);
    EXPECT_EQ(listed->jobs(0).job_id(), ids[2]);
    EXPECT_EQ(listed->jobs(1).job_id(), ids[3]);
    EXPECT_EQ(client->WatchJob(ids[0]).status().code(), absl::StatusCode::kNotFound);
    auto newest = client->WatchJob(ids[3]);
    ASSERT_TRUE(newest.ok()) << newest.status();
    EXPECT_EQ(newest->state(), v1::JOB_STATE_SUCCEEDED);
  }
  auto server = ServerProcess::Start(dir.path(), {"--keep_jobs=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto listed = (*server)->Client()->ListJobs("k");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->jobs_size(), 1);
  EXPECT_EQ(listed->jobs(0).job_id(), ids[3]);
}

constexpr char kWaitingForASlot[] =
    "waiting for a training slot (other models' jobs hold all --max_concurrent_jobs)";

// Polls the model's `index`-th job for up to a minute until its message is `message`; true if
// it came.
bool WaitForJobMessage(const AdaptdClient& client, const std::string& model, int index,
                       const std::string& message) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < give_up) {
    auto jobs = client.ListJobs(model);
    if (jobs.ok() && jobs->jobs_size() > index && jobs->jobs(index).message() == message) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// Model "hog" trains until cancelled (min_steps far beyond its data) and holds the one training
// slot (the server's default); then model "waiter" streams a task, whose job waits for that slot:
// returns once the waiter's actor has taken the job and says that it waits.
void StartHogAndWaiter(const AdaptdClient& client, std::string* hog_job, std::string* waiter_job) {
  v1::CreateModelRequest hog = BlobModel("hog", false, 1);
  hog.mutable_config()->set_min_steps(1000000);
  ASSERT_TRUE(client.CreateModel(hog).ok());
  ASSERT_TRUE(client.CreateModel(BlobModel("waiter", false, 1)).ok());
  auto running = StreamData(client, "hog", 0, v1::SPLIT_TRAIN, {}, BlobTask(100, {0, 1}, 1));
  ASSERT_TRUE(running.ok() && running->job_ids_size() == 1);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (client.ListJobs("hog")->jobs(0).state() != v1::JOB_STATE_RUNNING &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto waiting = StreamData(client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(100, {0, 1}, 2));
  ASSERT_TRUE(waiting.ok() && waiting->job_ids_size() == 1);
  ASSERT_TRUE(WaitForJobMessage(client, "waiter", 0, kWaitingForASlot));
  *hog_job = running->job_ids(0);
  *waiter_job = waiting->job_ids(0);
}

// A job queued while another job of its task runs answers for the examples after the running
// job's: its status counted the running job's too (110 here), and a cancel of it reported
// examples it never held.
TEST(ServiceTest, AJobQueuedBehindARunningOneCountsOnlyItsOwnExamples) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::string hog, waiter;
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &waiter));
  auto queued = StreamData(*client, "hog", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 5));
  ASSERT_TRUE(queued.ok() && queued->job_ids_size() == 1);
  ASSERT_NE(queued->job_ids(0), hog);
  auto jobs = client->ListJobs("hog");
  ASSERT_TRUE(jobs.ok() && jobs->jobs_size() == 2);
  EXPECT_EQ(jobs->jobs(0).examples(), 100);
  EXPECT_EQ(jobs->jobs(1).state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(jobs->jobs(1).examples(), 10);
  auto cancelled = client->CancelJob(queued->job_ids(0));
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled->examples(), 10);
  ASSERT_TRUE(client->CancelJob(hog).ok());
}

// StartHogAndWaiter, then a second job for the waiter's task (10 more examples): the first job
// holds the waiter's actor while it waits for the hog's slot, so the second is queued behind it.
void QueueBehindTheWaiter(const AdaptdClient& client, std::string* hog, std::string* first,
                          std::string* second) {
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(client, hog, first));
  auto queued = StreamData(client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 3));
  ASSERT_TRUE(queued.ok() && queued->job_ids_size() == 1);
  *second = queued->job_ids(0);
  ASSERT_NE(*second, *first);
}

// A watch that carries no data for 35 s (its job waits for the training slot a long job holds),
// on a client that pings every 10 s, the most often the server accepts: gRPC's default server
// policy would take the third such ping as abuse and close the connection (UNAVAILABLE); this
// server keeps it, and the watch ends with the job.
TEST(ServiceTest, AnIdleWatchSurvivesTheClientsKeepalivePings) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ClientOptions o;
  o.keepalive_seconds = kMinKeepaliveSeconds;
  o.keepalive_timeout_seconds = 5;
  auto pinging = AdaptdClient::Create((*server)->target(), o);
  ASSERT_TRUE(pinging.ok()) << pinging.status();
  std::string hog, waiter;
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &waiter));
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::seconds(35));
    EXPECT_TRUE(client->CancelJob(waiter).ok());
  });
  auto watched = (*pinging)->WatchJob(waiter);
  canceller.join();
  ASSERT_TRUE(watched.ok()) << watched.status();
  EXPECT_EQ(watched->state(), v1::JOB_STATE_CANCELLED) << watched->message();
  ASSERT_TRUE(client->CancelJob(hog).ok());
}

// Two refusals the error table promises while jobs wait: a stream that would close its task
// when the model's queue is full (RESOURCE_EXHAUSTED at its header, storing nothing), and a
// rollback while the model's jobs are queued or running (FAILED_PRECONDITION).
TEST(ServiceTest, AFullQueueAndBusyJobsRefuseWhatWouldWait) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--queue_capacity=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::string hog, waiter;
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &waiter));
  // The waiter's first job has left the queue and waits for the training slot; a second task's
  // job fills the queue, and a third task's stream is refused.
  auto second = StreamData(*client, "waiter", 1, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 3));
  ASSERT_TRUE(second.ok()) << second.status();
  auto third = StreamData(*client, "waiter", 2, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 4));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_THAT(std::string(third.status().message()),
              ::testing::HasSubstr("has 1 adaptation jobs queued (the limit is 1)"));
  EXPECT_EQ(client->GetModel("waiter")->tasks_size(), 2);
  // A keep_open stream does not close its task, so it is not refused.
  EXPECT_TRUE(StreamData(*client, "waiter", 2, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 4), 64,
                         /*keep_open=*/true).ok());
  for (const std::string model : {"hog", "waiter"}) {
    const absl::Status refused = client->Rollback(model, 0).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << model << ": " << refused;
    EXPECT_EQ(client->GetModel(model)->current().version(), 0) << model;
    EXPECT_EQ(client->ListVersions(model)->versions_size(), 1) << model;
  }
  ASSERT_TRUE(client->CancelJob(hog).ok());
}

// --max_buffered_mb bounds what all calls hold before their end together: with one stream
// holding about 0.6 MiB, a second one (under --max_stream_mb on its own) is refused once the
// two would pass 1 MiB, storing nothing; after the first has ended, the second goes through.
TEST(ServiceTest, StreamsShareTheServersBufferLimit) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_stream_mb=4", "--max_buffered_mb=1",
                                                  "--metrics_port=0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  for (const char* name : {"a", "b"}) ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
  const Dataset data = BlobTask(300, {0, 1}, 1);
  auto buffered = [&] { return MetricValue((*server)->metrics_port(), "adaptd_buffered_bytes"); };
  auto singles = [&](const std::string& model, std::function<void()> before_end) {
    v1::StreamHeader h;
    h.set_model(model);
    h.set_task_id(0);
    int64_t i = 0;
    return client->StreamExamples(h, [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
      if (i == data.size()) {
        if (before_end) before_end();
        return std::nullopt;
      }
      ++i;
      return std::optional<v1::ExampleBatch>(MakeBatch(data.x.narrow(0, i - 1, 1), data.y.narrow(0, i - 1, 1)));
    });
  };
  absl::Notification second_done;
  absl::StatusOr<v1::StreamExamplesResponse> first;
  std::thread holder([&] { first = singles("a", [&] { second_done.WaitForNotification(); }); });
  // 300 one-example batches hold 300 x (2 KiB + 48 bytes): wait until the server holds them.
  ASSERT_TRUE(WaitForMetric((*server)->metrics_port(), "adaptd_buffered_bytes", 300 * (6 * 4 + 24 + 2048)));
  const auto refused = singles("b", nullptr);
  second_done.Notify();
  holder.join();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("--max_buffered_mb"));
  EXPECT_EQ(client->GetModel("b")->tasks_size(), 0);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->examples(), 300);
  EXPECT_EQ(buffered(), 0);
  const auto again = singles("b", nullptr);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->examples(), 300);
}

// --max_threads bounds the calls in progress. Twelve watches of a running job, each held open
// for 5 s, need twelve handler threads: under --max_threads=4 four are served and the other
// eight refused at once with RESOURCE_EXHAUSTED (gRPC keeps one more thread to poll for calls;
// the server used to count it against the limit and served three), and once the held ones
// have ended the server answers again. Without the flag all twelve are served.
TEST(ServiceTest, MaxThreadsRefusesCallsThatFindNoHandlerThread) {
  for (const bool capped : {true, false}) {
    SCOPED_TRACE(capped ? "--max_threads=4" : "default");
    TempDir dir;
    std::vector<std::string> flags;
    if (capped) flags.push_back("--max_threads=4");
    auto server = ServerProcess::Start(dir.path(), flags);
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    v1::CreateModelRequest hog = BlobModel("hog", false, 1);
    hog.mutable_config()->set_min_steps(1000000);
    ASSERT_TRUE(client->CreateModel(hog).ok());
    auto running = StreamData(*client, "hog", 0, v1::SPLIT_TRAIN, {}, BlobTask(100, {0, 1}, 1));
    ASSERT_TRUE(running.ok() && running->job_ids_size() == 1) << running.status();
    ClientOptions o;
    o.stream_timeout_seconds = 5;
    auto watching = AdaptdClient::Create((*server)->target(), o);
    ASSERT_TRUE(watching.ok()) << watching.status();
    std::mutex mu;
    std::map<absl::StatusCode, int> ends;
    std::vector<std::thread> watchers;
    for (int i = 0; i < 12; ++i) {
      watchers.emplace_back([&] {
        const absl::StatusCode code = (*watching)->WatchJob(running->job_ids(0)).status().code();
        std::lock_guard<std::mutex> lock(mu);
        ++ends[code];
      });
    }
    for (std::thread& t : watchers) t.join();
    if (capped) {
      EXPECT_EQ(ends[absl::StatusCode::kDeadlineExceeded], 4);
    } else {
      EXPECT_EQ(ends[absl::StatusCode::kDeadlineExceeded], 12);
    }
    EXPECT_EQ(ends[absl::StatusCode::kResourceExhausted] + ends[absl::StatusCode::kDeadlineExceeded], 12);
    // A handler notices its client's deadline within half a second (WatchJob's wait), and only
    // then frees its thread: until then a call may still be refused, never failed otherwise.
    absl::Status cancel = client->CancelJob(running->job_ids(0)).status();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (cancel.code() == absl::StatusCode::kResourceExhausted &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      cancel = client->CancelJob(running->job_ids(0)).status();
    }
    ASSERT_TRUE(cancel.ok()) << cancel;
  }
}

// Examples of a closing stream that join a queued job of their task stay that job's when it is
// cancelled while still queued: its status counts them, and after a restart the
// adapt_after_seconds timer leaves them alone, as it leaves any cancelled job's examples.
TEST(ServiceTest, ACancelledQueuedJobKeepsTheExamplesThatJoinedIt) {
  TempDir dir;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    auto running = StartABusyJob(*client);
    ASSERT_TRUE(running.ok()) << running.status();
    auto queued = StreamData(*client, "busy", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 9));
    ASSERT_TRUE(queued.ok() && queued->job_ids_size() == 1);
    auto joined = StreamData(*client, "busy", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 10));
    ASSERT_TRUE(joined.ok() && joined->job_ids_size() == 1);
    ASSERT_EQ(joined->job_ids(0), queued->job_ids(0));  // the queued job takes them
    auto cancelled = client->CancelJob(queued->job_ids(0));
    ASSERT_TRUE(cancelled.ok()) << cancelled.status();
    EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
    // A job queued behind a running job of its task answers for the examples after that
    // job's: 20 here (10 when queued).
    EXPECT_EQ(cancelled->examples(), 20);
    ASSERT_TRUE(client->CancelJob(running->job_ids(0)).ok());
    ASSERT_EQ(JobsOnceEnded(*client, "busy", 2).size(), 2u);
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::this_thread::sleep_for(std::chrono::seconds(1));  // five of the timer's waits
  auto jobs = client->ListJobs("busy");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->jobs_size(), 2);
  EXPECT_EQ(jobs->jobs(1).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(jobs->jobs(1).examples(), 20);
  EXPECT_EQ(client->GetModel("busy")->tasks(0).pending_examples(), 120);
}

// adapt_after_seconds: training examples that a keep_open stream left pending get a job of
// their own once they have waited, after a restart too. A job that failed is not retried on the
// timer; its examples go with the task's next ones.
TEST(ServiceTest, AdaptAfterSecondsGivesWaitingExamplesAJob) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest timed = BlobModel("timed", false, 1);
  timed.mutable_config()->set_adapt_after_seconds(1);
  ASSERT_TRUE(client->CreateModel(timed).ok());
  EXPECT_DOUBLE_EQ(client->GetModel("timed")->config().adapt_after_seconds(), 1);
  const auto before = std::chrono::steady_clock::now();
  auto first = StreamData(*client, "timed", 0, v1::SPLIT_TRAIN, {}, BlobTask(60, {0, 1}, 2), 64,
                          /*keep_open=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->job_ids_size(), 0);
  std::chrono::steady_clock::time_point seen;
  auto jobs = JobsOnceEnded(*client, "timed", 1, &seen);
  // Not before the wait (polls every 50 ms find a job queued at once long before a second).
  EXPECT_GE(seen - before, std::chrono::seconds(1));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].state(), v1::JOB_STATE_SUCCEEDED) << jobs[0].message();
  EXPECT_EQ(jobs[0].examples(), 60);
  EXPECT_EQ(client->GetModel("timed")->tasks(0).pending_examples(), 0);
  // Evaluation examples are not learnt, so they never wait for a job.
  ASSERT_TRUE(StreamData(*client, "timed", 0, v1::SPLIT_EVAL, {}, BlobTask(30, {0, 1}, 3)).ok());
  // Later examples: a second job learns only them.
  ASSERT_TRUE(StreamData(*client, "timed", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 4), 64,
                         /*keep_open=*/true).ok());
  jobs = JobsOnceEnded(*client, "timed", 2);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[1].state(), v1::JOB_STATE_SUCCEEDED) << jobs[1].message();
  EXPECT_EQ(jobs[1].examples(), 40);
  EXPECT_EQ(client->ListVersions("timed")->versions_size(), 3);

  // A job that diverges: its examples stay pending, and the timer leaves them alone.
  v1::CreateModelRequest wild = DivergingModel("wild");
  wild.mutable_config()->set_adapt_after_seconds(0.2);
  ASSERT_TRUE(client->CreateModel(wild).ok());
  ASSERT_TRUE(StreamData(*client, "wild", 0, v1::SPLIT_TRAIN, {}, BlobTask(200, {0, 1}, 5), 64,
                         /*keep_open=*/true).ok());
  jobs = JobsOnceEnded(*client, "wild", 1);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].state(), v1::JOB_STATE_FAILED);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // five waits
  EXPECT_EQ(client->ListJobs("wild")->jobs_size(), 1);
  EXPECT_EQ(client->GetModel("wild")->tasks(0).pending_examples(), 200);
  // New examples wait again, and their job takes the failed job's examples too.
  ASSERT_TRUE(StreamData(*client, "wild", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 6), 64,
                         /*keep_open=*/true).ok());
  jobs = JobsOnceEnded(*client, "wild", 2);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[1].examples(), 210);

  // Examples that arrive while the task's job is queued are that job's: when it ends without
  // learning them (here cancelled while running), the timer does not retry them either.
  auto running = StartABusyJob(*client);
  ASSERT_TRUE(running.ok()) << running.status();
  auto queued = StreamData(*client, "busy", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 9));
  ASSERT_TRUE(queued.ok() && queued->job_ids_size() == 1);
  ASSERT_TRUE(StreamData(*client, "busy", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 10), 64,
                         /*keep_open=*/true).ok());
  ASSERT_TRUE(client->CancelJob(running->job_ids(0)).ok());
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (client->ListJobs("busy")->jobs(1).state() != v1::JOB_STATE_RUNNING &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto cancelled = client->CancelJob(queued->job_ids(0));
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->examples(), 120);  // it had taken the keep_open stream's examples too
  jobs = JobsOnceEnded(*client, "busy", 2);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[1].state(), v1::JOB_STATE_CANCELLED);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // five waits
  EXPECT_EQ(client->ListJobs("busy")->jobs_size(), 2);
  EXPECT_EQ(client->GetModel("busy")->tasks(0).pending_examples(), 120);

  // Examples stored just before a crash get their job after the restart.
  v1::CreateModelRequest later = BlobModel("later", false, 1);
  later.mutable_config()->set_adapt_after_seconds(5);
  ASSERT_TRUE(client->CreateModel(later).ok());
  ASSERT_TRUE(StreamData(*client, "later", 0, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 7), 64,
                         /*keep_open=*/true).ok());
  // No job yet (5 s is far longer than these two calls take), so the restarted server's timer
  // is what gives the examples their job.
  EXPECT_EQ(client->ListJobs("later")->jobs_size(), 0);
  (*server)->Kill();
  server->reset();
  const auto restart = std::chrono::steady_clock::now();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  std::chrono::steady_clock::time_point later_seen;
  jobs = JobsOnceEnded(*client2, "later", 1, &later_seen);
  ASSERT_EQ(jobs.size(), 1u);
  // Stored before the start, they wait T from when the model was loaded, not from their
  // acknowledgement (nor not at all).
  EXPECT_GE(later_seen - restart, std::chrono::seconds(5));
  EXPECT_EQ(jobs[0].state(), v1::JOB_STATE_SUCCEEDED) << jobs[0].message();
  EXPECT_EQ(jobs[0].examples(), 50);
  EXPECT_EQ(client2->GetModel("later")->tasks(0).pending_examples(), 0);
  // The restarted server knows which examples failed and cancelled jobs took.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(client2->ListJobs("wild")->jobs_size(), 2);
  EXPECT_EQ(client2->ListJobs("busy")->jobs_size(), 2);
}

// One training slot (the default), held by a job that runs until cancelled: another model's job
// waits for the slot, and a CancelJob ends it there rather than when the slot frees.
TEST(ServiceTest, CancelEndsAJobWaitingForATrainingSlot) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::string hog, waiter;
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &waiter));
  // Its actor has taken it, and it says why it does not run.
  EXPECT_EQ(client->ListJobs("waiter")->jobs(0).state(), v1::JOB_STATE_QUEUED);
  auto asked = client->CancelJob(waiter);
  ASSERT_TRUE(asked.ok()) << asked.status();
  // The answer says that the cancel is coming, not that the job waits for a slot.
  EXPECT_EQ(asked->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(asked->message(), "cancel requested; the job ends before it trains");
  // Polled, not watched: a watch would wait for as long as the hog runs.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  v1::JobStatus ended = client->ListJobs("waiter")->jobs(0);
  while (ended.state() != v1::JOB_STATE_CANCELLED && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ended = client->ListJobs("waiter")->jobs(0);
  }
  EXPECT_EQ(ended.state(), v1::JOB_STATE_CANCELLED) << ended.message();
  EXPECT_EQ(client->ListJobs("hog")->jobs(0).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(client->GetModel("waiter")->tasks(0).pending_examples(), 100);
  ASSERT_TRUE(client->CancelJob(hog).ok());
}

// A job cancelled while it waits for a training slot ends cancelled, unstarted, even when the
// slot frees within the same wait (the hog is cancelled at once after it). It used to start
// then: it learnt the examples and ended "cancelled while running", or found them learnt and
// ended SUCCEEDED, "nothing new to learn" (a stress run found it).
TEST(ServiceTest, AJobCancelledAsItsSlotFreesEndsUnstarted) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  for (int round = 0; round < 3; ++round) {
    std::string hog, waiter;
    ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &waiter));
    auto asked = client->CancelJob(waiter);
    ASSERT_TRUE(asked.ok()) << asked.status();
    EXPECT_EQ(asked->state(), v1::JOB_STATE_QUEUED) << asked->message();
    EXPECT_EQ(asked->message(), "cancel requested; the job ends before it trains");
    ASSERT_TRUE(client->CancelJob(hog).ok());
    auto ended = client->WatchJob(waiter);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::JOB_STATE_CANCELLED) << round << ": " << ended->message();
    EXPECT_EQ(ended->message(), "cancelled while queued") << round;
    ASSERT_TRUE(client->DeleteModel("hog").ok());
    ASSERT_TRUE(client->DeleteModel("waiter").ok());
  }
}

// A job that the actor took from the queue and that is cancelled while it waits for a training
// slot keeps the examples that joined it in the queue: its status counts them, and its catalog
// row holds them, so that after a restart the adapt_after_seconds timer leaves them alone, as
// the server that cancelled the job did.
TEST(ServiceTest, AJobCancelledWaitingForASlotKeepsTheExamplesThatJoinedIt) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::string hog, first;
  ASSERT_NO_FATAL_FAILURE(StartHogAndWaiter(*client, &hog, &first));
  v1::UpdateConfigRequest timer;
  timer.set_name("waiter");
  timer.mutable_config()->set_adapt_after_seconds(0.2);
  timer.mutable_update_mask()->add_paths("adapt_after_seconds");
  ASSERT_TRUE(client->UpdateConfig(timer).ok());
  // The first job holds the actor; a second one is queued, and a later stream joins it.
  auto second = StreamData(*client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 3));
  ASSERT_TRUE(second.ok() && second->job_ids_size() == 1);
  auto joined = StreamData(*client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 4));
  ASSERT_TRUE(joined.ok() && joined->job_ids_size() == 1);
  EXPECT_EQ(joined->job_ids(0), second->job_ids(0));
  EXPECT_EQ(client->ListJobs("waiter")->jobs(1).examples(), 120);
  // The actor takes the second job once the first is cancelled; it then waits for the slot.
  ASSERT_TRUE(client->CancelJob(first).ok());
  ASSERT_TRUE(WaitForJobMessage(*client, "waiter", 1, kWaitingForASlot));
  ASSERT_TRUE(client->CancelJob(second->job_ids(0)).ok());
  auto jobs = JobsOnceEnded(*client, "waiter", 2);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[1].state(), v1::JOB_STATE_CANCELLED) << jobs[1].message();
  EXPECT_EQ(jobs[1].examples(), 120);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // five waits
  EXPECT_EQ(client->ListJobs("waiter")->jobs_size(), 2);
  EXPECT_EQ(client->GetModel("waiter")->tasks(0).pending_examples(), 120);
  ASSERT_TRUE(client->CancelJob(hog).ok());

  (*server)->Kill();
  server->reset();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto after = client2->ListJobs("waiter");
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->jobs_size(), 2);
  EXPECT_EQ(after->jobs(1).examples(), 120);
  EXPECT_EQ(client2->GetModel("waiter")->tasks(0).pending_examples(), 120);
}

// A stream that would join a queued job whose record the catalog will not extend (a trigger
// refuses it) is answered with that job and no reason: the job takes every pending example when
// it starts, these too. It used to say that no job was queued, and a client that sent the
// examples again stored them twice.
TEST(ServiceTest, AJoinTheCatalogRefusesIsStillAnsweredWithTheQueuedJob) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  std::string hog, first, second;
  ASSERT_NO_FATAL_FAILURE(QueueBehindTheWaiter(*client, &hog, &first, &second));
  ASSERT_NO_FATAL_FAILURE(CatalogExec(
      dir.path(), "CREATE TRIGGER refuse_join BEFORE UPDATE OF end_pos ON jobs "
                  "WHEN NEW.state = OLD.state BEGIN SELECT RAISE(ABORT, 'refused by the test'); "
                  "END;"));
  auto joined = StreamData(*client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 4));
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_TRUE(joined->no_job_reason().empty()) << joined->no_job_reason();
  ASSERT_EQ(joined->job_ids_size(), 1);
  EXPECT_EQ(joined->job_ids(0), second);
  ASSERT_NO_FATAL_FAILURE(CatalogExec(dir.path(), "DROP TRIGGER refuse_join;"));
  // The first job, which waited for the slot, takes all 120 as it starts (as it would have
  // without the trigger), and the second ends with nothing left to learn.
  ASSERT_TRUE(client->CancelJob(hog).ok());
  for (const std::string& id : {first, second}) {
    auto ended = client->WatchJob(id);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::JOB_STATE_SUCCEEDED) << ended->message();
  }
  auto info = client->GetModel("waiter");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->tasks(0).train_examples(), 120);
  EXPECT_EQ(info->tasks(0).pending_examples(), 0);
}

// A stream that joins a queued job grows the job's range on record at once: after a crash while
// the job still waits, the job answers for the examples that joined it, and a cancel keeps them
// all, as the server before the crash would have.
TEST(ServiceTest, AQueuedJobKeepsTheExamplesThatJoinedItThroughACrash) {
  TempDir dir;
  std::string second_id;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    std::string hog, first;
    // A later stream joins the second job.
    ASSERT_NO_FATAL_FAILURE(QueueBehindTheWaiter(*client, &hog, &first, &second_id));
    auto joined = StreamData(*client, "waiter", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 4));
    ASSERT_TRUE(joined.ok() && joined->job_ids_size() == 1);
    EXPECT_EQ(joined->job_ids(0), second_id);
    (*server)->Kill();
  }
  // Nothing trains in the held registry: the first job holds its actor again, the second waits.
  auto held = OpenHeld(dir.path(), second_id);
  ASSERT_TRUE(held.ok()) << held.status();
  auto& registry = held->registry;
  auto& second = held->job;
  EXPECT_EQ(second->Status().state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(second->Status().examples(), 120);
  auto cancelled = registry->CancelJob(second_id);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED) << cancelled->message();
  EXPECT_EQ(cancelled->examples(), 120);
}

// A job queued behind one that waits for a training slot finds nothing left when it starts (the
// waiting job takes every example): it ends with 0 examples, and a restart still shows 0, not
// the range it held in the queue (it did, as the catalog kept an empty record of it).
TEST(ServiceTest, AJobThatFoundNothingToLearnKeepsItsCountThroughARestart) {
  TempDir dir;
  std::string second_id;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    std::string hog, first;
    ASSERT_NO_FATAL_FAILURE(QueueBehindTheWaiter(*client, &hog, &first, &second_id));
    ASSERT_TRUE(client->CancelJob(hog).ok());
    auto ended = client->WatchJob(second_id);
    ASSERT_TRUE(ended.ok()) << ended.status();
    EXPECT_EQ(ended->state(), v1::JOB_STATE_SUCCEEDED) << ended->message();
    EXPECT_THAT(ended->message(), ::testing::HasSubstr("nothing new to learn"));
    EXPECT_EQ(ended->examples(), 0);
    auto learnt = client->WatchJob(first);
    ASSERT_TRUE(learnt.ok()) << learnt.status();
    EXPECT_EQ(learnt->examples(), 110);
    EXPECT_EQ((*server)->Terminate(), 0);
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto jobs = (*server)->Client()->ListJobs("waiter");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->jobs_size(), 2);
  EXPECT_EQ(jobs->jobs(0).examples(), 110);
  EXPECT_EQ(jobs->jobs(1).job_id(), second_id);
  EXPECT_EQ(jobs->jobs(1).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs->jobs(1).examples(), 0);
}

// A rollback goes back to what its target had learnt: the examples learnt since are pending
// again (after a restart and in an export too), the timer leaves them alone, and the task's
// next job learns them.
TEST(ServiceTest, ARollbackMakesTheExamplesLearntSincePendingAgain) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest r = BlobModel("m", false, /*epochs=*/2);
  r.mutable_config()->set_adapt_after_seconds(0.2);
  ASSERT_TRUE(client->CreateModel(r).ok());
  for (int64_t t = 0; t < 2; ++t) {
    auto s = StreamData(*client, "m", t, v1::SPLIT_TRAIN, {},
                        BlobTask(64, {2 * t, 2 * t + 1}, 1 + t));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(WaitJobs(*client, *s), t + 1);  // the version published
  }
  using Learnt = std::map<int64_t, int64_t>;
  auto learnt = [](const v1::VersionInfo& v) {
    return Learnt(v.learnt().per_task().begin(), v.learnt().per_task().end());
  };
  auto versions = client->ListVersions("m");
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_TRUE(versions->versions(0).has_learnt());
  EXPECT_EQ(learnt(versions->versions(0)), Learnt());
  EXPECT_EQ(learnt(versions->versions(1)), (Learnt{{0, 64}}));
  EXPECT_EQ(learnt(versions->versions(2)), (Learnt{{0, 64}, {1, 64}}));

  auto rolled = client->Rollback("m", 1);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(learnt(rolled->current()), (Learnt{{0, 64}}));
  ASSERT_EQ(rolled->tasks_size(), 2);
  EXPECT_EQ(rolled->tasks(0).pending_examples(), 0);
  EXPECT_EQ(rolled->tasks(1).pending_examples(), 64);
  // An export carries it: the copy's task 1 is pending too.
  auto snapshot = client->Export("m");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  auto copy = client->Import("copy", *snapshot);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->tasks(1).pending_examples(), 64);
  EXPECT_EQ(learnt(copy->current()), (Learnt{{0, 64}, {1, 0}}));
  std::this_thread::sleep_for(std::chrono::seconds(1));  // five of the timer's waits
  EXPECT_EQ(client->ListJobs("m")->jobs_size(), 2);
  EXPECT_EQ(client->ListJobs("copy")->jobs_size(), 0);

  // A restart agrees, though the jobs that learnt task 1 succeeded.
  (*server)->Kill();
  server->reset();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  EXPECT_EQ(client2->GetModel("m")->tasks(1).pending_examples(), 64);
  EXPECT_EQ(client2->GetModel("copy")->tasks(1).pending_examples(), 64);
  // The import's records of what it brought, which the restart read back.
  auto copy_jobs = client2->ListJobs("copy");
  ASSERT_TRUE(copy_jobs.ok()) << copy_jobs.status();
  ASSERT_EQ(copy_jobs->jobs_size(), 2);
  EXPECT_EQ(copy_jobs->jobs(0).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(copy_jobs->jobs(1).state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(copy_jobs->jobs(1).message(), ::testing::HasSubstr("held back before the export"));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(client2->ListJobs("m")->jobs_size(), 2);
  EXPECT_EQ(client2->ListJobs("copy")->jobs_size(), 2);

  // The task's next job (here a closing stream with no examples, adaptctl adapt) learns them.
  v1::StreamHeader retry;
  retry.set_model("m");
  retry.set_task_id(1);
  auto retried = client2->StreamExamples(retry, std::vector<v1::ExampleBatch>());
  ASSERT_TRUE(retried.ok()) << retried.status();
  ASSERT_EQ(WaitJobs(*client2, *retried), 4);
  EXPECT_EQ(client2->ListJobs("m")->jobs(2).examples(), 64);
  auto after = client2->GetModel("m");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->current().version(), 4);
  EXPECT_EQ(after->tasks(1).pending_examples(), 0);
  EXPECT_EQ(learnt(after->current()), (Learnt{{0, 64}, {1, 64}}));
}

// Evaluation examples that come after a version was published: Evaluate measures the current
// version on them at the call (as the mean model's accuracy, which Predict's mean mode gives
// too), without storing it in the version's record.
TEST(ServiceTest, EvaluateMeasuresTheCurrentVersionOnLateEvaluationExamples) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false, /*epochs=*/2)).ok());
  auto s = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(64, {0, 1}, 1));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(WaitJobs(*client, *s), 1);
  auto before = client->Evaluate("m");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->rows(1).accuracy_size(), 0);
  EXPECT_TRUE(std::isnan(before->average_accuracy()));

  const Dataset eval = BlobTask(40, {0, 1}, 2);
  ASSERT_TRUE(StreamData(*client, "m", 0, v1::SPLIT_EVAL, {}, eval).ok());
  auto after = client->Evaluate("m");
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->rows_size(), 2);
  ASSERT_EQ(after->rows(1).accuracy_size(), 1);
  auto p = client->Predict(PredictOn("m", eval.x, v1::PREDICT_MODE_MEAN));
  ASSERT_TRUE(p.ok()) << p.status();
  const double expected =
      Floats(p->labels()).eq(eval.y).to(at::kDouble).mean().item<double>();
  EXPECT_DOUBLE_EQ(after->rows(1).accuracy(0), expected);
  EXPECT_DOUBLE_EQ(after->average_accuracy(), expected);
  EXPECT_TRUE(std::isnan(after->rows(0).accuracy(0)));  // version 0 no longer serves
  EXPECT_EQ(client->ListVersions("m")->versions(1).eval_size(), 0);
}

// After a rollback, Evaluate's continual-learning figures follow the served model's history: a
// task learnt only by a version the rollback went back past is not forgotten, it was never
// learnt (its accuracy row stays listed).
TEST(ServiceTest, EvaluateAfterARollbackCountsTheServedHistory) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false, /*epochs=*/2)).ok());
  for (int64_t t = 0; t < 2; ++t) {
    const std::vector<int64_t> classes = {2 * t, 2 * t + 1};
    ASSERT_TRUE(
        StreamData(*client, "m", t, v1::SPLIT_EVAL, {}, BlobTask(40, classes, 10 + t)).ok());
    auto s = StreamData(*client, "m", t, v1::SPLIT_TRAIN, {}, BlobTask(64, classes, 1 + t));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(WaitJobs(*client, *s), t + 1);
  }
  auto before = client->Evaluate("m");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->forgetting_size(), 2);
  EXPECT_NEAR(before->average_forgetting(), before->forgetting(0), 1e-12);

  ASSERT_TRUE(client->Rollback("m", 1).ok());
  auto after = client->Evaluate("m");
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->rows_size(), 4);
  ASSERT_EQ(after->forgetting_size(), 2);
  EXPECT_NEAR(after->forgetting(0), 0.0, 1e-12);  // version 3 is version 1's state
  EXPECT_TRUE(std::isnan(after->forgetting(1))) << after->forgetting(1);
  EXPECT_TRUE(std::isnan(after->average_forgetting())) << after->average_forgetting();
  EXPECT_TRUE(std::isnan(after->backward_transfer())) << after->backward_transfer();
  // Version 2's row stays, and the served version is measured on task 1 too.
  EXPECT_EQ(after->rows(2).accuracy_size(), 2);
  EXPECT_FALSE(std::isnan(after->rows(3).accuracy(1)));
}

// An imported model's examples that no job had learnt wait for its own timer, from the import.
TEST(ServiceTest, AnImportedModelsWaitingExamplesGetTheirJob) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest r = BlobModel("src", false, /*epochs=*/2);
  r.mutable_config()->set_adapt_after_seconds(3600);  // src's own timer never comes here
  ASSERT_TRUE(client->CreateModel(r).ok());
  ASSERT_TRUE(StreamData(*client, "src", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 1), 64,
                         /*keep_open=*/true).ok());
  auto snapshot = client->Export("src");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const auto before_import = std::chrono::steady_clock::now();
  auto imported = client->Import("copy", *snapshot);
  ASSERT_TRUE(imported.ok()) << imported.status();
  ASSERT_EQ(imported->tasks_size(), 1);
  EXPECT_EQ(imported->tasks(0).pending_examples(), 40);
  // The exported version's record comes along, the settings it was trained with included.
  EXPECT_EQ(imported->current().config().SerializeAsString(),
            client->ListVersions("src")->versions(0).config().SerializeAsString());
  EXPECT_EQ(imported->current().config().adapt_after_seconds(), 3600);
  // The copy's wait counts from the import.
  v1::UpdateConfigRequest timer;
  timer.set_name("copy");
  timer.mutable_config()->set_adapt_after_seconds(3);
  timer.mutable_update_mask()->add_paths("adapt_after_seconds");
  ASSERT_TRUE(client->UpdateConfig(timer).ok());
  EXPECT_EQ(client->ListJobs("copy")->jobs_size(), 0);
  std::chrono::steady_clock::time_point seen;
  auto jobs = JobsOnceEnded(*client, "copy", 1, &seen);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_GE(seen - before_import, std::chrono::seconds(3));
  EXPECT_EQ(jobs[0].state(), v1::JOB_STATE_SUCCEEDED) << jobs[0].message();
  EXPECT_EQ(jobs[0].examples(), 40);
  EXPECT_EQ(client->GetModel("copy")->tasks(0).pending_examples(), 0);
  EXPECT_EQ(client->ListVersions("copy")->versions_size(), 2);
}

// The names of the files of a model's checkpoints.
std::vector<std::string> CheckpointFiles(const std::string& data_dir, const std::string& model) {
  std::vector<std::string> names;
  for (const auto& [path, crc] : DirDigest(data_dir + "/models/" + model + "/versions")) {
    names.push_back(path.substr(path.find_last_of('/') + 1));
  }
  std::sort(names.begin(), names.end());
  return names;
}

// --keep_versions=N: only the newest N versions keep their checkpoints. The others stay listed
// with their evaluations, and querying one or rolling back to it is NOT_FOUND. A restart with a
// smaller N applies it at once.
TEST(ServiceTest, KeepVersionsDeletesOlderCheckpoints) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--keep_versions=2"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("kept", false, 1)).ok());
  ASSERT_TRUE(StreamData(*client, "kept", 0, v1::SPLIT_EVAL, {}, BlobTask(40, {0, 1}, 30)).ok());
  for (int i = 0; i < 3; ++i) {
    auto s = StreamData(*client, "kept", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 31 + i));
    ASSERT_TRUE(s.ok()) << s.status();
    WaitJobs(*client, *s);
  }
  auto versions = client->ListVersions("kept");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->versions_size(), 4);
  for (int v = 0; v < 4; ++v) {
    EXPECT_EQ(versions->versions(v).checkpoint_deleted(), v < 2) << "version " << v;
    if (v > 0) {
      EXPECT_EQ(versions->versions(v).eval_size(), 1) << "version " << v;
    }
  }
  EXPECT_THAT(CheckpointFiles(dir.path(), "kept"), testing::ElementsAre("2.ckpt", "3.ckpt"));

  const at::Tensor x = BlobTask(5, {0, 1}, 40).x;
  v1::PredictRequest old = PredictOn("kept", x, v1::PREDICT_MODE_MEAN);
  old.set_version(1);
  auto gone = client->Predict(old);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(gone.status().message()), testing::HasSubstr("--keep_versions"));
  old.set_version(2);
  auto kept = client->Predict(old);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->version(), 2);
  auto to_deleted = client->Rollback("kept", 0);
  EXPECT_EQ(to_deleted.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(to_deleted.status().message()), testing::HasSubstr("--keep_versions"));
  auto rolled = client->Rollback("kept", 2);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->current().version(), 4);
  EXPECT_THAT(CheckpointFiles(dir.path(), "kept"), testing::ElementsAre("3.ckpt", "4.ckpt"));
  auto evaluated = client->Evaluate("kept");
  ASSERT_TRUE(evaluated.ok()) << evaluated.status();
  EXPECT_EQ(evaluated->rows_size(), 5);  // every version's record

  // A restart with a smaller N applies it; the deleted versions stay deleted.
  EXPECT_EQ((*server)->Terminate(), 0);
  server->reset();
  // A crash between marking a version deleted and deleting its file leaves the file behind.
  const std::string versions_dir = dir.path() + "/models/kept/versions/";
  std::filesystem::copy_file(versions_dir + "3.ckpt", versions_dir + "1.ckpt");
  auto restarted = ServerProcess::Start(dir.path(), {"--keep_versions=1"});
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  EXPECT_THAT(CheckpointFiles(dir.path(), "kept"), testing::ElementsAre("4.ckpt"));
  versions = client2->ListVersions("kept");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->versions_size(), 5);
  for (int v = 0; v < 5; ++v) EXPECT_EQ(versions->versions(v).checkpoint_deleted(), v < 4);
  auto now = client2->Predict(PredictOn("kept", x, v1::PREDICT_MODE_MEAN));
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ(now->version(), 4);
  EXPECT_TRUE(at::allclose(Floats(now->probs()), Floats(kept->probs())));  // 4 copies 2
}

// UpdateConfig: the named settings change for the jobs to come and survive a restart; the rest
// stay as they were. Turning the timer on gives examples that already wait their job.
TEST(ServiceTest, UpdateConfigChangesTheJobsToCome) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false, /*epochs=*/2)).ok());
  auto first = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(64, {0, 1}, 1));
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(WaitJobs(*client, *first), 1);

  v1::UpdateConfigRequest update;
  update.set_name("m");
  update.mutable_config()->set_epochs(5);
  update.mutable_config()->set_batch_size(8);  // not named: stays 32
  update.mutable_config()->mutable_ivon()->set_lr(0.05);
  update.mutable_update_mask()->add_paths("epochs");
  update.mutable_update_mask()->add_paths("ivon.lr");
  const v1::LearningConfig before = client->GetModel("m")->config();
  auto updated = client->UpdateConfig(update);
  ASSERT_TRUE(updated.ok()) << updated.status();
  v1::LearningConfig expected = before;
  expected.set_epochs(5);
  expected.mutable_ivon()->set_lr(0.05);
  EXPECT_EQ(updated->config().SerializeAsString(), expected.SerializeAsString())
      << updated->config().DebugString();
  EXPECT_EQ(updated->current().version(), 1);  // no new version

  auto second = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(64, {2, 3}, 2));
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(WaitJobs(*client, *second), 2);
  auto versions = client->ListVersions("m");
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->versions(1).steps(), 2 * 2);  // epochs x 64 / 32 examples per step
  EXPECT_EQ(versions->versions(2).steps(), 5 * 2);
  // Each version records the settings it was trained with; a rollback, its target's.
  EXPECT_EQ(versions->versions(0).config().SerializeAsString(), before.SerializeAsString());
  EXPECT_EQ(versions->versions(1).config().SerializeAsString(), before.SerializeAsString());
  EXPECT_EQ(versions->versions(2).config().SerializeAsString(), expected.SerializeAsString());
  auto rolled = client->Rollback("m", 1);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->current().config().SerializeAsString(), before.SerializeAsString());
  EXPECT_EQ(rolled->config().SerializeAsString(), expected.SerializeAsString());

  // A failed job, fixed: the learning rate and initial Hessian set back to their defaults,
  // then a closing stream with no examples (adaptctl adapt) gives the examples the failed job
  // left pending a new job.
  ASSERT_TRUE(client->CreateModel(DivergingModel("wild")).ok());
  ASSERT_TRUE(StreamData(*client, "wild", 0, v1::SPLIT_TRAIN, {}, BlobTask(64, {0, 1}, 4)).ok());
  auto failed = JobsOnceEnded(*client, "wild", 1);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].state(), v1::JOB_STATE_FAILED);
  v1::UpdateConfigRequest calm;
  calm.set_name("wild");
  calm.mutable_update_mask()->add_paths("ivon.lr");
  calm.mutable_update_mask()->add_paths("ivon.hess_init");
  ASSERT_TRUE(client->UpdateConfig(calm).ok());
  v1::StreamHeader retry;
  retry.set_model("wild");
  retry.set_task_id(0);
  auto retried = client->StreamExamples(retry, std::vector<v1::ExampleBatch>());
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->examples(), 0);
  ASSERT_EQ(retried->job_ids_size(), 1);
  EXPECT_EQ(WaitJobs(*client, *retried), 1);
  EXPECT_EQ(client->ListJobs("wild")->jobs(1).examples(), 64);
  EXPECT_EQ(client->GetModel("wild")->tasks(0).pending_examples(), 0);
  // Nothing pending now: no job.
  retried = client->StreamExamples(retry, std::vector<v1::ExampleBatch>());
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->job_ids_size(), 0);

  // Examples that a keep_open stream left waiting get their job once the timer is on.
  ASSERT_TRUE(client->CreateModel(BlobModel("waiting", false, 1)).ok());
  ASSERT_TRUE(StreamData(*client, "waiting", 0, v1::SPLIT_TRAIN, {}, BlobTask(30, {0, 1}, 3), 64,
                         /*keep_open=*/true).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(6200));
  EXPECT_EQ(client->ListJobs("waiting")->jobs_size(), 0);
  v1::UpdateConfigRequest timer;
  timer.set_name("waiting");
  timer.mutable_config()->set_adapt_after_seconds(6);
  timer.mutable_update_mask()->add_paths("adapt_after_seconds");
  const auto turned_on = std::chrono::steady_clock::now();
  ASSERT_TRUE(client->UpdateConfig(timer).ok());
  std::chrono::steady_clock::time_point seen;
  auto jobs = JobsOnceEnded(*client, "waiting", 1, &seen);
  ASSERT_EQ(jobs.size(), 1u);
  // The examples have waited 6 s already: their job comes at once, not after another 6 s (nor
  // never, from an actor left asleep). The bound leaves a loaded machine 5 s for a 30-example job.
  EXPECT_LT(seen - turned_on, std::chrono::milliseconds(5000));
  EXPECT_EQ(jobs[0].state(), v1::JOB_STATE_SUCCEEDED) << jobs[0].message();
  EXPECT_EQ(jobs[0].examples(), 30);

  // Durable: the restarted server has the new config.
  (*server)->Kill();
  server->reset();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  EXPECT_EQ(client2->GetModel("m")->config().SerializeAsString(), expected.SerializeAsString());
  EXPECT_DOUBLE_EQ(client2->GetModel("waiting")->config().adapt_after_seconds(), 6);
}

// A job whose training diverges fails with the reason and publishes nothing: the model keeps
// answering from its last good version, and the examples stay pending.
TEST(ServiceTest, ADivergingJobFailsAndPublishesNothing) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(DivergingModel("wild")).ok());
  auto s = StreamData(*client, "wild", 0, v1::SPLIT_TRAIN, {}, BlobTask(200, {0, 1, 2, 3}, 1));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->job_ids_size(), 1);
  auto last = client->WatchJob(s->job_ids(0));
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(last->message(), testing::HasSubstr("training diverged"));
  auto versions = client->ListVersions("wild");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->versions_size(), 1);  // version 0 only
  EXPECT_EQ(client->GetModel("wild")->tasks(0).pending_examples(), 200);
  auto p = client->Predict(PredictOn("wild", BlobTask(5, {0, 1}, 9).x, v1::PREDICT_MODE_MEAN));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->version(), 0);
  const at::Tensor probs = Floats(p->probs());
  EXPECT_TRUE(probs.isfinite().all().item<bool>());
  EXPECT_TRUE(at::allclose(probs.sum(1), at::ones({5}), 1e-5, 1e-5));
}

// Health, reflection and metrics, as an operator's tools see them.
TEST(ServiceTest, HealthReflectionAndMetrics) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--metrics_port=0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false)).ok());
  auto streamed = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(200, {0, 1, 2, 3}, 1));
  ASSERT_TRUE(streamed.ok());
  WaitJobs(*client, *streamed);

  auto channel = grpc::CreateChannel((*server)->target(), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  // grpc.health.v1.Health/Check with service "": HealthCheckResponse{status: SERVING} = 08 01.
  {
    grpc::ClientContext ctx;
    grpc::ByteBuffer request, response;
    grpc::Slice empty;
    request = grpc::ByteBuffer(&empty, 1);
    grpc::Status status;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = s;
                        done = true;
                        cv.notify_one();
                      });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  }
  // Reflection: ServerReflectionInfo with list_services = "" (field 7) names our services.
  {
    grpc::ClientContext ctx;
    grpc::CompletionQueue cq;
    auto call = generic.PrepareCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    void* tag;
    bool ok;
    call->StartCall(reinterpret_cast<void*>(1));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    const std::string req("\x3a\x00", 2);
    grpc::Slice slice(req);
    call->Write(grpc::ByteBuffer(&slice, 1), reinterpret_cast<void*>(2));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    grpc::ByteBuffer response;
    call->Read(&response, reinterpret_cast<void*>(3));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    for (const char* service : {"adaptd.v1.AdminService", "adaptd.v1.LearningService",
                                "adaptd.v1.QueryService", "grpc.health.v1.Health"}) {
      EXPECT_NE(bytes.find(service), std::string::npos) << service;
    }
    call->WritesDone(reinterpret_cast<void*>(4));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(5)) {
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
  // Metrics: the families an operator scrapes, with this model's values.
  ASSERT_GT((*server)->metrics_port(), 0);
  httplib::Client http("127.0.0.1", (*server)->metrics_port());
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  const std::string& text = res->body;
  // Whole lines, so that "} 1" does not also pass for 10 or 12.
  for (const std::string line : {"adaptd_requests_total{code=\"OK\",method=\"StreamExamples\"} 1",
                                 "adaptd_examples_ingested_total{model=\"m\"} 200",
                                 "adaptd_model_version{model=\"m\"} 1",
                                 "adaptd_memory_examples{model=\"m\"} 20",
                                 "adaptd_adaptation_seconds_count{model=\"m\"} 1",
                                 "adaptd_job_queue_depth{model=\"m\"} 0"}) {
    EXPECT_NE(text.find("\n" + line + "\n"), std::string::npos) << line << "\n" << text;
  }
  EXPECT_NE(text.find("\nadaptd_request_seconds_bucket{"), std::string::npos);
}

// --metrics_host keeps the plain-HTTP metrics endpoint on its own address: here 127.0.0.2 (a
// loopback address like 127.0.0.1, but a different one), while gRPC stays on 127.0.0.1. The
// endpoint answers on its address and not on gRPC's.
TEST(ServiceTest, MetricsListenOnTheirOwnHost) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--metrics_port=0", "--metrics_host=127.0.0.2"});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->metrics_port(), 0);
  auto client = (*server)->Client();
  EXPECT_TRUE(client->GetServerInfo().ok());
  httplib::Client own("127.0.0.2", (*server)->metrics_port());
  auto res = own.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("adaptd_requests_total"), std::string::npos) << res->body;
  httplib::Client grpc_host("127.0.0.1", (*server)->metrics_port());
  EXPECT_FALSE(grpc_host.Get("/metrics"));
}

}  // namespace
}  // namespace adaptd

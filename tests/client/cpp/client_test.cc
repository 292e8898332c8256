// AdaptdClient against a scripted server: options, metadata, streaming and status mapping.
#include "client/client.h"

#include <sys/stat.h>

#include <filesystem>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "client/tensor.h"
#include "tests/client/cpp/fake_server.h"
#include "tests/client/cpp/test_files.h"

namespace adaptd {
namespace {

std::unique_ptr<AdaptdClient> Connect(const FakeServer& server, ClientOptions options = {}) {
  options.timeout_seconds = 10;
  options.stream_timeout_seconds = 10;
  auto client = AdaptdClient::Create(server.target(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

v1::ExampleBatch Batch(int64_t n, int64_t first_id) {
  std::vector<float> x(n * 4, 0.5f);
  std::vector<int64_t> y(n, 1);
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = first_id + i;
  v1::ExampleBatch batch;
  *batch.mutable_x() = *FloatTensor(x, {n, 4});
  *batch.mutable_y() = *Int64Tensor(y, {n});
  *batch.mutable_client_ids() = *Int64Tensor(ids, {n});
  return batch;
}

TEST(FromGrpcStatusTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  const absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "no model"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no model");
  // A code past google.rpc.Code's 16 (20 is still a value the enum's type can hold: 42 would be
  // undefined behaviour, which UBSan reports).
  EXPECT_EQ(FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(20), "odd")).code(),
            absl::StatusCode::kUnknown);
}

TEST(AdaptdClientTest, RejectsInconsistentOptions) {
  EXPECT_EQ(AdaptdClient::Create("").status().code(), absl::StatusCode::kInvalidArgument);
  ClientOptions o;
  o.client_cert_pem = "CERT";
  EXPECT_EQ(AdaptdClient::Create("127.0.0.1:1", o).status().code(),
            absl::StatusCode::kInvalidArgument);  // key missing
  o.client_key_pem = "KEY";
  const absl::Status plaintext = AdaptdClient::Create("127.0.0.1:1", o).status();
  EXPECT_EQ(plaintext.code(), absl::StatusCode::kInvalidArgument);  // no roots: no TLS
  EXPECT_NE(plaintext.message().find("TLS"), absl::string_view::npos);
  ClientOptions t;
  t.timeout_seconds = 0;
  EXPECT_EQ(AdaptdClient::Create("127.0.0.1:1", t).status().code(),
            absl::StatusCode::kInvalidArgument);
  // "Never" is not a deadline: past int64 microseconds it would be one in the past.
  for (double huge : {1e10, std::numeric_limits<double>::infinity()}) {
    t.timeout_seconds = huge;
    const absl::Status refused = AdaptdClient::Create("127.0.0.1:1", t).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << huge;
    EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("at most 1000000 s"));
  }
  t.timeout_seconds = 1e6;
  EXPECT_TRUE(AdaptdClient::Create("127.0.0.1:1", t).ok());
  // Pings more often than the server accepts would get the connection closed.
  ClientOptions k;
  k.keepalive_seconds = kMinKeepaliveSeconds - 1;
  const absl::Status often = AdaptdClient::Create("127.0.0.1:1", k).status();
  EXPECT_EQ(often.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(often.message()), ::testing::HasSubstr("keepalive_seconds must be 0"));
  k.keepalive_seconds = 0;
  EXPECT_TRUE(AdaptdClient::Create("127.0.0.1:1", k).ok());
}

TEST(AdaptdClientTest, SendsTheTokenAsBearerMetadata) {
  FakeServer server;
  ClientOptions o;
  o.token = "s3cret";
  ASSERT_TRUE(Connect(server, o)->GetServerInfo().ok());
  {
    absl::MutexLock lock(&server.log().mu);
    EXPECT_EQ(server.log().authorization, "Bearer s3cret");
  }
  ASSERT_TRUE(Connect(server)->GetServerInfo().ok());
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().authorization, "");
}

TEST(AdaptdClientTest, MapsServerErrors) {
  FakeServer server;
  auto client = Connect(server);
  const absl::Status missing = client->GetModel("missing").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "no model 'missing'");
  // The fake does not implement ListModels.
  EXPECT_EQ(client->ListModels().status().code(), absl::StatusCode::kUnimplemented);
  ASSERT_TRUE(client->GetModel("m").ok());
  EXPECT_EQ(client->GetModel("m")->spec().input_shape(0), 4);
}

TEST(AdaptdClientTest, ExportCollectsTheChunks) {
  FakeServer server;
  auto client = Connect(server);
  absl::StatusOr<std::string> snapshot = client->Export("m");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(*snapshot, "snapshot-bytes");
  EXPECT_EQ(client->Export("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(AdaptdClientTest, ExportToFileWritesOnlyComplete) {
  FakeServer server;
  auto client = Connect(server);
  const std::string path = TestPath("snapshot");
  absl::StatusOr<int64_t> size = client->ExportToFile("m", path);
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(*size, 14);
  EXPECT_EQ(FileText(path), "snapshot-bytes");
  // An ordinary file: 0644 under the umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644 & ~mask);
  // A failed export leaves neither the file nor its partial copy, and an older file as it was.
  const std::string failed = TestPath("failed");
  EXPECT_EQ(client->ExportToFile("missing", failed).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client->ExportToFile("missing", path).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FileText(path), "snapshot-bytes");
  for (const auto& entry : std::filesystem::directory_iterator(testing::TempDir())) {
    const std::string name = entry.path().filename().string();
    if (name.find("ExportToFileWritesOnlyComplete.") == std::string::npos) continue;
    EXPECT_TRUE(name.find("failed") == std::string::npos && name.find("partial") == std::string::npos)
        << name;
  }
  // A local failure carries errno's code and names the file, not a server-side code.
  const absl::Status nowhere = client->ExportToFile("m", TestPath("no/such/dir/snapshot")).status();
  EXPECT_EQ(nowhere.code(), absl::StatusCode::kNotFound) << nowhere;
  EXPECT_THAT(std::string(nowhere.message()), ::testing::HasSubstr("no/such/dir/snapshot.partial"));
}

TEST(AdaptdClientTest, ImportNamesTheModelInTheFirstChunkOnly) {
  FakeServer server;
  ClientOptions o;
  // Small messages force several chunks.
  o.max_message_bytes = 4096;
  auto client = Connect(server, o);
  std::string snapshot(10000, 'x');
  snapshot[9999] = 'y';
  absl::StatusOr<v1::ModelInfo> model = client->Import("copy", snapshot);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name(), "copy");
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().import_data, snapshot);
  ASSERT_GE(server.log().import_names.size(), 3u);
  EXPECT_EQ(server.log().import_names[0], "copy");
  for (size_t i = 1; i < server.log().import_names.size(); ++i) {
    EXPECT_EQ(server.log().import_names[i], "") << i;
  }
}

TEST(AdaptdClientTest, ImportFromFileStreamsTheFile) {
  FakeServer server;
  auto client = Connect(server);
  const std::string path = WriteFile("snapshot", "file-bytes");
  ASSERT_TRUE(client->ImportFromFile("m", path).ok());
  {
    absl::MutexLock lock(&server.log().mu);
    EXPECT_EQ(server.log().import_data, "file-bytes");
  }
  EXPECT_EQ(client->ImportFromFile("m", TestPath("absent")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client->Import("m", "").status().code(), absl::StatusCode::kInvalidArgument);
  const absl::Status dir = client->ImportFromFile("m", testing::TempDir()).status();
  EXPECT_EQ(dir.code(), absl::StatusCode::kInvalidArgument) << dir;
  EXPECT_THAT(std::string(dir.message()), ::testing::HasSubstr("is a directory; expected a file"));
  // A file of several chunks arrives whole and in order.
  ClientOptions small;
  small.max_message_bytes = 4096;
  auto chunked = Connect(server, small);
  std::string bytes(10000, 'x');
  bytes[0] = 'a';
  bytes[9999] = 'z';
  ASSERT_TRUE(chunked->ImportFromFile("m", WriteFile("large", bytes)).ok());
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().import_data, bytes);
  EXPECT_GE(server.log().import_names.size(), 3u);
  // The absent file, the empty snapshot and the directory were refused before any call opened:
  // a cancelled call could still run on the server later and clear what a later one stored.
  EXPECT_EQ(server.log().import_calls, 2);
}

TEST(AdaptdClientTest, StreamExamplesSendsHeaderBatchesAndReportsProgress) {
  FakeServer server;
  auto client = Connect(server);
  v1::StreamHeader header;
  header.set_model("m");
  header.set_task_id(2);
  header.add_classes(4);
  header.add_classes(5);
  std::vector<int64_t> progress;
  absl::StatusOr<v1::StreamExamplesResponse> response = client->StreamExamples(
      header, {Batch(3, 0), Batch(2, 3)}, [&](int64_t sent) { progress.push_back(sent); });
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->examples(), 5);
  EXPECT_EQ(response->batches(), 2);
  ASSERT_EQ(response->job_ids_size(), 1);
  EXPECT_EQ(progress, (std::vector<int64_t>{3, 5}));
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().header.task_id(), 2);
  EXPECT_EQ(server.log().header.classes_size(), 2);
  EXPECT_EQ(server.log().client_ids, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(AdaptdClientTest, StreamExamplesReportsTheServersRejection) {
  FakeServer server;
  auto client = Connect(server);
  std::vector<v1::ExampleBatch> batches = {Batch(2, 0), v1::ExampleBatch(), Batch(2, 2)};
  absl::StatusOr<v1::StreamExamplesResponse> response =
      client->StreamExamples(v1::StreamHeader(), batches);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(response.status().message().find("no dtype"), absl::string_view::npos);
}

TEST(AdaptdClientTest, StreamExamplesStopsOnTheSourcesError) {
  FakeServer server;
  auto client = Connect(server);
  int calls = 0;
  absl::StatusOr<v1::StreamExamplesResponse> response = client->StreamExamples(
      v1::StreamHeader(), [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
        if (++calls == 1) return std::optional<v1::ExampleBatch>(Batch(2, 0));
        return absl::DataLossError("disk read failed");
      });
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDataLoss);
  // The source's error, then what the server said of the stream it got without an end message.
  EXPECT_EQ(response.status().message(),
            "disk read failed; the server: the stream ended without its end message");
  EXPECT_EQ(calls, 2);
  // The stream was closed without its end message: nothing of it would be stored. (Closing it
  // with an end message would have committed the batch before the error.)
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().committed_streams, 0);
}

TEST(AdaptdClientTest, WatchJobSeesEveryStatusAndReturnsTheLast) {
  FakeServer server;
  auto client = Connect(server);
  std::vector<v1::JobState> states;
  absl::StatusOr<v1::JobStatus> last =
      client->WatchJob("job-1", [&](const v1::JobStatus& s) { states.push_back(s.state()); });
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(states, (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING,
                                               v1::JOB_STATE_SUCCEEDED}));
  EXPECT_EQ(last->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(last->version(), 1);
  // A failed job is the job's outcome, not an RPC error.
  absl::StatusOr<v1::JobStatus> failed = client->WatchJob("job-fail");
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(client->WatchJob("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(AdaptdClientTest, UnaryCallsOfEveryService) {
  FakeServer server;
  auto client = Connect(server);
  absl::StatusOr<v1::JobStatus> cancelled = client->CancelJob("job-1");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  v1::PredictRequest predict;
  *predict.mutable_x() = *FloatTensor({1, 2, 3, 4}, {1, 4});
  predict.set_version(7);
  absl::StatusOr<v1::PredictResponse> predicted = client->Predict(predict);
  ASSERT_TRUE(predicted.ok()) << predicted.status();
  EXPECT_EQ(predicted->version(), 7);
  EXPECT_EQ(client->Predict(v1::PredictRequest()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AdaptdClientTest, ConcurrentCallsShareOneClient) {
  FakeServer server;
  auto client = Connect(server);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) ok += client->GetModel("m").ok() ? 1 : 0;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 40);
}

}  // namespace
}  // namespace adaptd

// kill -9 the server while a client streams and while an adaptation runs: after a restart
// every acknowledged example and every published version is there, bit for bit, and the
// interrupted job runs again to the result an uninterrupted run gives.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <sqlite3.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "core/status_macros.h"
#include "core/tensor_io.h"
#include "server/catalog.h"
#include "server/convert.h"
#include "server/example_log.h"
#include "server/fs_util.h"
#include "server/registry.h"
#include "tests/integration/fixtures.h"
#include "tests/integration/server_process.h"
#include "tests/testing/damage.h"
#include "tests/testing/immutable.h"

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

// The training examples of task `task` in an exported snapshot, in arrival order.
Dataset ExportedTrain(const AdaptdClient& client, const std::string& model, int64_t task) {
  auto snapshot = client.Export(model);
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  auto map = ParseTensors(*snapshot);
  EXPECT_TRUE(map.ok()) << map.status();
  std::vector<at::Tensor> xs, ys;
  for (int i = 0; map->count("batch." + std::to_string(i) + ".y"); ++i) {
    const std::string p = "batch." + std::to_string(i) + ".";
    if (map->at(p + "task").item<int64_t>() != task || map->at(p + "split").item<int64_t>() != 0) {
      continue;
    }
    xs.push_back(map->at(p + "x"));
    ys.push_back(map->at(p + "y"));
  }
  Dataset d;
  if (xs.empty()) return d;
  d.x = at::cat(xs);
  d.y = at::cat(ys);
  return d;
}

TEST(CrashTest, KillWhileStreamingLosesNothingAcknowledged) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--metrics_port=0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false)).ok());
  // Two acknowledged streams: the first closes task 0 (a job, a version), the second adds to
  // task 1 and keeps it open.
  const Dataset d0 = BlobTask(200, {0, 1}, 1);
  auto s0 = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, d0);
  ASSERT_TRUE(s0.ok()) << s0.status();
  WaitJobs(*client, *s0);
  const Dataset d1 = BlobTask(150, {2, 3}, 2);
  auto s1 = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, d1, 64, /*keep_open=*/true);
  ASSERT_TRUE(s1.ok()) << s1.status();
  const auto versions_before = DirDigest(dir.path() + "/models/m/versions");
  ASSERT_EQ(versions_before.size(), 2u);

  // A third stream is in flight (batches sent, never closed) when the server dies.
  std::atomic<int> sent{0};
  std::atomic<bool> dead{false};
  absl::Status in_flight;
  std::thread streamer([&] {
    v1::StreamHeader h;
    h.set_model("m");
    h.set_task_id(1);
    const Dataset more = BlobTask(64, {2, 3}, 3);
    int i = 0;
    in_flight = client->StreamExamples(h, [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
      if (i++ < 5) {
        ++sent;
        return MakeBatch(more.x, more.y);
      }
      while (!dead) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return absl::CancelledError("the server is gone");
    }).status();
  });
  // The server holds all five batches (64 examples of 6 floats, 2 KiB of tensors, 24 bytes of
  // ids each) when it dies.
  ASSERT_TRUE(WaitForMetric((*server)->metrics_port(), "adaptd_buffered_bytes",
                            5 * (64 * (6 * 4 + 24) + 2048)));
  (*server)->Kill();
  server->reset();
  dead = true;
  streamer.join();
  EXPECT_FALSE(in_flight.ok());

  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  auto model = client2->GetModel("m");
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->tasks_size(), 2);
  EXPECT_EQ(model->tasks(0).train_examples(), 200);
  EXPECT_EQ(model->tasks(1).train_examples(), 150);  // the unacknowledged 320 are gone
  EXPECT_EQ(model->tasks(1).pending_examples(), 150);
  EXPECT_EQ(model->current().version(), 1);
  // Bit-identical examples and checkpoints.
  const Dataset back0 = ExportedTrain(*client2, "m", 0);
  const Dataset back1 = ExportedTrain(*client2, "m", 1);
  EXPECT_TRUE(at::equal(back0.x, d0.x.to(at::kFloat)));
  EXPECT_TRUE(at::equal(back0.y, d0.y));
  EXPECT_TRUE(at::equal(back1.x, d1.x.to(at::kFloat)));
  EXPECT_TRUE(at::equal(back1.y, d1.y));
  EXPECT_EQ(DirDigest(dir.path() + "/models/m/versions"), versions_before);
  // The example ids continue after the acknowledged ones.
  auto s2 = StreamData(*client2, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(10, {2, 3}, 4));
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_EQ(s2->ids(0).first(), 350);
  WaitJobs(*client2, *s2);
  EXPECT_EQ(client2->GetModel("m")->tasks(1).pending_examples(), 0);
}

TEST(CrashTest, KillDuringAdaptationResumesToTheUninterruptedResult) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  // Two identical models; "b" learns undisturbed, "a" is killed in the middle of task 1.
  for (const char* name : {"a", "b"}) {
    v1::CreateModelRequest r = BlobModel(name, false, /*epochs=*/150);
    r.mutable_spec()->set_hidden(0, 256);
    r.mutable_spec()->add_hidden(256);
    ASSERT_TRUE(client->CreateModel(r).ok());
  }
  const Dataset d0 = BlobTask(100, {0, 1}, 1), d1 = BlobTask(300, {2, 3}, 2);
  for (const char* name : {"a", "b"}) {
    auto s = StreamData(*client, name, 0, v1::SPLIT_TRAIN, {}, d0);
    ASSERT_TRUE(s.ok());
    WaitJobs(*client, *s);
  }
  auto sb = StreamData(*client, "b", 1, v1::SPLIT_TRAIN, {}, d1);
  ASSERT_TRUE(sb.ok());
  WaitJobs(*client, *sb);
  const auto versions_before = DirDigest(dir.path() + "/models/a/versions");

  auto sa = StreamData(*client, "a", 1, v1::SPLIT_TRAIN, {}, d1);
  ASSERT_TRUE(sa.ok());
  const std::string job = sa->job_ids(0);
  // Kill once the job is well under way (WatchJob reports progress as it trains).
  int64_t step_at_kill = 0, total = 0;
  std::atomic<bool> killed{false}, updated{false};
  auto watched = client->WatchJob(job, [&](const v1::JobStatus& s) {
    if (!killed && s.state() == v1::JOB_STATE_RUNNING && s.step() > 100) {
      step_at_kill = s.step();
      total = s.total_steps();
      // New settings while the job runs are for the jobs to come: the resumed job keeps its own.
      v1::UpdateConfigRequest fewer;
      fewer.set_name("a");
      fewer.mutable_config()->set_epochs(30);
      fewer.mutable_update_mask()->add_paths("epochs");
      updated = client->UpdateConfig(fewer).ok();
      killed = true;
      (*server)->Kill();
    }
  });
  (void)watched;  // the call fails: the server died under it
  ASSERT_TRUE(killed) << "the job ended before it could be interrupted";
  ASSERT_TRUE(updated);
  EXPECT_LT(step_at_kill, total);
  server->reset();

  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto client2 = (*restarted)->Client();
  EXPECT_EQ(DirDigest(dir.path() + "/models/a/versions"), versions_before);
  auto resumed = client2->WatchJob(job);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::JOB_STATE_SUCCEEDED) << resumed->message();
  EXPECT_EQ(resumed->version(), 2);
  auto versions = client2->ListVersions("a");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->versions_size(), 3);
  EXPECT_EQ(versions->versions(2).job_id(), job);
  EXPECT_EQ(versions->versions(2).steps(), total);
  EXPECT_EQ(versions->versions(2).config().epochs(), 150);
  EXPECT_EQ(client2->GetModel("a")->config().epochs(), 30);
  // The resumed adaptation equals the uninterrupted one bit for bit.
  for (const char* name : {"a", "b"}) {
    v1::PredictRequest r;
    r.set_model(name);
    r.set_mode(v1::PREDICT_MODE_BAYES);
    r.set_samples(8);
    *r.mutable_x() = TensorToProto(d1.x.narrow(0, 0, 50));
    auto p = client2->Predict(r);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->version(), 2);
    static std::string first;
    if (std::string(name) == "a") {
      first = p->probs().raw_data();
    } else {
      EXPECT_EQ(p->probs().raw_data(), first);
    }
  }
}

}  // namespace
}  // namespace adaptd

namespace adaptd {
namespace {

// The entries of a directory, sorted.
std::vector<std::string> SortedDir(const std::string& path) {
  std::vector<std::string> names = ListDir(path);
  std::sort(names.begin(), names.end());
  return names;
}

using namespace testing_service;  // NOLINT

// Model "m" with one job that trains long enough (300 epochs by default, 256 hidden units) to be
// interrupted on purpose; the answer of the stream that queued it.
absl::StatusOr<v1::StreamExamplesResponse> StartALongJob(const AdaptdClient& client,
                                                          int epochs = 300,
                                                          double adapt_after_seconds = 0) {
  v1::CreateModelRequest r = BlobModel("m", false, epochs);
  r.mutable_spec()->set_hidden(0, 256);
  r.mutable_config()->set_adapt_after_seconds(adapt_after_seconds);
  ADAPTD_RETURN_IF_ERROR(client.CreateModel(r).status());
  return StreamData(client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(300, {0, 1}, 1));
}

// Watches job `id` and calls `act` once, when the job has run 50 steps. The watch's end (a
// shutdown ends it with UNAVAILABLE); `*acted` says whether `act` ran.
absl::Status WhenItHasRun(const AdaptdClient& client, const std::string& id,
                          const std::function<void()>& act, bool* acted) {
  *acted = false;
  return client
      .WatchJob(id,
                [&](const v1::JobStatus& st) {
                  if (*acted || st.state() != v1::JOB_STATE_RUNNING || st.step() <= 50) return;
                  *acted = true;
                  act();
                })
      .status();
}

// A second connection to a data directory's catalog that can hold its write lock. While it is
// held, the server's catalog writes wait out SQLite's busy timeout (5 s) and fail.
class CatalogWriteLock {
 public:
  explicit CatalogWriteLock(const std::string& data_dir) {
    if (sqlite3_open((data_dir + "/catalog.sqlite").c_str(), &db_) != SQLITE_OK) {
      ADD_FAILURE() << "cannot open the catalog: " << sqlite3_errmsg(db_);
    }
  }
  ~CatalogWriteLock() { sqlite3_close(db_); }
  CatalogWriteLock(const CatalogWriteLock&) = delete;
  CatalogWriteLock& operator=(const CatalogWriteLock&) = delete;

  bool Take() { return sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK; }
  bool Release() { return sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr) == SQLITE_OK; }

 private:
  sqlite3* db_ = nullptr;
};

// The catalog of `data_dir` (its server stopped) holds model "m"'s job `id` as a shutdown left
// it: interrupted, queued to resume, not ended before the signal.
void ExpectInterruptedByTheShutdown(const std::string& data_dir, const std::string& id) {
  auto catalog = Catalog::Open(data_dir + "/catalog.sqlite");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  for (const JobRow& j : *jobs) {
    if (j.id != id) continue;
    EXPECT_EQ(j.state, v1::JOB_STATE_QUEUED) << "the signal came too late: " << j.message;
    EXPECT_EQ(j.message, "interrupted by shutdown; resumes on restart");
    return;
  }
  ADD_FAILURE() << "no job " << id;
}

// Runs StartALongJob's job (`epochs`, `adapt_after_seconds`) on a server on `data_dir` and calls
// `act` with the client and the server once it has run 50 steps (act stops the server). The
// job's id; empty, with a failure, if the job ended first.
std::string InterruptALongJob(
    const std::string& data_dir, int epochs, double adapt_after_seconds,
    const std::function<void(const AdaptdClient&, ServerProcess&)>& act) {
  auto server = ServerProcess::Start(data_dir);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return "";
  auto client = (*server)->Client();
  auto s = StartALongJob(*client, epochs, adapt_after_seconds);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return "";
  bool acted;
  (void)WhenItHasRun(*client, s->job_ids(0), [&] { act(*client, **server); }, &acted);
  EXPECT_TRUE(acted) << "the job ended before it could be interrupted";
  return acted ? s->job_ids(0) : "";
}

// After a restart, the interrupted job `id` learns the 300 examples it had started on, and
// publishes version 1.
void ExpectItLearnsItsRange(const AdaptdClient& client, const std::string& id) {
  auto resumed = client.WatchJob(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), v1::JOB_STATE_SUCCEEDED) << resumed->message();
  EXPECT_EQ(resumed->examples(), 300);
  EXPECT_EQ(resumed->version(), 1);
}

// A server started again on `data_dir` runs job `id` to the end and publishes version 1.
void ExpectItRunsAfterARestart(const std::string& data_dir, const std::string& id) {
  auto server = ServerProcess::Start(data_dir);
  ASSERT_TRUE(server.ok()) << server.status();
  auto last = (*server)->Client()->WatchJob(id);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::JOB_STATE_SUCCEEDED) << last->message();
  EXPECT_EQ(last->version(), 1);
}

// A server started again on `data_dir` shows job `id` cancelled (with `message`, unless empty),
// and has published nothing.
void ExpectCancelledAfterARestart(const std::string& data_dir, const std::string& id,
                                  const std::string& message = "") {
  auto server = ServerProcess::Start(data_dir);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto last = client->WatchJob(id);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::JOB_STATE_CANCELLED) << last->message();
  if (!message.empty()) {
    EXPECT_EQ(last->message(), message);
  }
  EXPECT_EQ(client->GetModel("m")->current().version(), 0);
}

// SIGTERM: the server exits cleanly (status 0); the job it interrupted stays queued and
// completes after the restart.
TEST(ShutdownTest, SigtermInterruptsAJobThatResumesOnRestart) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto s = StartALongJob(*client);
  ASSERT_TRUE(s.ok()) << s.status();
  int exit_status = -1;
  bool acted;
  // The watch keeps a call open through the shutdown's grace period; the job must not train on
  // (and publish) meanwhile, and the watcher is told why its watch ends.
  const absl::Status watched = WhenItHasRun(
      *client, s->job_ids(0), [&] { exit_status = (*server)->Terminate(); }, &acted);
  ASSERT_TRUE(acted) << "the job ended before it could be interrupted";
  EXPECT_TRUE(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 0) << exit_status;
  EXPECT_EQ(watched.code(), absl::StatusCode::kUnavailable) << watched;
  EXPECT_THAT(std::string(watched.message()), ::testing::HasSubstr("the server is shutting down"));
  EXPECT_EQ(DirDigest(dir.path() + "/models/m/versions").size(), 1u);  // version 0 only
  server->reset();

  // A server opens its registry before it binds its port: until it holds the port, the
  // recovered job stays queued (a start that fails to bind trains nothing), then it trains.
  {
    auto held = OpenHeld(dir.path(), s->job_ids(0));
    ASSERT_TRUE(held.ok()) << held.status();
    auto& registry = held->registry;
    auto& job = held->job;
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_EQ(job->Status().state(), v1::JOB_STATE_QUEUED);
    registry->StartTraining();
    v1::JobStatus st;
    uint64_t seen = 0;
    for (int i = 0; i < 300 && st.state() == v1::JOB_STATE_QUEUED; ++i) {
      seen = job->WaitForChange(seen, 100, &st);
    }
    EXPECT_NE(st.state(), v1::JOB_STATE_QUEUED) << st.message();
  }  // closing the registry interrupts the job again; it stays queued

  ExpectItRunsAfterARestart(dir.path(), s->job_ids(0));
}

}  // namespace
}  // namespace adaptd

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

// Deleting a model while its job trains and re-creating the name leaves nothing of the old one.
TEST(LifecycleTest, DeleteDuringAJobThenRecreateStartsClean) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest r = BlobModel("d", false, /*epochs=*/300);
  r.mutable_spec()->set_hidden(0, 256);
  ASSERT_TRUE(client->CreateModel(r).ok());
  auto s = StreamData(*client, "d", 0, v1::SPLIT_TRAIN, {}, BlobTask(300, {0, 1}, 1));
  ASSERT_TRUE(s.ok());
  bool deleted = false;
  (void)client->WatchJob(s->job_ids(0), [&](const v1::JobStatus& st) {
    if (!deleted && st.state() == v1::JOB_STATE_RUNNING && st.step() > 20) {
      deleted = true;
      EXPECT_TRUE(client->DeleteModel("d").ok());
    }
  });
  ASSERT_TRUE(deleted);
  ASSERT_TRUE(client->CreateModel(BlobModel("d", false, 1)).ok());
  auto fresh = client->GetModel("d");
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->tasks_size(), 0);
  EXPECT_EQ(fresh->version_count(), 1);
  EXPECT_EQ(client->ListJobs("d")->jobs_size(), 0);
  // And the same after a restart: no row of the old model came back.
  (*server)->Terminate();
  server->reset();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto again = (*restarted)->Client()->GetModel("d");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->tasks_size(), 0);
  EXPECT_EQ(again->version_count(), 1);
}

// CreateModel racing DeleteModel of the same name: the name is free only once the deletion has
// removed the old files, so a creation that succeeds keeps its own files and stays usable (it
// takes examples, and it loads after a restart). Twenty rounds, each a fresh race.
TEST(LifecycleTest, CreateRacingDeleteOfTheSameNameKeepsTheNewModel) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto creator = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("r", false, 1)).ok());
  int refused = 0;
  for (int round = 0; round < 20; ++round) {
    // The old model holds examples, so its deletion has files to remove.
    ASSERT_TRUE(StreamData(*client, "r", 0, v1::SPLIT_TRAIN, {0, 1}, BlobTask(64, {0, 1}, round),
                           64, /*keep_open=*/true)
                    .ok());
    std::atomic<bool> go{false};
    absl::Status deleted;
    std::thread remover([&] {
      while (!go) std::this_thread::yield();
      deleted = client->DeleteModel("r").status();
    });
    go = true;
    absl::Status created;
    for (int attempt = 0; attempt < 10000; ++attempt) {
      created = creator->CreateModel(BlobModel("r", false, 1)).status();
      if (created.ok()) break;
      // The old model still there, or its deletion still under way.
      ASSERT_TRUE(created.code() == absl::StatusCode::kAlreadyExists ||
                  created.code() == absl::StatusCode::kUnavailable)
          << created;
      if (created.code() == absl::StatusCode::kUnavailable) ++refused;
    }
    remover.join();
    ASSERT_TRUE(deleted.ok()) << deleted;
    ASSERT_TRUE(created.ok()) << created;
    auto info = client->GetModel("r");
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->tasks_size(), 0) << "round " << round;
    auto more = StreamData(*client, "r", 0, v1::SPLIT_TRAIN, {0, 1}, BlobTask(8, {0, 1}, 99), 64,
                           /*keep_open=*/true);
    ASSERT_TRUE(more.ok()) << "round " << round << ": " << more.status();
  }
  std::printf("creations refused while the deletion ran: %d\n", refused);
  (*server)->Terminate();
  server->reset();
  auto restarted = ServerProcess::Start(dir.path());
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  auto again = (*restarted)->Client()->GetModel("r");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->tasks_size(), 1);
}

// At start: a creation or import that never reached version 0 and carries its CREATING marker
// (with what it had written), a directory with no file yet, and a directory marked by an
// interrupted deletion are removed. Files that the catalog does not list, or lists as a creation
// that never finished, unmarked, are kept offline until DeleteModel removes them: a catalog
// removed or restored from an older copy must not take the data with it. A marker left in a
// model that has its rows is dropped, and anything but a directory under models/ is left alone.
TEST(LifecycleTest, UnfinishedCreationAndStrayFilesAreRemovedAtStart) {
  TempDir dir;
  const std::string models = dir.path() + "/models";
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_TRUE((*server)->Client()->CreateModel(BlobModel("live", false, 1)).ok());
    ASSERT_NE(::access((models + "/live/CREATING").c_str(), F_OK), 0);  // gone after version 0
  }
  {
    auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
    ASSERT_TRUE(catalog.ok());
    ASSERT_TRUE((*catalog)->InsertModel({"half", "", "", 1}).ok());
    ASSERT_TRUE((*catalog)->InsertModel({"restored", "", "", 1}).ok());
  }
  ASSERT_EQ(std::system(("cd '" + models + "' && mkdir -p stray/examples stray/versions " +
                         "gone/examples kept/examples half/versions restored/examples " +
                         "creating/versions && touch half/versions/0.ckpt.partial.1.0 " +
                         "half/CREATING gone/examples/0.log gone/DELETING " +
                         "creating/versions/0.ckpt creating/CREATING live/DELETING " +
                         "live/CREATING && echo data > kept/examples/0.log && " +
                         "echo data > restored/examples/0.log && echo notes > notes.txt").c_str()),
            0);
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_EQ(client->ListModels()->models_size(), 1);
  EXPECT_EQ(client->ListModels()->models(0).name(), "live");
  EXPECT_EQ(SortedDir(models),
            (std::vector<std::string>{"kept", "live", "notes.txt", "restored"}));
  EXPECT_EQ(SortedDir(models + "/live"), (std::vector<std::string>{"examples", "versions"}));
  const absl::Status kept = client->GetModel("kept").status();
  EXPECT_EQ(kept.code(), absl::StatusCode::kDataLoss) << kept;
  EXPECT_THAT(std::string(kept.message()), ::testing::HasSubstr("no row in catalog.sqlite"));
  const absl::Status restored = client->GetModel("restored").status();
  EXPECT_EQ(restored.code(), absl::StatusCode::kDataLoss) << restored;
  EXPECT_THAT(std::string(restored.message()), ::testing::HasSubstr("no creation marker"));
  for (const char* name : {"kept", "restored"}) {
    EXPECT_EQ(client->CreateModel(BlobModel(name, false, 1)).status().code(),
              absl::StatusCode::kAlreadyExists);
  }
  EXPECT_TRUE(client->CreateModel(BlobModel("half", false, 1)).ok());
  // A name that a file under models/ holds is refused, and the file stays.
  EXPECT_EQ(client->CreateModel(BlobModel("notes.txt", false, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client->DeleteModel("kept").ok());
  EXPECT_TRUE(client->DeleteModel("restored").ok());
  EXPECT_EQ(SortedDir(models), (std::vector<std::string>{"half", "live", "notes.txt"}));
  EXPECT_TRUE(client->CreateModel(BlobModel("kept", false, 1)).ok());
  EXPECT_TRUE(client->CreateModel(BlobModel("restored", false, 1)).ok());
  EXPECT_EQ(client->ListModels()->models_size(), 4);
}

// A catalog row damaged on disk keeps only its own model offline, with the reason, whether the
// model's own row (its settings) or one of its version rows was hit; the other models load. The
// damaged model's files stay until DeleteModel, after which the name is free again.
TEST(LifecycleTest, ACatalogRowDamagedOnDiskKeepsOnlyItsModelOffline) {
  TempDir dir;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    // Its own epochs, so that no other row holds its settings' bytes.
    ASSERT_TRUE((*server)->Client()->CreateModel(BlobModel("settings", false, 7)).ok());
    for (const char* name : {"version", "live"}) {
      ASSERT_TRUE((*server)->Client()->CreateModel(BlobModel(name, false, 1)).ok());
    }
  }
  std::string settings, version_info;
  {
    auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto models = (*catalog)->ListModels();
    ASSERT_TRUE(models.ok()) << models.status();
    for (const ModelRow& m : *models) {
      if (m.name == "settings") settings = m.config;
    }
    auto versions = (*catalog)->ListVersions("version");
    auto live = (*catalog)->ListVersions("live");
    ASSERT_TRUE(versions.ok() && live.ok());
    version_info = versions->at(0).info;
    ASSERT_NE(version_info, live->at(0).info);
  }
  ASSERT_FALSE(settings.empty());
  ASSERT_NO_FATAL_FAILURE(FlipBitIn(dir.path() + "/catalog.sqlite", settings));
  ASSERT_NO_FATAL_FAILURE(FlipBitIn(dir.path() + "/catalog.sqlite", version_info));
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto models = client->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->models_size(), 1);
  EXPECT_EQ(models->models(0).name(), "live");
  EXPECT_TRUE(client->GetModel("live").ok());
  for (const auto& [name, named] : std::vector<std::pair<std::string, std::string>>{
           {"settings", "its catalog row (spec and settings)"},
           {"version", "the row of version 0 of model \"version\""}}) {
    const absl::Status offline = client->GetModel(name).status();
    EXPECT_EQ(offline.code(), absl::StatusCode::kDataLoss) << offline;
    EXPECT_THAT(std::string(offline.message()),
                ::testing::AllOf(::testing::HasSubstr(named),
                                 ::testing::HasSubstr("does not match its checksum")));
    EXPECT_FALSE(SortedDir(dir.path() + "/models/" + name).empty());
    EXPECT_TRUE(client->DeleteModel(name).ok());
    EXPECT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
  }
  EXPECT_EQ(client->ListModels()->models_size(), 3);
}

// A bit flipped in a model's name in its catalog row ("flip-a" to "flip-c") leaves the row
// under a name no directory has, and the model's directory under no row. The name's index entry
// then disagrees with the row, which SQLite's integrity check reports: the start rebuilds the
// table from its rows, finds the row's checksum matching under the directory's name, gives the
// row that name back, and the model loads with its versions and examples.
TEST(LifecycleTest, AModelNameFlippedInTheCatalogIsRestoredFromItsChecksum) {
  TempDir dir;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* name : {"flip-a", "other"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
    }
    auto s = StreamData(*client, "flip-a", 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 1));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(WaitJobs(*client, *s), 1);
  }
  const std::string catalog_path = dir.path() + "/catalog.sqlite";
  std::string spec;
  {
    auto catalog = Catalog::Open(catalog_path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto rows = (*catalog)->ListModels();
    ASSERT_TRUE(rows.ok()) << rows.status();
    for (const ModelRow& m : *rows) {
      if (m.name == "flip-a") spec = m.spec;
    }
  }
  ASSERT_GE(spec.size(), 5u);
  // The row holds the name and then the spec; the middle byte of these 11 is the name's "a".
  ASSERT_NO_FATAL_FAILURE(FlipBitIn(catalog_path, "flip-a" + spec.substr(0, 5)));
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto models = client->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  std::vector<std::string> names;
  for (const auto& m : models->models()) names.push_back(m.name());
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("flip-a", "other"));
  auto model = client->GetModel("flip-a");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->current().version(), 1);
  EXPECT_EQ(client->GetModel("flip-c").status().code(), absl::StatusCode::kNotFound);
}

// An example log that lost acknowledged examples (removed, or emptied) is damage, not an empty
// task: the model stays offline with the reason, as with a damaged checkpoint.
TEST(LifecycleTest, AnExampleLogThatLostLearntExamplesKeepsItsModelOffline) {
  TempDir dir;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* name : {"good", "gone", "emptied", "cut"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
      auto s = StreamData(*client, name, 0, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 1));
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(WaitJobs(*client, *s), 1);
    }
  }
  // A model that loads keeps its log's unfinished stream until the task's next stream: it is
  // the only trace of a stream whose commit record was damaged after it was acknowledged.
  const std::string good = dir.path() + "/models/good/examples/0.log";
  const uintmax_t good_bytes = std::filesystem::file_size(good);
  {
    std::ofstream torn(good, std::ios::app | std::ios::binary);
    torn << "an unfinished stream";
  }
  ASSERT_EQ(::unlink((dir.path() + "/models/gone/examples/0.log").c_str()), 0);
  ASSERT_EQ(::truncate((dir.path() + "/models/emptied/examples/0.log").c_str(), 0), 0);
  {
    // A catalog from before the log-end record: the jobs' ranges still tell the loss.
    auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_TRUE((*catalog)->SetTaskLogBytes("emptied", 0, 0).ok());
  }
  // Cut inside its only stream: what is left reads as a crash's torn tail, but a job took the
  // examples. The model stays offline, and its log as it was found.
  const std::string cut = dir.path() + "/models/cut/examples/0.log";
  ASSERT_EQ(::truncate(cut.c_str(), 100), 0);
  // A start with a smaller --keep_versions thins the loaded models' checkpoints, and leaves the
  // offline ones all their rollback points.
  auto server = ServerProcess::Start(dir.path(), {"--keep_versions=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  EXPECT_EQ(client->GetModel("good")->current().version(), 1);
  EXPECT_EQ(ListDir(dir.path() + "/models/good/versions"), std::vector<std::string>{"1.ckpt"});
  EXPECT_EQ(std::filesystem::file_size(good), good_bytes + 20);
  EXPECT_EQ(ListDir(dir.path() + "/models/emptied/versions").size(), 2u);
  for (const auto& [name, why] :
       {std::pair<std::string, std::string>{"gone", "0.log is missing"},
        {"emptied", "task 0's example log holds 0 training examples"},
        {"cut", "0.log: it ends at byte 100, but the catalog acknowledged"}}) {
    auto bad = client->GetModel(name);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << name << ": " << bad.status();
    EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr(why)) << name;
  }
  EXPECT_EQ(std::filesystem::file_size(cut), 100u);
}

// A log of a task the catalog does not list is a stream a crash caught before its task row
// was written, or a catalog that lost its last writes: a start cannot tell which, so it says
// what the file holds (for a log with examples in it) and loads the model as before.
TEST(LifecycleTest, AStartSaysWhatAnUnlistedLogHolds) {
  TempDir dir;
  auto examples = [&](const std::string& model) { return dir.path() + "/models/" + model + "/examples/"; };
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* name : {"held", "empty"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
      auto s = StreamData(*client, name, 0, v1::SPLIT_TRAIN, {}, BlobTask(40, {0, 1}, 1), 64,
                          /*keep_open=*/true);
      ASSERT_TRUE(s.ok()) << s.status();
    }
  }
  std::filesystem::copy_file(examples("held") + "0.log", examples("held") + "1.log");
  ASSERT_TRUE(ExampleLog::Create(examples("empty") + "1.log").ok());
  RegistryOptions options;
  options.data_dir = dir.path();
  ::testing::internal::CaptureStderr();
  auto registry = Registry::Open(options);
  const std::string said = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_THAT(said, ::testing::HasSubstr("models/held/examples/1.log holds 40 committed examples "
                                         "of task 1, which the catalog does not list"));
  EXPECT_THAT(said, ::testing::Not(::testing::HasSubstr("empty/examples/1.log")));
  for (const char* name : {"held", "empty"}) {
    auto model = (*registry)->Get(name);
    ASSERT_TRUE(model.ok()) << name << ": " << model.status();
  }
}

// A log cut exactly after a commit record reads as whole, and one whose last commit record is
// damaged reads as a crash's torn tail: only the catalog, which records where the acknowledged
// streams end, tells that the last stream went. The models stay offline, and their logs as
// they were found.
TEST(LifecycleTest, AnExampleLogCutAfterACommitKeepsItsModelOffline) {
  TempDir dir;
  auto log = [&](const std::string& model) {
    return dir.path() + "/models/" + model + "/examples/0.log";
  };
  uintmax_t first_stream_end = 0;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* model : {"cut", "flipped"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(model, false, 1)).ok());
      for (uint64_t seed : {1, 2}) {
        ASSERT_TRUE(StreamData(*client, model, 0, v1::SPLIT_TRAIN, {}, BlobTask(30, {0, 1}, seed),
                               64, /*keep_open=*/true)
                        .ok());
        if (seed == 1) first_stream_end = std::filesystem::file_size(log(model));
      }
    }
  }
  const uintmax_t whole = std::filesystem::file_size(log("cut"));
  ASSERT_GT(whole, first_stream_end);
  std::filesystem::resize_file(log("cut"), first_stream_end);
  {
    std::fstream f(log("flipped"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x5a');  // inside the last commit record: it fails its checksum
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  for (const auto& [model, why] :
       {std::pair<std::string, std::string>{"cut", absl::StrCat("0.log: it ends at byte ",
                                                                first_stream_end)},
        {"flipped", absl::StrCat("0.log: its committed streams end at byte ", first_stream_end)}}) {
    auto bad = client->GetModel(model);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << model << ": " << bad.status();
    EXPECT_THAT(std::string(bad.status().message()),
                ::testing::HasSubstr(why + ", but the catalog acknowledged streams up to byte " +
                                     std::to_string(whole)))
        << model;
  }
  EXPECT_EQ(std::filesystem::file_size(log("cut")), first_stream_end);
  EXPECT_EQ(std::filesystem::file_size(log("flipped")), whole);
}

// The catalog's record of where a task's log ends is a check, not the data: a stream whose end
// it cannot record (here its write-ahead log refuses writes) is still stored and acknowledged,
// and so is a stream that a crash caught between its commit and its record. The next start
// finds the log longer than the record, loads it, and records its end; so it does for a
// catalog from before the record (0).
TEST(LifecycleTest, ALogEndTheCatalogMissedIsRecordedAtTheNextStart) {
  TempDir dir;
  const std::string log = dir.path() + "/models/m/examples/0.log";
  auto recorded_end = [&]() -> int64_t {
    auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
    if (!catalog.ok()) return -1;
    auto tasks = (*catalog)->ListTasks("m");
    return tasks.ok() && tasks->size() == 1 ? (*tasks)[0].log_bytes : -1;
  };
  uintmax_t first_stream_end = 0;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    ASSERT_TRUE(client->CreateModel(BlobModel("m", false, 1)).ok());
    ASSERT_TRUE(StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(30, {0, 1}, 1), 64,
                           /*keep_open=*/true)
                    .ok());
    first_stream_end = std::filesystem::file_size(log);
    ImmutableFile frozen(dir.path() + "/catalog.sqlite-wal");
    if (!frozen.set()) GTEST_SKIP() << "needs root and a filesystem with immutable files";
    auto stored = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(20, {0, 1}, 2), 64,
                             /*keep_open=*/true);
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(client->GetModel("m")->tasks(0).train_examples(), 50);
  }
  ASSERT_GT(std::filesystem::file_size(log), first_stream_end);
  EXPECT_EQ(recorded_end(), static_cast<int64_t>(first_stream_end));
  for (int start = 0; start < 2; ++start) {
    {
      auto server = ServerProcess::Start(dir.path());
      ASSERT_TRUE(server.ok()) << server.status();
      auto info = (*server)->Client()->GetModel("m");
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->tasks(0).train_examples(), 50);
    }
    EXPECT_EQ(recorded_end(), static_cast<int64_t>(std::filesystem::file_size(log)));
    if (start == 0) {  // the second start: a catalog from before the record
      auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
      ASSERT_TRUE(catalog.ok()) << catalog.status();
      ASSERT_TRUE((*catalog)->SetTaskLogBytes("m", 0, 0).ok());
    }
  }
}

// A catalog restored from a copy older than the files: the start finds more checkpoints and
// logs than a crash leaves, keeps the model offline and deletes nothing. One newer version and
// task more is what a crash leaves, and goes as garbage.
TEST(LifecycleTest, ACatalogOlderThanTheFilesKeepsTheModelOffline) {
  TempDir dir;
  const std::string catalog = dir.path() + "/catalog.sqlite";
  const std::string copy = dir.path() + "/catalog.copy";
  // The database with its write-ahead log, as a backup of a stopped server takes it.
  auto copy_file = [](const std::string& from, const std::string& to) {
    for (const char* suffix : {"", "-wal"}) {
      ::unlink((to + suffix).c_str());
      std::ifstream in(from + suffix, std::ios::binary);
      if (!in) continue;
      std::ofstream out(to + suffix, std::ios::binary | std::ios::trunc);
      out << in.rdbuf();
      if (!out) return false;
    }
    ::unlink((to + "-shm").c_str());
    return true;
  };
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* name : {"older", "one_more"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
    }
    auto s = StreamData(*client, "one_more", 0, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 1));
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(WaitJobs(*client, *s), 1);
  }
  ASSERT_TRUE(copy_file(catalog, copy));  // "older" at version 0, "one_more" at version 1
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const auto& [name, tasks] : {std::pair<const char*, int>{"older", 2}, {"one_more", 2}}) {
      for (int t = name == std::string("older") ? 0 : 1; t < tasks; ++t) {
        auto s = StreamData(*client, name, t, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 1 + t));
        ASSERT_TRUE(s.ok()) << s.status();
        ASSERT_EQ(WaitJobs(*client, *s), t + 1);  // the version it published
      }
    }
  }
  ASSERT_TRUE(copy_file(copy, catalog));
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto older = client->GetModel("older");
  EXPECT_EQ(older.status().code(), absl::StatusCode::kDataLoss) << older.status();
  EXPECT_THAT(std::string(older.status().message()),
              ::testing::HasSubstr("2 checkpoint(s) newer than its newest version (0)"));
  EXPECT_EQ(SortedDir(dir.path() + "/models/older/versions"),
            (std::vector<std::string>{"0.ckpt", "1.ckpt", "2.ckpt"}));
  EXPECT_EQ(SortedDir(dir.path() + "/models/older/examples"),
            (std::vector<std::string>{"0.log", "1.log"}));
  // One version and one task past the catalog: what a crash leaves, removed as before.
  auto one_more = client->GetModel("one_more");
  ASSERT_TRUE(one_more.ok()) << one_more.status();
  EXPECT_EQ(one_more->current().version(), 1);
  EXPECT_EQ(SortedDir(dir.path() + "/models/one_more/versions"),
            (std::vector<std::string>{"0.ckpt", "1.ckpt"}));
}

// A checkpoint damaged on disk, even an old version's, keeps its model offline at the next start
// (and only that model): calls on it say why, the name stays taken, and DeleteModel frees it.
TEST(LifecycleTest, ADamagedCheckpointKeepsOnlyItsModelOffline) {
  TempDir dir;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    for (const char* name : {"good", "bad"}) {
      ASSERT_TRUE(client->CreateModel(BlobModel(name, false, 1)).ok());
      auto s = StreamData(*client, name, 0, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 1));
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(WaitJobs(*client, *s), 1);
    }
  }
  {
    // One byte of version 0's checkpoint, which a start need not load to serve version 1.
    std::fstream f(dir.path() + "/models/bad/versions/0.ckpt",
                   std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.is_open());
    f.seekg(100);
    char c = 0;
    f.read(&c, 1);
    f.seekp(100);
    c = static_cast<char>(c ^ 0x01);
    f.write(&c, 1);
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  EXPECT_EQ(client->GetModel("good")->current().version(), 1);
  auto bad = client->GetModel("bad");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()),
              ::testing::AllOf(::testing::HasSubstr("0.ckpt fails its checksum"),
                               ::testing::HasSubstr("DeleteModel removes it")));
  EXPECT_EQ(client->ListVersions("bad").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(client->CreateModel(BlobModel("bad", false, 1)).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(client->DeleteModel("bad").ok());
  EXPECT_EQ(client->GetModel("bad").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client->CreateModel(BlobModel("bad", false, 1)).ok());
}

// A cancel that the catalog cannot record (another connection holds its write lock past the
// busy timeout) is refused with UNAVAILABLE, and the job trains on as if it had not been asked;
// once the lock is gone, a second cancel stops it, and a restart leaves it cancelled.
TEST(LifecycleTest, ACancelTheCatalogCannotRecordIsRefusedAndTheJobGoesOn) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  // Long enough to outlast the refused cancel's wait for the lock (SQLite's 5 s busy timeout).
  auto s = StartALongJob(*client, /*epochs=*/3000);
  ASSERT_TRUE(s.ok()) << s.status();
  CatalogWriteLock lock(dir.path());
  int64_t refused_at = -1;
  std::string running_message;
  absl::Status refused, cancelled;
  bool asked_again = false;
  auto last = client->WatchJob(s->job_ids(0), [&](const v1::JobStatus& st) {
    if (st.state() != v1::JOB_STATE_RUNNING) return;
    if (refused_at < 0 && st.step() > 50 && lock.Take()) {
      refused = client->CancelJob(s->job_ids(0)).status();
      refused_at = st.step();
      running_message = st.message();
      ASSERT_TRUE(lock.Release());
    } else if (refused_at >= 0 && !asked_again && st.step() > refused_at + 20) {
      EXPECT_EQ(st.message(), running_message);  // the refused cancel left no mark
      asked_again = true;
      auto answer = client->CancelJob(s->job_ids(0));
      cancelled = answer.status();
      // Under way (the job stops at its next step), unless it stopped already.
      if (answer.ok() && answer->state() == v1::JOB_STATE_RUNNING) {
        EXPECT_EQ(answer->message(), "cancel requested; the job stops at its next step");
      } else if (answer.ok()) {
        EXPECT_EQ(answer->state(), v1::JOB_STATE_CANCELLED);
      }
    }
  });
  ASSERT_GE(refused_at, 0) << "the job ended before the catalog could be locked";
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable) << refused;
  EXPECT_THAT(std::string(refused.message()),
              ::testing::AllOf(::testing::HasSubstr("could not be recorded in the catalog"),
                               ::testing::HasSubstr("not cancelled and goes on")));
  ASSERT_TRUE(asked_again) << "the job ended before it could be cancelled again";
  EXPECT_TRUE(cancelled.ok()) << cancelled;
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(last->message(), "cancelled while running");
  EXPECT_GT(last->step(), refused_at + 20);
  server->reset();
  ExpectCancelledAfterARestart(dir.path(), s->job_ids(0));
}

// Stops a server with SIGTERM while it trains StartALongJob's job, with (if `second_task`) a
// job for task 1 queued behind it: both stay queued in the catalog. Returns their ids.
std::vector<std::string> QueuedByAShutdown(const std::string& dir, bool second_task) {
  auto server = ServerProcess::Start(dir);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};
  auto client = (*server)->Client();
  auto s = StartALongJob(*client);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return {};
  std::vector<std::string> ids = {s->job_ids(0)};
  if (second_task) {
    auto t = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(100, {2, 3}, 2));
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return {};
    ids.push_back(t->job_ids(0));
  }
  bool acted;
  (void)WhenItHasRun(*client, ids[0], [&] { EXPECT_EQ((*server)->Terminate(), 0); }, &acted);
  EXPECT_TRUE(acted) << "the job ended before it could be interrupted";
  return acted ? ids : std::vector<std::string>{};
}

// Waits (up to a minute) for `job` to end; its status then.
v1::JobStatus WaitForTheEnd(const Job& job) {
  v1::JobStatus st;
  uint64_t seen = 0;
  for (int i = 0; i < 600 && !job.terminal(); ++i) seen = job.WaitForChange(seen, 100, &st);
  return job.Status();
}

// A job whose start the catalog cannot record does not train. Its end cannot be recorded
// either, so the next start runs it, as its status says.
TEST(LifecycleTest, AJobStartTheCatalogCannotRecordDoesNotTrain) {
  TempDir dir;
  const std::vector<std::string> ids = QueuedByAShutdown(dir.path(), false);
  ASSERT_EQ(ids.size(), 1u);
  {
    CatalogWriteLock lock(dir.path());
    auto held = OpenHeld(dir.path(), ids[0]);
    ASSERT_TRUE(held.ok()) << held.status();
    auto& registry = held->registry;
    auto& job = held->job;
    ASSERT_TRUE(lock.Take());
    registry->StartTraining();
    const v1::JobStatus st = WaitForTheEnd(*job);
    EXPECT_EQ(st.state(), v1::JOB_STATE_FAILED);
    EXPECT_EQ(st.step(), 0);
    EXPECT_THAT(st.message(),
                ::testing::AllOf(::testing::HasSubstr("cannot record the job's start"),
                                 ::testing::HasSubstr("a restart runs the job again")));
    ASSERT_TRUE(lock.Release());
  }
  ExpectItRunsAfterARestart(dir.path(), ids[0]);
}

// A cancel of a queued job that the catalog cannot record is refused and leaves it queued; a
// second one, once the lock is gone, ends it as cancelled, on record: a restart leaves it so.
TEST(LifecycleTest, AQueuedCancelTheCatalogCannotRecordIsRefused) {
  TempDir dir;
  const std::vector<std::string> ids = QueuedByAShutdown(dir.path(), true);
  ASSERT_EQ(ids.size(), 2u);
  {
    CatalogWriteLock lock(dir.path());
    // The first job holds the actor (waiting for a training slot); the second is in the queue.
    auto held = OpenHeld(dir.path(), ids[1]);
    ASSERT_TRUE(held.ok()) << held.status();
    auto& registry = held->registry;
    auto& second = held->job;
    ASSERT_TRUE(lock.Take());
    auto refused = registry->CancelJob(ids[1]);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
    EXPECT_EQ(second->Status().state(), v1::JOB_STATE_QUEUED);
    EXPECT_FALSE(second->cancel_requested());
    ASSERT_TRUE(lock.Release());
    auto cancelled = registry->CancelJob(ids[1]);
    ASSERT_TRUE(cancelled.ok()) << cancelled.status();
    EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
    EXPECT_EQ(cancelled->message(), "cancelled while queued");
    registry->StartTraining();
    EXPECT_EQ(WaitForTheEnd(*second).state(), v1::JOB_STATE_CANCELLED);
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto first = client->WatchJob(ids[0]);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->state(), v1::JOB_STATE_SUCCEEDED) << first->message();
  auto last = client->WatchJob(ids[1]);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->state(), v1::JOB_STATE_CANCELLED) << last->message();
  EXPECT_EQ(client->GetModel("m")->current().version(), 1);
}

// Cancels that were acknowledged (so on record) before a crash that came before the jobs'
// ends were recorded: the restart ends both jobs as cancelled and runs neither. The catalog is
// left as such a crash leaves it: the first job running, the second queued behind it (as a
// shutdown puts back a job it interrupts), both with their cancels recorded.
TEST(LifecycleTest, AnAcknowledgedCancelOutlivesACrash) {
  TempDir dir;
  const std::vector<std::string> ids = QueuedByAShutdown(dir.path(), true);
  ASSERT_EQ(ids.size(), 2u);
  {
    auto catalog = Catalog::Open(dir.path() + "/catalog.sqlite");
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_TRUE((*catalog)->UpdateJob(ids[0], v1::JOB_STATE_RUNNING, "running", -1, "").ok());
    for (const std::string& id : ids) ASSERT_TRUE((*catalog)->RecordCancel(id).ok());
  }
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  auto jobs = client->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->jobs_size(), 2);
  for (const v1::JobStatus& j : jobs->jobs()) {
    EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
    EXPECT_EQ(j.message(), "cancelled; the server stopped before the job's end was recorded");
  }
  // Nothing trained or was published; the examples wait, as a cancelled job's do.
  auto model = client->GetModel("m");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->current().version(), 0);
  ASSERT_EQ(model->tasks_size(), 2);
  EXPECT_EQ(model->tasks(0).pending_examples(), 300);
  EXPECT_EQ(model->tasks(1).pending_examples(), 100);
}

// An answered cancel whose end the catalog then cannot record: the status says a restart ends
// the job as cancelled, and the restart does, without running it. The job is the actor's (it
// waits for a training slot the held registry does not give), so the cancel is recorded and
// the actor sees it at its next check, every 100 ms; the lock is taken in that window.
TEST(LifecycleTest, ACancelledJobWhoseEndIsNotRecordedStaysCancelled) {
  TempDir dir;
  const std::vector<std::string> ids = QueuedByAShutdown(dir.path(), false);
  ASSERT_EQ(ids.size(), 1u);
  {
    CatalogWriteLock lock(dir.path());
    auto held = OpenHeld(dir.path(), ids[0]);
    ASSERT_TRUE(held.ok()) << held.status();
    auto& registry = held->registry;
    auto& job = held->job;
    ASSERT_TRUE(held->WaitForQueueDepth("m", 0));  // the actor has taken the job
    auto answer = registry->CancelJob(ids[0]);
    ASSERT_TRUE(lock.Take());
    ASSERT_TRUE(answer.ok()) << answer.status();
    // Queued in the catalog, but no longer in the queue: the request waits for the actor.
    ASSERT_EQ(answer->state(), v1::JOB_STATE_QUEUED) << answer->message();
    const v1::JobStatus st = WaitForTheEnd(*job);
    EXPECT_EQ(st.state(), v1::JOB_STATE_CANCELLED);
    // The actor's check can, rarely, come before the lock; then the end is on record.
    if (st.message() != "cancelled while queued") {
      EXPECT_THAT(st.message(),
                  ::testing::AllOf(::testing::HasSubstr("not recorded in the catalog"),
                                   ::testing::HasSubstr("its cancel is, so a restart ends it as "
                                                        "cancelled")));
    }
    ASSERT_TRUE(lock.Release());
  }
  ExpectCancelledAfterARestart(dir.path(), ids[0]);
}

// A cancel that a shutdown overtakes: the actor holds the job (waiting for a training slot)
// and the cancel, past its look in the queue, waits for the catalog; meanwhile the shutdown
// puts the job back in the queue. The cancel, once recorded, finds it there and ends it, rather
// than leave it queued, with its cancel on record, for the restart to end.
TEST(LifecycleTest, ACancelThatAShutdownOvertakesStillEndsTheJob) {
  TempDir dir;
  const std::vector<std::string> ids = QueuedByAShutdown(dir.path(), false);
  ASSERT_EQ(ids.size(), 1u);
  {
    CatalogWriteLock lock(dir.path());
    auto held = OpenHeld(dir.path(), ids[0]);
    ASSERT_TRUE(held.ok()) << held.status();
    auto& registry = held->registry;
    auto& job = held->job;
    ASSERT_TRUE(held->WaitForQueueDepth("m", 0));  // the actor has taken the job
    ASSERT_TRUE(lock.Take());
    absl::StatusOr<v1::JobStatus> answer;
    std::thread cancel([&] { answer = registry->CancelJob(ids[0]); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // it waits for the catalog
    registry->InterruptJobs();
    // The actor looks every 100 ms; SQLite's busy timeout (5 s) is far off.
    EXPECT_TRUE(held->WaitForQueueDepth("m", 1));  // back in the queue
    ASSERT_TRUE(lock.Release());
    cancel.join();
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->state(), v1::JOB_STATE_CANCELLED) << answer->message();
    EXPECT_EQ(answer->message(), "cancelled while queued");
    EXPECT_EQ(job->Status().state(), v1::JOB_STATE_CANCELLED);
  }
  ExpectCancelledAfterARestart(dir.path(), ids[0], "cancelled while queued");
}

// A stream of `late` examples that ends in a shutdown's grace period is stored, and the job it
// queues runs after the restart; the job the shutdown interrupted is not that job: it resumes on
// exactly the examples it had started on. The stream's examples get a job of their own, or join
// the task's job queued behind the interrupted one (with `queued_behind`), not a third that would
// find nothing left. A stream of none is the interrupted job's: no job would learn anything new.
void ExpectAGracePeriodStreamsJobToRunAfterTheRestart(bool queued_behind, int64_t late = 10) {
  TempDir dir;
  std::string interrupted, behind;
  absl::StatusOr<v1::StreamExamplesResponse> answer;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    // Long: the callback below takes about half a second before the signal.
    auto s = StartALongJob(*client, /*epochs=*/3000);
    ASSERT_TRUE(s.ok()) << s.status();
    interrupted = s->job_ids(0);
    std::atomic<bool> terminating{false};
    std::thread terminator;
    bool acted;
    (void)WhenItHasRun(*client, interrupted, [&] {
      if (queued_behind) {  // now that the long job runs, a second job is queued behind it
        auto b = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 8));
        ASSERT_TRUE(b.ok() && b->job_ids_size() == 1);
        behind = b->job_ids(0);
      }
      // The stream is under way (its header and batch sent) when the signal comes; it ends a
      // second after.
      v1::StreamHeader h;
      h.set_model("m");
      h.set_task_id(0);
      h.set_split(v1::SPLIT_TRAIN);
      const Dataset more = BlobTask(late, {0, 1}, 7);
      bool sent = late == 0;
      std::thread streamer([&] {
        answer = client->StreamExamples(
            h, [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
              if (!sent) {
                sent = true;
                return MakeBatch(more.x, more.y);
              }
              while (!terminating) std::this_thread::sleep_for(std::chrono::milliseconds(10));
              std::this_thread::sleep_for(std::chrono::seconds(1));
              return std::nullopt;
            });
      });
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the batch is on its way
      terminating = true;
      terminator = std::thread([&] { EXPECT_EQ((*server)->Terminate(), 0); });
      streamer.join();
    }, &acted);
    ASSERT_TRUE(acted) << "the job ended before it could be interrupted";
    terminator.join();
  }
  ExpectInterruptedByTheShutdown(dir.path(), interrupted);
  ASSERT_TRUE(answer.ok()) << answer.status();
  ASSERT_EQ(answer->job_ids_size(), 1);
  if (late == 0) {
    EXPECT_EQ(answer->job_ids(0), interrupted);
  } else {
    EXPECT_NE(answer->job_ids(0), interrupted);
    if (queued_behind) {
      EXPECT_EQ(answer->job_ids(0), behind);
    }
  }

  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ExpectItLearnsItsRange(*client, interrupted);
  const int64_t jobs = late == 0 && !queued_behind ? 1 : 2;
  if (jobs == 2) {
    auto after = client->WatchJob(answer->job_ids(0));
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->state(), v1::JOB_STATE_SUCCEEDED) << after->message();
    EXPECT_EQ(after->examples(), (queued_behind ? 10 : 0) + late);
  }
  EXPECT_EQ(client->ListJobs("m")->jobs_size(), jobs);
  EXPECT_EQ(client->GetModel("m")->current().version(), jobs);
}

TEST(ShutdownTest, AStreamEndingInTheGracePeriodGetsAJobOfItsOwn) {
  ExpectAGracePeriodStreamsJobToRunAfterTheRestart(false);
}

TEST(ShutdownTest, AStreamEndingInTheGracePeriodJoinsTheJobQueuedBehind) {
  ExpectAGracePeriodStreamsJobToRunAfterTheRestart(true);
}

TEST(ShutdownTest, AnEmptyStreamEndingInTheGracePeriodQueuesNoJob) {
  ExpectAGracePeriodStreamsJobToRunAfterTheRestart(false, /*late=*/0);
}

// An empty stream that closes the task while its job runs (here one that a restart resumed after
// a crash) brings nothing that job will not learn: it is answered with that job, not a new one.
TEST(CrashTest, AnEmptyStreamWhileTheResumedJobRunsIsAnsweredWithIt) {
  TempDir dir;
  const std::string interrupted = InterruptALongJob(
      dir.path(), /*epochs=*/3000, 0, [](const AdaptdClient&, ServerProcess& server) {
        server.Kill();
      });
  ASSERT_FALSE(interrupted.empty());
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::StreamHeader h;
  h.set_model("m");
  h.set_task_id(0);
  h.set_split(v1::SPLIT_TRAIN);
  auto empty = client->StreamExamples(h, std::vector<v1::ExampleBatch>());
  ASSERT_TRUE(empty.ok()) << empty.status();
  ASSERT_EQ(empty->job_ids_size(), 1) << "the resumed job ended before the stream";
  EXPECT_EQ(empty->job_ids(0), interrupted);
  ExpectItLearnsItsRange(*client, interrupted);
  EXPECT_EQ(client->ListJobs("m")->jobs_size(), 1);
  EXPECT_EQ(client->GetModel("m")->current().version(), 1);
}

// Examples streamed (kept open) while a job runs that a shutdown interrupts are not the resumed
// job's to learn: it learns exactly the range it had started on, and the adapt_after_seconds
// timer gives them a job of their own after it.
TEST(ShutdownTest, ExamplesStreamedDuringAResumedJobGetATimedJobAfterIt) {
  TempDir dir;
  const std::string interrupted = InterruptALongJob(
      dir.path(), 300, /*adapt_after_seconds=*/0.5,
      [](const AdaptdClient& client, ServerProcess& server) {
        auto open = StreamData(client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(10, {0, 1}, 7), 64,
                               /*keep_open=*/true);
        ASSERT_TRUE(open.ok() && open->job_ids_size() == 0) << open.status();
        EXPECT_EQ(server.Terminate(), 0);
      });
  ASSERT_FALSE(interrupted.empty());
  ExpectInterruptedByTheShutdown(dir.path(), interrupted);

  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ExpectItLearnsItsRange(*client, interrupted);
  // The timer's job is queued once the resumed one has ended: wait for it to appear.
  v1::ListJobsResponse jobs;
  for (int i = 0; i < 100 && jobs.jobs_size() < 2; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto listed = client->ListJobs("m");
    ASSERT_TRUE(listed.ok()) << listed.status();
    jobs = *std::move(listed);
  }
  ASSERT_EQ(jobs.jobs_size(), 2);
  const std::string timed =
      jobs.jobs(0).job_id() == interrupted ? jobs.jobs(1).job_id() : jobs.jobs(0).job_id();
  auto after = client->WatchJob(timed);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->state(), v1::JOB_STATE_SUCCEEDED) << after->message();
  EXPECT_EQ(after->examples(), 10);
  EXPECT_EQ(after->version(), 2);
}

// A finished job's step counts, last loss, IVON step figures and time are kept in the catalog:
// ListJobs after a restart shows each job as it showed it before.
TEST(LifecycleTest, FinishedJobsShowTheirProgressAfterARestart) {
  TempDir dir;
  v1::ListJobsResponse before;
  {
    auto server = ServerProcess::Start(dir.path());
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = (*server)->Client();
    auto s = StartALongJob(*client);
    ASSERT_TRUE(s.ok()) << s.status();
    bool cancelled = false, acted;
    (void)WhenItHasRun(
        *client, s->job_ids(0), [&] { cancelled = client->CancelJob(s->job_ids(0)).ok(); },
        &acted);
    ASSERT_TRUE(acted) << "the job ended before it could be cancelled";
    ASSERT_TRUE(cancelled);
    v1::UpdateConfigRequest fewer;
    fewer.set_name("m");
    fewer.mutable_config()->set_epochs(2);
    fewer.mutable_update_mask()->add_paths("epochs");
    ASSERT_TRUE(client->UpdateConfig(fewer).ok());
    auto t = StreamData(*client, "m", 1, v1::SPLIT_TRAIN, {}, BlobTask(100, {2, 3}, 2));
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(WaitJobs(*client, *t), 1);
    auto jobs = client->ListJobs("m");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    before = *std::move(jobs);
    // The version records the peak step its job ended at.
    auto versions = client->ListVersions("m");
    ASSERT_TRUE(versions.ok()) << versions.status();
    const v1::VersionInfo& made = versions->versions(versions->versions_size() - 1);
    ASSERT_EQ(made.job_id(), before.jobs(1).job_id());
    EXPECT_EQ(made.ivon_peak_step(), before.jobs(1).ivon_peak_step());
  }
  ASSERT_EQ(before.jobs_size(), 2);
  EXPECT_EQ(before.jobs(0).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_GT(before.jobs(0).step(), 50);
  EXPECT_LT(before.jobs(0).step(), before.jobs(0).total_steps());
  EXPECT_EQ(before.jobs(1).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(before.jobs(1).step(), before.jobs(1).total_steps());
  EXPECT_GT(before.jobs(1).loss(), 0);  // two epochs: not yet fitted (the long job may be)
  for (const v1::JobStatus& j : before.jobs()) {
    EXPECT_GT(j.elapsed_seconds(), 0) << j.DebugString();
    EXPECT_GT(j.ivon_step_growth(), 0) << j.DebugString();
    EXPECT_GT(j.ivon_peak_step(), 0) << j.DebugString();
    EXPECT_EQ(j.eta_seconds(), 0) << j.DebugString();  // a finished job has none
  }

  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto after = (*server)->Client()->ListJobs("m");
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->jobs_size(), before.jobs_size());
  for (int i = 0; i < before.jobs_size(); ++i) {
    EXPECT_EQ(after->jobs(i).SerializeAsString(), before.jobs(i).SerializeAsString())
        << "before:\n" << before.jobs(i).DebugString() << "after:\n" << after->jobs(i).DebugString();
  }
}

// A snapshot that claims more learnt examples than it holds is refused, changing nothing.
// A snapshot is held whole until it is checked, so --max_stream_mb bounds it as it bounds a
// stream: a larger one is refused before it is all in memory, and nothing is written.
TEST(LifecycleTest, ImportIsBoundedByTheStreamLimit) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_stream_mb=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  const absl::Status big = client->Import("big", std::string(3 << 20, 'x')).status();
  EXPECT_EQ(big.code(), absl::StatusCode::kResourceExhausted) << big;
  EXPECT_THAT(std::string(big.message()), ::testing::HasSubstr("larger than 1 MiB"));
  EXPECT_EQ(client->ListModels()->models_size(), 0);
}

// A stream is charged for what its batches hold in memory, not only their inputs: 2 KiB of
// tensors each, and 24 bytes of label and ids per example. Many one-example batches (24 bytes
// of inputs each) reach a 1 MiB limit at about 500, and are refused whole.
TEST(LifecycleTest, AStreamIsChargedForEveryBatchItHolds) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path(), {"--max_stream_mb=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false, 1)).ok());
  const Dataset data = BlobTask(600, {0, 1}, 1);
  auto singles = [&](int64_t n) {
    std::vector<v1::ExampleBatch> batches;
    for (int64_t i = 0; i < n; ++i) {
      batches.push_back(MakeBatch(data.x.narrow(0, i, 1), data.y.narrow(0, i, 1)));
    }
    return batches;
  };
  v1::StreamHeader h;
  h.set_model("m");
  h.set_task_id(0);
  const absl::Status refused = client->StreamExamples(h, singles(600)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("more than 1 MiB of examples"));
  EXPECT_EQ(client->GetModel("m")->tasks_size(), 0);
  auto stored = client->StreamExamples(h, singles(400));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->examples(), 400);
}

TEST(LifecycleTest, ImportValidatesTheSnapshot) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  ASSERT_TRUE(client->CreateModel(BlobModel("m", false, 1)).ok());
  auto s = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(50, {0, 1}, 1));
  ASSERT_TRUE(s.ok());
  WaitJobs(*client, *s);
  auto snapshot = client->Export("m");
  ASSERT_TRUE(snapshot.ok());
  auto map = ParseTensors(*snapshot);
  ASSERT_TRUE(map.ok());
  const std::string catalog_before = CatalogDump(dir.path());
  const auto files_before = DirDigest(dir.path());
  TensorMap bad = *map;
  bad["task.0.learned"] = ScalarTensor(int64_t{51});
  auto refused = client->Import("copy", SerializeTensors(bad));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("51 examples learnt, 50 held back from the timer, 50 "
                                            "training examples"),
            std::string::npos)
      << refused.status();
  bad = *map;
  bad["task.0.taken"] = ScalarTensor(int64_t{49});  // below what was learnt
  EXPECT_EQ(client->Import("copy", SerializeTensors(bad)).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad = *map;
  bad["batch.0.y"] = at::full({50}, 7, at::kLong);
  EXPECT_EQ(client->Import("copy", SerializeTensors(bad)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The client's bytes: what does not parse is its error, not damage on the server's disk.
  bad = *map;
  bad["snapshot.spec"] = at::full({3}, 255, at::kByte);
  refused = client->Import("copy", SerializeTensors(bad));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr("'snapshot.spec' does not parse"));
  bad = *map;
  bad["batch.0.x"] = map->at("batch.0.x").clone();
  bad["batch.0.x"][3][1] = std::nanf("");
  refused = client->Import("copy", SerializeTensors(bad));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr("snapshot batch.0.x must be finite"));
  bad = *map;
  bad["batch.0.ids"] = map->at("batch.0.ids").clone();
  bad["batch.0.ids"][1] = map->at("batch.0.ids")[0].item<int64_t>();
  refused = client->Import("copy", SerializeTensors(bad));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr(absl::StrCat("example ids must be unique; id ",
                                                map->at("batch.0.ids")[0].item<int64_t>(), " repeats")));
  // Weights of another model, and tasks with a gap: each message says what came.
  bad = *map;
  const int64_t params = map->at("state.mean").numel();
  for (auto& [key, t] : bad) {  // every per-parameter tensor of the state, three longer
    if (absl::StartsWith(key, "state.") && t.dim() == 1 && t.numel() == params) {
      t = at::cat({t, at::zeros({3}, t.options())});
    }
  }
  refused = client->Import("copy", SerializeTensors(bad));
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::HasSubstr(absl::StrCat("the spec has ", params,
                                                " parameters; the snapshot holds ", params + 3)))
      << refused.status();
  EXPECT_EQ(CatalogDump(dir.path()), catalog_before);
  EXPECT_EQ(DirDigest(dir.path()), files_before);
  EXPECT_TRUE(client->Import("copy", *snapshot).ok());
}

TEST(LifecycleTest, ATokensFileWithoutTokensIsRefused) {
  TempDir dir;
  const std::string tokens = dir.path() + "/tokens";
  std::ofstream(tokens) << "# nobody yet\n\n";
  EXPECT_FALSE(ServerProcess::Start(dir.path() + "/data", {"--tokens_file=" + tokens}).ok());
}

// A word without "--" (a flag mistyped as "port 7000", say) used to be dropped and the server
// run on the defaults. It now exits with the usage status, 2, before it touches the directory.
TEST(LifecycleTest, AnArgumentThatIsNotAFlagIsRefused) {
  TempDir dir;
  auto refused = ServerProcess::Start(dir.path() + "/data", {"7000"});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("(exit status 512)"))
      << refused.status();
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/data"));
  // A flag value the server refuses is the same usage error, whichever part checks it.
  for (const char* flag : {"--queue_capacity=0", "--port=70000", "--threads=0"}) {
    auto bad = ServerProcess::Start(dir.path() + "/data", {flag});
    ASSERT_FALSE(bad.ok()) << flag;
    EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("(exit status 512)"))
        << flag << ": " << bad.status();
  }
}

}  // namespace
}  // namespace adaptd

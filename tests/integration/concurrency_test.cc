// Queries never wait for training and never see a half-updated model: four client threads
// call Predict while the model adapts; every answer names a version that never goes back, and
// equals a recomputation pinned to that version.
#include <atomic>
#include <map>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "server/convert.h"
#include "tests/integration/fixtures.h"
#include "tests/integration/server_process.h"

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

TEST(ConcurrencyTest, PredictDuringAdaptationSeesWholeVersionsInOrder) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = (*server)->Client();
  v1::CreateModelRequest r = BlobModel("m", false, /*epochs=*/30);
  r.mutable_spec()->set_hidden(0, 128);
  ASSERT_TRUE(client->CreateModel(r).ok());
  auto first = StreamData(*client, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(200, {0, 1}, 1));
  ASSERT_TRUE(first.ok());
  WaitJobs(*client, *first);

  const Dataset probe = BlobTask(64, {0, 1, 2, 3}, 77);
  v1::PredictRequest request;
  request.set_model("m");
  request.set_mode(v1::PREDICT_MODE_BAYES);
  request.set_samples(8);
  request.set_seed(5);
  *request.mutable_x() = TensorToProto(probe.x);

  struct Answer {
    int64_t version;
    std::string probs;
  };
  constexpr int kThreads = 4;
  std::vector<std::vector<Answer>> answers(kThreads);
  std::atomic<bool> done{false};
  std::atomic<int> errors{0};
  std::vector<std::atomic<int64_t>> latest(kThreads);  // each reader's last version seen
  for (auto& v : latest) v = -1;
  std::vector<std::thread> readers;
  for (int t = 0; t < kThreads; ++t) {
    readers.emplace_back([&, t] {
      auto own = (*server)->Client();  // one channel per thread, as separate applications
      while (!done) {
        auto p = own->Predict(request);
        if (!p.ok()) {
          ++errors;
          continue;
        }
        answers[t].push_back({p->version(), p->probs().raw_data()});
        latest[t] = p->version();
      }
    });
  }
  // Three more tasks, one adaptation each, while the readers run.
  for (int task = 1; task <= 3; ++task) {
    auto s = StreamData(*client, "m", task, v1::SPLIT_TRAIN, {},
                        BlobTask(200, {task % 4, (task + 1) % 4}, 10 + task));
    ASSERT_TRUE(s.ok()) << s.status();
    WaitJobs(*client, *s);
  }
  // The last version is published before its job reports success. Keep the readers going until
  // each has answered from it (a loaded machine can hold a reader off for a while), or 30 s.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  auto all_current = [&] {
    for (const auto& v : latest) {
      if (v.load() != 4) return false;
    }
    return true;
  };
  while (!all_current() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  done = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(errors.load(), 0);

  std::map<int64_t, std::string> pinned;
  int64_t total = 0;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_FALSE(answers[t].empty());
    total += static_cast<int64_t>(answers[t].size());
    for (size_t i = 1; i < answers[t].size(); ++i) {
      EXPECT_LE(answers[t][i - 1].version, answers[t][i].version) << "thread " << t;
    }
    for (const Answer& a : answers[t]) {
      if (!pinned.count(a.version)) {
        v1::PredictRequest again = request;
        again.set_version(a.version);
        auto p = client->Predict(again);
        ASSERT_TRUE(p.ok()) << p.status();
        ASSERT_EQ(p->version(), a.version);
        pinned[a.version] = p->probs().raw_data();
      }
      EXPECT_EQ(a.probs, pinned[a.version]) << "version " << a.version;
    }
  }
  // The readers saw the model change under them: versions 1 to 4, several at least.
  EXPECT_GE(pinned.size(), 3u) << total << " answers";
  EXPECT_EQ(pinned.rbegin()->first, 4);
}

}  // namespace
}  // namespace adaptd

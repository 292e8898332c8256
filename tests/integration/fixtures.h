// Shared pieces of the integration tests: synthetic tasks, batches and streams through the
// real client, and digests of what the server keeps on disk.
#ifndef ADAPTD_TESTS_INTEGRATION_FIXTURES_H_
#define ADAPTD_TESTS_INTEGRATION_FIXTURES_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "core/data/readers.h"
#include "server/metrics.h"
#include "server/registry.h"

namespace adaptd {
namespace testing_service {

constexpr int64_t kDim = 6;
constexpr int64_t kClasses = 4;

// n examples of `classes` around fixed centres in kDim dimensions.
Dataset BlobTask(int64_t n, const std::vector<int64_t>& classes, uint64_t seed);

v1::ExampleBatch MakeBatch(const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& client_ids = at::Tensor());

// Streams `data` in batches of `batch_size`. With client_id_base >= 0, example i carries the
// client id client_id_base + i.
absl::StatusOr<v1::StreamExamplesResponse> StreamData(const AdaptdClient& client,
                                                      const std::string& model, int64_t task,
                                                      v1::Split split,
                                                      const std::vector<int64_t>& classes,
                                                      const Dataset& data,
                                                      int64_t batch_size = 64,
                                                      bool keep_open = false,
                                                      int64_t client_id_base = -1);

// An MLP kDim -> 16 -> kClasses learning with the K-prior (multi-head when `multi`).
v1::CreateModelRequest BlobModel(const std::string& name, bool multi, int64_t epochs = 3);

// Waits for every job and expects each to succeed; returns the last version published.
int64_t WaitJobs(const AdaptdClient& client, const v1::StreamExamplesResponse& response);

// CRC-32C of every file under `dir` (recursively; SQLite's own files are left out: compare the
// catalog with Catalog::Dump).
std::map<std::string, uint32_t> DirDigest(const std::string& dir);

// The catalog's rows as text (opened beside the running server; WAL allows it).
std::string CatalogDump(const std::string& data_dir);

// The value of the unlabelled metric `name` that the server's /metrics on `port` shows; -1 if
// it shows none.
double MetricValue(int port, const std::string& name);
// Waits (up to 60 s) until MetricValue(port, name) is at least `at_least`; false if it never is.
bool WaitForMetric(int port, const std::string& name, double at_least);

// The data directory's registry in this process, its jobs queued until StartTraining, and its
// job `id`.
struct Held {
  std::unique_ptr<Metrics> metrics;  // outlives the registry, which reports to it
  std::unique_ptr<Registry> registry;
  std::shared_ptr<Job> job;

  // Waits (up to 10 s) until `model`'s queue holds `depth` jobs (its actor has taken the rest);
  // false if it never does.
  bool WaitForQueueDepth(const std::string& model, int64_t depth) const;
};
absl::StatusOr<Held> OpenHeld(const std::string& data_dir, const std::string& id);

}  // namespace testing_service
}  // namespace adaptd

#endif  // ADAPTD_TESTS_INTEGRATION_FIXTURES_H_

// Every model the server holds, by name, and every job by id. Opening a registry recovers the
// data directory: catalog, example logs, checkpoints, interrupted jobs.
#ifndef ADAPTD_SERVER_REGISTRY_H_
#define ADAPTD_SERVER_REGISTRY_H_

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/catalog.h"
#include "server/fs_util.h"
#include "server/model_entry.h"

namespace adaptd {

struct RegistryOptions {
  std::string data_dir;
  int64_t queue_capacity = 16;
  int max_concurrent_jobs = 1;
  int training_nice = 10;
  int64_t keep_versions = 0;  // 0: every version keeps its checkpoint
  int64_t keep_jobs = 1000;   // finished jobs each model keeps in memory
  at::Device device = at::kCPU;  // where adaptation jobs train
  Metrics* metrics = nullptr;
  // No job trains until StartTraining() (recovered jobs wait queued): a server opens its
  // registry before it binds its port, and a start that fails there must train nothing.
  bool hold_training = false;
};

// Thread-safe.
class Registry {
 public:
  static absl::StatusOr<std::unique_ptr<Registry>> Open(const RegistryOptions& options);
  ~Registry();

  // NOT_FOUND naming the model when there is none.
  absl::StatusOr<std::shared_ptr<ModelEntry>> Get(const std::string& name) const;
  std::vector<std::shared_ptr<ModelEntry>> List() const;
  // ALREADY_EXISTS, or INVALID_ARGUMENT for a bad name, spec or config.
  absl::StatusOr<std::shared_ptr<ModelEntry>> Create(const std::string& name,
                                                     const v1::ModelSpec& spec,
                                                     const v1::LearningConfig& config);
  absl::StatusOr<std::shared_ptr<ModelEntry>> Import(const std::string& name,
                                                     const std::string& snapshot);
  absl::Status Delete(const std::string& name);

  absl::StatusOr<std::shared_ptr<Job>> FindJob(const std::string& id) const;
  // Cancels a queued job at once; a running one stops at its next step.
  absl::StatusOr<v1::JobStatus> CancelJob(const std::string& id);

  Catalog* catalog() { return catalog_.get(); }
  // Lets queued jobs train (see RegistryOptions::hold_training).
  void StartTraining() { slots_.Open(); }
  // Stops every actor: running jobs stay queued for the next start.
  void Shutdown();
  // Interrupts every running job (it stays queued for the next start) and starts none, while
  // calls in flight finish: the first step of a server shutdown.
  void InterruptJobs();
  bool interrupting() const { return interrupting_.load(); }

 private:
  explicit Registry(const RegistryOptions& options) : options_(options), slots_(options.max_concurrent_jobs, !options.hold_training) {}
  ModelEntryOptions EntryOptions(const std::string& name);
  // Create and Import: reserve the name, build the entry with `make`, publish it.
  absl::StatusOr<std::shared_ptr<ModelEntry>> Add(
      const std::string& name,
      const std::function<absl::StatusOr<std::unique_ptr<ModelEntry>>(const ModelEntryOptions&)>&
          make);
  absl::Status CheckNewName(const std::string& name) const;

  const RegistryOptions options_;
  JobSlots slots_;
  // Declared before everything it guards, so that it is released last.
  std::unique_ptr<DirectoryLock> lock_;
  std::unique_ptr<Catalog> catalog_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ModelEntry>> models_;
  std::map<std::string, std::weak_ptr<Job>> jobs_;
  int64_t jobs_swept_ = 1024;  // jobs_'s size after its last sweep of expired ids
  // Names whose creation or import is under way.
  std::set<std::string> reserved_;
  // Names whose deletion is under way: not yet free for a new model.
  std::set<std::string> deleting_;
  // Models in the catalog that failed to load at start, with the reason.
  std::map<std::string, std::string> failed_;
  std::atomic<bool> interrupting_{false};
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_REGISTRY_H_

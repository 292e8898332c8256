// One deployed model: its examples, its published versions, its adaptation jobs and the actor
// thread that runs them.
//
// Readers take a shared_ptr<const ModelVersion> and compute without locks: a version's state
// is a deep copy that nothing modifies. One writer per model: the actor thread runs one job at
// a time and publishes each result as a new immutable version. Streams commit their examples
// to the task's log (fsync) before anything in memory changes.
#ifndef ADAPTD_SERVER_MODEL_ENTRY_H_
#define ADAPTD_SERVER_MODEL_ENTRY_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "adaptd/v1/learning.pb.h"
#include "adaptd/v1/model.pb.h"
#include "google/protobuf/field_mask.pb.h"
#include "core/continual.h"
#include "core/flat_params.h"
#include "server/catalog.h"
#include "server/example_log.h"

namespace adaptd {

class Metrics;

// Bounds the adaptation jobs that train at once across all models.
class JobSlots {
 public:
  // `open` false: no slot is handed out until Open() (a server holds training back until it
  // listens, so that a failed start trains nothing).
  explicit JobSlots(int slots, bool open = true) : free_(slots), open_(open) {}
  // Waits for a slot; false if `stop` became true first (checked every 100 ms). `on_wait` (may
  // be null) is called once, before waiting, when other holders have taken every slot.
  bool Acquire(const std::function<bool()>& stop, const std::function<void()>& on_wait = nullptr);
  void Release();
  void Open();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int free_;
  bool open_;
};

// One adaptation job. Thread-safe.
class Job {
 public:
  explicit Job(const JobRow& row);

  const std::string& id() const { return id_; }
  int64_t task_id() const { return task_id_; }
  int64_t begin() const { return begin_; }
  // The end of the examples the job answers for: those it was queued with, and those that
  // joined it later (Join).
  int64_t end() const;
  // Examples up to `end` join the job (a stream that closes while it is queued, or the job's
  // start, which takes every example pending then).
  void Join(int64_t end);
  // The serialized v1::LearningConfig the job started with (empty if it never started).
  const std::string& started_config() const { return started_config_; }

  v1::JobStatus Status() const;
  bool terminal() const;
  // Waits until the status changes past `seen` (a sequence number) or `timeout_ms` passes;
  // fills `out` and returns the current sequence number.
  uint64_t WaitForChange(uint64_t seen, int timeout_ms, v1::JobStatus* out) const;
  // Applies `f` to the status; watchers wake at once if `urgent`, else at most every 100 ms.
  void Update(const std::function<void(v1::JobStatus&)>& f, bool urgent = true);

  // Set for a job that started and was stopped before it ended (on recovery from a crash, or
  // as a shutdown puts it back in the queue): it learns exactly its started range again, and no
  // stream joins it.
  void set_resumed_range() { resumed_range_.store(true); }
  bool resumed_range() const { return resumed_range_.load(); }

  void RequestCancel() { cancel_.store(true); }
  bool cancel_requested() const { return cancel_.load(); }

 private:
  const std::string id_;
  const int64_t task_id_, begin_;
  const std::string started_config_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> resumed_range_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  // Guarded by mu_:
  v1::JobStatus status_;
  int64_t end_;
  uint64_t seq_ = 1;
  int64_t last_notify_ms_ = 0;
};

// A published version: immutable after Create.
class ModelVersion {
 public:
  static absl::StatusOr<std::shared_ptr<const ModelVersion>> Create(v1::VersionInfo info,
                                                                    ContinualState state);

  int64_t version() const { return info_.version(); }
  const v1::VersionInfo& info() const { return info_; }
  const ContinualState& state() const { return state_; }

  // A private copy of the model at this version's mean, for one caller at a time; returned to
  // a pool when the lease ends.
  class Lease {
   public:
    struct Instance {
      std::unique_ptr<Model> model;
      FlatParameters flat;
    };
    Lease(const ModelVersion* owner, std::unique_ptr<Instance> instance)
        : owner_(owner), instance_(std::move(instance)) {}
    Lease(Lease&&) = default;
    ~Lease();
    Model& model() { return *instance_->model; }
    FlatParameters& flat() { return instance_->flat; }

   private:
    const ModelVersion* owner_;
    std::unique_ptr<Instance> instance_;
  };
  absl::StatusOr<Lease> Acquire() const;

 private:
  ModelVersion(v1::VersionInfo info, ContinualState state)
      : info_(std::move(info)), state_(std::move(state)) {}
  const v1::VersionInfo info_;
  const ContinualState state_;
  mutable std::mutex pool_mu_;
  mutable std::vector<std::unique_ptr<Lease::Instance>> pool_;
};

// Written into a model's directory before its catalog rows go, and removed last with it, so
// that a start after a crash tells an interrupted deletion from files that a lost catalog no
// longer lists.
inline constexpr char kDeletingMarker[] = "DELETING";
// Written into a new model's directory before its catalog row, and removed once version 0 is
// published: a start removes a creation (or import) that a crash cut, and keeps, offline, files
// that a catalog restored from an older copy shows as unfinished.
inline constexpr char kCreatingMarker[] = "CREATING";

struct ModelEntryOptions {
  std::string dir;             // <data_dir>/models/<name>
  int64_t queue_capacity = 16; // jobs queued per model
  Catalog* catalog = nullptr;
  JobSlots* slots = nullptr;
  Metrics* metrics = nullptr;
  // The actor thread's nice value (0: the server's own priority).
  int training_nice = 10;
  // Retention: only the newest N versions keep their checkpoints (0: every version).
  int64_t keep_versions = 0;
  // Finished jobs kept in memory (ListJobs, WatchJob, CancelJob), newest first; unfinished ones
  // are always kept.
  int64_t keep_jobs = 1000;
  // Where adaptation jobs train (AdaptConfig::device); the state stays on the CPU.
  at::Device device = at::kCPU;
  // Called when a job is created (the registry indexes jobs by id).
  std::function<void(std::shared_ptr<Job>)> on_job;
};

// A stream's validated header.
struct StreamPlan {
  v1::StreamHeader header;
  ExampleSplit split = ExampleSplit::kTrain;
  std::vector<int64_t> classes;  // the head (multi-head), else what the header named
  bool new_task = false;
};

struct CommitResult {
  std::vector<std::pair<int64_t, int64_t>> id_ranges;  // (first, count)
  std::vector<std::string> job_ids;
  int64_t version = 0;
  // Why no job could be queued for the task's pending examples (OK: one was, or none needed).
  absl::Status no_job;
};

// A status whose stream may or may not be stored (a failed append that could not be undone):
// the stream's refusal then does not say that nothing was stored.
absl::Status OutcomeUnknown(absl::Status status);
bool IsOutcomeUnknown(const absl::Status& status);

class ModelEntry {
 public:
  // A new model's spec, config and prior, checked: all that Create needs from the request,
  // worked out before anything is reserved or written (INVALID_ARGUMENT for a bad request).
  struct Blueprint {
    ModelSpec spec;
    v1::LearningConfig config;  // normalized: defaults filled in
    AdaptConfig adapt;
    ContinualState state;
  };
  static absl::StatusOr<Blueprint> Plan(const v1::ModelSpec& spec, const v1::LearningConfig& config);
  // A new model: writes version 0 (the prior) and the catalog row.
  static absl::StatusOr<std::unique_ptr<ModelEntry>> Create(const std::string& name, Blueprint plan,
                                                            const ModelEntryOptions& options);
  // A model from the catalog: reads its logs (dropping uncommitted tails), verifies its
  // checkpoints and requeues the jobs a crash interrupted.
  static absl::StatusOr<std::unique_ptr<ModelEntry>> Recover(const ModelRow& row,
                                                             const ModelEntryOptions& options);
  ~ModelEntry();

  const std::string& name() const { return name_; }
  const ModelSpec& spec() const { return spec_; }

  std::shared_ptr<const ModelVersion> Current() const;
  // `version` < 0: the current one. NOT_FOUND for a version that does not exist.
  absl::StatusOr<std::shared_ptr<const ModelVersion>> Version(int64_t version) const;

  v1::ModelInfo Info() const;
  std::vector<v1::VersionInfo> Versions() const;
  // Every version's record and the version that serves, read together.
  std::pair<std::vector<v1::VersionInfo>, std::shared_ptr<const ModelVersion>> VersionsAndCurrent()
      const;
  // `version`'s accuracy on the evaluation examples of each task that its record lacks (their
  // evaluation examples came after it was published), measured now; not stored.
  absl::StatusOr<std::vector<v1::TaskAccuracy>> EvaluateUnscored(const ModelVersion& version) const;
  std::vector<std::shared_ptr<Job>> Jobs() const;

  // Streams: validate the header, then each batch, then commit them all (durable on return).
  absl::StatusOr<StreamPlan> PlanStream(const v1::StreamHeader& header) const;
  absl::StatusOr<ExampleBatchData> ValidateBatch(const StreamPlan& plan,
                                                 const v1::ExampleBatch& batch) const;
  // `adapt`: queue a job that learns the task's training examples not yet learnt.
  absl::StatusOr<CommitResult> Commit(StreamPlan& plan, std::vector<ExampleBatchData> batches,
                                      bool adapt);
  // Online mode's chunk size (0: off).
  int64_t adapt_every() const;

  // Changes the learning config's fields that `mask` names (MergeConfig), in the catalog first.
  // Jobs that start afterwards use the new config; a running job keeps its own.
  absl::StatusOr<v1::ModelInfo> UpdateConfig(const v1::LearningConfig& update,
                                             const google::protobuf::FieldMask& mask);

  // A queued job is cancelled at once; a running one stops at its next step. The request is
  // recorded in the catalog before the answer, so a restart never runs the job again; if it
  // cannot be, UNAVAILABLE and nothing changes. Cancelling a finished job changes nothing.
  absl::StatusOr<v1::JobStatus> Cancel(const std::shared_ptr<Job>& job);

  absl::StatusOr<v1::ModelInfo> Rollback(int64_t version);
  absl::StatusOr<std::string> Export() const;

  // Labelled examples with their ids, for Influence and MemoryMap: the version's memory, or
  // the training examples stored (every task's, or only task `only_task`'s when >= 0).
  struct Examples {
    Dataset data;
    at::Tensor ids, client_ids, task_ids;
  };
  Examples MemoryExamples(const ModelVersion& version) const;
  Examples TrainingExamples(int64_t only_task = -1) const;

  // Stops the actor: the running job is interrupted and stays queued for the next start.
  void Stop();
  // The first step of a server shutdown: the running job is interrupted (it stays queued for
  // the next start) and no job starts, while streams may still store examples.
  void InterruptJobs();
  // Stops and removes every file of the model (the caller removes the catalog rows).
  absl::Status Destroy();

 private:
  struct TaskExamples {
    std::vector<int64_t> classes;
    std::unique_ptr<ExampleLog> log;
    std::vector<ExampleBatchData> train, eval;
    int64_t train_count = 0, eval_count = 0;
    int64_t learned = 0;  // training examples [0, learned) were learnt by a finished job
    // Training examples [0, taken) are, or were, in a job's range (set when a job is queued
    // and when it starts; reset to `learned` when a rollback voids a job): the
    // adapt_after_seconds policy leaves them alone, so a failed job is not retried on a timer.
    int64_t taken = 0;
    // When the oldest training example beyond max(learned, taken) was acknowledged (for
    // examples stored before the model was loaded: the load), pushed later when queueing their
    // job failed, so that the timer tries again after a while.
    std::chrono::steady_clock::time_point waiting_since = std::chrono::steady_clock::now();
    bool Waiting() const { return train_count > std::max(learned, taken); }
  };

 public:
  // An exported snapshot, parsed and checked: all that Import needs from it, worked out before
  // anything is reserved or written (INVALID_ARGUMENT for a bad snapshot).
  struct ImportBlueprint {
    Blueprint model;
    v1::VersionInfo info;
    std::map<int64_t, TaskExamples> tasks;
  };
  static absl::StatusOr<ImportBlueprint> PlanImport(const std::string& snapshot);
  // A model from an exported snapshot: its state becomes version 0.
  static absl::StatusOr<std::unique_ptr<ModelEntry>> Import(const std::string& name,
                                                            ImportBlueprint plan,
                                                            const ModelEntryOptions& options);

 private:

  ModelEntry(std::string name, ModelSpec spec, v1::LearningConfig config, AdaptConfig adapt,
             ModelEntryOptions options);

  std::string CheckpointPath(int64_t version) const;
  std::string LogPath(int64_t task_id) const;
  // The checkpoint's bytes; DATA_LOSS if they fail the catalog's checksum.
  absl::StatusOr<std::string> ReadCheckpoint(int64_t version, uint32_t crc) const;
  absl::StatusOr<std::shared_ptr<const ModelVersion>> LoadVersion(const v1::VersionInfo& info,
                                                                  uint32_t crc) const;
  // Writes the checkpoint, commits the catalog row (and the job's success), then publishes.
  // job_id (empty for rollbacks and imports) succeeds with the version; job_progress is its
  // JobRow::progress.
  absl::Status Publish(v1::VersionInfo info, ContinualState state, const std::string& job_id,
                       const std::string& job_progress = "");
  // Retention: deletes the checkpoints of the versions older than the newest keep_versions
  // (marked in the catalog first, so a crash in between leaves only a file that the next
  // start removes). Best effort: a failure is logged and retried at the next publish.
  // REQUIRES: commit_mu_ held, or the actor not yet started.
  void DeleteOldCheckpoints();
  // Drops the oldest finished jobs beyond options_.keep_jobs from jobs_.
  std::vector<std::shared_ptr<Job>> KeptJobsLocked() const;
  void PruneJobsLocked();
  absl::StatusOr<std::shared_ptr<Job>> QueueJobLocked(int64_t task_id);
  // The task's job that waits in the queue, if any; with `joinable`, the first that takes every
  // example pending when it starts (not one with a fixed range). REQUIRES: mu_ held.
  std::shared_ptr<Job> QueuedJobLocked(int64_t task_id, bool joinable = false) const;
  // The examples a job that ends before it starts leaves unlearnt: its range, less what jobs
  // before it learnt since it was queued. REQUIRES: mu_ held.
  int64_t UnlearntLocked(const Job& job) const;
  // Tells the metrics how many jobs wait in the queue. REQUIRES: mu_ held.
  void ReportQueueDepthLocked() const;
  // A task's evaluation examples (tensor handles, taken under mu_) and its head.
  struct EvalSet {
    int64_t task_id;
    std::vector<ExampleBatchData> batches;
    at::Tensor mask;
  };
  // Every task with evaluation examples but those in `skip`. REQUIRES: mu_ held.
  std::vector<EvalSet> EvalSetsLocked(const std::set<int64_t>& skip = {}) const;
  // `state`'s accuracy on each set (the examples are concatenated here, outside any lock).
  static absl::StatusOr<std::vector<v1::TaskAccuracy>> Score(const ContinualState& state,
                                                            const std::vector<EvalSet>& sets);
  // Each task's learnt examples as `info` records them (nothing if it has no record).
  // REQUIRES: mu_ held, or the actor not yet started.
  void ApplyLearntLocked(const v1::VersionInfo& info);
  // The adapt_after_seconds policy: queues a job for every task whose examples have waited long
  // enough and returns when the next one is due (time_point::max() if none is waiting).
  std::chrono::steady_clock::time_point QueueOverdueJobsLocked();
  // Import's writes: logs, task and job rows, then version 0 (the caller undoes on error).
  absl::Status WriteImported(std::map<int64_t, TaskExamples>& tasks, const std::string& name,
                             v1::VersionInfo info, ContinualState state);
  void Start();
  bool RunningLocked() const;  // a job is training (REQUIRES: mu_ held)
  bool Stopping() const;       // Stop has begun (takes mu_)
  void RunActor();
  void RunJob(const std::shared_ptr<Job>& job);
  // Records a job's end (failed, cancelled, or succeeded without a new version) in the catalog
  // and in its status; a catalog write that fails is said in the status's message.
  void EndJob(const std::shared_ptr<Job>& job, v1::JobState state, const std::string& message);
  at::Tensor LabelMaskLocked(int64_t task_id) const;
  static Dataset Concat(const std::vector<ExampleBatchData>& batches, at::Tensor* ids,
                        at::Tensor* client_ids);
  // Handles (not copies) of the stored training batches, with their task ids, taken under mu_.
  std::vector<std::pair<int64_t, ExampleBatchData>> TrainBatches(int64_t only_task = -1) const;

  const std::string name_;
  const ModelSpec spec_;
  const ModelEntryOptions options_;

  std::mutex commit_mu_;  // serializes log appends and publishing
  // Held by Cancel; by a job from its cancel check after the slot wait until it shows RUNNING,
  // and from its last cancel check through its publish: a cancel that finds the job unfinished
  // is one the job obeys, as its answer says. Taken before commit_mu_ and mu_.
  std::mutex end_mu_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // The learning config (UpdateConfig replaces both under mu_, and commit_mu_).
  v1::LearningConfig config_;
  AdaptConfig adapt_;
  std::map<int64_t, TaskExamples> tasks_;
  int64_t next_example_id_ = 0;
  std::vector<std::pair<v1::VersionInfo, uint32_t>> versions_;  // with checkpoint CRC-32C
  std::shared_ptr<const ModelVersion> current_;
  mutable std::map<int64_t, std::shared_ptr<const ModelVersion>> cache_;  // older versions
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::shared_ptr<Job>> jobs_;
  std::shared_ptr<Job> running_;
  bool stopping_ = false;
  std::atomic<bool> interrupt_jobs_{false};
  std::thread actor_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_MODEL_ENTRY_H_

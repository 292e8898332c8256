// The catalog: models, tasks, versions and jobs in SQLite (WAL, synchronous=FULL), so that a
// row written is a row that survives a crash. Blobs hold the public protos (ModelSpec,
// LearningConfig, VersionInfo) serialized. Every row carries a CRC-32C of its columns, checked
// as it is read: ListModels marks a damaged row, the other lists fail with DATA_LOSS.
#ifndef ADAPTD_SERVER_CATALOG_H_
#define ADAPTD_SERVER_CATALOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

struct sqlite3;

namespace adaptd {

struct ModelRow {
  std::string name;
  std::string spec;    // v1::ModelSpec
  std::string config;  // v1::LearningConfig
  int64_t created_ms = 0;
  // Set by ListModels: the row's bytes do not match its checksum (damaged on disk), so none of
  // its fields, the name included, can be trusted.
  bool damaged = false;
};

struct TaskRow {
  int64_t task_id = 0;
  std::vector<int64_t> classes;
  // Where the task's example log's last acknowledged stream ends (its commit record's end),
  // so that a start can tell a log cut after a commit from a crash's torn tail. 0: not known
  // (a row written before the catalog kept it).
  int64_t log_bytes = 0;
};

struct VersionRow {
  int64_t version = 0;
  std::string info;            // v1::VersionInfo
  uint32_t checkpoint_crc = 0; // CRC-32C of the checkpoint file's bytes
};

struct JobRow {
  std::string id;
  std::string model;
  int64_t task_id = 0;
  // The task's training examples [begin, end) (positions in arrival order) the job learns.
  int64_t begin = 0;
  int64_t end = 0;
  int state = 0;  // v1::JobState
  std::string message;
  int64_t version = -1;
  int64_t created_ms = 0;
  // The v1::LearningConfig the job trains with, fixed with its range when it starts; empty
  // before then.
  std::string config;
  // How far it got, as a serialized v1::JobStatus with examples, step, total_steps, loss and
  // elapsed_seconds; written when it ends, empty before.
  std::string progress;
  // A CancelJob was acknowledged for it (recorded before the answer). A restart ends an
  // unfinished job that has it as cancelled.
  bool cancel_requested = false;
};

// Thread-safe (one connection behind a mutex).
class Catalog {
 public:
  static absl::StatusOr<std::unique_ptr<Catalog>> Open(const std::string& path);
  ~Catalog();

  absl::Status InsertModel(const ModelRow& row);
  // Replaces the model's serialized v1::LearningConfig; NOT_FOUND if there is no such model.
  absl::Status UpdateModelConfig(const std::string& name, const std::string& config);
  // Removes the model and every row that belongs to it, in one transaction.
  absl::Status DeleteModel(const std::string& name);
  absl::StatusOr<std::vector<ModelRow>> ListModels();
  // A damaged model row whose checksum matches under one of `names` (the model directories that
  // no row lists) was hit in its name alone: it gets that name back. Returns the names restored.
  absl::StatusOr<std::vector<std::string>> RestoreModelNames(const std::vector<std::string>& names);

  absl::Status UpsertTask(const std::string& model, const TaskRow& row);
  // Records where the task's log's acknowledged streams now end; NOT_FOUND without its row.
  absl::Status SetTaskLogBytes(const std::string& model, int64_t task_id, int64_t log_bytes);
  absl::StatusOr<std::vector<TaskRow>> ListTasks(const std::string& model);

  absl::StatusOr<std::vector<VersionRow>> ListVersions(const std::string& model);

  absl::Status InsertJob(const JobRow& row);
  // `progress`: the JobRow field (empty for a job that has not ended). `end`: the job's range
  // grows to end there if it ended short of it (-1: the range stays).
  absl::Status UpdateJob(const std::string& id, int state, const std::string& message,
                         int64_t version, const std::string& progress, int64_t end = -1);
  // A queued job's range grows to end there (it never shrinks): a closing stream joined it.
  absl::Status GrowJob(const std::string& id, int64_t end);
  // Sets the job's cancel_requested; its state is the job's own to change.
  absl::Status RecordCancel(const std::string& id);
  // The same, with the job's end (UpdateJob's fields but the version) and the end of its range
  // in the same statement: a queued job, cancelled at once, with the examples it had taken.
  absl::Status RecordCancelAndEnd(const std::string& id, int state, const std::string& message,
                                  const std::string& progress, int64_t end);
  // A job starts: the examples it learns and the settings it learns them with, fixed from now
  // on, and its new state, in one statement.
  absl::Status StartJob(const std::string& id, int64_t begin, int64_t end,
                        const std::string& config, int state, const std::string& message);
  absl::StatusOr<std::vector<JobRow>> ListJobs(const std::string& model);

  // Publishing: the version row and the job's success in one transaction (job_id may be
  // empty for rollbacks and imports).
  absl::Status Publish(const std::string& model, const VersionRow& version,
                       const std::string& job_id, int job_state, const std::string& message,
                       const std::string& progress);

  // Rewrites the info of existing version rows (retention marks deleted checkpoints), in one
  // transaction; only each row's version and info are used. NOT_FOUND (and nothing changes)
  // if a row is missing.
  absl::Status UpdateVersionInfos(const std::string& model, const std::vector<VersionRow>& rows);

  // Every row of every table as text, in a fixed order: tests compare it before and after.
  absl::StatusOr<std::string> Dump();

 private:
  // A column that came after the first release.
  struct Added {
    const char* table;
    const char* column;
    const char* type;
  };

  explicit Catalog(sqlite3* db) : db_(db) {}
  absl::Status ExecLocked(const std::string& sql);
  // Runs `body` in one transaction, committed if it succeeds and rolled back if not.
  absl::Status InTransactionLocked(const std::function<absl::Status()>& body);
  // Creates the checksum triggers, or replaces those whose text differs, in one transaction.
  absl::Status PutBackTriggersLocked();
  // Brings a catalog written by an earlier release up to the schema, in one transaction.
  absl::Status MigrateLocked();
  absl::Status AddColumnsLocked(absl::Span<const Added> added);  // in a transaction
  // DATA_LOSS unless SQLite's integrity check passes (the pages and the indexes), after the
  // tables whose key index alone disagrees with their rows are rebuilt from them.
  absl::Status CheckIntegrityLocked();
  absl::StatusOr<std::vector<std::string>> IntegrityProblemsLocked();
  // Rebuilds the table from its rows, read without its index, restoring the model's name of any
  // damaged task, version or job row whose checksum matches under another model's name. In a
  // transaction.
  absl::Status RebuildRestoringNamesLocked(const std::string& table);
  // Restores the model's name of a damaged row whose checksum matches under another model's
  // name; DATA_LOSS for a damaged row that names no model and matches none.
  absl::Status CheckKeysLocked();
  absl::Status CommitLocked();
  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_CATALOG_H_

#include "server/model_entry.h"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <set>

#include <torch/torch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/tensor_io.h"
#include "core/torch_status.h"
#include "server/convert.h"
#include "server/crc32c.h"
#include "server/fs_util.h"
#include "server/metrics.h"

namespace adaptd {
namespace {

constexpr char kInterruptedByShutdown[] = "interrupted by shutdown; resumes on restart";
constexpr char kCancelRequested[] = "cancel requested; the job stops at its next step";
constexpr char kCancelRequestedUnstarted[] =
    "cancel requested; the job ends before it trains";
constexpr char kCancelledWhileQueued[] = "cancelled while queued";
constexpr char kCancelledWhileRunning[] = "cancelled while running";

// A task's classes are a label set: the order a header names them in does not matter.
bool SameClasses(std::vector<int64_t> a, std::vector<int64_t> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  return a == b;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NewJobId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  char buf[20];
  std::snprintf(buf, sizeof(buf), "j%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// Bytes <-> uint8 tensors, so protos ride inside tensor maps.
at::Tensor BytesTensor(const std::string& bytes) {
  at::Tensor t = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

absl::StatusOr<std::string> TensorBytes(const TensorMap& m, const std::string& name) {
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor t, GetTensor(m, name, at::kByte));
  return std::string(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()));
}

template <typename Proto>
absl::StatusOr<Proto> ProtoFromMap(const TensorMap& m, const std::string& name) {
  ADAPTD_ASSIGN_OR_RETURN(std::string bytes, TensorBytes(m, name));
  Proto p;
  if (!p.ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("'", name, "' does not parse as ", p.GetTypeName()));
  }
  return p;
}

v1::VersionInfo Diagnose(v1::VersionInfo info, const ContinualState& s) {
  info.set_memory_size(s.memory.size());
  auto posterior = s.ToPosterior();
  if (posterior.ok()) {
    info.set_mean_hess(s.hess.mean().item<double>());
    info.set_mean_sigma(posterior->Sigma().mean().item<double>());
  }
  return info;
}

at::Tensor Cat(const std::vector<at::Tensor>& parts, at::ScalarType dtype) {
  return parts.empty() ? at::empty({0}, dtype) : at::cat(parts);
}

// The fields of a job's status that describe its run so far, from `from` into `to` (from an
// empty status: cleared).
void CopyRunProgress(const v1::JobStatus& from, v1::JobStatus* to) {
  to->set_step(from.step());
  to->set_total_steps(from.total_steps());
  to->set_loss(from.loss());
  to->set_ivon_step_growth(from.ivon_step_growth());
  to->set_ivon_peak_step(from.ivon_peak_step());
  to->set_elapsed_seconds(from.elapsed_seconds());
}

// What the catalog keeps of a job's status when it ends (JobRow::progress). With the job's id,
// so that a job that ends with no examples and no step ("nothing new to learn") still leaves a
// record: an empty one is a job that ended before the catalog kept any, which a start shows
// with its range's examples.
std::string ProgressOf(const v1::JobStatus& s) {
  v1::JobStatus p;
  p.set_job_id(s.job_id());
  p.set_examples(s.examples());
  CopyRunProgress(s, &p);
  return p.SerializeAsString();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JobSlots, Job

bool JobSlots::Acquire(const std::function<bool()>& stop, const std::function<void()>& on_wait) {
  std::unique_lock<std::mutex> lock(mu_);
  if (free_ == 0 && open_ && on_wait) {  // not while a start holds training back
    lock.unlock();  // on_wait may take other locks
    on_wait();
    lock.lock();
  }
  while (free_ == 0 || !open_) {
    if (stop()) return false;
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  --free_;
  return true;
}

void JobSlots::Open() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
  }
  cv_.notify_all();
}

void JobSlots::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++free_;
  }
  cv_.notify_one();
}

Job::Job(const JobRow& row)
    : id_(row.id),
      task_id_(row.task_id),
      begin_(row.begin),
      started_config_(row.config),
      end_(row.end) {
  status_.set_job_id(row.id);
  status_.set_model(row.model);
  status_.set_task_id(row.task_id);
  status_.set_state(static_cast<v1::JobState>(row.state));
  status_.set_message(row.message);
  status_.set_version(row.version);
  status_.set_examples(row.end - row.begin);
  v1::JobStatus progress;
  if (terminal() && !row.progress.empty() && progress.ParseFromString(row.progress)) {
    status_.set_examples(progress.examples());
    CopyRunProgress(progress, &status_);
  }
}

int64_t Job::end() const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_;
}

void Job::Join(int64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  end_ = std::max(end_, end);
}

v1::JobStatus Job::Status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

bool Job::terminal() const {
  const auto s = Status().state();
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

uint64_t Job::WaitForChange(uint64_t seen, int timeout_ms, v1::JobStatus* out) const {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return seq_ > seen; });
  *out = status_;
  return seq_;
}

void Job::Update(const std::function<void(v1::JobStatus&)>& f, bool urgent) {
  bool notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    f(status_);
    ++seq_;
    const int64_t now = NowMs();
    notify = urgent || now - last_notify_ms_ >= 100;
    if (notify) last_notify_ms_ = now;
  }
  if (notify) cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// ModelVersion

absl::StatusOr<std::shared_ptr<const ModelVersion>> ModelVersion::Create(v1::VersionInfo info,
                                                                          ContinualState state) {
  return std::shared_ptr<const ModelVersion>(new ModelVersion(std::move(info), std::move(state)));
}

ModelVersion::Lease::~Lease() {
  if (instance_ == nullptr) return;
  std::lock_guard<std::mutex> lock(owner_->pool_mu_);
  owner_->pool_.push_back(std::move(instance_));
}

absl::StatusOr<ModelVersion::Lease> ModelVersion::Acquire() const {
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!pool_.empty()) {
      auto instance = std::move(pool_.back());
      pool_.pop_back();
      return Lease(this, std::move(instance));
    }
  }
  auto instance = std::make_unique<Lease::Instance>();
  ADAPTD_ASSIGN_OR_RETURN(instance->model, MaterializeModel(state_));
  ADAPTD_ASSIGN_OR_RETURN(instance->flat, FlatParameters::Bind(instance->model->Parameters()));
  instance->model->SetTraining(false);
  return Lease(this, std::move(instance));
}

// ---------------------------------------------------------------------------------------------
// ModelEntry: creation and recovery

ModelEntry::ModelEntry(std::string name, ModelSpec spec, v1::LearningConfig config,
                       AdaptConfig adapt, ModelEntryOptions options)
    : name_(std::move(name)),
      spec_(std::move(spec)),
      options_(std::move(options)),
      config_(std::move(config)),
      adapt_(std::move(adapt)) {
  adapt_.device = options_.device;  // the server's, for every job of this model
}

ModelEntry::~ModelEntry() { Stop(); }

std::string ModelEntry::CheckpointPath(int64_t version) const {
  return absl::StrCat(options_.dir, "/versions/", version, ".ckpt");
}

std::string ModelEntry::LogPath(int64_t task_id) const {
  return absl::StrCat(options_.dir, "/examples/", task_id, ".log");
}

namespace {

// Fields that the architecture would ignore are refused at creation: a logreg given hidden
// widths is no MLP. Only here, not in ModelSpec::Validate, which also vets the specs of models
// created before this check, on every start.
absl::Status CheckFieldsApply(const v1::ModelSpec& spec) {
  const std::string& arch = spec.architecture();
  if (arch != "mlp" && spec.hidden_size() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: hidden widths apply to architecture mlp only; got ",
        ShapeString(std::vector<int64_t>(spec.hidden().begin(), spec.hidden().end())), " for ",
        arch));
  }
  // "relu" is what an unset activation means, and what GetModel shows for every model: a spec
  // read back from GetModel creates its model again.
  if (arch != "mlp" && arch != "lenet5" && !spec.activation().empty() &&
      spec.activation() != "relu") {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: activation applies to architectures mlp and lenet5 only; got '",
        spec.activation(), "' for ", arch));
  }
  if (arch != "torchscript" && !spec.torchscript().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: TorchScript bytes apply to architecture torchscript only; got ",
        spec.torchscript().size(), " bytes for ", arch));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelEntry::Blueprint> ModelEntry::Plan(const v1::ModelSpec& spec,
                                                       const v1::LearningConfig& config) {
  Blueprint b;
  ADAPTD_ASSIGN_OR_RETURN(b.spec, SpecFromProto(spec));
  ADAPTD_RETURN_IF_ERROR(CheckFieldsApply(spec));
  ADAPTD_ASSIGN_OR_RETURN(b.config, NormalizeConfig(config));
  ADAPTD_ASSIGN_OR_RETURN(b.adapt, ConfigFromProto(b.config));
  ADAPTD_ASSIGN_OR_RETURN(b.state, InitialState(b.spec, b.config.seed()));
  return b;
}

absl::StatusOr<std::unique_ptr<ModelEntry>> ModelEntry::Create(const std::string& name,
                                                               Blueprint plan,
                                                               const ModelEntryOptions& options) {
  ContinualState state = std::move(plan.state);
  auto entry = std::unique_ptr<ModelEntry>(new ModelEntry(
      name, std::move(plan.spec), std::move(plan.config), std::move(plan.adapt), options));
  ADAPTD_RETURN_IF_ERROR(MakeDirs(options.dir + "/examples"));
  ADAPTD_RETURN_IF_ERROR(MakeDirs(options.dir + "/versions"));
  ModelRow row{name, SpecToProto(entry->spec_).SerializeAsString(),
               entry->config_.SerializeAsString(), NowMs()};
  ADAPTD_RETURN_IF_ERROR(options.catalog->InsertModel(row));
  v1::VersionInfo info;
  info.set_version(0);
  info.set_task_id(-1);
  info.set_rolled_back_from(-1);
  info.set_created_unix_ms(row.created_ms);
  *info.mutable_config() = entry->config_;
  info.mutable_learnt();  // nothing yet
  absl::Status published = entry->Publish(std::move(info), std::move(state), "");
  if (!published.ok()) {
    (void)options.catalog->DeleteModel(name);
    return published;
  }
  entry->Start();
  return entry;
}

absl::StatusOr<std::string> ModelEntry::ReadCheckpoint(int64_t version, uint32_t crc) const {
  const std::string path = CheckpointPath(version);
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return ServerFault(bytes.status());
  if (Crc32c(*bytes) != crc) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " fails its checksum"));
  }
  return bytes;
}

absl::StatusOr<std::shared_ptr<const ModelVersion>> ModelEntry::LoadVersion(
    const v1::VersionInfo& info, uint32_t crc) const {
  ADAPTD_ASSIGN_OR_RETURN(std::string bytes, ReadCheckpoint(info.version(), crc));
  // A stored checkpoint that passes its checksum and still does not hold a valid state is
  // damage, not a bad request (the readers answer INVALID_ARGUMENT, as they do for Import).
  absl::StatusOr<ContinualState> state = [&]() -> absl::StatusOr<ContinualState> {
    ADAPTD_ASSIGN_OR_RETURN(TensorMap map, ParseTensors(bytes));
    return ContinualState::FromTensors(map, spec_);
  }();
  if (!state.ok()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", CheckpointPath(info.version()), ": ",
                                            state.status().message()));
  }
  return ModelVersion::Create(info, *std::move(state));
}

absl::StatusOr<std::unique_ptr<ModelEntry>> ModelEntry::Recover(const ModelRow& row,
                                                                const ModelEntryOptions& options) {
  v1::ModelSpec spec_proto;
  v1::LearningConfig config;
  if (!spec_proto.ParseFromString(row.spec) || !config.ParseFromString(row.config)) {
    return absl::DataLossError(absl::StrCat("model ", row.name, ": catalog row does not parse"));
  }
  ADAPTD_ASSIGN_OR_RETURN(ModelSpec spec, SpecFromProto(spec_proto));
  ADAPTD_ASSIGN_OR_RETURN(AdaptConfig adapt, ConfigFromProto(config));
  auto entry = std::unique_ptr<ModelEntry>(
      new ModelEntry(row.name, std::move(spec), std::move(config), std::move(adapt), options));
  ModelEntry& e = *entry;

  // Examples: every committed batch of every task; torn tails are left out.
  ADAPTD_ASSIGN_OR_RETURN(std::vector<TaskRow> tasks, options.catalog->ListTasks(row.name));
  for (const TaskRow& t : tasks) {
    TaskExamples& te = e.tasks_[t.task_id];
    te.classes = t.classes;
    // A log that ends, or whose committed streams end, before the last stream the catalog
    // acknowledged was cut (a partial copy, say), which no crash does: what is left can read
    // as whole, or as a torn tail, but acknowledged examples went. Its size is checked before
    // it is read, since reading rewrites a log written before logs had keys.
    const std::string path = e.LogPath(t.task_id);
    auto cut = [&](const char* what, int64_t end) {
      return absl::DataLossError(absl::StrCat(
          path, ": ", what, " at byte ", end, ", but the catalog acknowledged streams up to byte ",
          t.log_bytes, ": acknowledged examples were cut from it (was it copied or restored in "
          "part?)"));
    };
    std::error_code size_error;
    const auto size = std::filesystem::file_size(path, size_error);
    if (!size_error && static_cast<int64_t>(size) < t.log_bytes) return cut("it ends", size);
    LogRecovery rec;
    ADAPTD_ASSIGN_OR_RETURN(te.log, ExampleLog::Open(path, &rec));
    const int64_t end = te.log->size_bytes();
    if (end < t.log_bytes) return cut("its committed streams end", end);
    // Said at every start until the task's next stream cuts them: they are the only trace of
    // a stream whose commit record was damaged after it was acknowledged, if one was.
    if (rec.truncated_bytes > 0) {
      std::fprintf(stderr, "adaptd: model %s task %lld: left out %lld bytes after the log's "
                   "last commit record (a stream a crash or a failed write left unfinished); "
                   "the task's next stream cuts them\n",
                   row.name.c_str(), static_cast<long long>(t.task_id),
                   static_cast<long long>(rec.truncated_bytes));
    }
    // A row from before the catalog kept the end, a stream a crash caught between its commit
    // and its record, or a log rewritten under a key: record the end found, so that the check
    // above holds from now on. Without it the model still loads, unchecked.
    if (end != t.log_bytes) {
      const absl::Status recorded = options.catalog->SetTaskLogBytes(row.name, t.task_id, end);
      if (!recorded.ok()) {
        std::fprintf(stderr, "adaptd: model %s task %lld: %s\n", row.name.c_str(),
                     static_cast<long long>(t.task_id), recorded.ToString().c_str());
      }
    }
    for (auto& b : rec.batches) {
      if (b.size() > 0) {
        e.next_example_id_ = std::max(e.next_example_id_, b.ids.max().item<int64_t>() + 1);
      }
      if (b.split == ExampleSplit::kTrain) {
        te.train_count += b.size();
        te.train.push_back(std::move(b));
      } else {
        te.eval_count += b.size();
        te.eval.push_back(std::move(b));
      }
    }
  }

  // Versions: every checkpoint must match the checksum the catalog recorded.
  ADAPTD_ASSIGN_OR_RETURN(std::vector<VersionRow> versions, options.catalog->ListVersions(row.name));
  if (versions.empty()) {
    return absl::DataLossError(absl::StrCat("model ", row.name, " has no published version"));
  }
  std::set<std::string> known;
  for (const VersionRow& v : versions) {
    v1::VersionInfo info;
    if (!info.ParseFromString(v.info)) {
      return absl::DataLossError(absl::StrCat("model ", row.name, " version ", v.version,
                                              ": catalog row does not parse"));
    }
    e.versions_.emplace_back(info, v.checkpoint_crc);
    // Retention marked it before deleting the file: a file left by a crash is garbage.
    if (info.checkpoint_deleted()) continue;
    if (&v == &versions.back()) {
      ADAPTD_ASSIGN_OR_RETURN(e.current_, e.LoadVersion(info, v.checkpoint_crc));
    } else {
      // Older versions are loaded when a query or rollback asks for one; their damage is
      // found now.
      ADAPTD_RETURN_IF_ERROR(e.ReadCheckpoint(v.version, v.checkpoint_crc).status());
    }
    known.insert(absl::StrCat(v.version, ".ckpt"));
  }
  if (e.current_ == nullptr || e.current_->version() != e.versions_.back().first.version()) {
    return absl::DataLossError(absl::StrCat("model ", row.name, ": its newest version, ",
                                            e.versions_.back().first.version(),
                                            ", is marked deleted"));
  }
  // Files the catalog does not know: a crash leaves at most one checkpoint past the newest
  // version (written just before its row) and one log without a task row (the next task's,
  // created just before its row), and both are garbage. More of either means a catalog older
  // than the files (restored from a copy): nothing is deleted, and the model stays offline.
  const auto unlisted = [](const std::string& dir, absl::string_view suffix,
                           const std::function<bool(int64_t)>& listed) {
    std::vector<int64_t> found;
    for (const std::string& f : ListDir(dir)) {
      absl::string_view stem = f;
      int64_t n;
      if (absl::ConsumeSuffix(&stem, suffix) && absl::SimpleAtoi(stem, &n) && !listed(n)) {
        found.push_back(n);
      }
    }
    return found;
  };
  const int64_t newest = e.versions_.back().first.version();
  const size_t newer_checkpoints =
      unlisted(options.dir + "/versions", ".ckpt", [&](int64_t v) { return v <= newest; }).size();
  const std::vector<int64_t> unlisted_logs = unlisted(
      options.dir + "/examples", ".log", [&](int64_t t) { return e.tasks_.count(t) > 0; });
  if (newer_checkpoints > 1 || unlisted_logs.size() > 1) {
    return absl::DataLossError(absl::StrCat(
        "model ", row.name, ": ", newer_checkpoints, " checkpoint(s) newer than its newest version (",
        newest, ") and ", unlisted_logs.size(), " example log(s) of tasks the catalog does not "
        "list; a crash leaves at most one of each (was catalog.sqlite restored from an older "
        "copy?)"));
  }
  // The one unlisted log is the next task's first stream, which a crash caught between its
  // commit and its task row, so it was never acknowledged; but a catalog that lost its last
  // writes (its write-ahead log deleted, say) leaves the same, with acknowledged examples in
  // it. The start cannot tell the two apart, so it says what the file holds before the task's
  // next stream replaces it.
  for (const int64_t task : unlisted_logs) {
    LogRecovery held;
    const std::string path = e.LogPath(task);
    const auto read = ExampleLog::Open(path, &held);
    if (!read.ok()) {
      std::fprintf(stderr, "adaptd: model %s: %s, of a task the catalog does not list, cannot be "
                   "read (%s); the task's next stream replaces the file (copy it aside to keep "
                   "it)\n", row.name.c_str(), path.c_str(), read.status().ToString().c_str());
      continue;
    }
    int64_t examples = 0;
    for (const ExampleBatchData& b : held.batches) examples += b.size();
    if (examples == 0) continue;
    std::fprintf(stderr,
                 "adaptd: model %s: %s holds %lld committed examples of task %lld, which the "
                 "catalog does not list: a stream a crash caught before it was acknowledged, "
                 "or a catalog that lost its last writes; the task's next stream replaces the "
                 "file (copy it aside to keep it)\n",
                 row.name.c_str(), path.c_str(), static_cast<long long>(examples),
                 static_cast<long long>(task));
  }

  // Jobs: finished ones are history; queued or running ones start again from the published
  // version (adaptation is deterministic given the version, the data and the seed).
  ADAPTD_ASSIGN_OR_RETURN(std::vector<JobRow> jobs, options.catalog->ListJobs(row.name));
  // Every example a job took or a version learnt had been acknowledged, so its log holds it: a
  // log with fewer training examples lost acknowledged ones (a file removed or cut short).
  auto lost = [&](int64_t task, int64_t needed, const std::string& who) -> absl::Status {
    const auto it = e.tasks_.find(task);
    const int64_t held = it == e.tasks_.end() ? 0 : it->second.train_count;
    if (needed <= held) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat("model ", row.name, ": task ", task,
                                            "'s example log holds ", held,
                                            " training examples, but ", who, " ", needed));
  };
  for (const JobRow& j : jobs) {
    ADAPTD_RETURN_IF_ERROR(lost(j.task_id, j.end, absl::StrCat("job ", j.id, " took")));
  }
  if (e.current_->info().has_learnt()) {
    for (const auto& [tid, count] : e.current_->info().learnt().per_task()) {
      ADAPTD_RETURN_IF_ERROR(
          lost(tid, count, absl::StrCat("version ", e.current_->version(), " learnt")));
    }
  }
  for (JobRow& j : jobs) {
    if (e.tasks_.count(j.task_id) == 0) continue;
    TaskExamples& te = e.tasks_[j.task_id];
    te.taken = std::max(te.taken, j.end);
    if (j.state == v1::JOB_STATE_SUCCEEDED) te.learned = std::max(te.learned, j.end);
  }
  // A rollback since those jobs: the current version's record says what it has learnt.
  e.ApplyLearntLocked(e.current_->info());
  if (options.metrics) {
    options.metrics->SetModelVersion(row.name, e.current_->version());
    options.metrics->SetMemorySize(row.name, e.current_->info().memory_size());
  }
  constexpr char kResumedRunning[] =
      "interrupted by a server restart while running; resumed from the start";
  for (JobRow& j : jobs) {
    bool interrupted = j.state == v1::JOB_STATE_QUEUED || j.state == v1::JOB_STATE_RUNNING;
    // Started before the crash (now, or before an earlier restart): its range is fixed.
    const bool was_running =
        j.state == v1::JOB_STATE_RUNNING ||
        (interrupted && (j.message == kResumedRunning || j.message == kInterruptedByShutdown));
    if (interrupted && j.cancel_requested) {
      // Cancelled (and told so) before the server stopped, which came before the job's end
      // was recorded.
      j.state = v1::JOB_STATE_CANCELLED;
      j.message = "cancelled; the server stopped before the job's end was recorded";
      ADAPTD_RETURN_IF_ERROR(options.catalog->UpdateJob(j.id, j.state, j.message, -1, j.progress));
      interrupted = false;
    }
    if (interrupted) {
      j.message = was_running ? kResumedRunning : "queued before a server restart; resumed";
      j.state = v1::JOB_STATE_QUEUED;
      j.progress.clear();  // it runs again from the start
      ADAPTD_RETURN_IF_ERROR(options.catalog->UpdateJob(j.id, j.state, j.message, -1, ""));
    }
    auto job = std::make_shared<Job>(j);
    if (was_running) job->set_resumed_range();
    e.jobs_.push_back(job);
    if (interrupted) e.queue_.push_back(job);
  }
  e.PruneJobsLocked();
  // Files go only once every step that could keep the model offline has passed: a model kept
  // for inspection keeps all its rollback points.
  // A smaller --keep_versions than before applies from this start.
  e.DeleteOldCheckpoints();
  // A checkpoint written just before a crash, whose catalog row never committed, is garbage.
  for (const std::string& f : ListDir(options.dir + "/versions")) {
    if (known.count(f) == 0) {
      ::unlink((options.dir + "/versions/" + f).c_str());
    }
  }
  if (options.on_job) {
    for (const auto& job : e.jobs_) options.on_job(job);
  }
  entry->Start();
  return entry;
}

// ---------------------------------------------------------------------------------------------
// Reading

std::shared_ptr<const ModelVersion> ModelEntry::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

absl::StatusOr<std::shared_ptr<const ModelVersion>> ModelEntry::Version(int64_t version) const {
  std::unique_lock<std::mutex> lock(mu_);
  if (version < 0 || version == current_->version()) return current_;
  // The version's record (REQUIRES: mu_ held); NOT_FOUND if there is none, or if retention
  // deleted its checkpoint.
  auto record = [&]() -> absl::StatusOr<std::pair<v1::VersionInfo, uint32_t>> {
    for (const auto& [info, crc] : versions_) {
      if (info.version() != version) continue;
      if (info.checkpoint_deleted()) {
        return absl::NotFoundError(absl::StrCat(
            "model ", name_, " version ", version, " is listed, but the server's version "
            "retention (--keep_versions) deleted its checkpoint"));
      }
      return std::make_pair(info, crc);
    }
    return absl::NotFoundError(absl::StrCat("model ", name_, " has no version ", version,
                                            "; its versions are 0..",
                                            versions_.back().first.version()));
  };
  ADAPTD_ASSIGN_OR_RETURN(const auto found, record());
  auto cached = cache_.find(version);
  if (cached != cache_.end()) return cached->second;
  lock.unlock();
  auto loaded = LoadVersion(found.first, found.second);
  lock.lock();
  // Retention may have deleted the version while it was read: then the read failed, or its
  // result must not be cached.
  ADAPTD_RETURN_IF_ERROR(record().status());
  if (!loaded.ok()) return loaded.status();
  if (cache_.size() >= 4) cache_.erase(cache_.begin());
  cache_[version] = *loaded;
  return *loaded;
}

int64_t ModelEntry::adapt_every() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_.adapt_every();
}

absl::StatusOr<v1::ModelInfo> ModelEntry::UpdateConfig(const v1::LearningConfig& update,
                                                       const google::protobuf::FieldMask& mask) {
  // One update at a time: none can be lost between the read and the write.
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  v1::LearningConfig current;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Under commit_mu_ (Stop's fence): a deleted model's catalog row may already belong to a
    // new model of its name.
    if (stopping_) return absl::UnavailableError("the model is being deleted");
    current = config_;
  }
  ADAPTD_ASSIGN_OR_RETURN(v1::LearningConfig merged, MergeConfig(current, update, mask));
  ADAPTD_ASSIGN_OR_RETURN(AdaptConfig adapt, ConfigFromProto(merged));
  adapt.device = options_.device;
  // Durable before it takes effect: a restart loads the config from the catalog.
  ADAPTD_RETURN_IF_ERROR(options_.catalog->UpdateModelConfig(name_, merged.SerializeAsString()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    config_ = std::move(merged);
    adapt_ = std::move(adapt);
    cv_.notify_all();  // adapt_after_seconds may have changed: the actor's next deadline
  }
  return Info();
}

void ModelEntry::ApplyLearntLocked(const v1::VersionInfo& info) {
  if (!info.has_learnt()) return;  // a version from before the record: the jobs' say
  for (auto& [tid, te] : tasks_) {
    const auto& per_task = info.learnt().per_task();
    const auto it = per_task.find(tid);
    te.learned = std::min(it == per_task.end() ? 0 : it->second, te.train_count);
  }
}

v1::ModelInfo ModelEntry::Info() const {
  std::lock_guard<std::mutex> lock(mu_);
  v1::ModelInfo info;
  info.set_name(name_);
  *info.mutable_spec() = SpecToProto(spec_);
  info.mutable_spec()->clear_torchscript();  // can be large; Export carries it
  *info.mutable_config() = config_;
  info.set_num_parameters(current_->state().mean.numel());
  *info.mutable_current() = current_->info();
  for (const auto& [id, t] : tasks_) {
    v1::TaskInfo* ti = info.add_tasks();
    ti->set_task_id(id);
    ti->set_train_examples(t.train_count);
    ti->set_eval_examples(t.eval_count);
    for (int64_t c : t.classes) ti->add_classes(c);
    ti->set_pending_examples(t.train_count - t.learned);
  }
  info.set_version_count(static_cast<int64_t>(versions_.size()));
  info.set_jobs_pending(static_cast<int64_t>(queue_.size()) + (RunningLocked() ? 1 : 0));
  return info;
}

std::vector<v1::VersionInfo> ModelEntry::Versions() const { return VersionsAndCurrent().first; }

std::pair<std::vector<v1::VersionInfo>, std::shared_ptr<const ModelVersion>>
ModelEntry::VersionsAndCurrent() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::VersionInfo> out;
  for (const auto& v : versions_) out.push_back(v.first);
  return {std::move(out), current_};
}

std::vector<ModelEntry::EvalSet> ModelEntry::EvalSetsLocked(const std::set<int64_t>& skip) const {
  std::vector<EvalSet> sets;
  for (const auto& [tid, t] : tasks_) {
    if (t.eval_count > 0 && skip.count(tid) == 0) {
      sets.push_back({tid, t.eval, LabelMaskLocked(tid)});
    }
  }
  return sets;
}

absl::StatusOr<std::vector<v1::TaskAccuracy>> ModelEntry::Score(const ContinualState& state,
                                                               const std::vector<EvalSet>& sets) {
  std::vector<v1::TaskAccuracy> out;
  for (const EvalSet& set : sets) {
    const Dataset data = Concat(set.batches, nullptr, nullptr);
    ADAPTD_ASSIGN_OR_RETURN(double accuracy, EvaluateAccuracy(state, data, set.mask));
    v1::TaskAccuracy a;
    a.set_task_id(set.task_id);
    a.set_accuracy(accuracy);
    a.set_examples(data.size());
    out.push_back(std::move(a));
  }
  return out;
}

absl::StatusOr<std::vector<v1::TaskAccuracy>> ModelEntry::EvaluateUnscored(
    const ModelVersion& version) const {
  std::set<int64_t> scored;
  for (const v1::TaskAccuracy& a : version.info().eval()) scored.insert(a.task_id());
  std::vector<EvalSet> unscored;
  {
    std::lock_guard<std::mutex> lock(mu_);
    unscored = EvalSetsLocked(scored);
  }
  return Score(version.state(), unscored);
}

// The jobs to keep: every unfinished one and the newest options_.keep_jobs finished ones, in
// creation order.
std::vector<std::shared_ptr<Job>> ModelEntry::KeptJobsLocked() const {
  std::vector<bool> ended(jobs_.size());
  int64_t finished = 0;
  for (size_t i = 0; i < jobs_.size(); ++i) {
    ended[i] = jobs_[i]->terminal();
    finished += ended[i];
  }
  int64_t drop = finished - options_.keep_jobs;  // the oldest first: jobs_ is in creation order
  std::vector<std::shared_ptr<Job>> kept;
  for (size_t i = 0; i < jobs_.size(); ++i) {
    if (ended[i] && drop > 0) {
      --drop;
      continue;
    }
    kept.push_back(jobs_[i]);
  }
  return kept;
}

void ModelEntry::PruneJobsLocked() { jobs_ = KeptJobsLocked(); }

void ModelEntry::ReportQueueDepthLocked() const {
  if (options_.metrics) options_.metrics->SetQueueDepth(name_, static_cast<int64_t>(queue_.size()));
}

std::vector<std::shared_ptr<Job>> ModelEntry::Jobs() const {
  std::lock_guard<std::mutex> lock(mu_);
  // A job that has just ended is pruned once its actor is done with it; the list is bounded
  // even in between.
  return KeptJobsLocked();
}

Dataset ModelEntry::Concat(const std::vector<ExampleBatchData>& batches, at::Tensor* ids,
                           at::Tensor* client_ids) {
  std::vector<at::Tensor> xs, ys, is, cs;
  for (const auto& b : batches) {
    xs.push_back(b.x);
    ys.push_back(b.y);
    is.push_back(b.ids);
    cs.push_back(b.client_ids);
  }
  Dataset d;
  d.x = xs.empty() ? at::Tensor() : at::cat(xs);
  d.y = Cat(ys, at::kLong);
  if (ids) *ids = Cat(is, at::kLong);
  if (client_ids) *client_ids = Cat(cs, at::kLong);
  return d;
}

std::vector<std::pair<int64_t, ExampleBatchData>> ModelEntry::TrainBatches(int64_t only_task) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int64_t, ExampleBatchData>> out;
  for (const auto& [tid, t] : tasks_) {
    if (only_task >= 0 && tid != only_task) continue;
    for (const auto& b : t.train) out.emplace_back(tid, b);
  }
  return out;
}

ModelEntry::Examples ModelEntry::MemoryExamples(const ModelVersion& version) const {
  const Memory& m = version.state().memory;
  Examples e;
  if (m.size() == 0) return e;
  e.data.x = m.x;
  e.data.y = m.y;
  e.ids = m.id;
  e.task_ids = m.task;
  // Client ids: the memory's server ids looked up among the stored examples, outside the lock
  // (a sorted search over the ids, not a scan per request under it).
  std::vector<at::Tensor> ids, client_ids;
  for (const auto& [tid, b] : TrainBatches()) {
    ids.push_back(b.ids);
    client_ids.push_back(b.client_ids);
  }
  e.client_ids = at::full({m.size()}, -1, at::kLong);
  if (ids.empty()) return e;
  const auto [sorted, order] = at::cat(ids).sort();
  const at::Tensor pos = at::searchsorted(sorted, m.id).clamp_max(sorted.numel() - 1);
  const at::Tensor found = sorted.index_select(0, pos).eq(m.id);
  e.client_ids = at::where(found, at::cat(client_ids).index_select(0, order.index_select(0, pos)),
                           e.client_ids);
  return e;
}

ModelEntry::Examples ModelEntry::TrainingExamples(int64_t only_task) const {
  std::vector<ExampleBatchData> all;
  std::vector<at::Tensor> tasks;
  for (auto& [tid, b] : TrainBatches(only_task)) {
    tasks.push_back(at::full({b.size()}, tid, at::kLong));
    all.push_back(std::move(b));
  }
  Examples e;
  e.data = Concat(all, &e.ids, &e.client_ids);
  e.task_ids = Cat(tasks, at::kLong);
  return e;
}

// ---------------------------------------------------------------------------------------------
// Streams

absl::StatusOr<StreamPlan> ModelEntry::PlanStream(const v1::StreamHeader& h) const {
  StreamPlan plan;
  plan.header = h;
  switch (h.split()) {
    case v1::SPLIT_UNSPECIFIED:
    case v1::SPLIT_TRAIN:
      plan.split = ExampleSplit::kTrain;
      break;
    case v1::SPLIT_EVAL:
      plan.split = ExampleSplit::kEval;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("header.split must be SPLIT_TRAIN or SPLIT_EVAL; got ", h.split()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t next_task = tasks_.empty() ? 0 : tasks_.rbegin()->first + 1;
  if (h.task_id() < 0 || h.task_id() > next_task) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header.task_id must be an existing task or the next one, in [0, ", next_task,
        "]; got ", h.task_id()));
  }
  const std::vector<int64_t> named(h.classes().begin(), h.classes().end());
  for (int64_t c : named) {
    if (c < 0 || c >= spec_.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("header.classes must lie in [0, ",
                                                     spec_.num_classes, "); got ", c));
    }
  }
  if (std::set<int64_t>(named.begin(), named.end()).size() != named.size()) {
    return absl::InvalidArgumentError(absl::StrCat("header.classes must not repeat a class; got [",
                                                   absl::StrJoin(named, ", "), "]"));
  }
  auto it = tasks_.find(h.task_id());
  plan.new_task = it == tasks_.end();
  const bool multi = config_.head_mode() == v1::HEAD_MODE_MULTI;
  if (!plan.new_task && !it->second.classes.empty()) {
    if (!named.empty() && !SameClasses(named, it->second.classes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "header.classes must match task ", h.task_id(), "'s classes [",
          absl::StrJoin(it->second.classes, ", "), "]; got [", absl::StrJoin(named, ", "), "]"));
    }
    plan.classes = it->second.classes;
  } else if (!plan.new_task && !named.empty()) {
    // The label set is fixed by a task's first stream (TaskInfo.classes reports it).
    return absl::InvalidArgumentError(absl::StrCat(
        "header.classes: task ", h.task_id(), "'s first stream named no classes, so its streams "
        "take any label; got [", absl::StrJoin(named, ", "), "] (leave header.classes empty)"));
  } else {
    if (multi && named.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model ", name_, " is multi-head: the first stream of task ", h.task_id(),
          " must name its classes in header.classes"));
    }
    plan.classes = named;
  }
  if (plan.split == ExampleSplit::kTrain) {
    const int64_t queued = static_cast<int64_t>(queue_.size());
    if (!h.keep_open() && queued >= options_.queue_capacity) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "model ", name_, " has ", queued, " adaptation jobs queued (the limit is ",
          options_.queue_capacity, "); wait for them or cancel some"));
    }
  }
  return plan;
}

absl::StatusOr<ExampleBatchData> ModelEntry::ValidateBatch(const StreamPlan& plan,
                                                           const v1::ExampleBatch& batch) const {
  ExampleBatchData b;
  b.split = plan.split;
  ADAPTD_ASSIGN_OR_RETURN(b.x, InputsFromProto(batch.x(), spec_, false, "batch.x"));
  const int64_t n = b.x.size(0);
  ADAPTD_ASSIGN_OR_RETURN(b.y, LabelsFromProto(batch.y(), n, spec_.num_classes, "batch.y"));
  if (!plan.classes.empty()) {
    const at::Tensor allowed = at::zeros({spec_.num_classes}, at::kBool);
    for (int64_t c : plan.classes) allowed[c] = true;
    const at::Tensor outside = allowed.index_select(0, b.y).logical_not();
    if (outside.any().item<bool>()) {
      const int64_t first = outside.nonzero()[0][0].item<int64_t>();
      return absl::InvalidArgumentError(absl::StrCat(
          "batch.y[", first, "] = ", b.y[first].item<int64_t>(), " is not one of task ",
          plan.header.task_id(), "'s classes [", absl::StrJoin(plan.classes, ", "), "]"));
    }
  }
  if (batch.has_client_ids()) {
    const v1::Tensor& c = batch.client_ids();
    if (c.dtype() != v1::DATA_TYPE_INT64 || c.shape_size() != 1 || c.shape(0) != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "batch.client_ids must be int64 [", n, "] (one per example); got dtype ",
          DataTypeText(c.dtype()), " shape [", absl::StrJoin(c.shape(), ", "), "]"));
    }
    ADAPTD_ASSIGN_OR_RETURN(b.client_ids, TensorFromProto(c, "batch.client_ids"));
    // Answers say -1 for an example streamed without one.
    if (n > 0 && b.client_ids.min().item<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "batch.client_ids must be >= 0 (answers use -1 for none); got ",
          b.client_ids.min().item<int64_t>()));
    }
  } else {
    b.client_ids = at::full({n}, -1, at::kLong);
  }
  if (HeldBytes(b) > kMaxBatchBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a batch may hold at most ", kMaxBatchBytes >> 20, " MiB (inputs as float32); this one "
        "holds ", HeldBytes(b) >> 20, " MiB: send it as several batches"));
  }
  return b;
}

absl::Status OutcomeUnknown(absl::Status status) {
  status.SetPayload("adaptd/outcome-unknown", absl::Cord());
  return status;
}

bool IsOutcomeUnknown(const absl::Status& status) {
  return status.GetPayload("adaptd/outcome-unknown").has_value();
}

absl::StatusOr<CommitResult> ModelEntry::Commit(StreamPlan& plan,
                                                std::vector<ExampleBatchData> batches,
                                                bool adapt) {
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  const int64_t task_id = plan.header.task_id();
  CommitResult result;
  int64_t total = 0;
  for (const auto& b : batches) total += b.size();
  if (total == 0 && (!adapt || plan.new_task)) {
    std::lock_guard<std::mutex> lock(mu_);
    result.version = current_->version();
    return result;  // nothing to store: an empty stream creates no task
  }
  int64_t first_id;
  ExampleLog* log;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      return absl::UnavailableError(absl::StrCat(
          "model ", name_, " is being deleted or the server is shutting down"));
    }
    first_id = next_example_id_;
    auto it = tasks_.find(task_id);
    log = it == tasks_.end() ? nullptr : it->second.log.get();
    if (it == tasks_.end()) {
      const int64_t next_task = tasks_.empty() ? 0 : tasks_.rbegin()->first + 1;
      if (task_id != next_task) {
        return absl::FailedPreconditionError(absl::StrCat(
            "task ", task_id, " is no longer the next task (another stream started task ",
            next_task - 1, ")"));
      }
    } else if (plan.new_task && !SameClasses(it->second.classes, plan.classes)) {
      // Two first streams of one task raced; the batches were checked against other classes.
      return absl::AbortedError(absl::StrCat(
          "another stream started task ", task_id, " first, with classes [",
          absl::StrJoin(it->second.classes, ", "), "]"));
    }
  }
  // A new task gets a fresh log (a file left by a deleted model of the same name is emptied);
  // its catalog row follows the durable append, so a failed stream leaves no task behind.
  std::unique_ptr<ExampleLog> new_log;
  if (log == nullptr) {
    ADAPTD_ASSIGN_OR_RETURN(new_log, ExampleLog::Create(LogPath(task_id)));
    log = new_log.get();
  }
  int64_t id = first_id;
  for (auto& b : batches) {
    b.ids = at::arange(id, id + b.size(), at::kLong);
    id += b.size();
  }
  // A write whose outcome is unknown: the stream's ids stay taken (if it did reach the disk, a
  // restart brings the stream back with them), and the client hears that it may be stored.
  auto outcome_unknown = [&](absl::StatusCode code, absl::string_view why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      next_example_id_ = id;
    }
    return OutcomeUnknown(absl::Status(
        code, absl::StrCat(why, "; the stream may or may not be stored: restart the server, "
                           "then check the task's counts (GetModel) before sending it again")));
  };
  if (total > 0) {
    const bool was_broken = log->broken();
    const absl::Status appended = log->AppendCommitted(batches);
    if (!appended.ok() && !was_broken && log->broken()) {
      // The failed append could not be cut back: its commit record may be on disk.
      return outcome_unknown(absl::StatusCode::kUnavailable, appended.message());
    }
    ADAPTD_RETURN_IF_ERROR(appended);
  }
  // The catalog records where the acknowledged streams end, so that a start can tell a log cut
  // after a commit record from a crash's torn tail. A new task's row carries it; if the row
  // cannot be written, the stream fails and the next stream of the task empties the log again.
  // For an existing task the record is a check, not the data: if it cannot be written the
  // stream is still acknowledged, and the next stream or start records the end.
  if (new_log) {
    const absl::Status row =
        options_.catalog->UpsertTask(name_, {task_id, plan.classes, log->size_bytes()});
    // A failure may come after SQLite's commit reached its write-ahead log (an fsync that
    // failed, even for want of space), and then a restart finds the row: unknown, whatever
    // the code (which still tells a full disk).
    if (!row.ok()) return outcome_unknown(row.code(), row.message());
  } else if (total > 0) {
    const absl::Status recorded =
        options_.catalog->SetTaskLogBytes(name_, task_id, log->size_bytes());
    if (!recorded.ok()) {
      std::fprintf(stderr, "adaptd: model %s task %lld: the log's end is not recorded: %s\n",
                   name_.c_str(), static_cast<long long>(task_id), recorded.ToString().c_str());
    }
  }
  // Durable and visible after a restart: acknowledged from here on.
  std::lock_guard<std::mutex> lock(mu_);
  next_example_id_ = id;
  TaskExamples& te = tasks_[task_id];
  if (new_log) {
    te.log = std::move(new_log);
    te.classes = plan.classes;
    plan.new_task = false;
  }
  const bool was_waiting = te.Waiting();
  for (auto& b : batches) {
    if (b.size() == 0) continue;
    auto& list = b.split == ExampleSplit::kTrain ? te.train : te.eval;
    (b.split == ExampleSplit::kTrain ? te.train_count : te.eval_count) += b.size();
    list.push_back(std::move(b));
  }
  if (!was_waiting && te.Waiting()) {
    te.waiting_since = std::chrono::steady_clock::now();
    if (config_.adapt_after_seconds() > 0) cv_.notify_all();  // the actor's next deadline
  }
  if (total > 0) result.id_ranges.emplace_back(first_id, total);
  if (options_.metrics) options_.metrics->AddExamples(name_, total);
  if (adapt && plan.split == ExampleSplit::kTrain) {
    auto job = QueueJobLocked(task_id);
    if (!job.ok()) {
      std::fprintf(stderr, "adaptd: model %s task %lld: could not queue a job (or add the "
                   "examples to the task's queued one): %s\n",
                   name_.c_str(), static_cast<long long>(task_id), job.status().ToString().c_str());
      // The stream (services.cc) tells the client: its examples are stored, or it stored none.
      result.no_job = job.status();
    } else if (*job) {
      result.job_ids.push_back((*job)->id());
    }
  }
  result.version = current_->version();
  return result;
}

int64_t ModelEntry::UnlearntLocked(const Job& job) const {
  // None, if a job before it learnt past its end (examples of a stream kept open, which join
  // no queued job, came after it).
  return std::max<int64_t>(0, job.end() - std::max(job.begin(), tasks_.at(job.task_id()).learned));
}

std::shared_ptr<Job> ModelEntry::QueuedJobLocked(int64_t task_id, bool joinable) const {
  for (const auto& job : queue_) {
    if (job->task_id() == task_id && !(joinable && job->resumed_range())) return job;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<Job>> ModelEntry::QueueJobLocked(int64_t task_id) {
  TaskExamples& te = tasks_.at(task_id);
  if (te.train_count == te.learned) return std::shared_ptr<Job>();
  // No stream joins the running job (it took its examples as it started, or takes them as it
  // starts after its wait for a training slot) or one that a crash or a shutdown interrupted
  // (it learns exactly the range it had started on). A stream that brings nothing past such a
  // job's range (an empty one that closes the task) is answered with that job: a new one would
  // find nothing to learn.
  auto answers_for_every_example = [&](const std::shared_ptr<Job>& job) {
    return job != nullptr && job->task_id() == task_id && !job->terminal() &&
           !job->cancel_requested() && job->end() >= te.train_count;
  };
  if (answers_for_every_example(running_)) return running_;
  for (const auto& job : queue_) {
    if (job->resumed_range() && answers_for_every_example(job)) return job;
  }
  // A job of the task that has not started takes every example pending when it starts: a
  // second one would find nothing left to learn. Not a resumed one (above).
  if (std::shared_ptr<Job> queued = QueuedJobLocked(task_id, /*joinable=*/true)) {
    // Nothing new to join (an online stream's final commit of no examples): no write.
    if (queued->end() >= te.train_count) return queued;
    // On record first, as a new job is: a restart (or a cancel after a crash) must find the
    // examples the job answers for. Refused, the job still answers for them: it takes every
    // pending example when it starts, after a restart too (only a started job keeps its
    // range). What the record would add is the examples' count in the job's status, and their
    // being taken if the job is cancelled: without it they stay pending for the next job.
    const absl::Status grown = options_.catalog->GrowJob(queued->id(), te.train_count);
    if (!grown.ok()) {
      std::fprintf(stderr, "adaptd: model %s task %lld: job %s takes the new examples when it "
                   "starts, but its record could not be extended: %s\n", name_.c_str(),
                   static_cast<long long>(task_id), queued->id().c_str(),
                   grown.ToString().c_str());
      return queued;
    }
    queued->Join(te.train_count);
    te.taken = std::max(te.taken, te.train_count);
    const int64_t unlearnt = UnlearntLocked(*queued);
    queued->Update([&](v1::JobStatus& s) { s.set_examples(unlearnt); });
    return queued;
  }
  JobRow row;
  row.id = NewJobId();
  row.model = name_;
  row.task_id = task_id;
  // The examples of a started job of the task (its range is fixed: the running one, or one a
  // crash or a shutdown interrupted) are that job's; this one answers for those after them.
  // Should that job fail, this one takes its examples too as it starts, and says so then.
  // (A job the actor holds that has not started takes every pending example as it starts, so
  // the range is not fixed, and one asked to cancel will not learn its examples.)
  row.begin = te.learned;
  if (running_ != nullptr && running_->task_id() == task_id && !running_->cancel_requested() &&
      (running_->resumed_range() || running_->Status().state() == v1::JOB_STATE_RUNNING)) {
    row.begin = std::max(row.begin, running_->end());
  }
  for (const auto& job : queue_) {
    if (job->task_id() == task_id && job->resumed_range()) row.begin = std::max(row.begin, job->end());
  }
  row.end = te.train_count;
  row.state = v1::JOB_STATE_QUEUED;
  row.message = "queued";
  row.created_ms = NowMs();
  ADAPTD_RETURN_IF_ERROR(options_.catalog->InsertJob(row));
  te.taken = std::max(te.taken, row.end);
  auto job = std::make_shared<Job>(row);
  jobs_.push_back(job);
  PruneJobsLocked();
  queue_.push_back(job);
  if (options_.on_job) options_.on_job(job);
  ReportQueueDepthLocked();
  cv_.notify_all();
  return job;
}

std::chrono::steady_clock::time_point ModelEntry::QueueOverdueJobsLocked() {
  using Clock = std::chrono::steady_clock;
  Clock::time_point next = Clock::time_point::max();
  if (config_.adapt_after_seconds() <= 0) return next;
  const auto wait = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.adapt_after_seconds()));
  const Clock::time_point now = Clock::now();
  for (auto& [task_id, te] : tasks_) {
    if (!te.Waiting()) continue;
    // A queued job takes every example pending when it starts, these included.
    if (QueuedJobLocked(task_id, /*joinable=*/true) != nullptr) continue;
    const Clock::time_point due = te.waiting_since + wait;
    if (due > now) {
      next = std::min(next, due);
      continue;
    }
    auto job = QueueJobLocked(task_id);
    if (!job.ok()) {
      std::fprintf(stderr, "adaptd: model %s task %lld: could not queue a timed job: %s\n",
                   name_.c_str(), static_cast<long long>(task_id),
                   job.status().ToString().c_str());
      // Try again after another wait (at least a second), not in a tight loop.
      const Clock::duration retry = std::max<Clock::duration>(wait, std::chrono::seconds(1));
      te.waiting_since = now + retry - wait;
      next = std::min(next, now + retry);
    }
  }
  return next;
}

// ---------------------------------------------------------------------------------------------
// The actor

bool ModelEntry::RunningLocked() const {
  // The actor clears running_ only after the job has reported its end to watchers: a job that
  // has ended no longer counts, or a client acting on that report would race the actor.
  return running_ && !running_->terminal();
}

void ModelEntry::Start() { actor_ = std::thread([this] { RunActor(); }); }

void ModelEntry::InterruptJobs() {
  {
    std::lock_guard<std::mutex> lock(mu_);  // the actor checks the flag under it, then waits
    interrupt_jobs_ = true;
  }
  cv_.notify_all();
}

void ModelEntry::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !actor_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (actor_.joinable()) actor_.join();
  // A stream that passed its stopping_ check before it was set finishes its append now; any
  // later one sees stopping_ and stores nothing.
  std::lock_guard<std::mutex> fence(commit_mu_);
}

void ModelEntry::RunActor() {
  // Training runs below the query threads' priority: a query never waits for training, and on
  // a machine with few cores it should not wait for a time slice either.
  if (options_.training_nice > 0) {
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)),
                        options_.training_nice);
  }
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (true) {
        if (stopping_ || interrupt_jobs_) return;  // before the timer: nothing new queued
        // Overdue examples join the queue's end between jobs, even while the queue stays busy
        // (not during a job: the actor is training then).
        const auto due = QueueOverdueJobsLocked();
        if (!queue_.empty()) break;
        if (due == std::chrono::steady_clock::time_point::max()) {
          cv_.wait(lock);
        } else {
          cv_.wait_until(lock, due);
        }
      }
      job = queue_.front();
      queue_.pop_front();
      running_ = job;
      ReportQueueDepthLocked();
    }
    try {
      RunJob(job);
    } catch (const std::exception& e) {
      // A job must never take the server down (and a crash loop would replay it forever).
      EndJob(job, v1::JOB_STATE_FAILED, absl::StrCat("internal error: ", e.what()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    running_.reset();
    PruneJobsLocked();
  }
}

void ModelEntry::EndJob(const std::shared_ptr<Job>& job, v1::JobState state,
                        const std::string& message) {
  std::string shown = message;
  // With the examples the job answers for: a job that ends before it starts (or before its
  // start is recorded) took those that joined it in the queue, and a restart must count them
  // as taken, as this server does, not as waiting for the adapt_after_seconds timer.
  const absl::Status recorded = options_.catalog->UpdateJob(
      job->id(), state, message, -1, ProgressOf(job->Status()), job->end());
  if (!recorded.ok()) {
    // The catalog still holds the job as queued or running: a restart runs it again from the
    // start, unless its cancel is on record (Cancel records it before it asks). Say so where
    // the user looks, rather than let the job come back unannounced.
    std::fprintf(stderr, "adaptd: the end of job %s was not recorded: %s\n", job->id().c_str(),
                 recorded.ToString().c_str());
    // A damaged row (DATA_LOSS) keeps the model offline at the next start instead, unless the
    // damage was to the row's model name alone, which that start restores.
    absl::StrAppend(&shown, " (not recorded in the catalog: ", recorded.message(),
                    recorded.code() == absl::StatusCode::kDataLoss
                        ? "; the next start keeps the model offline until the catalog is restored, "
                          "or restores the row if only its model's name was damaged)"
                    : state == v1::JOB_STATE_CANCELLED
                        ? "; its cancel is, so a restart ends it as cancelled)"
                        : "; a restart runs the job again)");
  }
  job->Update([&](v1::JobStatus& s) {
    s.set_state(state);
    s.set_message(shown);
    s.set_eta_seconds(0);
  });
}

void ModelEntry::RunJob(const std::shared_ptr<Job>& job) {
  auto stopping = [this] { return Stopping() || interrupt_jobs_.load(); };
  auto finish = [&](v1::JobState state, const std::string& message) { EndJob(job, state, message); };
  // A job that shutdown stops before it publishes goes back to the queue's front, as the catalog
  // has it: a Rollback in the shutdown's grace period sees it (and refuses, as with any queued
  // job), a CancelJob finds and cancels it, and the next start runs it. `shown` is its status
  // there. A cancel asked since the caller looked keeps it out (false): Cancel asks, then looks
  // in the queue again, both here under mu_, so one of the two ends the job.
  auto requeue = [&](const std::function<void(v1::JobStatus&)>& shown) {
    std::lock_guard<std::mutex> lock(mu_);
    if (job->cancel_requested()) return false;
    job->Update(shown);
    queue_.push_front(job);
    ReportQueueDepthLocked();
    return true;
  };
  // Cancelled before it started, as a cancel of a queued job ends it.
  auto cancelled_unstarted = [&] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      const int64_t unlearnt = UnlearntLocked(*job);
      job->Update([&](v1::JobStatus& s) { s.set_examples(unlearnt); });
    }
    finish(v1::JOB_STATE_CANCELLED, kCancelledWhileQueued);
  };
  if (job->cancel_requested()) return cancelled_unstarted();
  // Waiting for a training slot (other models hold them all) ends at a cancel too.
  auto waiting = [&] {
    job->Update([&](v1::JobStatus& s) {
      // A cancel asked meanwhile keeps its message (it is asked before its message is set).
      if (job->cancel_requested()) return;
      s.set_message("waiting for a training slot (other models' jobs hold all --max_concurrent_jobs)");
    });
  };
  if (!options_.slots->Acquire([&] { return stopping() || job->cancel_requested(); }, waiting)) {
    // Shutting down: it stays queued, unless it was cancelled.
    if (!requeue([](v1::JobStatus& s) { s.set_message("queued"); })) cancelled_unstarted();
    return;
  }
  struct SlotGuard {
    JobSlots* slots;
    ~SlotGuard() { slots->Release(); }
  } slot{options_.slots};
  // Acquire returns once a slot is free, even if a cancel came in the same wait: that cancel was
  // answered that the job ends before it trains, so it ends as unstarted. From this check until
  // the job shows RUNNING, Cancel waits (end_mu_), so a cancel either comes before it (the job
  // ends unstarted, as its answer said) or finds the job running (it stops at its next step).
  std::unique_lock<std::mutex> start_lock(end_mu_);
  if (job->cancel_requested()) return cancelled_unstarted();

  // The data: the task's training examples not yet learnt, and the config, fixed now.
  TaskData task;
  AdaptConfig adapt;
  v1::LearningConfig config;
  bool resumed = false;
  task.task_id = job->task_id();
  int64_t begin, end;
  std::shared_ptr<const ModelVersion> base;
  std::vector<ExampleBatchData> train_batches;
  std::vector<EvalSet> evals;
  {
    // Only tensor handles (views of the rows to learn) are taken under the lock (batches are
    // never modified); the concatenation happens outside it, so queries are not held up, and
    // it copies only the new rows, not the whole task (online mode learns a growing task's tail).
    std::lock_guard<std::mutex> lock(mu_);
    TaskExamples& te = tasks_.at(job->task_id());
    begin = te.learned;
    end = te.train_count;
    // A job a crash interrupted while running learns exactly the range it had started on, with
    // the settings it had started with, so that its result equals the uninterrupted one even if
    // more examples arrived since, or UpdateConfig came while it ran.
    if (job->resumed_range() && job->begin() == begin && job->end() > begin &&
        job->end() <= end) {
      end = job->end();
      resumed = true;
    }
    // Everything up to `end` is this job's now, including examples that came after it was
    // queued: the adapt_after_seconds timer leaves them to it (and does not retry them).
    te.taken = std::max(te.taken, end);
    job->Join(end);
    train_batches = SliceBatches(te.train, begin, end);
    task.learnt_before = begin;
    task.label_mask = LabelMaskLocked(job->task_id());
    evals = EvalSetsLocked();
    base = current_;
    adapt = adapt_;
    config = config_;
  }
  if (resumed && !job->started_config().empty()) {
    // Written by this server when the job started: a failure to read it back is damage.
    v1::LearningConfig started;
    auto started_adapt = started.ParseFromString(job->started_config())
                             ? ConfigFromProto(started)
                             : absl::DataLossError("the catalog's record of it does not parse");
    if (!started_adapt.ok()) {
      return finish(v1::JOB_STATE_FAILED,
                    absl::StrCat("the settings this job started with: ",
                                 started_adapt.status().ToString()));
    }
    adapt = *std::move(started_adapt);
    adapt.device = options_.device;
    config = std::move(started);
  }
  task.train = Concat(train_batches, &task.ids, nullptr);
  if (end == begin) {
    job->Update([](v1::JobStatus& s) { s.set_examples(0); });
    return finish(v1::JOB_STATE_SUCCEEDED,
                  "nothing new to learn: an earlier job learnt these examples");
  }
  // A restart resumes a started job on exactly these examples with these settings; a job whose
  // start is not on record must not train.
  const absl::Status recorded = options_.catalog->StartJob(
      job->id(), begin, end, config.SerializeAsString(), v1::JOB_STATE_RUNNING, "running");
  if (!recorded.ok()) {
    return finish(v1::JOB_STATE_FAILED,
                  absl::StrCat("cannot record the job's start in the catalog: ",
                               recorded.ToString()));
  }
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  job->Update([&](v1::JobStatus& s) {
    s.set_state(v1::JOB_STATE_RUNNING);
    s.set_message(job->cancel_requested()
                      ? std::string(kCancelRequested)
                      : absl::StrCat("learning ", end - begin, " examples of task ",
                                     task.task_id, " from version ", base->version()));
    s.set_examples(end - begin);
  });
  start_lock.unlock();
  auto progress = [&](const StepReport& r) {
    const double t = elapsed();
    job->Update(
        [&](v1::JobStatus& s) {
          s.set_step(r.step);
          s.set_total_steps(r.total_steps);
          s.set_loss(r.loss);
          s.set_ivon_step_growth(r.step_growth);
          s.set_ivon_peak_step(r.peak_step);
          s.set_elapsed_seconds(t);
          s.set_eta_seconds(r.step > 0 ? t / r.step * (r.total_steps - r.step) : 0);
        },
        /*urgent=*/false);
  };
  auto should_stop = [&] { return job->cancel_requested() || stopping(); };
  // Shutdown: the job stays queued in the catalog and resumes on the next start.
  auto interrupted = [&] {
    (void)options_.catalog->UpdateJob(job->id(), v1::JOB_STATE_QUEUED, kInterruptedByShutdown, -1,
                                      "");
    // Its range is fixed from its start on: a stream that closes in the grace period gets a job
    // of its own, and the restart resumes this one on exactly what it had started on.
    job->set_resumed_range();
    const bool queued = requeue([&](v1::JobStatus& s) {
      s.set_state(v1::JOB_STATE_QUEUED);
      s.set_message(kInterruptedByShutdown);
      // It runs again from the start: this run's progress no longer describes it.
      CopyRunProgress(v1::JobStatus(), &s);
      s.set_eta_seconds(0);
    });
    if (!queued) finish(v1::JOB_STATE_CANCELLED, kCancelledWhileRunning);
  };
  auto result = Adapt(base->state(), task, adapt, progress, should_stop);
  if (!result.ok()) {
    if (stopping() && !job->cancel_requested()) return interrupted();
    if (job->cancel_requested()) return finish(v1::JOB_STATE_CANCELLED, kCancelledWhileRunning);
    return finish(v1::JOB_STATE_FAILED, result.status().ToString());
  }

  // Evaluate the new state on every task's evaluation examples.
  v1::VersionInfo info;
  info.set_task_id(task.task_id);
  info.set_rolled_back_from(-1);
  info.set_created_unix_ms(NowMs());
  info.set_steps(result->stats.steps);
  info.set_final_loss(result->stats.final_loss);
  info.set_ivon_peak_step(result->stats.peak_step);
  info.set_job_id(job->id());
  *info.mutable_config() = std::move(config);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [tid, te] : tasks_) {
      (*info.mutable_learnt()->mutable_per_task())[tid] =
          tid == task.task_id ? std::max(te.learned, end) : te.learned;
    }
  }
  auto scored = Score(result->state, evals);
  if (!scored.ok()) return finish(v1::JOB_STATE_FAILED, scored.status().ToString());
  for (v1::TaskAccuracy& a : *scored) *info.add_eval() = std::move(a);
  // The job's time, one figure for its version, its status, the catalog and the metrics.
  const double took = elapsed();
  info.set_adapt_seconds(took);
  // From here to the end the job's end is settled against CancelJob.
  std::lock_guard<std::mutex> end_lock(end_mu_);
  if (job->cancel_requested()) return finish(v1::JOB_STATE_CANCELLED, kCancelledWhileRunning);
  absl::Status published;
  {
    std::lock_guard<std::mutex> commit_lock(commit_mu_);
    if (Current() != base) {
      // A rollback published a version while this job trained from the one before it. The
      // examples were not the problem: the adapt_after_seconds timer may give them a new job.
      {
        std::lock_guard<std::mutex> lock(mu_);
        TaskExamples& te = tasks_.at(job->task_id());
        te.taken = te.learned;
        te.waiting_since = std::chrono::steady_clock::now();
      }
      return finish(v1::JOB_STATE_FAILED,
                    absl::StrCat("version ", Current()->version(), " was published while this job "
                                 "trained from version ", base->version(), " (a rollback); its "
                                 "examples stay pending for the task's next stream, or the "
                                 "adapt_after_seconds timer"));
    }
    // Nothing publishes once a shutdown began, even a job that had just finished training.
    if (stopping()) return interrupted();
    v1::JobStatus done = job->Status();
    done.set_elapsed_seconds(took);
    published = Publish(std::move(info), std::move(result->state), job->id(), ProgressOf(done));
  }
  if (!published.ok()) return finish(v1::JOB_STATE_FAILED, published.ToString());
  int64_t version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    version = current_->version();  // Publish set the task's learnt count with it
  }
  if (options_.metrics) options_.metrics->ObserveAdaptation(name_, took);
  job->Update([&](v1::JobStatus& s) {
    s.set_state(v1::JOB_STATE_SUCCEEDED);
    s.set_version(version);
    s.set_elapsed_seconds(took);
    s.set_eta_seconds(0);
    s.set_message(absl::StrCat("published version ", version));
  });
}

at::Tensor ModelEntry::LabelMaskLocked(int64_t task_id) const {
  if (config_.head_mode() != v1::HEAD_MODE_MULTI) return at::Tensor();
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || it->second.classes.empty()) return at::Tensor();
  auto mask = MakeLabelMask(it->second.classes, spec_.num_classes);
  return mask.ok() ? *mask : at::Tensor();
}

absl::Status ModelEntry::Publish(v1::VersionInfo info, ContinualState state,
                                 const std::string& job_id, const std::string& job_progress) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    info.set_version(versions_.empty() ? 0 : versions_.back().first.version() + 1);
  }
  // Its checkpoint is written below, whatever the record it copies said (an imported snapshot
  // could carry the flag; Version() never hands out a deleted version to roll back to).
  info.clear_checkpoint_deleted();
  info = Diagnose(std::move(info), state);
  TensorMap map;
  state.AppendTo(map);
  map["version_info"] = BytesTensor(info.SerializeAsString());
  const std::string bytes = SerializeTensors(map);
  ADAPTD_RETURN_IF_ERROR(ServerFault(WriteFileAtomically(CheckpointPath(info.version()), bytes)));
  const uint32_t crc = Crc32c(bytes);
  ADAPTD_RETURN_IF_ERROR(options_.catalog->Publish(
      name_, {info.version(), info.SerializeAsString(), crc}, job_id, v1::JOB_STATE_SUCCEEDED,
      absl::StrCat("published version ", info.version()), job_progress));
  ADAPTD_ASSIGN_OR_RETURN(auto version, ModelVersion::Create(info, std::move(state)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    versions_.emplace_back(info, crc);
    current_ = std::move(version);
    // With the version, in one step: what it has learnt (a rollback's target's count, a job's
    // new one).
    ApplyLearntLocked(info);
    if (options_.metrics) {
      options_.metrics->SetModelVersion(name_, info.version());
      options_.metrics->SetMemorySize(name_, info.memory_size());
    }
  }
  DeleteOldCheckpoints();
  return absl::OkStatus();
}

void ModelEntry::DeleteOldCheckpoints() {
  if (options_.keep_versions <= 0) return;
  // Positions in versions_ (stable: only publishing appends to it, and the caller excludes that).
  std::vector<size_t> older;
  std::vector<VersionRow> rows;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t keep_from = static_cast<int64_t>(versions_.size()) - options_.keep_versions;
    for (int64_t i = 0; i < keep_from; ++i) {
      const auto& [info, crc] = versions_[i];
      if (info.checkpoint_deleted()) continue;
      v1::VersionInfo marked = info;
      marked.set_checkpoint_deleted(true);
      older.push_back(static_cast<size_t>(i));
      rows.push_back({marked.version(), marked.SerializeAsString(), crc});
    }
  }
  if (rows.empty()) return;
  const absl::Status marked = options_.catalog->UpdateVersionInfos(name_, rows);
  if (!marked.ok()) {
    std::fprintf(stderr, "adaptd: model %s: could not mark old versions for deletion: %s\n",
                 name_.c_str(), marked.ToString().c_str());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i : older) {
      versions_[i].first.set_checkpoint_deleted(true);
      cache_.erase(versions_[i].first.version());
    }
  }
  // Queries already reading one of these versions hold its state in memory and finish.
  for (const VersionRow& r : rows) ::unlink(CheckpointPath(r.version).c_str());
}

absl::StatusOr<v1::JobStatus> ModelEntry::Cancel(const std::shared_ptr<Job>& job) {
  std::lock_guard<std::mutex> end_lock(end_mu_);
  if (job->terminal()) return job->Status();
  // On record before it is acknowledged: a crash before the job's end is written must not
  // let the restart run (and publish) a job its user cancelled. A cancel the catalog cannot
  // record is refused, and the job goes on as if it had not been asked.
  auto refused = [&](const absl::Status& s) {
    return absl::UnavailableError(absl::StrCat(
        "the cancel of job ", job->id(), " could not be recorded in the catalog (", s.message(),
        "); the job was not cancelled and goes on; try again"));
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it != queue_.end()) {
      // A queued job ends at once: its end and the request in one statement, with the range it
      // would have learnt: the examples that joined it while it waited too, so that a restart
      // counts them as taken, not as waiting for the adapt_after_seconds timer.
      const int64_t end = job->end();
      v1::JobStatus ended = job->Status();
      ended.set_examples(UnlearntLocked(*job));
      const absl::Status recorded = options_.catalog->RecordCancelAndEnd(
          job->id(), v1::JOB_STATE_CANCELLED, kCancelledWhileQueued, ProgressOf(ended), end);
      if (!recorded.ok()) return refused(recorded);
      job->RequestCancel();
      queue_.erase(it);
      job->Update([&](v1::JobStatus& s) {
        s.set_state(v1::JOB_STATE_CANCELLED);
        s.set_message(kCancelledWhileQueued);
        s.set_examples(ended.examples());
        s.set_eta_seconds(0);
      });
      PruneJobsLocked();
      ReportQueueDepthLocked();
      return job->Status();
    }
  }
  // Taken by the actor: it stops at its next step, or its next check before training.
  const absl::Status recorded = options_.catalog->RecordCancel(job->id());
  if (!recorded.ok()) return refused(recorded);
  job->RequestCancel();
  // Unless a shutdown has put it back in the queue since the look above (the actor does so
  // only while it sees no request, under mu_): then nothing would end it before the restart,
  // and it ends here, as a cancel of a queued job ends it.
  bool requeued = false;
  int64_t unlearnt = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(queue_.begin(), queue_.end(), job);
    if (it != queue_.end()) {
      requeued = true;
      unlearnt = UnlearntLocked(*job);
      queue_.erase(it);
      ReportQueueDepthLocked();
    }
  }
  if (requeued) {
    job->Update([&](v1::JobStatus& s) { s.set_examples(unlearnt); });
    EndJob(job, v1::JOB_STATE_CANCELLED, kCancelledWhileQueued);
    return job->Status();
  }
  // A job the actor holds before it trains (QUEUED, waiting for a slot) ends within the slot
  // wait's next check; a running one at its next step. Either way the answer says it is coming.
  job->Update([](v1::JobStatus& s) {
    if (s.state() == v1::JOB_STATE_RUNNING) s.set_message(kCancelRequested);
    if (s.state() == v1::JOB_STATE_QUEUED) s.set_message(kCancelRequestedUnstarted);
  });
  return job->Status();
}

// ---------------------------------------------------------------------------------------------
// Rollback, export, import, destroy

bool ModelEntry::Stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

absl::StatusOr<v1::ModelInfo> ModelEntry::Rollback(int64_t version) {
  auto busy = [&] {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", name_, " has adaptation jobs queued or running; wait for them or cancel them "
        "before rolling back"));
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the model is being deleted");
    if (!queue_.empty() || RunningLocked()) return busy();
  }
  ADAPTD_ASSIGN_OR_RETURN(auto target, Version(version));
  v1::VersionInfo info = target->info();
  info.set_task_id(-1);
  info.set_rolled_back_from(target->version());
  info.set_created_unix_ms(NowMs());
  info.set_job_id("");
  info.set_adapt_seconds(0);
  {
    std::lock_guard<std::mutex> commit_lock(commit_mu_);
    // Again under commit_mu_ (Stop's fence): a model deleted since the check above may have
    // lost its catalog rows to a new model of its name.
    if (Stopping()) return absl::UnavailableError("the model is being deleted");
    {
      // Again under commit_mu_, which a job publishes under: a job queued since the check
      // above must not be voided by this rollback (nor its result replaced) unasked.
      std::lock_guard<std::mutex> lock(mu_);
      if (!queue_.empty() || RunningLocked()) return busy();
    }
    // Publish also makes what the target had not learnt pending again.
    ADAPTD_RETURN_IF_ERROR(Publish(std::move(info), target->state(), ""));
  }
  return Info();
}

absl::StatusOr<std::string> ModelEntry::Export() const {
  TensorMap map;
  std::shared_ptr<const ModelVersion> version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    version = current_;
    map["snapshot.spec"] = BytesTensor(SpecToProto(spec_).SerializeAsString());
    map["snapshot.config"] = BytesTensor(config_.SerializeAsString());
    int64_t i = 0;
    for (const auto& [tid, t] : tasks_) {
      map[absl::StrCat("task.", tid, ".classes")] =
          at::tensor(c10::ArrayRef<int64_t>(t.classes), at::kLong).reshape({-1});
      map[absl::StrCat("task.", tid, ".learned")] = ScalarTensor(t.learned);
      // Held back from the timer by a job that ended; a job still to come would have learnt
      // its examples, so the copy's timer may.
      const bool job_to_come =
          (running_ && !running_->terminal() && running_->task_id() == tid) ||
          QueuedJobLocked(tid) != nullptr;
      map[absl::StrCat("task.", tid, ".taken")] =
          ScalarTensor(job_to_come ? t.learned : std::max(t.learned, t.taken));
      for (const auto* list : {&t.train, &t.eval}) {
        for (const auto& b : *list) {
          const std::string p = absl::StrCat("batch.", i++, ".");
          map[p + "task"] = ScalarTensor(tid);
          map[p + "split"] = ScalarTensor(static_cast<int64_t>(b.split));
          map[p + "x"] = b.x;
          map[p + "y"] = b.y;
          map[p + "ids"] = b.ids;
          map[p + "client_ids"] = b.client_ids;
        }
      }
    }
  }
  map["snapshot.version_info"] = BytesTensor(version->info().SerializeAsString());
  version->state().AppendTo(map);
  return SerializeTensors(map);
}

absl::StatusOr<ModelEntry::ImportBlueprint> ModelEntry::PlanImport(const std::string& snapshot) {
  auto parsed = ParseTensors(snapshot);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the snapshot is not an adaptd export: ", parsed.status().message()));
  }
  // Everything is validated before anything is written. The snapshot is the client's input:
  // what does not parse or fit is INVALID_ARGUMENT (the shared readers call it DATA_LOSS, as
  // they would for a checkpoint on disk).
  ImportBlueprint plan;
  ModelSpec& spec = plan.model.spec;
  v1::LearningConfig& normalized = plan.model.config;
  AdaptConfig& adapt = plan.model.adapt;
  ContinualState& state = plan.model.state;
  v1::VersionInfo& info = plan.info;
  std::map<int64_t, TaskExamples>& tasks = plan.tasks;
  const absl::Status valid = [&]() -> absl::Status {
    std::vector<at::Tensor> all_ids;
    const TensorMap& map = *parsed;
    ADAPTD_ASSIGN_OR_RETURN(auto spec_proto, ProtoFromMap<v1::ModelSpec>(map, "snapshot.spec"));
    ADAPTD_ASSIGN_OR_RETURN(auto config, ProtoFromMap<v1::LearningConfig>(map, "snapshot.config"));
    ADAPTD_ASSIGN_OR_RETURN(info, ProtoFromMap<v1::VersionInfo>(map, "snapshot.version_info"));
    ADAPTD_ASSIGN_OR_RETURN(spec, SpecFromProto(spec_proto));
    ADAPTD_ASSIGN_OR_RETURN(normalized, NormalizeConfig(config));
    ADAPTD_ASSIGN_OR_RETURN(adapt, ConfigFromProto(normalized));
    ADAPTD_ASSIGN_OR_RETURN(state, ContinualState::FromTensors(map, spec));
    const int64_t expected = InitialState(spec, 0)->mean.numel();
    if (state.mean.numel() != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the snapshot's weights do not fit its model spec: the spec has ", expected,
          " parameters; the snapshot holds ", state.mean.numel()));
    }
    // Tasks and their examples.
    for (int64_t i = 0;; ++i) {
      const std::string p = absl::StrCat("batch.", i, ".");
      if (!map.count(p + "y")) break;
      ADAPTD_ASSIGN_OR_RETURN(int64_t tid, GetInt(map, p + "task"));
      ADAPTD_ASSIGN_OR_RETURN(int64_t split, GetInt(map, p + "split"));
      if (tid < 0 || (split != 0 && split != 1)) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot ", p, ": task ", tid,
                                                       ", split ", split,
                                                       "; expected task >= 0, split 0 or 1"));
      }
      ExampleBatchData b;
      b.split = split == 1 ? ExampleSplit::kEval : ExampleSplit::kTrain;
      ADAPTD_ASSIGN_OR_RETURN(b.y, GetTensor(map, p + "y", at::kLong));
      if (b.y.dim() != 1 || (b.y.numel() > 0 && (b.y.min().item<int64_t>() < 0 ||
                                                 b.y.max().item<int64_t>() >= spec.num_classes))) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot ", p, "y is ", DescribeTensor(b.y),
                                                       "; expected 1-D labels in [0, ",
                                                       spec.num_classes, ")"));
      }
      ADAPTD_ASSIGN_OR_RETURN(b.x, GetTensor(map, p + "x", at::kFloat));
      ADAPTD_ASSIGN_OR_RETURN(b.ids, GetTensor(map, p + "ids", at::kLong, b.y.numel()));
      ADAPTD_ASSIGN_OR_RETURN(b.client_ids,
                              GetTensor(map, p + "client_ids", at::kLong, b.y.numel()));
      std::vector<int64_t> want = {b.y.numel()};
      want.insert(want.end(), spec.input_shape.begin(), spec.input_shape.end());
      if (b.x.sizes().vec() != want) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot ", p, "x is ",
                                                       DescribeTensor(b.x), "; expected ",
                                                       ShapeString(want)));
      }
      ADAPTD_RETURN_IF_ERROR(CheckFinite(b.x, absl::StrCat("snapshot ", p, "x")));
      if (b.ids.numel() > 0 && b.ids.min().item<int64_t>() < 0) {
        return absl::InvalidArgumentError(absl::StrCat("snapshot ", p, "ids: must be >= 0"));
      }
      if (HeldBytes(b) > kMaxBatchBytes) {  // as a stream's batch: one log record each
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot ", p, "x: a batch may hold at most ", kMaxBatchBytes >> 20, " MiB; this one holds ",
            HeldBytes(b) >> 20, " MiB"));
      }
      all_ids.push_back(b.ids);
      tasks[tid];
      auto& list = b.split == ExampleSplit::kTrain ? tasks[tid].train : tasks[tid].eval;
      list.push_back(std::move(b));
    }
    for (auto& [tid, t] : tasks) {
      const std::string key = absl::StrCat("task.", tid, ".classes");
      if (map.count(key)) {
        const at::Tensor c = map.at(key).to(at::kLong).contiguous();
        t.classes.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
      }
      auto learned = GetInt(map, absl::StrCat("task.", tid, ".learned"));
      t.learned = learned.ok() ? *learned : 0;
      auto taken = GetInt(map, absl::StrCat("task.", tid, ".taken"));  // absent in older snapshots
      t.taken = taken.ok() ? *taken : t.learned;
      int64_t train = 0;
      for (const auto& b : t.train) train += b.size();
      const bool classes_ok = std::all_of(t.classes.begin(), t.classes.end(), [&](int64_t c) {
        return c >= 0 && c < spec.num_classes;
      });
      if (t.learned < 0 || t.learned > train || t.taken < t.learned || t.taken > train ||
          !classes_ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot task ", tid, ": ", t.learned, " examples learnt, ", t.taken,
            " held back from the timer, ", train, " training examples (expected 0 <= learnt <= "
            "held back <= training examples); classes [", absl::StrJoin(t.classes, ", "),
            "] (must lie in [0, ", spec.num_classes, "))"));
      }
    }
    // Example ids name one example each (memory maps and influence answers are given by id).
    const at::Tensor ids = all_ids.empty() ? at::Tensor() : at::cat(all_ids);
    if (ids.defined() && ids.numel() > 1) {
      const at::Tensor sorted = std::get<0>(ids.sort());
      const at::Tensor repeats = sorted.narrow(0, 1, sorted.numel() - 1).eq(sorted.narrow(0, 0, sorted.numel() - 1));
      if (repeats.any().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot example ids must be unique; id ", sorted[repeats.nonzero()[0][0]].item<int64_t>(),
            " repeats"));
      }
    }
    // Tasks are numbered 0, 1, ... in arrival order; so are the evaluation results.
    if (!tasks.empty() && tasks.rbegin()->first != static_cast<int64_t>(tasks.size()) - 1) {
      std::vector<int64_t> numbers;
      for (const auto& [tid, t] : tasks) numbers.push_back(tid);
      return absl::InvalidArgumentError(absl::StrCat(
          "snapshot tasks must be numbered 0, 1, 2, ... without gaps; got [",
          absl::StrJoin(numbers, ", "), "]"));
    }
    for (const auto& a : info.eval()) {
      if (tasks.count(a.task_id()) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "snapshot version evaluates task ", a.task_id(), ", which the snapshot lacks"));
      }
    }
    return absl::OkStatus();
  }();
  if (valid.code() == absl::StatusCode::kDataLoss) {
    return absl::InvalidArgumentError(absl::StrCat("the snapshot: ", valid.message()));
  }
  ADAPTD_RETURN_IF_ERROR(valid);
  return plan;
}

absl::StatusOr<std::unique_ptr<ModelEntry>> ModelEntry::Import(const std::string& name,
                                                               ImportBlueprint plan,
                                                               const ModelEntryOptions& options) {
  auto entry = std::unique_ptr<ModelEntry>(new ModelEntry(
      name, std::move(plan.model.spec), std::move(plan.model.config), std::move(plan.model.adapt),
      options));
  ModelEntry& e = *entry;
  ADAPTD_RETURN_IF_ERROR(MakeDirs(options.dir + "/examples"));
  ADAPTD_RETURN_IF_ERROR(MakeDirs(options.dir + "/versions"));
  ADAPTD_RETURN_IF_ERROR(options.catalog->InsertModel(
      {name, SpecToProto(e.spec_).SerializeAsString(), e.config_.SerializeAsString(), NowMs()}));
  auto undo = [&](absl::Status s) {  // the registry removes the files, its marker last
    (void)options.catalog->DeleteModel(name);
    return s;
  };
  // Exceptions too must reach the undo: CallTorch turns them into statuses.
  absl::Status written = CallTorch([&]() -> absl::Status {
    return e.WriteImported(plan.tasks, name, plan.info, std::move(plan.model.state));
  });
  if (!written.ok()) return undo(written);
  entry->Start();
  return entry;
}

absl::Status ModelEntry::WriteImported(std::map<int64_t, TaskExamples>& tasks,
                                       const std::string& name, v1::VersionInfo info,
                                       ContinualState state) {
  ModelEntry& e = *this;
  const ModelEntryOptions& options = options_;
  for (auto& [tid, t] : tasks) {
    auto log = ExampleLog::Create(e.LogPath(tid));
    if (!log.ok()) return log.status();
    std::vector<ExampleBatchData> all = t.train;
    all.insert(all.end(), t.eval.begin(), t.eval.end());
    absl::Status s = (*log)->AppendCommitted(all);
    if (s.ok()) s = options.catalog->UpsertTask(name, {tid, t.classes, (*log)->size_bytes()});
    if (!s.ok()) return s;
    t.log = *std::move(log);
    for (const auto& b : all) {
      if (b.size() > 0) e.next_example_id_ = std::max(e.next_example_id_, b.ids.max().item<int64_t>() + 1);
      (b.split == ExampleSplit::kTrain ? t.train_count : t.eval_count) += b.size();
    }
    // Learnt examples stay learnt: a job marks them so that recovery agrees.
    if (t.learned > 0) {
      JobRow row{NewJobId(), name, tid, 0, t.learned, v1::JOB_STATE_SUCCEEDED,
                 "learnt before the export", 0, NowMs(), /*config=*/"", /*progress=*/""};
      s = options.catalog->InsertJob(row);
      if (!s.ok()) return s;
    }
    // Examples the exporting model's timer left alone (a failed or cancelled job's, or learnt
    // after a rollback's target) stay so: a job row holds them, as recovery reads it.
    if (t.taken > t.learned) {
      JobRow row{NewJobId(), name, tid, t.learned, t.taken, v1::JOB_STATE_FAILED,
                 "held back before the export (a failed or cancelled job, or a rollback); the "
                 "task's next job learns them",
                 -1, NowMs(), /*config=*/"", /*progress=*/""};
      s = options.catalog->InsertJob(row);
      if (!s.ok()) return s;
    }
  }
  e.tasks_ = std::move(tasks);
  info.mutable_learnt()->clear_per_task();
  for (const auto& [tid, t] : e.tasks_) (*info.mutable_learnt()->mutable_per_task())[tid] = t.learned;
  info.set_job_id("");
  info.set_rolled_back_from(-1);  // a version number of the exporting model means nothing here
  return e.Publish(info, std::move(state), "");
}

absl::Status ModelEntry::Destroy() {
  Stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Every job that has not ended (queued, or interrupted by the stop) ends here, so that
    // watchers see a final state.
    for (auto& job : jobs_) {
      if (job->terminal()) continue;
      job->Update([](v1::JobStatus& s) {
        s.set_state(v1::JOB_STATE_CANCELLED);
        s.set_message("the model was deleted");
        s.set_eta_seconds(0);
      });
    }
    queue_.clear();
    for (auto& [tid, t] : tasks_) t.log.reset();
  }
  return RemoveTree(options_.dir, kDeletingMarker);
}

}  // namespace adaptd

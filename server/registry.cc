#include "server/registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/fs_util.h"
#include "server/metrics.h"

namespace adaptd {
namespace {

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

void LogIfFailed(const absl::Status& s) {
  if (!s.ok()) std::fprintf(stderr, "adaptd: %s\n", s.ToString().c_str());
}

// Creates the empty file `marker` in `dir` durably. Made in one step (no temporary file that a
// crash could leave without the marker, holding a file that a start would keep offline).
absl::Status Mark(const std::string& dir, const char* marker) {
  const std::string path = dir + "/" + marker;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ServerErrno("create", path);
  ::close(fd);
  return ServerFault(FsyncParentDirectory(path));
}

// Best effort: without the marker, a crash mid-deletion leaves the files kept (offline), not lost.
void MarkDeleting(const std::string& dir) {
  LogIfFailed(Mark(dir, kDeletingMarker));
}

// Removes `marker` from `dir` durably, if it is there: what it announced did not happen, or is
// done.
absl::Status Unmark(const std::string& dir, const char* marker) {
  const std::string path = dir + "/" + marker;
  if (!Exists(path)) return absl::OkStatus();
  if (::unlink(path.c_str()) != 0) {
    return ServerErrno("unlink", path);
  }
  return ServerFault(FsyncParentDirectory(path));
}

// The marker a start may act on, if `dir` carries one.
const char* MarkerIn(const std::string& dir) {
  for (const char* m : {kDeletingMarker, kCreatingMarker}) {
    if (Exists(dir + "/" + m)) return m;
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(const RegistryOptions& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data_dir is required");
  ADAPTD_RETURN_IF_ERROR(MakeDirs(options.data_dir + "/models"));
  auto registry = std::unique_ptr<Registry>(new Registry(options));
  Registry& r = *registry;
  ADAPTD_ASSIGN_OR_RETURN(r.lock_, DirectoryLock::Acquire(options.data_dir));
  ADAPTD_ASSIGN_OR_RETURN(r.catalog_, Catalog::Open(options.data_dir + "/catalog.sqlite"));
  ADAPTD_ASSIGN_OR_RETURN(std::vector<ModelRow> rows, r.catalog_->ListModels());
  // A model row damaged in its name alone lists under a name no directory has, and its own
  // directory under no row: its checksum matches under that directory's name, which it gets
  // back.
  if (std::any_of(rows.begin(), rows.end(), [](const ModelRow& row) { return row.damaged; })) {
    std::set<std::string> listed;
    for (const ModelRow& row : rows) listed.insert(row.name);
    std::vector<std::string> unlisted;
    for (const std::string& dir : ListDir(options.data_dir + "/models")) {
      if (listed.count(dir) == 0) unlisted.push_back(dir);
    }
    ADAPTD_ASSIGN_OR_RETURN(const std::vector<std::string> restored,
                            r.catalog_->RestoreModelNames(unlisted));
    if (!restored.empty()) {
      ADAPTD_ASSIGN_OR_RETURN(rows, r.catalog_->ListModels());
    }
  }
  std::set<std::string> known;
  // One damaged model must not keep the others offline: it stays on disk, with the reason, for
  // inspection until DeleteModel removes it.
  const auto offline = [&r](const std::string& name, std::string why) {
    std::fprintf(stderr, "adaptd: model %s not loaded: %s\n", name.c_str(), why.c_str());
    r.failed_[name] = std::move(why);
  };
  for (const ModelRow& row : rows) {
    const std::string dir = options.data_dir + "/models/" + row.name;
    known.insert(row.name);
    // A damaged row must neither load nor, read as a creation that never finished, be removed:
    // the model stays offline, its files kept, until it is deleted or the catalog restored.
    absl::StatusOr<std::vector<VersionRow>> listed =
        row.damaged ? absl::DataLossError(absl::StrCat(
                          "its catalog row (spec and settings) does not match its checksum: "
                          "catalog.sqlite was damaged on disk (restore it from a backup)"))
                    : r.catalog_->ListVersions(row.name);
    if (absl::IsDataLoss(listed.status())) {
      offline(row.name, std::string(listed.status().message()));
      continue;
    }
    ADAPTD_RETURN_IF_ERROR(listed.status());
    const std::vector<VersionRow>& versions = *listed;
    if (versions.empty()) {
      // Creation (or import) never reached version 0, so it was never acknowledged. Its rows
      // go, and the loop below removes its files, which the marker (or their absence) names
      // as such. Files without it are kept: a catalog copied while a creation ran shows the
      // creation unfinished, though it finished since.
      if (MarkerIn(dir) == nullptr && Exists(dir) && HoldsFiles(dir)) {
        offline(row.name,
                "its catalog rows show a creation that never reached version 0, but its files "
                "carry no creation marker (was catalog.sqlite restored from an older copy?); they "
                "are kept");
        continue;
      }
      std::fprintf(stderr, "adaptd: removing model %s: its creation did not complete\n",
                   row.name.c_str());
      ADAPTD_RETURN_IF_ERROR(r.catalog_->DeleteModel(row.name));
      known.erase(row.name);
      continue;
    }
    // A model with rows: a deletion that a crash cut before the rows went did not happen, and
    // a creation marker left by a crash after version 0 is stale. One that stays would have a
    // later start remove the model should the catalog lose its rows: it stays offline instead.
    absl::Status unmarked = Unmark(dir, kDeletingMarker);
    if (unmarked.ok()) unmarked = Unmark(dir, kCreatingMarker);
    if (!unmarked.ok()) {
      offline(row.name, absl::StrCat("a stale marker could not be removed: ", unmarked.ToString()));
      continue;
    }
    // A throw (a stored module this LibTorch cannot run, say) keeps only this model offline.
    auto entry = CallTorch([&] { return ModelEntry::Recover(row, r.EntryOptions(row.name)); });
    if (!entry.ok()) {
      offline(row.name, absl::StrCat("loading it at start failed: ", entry.status().ToString()));
      continue;
    }
    r.models_[row.name] = *std::move(entry);
  }
  // Directories without a catalog row. A deletion or creation that a crash interrupted marked
  // its own (or wrote no file yet): they go. Any other holds data that a lost catalog (removed,
  // or restored from an older copy) no longer lists: it is kept, offline, until DeleteModel
  // removes it. Anything but a directory is not the server's and is left alone.
  // A model row damaged in its name leaves its directory unlisted: then none is removed.
  const bool names_damaged =
      std::any_of(rows.begin(), rows.end(), [](const ModelRow& row) { return row.damaged; });
  for (const std::string& dir : ListDir(options.data_dir + "/models")) {
    if (known.count(dir) != 0) continue;
    const std::string path = options.data_dir + "/models/" + dir;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    const char* marker = MarkerIn(path);
    if (names_damaged) {
      r.failed_[dir] =
          "its files have no row in catalog.sqlite, and a model row there is damaged (its name "
          "may have been this one); they are kept";
    } else if (marker != nullptr || !HoldsFiles(path)) {
      std::fprintf(stderr, "adaptd: removing models/%s: an interrupted %s\n", dir.c_str(),
                   marker == kDeletingMarker ? "deletion" : "creation");
      const absl::Status removed = RemoveTree(path, marker != nullptr ? marker : "");
      if (removed.ok()) continue;
      r.failed_[dir] = absl::StrCat("removing its files failed: ", removed.ToString());
    } else {
      r.failed_[dir] =
          "its files have no row in catalog.sqlite (was the catalog removed, or restored from an "
          "older copy?); they are kept";
    }
    std::fprintf(stderr, "adaptd: models/%s not loaded: %s\n", dir.c_str(), r.failed_[dir].c_str());
  }
  return registry;
}

Registry::~Registry() { Shutdown(); }

ModelEntryOptions Registry::EntryOptions(const std::string& name) {
  ModelEntryOptions o;
  o.dir = options_.data_dir + "/models/" + name;
  o.queue_capacity = options_.queue_capacity;
  o.catalog = catalog_.get();
  o.slots = &slots_;
  o.metrics = options_.metrics;
  o.training_nice = options_.training_nice;
  o.keep_versions = options_.keep_versions;
  o.keep_jobs = options_.keep_jobs;
  o.device = options_.device;
  o.on_job = [this](std::shared_ptr<Job> job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_[job->id()] = job;
    // The entries drop finished jobs beyond keep_jobs; their ids go once the index doubles.
    if (static_cast<int64_t>(jobs_.size()) >= 2 * jobs_swept_) {
      for (auto it = jobs_.begin(); it != jobs_.end();) {
        it = it->second.expired() ? jobs_.erase(it) : std::next(it);
      }
      jobs_swept_ = std::max<int64_t>(1024, static_cast<int64_t>(jobs_.size()));
    }
  };
  return o;
}

namespace {

std::string NotLoaded(const std::string& name, const std::string& why) {
  return absl::StrCat("model \"", name, "\" exists on disk but is not loaded (", why,
                      "); if the cause can be mended (a permission, a full disk, a file restored "
                      "from a backup), mend it and restart the server; otherwise DeleteModel "
                      "removes it, examples and all");
}

}  // namespace

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it != models_.end()) return it->second;
  auto failed = failed_.find(name);
  if (failed != failed_.end()) return absl::DataLossError(NotLoaded(name, failed->second));
  return absl::NotFoundError(absl::StrCat("no model named \"", name, "\""));
}

std::vector<std::shared_ptr<ModelEntry>> Registry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<ModelEntry>> out;
  for (const auto& [name, e] : models_) out.push_back(e);
  return out;
}

absl::Status Registry::CheckNewName(const std::string& name) const {
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model name must match [A-Za-z0-9_.-]{1,64}; got \"", name, "\""));
  }
  if (models_.count(name) || reserved_.count(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a model named \"", name, "\" exists"));
  }
  if (deleting_.count(name)) {
    return absl::UnavailableError(absl::StrCat("the model named \"", name,
                                               "\" is being deleted; try again once its "
                                               "DeleteModel has returned"));
  }
  auto failed = failed_.find(name);
  if (failed != failed_.end()) return absl::AlreadyExistsError(NotLoaded(name, failed->second));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Create(const std::string& name,
                                                             const v1::ModelSpec& spec,
                                                             const v1::LearningConfig& config) {
  // A bad spec or config is refused before the name is reserved or anything is written.
  absl::StatusOr<ModelEntry::Blueprint> plan = CallTorch([&] { return ModelEntry::Plan(spec, config); });
  if (!plan.ok()) return plan.status();
  return Add(name, [&](const ModelEntryOptions& o) {
    return ModelEntry::Create(name, *std::move(plan), o);
  });
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Import(const std::string& name,
                                                             const std::string& snapshot) {
  // A bad snapshot is refused before the name is reserved or anything is written.
  absl::StatusOr<ModelEntry::ImportBlueprint> plan =
      CallTorch([&] { return ModelEntry::PlanImport(snapshot); });
  if (!plan.ok()) return plan.status();
  return Add(name, [&](const ModelEntryOptions& o) {
    return ModelEntry::Import(name, *std::move(plan), o);
  });
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Add(
    const std::string& name,
    const std::function<absl::StatusOr<std::unique_ptr<ModelEntry>>(const ModelEntryOptions&)>&
        make) {
  // The name is reserved under the lock; the slow part (a TorchScript load, fsyncs, an
  // import's logs) runs outside it, so other calls' lookups never wait for a creation.
  ModelEntryOptions options;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ADAPTD_RETURN_IF_ERROR(CheckNewName(name));
    reserved_.insert(name);
    options = EntryOptions(name);
  }
  // Something that is not the server's (a file, a link) under the name is refused, and left
  // alone.
  struct stat st;
  if (::lstat(options.dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(name);
    return absl::FailedPreconditionError(absl::StrCat(
        "models/", name, " exists in the data directory and is not a model's directory"));
  }
  // Marked before its first row, so that a start tells a creation a crash cut from files a
  // restored catalog shows as unfinished. A throw must release the name too.
  absl::Status marked = ServerFault(MakeDirs(options.dir));
  if (marked.ok()) marked = Mark(options.dir, kCreatingMarker);
  absl::StatusOr<std::shared_ptr<ModelEntry>> entry =
      marked.ok() ? CallTorch([&] { return make(options); })
                  : absl::StatusOr<std::shared_ptr<ModelEntry>>(marked);
  absl::Status undone;
  if (entry.ok()) {
    // Should it stay, the next start removes it, or keeps the model offline.
    LogIfFailed(Unmark(options.dir, kCreatingMarker));
  } else {
    // Whatever the creation wrote goes, its marker last (a crash meanwhile leaves it marked);
    // rows that cannot be deleted keep the files, and the name, until DeleteModel.
    undone = catalog_->DeleteModel(name);
    if (undone.ok()) {
      undone = RemoveTree(options.dir, Exists(options.dir + "/" + kCreatingMarker) ? kCreatingMarker : "");
    }
  }
  std::shared_ptr<ModelEntry> shared;
  bool interrupted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reserved_.erase(name);
    if (!undone.ok()) {
      failed_[name] = absl::StrCat("its creation failed (", entry.status().ToString(),
                                   ") and removing its files failed: ", undone.ToString());
    }
    if (!entry.ok()) return entry.status();
    shared = *std::move(entry);
    models_[name] = shared;
    interrupted = interrupting_;
  }
  // Created while the server shuts down (outside mu_: an entry's lock is never taken under it).
  if (interrupted) shared->InterruptJobs();
  return shared;
}

absl::Status Registry::Delete(const std::string& name) {
  std::shared_ptr<ModelEntry> entry;
  std::string offline;  // why a model that is not loaded is not
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(name);
    if (it != models_.end()) {
      entry = it->second;
      models_.erase(it);
    } else if (auto failed = failed_.find(name); failed != failed_.end()) {
      offline = failed->second;
      failed_.erase(failed);
    } else {
      return absl::NotFoundError(absl::StrCat("no model named \"", name, "\""));
    }
    // The name stays taken until the files are gone: a model created under it meanwhile would
    // have its new files removed by this deletion. The files go outside the lock, so that
    // other calls do not wait for them.
    deleting_.insert(name);
  }
  // Stop the actor (a model that could not be loaded at start has none) and fence in-flight
  // streams first, so nothing writes a row for the model after its rows are gone; then the
  // catalog (once its rows are gone the model is gone, and a start removes any files a crash
  // leaves, by the marker), then the files.
  if (entry) entry->Stop();
  const std::string dir = options_.data_dir + "/models/" + name;
  MarkDeleting(dir);
  const absl::Status rows = catalog_->DeleteModel(name);
  absl::Status removed;
  if (!rows.ok()) {
    LogIfFailed(Unmark(dir, kDeletingMarker));
  } else {
    if (options_.metrics) options_.metrics->RemoveModel(name);
    removed = entry ? entry->Destroy() : RemoveTree(dir, kDeletingMarker);
    if (!removed.ok()) {
      std::fprintf(stderr, "adaptd: model %s deleted, but its files remain: %s\n", name.c_str(),
                   removed.ToString().c_str());
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  deleting_.erase(name);
  // Its rows remain (its actor, if any, has stopped): it is kept as a model that is not loaded,
  // which a later DeleteModel removes (and a restart loads again). Rows gone but files left:
  // the name stays taken until a DeleteModel (or a start, by the marker) removes them.
  if (!rows.ok()) {
    failed_[name] = absl::StrCat(offline.empty() ? "" : absl::StrCat(offline, "; "),
                                 "deleting it failed: ", rows.ToString());
  }
  if (!removed.ok()) failed_[name] = absl::StrCat("its deletion left files: ", removed.ToString());
  return rows;
}

absl::StatusOr<std::shared_ptr<Job>> Registry::FindJob(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  std::shared_ptr<Job> job = it == jobs_.end() ? nullptr : it->second.lock();
  if (!job) return absl::NotFoundError(absl::StrCat("no job with id \"", id, "\""));
  return job;
}

absl::StatusOr<v1::JobStatus> Registry::CancelJob(const std::string& id) {
  ADAPTD_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindJob(id));
  ADAPTD_ASSIGN_OR_RETURN(std::shared_ptr<ModelEntry> entry, Get(job->Status().model()));
  return entry->Cancel(job);
}

void Registry::InterruptJobs() {
  {
    std::lock_guard<std::mutex> lock(mu_);  // Add reads it under mu_ too: no entry is missed
    interrupting_ = true;
  }
  for (auto& e : List()) e->InterruptJobs();
}

void Registry::Shutdown() {
  for (auto& e : List()) e->Stop();
}

}  // namespace adaptd

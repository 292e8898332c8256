#include "server/registry.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
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

}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(const RegistryOptions& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data_dir is required");
  for (const std::string& d : {options.data_dir, options.data_dir + "/models"}) {
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::InternalError(absl::StrCat("mkdir ", d, ": ", std::strerror(errno)));
    }
  }
  auto registry = std::unique_ptr<Registry>(new Registry(options));
  ADAPTD_ASSIGN_OR_RETURN(registry->catalog_, Catalog::Open(options.data_dir + "/catalog.sqlite"));
  ADAPTD_ASSIGN_OR_RETURN(std::vector<ModelRow> rows, registry->catalog_->ListModels());
  for (const ModelRow& row : rows) {
    auto entry = ModelEntry::Recover(row, registry->EntryOptions(row.name));
    if (!entry.ok()) {
      // One damaged model must not keep the others offline; it stays on disk for inspection.
      std::fprintf(stderr, "adaptd: model %s not loaded: %s\n", row.name.c_str(),
                   entry.status().ToString().c_str());
      continue;
    }
    registry->models_[row.name] = *std::move(entry);
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
  o.on_job = [this](std::shared_ptr<Job> job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_[job->id()] = job;
  };
  return o;
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model named \"", name, "\""));
  return it->second;
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
  if (models_.count(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a model named \"", name, "\" exists"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Create(const std::string& name,
                                                             const v1::ModelSpec& spec,
                                                             const v1::LearningConfig& config) {
  std::lock_guard<std::mutex> lock(mu_);
  ADAPTD_RETURN_IF_ERROR(CheckNewName(name));
  // Entry options take mu_ only from the job callback, which Create does not call.
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<ModelEntry> entry,
                          ModelEntry::Create(name, spec, config, EntryOptions(name)));
  std::shared_ptr<ModelEntry> shared = std::move(entry);
  models_[name] = shared;
  return shared;
}

absl::StatusOr<std::shared_ptr<ModelEntry>> Registry::Import(const std::string& name,
                                                             const std::string& snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  ADAPTD_RETURN_IF_ERROR(CheckNewName(name));
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<ModelEntry> entry,
                          ModelEntry::Import(name, snapshot, EntryOptions(name)));
  std::shared_ptr<ModelEntry> shared = std::move(entry);
  models_[name] = shared;
  return shared;
}

absl::Status Registry::Delete(const std::string& name) {
  std::shared_ptr<ModelEntry> entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) {
      return absl::NotFoundError(absl::StrCat("no model named \"", name, "\""));
    }
    entry = it->second;
    models_.erase(it);
  }
  // The catalog first: once its rows are gone the model is gone, even if a crash leaves files.
  ADAPTD_RETURN_IF_ERROR(catalog_->DeleteModel(name));
  if (options_.metrics) options_.metrics->RemoveModel(name);
  return entry->Destroy();
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

void Registry::Shutdown() {
  for (auto& e : List()) e->Stop();
}

}  // namespace adaptd

#include "server/services.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "core/jacobian.h"
#include "core/metrics.h"
#include "core/mpe.h"
#include "core/predictive.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "server/convert.h"
#include "server/evaluation.h"
#include "server/grpc_status.h"

#ifndef ADAPTD_VERSION
#define ADAPTD_VERSION "0.0.0"
#endif

namespace adaptd {

bool BufferBudget::Take(int64_t bytes) {
  int64_t held = held_.load();
  do {
    if (held + bytes > limit_) return false;
  } while (!held_.compare_exchange_weak(held, held + bytes));
  if (metrics_) metrics_->AddBufferedBytes(bytes);
  return true;
}

void BufferBudget::Give(int64_t bytes) {
  held_.fetch_sub(bytes);
  if (metrics_) metrics_->AddBufferedBytes(-bytes);
}

namespace {

// What one call holds of the server's BufferBudget; all of it goes back when the call ends.
class BufferShare {
 public:
  explicit BufferShare(BufferBudget* budget) : budget_(budget) {}
  ~BufferShare() { Release(); }
  BufferShare(const BufferShare&) = delete;
  BufferShare& operator=(const BufferShare&) = delete;
  // RESOURCE_EXHAUSTED, taking nothing, when the server's calls together would hold too much.
  absl::Status Take(int64_t bytes) {
    if (budget_ != nullptr && !budget_->Take(bytes)) {
      if (held_ + bytes > budget_->limit()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "this call alone would hold more than ", budget_->limit() >> 20,
            " MiB before its end (the server's --max_buffered_mb); send it as several streams "
            "with keep_open"));
      }
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server's calls already hold close to ", budget_->limit() >> 20,
          " MiB of examples and snapshots before their end (the server's --max_buffered_mb); "
          "try again once other streams have ended"));
    }
    held_ += bytes;
    return absl::OkStatus();
  }
  void Release() {
    if (budget_ != nullptr && held_ > 0) budget_->Give(held_);
    held_ = 0;
  }
  // What the call holds now (all of it counted, with or without a budget).
  int64_t held() const { return held_; }

 private:
  BufferBudget* const budget_;
  int64_t held_ = 0;
};

constexpr int64_t kMaxSamples = 4096;
constexpr int64_t kMaxTopK = 10000;
// Export's chunk of snapshot bytes: under 1 MiB, the smallest --max_message_mb, with room for
// the message's own framing (a full 1 MiB of data is a 1,048,580-byte message).
constexpr size_t kSnapshotChunk = (size_t{1} << 20) - 1024;

// An answer larger than the server may send would leave as gRPC's own RESOURCE_EXHAUSTED, which
// names no remedy and which the metrics would count as OK: refuse it here, saying what to ask.
// `at_least`: `bytes` is a lower bound, known before the answer is built.
absl::Status FitsOneMessage(size_t bytes, int max_message_bytes, absl::string_view remedy,
                            bool at_least = false) {
  if (bytes <= static_cast<size_t>(max_message_bytes)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the answer would take ", at_least ? "at least " : "", bytes,
      " bytes, more than this server sends in one message (", max_message_bytes,
      ", --max_message_mb): ", remedy));
}

absl::Status FitsOneMessage(const google::protobuf::Message& answer, int max_message_bytes,
                            absl::string_view remedy) {
  return FitsOneMessage(answer.ByteSizeLong(), max_message_bytes, remedy);
}

// Runs one RPC: role check, the body (LibTorch exceptions become statuses), metrics.
template <typename Body>
grpc::Status Handle(const ServiceContext& c, const char* method, grpc::ServerContext* context,
                    Role need, Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status status = c.auth->Check(*context, need);
  if (status.ok()) status = CallTorch([&]() -> absl::Status { return body(); });
  if (c.metrics) {
    c.metrics->ObserveRequest(
        method, absl::StatusCodeToString(status.code()),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return ToGrpcStatus(status);
}

// Runs a unary query as Handle does, and refuses an answer too large to send, naming the
// remedy: Predict and MemoryMap check theirs first, with the remedy their requests allow;
// ListVersions and Evaluate name their pages; the other lists (ListJobs, ListModels) grow with
// the jobs and models kept, and have no smaller request to ask. Calls that change state answer through Handle alone: a refusal after the change would
// tell the client that nothing changed (their answers are a model's record or a few ids).
template <typename Body>
grpc::Status HandleQuery(const ServiceContext& c, const char* method, grpc::ServerContext* context,
                         Role need, const google::protobuf::Message& answer, Body&& body,
                         absl::string_view remedy = "start the server with a larger --max_message_mb") {
  return Handle(c, method, context, need, [&]() -> absl::Status {
    ADAPTD_RETURN_IF_ERROR(body());
    return FitsOneMessage(answer, c.max_message_bytes, remedy);
  });
}

constexpr absl::string_view kPageRemedy =
    "ask for a page of versions (max_versions, from first_version), or start the server with a "
    "larger --max_message_mb";

absl::Status CheckPage(int64_t first_version, int32_t max_versions) {
  if (first_version < 0 || max_versions < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "first_version and max_versions must be >= 0 (max_versions 0: all); got ",
        first_version, " and ", max_versions));
  }
  return absl::OkStatus();
}

// Keeps the page of `rows` (oldest version first) that a request asks for: the versions from
// first_version on, at most max_versions of them (0: all). Returns the first version left out
// past the page, if any.
template <typename Rows>
absl::StatusOr<std::optional<int64_t>> KeepPage(Rows* rows, int64_t first_version,
                                                int32_t max_versions) {
  ADAPTD_RETURN_IF_ERROR(CheckPage(first_version, max_versions));
  auto first = std::find_if(rows->begin(), rows->end(),
                            [&](const auto& row) { return row.version() >= first_version; });
  rows->erase(rows->begin(), first);
  if (max_versions == 0 || rows->size() <= max_versions) return std::optional<int64_t>();
  const int64_t next = (*rows)[max_versions].version();
  rows->erase(rows->begin() + max_versions, rows->end());
  return std::optional<int64_t>(next);
}

absl::StatusOr<std::shared_ptr<const ModelVersion>> VersionOf(const ModelEntry& entry,
                                                              bool has_version, int64_t version) {
  if (has_version && version < 0) {
    return absl::InvalidArgumentError(absl::StrCat("version must be >= 0; got ", version));
  }
  return entry.Version(has_version ? version : -1);
}

// The version's posterior; FAILED_PRECONDITION naming the version if it has learnt nothing.
absl::StatusOr<Posterior> PosteriorOf(const ModelVersion& version) {
  if (version.state().tasks_seen == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "version ", version.version(), " has learnt no task (a new model's version 0, or a "
        "rollback to it), so it has no posterior: query a version that learnt a task, or stream "
        "training data first"));
  }
  return version.state().ToPosterior();
}

// The head of `task_id` for multi-head models (which must name one: their heads are trained
// apart, so a softmax over all of them means nothing); undefined for a single head.
absl::StatusOr<at::Tensor> HeadMask(const ContinualState& state, bool has_task, int64_t task_id) {
  if (!has_task) {
    if (!state.task_masks.defined()) return at::Tensor();
    return absl::InvalidArgumentError(absl::StrCat(
        "this model is multi-head: name the query's task_id, in [0, ", state.task_masks.size(0),
        ") (each head is trained on its task's classes alone)"));
  }
  if (!state.task_masks.defined()) {
    return absl::InvalidArgumentError(
        "task_id applies to multi-head models; this one has a single head (or has learnt no "
        "task yet)");
  }
  if (task_id < 0 || task_id >= state.task_masks.size(0) ||
      !state.task_masks[task_id].any().item<bool>()) {
    return absl::InvalidArgumentError(absl::StrCat("task_id must be a task this version knows, in [0, ",
                                                   state.task_masks.size(0), "); got ", task_id));
  }
  return state.task_masks[task_id];
}

at::Generator SeededGenerator(uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return gen;
}

// ---------------------------------------------------------------------------------------------

class AdminServiceImpl final : public v1::AdminService::Service {
 public:
  explicit AdminServiceImpl(const ServiceContext& c) : c_(c) {}

  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const v1::GetServerInfoRequest*,
                             v1::GetServerInfoResponse* response) override {
    return HandleQuery(c_, "GetServerInfo", ctx, Role::kReader, *response, [&]() -> absl::Status {
      response->set_version(ADAPTD_VERSION);
      response->set_torch_version(TORCH_VERSION);
      response->set_device(c_.device.str());
      response->set_intra_op_threads(at::get_num_threads());
      // Models train with IVON only: continual adaptation needs its posterior (ConfigFromProto
      // refuses the others).
      response->add_optimizers(OptimizerName(OptimizerKind::kIvon));
      for (auto a : {Architecture::kLogReg, Architecture::kMlp, Architecture::kLeNet5,
                     Architecture::kTorchScript}) {
        response->add_architectures(ArchitectureName(a));
      }
      for (auto m : {Method::kKPrior, Method::kFromp, Method::kEwc, Method::kReplay,
                     Method::kFinetune, Method::kJoint}) {
        response->add_methods(MethodName(m));
      }
      response->set_max_message_bytes(c_.max_message_bytes);
      return absl::OkStatus();
    });
  }

  grpc::Status CreateModel(grpc::ServerContext* ctx, const v1::CreateModelRequest* request,
                           v1::ModelInfo* response) override {
    return Handle(c_, "CreateModel", ctx, Role::kAdmin, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Create(request->name(), request->spec(),
                                                              request->config()));
      *response = entry->Info();
      return absl::OkStatus();
    });
  }

  grpc::Status GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* request,
                        v1::ModelInfo* response) override {
    return HandleQuery(c_, "GetModel", ctx, Role::kReader, *response, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->name()));
      *response = entry->Info();
      return absl::OkStatus();
    });
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    return HandleQuery(c_, "ListModels", ctx, Role::kReader, *response, [&]() -> absl::Status {
      for (const auto& e : c_.registry->List()) *response->add_models() = e->Info();
      return absl::OkStatus();
    });
  }

  grpc::Status DeleteModel(grpc::ServerContext* ctx, const v1::DeleteModelRequest* request,
                           v1::DeleteModelResponse*) override {
    return Handle(c_, "DeleteModel", ctx, Role::kAdmin,
                  [&]() -> absl::Status { return c_.registry->Delete(request->name()); });
  }

  grpc::Status ListVersions(grpc::ServerContext* ctx, const v1::ListVersionsRequest* request,
                            v1::ListVersionsResponse* response) override {
    return HandleQuery(c_, "ListVersions", ctx, Role::kReader, *response, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->name()));
      for (const auto& v : entry->Versions()) *response->add_versions() = v;
      ADAPTD_ASSIGN_OR_RETURN(
          std::optional<int64_t> next,
          KeepPage(response->mutable_versions(), request->first_version(), request->max_versions()));
      if (next) response->set_next_version(*next);
      return absl::OkStatus();
    }, kPageRemedy);
  }

  grpc::Status Rollback(grpc::ServerContext* ctx, const v1::RollbackRequest* request,
                        v1::ModelInfo* response) override {
    return Handle(c_, "Rollback", ctx, Role::kAdmin, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->name()));
      if (request->version() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("version must be >= 0; got ", request->version()));
      }
      ADAPTD_ASSIGN_OR_RETURN(*response, entry->Rollback(request->version()));
      return absl::OkStatus();
    });
  }

  grpc::Status UpdateConfig(grpc::ServerContext* ctx, const v1::UpdateConfigRequest* request,
                            v1::ModelInfo* response) override {
    return Handle(c_, "UpdateConfig", ctx, Role::kAdmin, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->name()));
      ADAPTD_ASSIGN_OR_RETURN(*response,
                              entry->UpdateConfig(request->config(), request->update_mask()));
      return absl::OkStatus();
    });
  }

  grpc::Status Export(grpc::ServerContext* ctx, const v1::ExportRequest* request,
                      grpc::ServerWriter<v1::SnapshotChunk>* writer) override {
    return Handle(c_, "Export", ctx, Role::kAdmin, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->name()));
      ADAPTD_ASSIGN_OR_RETURN(std::string bytes, entry->Export());
      for (size_t pos = 0; pos < bytes.size(); pos += kSnapshotChunk) {
        v1::SnapshotChunk chunk;
        chunk.set_data(bytes.substr(pos, kSnapshotChunk));
        if (!writer->Write(chunk)) return absl::CancelledError("the client went away");
      }
      return absl::OkStatus();
    });
  }

  grpc::Status Import(grpc::ServerContext* ctx, grpc::ServerReader<v1::SnapshotChunk>* reader,
                      v1::ModelInfo* response) override {
    return Handle(c_, "Import", ctx, Role::kAdmin, [&]() -> absl::Status {
      v1::SnapshotChunk chunk;
      std::string name, bytes;
      bool first = true;
      BufferShare share(c_.buffers);  // held until the snapshot has become a model
      while (reader->Read(&chunk)) {
        if (first) name = chunk.name();
        else if (!chunk.name().empty() && chunk.name() != name) {
          return absl::InvalidArgumentError(absl::StrCat(
              "only the first snapshot chunk may name the model; it named \"", name,
              "\", a later one \"", chunk.name(), "\""));
        }
        first = false;
        // A snapshot is held whole until it is checked: bounded as a stream's examples are.
        if (static_cast<int64_t>(bytes.size() + chunk.data().size()) > c_.max_stream_bytes) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "the snapshot is larger than ", c_.max_stream_bytes >> 20,
              " MiB (the server's --max_stream_mb)"));
        }
        ADAPTD_RETURN_IF_ERROR(share.Take(static_cast<int64_t>(chunk.data().size())));
        bytes += chunk.data();
      }
      if (ctx->IsCancelled()) return absl::CancelledError("the client cancelled the import");
      if (first) return absl::InvalidArgumentError("an import needs at least one chunk");
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Import(name, bytes));
      *response = entry->Info();
      return absl::OkStatus();
    });
  }

 private:
  ServiceContext c_;
};

// ---------------------------------------------------------------------------------------------

class LearningServiceImpl final : public v1::LearningService::Service {
 public:
  explicit LearningServiceImpl(const ServiceContext& c) : c_(c) {}

  grpc::Status StreamExamples(grpc::ServerContext* ctx,
                              grpc::ServerReader<v1::StreamExamplesRequest>* reader,
                              v1::StreamExamplesResponse* response) override {
    return Handle(c_, "StreamExamples", ctx, Role::kWriter, [&]() -> absl::Status {
      v1::StreamExamplesRequest msg;
      if (!reader->Read(&msg)) return absl::InvalidArgumentError("the stream carried no header");
      if (!msg.has_header()) {
        return absl::InvalidArgumentError("the first message of a stream must be its header");
      }
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(msg.header().model()));
      ADAPTD_ASSIGN_OR_RETURN(StreamPlan plan, entry->PlanStream(msg.header()));
      response->set_model(entry->name());
      response->set_task_id(plan.header.task_id());
      // Read once: an UpdateConfig during the stream applies to the task's next streams.
      const int64_t adapt_every = entry->adapt_every();
      const bool online = adapt_every > 0 && plan.split == ExampleSplit::kTrain;
      std::vector<ExampleBatchData> pending;
      int64_t pending_examples = 0, batches = 0;
      BufferShare share(c_.buffers);
      auto commit = [&](bool adapt) -> absl::Status {
        ADAPTD_ASSIGN_OR_RETURN(CommitResult r, entry->Commit(plan, std::move(pending), adapt));
        pending.clear();
        pending_examples = 0;
        share.Release();
        for (const auto& [first, count] : r.id_ranges) {
          v1::IdRange* range = response->add_ids();
          range->set_first(first);
          range->set_count(count);
          response->set_examples(response->examples() + count);
        }
        for (const auto& id : r.job_ids) {
          // An online stream's chunks may share a job that has not started yet.
          if (std::find(response->job_ids().begin(), response->job_ids().end(), id) ==
              response->job_ids().end()) {
            response->add_job_ids(id);
          }
        }
        response->set_version(r.version);
        if (!r.no_job.ok()) {
          // A stream that stored nothing came only to queue the job: it failed. A commit of no
          // examples after online chunks that queued theirs leaves nothing pending of its own.
          if (response->examples() == 0) {
            return absl::Status(r.no_job.code(),
                                absl::StrCat("no job was queued for task ", plan.header.task_id(),
                                             "'s examples not learnt yet: ", r.no_job.message()));
          }
          if (!r.id_ranges.empty()) {
            response->set_no_job_reason(absl::StrCat(
                "the examples are stored, but no job was queued to learn them (",
                r.no_job.message(), "); they stay pending until a later closing stream of task ",
                plan.header.task_id(), " (adaptctl adapt) queues one"));
          }
        } else if (!r.job_ids.empty()) {
          // A job takes every pending example when it starts, an earlier chunk's among them.
          response->clear_no_job_reason();
        }
        return absl::OkStatus();
      };
      // What a refusal leaves stored: nothing, or the online chunks committed before it (their
      // ids, so that a client resends only the rest). `rest` says what became of the others.
      auto stored = [&](absl::string_view rest = "nothing after them was") -> std::string {
        if (response->examples() == 0) return "nothing was stored";
        std::string ranges;
        for (const v1::IdRange& r : response->ids()) {
          absl::StrAppend(&ranges, ranges.empty() ? "" : ", ", "[", r.first(), ", ",
                          r.first() + r.count(), ")");
        }
        return absl::StrCat("the online chunks before it were stored",
                            response->no_job_reason().empty() ? " and queued" : "", " (",
                            response->examples(), " examples, ids ", ranges, "); ", rest);
      };
      // Every refusal from here on says what the stream left stored.
      auto receive = [&]() -> absl::Status {
        bool ended = false;
        int64_t received = 0;
        while (reader->Read(&msg)) {
          if (ended) {
            return absl::InvalidArgumentError("nothing may follow the stream's end message");
          }
          if (msg.has_end()) {
            if (msg.end().examples() != received) {
              return absl::InvalidArgumentError(absl::StrCat(
                  "the end message counts ", msg.end().examples(), " examples; ", received,
                  " arrived"));
            }
            ended = true;
            continue;
          }
          if (!msg.has_batch()) {
            return absl::InvalidArgumentError(absl::StrCat("message ", batches + 1,
                                                           " of the stream must be a batch; only "
                                                           "the first is a header"));
          }
          auto batch = entry->ValidateBatch(plan, msg.batch());
          if (!batch.ok()) {
            return absl::Status(batch.status().code(),
                                absl::StrCat("batch ", batches, ": ", batch.status().message()));
          }
          ++batches;
          received += batch->size();
          pending_examples += batch->size();
          const int64_t bytes = HeldBytes(*batch);
          if (share.held() + bytes > c_.max_stream_bytes) {
            return absl::ResourceExhaustedError(absl::StrCat(
                "the stream holds more than ", c_.max_stream_bytes >> 20,
                " MiB of examples before its end message (the server's --max_stream_mb); send "
                "them as several streams with keep_open"));
          }
          ADAPTD_RETURN_IF_ERROR(share.Take(bytes));
          pending.push_back(*std::move(batch));
          if (online && pending_examples >= adapt_every) {
            ADAPTD_RETURN_IF_ERROR(commit(true));
          }
        }
        if (!ended || ctx->IsCancelled()) {
          return absl::AbortedError(
              "the stream ended without its end message (cancelled or cut short)");
        }
        response->set_batches(batches);
        // The close: durable before it is acknowledged; a training stream closes its task.
        return commit(!plan.header.keep_open());
      };
      const absl::Status received_all = receive();
      if (received_all.ok()) return received_all;
      // A commit whose outcome is unknown still knows the chunks committed before it.
      if (IsOutcomeUnknown(received_all) && response->examples() == 0) return received_all;
      return absl::Status(
          received_all.code(),
          absl::StrCat(received_all.message(), "; ",
                       IsOutcomeUnknown(received_all)
                           ? stored("the examples after them may or may not be")
                           : stored()));
    });
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobStatus>* writer) override {
    return Handle(c_, "WatchJob", ctx, Role::kReader, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto job, c_.registry->FindJob(request->job_id()));
      uint64_t seen = 0;
      // At most one message per kGap: a change that comes sooner (a fast job reports every
      // step) waits for the next slot, and the watcher then gets the newest status.
      constexpr std::chrono::milliseconds kGap(100);
      std::chrono::steady_clock::time_point last_write;
      while (!ctx->IsCancelled()) {
        v1::JobStatus status;
        const uint64_t seq = job->WaitForChange(seen, 500, &status);
        if (seq != seen) {
          if (!writer->Write(status)) return absl::CancelledError("the client went away");
          seen = seq;
          last_write = std::chrono::steady_clock::now();
        }
        const auto s = status.state();
        if (s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
            s == v1::JOB_STATE_CANCELLED) {
          return absl::OkStatus();
        }
        if (c_.registry->interrupting() && s == v1::JOB_STATE_QUEUED) {
          return absl::UnavailableError(
              "the server is shutting down; the job stays queued and runs after it restarts");
        }
        std::this_thread::sleep_until(last_write + kGap);
      }
      return absl::CancelledError("the watch was cancelled");
    });
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    return HandleQuery(c_, "ListJobs", ctx, Role::kReader, *response, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->model()));
      for (const auto& job : entry->Jobs()) *response->add_jobs() = job->Status();
      return absl::OkStatus();
    });
  }

  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* request,
                         v1::JobStatus* response) override {
    return Handle(c_, "CancelJob", ctx, Role::kWriter, [&]() -> absl::Status {
      ADAPTD_ASSIGN_OR_RETURN(*response, c_.registry->CancelJob(request->job_id()));
      return absl::OkStatus();
    });
  }

 private:
  ServiceContext c_;
};

// ---------------------------------------------------------------------------------------------

class QueryServiceImpl final : public v1::QueryService::Service {
 public:
  explicit QueryServiceImpl(const ServiceContext& c) : c_(c) {}

  grpc::Status Predict(grpc::ServerContext* ctx, const v1::PredictRequest* request,
                       v1::PredictResponse* response) override {
    return HandleQuery(c_, "Predict", ctx, Role::kReader, *response, [&]() -> absl::Status {
      // The request is checked before a version is loaded (which may evict another from the cache).
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->model()));
      ADAPTD_ASSIGN_OR_RETURN(at::Tensor x, InputsFromProto(request->x(), entry->spec(), false, "x"));
      PredictOptions o;
      switch (request->mode()) {
        case v1::PREDICT_MODE_UNSPECIFIED:
        case v1::PREDICT_MODE_BAYES:
          o.mode = PredictMode::kBayes;
          break;
        case v1::PREDICT_MODE_MEAN:
          o.mode = PredictMode::kMean;
          break;
        case v1::PREDICT_MODE_LINEARIZED:
          o.mode = PredictMode::kLinearized;
          break;
        default:
          return absl::InvalidArgumentError(absl::StrCat("mode must be a PredictMode; got ", request->mode()));
      }
      if (request->samples() < 0 || request->samples() > kMaxSamples) {
        return absl::InvalidArgumentError(absl::StrCat("samples must lie in [0, ", kMaxSamples,
                                                       "] (0: 64); got ", request->samples()));
      }
      o.samples = request->samples() == 0 ? 64 : request->samples();
      ADAPTD_ASSIGN_OR_RETURN(auto version,
                              VersionOf(*entry, request->has_version(), request->version()));
      const ContinualState& state = version->state();
      ADAPTD_ASSIGN_OR_RETURN(o.label_mask, HeadMask(state, request->has_task_id(), request->task_id()));
      Posterior posterior;
      const Posterior* p = nullptr;
      if (o.mode != PredictMode::kMean) {
        ADAPTD_ASSIGN_OR_RETURN(posterior, PosteriorOf(*version));
        p = &posterior;
      }
      ADAPTD_ASSIGN_OR_RETURN(ModelVersion::Lease lease, version->Acquire());
      ADAPTD_ASSIGN_OR_RETURN(Prediction pred, adaptd::Predict(lease.model(), lease.flat(), p, x, o,
                                                               SeededGenerator(request->seed())));
      response->set_version(version->version());
      *response->mutable_probs() = TensorToProto(pred.probs);
      *response->mutable_labels() = TensorToProto(pred.label);
      *response->mutable_total_entropy() = TensorToProto(pred.total_entropy);
      *response->mutable_expected_entropy() = TensorToProto(pred.expected_entropy);
      *response->mutable_mutual_information() = TensorToProto(pred.mutual_information);
      *response->mutable_std() = TensorToProto(pred.std);
      return FitsOneMessage(*response, c_.max_message_bytes,
                            "ask for fewer rows at a time (the clients split by their own limit)");
    });
  }

  grpc::Status Influence(grpc::ServerContext* ctx, const v1::InfluenceRequest* request,
                         v1::InfluenceResponse* response) override {
    return HandleQuery(c_, "Influence", ctx, Role::kReader, *response, [&]() -> absl::Status {
      ADAPTD_RETURN_IF_ERROR(CheckScope(request->scope()));
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->model()));
      ADAPTD_ASSIGN_OR_RETURN(at::Tensor x, InputsFromProto(request->x(), entry->spec(), true, "x"));
      if (x.size(0) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("x must be one query example; got a batch of ", x.size(0)));
      }
      if (request->top_k() < 0 || request->top_k() > kMaxTopK) {
        return absl::InvalidArgumentError(absl::StrCat("top_k must lie in [0, ", kMaxTopK,
                                                       "] (0: 10); got ", request->top_k()));
      }
      ADAPTD_ASSIGN_OR_RETURN(auto version,
                              VersionOf(*entry, request->has_version(), request->version()));
      const ContinualState& state = version->state();
      InfluenceOptions o;
      o.top_k = request->top_k() == 0 ? 10 : request->top_k();
      ADAPTD_ASSIGN_OR_RETURN(o.label_mask, HeadMask(state, request->has_task_id(), request->task_id()));
      ADAPTD_ASSIGN_OR_RETURN(Posterior posterior, PosteriorOf(*version));
      ADAPTD_ASSIGN_OR_RETURN(
          ModelEntry::Examples ex,
          ExamplesFor(*entry, *version, request->scope(), request->has_task_id() ? request->task_id() : -1));
      ADAPTD_ASSIGN_OR_RETURN(ModelVersion::Lease lease, version->Acquire());
      const Covariance sigma = Covariance::FromPosterior(posterior);
      ADAPTD_ASSIGN_OR_RETURN(auto scorer, InfluenceScorer::Create(lease.model(), sigma, x, o));
      const int64_t n = ex.data.size(), batch = 1024;
      for (int64_t b = 0; b < n; b += batch) {
        // A client that went away (or passed its deadline, or a shutdown past its grace) stops
        // the scoring between batches.
        if (ctx->IsCancelled()) return absl::CancelledError("the query was cancelled");
        const int64_t len = std::min(batch, n - b);
        ADAPTD_RETURN_IF_ERROR(
            scorer->Add(ex.data.x.narrow(0, b, len), ex.data.y.narrow(0, b, len), b).status());
      }
      response->set_version(version->version());
      response->set_query_class(scorer->query_class());
      response->set_query_probability(scorer->query_probability());
      response->set_examples_scored(n);
      for (const InfluenceEntry& e : scorer->Top()) {
        v1::InfluentialExample* out = response->add_examples();
        out->set_example_id(ex.ids[e.index].item<int64_t>());
        out->set_client_id(ex.client_ids[e.index].item<int64_t>());
        out->set_task_id(ex.task_ids[e.index].item<int64_t>());
        out->set_label(ex.data.y[e.index].item<int64_t>());
        out->set_score(e.influence);
      }
      return absl::OkStatus();
    });
  }

  grpc::Status MemoryMap(grpc::ServerContext* ctx, const v1::MemoryMapRequest* request,
                         v1::MemoryMapResponse* response) override {
    return HandleQuery(c_, "MemoryMap", ctx, Role::kReader, *response, [&]() -> absl::Status {
      ADAPTD_RETURN_IF_ERROR(CheckScope(request->scope()));
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->model()));
      ADAPTD_ASSIGN_OR_RETURN(auto version,
                              VersionOf(*entry, request->has_version(), request->version()));
      const ContinualState& state = version->state();
      ADAPTD_ASSIGN_OR_RETURN(Posterior posterior, PosteriorOf(*version));
      ADAPTD_ASSIGN_OR_RETURN(ModelEntry::Examples ex, ExamplesFor(*entry, *version, request->scope()));
      response->set_version(version->version());
      const int64_t k = entry->spec().num_classes;
      auto empty = [&]() {
        for (auto* t : {response->mutable_error(), response->mutable_variance(), response->mutable_lambda()}) {
          *t = TensorToProto(at::zeros({0, k}));
        }
        *response->mutable_sensitivity() = TensorToProto(at::zeros({0}));
        for (auto* t : {response->mutable_example_ids(), response->mutable_client_ids(),
                        response->mutable_labels(), response->mutable_task_ids()}) {
          *t = TensorToProto(at::zeros({0}, at::kLong));
        }
        return absl::OkStatus();
      };
      if (ex.data.size() == 0) return empty();
      // Multi-head: each example is scored within its own task's head, and the examples of tasks
      // this version has no head for (streamed after it, or not learnt yet) are left out.
      std::vector<int64_t> groups = {-1};
      if (state.task_masks.defined()) {
        const at::Tensor u = std::get<0>(at::_unique(ex.task_ids));
        groups.clear();
        for (int64_t i = 0; i < u.numel(); ++i) {
          const int64_t g = u[i].item<int64_t>();
          if (HeadMask(state, true, g).ok()) groups.push_back(g);
        }
        if (groups.empty()) return empty();
      }
      // Which examples the map covers is known before any is scored, and so is the least its
      // answer takes (four int64 ids, three float32 rows of K and a float32 per example): an
      // answer too large to send is refused before the work (51 s for 6,000 examples of 1,000
      // classes) and before anything its size is allocated.
      std::vector<int64_t> heads;
      std::vector<at::Tensor> order;
      for (int64_t g : groups) {
        at::Tensor index = g < 0 ? at::arange(ex.data.size(), at::kLong)
                                 : ex.task_ids.eq(g).nonzero().reshape({-1});
        if (index.numel() == 0) continue;
        heads.push_back(g);
        order.push_back(std::move(index));
      }
      const at::Tensor idx = at::cat(order);
      const absl::string_view remedy =
          request->scope() == v1::SCOPE_ALL
              ? "ask for scope memory, or start the server with a larger --max_message_mb"
              : "start the server with a larger --max_message_mb";
      ADAPTD_RETURN_IF_ERROR(FitsOneMessage(
          static_cast<size_t>(idx.numel()) * static_cast<size_t>(4 * 8 + 3 * 4 * k + 4),
          c_.max_message_bytes, remedy, /*at_least=*/true));

      ADAPTD_ASSIGN_OR_RETURN(ModelVersion::Lease lease, version->Acquire());
      const Covariance sigma = Covariance::FromPosterior(posterior);
      std::vector<at::Tensor> err, var, lam, sens;
      double nll_sum = 0;
      double acc_sum = 0;
      int64_t n = 0;
      for (size_t part = 0; part < heads.size(); ++part) {
        MpeOptions o;
        o.should_stop = [ctx] { return ctx->IsCancelled(); };
        if (heads[part] >= 0) {
          ADAPTD_ASSIGN_OR_RETURN(o.label_mask, HeadMask(state, true, heads[part]));
        }
        const Dataset d = ex.data.Select(order[part]);
        ADAPTD_ASSIGN_OR_RETURN(MemoryMapAndLoo both, ComputeMemoryMapAndLoo(lease.model(), sigma, d, o));
        const adaptd::MemoryMap& map = both.map;
        const LooEstimate& loo = both.loo;
        err.push_back(map.error.cpu());
        var.push_back(map.variance.cpu());
        lam.push_back(map.lambda.cpu());
        sens.push_back(map.sensitivity.cpu());
        nll_sum += loo.nll * d.size();
        acc_sum += loo.accuracy * d.size();
        n += d.size();
      }
      *response->mutable_example_ids() = TensorToProto(ex.ids.index_select(0, idx));
      *response->mutable_client_ids() = TensorToProto(ex.client_ids.index_select(0, idx));
      *response->mutable_labels() = TensorToProto(ex.data.y.index_select(0, idx));
      *response->mutable_task_ids() = TensorToProto(ex.task_ids.index_select(0, idx));
      *response->mutable_error() = TensorToProto(at::cat(err).to(at::kFloat));
      *response->mutable_variance() = TensorToProto(at::cat(var).to(at::kFloat));
      *response->mutable_lambda() = TensorToProto(at::cat(lam).to(at::kFloat));
      *response->mutable_sensitivity() = TensorToProto(at::cat(sens).to(at::kFloat));
      response->set_loo_nll(nll_sum / n);
      response->set_loo_accuracy(acc_sum / n);
      // The lower bound above leaves out the messages' framing: the exact check.
      return FitsOneMessage(*response, c_.max_message_bytes, remedy);
    });
  }

  grpc::Status Evaluate(grpc::ServerContext* ctx, const v1::EvaluateRequest* request,
                        v1::EvaluateResponse* response) override {
    return HandleQuery(c_, "Evaluate", ctx, Role::kReader, *response, [&]() -> absl::Status {
      // Refused before the scoring below, which every page repeats (the summary covers every
      // version, the current one on its late examples too).
      ADAPTD_RETURN_IF_ERROR(CheckPage(request->first_version(), request->max_versions()));
      ADAPTD_ASSIGN_OR_RETURN(auto entry, c_.registry->Get(request->model()));
      auto [versions, served] = entry->VersionsAndCurrent();
      // The current version on tasks whose evaluation examples came after it was published.
      ADAPTD_ASSIGN_OR_RETURN(std::vector<v1::TaskAccuracy> late, entry->EvaluateUnscored(*served));
      v1::VersionInfo current = served->info();
      for (v1::TaskAccuracy& a : late) *current.add_eval() = std::move(a);
      *response = SummarizeVersions(std::move(versions), current);
      ADAPTD_ASSIGN_OR_RETURN(
          std::optional<int64_t> next,
          KeepPage(response->mutable_rows(), request->first_version(), request->max_versions()));
      if (next) response->set_next_version(*next);
      return absl::OkStatus();
    }, kPageRemedy);
  }

 private:
  // The examples of `scope`; only task `only_task`'s when >= 0.
  static absl::StatusOr<ModelEntry::Examples> ExamplesFor(const ModelEntry& entry,
                                                          const ModelVersion& version,
                                                          v1::Scope scope, int64_t only_task = -1) {
    switch (scope) {
      case v1::SCOPE_UNSPECIFIED:
      case v1::SCOPE_MEMORY: {
        ModelEntry::Examples m = entry.MemoryExamples(version);
        return only_task >= 0 ? OfTask(m, only_task) : m;
      }
      case v1::SCOPE_ALL:
        return entry.TrainingExamples(only_task);
      default:
        return CheckScope(scope);
    }
  }

  static absl::Status CheckScope(v1::Scope scope) {
    if (scope == v1::SCOPE_UNSPECIFIED || scope == v1::SCOPE_MEMORY || scope == v1::SCOPE_ALL) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("scope must be SCOPE_MEMORY or SCOPE_ALL; got ", scope));
  }

  static ModelEntry::Examples OfTask(const ModelEntry::Examples& ex, int64_t task_id) {
    if (ex.data.size() == 0) return ex;
    const at::Tensor index = ex.task_ids.eq(task_id).nonzero().reshape({-1});
    ModelEntry::Examples out;
    out.data = ex.data.Select(index);
    out.ids = ex.ids.index_select(0, index);
    out.client_ids = ex.client_ids.index_select(0, index);
    out.task_ids = ex.task_ids.index_select(0, index);
    return out;
  }

  ServiceContext c_;
};

}  // namespace

std::unique_ptr<v1::AdminService::Service> MakeAdminService(const ServiceContext& c) {
  return std::make_unique<AdminServiceImpl>(c);
}
std::unique_ptr<v1::LearningService::Service> MakeLearningService(const ServiceContext& c) {
  return std::make_unique<LearningServiceImpl>(c);
}
std::unique_ptr<v1::QueryService::Service> MakeQueryService(const ServiceContext& c) {
  return std::make_unique<QueryServiceImpl>(c);
}

}  // namespace adaptd

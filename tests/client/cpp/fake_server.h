// A scripted adaptd server on 127.0.0.1:0 for the client's own tests: it answers with fixed
// data and records what the client sent, so that the client's streaming, chunking, metadata
// and status mapping can be checked without the real server (and without LibTorch).
#ifndef ADAPTD_TESTS_CLIENT_CPP_FAKE_SERVER_H_
#define ADAPTD_TESTS_CLIENT_CPP_FAKE_SERVER_H_

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "adaptd/v1/admin.grpc.pb.h"
#include "adaptd/v1/learning.grpc.pb.h"
#include "adaptd/v1/query.grpc.pb.h"

namespace adaptd {

// What the fake saw. Thread-safe.
struct FakeLog {
  absl::Mutex mu;
  std::string authorization ABSL_GUARDED_BY(mu);
  v1::StreamHeader header ABSL_GUARDED_BY(mu);
  std::vector<int64_t> batch_sizes ABSL_GUARDED_BY(mu);
  std::vector<int64_t> client_ids ABSL_GUARDED_BY(mu);
  // Streams that ended with their end message, and so would be stored (all or nothing).
  int64_t committed_streams ABSL_GUARDED_BY(mu) = 0;
  std::vector<std::string> import_names ABSL_GUARDED_BY(mu);  // one per chunk
  std::string import_data ABSL_GUARDED_BY(mu);
  int64_t import_calls ABSL_GUARDED_BY(mu) = 0;  // Import calls that reached the server
  v1::UpdateConfigRequest update ABSL_GUARDED_BY(mu);
  std::vector<int64_t> predict_rows ABSL_GUARDED_BY(mu);      // one per Predict call
  std::vector<int64_t> predict_versions ABSL_GUARDED_BY(mu);  // -1: none named
  // After this many Predict calls, version 3 is deleted and 4 answers calls that name none.
  int64_t retire_after_calls ABSL_GUARDED_BY(mu) = -1;
};

class FakeAdmin final : public v1::AdminService::Service {
 public:
  explicit FakeAdmin(FakeLog* log) : log_(log) {}

  // Exports these chunks for any model but "missing".
  static std::vector<std::string> Chunks() { return {"snap", "shot-", "bytes"}; }

  grpc::Status GetServerInfo(grpc::ServerContext* context, const v1::GetServerInfoRequest*,
                             v1::GetServerInfoResponse* response) override {
    absl::MutexLock lock(&log_->mu);
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("authorization");
    log_->authorization =
        it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
    response->set_version("fake");
    return grpc::Status::OK;
  }

  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest* request,
                        v1::ModelInfo* response) override {
    if (request->name() == "missing") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model 'missing'");
    }
    response->set_name(request->name());
    response->mutable_spec()->add_input_shape(4);
    return grpc::Status::OK;
  }

  // Records the request and answers with its config.
  grpc::Status UpdateConfig(grpc::ServerContext*, const v1::UpdateConfigRequest* request,
                            v1::ModelInfo* response) override {
    absl::MutexLock lock(&log_->mu);
    log_->update = *request;
    response->set_name(request->name());
    *response->mutable_config() = request->config();
    return grpc::Status::OK;
  }

  grpc::Status Export(grpc::ServerContext*, const v1::ExportRequest* request,
                      grpc::ServerWriter<v1::SnapshotChunk>* writer) override {
    if (request->name() == "missing") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model 'missing'");
    }
    for (const std::string& data : Chunks()) {
      v1::SnapshotChunk chunk;
      chunk.set_data(data);
      writer->Write(chunk);
    }
    return grpc::Status::OK;
  }

  grpc::Status Import(grpc::ServerContext*, grpc::ServerReader<v1::SnapshotChunk>* reader,
                      v1::ModelInfo* response) override {
    v1::SnapshotChunk chunk;
    absl::MutexLock lock(&log_->mu);
    ++log_->import_calls;
    log_->import_names.clear();
    log_->import_data.clear();
    while (reader->Read(&chunk)) {
      log_->import_names.push_back(chunk.name());
      log_->import_data += chunk.data();
    }
    if (log_->import_names.empty() || log_->import_names[0].empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first chunk names the model");
    }
    response->set_name(log_->import_names[0]);
    response->set_num_parameters(static_cast<int64_t>(log_->import_data.size()));
    return grpc::Status::OK;
  }

 private:
  FakeLog* const log_;
};

class FakeLearning final : public v1::LearningService::Service {
 public:
  explicit FakeLearning(FakeLog* log) : log_(log) {}

  // Records each batch's size and client ids; a batch whose x has no dtype is rejected, as the
  // real server rejects malformed batches.
  grpc::Status StreamExamples(grpc::ServerContext* ctx,
                              grpc::ServerReader<v1::StreamExamplesRequest>* reader,
                              v1::StreamExamplesResponse* response) override {
    v1::StreamExamplesRequest request;
    int64_t examples = 0;
    int64_t batches = 0;
    bool ended = false;
    absl::MutexLock lock(&log_->mu);
    log_->batch_sizes.clear();
    log_->client_ids.clear();
    while (reader->Read(&request)) {
      if (request.has_header()) {
        log_->header = request.header();
        continue;
      }
      if (request.has_end()) {  // the real server checks the count the same way
        if (request.end().examples() != examples) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "end count mismatch");
        }
        ended = true;
        continue;
      }
      const v1::ExampleBatch& batch = request.batch();
      if (batch.x().dtype() == v1::DATA_TYPE_UNSPECIFIED) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("batch ", batches, ": x has no dtype"));
      }
      const int64_t n = batch.x().shape(0);
      log_->batch_sizes.push_back(n);
      const std::string& raw = batch.client_ids().raw_data();
      for (size_t i = 0; i + 8 <= raw.size(); i += 8) {
        int64_t id;
        std::memcpy(&id, raw.data() + i, 8);
        log_->client_ids.push_back(id);
      }
      examples += n;
      ++batches;
    }
    // As the real server: a stream without its end message (or cancelled) stores nothing.
    if (!ended || ctx->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::ABORTED, "the stream ended without its end message");
    }
    ++log_->committed_streams;
    response->set_model(log_->header.model());
    response->set_task_id(log_->header.task_id());
    response->set_examples(examples);
    response->set_batches(batches);
    if (log_->header.split() != v1::SPLIT_EVAL && !log_->header.keep_open()) {
      response->add_job_ids("job-1");
    }
    return grpc::Status::OK;
  }

  // "job-1" goes queued -> running -> succeeded; "job-fail" fails; others are unknown.
  grpc::Status WatchJob(grpc::ServerContext*, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobStatus>* writer) override {
    if (request->job_id() != "job-1" && request->job_id() != "job-fail") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such job");
    }
    v1::JobStatus status;
    status.set_job_id(request->job_id());
    status.set_total_steps(10);
    status.set_state(v1::JOB_STATE_QUEUED);
    writer->Write(status);
    status.set_state(v1::JOB_STATE_RUNNING);
    status.set_step(5);
    writer->Write(status);
    if (request->job_id() == "job-fail") {
      status.set_state(v1::JOB_STATE_FAILED);
      status.set_message("loss is NaN");
    } else {
      status.set_state(v1::JOB_STATE_SUCCEEDED);
      status.set_step(10);
      status.set_version(1);
    }
    writer->Write(status);
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* request,
                         v1::JobStatus* response) override {
    response->set_job_id(request->job_id());
    response->set_state(v1::JOB_STATE_CANCELLED);
    return grpc::Status::OK;
  }

 private:
  FakeLog* const log_;
};

// Predict answers with the version the request names (or 3; 4 once log.retire_after_calls
// have been answered, and then a request naming 3 is NOT_FOUND), and for float32 rows two class
// probabilities: the row's first element and 1 minus it, so that answers can be traced to their
// rows (other dtypes: no tensors). A row whose first element is above 1 is refused, numbered
// within the request as the server numbers it. Other queries are unimplemented.
class FakeQuery final : public v1::QueryService::Service {
 public:
  explicit FakeQuery(FakeLog* log) : log_(log) {}

  grpc::Status Predict(grpc::ServerContext*, const v1::PredictRequest* request,
                       v1::PredictResponse* response) override {
    const v1::Tensor& x = request->x();
    if (x.shape_size() == 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "x is empty");
    }
    int64_t current = 3;
    {
      absl::MutexLock lock(&log_->mu);
      const bool retired = log_->retire_after_calls >= 0 &&
                           static_cast<int64_t>(log_->predict_rows.size()) >= log_->retire_after_calls;
      log_->predict_rows.push_back(x.shape(0));
      log_->predict_versions.push_back(request->has_version() ? request->version() : -1);
      if (retired) {
        current = 4;
        if (request->has_version() && request->version() == 3) {
          return grpc::Status(grpc::StatusCode::NOT_FOUND, "version 3's checkpoint was deleted");
        }
      }
    }
    response->set_version(request->has_version() ? request->version() : current);
    if (x.dtype() != v1::DATA_TYPE_FLOAT32) return grpc::Status::OK;
    const int64_t rows = x.shape(0);
    const size_t row_bytes = x.raw_data().size() / static_cast<size_t>(rows);
    std::string probs, labels, entropy;
    for (int64_t i = 0; i < rows; ++i) {
      float p[2];
      std::memcpy(&p[0], x.raw_data().data() + i * row_bytes, sizeof(float));
      if (p[0] > 1) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("x: the model's outputs for example ", i,
                                         " are not finite"));
      }
      p[1] = 1 - p[0];
      const int64_t label = p[0] >= p[1] ? 0 : 1;
      const float zero = 0;
      probs.append(reinterpret_cast<const char*>(p), sizeof p);
      labels.append(reinterpret_cast<const char*>(&label), sizeof label);
      entropy.append(reinterpret_cast<const char*>(&zero), sizeof zero);
    }
    auto set = [](v1::Tensor* t, v1::DataType dtype, std::vector<int64_t> shape,
                  std::string bytes) {
      t->set_dtype(dtype);
      for (int64_t d : shape) t->add_shape(d);
      t->set_raw_data(std::move(bytes));
    };
    set(response->mutable_probs(), v1::DATA_TYPE_FLOAT32, {rows, 2}, probs);
    set(response->mutable_labels(), v1::DATA_TYPE_INT64, {rows}, labels);
    set(response->mutable_total_entropy(), v1::DATA_TYPE_FLOAT32, {rows}, entropy);
    set(response->mutable_expected_entropy(), v1::DATA_TYPE_FLOAT32, {rows}, entropy);
    set(response->mutable_mutual_information(), v1::DATA_TYPE_FLOAT32, {rows}, entropy);
    set(response->mutable_std(), v1::DATA_TYPE_FLOAT32, {rows, 2}, entropy + entropy);
    return grpc::Status::OK;
  }

 private:
  FakeLog* const log_;
};

// Serves the fakes until destroyed.
class FakeServer {
 public:
  FakeServer() : admin_(&log_), learning_(&log_), query_(&log_) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&admin_);
    builder.RegisterService(&learning_);
    builder.RegisterService(&query_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { server_->Shutdown(); }

  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  FakeLog& log() { return log_; }

 private:
  FakeLog log_;
  FakeAdmin admin_;
  FakeLearning learning_;
  FakeQuery query_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace adaptd

#endif  // ADAPTD_TESTS_CLIENT_CPP_FAKE_SERVER_H_

#include "client/client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace adaptd {
namespace {

// Import chunk size: with its framing under 1 MiB, the smallest limit a server accepts
// (--max_message_mb), and large enough that per-message overhead does not matter.
constexpr int64_t kImportChunkBytes = (1 << 20) - (64 << 10);

std::chrono::system_clock::time_point DeadlineAfter(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
}

// The examples in a batch: its labels' length, or x's leading dimension when it has none.
int64_t ExamplesIn(const v1::ExampleBatch& batch) {
  if (batch.y().shape_size() > 0) return batch.y().shape(0);
  if (batch.x().shape_size() > 0) return batch.x().shape(0);
  return 0;
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numeric values (both follow
  // google.rpc.Code); codes outside that range become UNKNOWN.
  const int code = static_cast<int>(status.error_code());
  const auto absl_code =
      (code > 0 && code <= 16) ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
  return absl::Status(absl_code, status.error_message());
}

AdaptdClient::AdaptdClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : options_(options),
      admin_(v1::AdminService::NewStub(channel)),
      learning_(v1::LearningService::NewStub(channel)),
      query_(v1::QueryService::NewStub(channel)) {}

absl::StatusOr<std::unique_ptr<AdaptdClient>> AdaptdClient::Create(const std::string& target,
                                                                   const ClientOptions& options) {
  if (target.empty()) return absl::InvalidArgumentError("target must be host:port; got ''");
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes must be positive; got ", options.max_message_bytes));
  }
  // Durations become int64 microseconds and int milliseconds: bounded well inside both.
  constexpr int64_t kMaxSeconds = 1000000;
  if (!(options.timeout_seconds > 0 && options.timeout_seconds <= kMaxSeconds) ||
      !(options.stream_timeout_seconds >= 0 && options.stream_timeout_seconds <= kMaxSeconds)) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeouts must be positive and at most ", kMaxSeconds,
                     " s (streams: 0 for none); got ", options.timeout_seconds, " and ",
                     options.stream_timeout_seconds));
  }
  if (options.client_cert_pem.empty() != options.client_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key, and a key its certificate");
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (!options.root_certs_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.root_certs_pem;
    ssl.pem_cert_chain = options.client_cert_pem;
    ssl.pem_private_key = options.client_key_pem;
    credentials = grpc::SslCredentials(ssl);
  } else if (!options.client_cert_pem.empty()) {
    // A certificate on a plaintext channel would silently not be sent: refuse instead.
    return absl::InvalidArgumentError("a client certificate needs TLS: give the root certificates");
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (options.keepalive_seconds != 0) {
    if (!(options.keepalive_seconds >= kMinKeepaliveSeconds &&
          options.keepalive_seconds <= kMaxSeconds) ||
        !(options.keepalive_timeout_seconds > 0 && options.keepalive_timeout_seconds <= kMaxSeconds)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keepalive_seconds must be 0 (off) or in [", kMinKeepaliveSeconds, ", ", kMaxSeconds,
          "] (the server refuses more frequent pings), and its timeout in (0, ", kMaxSeconds,
          "]; got ", options.keepalive_seconds, " and ", options.keepalive_timeout_seconds));
    }
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_seconds * 1000));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                static_cast<int>(options.keepalive_timeout_seconds * 1000));
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // keep pinging an idle call
  }
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  return std::unique_ptr<AdaptdClient>(new AdaptdClient(std::move(channel), options));
}

void AdaptdClient::Prepare(grpc::ClientContext& context, bool streaming) const {
  if (!streaming) {
    context.set_deadline(DeadlineAfter(options_.timeout_seconds));
  } else if (options_.stream_timeout_seconds > 0) {
    context.set_deadline(DeadlineAfter(options_.stream_timeout_seconds));
  }
  if (!options_.token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  }
}

// Runs one unary call: `call(context, response)` returns the grpc::Status of the stub method.
template <typename Response, typename Call>
absl::StatusOr<Response> AdaptdClient::Unary(const Call& call) const {
  grpc::ClientContext context;
  Prepare(context, /*streaming=*/false);
  Response response;
  const absl::Status status = FromGrpcStatus(call(&context, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::GetServerInfoResponse> AdaptdClient::GetServerInfo() const {
  return Unary<v1::GetServerInfoResponse>([&](auto* context, auto* response) {
    return admin_->GetServerInfo(context, v1::GetServerInfoRequest(), response);
  });
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::CreateModel(
    const v1::CreateModelRequest& request) const {
  return Unary<v1::ModelInfo>([&](auto* context, auto* response) {
    return admin_->CreateModel(context, request, response);
  });
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::GetModel(const std::string& name) const {
  v1::GetModelRequest request;
  request.set_name(name);
  return Unary<v1::ModelInfo>(
      [&](auto* context, auto* response) { return admin_->GetModel(context, request, response); });
}

absl::StatusOr<v1::ListModelsResponse> AdaptdClient::ListModels() const {
  return Unary<v1::ListModelsResponse>([&](auto* context, auto* response) {
    return admin_->ListModels(context, v1::ListModelsRequest(), response);
  });
}

absl::StatusOr<v1::DeleteModelResponse> AdaptdClient::DeleteModel(const std::string& name) const {
  v1::DeleteModelRequest request;
  request.set_name(name);
  return Unary<v1::DeleteModelResponse>([&](auto* context, auto* response) {
    return admin_->DeleteModel(context, request, response);
  });
}

namespace {

// A versioned list (ListVersions' versions, Evaluate's rows) asked for a page at a time, so that
// a long history fits the message limit: pages of up to 1,000 versions, halved while one is
// refused as too large. `fetch(first_version, max_versions)` asks for one page; `rows_of` names
// the response's rows. The other fields come from the last page. A server that does not page
// answers the whole list at once, without a next version.
template <typename Response, typename Fetch, typename RowsOf>
absl::StatusOr<Response> AllPages(const Fetch& fetch, const RowsOf& rows_of) {
  Response last;
  auto all = *rows_of(last);  // empty, of the rows' type
  int64_t first = 0;
  int32_t page = 1000;
  while (true) {
    absl::StatusOr<Response> r = fetch(first, page);
    if (absl::IsResourceExhausted(r.status()) && page > 1) {
      page /= 2;
      continue;
    }
    if (!r.ok()) return r.status();
    last = *std::move(r);
    for (auto& row : *rows_of(last)) *all.Add() = std::move(row);
    if (!last.has_next_version()) break;
    if (last.next_version() <= first) {
      return absl::InternalError(absl::StrCat("the server's next page starts at version ",
                                              last.next_version(), ", not after ", first));
    }
    first = last.next_version();
  }
  rows_of(last)->Swap(&all);
  return last;
}

}  // namespace

absl::StatusOr<v1::ListVersionsResponse> AdaptdClient::ListVersions(const std::string& name) const {
  return AllPages<v1::ListVersionsResponse>(
      [&](int64_t first, int32_t max) {
        v1::ListVersionsRequest request;
        request.set_name(name);
        request.set_first_version(first);
        request.set_max_versions(max);
        return Unary<v1::ListVersionsResponse>([&](auto* context, auto* response) {
          return admin_->ListVersions(context, request, response);
        });
      },
      [](v1::ListVersionsResponse& r) { return r.mutable_versions(); });
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::Rollback(const std::string& name,
                                                     int64_t version) const {
  v1::RollbackRequest request;
  request.set_name(name);
  request.set_version(version);
  return Unary<v1::ModelInfo>(
      [&](auto* context, auto* response) { return admin_->Rollback(context, request, response); });
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::UpdateConfig(
    const v1::UpdateConfigRequest& request) const {
  return Unary<v1::ModelInfo>([&](auto* context, auto* response) {
    return admin_->UpdateConfig(context, request, response);
  });
}

absl::Status AdaptdClient::ExportTo(
    const std::string& name, const std::function<absl::Status(const std::string&)>& sink) const {
  grpc::ClientContext context;
  Prepare(context, /*streaming=*/true);
  v1::ExportRequest request;
  request.set_name(name);
  auto reader = admin_->Export(&context, request);
  v1::SnapshotChunk chunk;
  while (reader->Read(&chunk)) {
    absl::Status written = sink(chunk.data());
    if (!written.ok()) {
      // Stop the server's stream too; the local error is the one worth reporting.
      context.TryCancel();
      reader->Finish().IgnoreError();
      return written;
    }
  }
  return FromGrpcStatus(reader->Finish());
}

absl::StatusOr<std::string> AdaptdClient::Export(const std::string& name) const {
  std::string snapshot;
  absl::Status status = ExportTo(name, [&](const std::string& data) {
    snapshot.append(data);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return snapshot;
}

// Local failures carry ReplaceFile's codes (NOT_FOUND for a missing directory,
// FAILED_PRECONDITION for one this process may not write, RESOURCE_EXHAUSTED for a full disk).
absl::StatusOr<int64_t> AdaptdClient::ExportToFile(const std::string& name,
                                                   const std::string& path) const {
  int64_t size = 0;
  ADAPTD_RETURN_IF_ERROR(ReplaceFile(path, [&](const auto& write) {
    return ExportTo(name, [&](const std::string& data) {
      size += static_cast<int64_t>(data.size());
      return write(data);
    });
  }));
  return size;
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::ImportFrom(
    const std::string& name,
    const std::function<absl::StatusOr<std::optional<std::string>>()>& next_chunk) const {
  // The first chunk comes before the call opens: a snapshot that is empty or cannot be read
  // never reaches the server (a cancelled call could still run there after this one returned).
  absl::StatusOr<std::optional<std::string>> data = next_chunk();
  if (!data.ok()) return data.status();
  if (!data->has_value()) return absl::InvalidArgumentError("the snapshot is empty");
  grpc::ClientContext context;
  Prepare(context, /*streaming=*/true);
  v1::ModelInfo response;
  auto writer = admin_->Import(&context, &response);
  bool first = true;
  bool open = true;
  while (data->has_value()) {  // a failed write breaks out
    v1::SnapshotChunk chunk;
    if (first) chunk.set_name(name);
    first = false;
    *chunk.mutable_data() = std::move(**data);
    // A failed write means the server has ended the call; Finish says why.
    open = writer->Write(chunk);
    if (!open) break;
    data = next_chunk();
    if (!data.ok()) {
      context.TryCancel();
      writer->Finish().IgnoreError();
      return data.status();
    }
  }
  if (open) writer->WritesDone();
  const absl::Status status = FromGrpcStatus(writer->Finish());
  if (!status.ok()) return status;
  if (!open) return absl::InternalError("the server closed the import stream early");
  return response;
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::Import(const std::string& name,
                                                   const std::string& snapshot) const {
  const int64_t size = static_cast<int64_t>(snapshot.size());
  const int64_t step = std::min<int64_t>(kImportChunkBytes, options_.max_message_bytes / 2 + 1);
  int64_t offset = 0;
  return ImportFrom(name, [&]() -> absl::StatusOr<std::optional<std::string>> {
    if (offset >= size) return std::optional<std::string>();
    std::string data = snapshot.substr(offset, step);
    offset += step;
    return std::optional<std::string>(std::move(data));
  });
}

absl::StatusOr<v1::ModelInfo> AdaptdClient::ImportFromFile(const std::string& name,
                                                           const std::string& path) const {
  // Read in pieces (a snapshot may be larger than the memory should hold twice); failures carry
  // core/files' codes (FAILED_PRECONDITION, not PERMISSION_DENIED, for a file this process may
  // not read: the latter would read as the caller's role).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FileError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const absl::Status s = FileError(errno, "cannot stat", path);
    ::close(fd);
    return s;
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory; expected a file"));
  }
  const int64_t step = std::min<int64_t>(kImportChunkBytes, options_.max_message_bytes / 2 + 1);
  absl::StatusOr<v1::ModelInfo> info =
      ImportFrom(name, [&]() -> absl::StatusOr<std::optional<std::string>> {
        std::string data(static_cast<size_t>(step), '\0');
        size_t got = 0;
        while (got < data.size()) {
          const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
          if (n < 0 && errno == EINTR) continue;
          if (n < 0) return FileError(errno, "reading", path);
          if (n == 0) break;
          got += static_cast<size_t>(n);
        }
        data.resize(got);
        if (data.empty()) return std::optional<std::string>();
        return std::optional<std::string>(std::move(data));
      });
  ::close(fd);
  return info;
}

absl::StatusOr<v1::StreamExamplesResponse> AdaptdClient::StreamExamples(
    const v1::StreamHeader& header, const BatchSource& next, const StreamProgress& progress) const {
  grpc::ClientContext context;
  Prepare(context, /*streaming=*/true);
  v1::StreamExamplesResponse response;
  auto writer = learning_->StreamExamples(&context, &response);
  v1::StreamExamplesRequest request;
  *request.mutable_header() = header;
  bool open = writer->Write(request);
  int64_t sent = 0;
  while (open) {
    absl::StatusOr<std::optional<v1::ExampleBatch>> batch = next();
    if (!batch.ok()) {
      // Closing without the end message makes the server drop what it has not committed, and
      // answer what it has: nothing, or in online mode the chunks already stored and queued
      // (their ids). That account follows the source's own error, so that a caller resends
      // only the rest.
      writer->WritesDone();
      const grpc::Status server = writer->Finish();
      if (server.ok() || server.error_message().empty()) return batch.status();
      return absl::Status(batch.status().code(),
                          absl::StrCat(batch.status().message(), "; the server: ",
                                       server.error_message()));
    }
    if (!batch->has_value()) break;
    const int64_t examples = ExamplesIn(**batch);
    request.Clear();
    request.mutable_batch()->Swap(&**batch);
    open = writer->Write(request);
    if (open) {
      sent += examples;
      if (progress) progress(sent);
    }
  }
  if (open) {
    // The end message tells the server the stream is complete (see learning.proto).
    request.Clear();
    request.mutable_end()->set_examples(sent);
    open = writer->Write(request);
  }
  if (open) writer->WritesDone();
  const absl::Status status = FromGrpcStatus(writer->Finish());
  if (!status.ok()) return status;
  if (!open) return absl::InternalError("the server closed the example stream early");
  return response;
}

absl::StatusOr<v1::StreamExamplesResponse> AdaptdClient::StreamExamples(
    const v1::StreamHeader& header, const std::vector<v1::ExampleBatch>& batches,
    const StreamProgress& progress) const {
  size_t i = 0;
  return StreamExamples(
      header,
      [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
        if (i == batches.size()) return std::optional<v1::ExampleBatch>();
        return std::optional<v1::ExampleBatch>(batches[i++]);
      },
      progress);
}

absl::StatusOr<v1::JobStatus> AdaptdClient::WatchJob(const std::string& job_id,
                                                     const JobCallback& on_status) const {
  grpc::ClientContext context;
  Prepare(context, /*streaming=*/true);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  auto reader = learning_->WatchJob(&context, request);
  std::optional<v1::JobStatus> last;
  v1::JobStatus status;
  while (reader->Read(&status)) {
    if (on_status) on_status(status);
    last = status;
  }
  const absl::Status finished = FromGrpcStatus(reader->Finish());
  if (!finished.ok()) return finished;
  if (!last.has_value()) {
    return absl::InternalError(absl::StrCat("watching job ", job_id, " ended without a status"));
  }
  return *std::move(last);
}

absl::StatusOr<v1::JobStatus> AdaptdClient::CancelJob(const std::string& job_id) const {
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  return Unary<v1::JobStatus>([&](auto* context, auto* response) {
    return learning_->CancelJob(context, request, response);
  });
}

absl::StatusOr<v1::ListJobsResponse> AdaptdClient::ListJobs(const std::string& model) const {
  v1::ListJobsRequest request;
  request.set_model(model);
  return Unary<v1::ListJobsResponse>([&](auto* context, auto* response) {
    return learning_->ListJobs(context, request, response);
  });
}

absl::StatusOr<v1::PredictResponse> AdaptdClient::Predict(const v1::PredictRequest& request) const {
  return Unary<v1::PredictResponse>(
      [&](auto* context, auto* response) { return query_->Predict(context, request, response); });
}

absl::StatusOr<v1::InfluenceResponse> AdaptdClient::Influence(
    const v1::InfluenceRequest& request) const {
  return Unary<v1::InfluenceResponse>(
      [&](auto* context, auto* response) { return query_->Influence(context, request, response); });
}

absl::StatusOr<v1::MemoryMapResponse> AdaptdClient::MemoryMap(
    const v1::MemoryMapRequest& request) const {
  return Unary<v1::MemoryMapResponse>(
      [&](auto* context, auto* response) { return query_->MemoryMap(context, request, response); });
}

absl::StatusOr<v1::EvaluateResponse> AdaptdClient::Evaluate(const std::string& name) const {
  return AllPages<v1::EvaluateResponse>(
      [&](int64_t first, int32_t max) {
        v1::EvaluateRequest request;
        request.set_model(name);
        request.set_first_version(first);
        request.set_max_versions(max);
        return Unary<v1::EvaluateResponse>([&](auto* context, auto* response) {
          return query_->Evaluate(context, request, response);
        });
      },
      [](v1::EvaluateResponse& r) { return r.mutable_rows(); });
}

}  // namespace adaptd

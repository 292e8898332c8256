// adaptd_client: the C++ client library. Links gRPC and the generated protos only (no LibTorch).
#ifndef ADAPTD_CLIENT_CLIENT_H_
#define ADAPTD_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adaptd/v1/admin.grpc.pb.h"
#include "adaptd/v1/learning.grpc.pb.h"
#include "adaptd/v1/query.grpc.pb.h"

namespace adaptd {

// The inverse of the server's ToGrpcStatus.
absl::Status FromGrpcStatus(const grpc::Status& status);

// The shortest keepalive interval an adaptd server accepts from its clients (server/server.cc).
inline constexpr int kMinKeepaliveSeconds = 10;

struct ClientOptions {
  // Largest message sent or received, in bytes. Must match the server's limit: a batch or an
  // export chunk above it fails with RESOURCE_EXHAUSTED.
  int max_message_bytes = 64 << 20;
  // Deadline of each unary call, in seconds.
  double timeout_seconds = 30;
  // Deadline of streaming calls (StreamExamples, WatchJob, Export, Import), in seconds; 0 means
  // none, because a job may train for hours and an upload is as long as its data.
  double stream_timeout_seconds = 0;
  // Seconds between pings on a call that carries no data (a watch of a queued job, a slow
  // reply), so that a connection that died silently (a dropped NAT mapping, a host gone) fails
  // the call after keepalive_timeout_seconds more instead of leaving it waiting forever.
  // 0: off; otherwise at least kMinKeepaliveSeconds, the most often the server accepts.
  double keepalive_seconds = 60;
  double keepalive_timeout_seconds = 20;
  // Sent as `authorization: Bearer <token>` on every call when non-empty.
  std::string token;
  // TLS. With `root_certs_pem` set the channel uses TLS and trusts these roots; the client
  // certificate and key (both or neither) add mutual TLS. Without roots the channel is
  // plaintext, and a client certificate is an error.
  std::string root_certs_pem;
  std::string client_cert_pem;
  std::string client_key_pem;
};

// Yields the batches of one StreamExamples call: a batch, std::nullopt at the end, or an error
// that ends the stream without its end message. The server then stores none of it, except in
// online mode (adapt_every > 0) the chunks it had already committed; StreamExamples returns the
// source's error followed by the server's account ("...; the server: ... the online chunks
// before it were stored and queued (N examples, ids [a, b)) ...").
using BatchSource = std::function<absl::StatusOr<std::optional<v1::ExampleBatch>>()>;
// Called after each batch is written with the examples sent so far.
using StreamProgress = std::function<void(int64_t examples_sent)>;
// Called with every job status WatchJob receives.
using JobCallback = std::function<void(const v1::JobStatus&)>;

// A client for the three adaptd services over one channel.
//
// Thread-safe: calls may run concurrently from many threads. Errors are the server's status
// mapped by FromGrpcStatus (UNAVAILABLE when no server answers, DEADLINE_EXCEEDED after
// `timeout_seconds`), INVALID_ARGUMENT for bad local input, or a local file's code from
// core/files.h (NOT_FOUND for a missing one, FAILED_PRECONDITION for one this process may not
// read or write, RESOURCE_EXHAUSTED for a full disk).
class AdaptdClient {
 public:
  // `target` is "host:port". Connects lazily; the first call reports UNAVAILABLE if no server
  // answers. INVALID_ARGUMENT for an empty target or inconsistent TLS options.
  static absl::StatusOr<std::unique_ptr<AdaptdClient>> Create(const std::string& target,
                                                              const ClientOptions& options = {});

  AdaptdClient(const AdaptdClient&) = delete;
  AdaptdClient& operator=(const AdaptdClient&) = delete;

  // AdminService.
  absl::StatusOr<v1::GetServerInfoResponse> GetServerInfo() const;
  absl::StatusOr<v1::ModelInfo> CreateModel(const v1::CreateModelRequest& request) const;
  absl::StatusOr<v1::ModelInfo> GetModel(const std::string& name) const;
  absl::StatusOr<v1::ListModelsResponse> ListModels() const;
  absl::StatusOr<v1::DeleteModelResponse> DeleteModel(const std::string& name) const;
  // Every version, oldest first, asked for a page at a time (a long history outgrows one
  // message).
  absl::StatusOr<v1::ListVersionsResponse> ListVersions(const std::string& name) const;
  absl::StatusOr<v1::ModelInfo> Rollback(const std::string& name, int64_t version) const;
  absl::StatusOr<v1::ModelInfo> UpdateConfig(const v1::UpdateConfigRequest& request) const;
  // The snapshot's bytes.
  absl::StatusOr<std::string> Export(const std::string& name) const;
  // Writes the snapshot to `path` and returns its size in bytes. The file appears only when the
  // whole snapshot has arrived (it is written next to `path` and renamed).
  absl::StatusOr<int64_t> ExportToFile(const std::string& name, const std::string& path) const;
  // Creates model `name` from a snapshot made by Export.
  absl::StatusOr<v1::ModelInfo> Import(const std::string& name, const std::string& snapshot) const;
  absl::StatusOr<v1::ModelInfo> ImportFromFile(const std::string& name,
                                               const std::string& path) const;

  // LearningService.
  // Sends `header`, then every batch `next` yields. `progress` (may be null) follows the upload.
  absl::StatusOr<v1::StreamExamplesResponse> StreamExamples(
      const v1::StreamHeader& header, const BatchSource& next,
      const StreamProgress& progress = nullptr) const;
  absl::StatusOr<v1::StreamExamplesResponse> StreamExamples(
      const v1::StreamHeader& header, const std::vector<v1::ExampleBatch>& batches,
      const StreamProgress& progress = nullptr) const;
  // Follows a job until it ends and returns its last status (which may be FAILED or CANCELLED:
  // that is the job's outcome, not an RPC error). `on_status` (may be null) sees every update.
  absl::StatusOr<v1::JobStatus> WatchJob(const std::string& job_id,
                                         const JobCallback& on_status = nullptr) const;
  absl::StatusOr<v1::JobStatus> CancelJob(const std::string& job_id) const;
  // A model's jobs, oldest first.
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const std::string& model) const;

  // QueryService.
  absl::StatusOr<v1::PredictResponse> Predict(const v1::PredictRequest& request) const;
  absl::StatusOr<v1::InfluenceResponse> Influence(const v1::InfluenceRequest& request) const;
  absl::StatusOr<v1::MemoryMapResponse> MemoryMap(const v1::MemoryMapRequest& request) const;
  // Every version's row, asked for a page at a time as ListVersions does; the summaries come
  // with the last page.
  absl::StatusOr<v1::EvaluateResponse> Evaluate(const std::string& name) const;

  const ClientOptions& options() const { return options_; }

 private:
  AdaptdClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  // Deadline and credentials for one call; `streaming` selects the stream deadline.
  void Prepare(grpc::ClientContext& context, bool streaming) const;
  template <typename Response, typename Call>
  absl::StatusOr<Response> Unary(const Call& call) const;
  // Streams the Export chunks of `name` to `sink`, which may fail (e.g. a full disk).
  absl::Status ExportTo(const std::string& name,
                        const std::function<absl::Status(const std::string&)>& sink) const;
  // Streams what `next_chunk` yields (std::nullopt at the end) as an Import of `name`.
  absl::StatusOr<v1::ModelInfo> ImportFrom(
      const std::string& name,
      const std::function<absl::StatusOr<std::optional<std::string>>()>& next_chunk) const;

  const ClientOptions options_;
  // Stubs are thread-safe; they share the channel.
  const std::unique_ptr<v1::AdminService::Stub> admin_;
  const std::unique_ptr<v1::LearningService::Stub> learning_;
  const std::unique_ptr<v1::QueryService::Stub> query_;
};

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_CLIENT_H_

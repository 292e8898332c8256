// The gRPC services: thin glue from requests to the registry and core. Every handler checks
// the caller's role, validates the whole request before it changes anything, and reports the
// outcome to the metrics.
#ifndef ADAPTD_SERVER_SERVICES_H_
#define ADAPTD_SERVER_SERVICES_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "adaptd/v1/admin.grpc.pb.h"
#include "adaptd/v1/learning.grpc.pb.h"
#include "adaptd/v1/query.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/registry.h"

namespace adaptd {

// The bytes that streams and imports hold before their end, across the whole server
// (--max_buffered_mb): each call takes its share as it reads and gives it back when it ends.
// Thread-safe.
class BufferBudget {
 public:
  BufferBudget(int64_t limit, Metrics* metrics) : limit_(limit), metrics_(metrics) {}
  // Takes `bytes`; or takes nothing and answers false when that would pass the limit.
  bool Take(int64_t bytes);
  void Give(int64_t bytes);
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  Metrics* const metrics_;  // may be null
  std::atomic<int64_t> held_{0};
};

struct ServiceContext {
  Registry* registry = nullptr;
  Metrics* metrics = nullptr;
  const TokenAuth* auth = nullptr;
  int max_message_bytes = 64 << 20;
  int64_t max_stream_bytes = int64_t{4} << 30;
  BufferBudget* buffers = nullptr;  // null: no limit across calls
  at::Device device = at::kCPU;  // where adaptation jobs train
};

std::unique_ptr<v1::AdminService::Service> MakeAdminService(const ServiceContext& context);
std::unique_ptr<v1::LearningService::Service> MakeLearningService(const ServiceContext& context);
std::unique_ptr<v1::QueryService::Service> MakeQueryService(const ServiceContext& context);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_SERVICES_H_

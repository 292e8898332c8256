// The gRPC services: thin glue from requests to the registry and core. Every handler checks
// the caller's role, validates the whole request before it changes anything, and reports the
// outcome to the metrics.
#ifndef ADAPTD_SERVER_SERVICES_H_
#define ADAPTD_SERVER_SERVICES_H_

#include <memory>

#include "adaptd/v1/admin.grpc.pb.h"
#include "adaptd/v1/learning.grpc.pb.h"
#include "adaptd/v1/query.grpc.pb.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/registry.h"

namespace adaptd {

struct ServiceContext {
  Registry* registry = nullptr;
  Metrics* metrics = nullptr;
  const TokenAuth* auth = nullptr;
  int max_message_bytes = 64 << 20;
  int64_t max_stream_bytes = int64_t{4} << 30;
  at::Device device = at::kCPU;  // where adaptation jobs train
};

std::unique_ptr<v1::AdminService::Service> MakeAdminService(const ServiceContext& context);
std::unique_ptr<v1::LearningService::Service> MakeLearningService(const ServiceContext& context);
std::unique_ptr<v1::QueryService::Service> MakeQueryService(const ServiceContext& context);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_SERVICES_H_

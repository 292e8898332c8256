// Prometheus metrics: metric families from prometheus-cpp's core
// library, served as text on a separate HTTP port by cpp-httplib.
#ifndef ADAPTD_SERVER_METRICS_H_
#define ADAPTD_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace adaptd {

// Thread-safe.
class Metrics {
 public:
  Metrics();
  ~Metrics();

  void ObserveRequest(const std::string& method, const std::string& code, double seconds);
  void AddExamples(const std::string& model, int64_t n);
  void ObserveAdaptation(const std::string& model, double seconds);
  void SetQueueDepth(const std::string& model, int64_t n);
  void SetModelVersion(const std::string& model, int64_t version);
  void SetMemorySize(const std::string& model, int64_t n);
  // Bytes that streams and imports hold before their end, across the server: moved by `delta`
  // (atomic, so concurrent calls cannot leave it stale).
  void AddBufferedBytes(int64_t delta);
  // Drops the model's series (after DeleteModel).
  void RemoveModel(const std::string& model);

  // The exposition text (Prometheus text format 0.0.4).
  std::string Render() const;

  // Serves GET /metrics on host:port in a background thread until destruction; port 0 picks
  // a free port. Returns the port bound.
  absl::StatusOr<int> Serve(const std::string& host, int port);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace adaptd

#endif  // ADAPTD_SERVER_METRICS_H_

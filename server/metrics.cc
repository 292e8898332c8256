#include "server/metrics.h"

#include <sys/socket.h>

#include <httplib.h>

#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"

namespace adaptd {

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests =
      prometheus::BuildCounter()
          .Name("adaptd_requests_total")
          .Help("RPCs handled, by method and status code")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& latency =
      prometheus::BuildHistogram()
          .Name("adaptd_request_seconds")
          .Help("RPC latency in seconds, by method")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& examples =
      prometheus::BuildCounter()
          .Name("adaptd_examples_ingested_total")
          .Help("Examples acknowledged (durable), by model")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& adaptation =
      prometheus::BuildHistogram()
          .Name("adaptd_adaptation_seconds")
          .Help("Wall time of successful adaptation jobs, by model")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& queue =
      prometheus::BuildGauge()
          .Name("adaptd_job_queue_depth")
          .Help("Adaptation jobs waiting, by model")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& version =
      prometheus::BuildGauge()
          .Name("adaptd_model_version")
          .Help("The published version queries see, by model")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& memory =
      prometheus::BuildGauge()
          .Name("adaptd_memory_examples")
          .Help("Memorable examples the current version keeps, by model")
          .Register(*registry);

  prometheus::Family<prometheus::Gauge>& buffered =
      prometheus::BuildGauge()
          .Name("adaptd_buffered_bytes")
          .Help("Bytes of examples and snapshots that calls hold before their end (--max_buffered_mb)")
          .Register(*registry);
  prometheus::Gauge& buffered_total = buffered.Add({});

  std::mutex mu;  // guards the families' Add/Remove against Render
  httplib::Server http;
  std::thread http_thread;
};

namespace {
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30};
  return *b;
}
const prometheus::Histogram::BucketBoundaries& AdaptBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800};
  return *b;
}
}  // namespace

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}

Metrics::~Metrics() {
  if (impl_->http_thread.joinable()) {
    impl_->http.stop();
    impl_->http_thread.join();
  }
}

void Metrics::ObserveRequest(const std::string& method, const std::string& code, double seconds) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->requests.Add({{"method", method}, {"code", code}}).Increment();
  impl_->latency.Add({{"method", method}}, LatencyBuckets()).Observe(seconds);
}

void Metrics::AddExamples(const std::string& model, int64_t n) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->examples.Add({{"model", model}}).Increment(static_cast<double>(n));
}

void Metrics::ObserveAdaptation(const std::string& model, double seconds) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->adaptation.Add({{"model", model}}, AdaptBuckets()).Observe(seconds);
}

void Metrics::SetQueueDepth(const std::string& model, int64_t n) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->queue.Add({{"model", model}}).Set(static_cast<double>(n));
}

void Metrics::AddBufferedBytes(int64_t delta) {
  impl_->buffered_total.Increment(static_cast<double>(delta));
}

void Metrics::SetModelVersion(const std::string& model, int64_t v) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->version.Add({{"model", model}}).Set(static_cast<double>(v));
}

void Metrics::SetMemorySize(const std::string& model, int64_t n) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->memory.Add({{"model", model}}).Set(static_cast<double>(n));
}

void Metrics::RemoveModel(const std::string& model) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::map<std::string, std::string> labels = {{"model", model}};
  for (auto* g : {&impl_->queue, &impl_->version, &impl_->memory}) {
    if (g->Has(labels)) g->Remove(&g->Add(labels));
  }
  if (impl_->examples.Has(labels)) impl_->examples.Remove(&impl_->examples.Add(labels));
  if (impl_->adaptation.Has(labels)) {
    impl_->adaptation.Remove(&impl_->adaptation.Add(labels, AdaptBuckets()));
  }
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

absl::StatusOr<int> Metrics::Serve(const std::string& host, int port) {
  impl_->http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Render(), "text/plain; version=0.0.4");
  });
  // httplib's default sets SO_REUSEPORT, with which a second server on a busy port would start
  // and take every other scrape; SO_REUSEADDR only lets a restart rebind at once.
  impl_->http.set_socket_options([](int sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  int bound = port;
  if (port == 0) {
    bound = impl_->http.bind_to_any_port(host.c_str());
  } else if (!impl_->http.bind_to_port(host.c_str(), port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", host, ":", port));
  }
  impl_->http_thread = std::thread([this] { impl_->http.listen_after_bind(); });
  // httplib's stop() does nothing until the listening loop has begun: a server destroyed just
  // after it started would wait in accept() forever. Return once it runs.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!impl_->http.is_running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bound;
}

}  // namespace adaptd

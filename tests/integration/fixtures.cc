#include "tests/integration/fixtures.h"

#include <dirent.h>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>

#include <chrono>
#include <thread>

#include <httplib.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/match.h"
#include "core/files.h"
#include "core/status_macros.h"
#include "server/catalog.h"
#include "server/convert.h"
#include "server/crc32c.h"
#include "server/metrics.h"

namespace adaptd {
namespace testing_service {

Dataset BlobTask(int64_t n, const std::vector<int64_t>& classes, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor centers = at::randn({kClasses, kDim}, at::detail::createCPUGenerator(7)) * 2.5;
  const at::Tensor pick = at::randint(0, static_cast<int64_t>(classes.size()), {n}, gen, at::kLong);
  Dataset d;
  d.y = at::tensor(c10::ArrayRef<int64_t>(classes), at::kLong).index_select(0, pick);
  d.x = centers.index_select(0, d.y) + at::randn({n, kDim}, gen);
  return d;
}

v1::ExampleBatch MakeBatch(const at::Tensor& x, const at::Tensor& y, const at::Tensor& client_ids) {
  v1::ExampleBatch b;
  *b.mutable_x() = TensorToProto(x);
  *b.mutable_y() = TensorToProto(y);
  if (client_ids.defined()) *b.mutable_client_ids() = TensorToProto(client_ids);
  return b;
}

absl::StatusOr<v1::StreamExamplesResponse> StreamData(const AdaptdClient& client,
                                                      const std::string& model, int64_t task,
                                                      v1::Split split,
                                                      const std::vector<int64_t>& classes,
                                                      const Dataset& data, int64_t batch_size,
                                                      bool keep_open, int64_t client_id_base) {
  v1::StreamHeader h;
  h.set_model(model);
  h.set_task_id(task);
  h.set_split(split);
  for (int64_t c : classes) h.add_classes(c);
  h.set_keep_open(keep_open);
  std::vector<v1::ExampleBatch> batches;
  for (int64_t b = 0; b < data.size(); b += batch_size) {
    const int64_t len = std::min(batch_size, data.size() - b);
    const at::Tensor client_ids =
        client_id_base >= 0 ? at::arange(client_id_base + b, client_id_base + b + len, at::kLong) : at::Tensor();
    batches.push_back(MakeBatch(data.x.narrow(0, b, len), data.y.narrow(0, b, len), client_ids));
  }
  return client.StreamExamples(h, batches);
}

v1::CreateModelRequest BlobModel(const std::string& name, bool multi, int64_t epochs) {
  v1::CreateModelRequest r;
  r.set_name(name);
  r.mutable_spec()->set_architecture("mlp");
  r.mutable_spec()->add_input_shape(kDim);
  r.mutable_spec()->set_num_classes(kClasses);
  r.mutable_spec()->add_hidden(16);
  r.mutable_config()->set_epochs(epochs);
  r.mutable_config()->set_batch_size(32);
  r.mutable_config()->set_memory_points(20);
  r.mutable_config()->set_seed(3);
  r.mutable_config()->set_head_mode(multi ? v1::HEAD_MODE_MULTI : v1::HEAD_MODE_SINGLE);
  return r;
}

int64_t WaitJobs(const AdaptdClient& client, const v1::StreamExamplesResponse& response) {
  int64_t version = -1;
  EXPECT_GT(response.job_ids_size(), 0) << "the stream queued no job to wait for";
  for (const auto& id : response.job_ids()) {
    auto last = client.WatchJob(id);
    EXPECT_TRUE(last.ok()) << last.status();
    if (!last.ok()) continue;
    EXPECT_EQ(last->state(), v1::JOB_STATE_SUCCEEDED) << last->message();
    version = std::max(version, last->version());
  }
  return version;
}

namespace {
void Walk(const std::string& root, const std::string& rel, std::map<std::string, uint32_t>& out) {
  DIR* dir = ::opendir((root + rel).c_str());
  if (!dir) {
    ADD_FAILURE() << "cannot list " << root + rel << ": " << std::strerror(errno);
    return;
  }
  while (dirent* e = ::readdir(dir)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." || absl::StartsWith(n, "catalog.sqlite")) continue;
    const std::string path = rel + "/" + n;
    struct stat st;
    if (::stat((root + path).c_str(), &st) != 0) {
      ADD_FAILURE() << "cannot stat " << root + path << ": " << std::strerror(errno);
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      Walk(root, path, out);
    } else {
      auto bytes = ReadFile(root + path);
      EXPECT_TRUE(bytes.ok()) << bytes.status();
      out[path] = bytes.ok() ? Crc32c(*bytes) : 0;
    }
  }
  ::closedir(dir);
}
}  // namespace

std::map<std::string, uint32_t> DirDigest(const std::string& dir) {
  std::map<std::string, uint32_t> out;
  Walk(dir, "", out);
  return out;
}

std::string CatalogDump(const std::string& data_dir) {
  auto catalog = Catalog::Open(data_dir + "/catalog.sqlite");
  EXPECT_TRUE(catalog.ok()) << catalog.status();
  if (!catalog.ok()) return "";
  auto dump = (*catalog)->Dump();
  EXPECT_TRUE(dump.ok()) << dump.status();
  return dump.ok() ? *dump : "";
}

namespace {

// The value of metric `name` (with its labels, if any) in the Prometheus text `text`; -1 if the
// text shows none.
double MetricIn(const std::string& text, const std::string& name) {
  const std::string key = "\n" + name + " ";
  const size_t at = text.find(key);
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + key.size()));
}

}  // namespace

double MetricValue(int port, const std::string& name) {
  httplib::Client http("127.0.0.1", port);
  auto res = http.Get("/metrics");
  return res ? MetricIn(res->body, name) : -1.0;
}

bool WaitForMetric(int port, const std::string& name, double at_least) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (MetricValue(port, name) < at_least) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

absl::StatusOr<Held> OpenHeld(const std::string& data_dir, const std::string& id) {
  Held held;
  held.metrics = std::make_unique<Metrics>();
  RegistryOptions ro;
  ro.data_dir = data_dir;
  ro.hold_training = true;
  ro.metrics = held.metrics.get();
  ADAPTD_ASSIGN_OR_RETURN(held.registry, Registry::Open(ro));
  ADAPTD_ASSIGN_OR_RETURN(held.job, held.registry->FindJob(id));
  return held;
}

bool Held::WaitForQueueDepth(const std::string& model, int64_t depth) const {
  const std::string name = "adaptd_job_queue_depth{model=\"" + model + "\"}";
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (MetricIn(metrics->Render(), name) != static_cast<double>(depth)) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

}  // namespace testing_service
}  // namespace adaptd

#include "bench/bench_util.h"

#include <cmath>

#include <algorithm>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>

#include "absl/strings/str_cat.h"
#include "core/torch_status.h"

namespace adaptd::bench {

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double Std(const std::vector<double>& v) {
  const double m = Mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return v.size() < 2 ? 0 : std::sqrt(s / static_cast<double>(v.size() - 1));
}

absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train) {
  const std::string prefix = absl::StrCat(dir, "/", train ? "train" : "t10k");
  return LoadIdxDataset(prefix + "-images-idx3-ubyte.gz", prefix + "-labels-idx1-ubyte.gz");
}

ModelSpec LeNet5Spec(int64_t classes) {
  ModelSpec spec;
  spec.architecture = Architecture::kLeNet5;
  spec.input_shape = {1, 28, 28};
  spec.num_classes = classes;
  return spec;
}

TrainOptions MpeIvonOptions(int64_t train_size, uint64_t seed) {
  TrainOptions o;
  o.optimizer = OptimizerKind::kIvon;
  o.batch_size = 256;
  o.seed = seed;
  o.cosine = true;
  o.ivon.lr = 0.1;
  o.ivon.ess = static_cast<double>(train_size);
  o.ivon.hess_init = 0.1;
  o.ivon.beta1 = 0.9;
  o.ivon.beta2 = 0.99999;
  o.ivon.weight_decay = 1e-3;
  return o;
}

FlippedLabels FlipLabels(const at::Tensor& labels, int64_t classes, int64_t count, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t n = labels.size(0);
  const at::Tensor chosen = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, count);
  const at::Tensor shift = at::randint(1, classes, {count}, gen, at::TensorOptions().dtype(at::kLong));
  FlippedLabels out;
  out.labels = labels.clone();
  out.labels.index_put_({chosen}, (labels.index_select(0, chosen) + shift).remainder(classes));
  out.flipped = at::zeros({n}, at::kBool).index_fill_(0, chosen, true);
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

void WriteJson(const std::string& path, const std::string& json) {
  if (!path.empty()) std::ofstream(path) << json;
}

void Die(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

void OrDie(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(what, s);
}

at::Device DeviceOrDie(const std::string& name) { return OrDie(ParseDevice(name), "--device"); }

void WaitFor(const at::Tensor& t) {
  // One element back to the host waits for the stream without timing a copy of the tensor.
  if (t.is_cuda()) t.reshape({-1}).narrow(0, 0, 1).cpu();
}

}  // namespace adaptd::bench

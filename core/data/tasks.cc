#include "core/data/tasks.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/model.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

absl::StatusOr<std::pair<Dataset, Dataset>> FashionMnistFlat(const std::string& dir) {
  auto load = [&](const char* split) {
    return LoadIdxDataset(absl::StrCat(dir, "/", split, "-images-idx3-ubyte.gz"),
                          absl::StrCat(dir, "/", split, "-labels-idx1-ubyte.gz"));
  };
  ADAPTD_ASSIGN_OR_RETURN(Dataset train, load("train"));
  ADAPTD_ASSIGN_OR_RETURN(Dataset test, load("t10k"));
  train.x = train.x.reshape({train.size(), 784});
  test.x = test.x.reshape({test.size(), 784});
  return std::make_pair(train, test);
}

Dataset Where(const Dataset& d, const at::Tensor& keep) {
  return d.Select(keep.nonzero().squeeze(1));
}

}  // namespace

absl::StatusOr<TaskStream> SplitFashionMnist(const std::string& dir, bool multi_head) {
  ADAPTD_ASSIGN_OR_RETURN(auto data, FashionMnistFlat(dir));
  TaskStream s;
  s.name = multi_head ? "split-fmnist-til" : "split-fmnist-cil";
  s.input_shape = {784};
  s.num_classes = 10;
  for (int64_t t = 0; t < 5; ++t) {
    const int64_t a = 2 * t, b = 2 * t + 1;
    TaskData task;
    task.task_id = t;
    const at::Tensor keep = data.first.y.eq(a).logical_or(data.first.y.eq(b));
    task.train = Where(data.first, keep);
    task.ids = keep.nonzero().squeeze(1);  // positions in the training file
    at::Tensor mask;
    if (multi_head) {
      ADAPTD_ASSIGN_OR_RETURN(mask, MakeLabelMask({a, b}, 10));
    }
    task.label_mask = mask;
    s.tasks.push_back(task);
    s.tests.push_back(Where(data.second, data.second.y.eq(a).logical_or(data.second.y.eq(b))));
    s.test_masks.push_back(mask);
  }
  return s;
}

absl::StatusOr<TaskStream> PermutedFashionMnist(const std::string& dir, int tasks) {
  if (tasks < 1) return absl::InvalidArgumentError(absl::StrCat("tasks must be >= 1; got ", tasks));
  ADAPTD_ASSIGN_OR_RETURN(auto data, FashionMnistFlat(dir));
  TaskStream s;
  s.name = "permuted-fmnist";
  s.input_shape = {784};
  s.num_classes = 10;
  for (int t = 0; t < tasks; ++t) {
    at::Tensor perm = at::arange(784, at::kLong);
    if (t > 0) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + t);
      perm = at::randperm(784, gen, at::TensorOptions().dtype(at::kLong));
    }
    TaskData task;
    task.task_id = t;
    task.train = Dataset{data.first.x.index_select(1, perm), data.first.y};
    task.ids = at::arange(data.first.size(), at::kLong) + static_cast<int64_t>(t) * data.first.size();
    s.tasks.push_back(task);
    s.tests.push_back(Dataset{data.second.x.index_select(1, perm), data.second.y});
    s.test_masks.push_back(at::Tensor());
  }
  return s;
}

absl::StatusOr<TaskStream> DigitsAdd(const std::string& sklearn_dir, uint64_t seed) {
  CsvOptions o;
  o.has_header = false;
  ADAPTD_ASSIGN_OR_RETURN(Dataset all, ReadCsvFile(sklearn_dir + "/digits.csv.gz", o));
  const at::Tensor digit = all.y;
  all.x = all.x / 16.0;
  all.y = digit.remainder(2);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor order = at::randperm(all.size(), gen, at::TensorOptions().dtype(at::kLong));
  const int64_t n_train = all.size() * 7 / 10;
  const at::Tensor train_idx = order.narrow(0, 0, n_train);
  const at::Tensor test_idx = order.narrow(0, n_train, all.size() - n_train);
  const Dataset train = all.Select(train_idx);
  const Dataset test = all.Select(test_idx);
  const at::Tensor train_digit = digit.index_select(0, train_idx);
  TaskStream s;
  s.name = "digits-add";
  s.input_shape = {64};
  s.num_classes = 2;
  for (int t = 0; t < 2; ++t) {
    const at::Tensor keep = t == 0 ? train_digit.ne(9) : train_digit.eq(9);
    TaskData task;
    task.task_id = t;
    task.train = Where(train, keep);
    task.ids = train_idx.index_select(0, keep.nonzero().squeeze(1));
    s.tasks.push_back(task);
    s.tests.push_back(test);
    s.test_masks.push_back(at::Tensor());
  }
  return s;
}

absl::StatusOr<Dataset> LoadSklearnTable(const std::string& sklearn_dir, const std::string& file) {
  CsvOptions o;
  o.has_header = false;
  o.skip_lines = 1;
  ADAPTD_ASSIGN_OR_RETURN(Dataset d, ReadCsvFile(sklearn_dir + "/" + file, o));
  const at::Tensor mean = d.x.mean(0), std = d.x.std(0).clamp_min(1e-12);
  d.x = (d.x - mean) / std;
  return d;
}

}  // namespace adaptd

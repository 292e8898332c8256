// Task streams for continual learning: sequences of tasks with their test sets, built from the
// data sets the machine has (Fashion-MNIST from the Debian package, scikit-learn's bundled CSVs).
#ifndef ADAPTD_CORE_DATA_TASKS_H_
#define ADAPTD_CORE_DATA_TASKS_H_

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/continual.h"
#include "core/data/readers.h"

namespace adaptd {

struct TaskStream {
  std::string name;
  std::vector<int64_t> input_shape;
  int64_t num_classes = 0;
  std::vector<TaskData> tasks;      // training data per task, in order
  std::vector<Dataset> tests;       // test set per task
  // Per task: the head used to evaluate it (undefined: single head).
  std::vector<at::Tensor> test_masks;
};

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";
inline constexpr char kSklearnDataDir[] = "/usr/lib/python3/dist-packages/sklearn/datasets/data";

// Split Fashion-MNIST: 5 tasks of classes (0,1), (2,3), ..., inputs flattened to 784.
// multi_head: each task has its two-class head (task-incremental); else one 10-way head
// (class-incremental).
absl::StatusOr<TaskStream> SplitFashionMnist(const std::string& dir, bool multi_head);

// Permuted Fashion-MNIST: `tasks` tasks, one 10-way head; task 0 keeps the pixel order, task t
// applies a fixed permutation drawn from seed 1000 + t.
absl::StatusOr<TaskStream> PermutedFashionMnist(const std::string& dir, int tasks);

// scikit-learn digits (8x8, scaled to [0, 1]) with label = digit mod 2 (even/odd), split 70/30
// into train and test with `seed`. Task 0 is every training digit 0-8, task 1 the training
// 9s (the K-priors paper's "add data" protocol); both tasks are tested on all test digits.
absl::StatusOr<TaskStream> DigitsAdd(const std::string& sklearn_dir, uint64_t seed);

// scikit-learn's breast_cancer.csv / wine_data.csv (first line: counts), features standardised.
absl::StatusOr<Dataset> LoadSklearnTable(const std::string& sklearn_dir, const std::string& file);

}  // namespace adaptd

#endif  // ADAPTD_CORE_DATA_TASKS_H_

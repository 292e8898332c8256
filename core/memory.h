// The memory of past tasks: a small set of past examples with the old model's soft labels,
// chosen by the memorable-past criterion (FROMP, Pan et al. NeurIPS 2020, and K-priors, Khan &
// Swaroop NeurIPS 2021): lambda_i = sum_k p_ik (1 - p_ik), the examples nearest the decision
// boundary, top per class. Random selection is the baseline.
#ifndef ADAPTD_CORE_MEMORY_H_
#define ADAPTD_CORE_MEMORY_H_

#include <cstdint>
#include <functional>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/data/readers.h"
#include "core/model.h"
#include "core/tensor_io.h"

namespace adaptd {

// Column-wise store of M examples. `soft` and `logits` hold the predictions of the model that
// was current when the present task started (the K-prior / FROMP targets); they are refreshed
// by RefreshTargets before each new task.
struct Memory {
  at::Tensor x;       // float32 [M, input...]
  at::Tensor y;       // int64 [M] true labels
  at::Tensor task;    // int64 [M] task id of each example
  at::Tensor id;      // int64 [M] example ids, as the user knows them
  at::Tensor soft;    // float32 [M, K] old model probabilities (within the example's head)
  at::Tensor logits;  // float32 [M, K] old model logits

  int64_t size() const { return y.defined() ? y.size(0) : 0; }
  Memory Select(const at::Tensor& index) const;
  // Concatenation; either side may be empty.
  static Memory Concat(const Memory& a, const Memory& b);
  Memory Clone() const;

  void AppendTo(TensorMap& out, const std::string& prefix = "memory.") const;
  static absl::StatusOr<Memory> FromTensors(const TensorMap& in,
                                            const std::string& prefix = "memory.");
};

// kLambda: lambda_i = sum_k p_ik (1 - p_ik) (FROMP, K-prior). kSensitivity: the MPE
// sensitivity sum_k |e_ik lambda_ik v_ik| (Nickl et al. 2023), which needs the posterior
// variance. kRandom: uniform, the baseline.
enum class SelectionMethod { kLambda, kSensitivity, kRandom };

// "lambda", "sensitivity" or "random"; INVALID_ARGUMENT otherwise.
absl::StatusOr<SelectionMethod> ParseSelection(const std::string& name);

struct SelectionOptions {
  SelectionMethod method = SelectionMethod::kLambda;
  // Points kept for the task; split evenly across the classes present (a class short of points
  // gives its shortfall to the others).
  int64_t points = 40;
  int64_t batch_size = 1000;  // examples scored per forward pass
  uint64_t seed = 0;          // random selection
  at::Tensor variance;        // kSensitivity: the posterior's sigma^2, flat over parameters
  // Asked before each batch (may be null): once it returns true, selection ends with CANCELLED.
  std::function<bool()> should_stop;
  // The first `held` rows of the data are this task's memory from earlier runs on it (online
  // mode, a later stream): they compete with the new rows for the same quota. Under random
  // selection each stands for `held_weight` examples (the task's examples learnt before /
  // held): per class, how many places go to new rows is hypergeometric over the examples the
  // held rows stand for and the new ones, so the result is a uniform draw over all of the
  // task's examples (a uniform subset of a uniform sample is uniform).
  int64_t held = 0;
  double held_weight = 1;
};

// lambda_i = sum_k p_ik (1 - p_ik) for probabilities [N, K].
at::Tensor LambdaScores(const at::Tensor& probs);

// Selects `options.points` examples of one task, streaming over `data` in batches: only indices
// and scores of the current best candidates are kept, never a second copy of the task.
// `ids` (int64 [N], optional) are the examples' ids (default 0..N-1); `label_mask` the task's
// head (optional). The returned memory has soft labels and logits from `model`.
absl::StatusOr<Memory> SelectMemory(Model& model, const Dataset& data, const at::Tensor& ids,
                                    int64_t task_id, const at::Tensor& label_mask,
                                    const SelectionOptions& options);

// Recomputes `memory.soft` and `memory.logits` with `model`, using each example's task head
// from `task_masks` (bool [T, K], row t = task t's head; undefined = single head).
absl::Status RefreshTargets(Model& model, Memory& memory, const at::Tensor& task_masks);

// Mixed inputs between memory examples of the same task: `per_example` rows for each example i,
// x = u x_i + (1 - u) x_j with j a uniform draw among the examples of i's task (i itself
// included) and u ~ U(0, 1). Each row keeps i's label, task and id, and has no targets
// (RefreshTargets gives them). Empty when the memory is.
Memory MixMemory(const Memory& memory, int64_t per_example, at::Generator& gen);

}  // namespace adaptd

#endif  // ADAPTD_CORE_MEMORY_H_

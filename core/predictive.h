// Predictive distributions from a model and its IVON posterior (ALGORITHMS.md §1.5):
//   kMean:  softmax(f(x; m))                          ("IVON@mean")
//   kBayes: (1/S) sum_s softmax(f(x; theta_s)), theta_s ~ N(m, sigma^2)   (posterior averaging)
#ifndef ADAPTD_CORE_PREDICTIVE_H_
#define ADAPTD_CORE_PREDICTIVE_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/flat_params.h"
#include "core/model.h"
#include "core/posterior.h"

namespace adaptd {

enum class PredictMode { kMean, kBayes };

struct PredictOptions {
  PredictMode mode = PredictMode::kMean;
  int64_t samples = 64;       // S for kBayes
  int64_t batch_size = 2000;  // examples per forward pass
  at::Tensor label_mask;      // optional bool [K]: a task's head
};

// Probabilities float32 [N, K] on the CPU. `flat` must bind `model`'s parameters; kBayes writes
// samples into them and restores the posterior mean before returning. `posterior` may be null
// for kMean (the model's current weights are used). INVALID_ARGUMENT for bad input or kBayes
// without a posterior.
absl::StatusOr<at::Tensor> PredictProbs(Model& model, FlatParameters& flat,
                                        const Posterior* posterior, const at::Tensor& x,
                                        const PredictOptions& options, const at::Generator& gen);

}  // namespace adaptd

#endif  // ADAPTD_CORE_PREDICTIVE_H_

// Predictive distributions from a model and its IVON posterior (Shen et al. 2024, posterior averaging), with their
// uncertainty decomposition:
//   kMean:       softmax(f(x; m))                                          ("IVON@mean")
//   kBayes:      (1/S) sum_s softmax(f(x; theta_s)), theta_s ~ N(m, sigma^2)  (posterior averaging;
//                per example, so the examples of a batch need not share a draw)
//   kLinearized: logits ~ N(f(x; m), J Sigma J^T) (the network linearized at the mean), with the
//                probit approximation p_k ~= softmax_k(f / sqrt(1 + pi/8 diag(J Sigma J^T)))
//                (MacKay 1992; Lu et al., arXiv:2006.07584).
// Entropies are in nats. Total entropy H[E p] splits into expected entropy E H[p] (aleatoric:
// noise the model expects in the labels) and mutual information H[E p] - E H[p] (epistemic:
// disagreement between plausible weights), which is what separates unfamiliar inputs.
#ifndef ADAPTD_CORE_PREDICTIVE_H_
#define ADAPTD_CORE_PREDICTIVE_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/flat_params.h"
#include "core/model.h"
#include "core/posterior.h"

namespace adaptd {

enum class PredictMode { kMean, kBayes, kLinearized };

struct PredictOptions {
  PredictMode mode = PredictMode::kMean;
  // S: posterior samples for kBayes; logit samples from N(f, J Sigma J^T) for kLinearized's
  // expected entropy and per-class standard deviation (no extra forward passes).
  int64_t samples = 64;
  // Examples per forward pass (kLinearized: at most; fewer for many classes or samples, see
  // SweepRowsPerBatch).
  int64_t batch_size = 2000;
  at::Tensor label_mask;      // optional bool [K]: a task's head
  // kBayes on a model of Linear layers and elementwise activations (MLP, logistic regression):
  // draw each example's pre-activations, layer by layer, from their Gaussian given the layer's
  // input (the local reparameterization of Kingma et al. 2015) instead of whole weight vectors.
  // Each example's predictive distribution is the same; the draws cost a unit per neuron, not
  // per weight, and the first layer's product is shared by all samples. Other models (and false)
  // draw weight vectors. Each example then gets its own draws: for a given seed its answer
  // depends on its position in x and on batch_size (equal calls still give equal answers).
  bool local_reparameterization = true;
};

// Per example, on the CPU in the parameters' dtype.
struct Prediction {
  at::Tensor probs;               // [N, K] the predictive probabilities
  at::Tensor label;               // int64 [N] argmax of probs
  at::Tensor total_entropy;       // [N] H[probs]
  at::Tensor expected_entropy;    // [N] E H[p] (aleatoric); kMean: = total
  at::Tensor mutual_information;  // [N] H[probs] - E H[p] (epistemic), clamped at 0; kMean: 0
  at::Tensor std;                 // [N, K] standard deviation of p_k under the posterior; kMean: 0
};

// `flat` must bind `model`'s parameters. kMean with a posterior, kBayes and kLinearized write
// the posterior mean into the parameters before they return, failing or not (kBayes writes
// samples meanwhile).
// `posterior` may be null for kMean (the model's current weights are used) and is required
// otherwise. kLinearized's probabilities are deterministic; its entropies and std are Monte
// Carlo over `samples` logit draws (MI is clamped at 0 because the probit total and the sampled
// expectation are different approximations). INVALID_ARGUMENT for bad input, or kBayes /
// kLinearized without a posterior.
absl::StatusOr<Prediction> Predict(Model& model, FlatParameters& flat, const Posterior* posterior,
                                   const at::Tensor& x, const PredictOptions& options,
                                   const at::Generator& gen);

// Predict(...).probs, float32 [N, K] on the CPU.
absl::StatusOr<at::Tensor> PredictProbs(Model& model, FlatParameters& flat,
                                        const Posterior* posterior, const at::Tensor& x,
                                        const PredictOptions& options, const at::Generator& gen);

}  // namespace adaptd

#endif  // ADAPTD_CORE_PREDICTIVE_H_

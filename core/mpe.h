// The memory-perturbation equation (MPE; Nickl, Xu, Tailor, Möllenhoff, Khan, "The
// Memory-Perturbation Equation: Understanding Model's Sensitivity to Data", NeurIPS 2023,
// arXiv:2310.19273): how a model's predictions move when a training example
// is removed, from one posterior and per-example Jacobians, without retraining.
//
// With Sigma the posterior covariance (IVON: diag(1 / (lambda (h + delta))), a Laplace
// covariance, ...), J_i = d f(x_i) / d theta the logits' Jacobian at the mean and the softmax
// likelihood's residual e_i = p_i - onehot(y_i), removing example i moves the mean by
// Sigma grad l_i (Eq. 10) and so its logits by
//   f(theta^{\i}) - f(theta) ~= J_i Sigma J_i^T e_i                                  (Eq. 12)
// which the reference code (and Eq. 16) approximates per class as e_ik v_ik with
// v_i = diag(J_i Sigma J_i^T). From these:
//   leave-one-out NLL   mean_i -log softmax(f_i + shift_i)[y_i]                        (Eq. 15-16)
//   sensitivity         sum_k |e_ik lambda_ik v_ik|,  lambda = p (1 - p)              (§4.3)
//   influence on x*     p*(theta^{\j}) - p*(theta) ~= grad p*(x*)^T Sigma grad l_j     (Eq. 10)
//
// Every function here takes the model at its posterior mean (IVON writes the mean into the
// weights after each step) and runs on the model's device; data sets may live anywhere and are
// moved over batch by batch. Per-example results come back on the CPU in the parameters' dtype.
// Inputs are float32, or float64 for a model whose parameters were switched to float64.
// Not thread-safe: each call runs the model. Errors: INVALID_ARGUMENT (naming what was expected
// and what was received) for bad input, before anything runs.
#ifndef ADAPTD_CORE_MPE_H_
#define ADAPTD_CORE_MPE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/readers.h"
#include "core/jacobian.h"
#include "core/model.h"

namespace adaptd {

// How the leave-one-out shift of the logits is formed from J Sigma J^T.
enum class LooMode {
  kDiagonal,  // e_i * v_i per class: Eq. 16 and the reference implementation
  kFull,      // (J_i Sigma J_i^T) e_i: Eq. 12 with the K x K block (one more K x K product)
};

struct MpeOptions {
  // Examples per batch, at most (memory grows with batch * K * the widest layer, so a model of
  // many classes takes fewer: SweepRowsPerBatch).
  int64_t batch_size = 256;
  // Optional bool [K]: a task's head; classes outside it get probability zero.
  at::Tensor label_mask;
  LooMode loo = LooMode::kDiagonal;
  // Use the posterior without example i's own curvature (Sherman-Morrison / Woodbury on
  // Lambda_i = diag(p) - p p^T), as Eq. 10's (S^{\i})^-1 asks. Exact for linear-Gaussian models
  // (Cook's formula, MPE Eq. 2); the paper's deep-network estimates leave it off.
  bool exclude_self = false;
  // Asked before each batch (may be null): once it returns true, the computation ends with
  // CANCELLED (a query whose client went away).
  std::function<bool()> should_stop;

  absl::Status Validate() const;
};

// Softmax cross-entropy terms at logits f [N, K] with labels y [N] (the paper's Eq. 12-16):
//   p = softmax(f), e = p - onehot(y), lambda = p (1 - p) (the diagonal of diag(p) - p p^T).
// Logits of -infinity (masked classes) give p = e = lambda = 0.
struct SoftmaxTerms {
  at::Tensor probs;
  at::Tensor error;
  at::Tensor lambda;
};
SoftmaxTerms ComputeSoftmaxTerms(const at::Tensor& logits, const at::Tensor& labels);

// f(theta^{\i}) - f(theta) [N, K] for each example, from the loss's gradient with respect to the
// outputs e [N, K] (softmax: p - onehot(y); Gaussian: (f - y) / noise variance), its Hessian
// Lambda ([N, K] diagonal or [N, K, K]) and Gamma = J Sigma J^T ([N, K] diagonal v, or
// [N, K, K]):
//   Gamma diagonal:  e v,                    exclude_self: e v / (1 - lambda v)
//   Gamma full:      Gamma e,                exclude_self: Gamma (I - Lambda Gamma)^-1 e
// Dtype-generic and model-free: the regression test feeds it a Gaussian likelihood
// (e = f - y, Lambda = 1 / noise variance). INVALID_ARGUMENT for inconsistent shapes;
// FAILED_PRECONDITION with exclude_self when 1 - lambda v <= 0 or I - Lambda Gamma is singular
// for some example (Sigma does not contain that example's curvature, e.g. a diagonal
// approximation).
absl::StatusOr<at::Tensor> LooLogitShift(const at::Tensor& error, const at::Tensor& lambda,
                                         const at::Tensor& gram, bool exclude_self);

// The memory map (the paper's Fig. 1): per-example coordinates, ready to plot: prediction error
// against prediction variance, with the sensitivity that ranks what the model remembers.
struct MemoryMap {
  at::Tensor error;        // e = p - onehot(y)                        [N, K]
  at::Tensor variance;     // v = diag(J Sigma J^T)                    [N, K]
  at::Tensor lambda;       // lambda = p (1 - p)                       [N, K]
  at::Tensor sensitivity;  // sum_k |e_k lambda_k v_k|                  [N]
};
absl::StatusOr<MemoryMap> ComputeMemoryMap(Model& model, const Covariance& sigma,
                                           const Dataset& data, const MpeOptions& options = {});

// Leave-one-out estimate over a data set (Eq. 15-16): a generalization estimate available
// during training without a validation set.
struct LooEstimate {
  double nll = 0;       // mean_i -log softmax(f_i + shift_i)[y_i]
  double accuracy = 0;  // mean_i [argmax(f_i + shift_i) == y_i]
  at::Tensor nll_per_example;  // [N]
  at::Tensor shift;            // f(theta^{\i}) - f(theta) [N, K]
};
absl::StatusOr<LooEstimate> EstimateLoo(Model& model, const Covariance& sigma, const Dataset& data,
                                        const MpeOptions& options = {});

// Both from one pass over the data: J Sigma J^T, which dominates each, is computed once, so
// this costs about half of the two calls above. With options.loo == kFull the map's variance is
// the diagonal of the K x K block.
struct MemoryMapAndLoo {
  MemoryMap map;
  LooEstimate loo;
};
absl::StatusOr<MemoryMapAndLoo> ComputeMemoryMapAndLoo(Model& model, const Covariance& sigma,
                                                       const Dataset& data,
                                                       const MpeOptions& options = {});

// Each example's self-influence: the signed change of its own predicted-class probability if
// it were removed, grad p_{i,c_i}^T Sigma grad l_i = a_i^T (J_i Sigma J_i^T) e_i with
// a_i = d p_{c_i} / d f = p_{c_i} (onehot(c_i) - p_i) and c_i = argmax p_i; with
// options.exclude_self, a_i^T Gamma_i (I - Lambda_i Gamma_i)^-1 e_i. Always the full K x K
// block (options.loo is ignored). [N]
absl::StatusOr<at::Tensor> SelfInfluence(Model& model, const Covariance& sigma,
                                         const Dataset& data, const MpeOptions& options = {});

// Which influences a top-k list keeps.
enum class InfluenceOrder {
  kMagnitude,   // largest |delta p*|
  kSupporting,  // most negative: removing the example lowers the query's probability
  kOpposing,    // most positive: removing the example raises it
};

struct InfluenceOptions {
  int64_t top_k = 10;
  InfluenceOrder order = InfluenceOrder::kMagnitude;
  int64_t batch_size = 256;
  at::Tensor label_mask;     // optional bool [K]
  int64_t query_class = -1;  // the class whose probability is tracked; -1: the predicted one
  // Remove example j's own curvature from the posterior, as for MpeOptions::exclude_self:
  // delta p*_j = (J_j u)^T (I - Lambda_j Gamma_j)^-1 e_j (push-through identity). Costs a
  // J Sigma J^T block per example on top of the forward pass with a tangent.
  bool exclude_self = false;

  absl::Status Validate() const;
};

struct InfluenceEntry {
  int64_t index = 0;     // the example's index in the stream
  double influence = 0;  // p*(theta^{\j}) - p*(theta), first order
};

// Influence of training examples on one query x*: delta p*_j = u^T J_j^T e_j with
// u = Sigma grad p*(x*), i.e. one backward pass for the query and then one forward pass with a
// tangent per batch of stored examples (no per-example backward). Streams a store of any size:
// Add() batches as they are read; the top-k list is kept as they pass.
// Owned by one caller; the model must outlive it and stay unchanged while it is used.
class InfluenceScorer {
 public:
  // REQUIRES: query [1, input_shape...] float32 (or [input_shape...]). INVALID_ARGUMENT for bad
  // input or options.
  static absl::StatusOr<std::unique_ptr<InfluenceScorer>> Create(Model& model,
                                                                 const Covariance& sigma,
                                                                 const at::Tensor& query,
                                                                 const InfluenceOptions& options = {});

  // Scores examples first_index, first_index + 1, ... (x [B, ...] float32, y int64 [B]) and
  // returns their influences [B] (CPU). INVALID_ARGUMENT for bad input.
  absl::StatusOr<at::Tensor> Add(const at::Tensor& x, const at::Tensor& y, int64_t first_index);
  // The best top_k seen so far in the chosen order, best first.
  std::vector<InfluenceEntry> Top() const;

  int64_t query_class() const { return query_class_; }
  double query_probability() const { return query_probability_; }

 private:
  InfluenceScorer(Model& model, std::unique_ptr<LogitJacobian> jacobian,
                  const InfluenceOptions& options)
      : model_(model), jacobian_(std::move(jacobian)), options_(options) {}

  Model& model_;
  std::unique_ptr<LogitJacobian> jacobian_;
  InfluenceOptions options_;
  Covariance sigma_;
  at::Tensor u_;  // Sigma grad p*(x*)
  int64_t query_class_ = 0;
  double query_probability_ = 0;
  at::Tensor top_keys_;     // [<= top_k] ranking keys, best first
  at::Tensor top_values_;   // [<= top_k] influences
  at::Tensor top_indices_;  // [<= top_k] int64
};

// InfluenceScorer over a whole data set: the top_k examples for `query`, best first.
absl::StatusOr<std::vector<InfluenceEntry>> TopInfluences(Model& model, const Covariance& sigma,
                                                          const at::Tensor& query,
                                                          const Dataset& data,
                                                          const InfluenceOptions& options = {});

}  // namespace adaptd

#endif  // ADAPTD_CORE_MPE_H_

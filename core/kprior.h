// Regularisers for adapting a model to new data without its old data, as loss terms on the
// current weights (autograd gives their gradients; under IVON they are evaluated at each weight
// sample, so the Price estimator also sees their curvature).
//
// K-prior (Khan & Swaroop, "Knowledge-Adaptation Priors", NeurIPS 2021, §3):
//   K(w) = sum_{i in M} D_f(f_i(w) || f_i(w_old)) + 1/2 (w - w_old)^T P (w - w_old),
// where D_f is the Bregman divergence of the likelihood's log-partition (categorical:
// cross-entropy against the old soft labels; Gaussian: half the squared difference) and P the
// weight-space precision. With P = the old prior precision and M = all old data, the gradient of
// new loss + K equals the full-batch retraining gradient for GLMs (Khan & Swaroop 2021, Sec. 3).
#ifndef ADAPTD_CORE_KPRIOR_H_
#define ADAPTD_CORE_KPRIOR_H_

#include <vector>

#include <ATen/core/Tensor.h>

namespace adaptd {

enum class Likelihood { kCategorical, kGaussian };

// sum_i D_f(f_i || f_i_old) for outputs f [M, K]. Categorical: f are logits (masked classes at
// -inf are ignored), `target` the old probabilities [M, K]; the term is
// -sum_i sum_k target_ik log softmax(f_i)_k. Gaussian: f and target are outputs; 1/2 sum (f - target)^2.
at::Tensor FunctionSpaceTerm(const at::Tensor& f, const at::Tensor& target, Likelihood likelihood);

// The replay correction of the deep-net K-prior (Daxberger et al., TMLR 2023, "NN error
// correction"): sum_i f_i . (p_old_i - onehot(y_i)) with p_old fixed. Its gradient
// J^T (p_old - y) added to the soft-label term's J^T (p - p_old) gives the true-label gradient
// J^T (p - y) on memory points, which class-incremental streams need.
at::Tensor ReplayCorrectionTerm(const at::Tensor& logits, const at::Tensor& p_old,
                                const at::Tensor& labels);

// Forgetting examples with a K-prior (Khan & Swaroop 2021, "remove_data"): the replay
// correction with the opposite sign, sum_r f_r . (onehot(y_r) - p_old_r), p_old fixed at the
// model's probabilities before the removal. The weight term and the soft labels of a K-prior
// stand for the gradient of all the data learnt; at the old solution w* that gradient vanishes,
// so the removed examples' share J^T (p_old - y) is minus the rest's. This term's gradient
// J^T (y - p_old) takes that share out: beside the soft-label term over the remaining examples,
// a GLM's gradient becomes that of the data without them, exactly (Forget, in continual.h).
at::Tensor RemovalTerm(const at::Tensor& logits, const at::Tensor& p_old, const at::Tensor& labels);

// Knowledge distillation at temperature T > 0 (Hinton et al.'s scaling):
//   T^2 sum_i CE(softmax(f_i / T), softmax(f_old_i / T)),
// whose gradient with respect to f_i is T (softmax(f_i / T) - softmax(f_old_i / T)). Softened
// targets carry the old model's ranking of the other classes, which confident soft labels at
// T = 1 no longer do. The deep-net K-prior uses it on the memory beside the soft-label term and
// the replay correction (Daxberger et al., "EWC + FR + replay", T = 2). Classes at -inf in both
// f and f_old (masked) are ignored.
at::Tensor DistillationTerm(const at::Tensor& logits, const at::Tensor& old_logits, double temperature);

// The function term on inputs that are not in the memory, for the label sets the old model was
// taught (groups [G, K], bool; each row one label set: a past task's head, or the old classes of a
// single head):
//   sum_i sum_g CE(softmax_g(f_i), softmax_g(f_old_i)),
// where softmax_g restricts the softmax to group g. Its gradient with respect to f_i is
// sum_g (softmax_g(f_i) - softmax_g(f_old_i)) on each group's classes. On the new task's inputs
// this keeps how the old model ranks its own classes there (learning without forgetting, Li &
// Hoiem 2016) without constraining the classes the new task teaches.
at::Tensor LabelSetTerm(const at::Tensor& logits, const at::Tensor& old_logits, const at::Tensor& groups);

// 1/2 sum_j precision_j (w_j - anchor_j)^2, where w is the model's parameters in order (e.g.
// FlatParameters::views()) and anchor/precision are flat vectors over them (precision may have
// one element, used for all). Adapt trains on its gradient through
// Trainer::SetQuadraticPenalty (no autograd pass over P each step); this is its value.
at::Tensor WeightSpaceTerm(const std::vector<at::Tensor>& parameters, const at::Tensor& anchor,
                           const at::Tensor& precision);

}  // namespace adaptd

#endif  // ADAPTD_CORE_KPRIOR_H_

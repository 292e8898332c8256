// Continual adaptation: one task at a time, without the old data, under one of several
// regularisers. The K-prior is the default; FROMP, EWC, experience replay, fine-tuning and joint
// retraining are the baselines (Khan & Swaroop 2021; Pan et al. 2020; Kirkpatrick et al. 2017).
//
// Adapt(state, task, config) trains IVON on the task's data plus the method's term for the
// past, then selects the task's memorable examples and returns the new state. State values are
// immutable: Adapt never modifies its input, so a service can publish one version while the
// next is being built.
#ifndef ADAPTD_CORE_CONTINUAL_H_
#define ADAPTD_CORE_CONTINUAL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/data/readers.h"
#include "core/flat_params.h"
#include "core/ivon.h"
#include "core/memory.h"
#include "core/model.h"
#include "core/posterior.h"
#include "core/tensor_io.h"
#include "core/train.h"

namespace adaptd {

enum class Method { kKPrior, kFromp, kEwc, kReplay, kFinetune, kJoint };

// "kprior", "fromp", "ewc", "replay", "finetune", "joint"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Method> ParseMethod(const std::string& name);
std::string MethodName(Method method);

struct AdaptConfig {
  Method method = Method::kKPrior;
  // IVON hyperparameters. ess is set per task to ess_factor times the number of examples
  // trained on; weight_decay is the first task's prior precision per example (delta): every
  // later task keeps that prior's total precision, prior_ess * delta (joint retraining takes
  // the current weight_decay, over the first task's size).
  IvonOptions ivon;
  // IVON draws its training weight samples at ess = ess_factor * N: above 1 they come from a
  // colder posterior (noise std / sqrt(ess_factor)). The posterior that the state carries keeps
  // ess = N, so its precision still counts the data. 1: the plain variational posterior.
  double ess_factor = 1.0;
  int64_t epochs = 10;
  // Each task trains for at least this many steps: where `epochs` passes over a small task (an
  // online-mode chunk, say) take fewer, Adapt makes as many more passes as that needs. A prior
  // of far more data than the task holds otherwise barely moves in a few steps. 0: off.
  int64_t min_steps = 0;
  // Bound on epochs and min_steps: a job's step count stays far from int64 overflow, and a
  // mistyped value fails at once rather than training forever.
  static constexpr int64_t kMaxSteps = 1000000000;
  int64_t batch_size = 128;
  // Memory examples kept per task (K-prior, FROMP) or, times the tasks seen, the replay buffer's
  // capacity (experience replay).
  int64_t memory_points = 40;
  SelectionMethod selection = SelectionMethod::kLambda;
  // Memory examples drawn per step for the K-prior / replay terms.
  int64_t memory_batch_size = 64;
  // Weight of the memory term's per-example mean, relative to the new data's mean loss.
  // Negative: |M| / N_new, the exact K-prior scaling (memory and new examples weigh the same).
  double memory_weight = 1.0;
  // K-prior: also apply the replay correction (class-incremental streams).
  bool replay_correction = false;
  // K-prior: when > 0, also distil the old model on the memory at this temperature,
  // T^2 CE(softmax(f / T), softmax(f_old / T)) at the memory term's weight (DistillationTerm).
  // Daxberger et al.'s functional term is this at T = 2 without the T^2 factor (Hinton's
  // scaling, kept here so the term's gradient does not shrink with T), so at T = 2 it weighs 4x
  // theirs at the same memory weight. 0: off.
  double distill_temperature = 0;
  // K-prior: weight of the function term on the new task's own inputs (LabelSetTerm on a
  // minibatch of memory_batch_size of them, per example): the old model's outputs there are kept
  // on the label sets the new task leaves alone (past heads; on a single head, the old classes
  // that the task does not teach), as in learning without forgetting. 0: off.
  double new_input_weight = 0;
  // K-prior: weight c of the logit-curvature term 1/2 (w - w_old)^T diag(c G) (w - w_old), where
  // G = sum over past tasks of sum_i J_i^T J_i (J_i the logits' Jacobian on the task's head, at
  // the end of that task, from curvature_points of its examples). It is the Gauss-Newton
  // (Laplace) approximation, in weight space, of keeping every past input's logits: the part of
  // the past that a small memory does not cover. c G / N_new also joins IVON's initial Hessian,
  // as the old precision does, so that IVON's steps are scaled to the term. 0: off.
  double curvature_weight = 0;
  int64_t curvature_points = 1000;
  // K-prior weight-space precision: the old IVON posterior's lambda (h + delta) (true), or the
  // prior precision lambda delta alone (false: the exact K-prior of the GLM identity).
  bool posterior_precision = true;
  // K-prior: mixed inputs per memory example (MixMemory), x = u x_i + (1 - u) x_j with j a
  // uniform draw among the memory examples of i's task and u ~ U(0, 1), labelled by the old model
  // at the start of the task; the soft-label term (with distillation, not the replay correction)
  // also runs on a minibatch of memory_batch_size of them per step, at memory_weight. It keeps the
  // old function between the memorable points, where a stream's new tasks bring new inputs of the
  // same classes (domain-incremental); where new classes may lie between old examples
  // (class-incremental) it holds them to the old classes. 0: off.
  int64_t memory_mixup = 0;
  // FROMP: the function-space term's weight (tau) and the kernel jitter.
  double fromp_tau = 1.0;
  double fromp_jitter = 1e-5;
  // EWC: multiplies the Laplace penalty 1/2 (w - w*)^T F (w - w*) (F: the summed per-example
  // empirical Fisher of all past tasks).
  double ewc_lambda = 1.0;
  uint64_t seed = 0;
  // Where training runs. The state stays on the CPU: Adapt moves the model, the memory and the
  // regularisers' tensors to `device` and brings the new posterior back.
  at::Device device = at::kCPU;

  absl::Status Validate() const;
};

struct TaskData {
  int64_t task_id = 0;   // 0, 1, 2, ... (the order tasks arrive in)
  Dataset train;
  at::Tensor label_mask;  // bool [K]: the task's head (multi-head); undefined: single head
  at::Tensor ids;         // int64 [N] example ids (optional; default: positions)
  // Examples of this task that earlier runs learnt (online mode, a later stream to the task):
  // its memory rows from those runs stand for them when the memory is chosen at random.
  int64_t learnt_before = 0;
};

// Everything carried from one task to the next.
struct ContinualState {
  ModelSpec spec;
  at::Tensor mean;        // flat posterior mean (the model's weights)
  at::Tensor hess;        // flat IVON Hessian estimate h
  double ess = 0;         // lambda of the last task: precision = ess (hess + delta)
  double delta = 0;       // IVON weight decay of the last task
  double prior_delta = 0; // the first task's prior precision per example
  double prior_ess = 0;   // and its ess: prior precision = prior_ess * prior_delta
  Memory memory;          // memorable examples (K-prior, FROMP) or the replay buffer
  at::Tensor task_masks;  // bool [T, K]: row t = task t's head; undefined for single head
  at::Tensor fisher;      // EWC: summed empirical Fisher of past tasks (flat)
  at::Tensor curvature;   // K-prior: summed logit Gauss-Newton diagonal of past tasks (flat)
  // K-prior: the newest task's term of `curvature`, the only one the weight term adds to a
  // posterior precision (which carries the older ones: IVON's h starts from the weight term's
  // precision and keeps it). Undefined once a run's posterior has taken it in.
  at::Tensor curvature_last;
  Memory seen;            // joint retraining only: every example so far
  int64_t stream_seen = 0;  // replay: examples the reservoir has seen
  int64_t tasks_seen = 0;

  // Posterior precision ess (hess + delta), flat.
  at::Tensor Precision() const;
  // The posterior of the last task; FAILED_PRECONDITION before the first task (no hess yet).
  absl::StatusOr<Posterior> ToPosterior() const;

  // Serialization of everything but `spec` (the caller stores the spec its own way); a
  // bit-exact round trip. FromTensors: INVALID_ARGUMENT for missing or inconsistent tensors.
  void AppendTo(TensorMap& out) const;
  static absl::StatusOr<ContinualState> FromTensors(const TensorMap& in, const ModelSpec& spec);
};

// A fresh state: weights from `seed`, nothing learnt yet.
absl::StatusOr<ContinualState> InitialState(const ModelSpec& spec, uint64_t seed);

struct AdaptStats {
  int64_t steps = 0;
  double final_loss = 0;  // mean cross-entropy on the new data over the last epoch (Forget:
                          // on the remaining memory's soft labels)
  double seconds = 0;     // wall time of the whole adaptation
  int64_t memory_size = 0;
  // IVON's StepReport figures at the end (0 without IVON): how many times its step grew as h
  // fell, and its largest step against its first (see StepReport).
  double step_growth = 0, peak_step = 0;
};

struct AdaptResult {
  ContinualState state;
  AdaptStats stats;
};

// Learns `task`. INVALID_ARGUMENT for bad config or data (shapes, labels outside the head);
// CANCELLED when `should_stop` returns true between steps. `progress` gets every step.
absl::StatusOr<AdaptResult> Adapt(const ContinualState& state, const TaskData& task,
                                  const AdaptConfig& config, const ProgressFn& progress = nullptr,
                                  const std::function<bool()>& should_stop = nullptr);

// Examples to forget, as they were learnt.
struct ForgetData {
  Dataset removed;       // inputs and labels
  at::Tensor task_ids;   // int64 [R]: the task each example was learnt in (its head, multi-head)
  at::Tensor ids;        // int64 [R]: their example ids; memory rows with the same task and id go
};

// Knowledge adaptation to removed data (the K-prior's "remove_data", Khan & Swaroop 2021): the
// model forgets examples it learnt, without the rest of its data. From the state's mean w*, IVON
// minimises the K-prior of what remains:
//   sum_{i in M \ R} CE(softmax(f_i(w)), p*_i) + 1/2 (w - w*)^T P (w - w*)
//     + sum_{r in R} RemovalTerm(f_r(w), p*_r, y_r),
// p* the model's probabilities before, P the weight term's precision as in Adapt (posterior or
// prior, plus the logit curvature when configured). The remaining memory is the data (ess =
// ess_factor |M \ R|, `epochs` and `min_steps` as in Adapt; replay_correction, distillation and
// the new-input term are Adapt's and play no part). For a GLM whose memory holds all its data
// and P its prior precision, the minimiser is batch retraining without R, exactly. It trains
// `epochs` passes over the remaining memory, which may be few steps: set min_steps. The new
// state's memory drops R's rows; it counts the same tasks. Its precision is IVON's over this
// run, which starts from P: it is not lowered by R's curvature (nor is the logit curvature).
// INVALID_ARGUMENT for a method other than the K-prior or bad data (shapes, labels outside a
// head, unknown tasks, an example named twice, or a label other than the one a memory row holds
// for it); FAILED_PRECONDITION before the first task or when the memory holds no example
// besides the removed ones; ABORTED when training diverges, or when the old model fitted the
// remaining memory's labels better than a uniform guess and the new one does not
// (Trainer::CheckLearnt); CANCELLED as in Adapt.
absl::StatusOr<AdaptResult> Forget(const ContinualState& state, const ForgetData& data,
                                   const AdaptConfig& config, const ProgressFn& progress = nullptr,
                                   const std::function<bool()>& should_stop = nullptr);

// The state's model with its mean weights.
absl::StatusOr<std::unique_ptr<Model>> MaterializeModel(const ContinualState& state);

// EWC's Laplace precision: the per-example empirical Fisher of the mean cross-entropy within
// `mask` (optional head), summed over `data`, estimated from minibatches of `batch` examples at
// the flat parameters' current values.
at::Tensor EmpiricalFisher(Model& model, FlatParameters& flat, const Dataset& data,
                           const at::Tensor& mask, int64_t batch);

// Accuracy of the state's mean model on `test` within `label_mask` (optional head).
absl::StatusOr<double> EvaluateAccuracy(const ContinualState& state, const Dataset& test,
                                        const at::Tensor& label_mask);

}  // namespace adaptd

#endif  // ADAPTD_CORE_CONTINUAL_H_

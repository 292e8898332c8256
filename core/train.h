// The training loop shared by IVON and its baselines (Adam, SGD): minibatches, a cosine learning
// rate schedule, multi-head label masks, progress reports and bit-exact checkpoints.
#ifndef ADAPTD_CORE_TRAIN_H_
#define ADAPTD_CORE_TRAIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/readers.h"
#include "core/flat_params.h"
#include "core/ivon.h"
#include "core/model.h"
#include "core/tensor_io.h"

namespace adaptd {

enum class OptimizerKind { kIvon, kAdam, kSgd };

// "ivon", "adam", "sgd"; INVALID_ARGUMENT otherwise.
absl::StatusOr<OptimizerKind> ParseOptimizer(const std::string& name);
std::string OptimizerName(OptimizerKind kind);

struct TrainOptions {
  OptimizerKind optimizer = OptimizerKind::kIvon;
  // IVON hyperparameters; ivon.lr is IVON's peak learning rate.
  IvonOptions ivon;
  // Adam / SGD peak learning rate, L2 weight decay (added to the gradient) and SGD momentum.
  double lr = 1e-3;
  double weight_decay = 0.0;
  double momentum = 0.9;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  // Cosine decay of the learning rate from its peak to 0 over total_steps; else constant.
  bool cosine = true;
  int64_t batch_size = 256;
  // IVON weight samples per step (S).
  int64_t train_samples = 1;
  // Seeds the trainer's generator: shuffling and weight sampling.
  uint64_t seed = 0;

  absl::Status Validate() const;
};

struct StepReport {
  int64_t step = 0;         // steps taken so far, this one included
  int64_t total_steps = 0;  // the schedule's length
  double loss = 0;          // this minibatch's mean cross-entropy (regularisers excluded)
  double lr = 0;            // the learning rate this step used
  // IVON only (0 for Adam and SGD), measured by TrainEpoch at steps 1, 1 + kStepGrowthEvery,
  // 1 + 2 kStepGrowthEvery, ... and the schedule's last (Ivon::StepScale is a median over the
  // weights: cheap that often, not every step), and repeated in between:
  // - step_growth: Ivon::StepScale() over its value at step 1, how many times the step has
  //   grown since the trainer's first as h fell;
  // - peak_step: the largest, over the measurements so far, of lr / (peak lr) * step_growth: the
  //   step's size against the first, which the schedule takes at its peak rate. A long
  //   unclipped run overshoots where it passes about 10 (docs/api.md, long jobs).
  // A non-finite measurement (h no longer finite, as a run diverges) leaves both as they were.
  double step_growth = 0;
  double peak_step = 0;
};
inline constexpr int64_t kStepGrowthEvery = 100;
using ProgressFn = std::function<void(const StepReport&)>;

// Labels for training: int64 [batch] classes, or float32 [batch, num_classes] probabilities
// (soft labels, 0 outside an example's head). INVALID_ARGUMENT otherwise.
absl::Status CheckLabels(const at::Tensor& y, int64_t batch, int64_t num_classes);
// The mean cross-entropy of `logits` [B, K] (masked classes at -inf) against either kind of
// labels.
at::Tensor MeanCrossEntropy(const at::Tensor& logits, const at::Tensor& y);

// An extra term added to each minibatch's mean loss before backward (a regulariser such as a
// K-prior), evaluated at the weights the step uses (IVON: at each weight sample). It returns a
// scalar tensor connected to the model's parameters, in the same units as the mean loss.
using ExtraLossFn = std::function<at::Tensor()>;

// Owns the optimizer state of one model; not thread-safe. The model must outlive the trainer.
class Trainer {
 public:
  // `total_steps` is the schedule's length (epochs * batches per epoch). INVALID_ARGUMENT for
  // bad options; the model's parameters are rebound into flat buffers (FlatParameters).
  // `initial_hess` (optional, flat) starts IVON's Hessian from a carried-over posterior.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(Model* model, const TrainOptions& options,
                                                         int64_t total_steps,
                                                         const at::Tensor& initial_hess = at::Tensor());

  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step on a minibatch (x float32 [B, ...], y as CheckLabels takes them: classes
  // or probabilities). `label_mask` (bool [K]
  // or per example [B, K], optional) restricts the logits to a task's head. Returns the
  // minibatch's mean cross-entropy (the data term; `extra` is trained on but not included).
  absl::StatusOr<double> Step(const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& label_mask = at::Tensor(),
                              const ExtraLossFn& extra = nullptr);

  // One shuffled pass over `data` in minibatches; returns the mean cross-entropy. A per-example
  // `label_mask` is [N, K]. `should_stop` is polled between steps: CANCELLED when it says so.
  // ABORTED, naming the step, when training diverges (a minibatch loss that is not finite, or
  // weights that are not at the epoch's end): the weights are then garbage and must be dropped.
  absl::StatusOr<double> TrainEpoch(const Dataset& data, const at::Tensor& label_mask = at::Tensor(),
                                    const ProgressFn& progress = nullptr,
                                    const ExtraLossFn& extra = nullptr,
                                    const std::function<bool()>& should_stop = nullptr);

  // Whether the mean model learnt `data` at all: ABORTED when its cross-entropy on `data`
  // (within `label_mask`, as in TrainEpoch; every k-th example, at most 8,192) is above that of
  // a uniform guess over each example's classes, ln |head| (with soft labels too: a uniform
  // guess scores ln |head| against any probabilities over the head). A run that collapses onto one class
  // keeps a finite loss, so TrainEpoch's divergence check does not see it; this one does (and
  // so does a run that barely moved; the message names both remedies).
  absl::Status CheckLearnt(const Dataset& data, const at::Tensor& label_mask = at::Tensor());

  // A quadratic penalty (scale / 2) sum_j precision_j (w_j - anchor_j)^2 on the flat parameters
  // (a Laplace or K-prior weight term). Each step adds its gradient,
  // scale * precision * (w - anchor), straight into the flat gradient at the weights the step
  // uses (IVON: at each sample): what an ExtraLossFn returning the term would give, without
  // autograd's passes over every parameter. Like `extra`, it is trained on but not in the
  // returned loss. anchor [P] and precision ([P] or [1]) are on the parameters' device in their
  // dtype, finite (precision >= 0), and held, not copied: the caller keeps them unchanged while
  // the trainer runs. scale >= 0 and finite (0: off). INVALID_ARGUMENT otherwise, and the
  // previous penalty (or none) stays.
  absl::Status SetQuadraticPenalty(const at::Tensor& anchor, const at::Tensor& precision,
                                   double scale);

  // The learning rate the next step will use.
  double NextLr() const;
  int64_t steps_taken() const { return steps_; }
  int64_t total_steps() const { return total_steps_; }
  // StepReport's figures as last measured.
  double step_growth() const { return step_growth_; }
  double peak_step() const { return peak_step_; }

  // IVON's posterior; nullptr for Adam and SGD.
  const Ivon* ivon() const { return ivon_.get(); }
  Model& model() { return *model_; }
  FlatParameters& flat() { return flat_; }
  // Weight-sampling generator, on the parameters' device.
  at::Generator& generator() { return gen_; }
  const TrainOptions& options() const { return options_; }
  // Persistent optimizer state in bytes (IVON: m, g, h; Adam: two moments; SGD: momentum).
  int64_t OptimizerStateBytes() const;

  // Everything needed to continue bit-identically from an epoch boundary: weights, optimizer
  // state, step, generators. TrainEpoch draws each epoch's order when it starts, so a state
  // saved inside an epoch (from a progress callback, say) resumes with a fresh order: a valid
  // run, not the same one. LoadState refuses, with INVALID_ARGUMENT and the trainer unchanged,
  // a state from another optimizer, schedule length, batch size, number of weight samples per
  // step or schedule shape.
  std::string SaveState() const;
  absl::Status LoadState(const std::string& bytes);

 private:
  Trainer(Model* model, const TrainOptions& options, int64_t total_steps, FlatParameters flat);
  absl::Status Diverged(const std::string& what, double lr, const Dataset& data) const;

  Model* model_;  // Not owned.
  TrainOptions options_;
  int64_t total_steps_;
  int64_t steps_ = 0;
  FlatParameters flat_;
  at::Generator gen_;          // weight samples (device of the parameters)
  at::Generator shuffle_gen_;  // minibatch order (CPU)
  std::unique_ptr<Ivon> ivon_;
  // SetQuadraticPenalty's term; undefined anchor: none.
  at::Tensor penalty_anchor_, penalty_precision_;
  double penalty_scale_ = 0;
  // StepReport's step_growth and peak_step as last measured, and Ivon::StepScale() at step 1
  // (0: not yet measured); all three are saved with the state.
  double step_growth_ = 0, peak_step_ = 0, first_step_scale_ = 0;
  at::Tensor moment1_;  // Adam first moment / SGD momentum buffer
  at::Tensor moment2_;  // Adam second moment
};

}  // namespace adaptd

#endif  // ADAPTD_CORE_TRAIN_H_

#include "core/train.h"

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

at::Generator MakeGenerator(const at::Device& device, uint64_t seed) {
  if (device.is_cuda()) {
    at::Generator gen = at::globalContext().defaultGenerator(device).clone();
    gen.set_current_seed(seed);
    return gen;
  }
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

}  // namespace

absl::StatusOr<OptimizerKind> ParseOptimizer(const std::string& name) {
  if (name == "ivon") return OptimizerKind::kIvon;
  if (name == "adam") return OptimizerKind::kAdam;
  if (name == "sgd") return OptimizerKind::kSgd;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown optimizer '", name, "'; expected one of ivon, adam, sgd"));
}

std::string OptimizerName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kIvon: return "ivon";
    case OptimizerKind::kAdam: return "adam";
    case OptimizerKind::kSgd: return "sgd";
  }
  return "unknown";
}

absl::Status TrainOptions::Validate() const {
  if (optimizer == OptimizerKind::kIvon) ADAPTD_RETURN_IF_ERROR(ivon.Validate());
  if (!(lr >= 0) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be finite and >= 0; got ", lr));
  }
  if (!(weight_decay >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("weight_decay must be >= 0; got ", weight_decay));
  }
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be >= 1; got ", batch_size));
  }
  if (train_samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat("train_samples must be >= 1; got ", train_samples));
  }
  return absl::OkStatus();
}

Trainer::Trainer(Model* model, const TrainOptions& options, int64_t total_steps,
                 FlatParameters flat)
    : model_(model),
      options_(options),
      total_steps_(total_steps),
      flat_(std::move(flat)),
      gen_(MakeGenerator(flat_.params().device(), options.seed)),
      shuffle_gen_(MakeGenerator(at::kCPU, options.seed ^ 0x5eedULL)) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(Model* model, const TrainOptions& options,
                                                         int64_t total_steps,
                                                         const at::Tensor& initial_hess) {
  ADAPTD_RETURN_IF_ERROR(options.Validate());
  if (total_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat("total_steps must be >= 1; got ", total_steps));
  }
  ADAPTD_ASSIGN_OR_RETURN(FlatParameters flat, FlatParameters::Bind(model->Parameters()));
  std::unique_ptr<Trainer> t(new Trainer(model, options, total_steps, std::move(flat)));
  if (options.optimizer == OptimizerKind::kIvon) {
    ADAPTD_ASSIGN_OR_RETURN(t->ivon_, Ivon::Create(t->flat_.params(), t->flat_.grads(),
                                                   options.ivon, initial_hess));
  } else {
    t->moment1_ = at::zeros_like(t->flat_.params());
    if (options.optimizer == OptimizerKind::kAdam) t->moment2_ = at::zeros_like(t->flat_.params());
  }
  return t;
}

absl::Status Trainer::SetQuadraticPenalty(const at::Tensor& anchor, const at::Tensor& precision,
                                          double scale) {
  const at::Tensor& p = flat_.params();
  auto fits = [&](const at::Tensor& t, bool scalar_ok) {
    return t.defined() && t.dim() == 1 && (t.numel() == p.numel() || (scalar_ok && t.numel() == 1)) &&
           t.scalar_type() == p.scalar_type() && t.device() == p.device();
  };
  if (!fits(anchor, false) || !fits(precision, true) || !(scale >= 0) || !std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quadratic penalty: expected anchor [", p.numel(), "] and precision [", p.numel(),
        "] or [1] like the parameters (", DescribeTensor(p), ") and a finite scale >= 0; got ",
        DescribeTensor(anchor), ", ", DescribeTensor(precision), " and ", scale));
  }
  const bool valid = CallTorch([&]() -> absl::StatusOr<bool> {
                       return anchor.isfinite().all().item<bool>() &&
                              precision.isfinite().all().item<bool>() &&
                              precision.ge(0).all().item<bool>();
                     }).value_or(false);
  if (!valid) {
    return absl::InvalidArgumentError(
        "quadratic penalty: the anchor must be finite and the precision finite and >= 0");
  }
  penalty_anchor_ = anchor;
  penalty_precision_ = precision;
  penalty_scale_ = scale;
  return absl::OkStatus();
}

absl::Status CheckLabels(const at::Tensor& y, int64_t batch, int64_t num_classes) {
  const bool hard = y.defined() && y.scalar_type() == at::kLong && y.dim() == 1 &&
                    y.size(0) == batch;
  const bool soft = y.defined() && y.scalar_type() == at::kFloat && y.dim() == 2 &&
                    y.size(0) == batch && y.size(1) == num_classes;
  if (hard && batch > 0 &&
      (y.min().item<int64_t>() < 0 || y.max().item<int64_t>() >= num_classes)) {
    // On a GPU an out-of-range class is a device-side assert that spoils the whole process.
    return absl::InvalidArgumentError(absl::StrCat("labels must lie in [0, ", num_classes,
                                                   "); got ", y.min().item<int64_t>(), " to ",
                                                   y.max().item<int64_t>()));
  }
  if (hard || soft) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("labels must be int64 [", batch,
                                                 "] or probabilities float32 [", batch, ", ",
                                                 num_classes, "]; got ", DescribeTensor(y)));
}

// Labels inside their heads: a hard label the mask hides, or soft labels with mass there, has
// an infinite loss, which would otherwise read as the run diverging. `label_mask` is [K] or
// [N, K] (undefined: every class).
absl::Status CheckLabelsInHead(const at::Tensor& y, const at::Tensor& label_mask) {
  if (!label_mask.defined()) return absl::OkStatus();
  const at::Tensor mask = label_mask.to(y.device());
  if (y.dim() == 1) {
    const at::Tensor inside = mask.dim() == 1 ? mask.index_select(0, y)
                                              : mask.gather(1, y.unsqueeze(1)).squeeze(1);
    if (inside.all().item<bool>()) return absl::OkStatus();
    const int64_t i = inside.logical_not().nonzero()[0][0].item<int64_t>();
    const at::Tensor head = (mask.dim() == 1 ? mask : mask[i]).nonzero().squeeze(1).cpu();
    return absl::InvalidArgumentError(absl::StrCat(
        "labels must lie in their head: example ", i, " has label ", y[i].item<int64_t>(),
        ", outside classes [", absl::StrJoin(head.data_ptr<int64_t>(),
                                             head.data_ptr<int64_t>() + head.numel(), ", "),
        "]"));
  }
  const double outside = (y * mask.logical_not()).sum().item<double>();
  if (outside == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "soft labels must put no mass outside their head; got ", outside, " in all"));
}

at::Tensor MeanCrossEntropy(const at::Tensor& logits, const at::Tensor& y) {
  if (y.dim() == 1) return at::cross_entropy_loss(logits, y);
  return SoftCrossEntropySum(logits, y) / static_cast<double>(y.size(0));
}

double Trainer::NextLr() const {
  const double peak = options_.optimizer == OptimizerKind::kIvon ? options_.ivon.lr : options_.lr;
  if (!options_.cosine) return peak;
  const double frac = std::min(1.0, static_cast<double>(steps_) / static_cast<double>(total_steps_));
  return peak * 0.5 * (1.0 + std::cos(M_PI * frac));
}

absl::StatusOr<double> Trainer::Step(const at::Tensor& x, const at::Tensor& y,
                                     const at::Tensor& label_mask, const ExtraLossFn& extra) {
  ADAPTD_RETURN_IF_ERROR(model_->CheckInput(x));
  ADAPTD_RETURN_IF_ERROR(CheckLabels(y, x.size(0), model_->spec().num_classes));
  return CallTorch([&]() -> absl::StatusOr<double> {
    ADAPTD_RETURN_IF_ERROR(CheckLabelsInHead(y, label_mask));
    const double lr = NextLr();
    model_->SetTraining(true);
    // Returns the data term alone: a regulariser's value (the K-prior's weight term has a
    // noise floor of about P / 2N at IVON's weight samples) would hide how well the data fit.
    auto loss_at_current_weights = [&]() {
      at::Tensor logits = MaskLogits(model_->Forward(x), label_mask);
      const at::Tensor data_loss = MeanCrossEntropy(logits, y);
      (extra ? data_loss + extra() : data_loss).backward();
      if (penalty_anchor_.defined() && penalty_scale_ > 0) {
        at::NoGradGuard no_grad;
        flat_.grads().addcmul_(penalty_precision_, flat_.params() - penalty_anchor_, penalty_scale_);
      }
      return data_loss.item<double>();
    };
    double loss_sum = 0;
    if (ivon_) {
      // An error or exception before the step completes (a forward that throws, an `extra`
      // that fails) discards the step, so the trainer stays usable at the mean.
      struct Discard {
        Ivon* ivon;
        ~Discard() {
          if (ivon != nullptr) ivon->DiscardStep();
        }
      } discard{ivon_.get()};
      for (int64_t s = 0; s < options_.train_samples; ++s) {
        ADAPTD_RETURN_IF_ERROR(ivon_->BeginSample(gen_));
        loss_sum += loss_at_current_weights();
        ADAPTD_RETURN_IF_ERROR(ivon_->EndSample());
      }
      ADAPTD_RETURN_IF_ERROR(ivon_->Step(lr));
      discard.ivon = nullptr;
      ++steps_;
      return loss_sum / static_cast<double>(options_.train_samples);
    }
    flat_.ZeroGrad();
    loss_sum = loss_at_current_weights();
    at::NoGradGuard no_grad;
    at::Tensor p = flat_.params();
    at::Tensor g = flat_.grads();
    if (options_.weight_decay > 0) g.add_(p, options_.weight_decay);
    ++steps_;
    if (options_.optimizer == OptimizerKind::kSgd) {
      moment1_.mul_(options_.momentum).add_(g);
      p.sub_(moment1_, lr);
    } else {  // Adam (Kingma & Ba, 2015, Algorithm 1), as torch.optim.Adam computes it.
      const double b1 = options_.adam_beta1, b2 = options_.adam_beta2;
      moment1_.mul_(b1).add_(g, 1.0 - b1);
      moment2_.mul_(b2).addcmul_(g, g, 1.0 - b2);
      const double bc1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
      const double bc2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
      at::Tensor denom = moment2_.sqrt().div_(std::sqrt(bc2)).add_(options_.adam_eps);
      p.addcdiv_(moment1_, denom, -lr / bc1);
    }
    return loss_sum;
  });
}

absl::Status Trainer::Diverged(const std::string& what, double lr, const Dataset& data) const {
  // How far the inputs reach: features far from unit scale (unscaled measurements, say) make
  // any learning rate diverge, and no setting but scaling them helps.
  return absl::AbortedError(absl::StrCat(
      "training diverged: ", what, " at step ", steps_, " of ", total_steps_,
      " (learning rate ", lr, "; the examples' features reach |x| = ",
      // Two reductions, not abs(): no copy of what may be every example seen.
      std::max(-data.x.min().item<double>(), data.x.max().item<double>()),
      "). Lower the learning rate, raise the initial Hessian (hess_init) or set a clip radius; "
      "features far from unit scale need scaling"));
}

absl::Status Trainer::CheckLearnt(const Dataset& data, const at::Tensor& label_mask) {
  if (data.size() == 0) return absl::OkStatus();
  return CallTorch([&]() -> absl::Status {
    model_->SetTraining(false);
    // Every stride-th example: at most kCheckExamples forward passes, whatever the data's order.
    constexpr int64_t kCheckExamples = 8192;
    const int64_t stride = (data.size() + kCheckExamples - 1) / kCheckExamples;
    const at::Tensor rows = at::arange(0, data.size(), stride, at::kLong);
    const at::Tensor mask = label_mask.defined() && label_mask.dim() == 2
                                ? label_mask.index_select(0, rows)
                                : label_mask;
    const at::Tensor logits = ChunkedLogits(*model_, data.x.index_select(0, rows), mask);
    const double loss =
        MeanCrossEntropy(logits, data.y.index_select(0, rows).to(logits.device())).item<double>();
    const int64_t k = logits.size(1);
    double uniform = std::log(static_cast<double>(k));
    if (mask.defined()) {
      const at::Tensor heads = mask.dim() == 2 ? mask.sum(1) : mask.sum().expand({1});
      uniform = heads.to(at::kDouble).log().mean().item<double>();
    }
    if (std::isfinite(loss) && loss <= uniform) return absl::OkStatus();
    const double peak = ivon_ ? options_.ivon.lr : options_.lr;
    return absl::AbortedError(absl::StrCat(
        "training learnt nothing of the task: the mean model's cross-entropy on ",
        rows.numel() == data.size() ? "the " : absl::StrCat(rows.numel(), " of the "),
        data.size(), " examples trained on is ", loss,
        ", no better than a uniform guess over their classes (", uniform, "), after step ",
        steps_, " of ", total_steps_, " (peak learning rate ", peak,
        "). If the run diverged (e.g. a task learnt as one class), lower the learning rate, raise "
        "the initial Hessian (hess_init) or set a clip radius; if it barely moved (a posterior "
        "of far more data than the task holds), raise the learning rate, the epochs or "
        "min_steps"));
  });
}

absl::StatusOr<double> Trainer::TrainEpoch(const Dataset& data, const at::Tensor& label_mask,
                                           const ProgressFn& progress, const ExtraLossFn& extra,
                                           const std::function<bool()>& should_stop) {
  const int64_t n = data.size();
  if (n == 0) return absl::InvalidArgumentError("cannot train on an empty data set");
  const at::Tensor order = at::randperm(n, shuffle_gen_, at::TensorOptions().dtype(at::kLong));
  const at::Device device = flat_.params().device();
  double loss_sum = 0;
  double lr = 0;
  int64_t batches = 0;
  for (int64_t start = 0; start < n; start += options_.batch_size) {
    if (should_stop && should_stop()) {
      return absl::CancelledError(absl::StrCat("training cancelled after ", steps_, " steps"));
    }
    const at::Tensor idx = order.narrow(0, start, std::min(options_.batch_size, n - start));
    lr = NextLr();
    const at::Tensor mask = (label_mask.defined() && label_mask.dim() == 2)
                                ? label_mask.index_select(0, idx).to(device)
                                : label_mask;
    ADAPTD_ASSIGN_OR_RETURN(double loss, Step(data.x.index_select(0, idx).to(device),
                                              data.y.index_select(0, idx).to(device), mask, extra));
    if (!std::isfinite(loss)) return Diverged(absl::StrCat("the loss became ", loss), lr, data);
    loss_sum += loss;
    ++batches;
    if (ivon_ && ((steps_ - 1) % kStepGrowthEvery == 0 || steps_ == total_steps_)) {
      const double scale = ivon_->StepScale();
      if (std::isfinite(scale)) {
        if (first_step_scale_ == 0) first_step_scale_ = scale;
        step_growth_ = scale / first_step_scale_;
        if (options_.ivon.lr > 0) {
          peak_step_ = std::max(peak_step_, lr / options_.ivon.lr * step_growth_);
        }
      }
    }
    if (progress) progress(StepReport{steps_, total_steps_, loss, lr, step_growth_, peak_step_});
  }
  // The last step's update is not seen by any loss of this epoch.
  if (!flat_.params().isfinite().all().item<bool>()) {
    return Diverged("the weights are no longer finite", lr, data);
  }
  return loss_sum / static_cast<double>(batches);
}

int64_t Trainer::OptimizerStateBytes() const {
  if (ivon_) return ivon_->StateBytes();
  int64_t bytes = moment1_.numel() * moment1_.element_size();
  if (moment2_.defined()) bytes += moment2_.numel() * moment2_.element_size();
  return bytes;
}

std::string Trainer::SaveState() const {
  TensorMap state;
  state["trainer.params"] = flat_.params();
  state["trainer.steps"] = ScalarTensor(steps_);
  state["trainer.total_steps"] = ScalarTensor(total_steps_);
  state["trainer.optimizer"] = ScalarTensor(static_cast<int64_t>(options_.optimizer));
  state["trainer.batch_size"] = ScalarTensor(options_.batch_size);
  state["trainer.train_samples"] = ScalarTensor(options_.train_samples);
  state["trainer.cosine"] = ScalarTensor(static_cast<int64_t>(options_.cosine));
  state["trainer.step_growth"] = ScalarTensor(step_growth_);
  state["trainer.peak_step"] = ScalarTensor(peak_step_);
  state["trainer.first_step_scale"] = ScalarTensor(first_step_scale_);
  state["trainer.generator"] = gen_.get_state();
  state["trainer.shuffle_generator"] = shuffle_gen_.get_state();
  if (ivon_) ivon_->AppendTo(state);
  if (moment1_.defined()) state["trainer.moment1"] = moment1_;
  if (moment2_.defined()) state["trainer.moment2"] = moment2_;
  return SerializeTensors(state);
}

absl::Status Trainer::LoadState(const std::string& bytes) {
  ADAPTD_ASSIGN_OR_RETURN(TensorMap state, ParseTensors(bytes));
  ADAPTD_ASSIGN_OR_RETURN(int64_t kind, GetInt(state, "trainer.optimizer"));
  if (kind != static_cast<int64_t>(options_.optimizer)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint was written by optimizer ", OptimizerName(static_cast<OptimizerKind>(kind)),
        "; this trainer uses ", OptimizerName(options_.optimizer)));
  }
  const at::Tensor& p = flat_.params();
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor params,
                          GetTensor(state, "trainer.params", p.scalar_type(), p.numel()));
  ADAPTD_ASSIGN_OR_RETURN(int64_t steps, GetInt(state, "trainer.steps"));
  ADAPTD_ASSIGN_OR_RETURN(int64_t total, GetInt(state, "trainer.total_steps"));
  if (total != total_steps_ || steps < 0 || steps > total) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint is at step ", steps, " of ", total, "; this trainer runs ", total_steps_,
        " steps (its schedule would not be the checkpoint's)"));
  }
  // Steps that draw other minibatches or weight samples, or another schedule, would not
  // continue the checkpoint's run.
  struct Setting {
    const char* key;
    const char* what;
    int64_t mine;
  };
  for (const Setting& want : {Setting{"trainer.batch_size", "batch size", options_.batch_size},
                              Setting{"trainer.train_samples", "weight samples per step",
                                      options_.train_samples},
                              Setting{"trainer.cosine", "cosine schedule (1: on)",
                                      static_cast<int64_t>(options_.cosine)}}) {
    ADAPTD_ASSIGN_OR_RETURN(int64_t theirs, GetInt(state, want.key));
    if (theirs != want.mine) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint was written with ", want.what, " ",
                                                     theirs, "; this trainer uses ", want.mine));
    }
  }
  ADAPTD_ASSIGN_OR_RETURN(double step_growth, GetDouble(state, "trainer.step_growth"));
  ADAPTD_ASSIGN_OR_RETURN(double peak_step, GetDouble(state, "trainer.peak_step"));
  ADAPTD_ASSIGN_OR_RETURN(double first_step_scale, GetDouble(state, "trainer.first_step_scale"));
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor gen_state, GetTensor(state, "trainer.generator", at::kByte));
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor shuffle_state,
                          GetTensor(state, "trainer.shuffle_generator", at::kByte));
  at::Tensor m1, m2;
  if (!ivon_) {
    ADAPTD_ASSIGN_OR_RETURN(m1, GetTensor(state, "trainer.moment1", p.scalar_type(), p.numel()));
    if (moment2_.defined()) {
      ADAPTD_ASSIGN_OR_RETURN(m2, GetTensor(state, "trainer.moment2", p.scalar_type(), p.numel()));
    }
  }
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    // Generators first: they are the only part that can still be rejected, and a rejected
    // checkpoint must leave the trainer as it was.
    const at::Tensor old_gen = gen_.get_state(), old_shuffle = shuffle_gen_.get_state();
    try {
      gen_.set_state(gen_state);
      shuffle_gen_.set_state(shuffle_state);
    } catch (const c10::Error& e) {
      gen_.set_state(old_gen);
      shuffle_gen_.set_state(old_shuffle);
      return absl::InvalidArgumentError(absl::StrCat("checkpoint generator state is invalid: ",
                                                     std::string(e.what_without_backtrace()).substr(0, 200)));
    }
    if (ivon_) {
      const absl::Status s = ivon_->LoadFrom(state);
      if (!s.ok()) {
        gen_.set_state(old_gen);
        shuffle_gen_.set_state(old_shuffle);
        return s;
      }
    }
    flat_.params().copy_(params);
    if (m1.defined()) moment1_.copy_(m1);
    if (m2.defined()) moment2_.copy_(m2);
    steps_ = steps;
    step_growth_ = step_growth;
    peak_step_ = peak_step;
    first_step_scale_ = first_step_scale;
    return absl::OkStatus();
  });
}

}  // namespace adaptd

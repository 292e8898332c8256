#include "core/ivon.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

std::atomic<bool> g_fused_kernels{true};

constexpr int64_t kGrain = 1 << 15;

struct StepScalars {
  double b1, b2, delta, ess, lr, debias, clip;
};

// One pass over m, g, h and the parameters. kSingle: this step had one sample whose gradient
// is in `grad` and whose weights are in `params`; otherwise `grad`/`hhat_src` hold the means.
template <typename T, bool kSingle>
__attribute__((always_inline)) inline void StepBody(T* __restrict m, T* __restrict g,
                                                    T* __restrict h, T* __restrict params,
                                                    const T* __restrict grad,
                                                    const T* __restrict hhat_src,
                                                    const StepScalars& s, int64_t begin,
                                                    int64_t end) {
  const T b1 = static_cast<T>(s.b1), b2 = static_cast<T>(s.b2), delta = static_cast<T>(s.delta);
  const T ess = static_cast<T>(s.ess), lr = static_cast<T>(s.lr);
  const T inv_debias = static_cast<T>(1.0 / s.debias), clip = static_cast<T>(s.clip);
  const T one_m_b1 = static_cast<T>(1.0 - s.b1), one_m_b2 = static_cast<T>(1.0 - s.b2);
  const T half_sq = static_cast<T>(0.5 * (1.0 - s.b2) * (1.0 - s.b2));
  for (int64_t i = begin; i < end; ++i) {
    const T mi = m[i], hi = h[i], gi = grad[i];
    const T hd = hi + delta;
    T hhat;
    if (kSingle) {
      hhat = gi * (params[i] - mi) * (ess * hd);  // g * (theta - m) / sigma^2
    } else {
      hhat = hhat_src[i];
    }
    const T gn = b1 * g[i] + one_m_b1 * gi;
    const T diff = hi - hhat;
    const T hn = b2 * hi + one_m_b2 * hhat + half_sq * diff * diff / hd;
    T u = (gn * inv_debias + delta * mi) / (hn + delta);
    u = std::min(std::max(u, -clip), clip);
    const T mn = mi - lr * u;
    g[i] = gn;
    h[i] = hn;
    m[i] = mn;
    params[i] = mn;
  }
}

#define ADAPTD_DEFINE_STEP_KERNEL(NAME, T, SINGLE)                                             \
  __attribute__((target_clones("avx2", "default"))) void NAME(                                 \
      T* m, T* g, T* h, T* params, const T* grad, const T* hhat, const StepScalars& s,         \
      int64_t begin, int64_t end) {                                                            \
    StepBody<T, SINGLE>(m, g, h, params, grad, hhat, s, begin, end);                          \
  }
ADAPTD_DEFINE_STEP_KERNEL(StepFloatSingle, float, true)
ADAPTD_DEFINE_STEP_KERNEL(StepFloatAvg, float, false)
ADAPTD_DEFINE_STEP_KERNEL(StepDoubleSingle, double, true)
ADAPTD_DEFINE_STEP_KERNEL(StepDoubleAvg, double, false)
#undef ADAPTD_DEFINE_STEP_KERNEL

template <typename T>
void FusedStep(at::Tensor& m, at::Tensor& g, at::Tensor& h, at::Tensor& params,
               const at::Tensor& grad, const at::Tensor* hhat, const StepScalars& s) {
  T* mp = m.data_ptr<T>();
  T* gp = g.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* pp = params.data_ptr<T>();
  const T* gr = grad.data_ptr<T>();
  const T* hh = hhat ? hhat->data_ptr<T>() : nullptr;
  at::parallel_for(0, m.numel(), kGrain, [&](int64_t b, int64_t e) {
    if constexpr (std::is_same_v<T, float>) {
      hh ? StepFloatAvg(mp, gp, hp, pp, gr, hh, s, b, e)
         : StepFloatSingle(mp, gp, hp, pp, gr, nullptr, s, b, e);
    } else {
      hh ? StepDoubleAvg(mp, gp, hp, pp, gr, hh, s, b, e)
         : StepDoubleSingle(mp, gp, hp, pp, gr, nullptr, s, b, e);
    }
  });
}

// The same update in plain tensor ops: any device, and the oracle for the fused kernels. Every
// allocation comes before the state changes, so a failed one (a GPU out of memory) leaves the
// optimizer as it was.
void TensorStep(at::Tensor& m, at::Tensor& g, at::Tensor& h, at::Tensor& params,
                const at::Tensor& ghat, const at::Tensor& hhat, const StepScalars& s) {
  at::Tensor gn = g.mul(s.b1);
  gn.add_(ghat, 1.0 - s.b1);
  const at::Tensor hd = h + s.delta;
  at::Tensor hn = h * s.b2 + hhat * (1.0 - s.b2) +
                  (h - hhat).square_().div_(hd).mul_(0.5 * (1.0 - s.b2) * (1.0 - s.b2));
  at::Tensor u = (gn / s.debias + m * s.delta).div_(hn + s.delta);
  if (std::isfinite(s.clip)) u.clamp_(-s.clip, s.clip);
  // From here on nothing allocates: the in-place updates cannot fail half-way.
  g.copy_(gn);
  m.sub_(u, s.lr);
  h.copy_(hn);
  params.copy_(m);
}

bool UseFused(const at::Tensor& t) {
  return g_fused_kernels.load(std::memory_order_relaxed) && t.device().is_cpu() &&
         t.is_contiguous();
}

}  // namespace

absl::Status IvonOptions::Validate() const {
  auto bad = [](const char* field, const char* must, double value) {
    return absl::InvalidArgumentError(
        absl::StrCat("IVON option ", field, " must be ", must, "; got ", value));
  };
  if (!(lr >= 0) || !std::isfinite(lr)) return bad("lr", "finite and >= 0", lr);
  if (!(ess > 0) || !std::isfinite(ess)) return bad("ess", "finite and > 0 (normally the training-set size)", ess);
  if (!(hess_init > 0) || !std::isfinite(hess_init)) return bad("hess_init", "finite and > 0", hess_init);
  if (!(beta1 >= 0 && beta1 < 1)) return bad("beta1", "in [0, 1)", beta1);
  if (!(beta2 >= 0 && beta2 < 1)) return bad("beta2", "in [0, 1)", beta2);
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) return bad("weight_decay", "finite and >= 0", weight_decay);
  if (!(clip_radius > 0)) return bad("clip_radius", "> 0 (infinity disables clipping)", clip_radius);
  return absl::OkStatus();
}

Ivon::Ivon(at::Tensor params, at::Tensor grads, Posterior posterior, const IvonOptions& options)
    : params_(std::move(params)),
      grads_(std::move(grads)),
      posterior_(std::move(posterior)),
      momentum_(at::zeros_like(params_)),
      options_(options) {}

absl::StatusOr<std::unique_ptr<Ivon>> Ivon::Create(at::Tensor params, at::Tensor grads,
                                                   const IvonOptions& options) {
  return Create(std::move(params), std::move(grads), options, at::Tensor());
}

absl::StatusOr<std::unique_ptr<Ivon>> Ivon::Create(at::Tensor params, at::Tensor grads,
                                                   const IvonOptions& options,
                                                   const at::Tensor& initial_hess) {
  ADAPTD_RETURN_IF_ERROR(options.Validate());
  if (!params.defined() || params.dim() != 1 || !params.is_contiguous() ||
      (params.scalar_type() != at::kFloat && params.scalar_type() != at::kDouble)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IVON parameters must be one contiguous 1-D float32/float64 buffer; got ",
        DescribeTensor(params)));
  }
  if (!grads.defined() || !grads.sizes().equals(params.sizes()) ||
      grads.scalar_type() != params.scalar_type() || grads.device() != params.device() ||
      !grads.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("IVON gradients must match the parameters (",
                                                   DescribeTensor(params), "); got ",
                                                   DescribeTensor(grads)));
  }
  return CallTorch([&]() -> absl::StatusOr<std::unique_ptr<Ivon>> {
    at::NoGradGuard no_grad;
    at::Tensor hess = at::full_like(params, options.hess_init);
    if (initial_hess.defined()) {
      if (!initial_hess.sizes().equals(params.sizes())) {
        return absl::InvalidArgumentError(absl::StrCat("initial hess must be ", DescribeTensor(params),
                                                       "; got ", DescribeTensor(initial_hess)));
      }
      hess = initial_hess.to(params.options()).clone();
    }
    ADAPTD_ASSIGN_OR_RETURN(Posterior posterior,
                            Posterior::Create(params.detach().clone(), std::move(hess),
                                              options.ess, options.weight_decay));
    return std::unique_ptr<Ivon>(new Ivon(params, grads, std::move(posterior), options));
  });
}

absl::Status Ivon::BeginSample(const at::Generator& gen) {
  if (sample_open_) {
    return absl::FailedPreconditionError("IVON: BeginSample called while a sample is open; call EndSample first");
  }
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    if (samples_ == 1 && !spilled_) SpillPendingSample();
    ADAPTD_RETURN_IF_ERROR(posterior_.SampleInto(params_, gen));
    grads_.zero_();
    sample_open_ = true;
    return absl::OkStatus();
  });
}

absl::Status Ivon::EndSample() {
  if (!sample_open_) {
    return absl::FailedPreconditionError("IVON: EndSample called without BeginSample");
  }
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    sample_open_ = false;
    ++samples_;
    // The first sample stays in place (grads_ and params_) so that the common one-sample step
    // reads it directly; a second sample spills it into the running means first.
    if (samples_ > 1) SpillPendingSample();
    return absl::OkStatus();
  });
}

// Folds the sample held in grads_/params_ into the Welford means avg_grad_/avg_hess_.
void Ivon::SpillPendingSample() {
  const at::Tensor& m = posterior_.mean();
  const at::Tensor hhat = grads_ * (params_ - m) * posterior_.Precision();
  if (!spilled_) {
    avg_grad_ = grads_.clone();
    avg_hess_ = hhat;
    spilled_ = true;
    return;
  }
  const double w = 1.0 / static_cast<double>(samples_);
  avg_grad_.add_(grads_ - avg_grad_, w);
  avg_hess_.add_(hhat - avg_hess_, w);
}

absl::Status Ivon::Step(double lr) {
  if (sample_open_) {
    return absl::FailedPreconditionError("IVON: Step called while a sample is open; call EndSample first");
  }
  if (samples_ == 0) {
    return absl::FailedPreconditionError(
        "IVON: Step needs at least one weight sample (BeginSample, forward/backward, EndSample) "
        "since the last step; none was taken");
  }
  if (!(lr >= 0) || !std::isfinite(lr)) {
    return absl::InvalidArgumentError(absl::StrCat("IVON: lr must be finite and >= 0; got ", lr));
  }
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    const int64_t step = step_ + 1;  // counted once the update has gone through
    StepScalars s;
    s.b1 = options_.beta1;
    s.b2 = options_.beta2;
    s.delta = options_.weight_decay;
    s.ess = options_.ess;
    s.lr = options_.rescale_lr ? lr * (options_.hess_init + options_.weight_decay) : lr;
    s.debias = options_.debias ? 1.0 - std::pow(options_.beta1, static_cast<double>(step)) : 1.0;
    s.clip = options_.clip_radius;
    at::Tensor& m = posterior_.mutable_mean();
    at::Tensor& h = posterior_.mutable_hess();
    if (UseFused(params_)) {
      const at::Tensor* hhat = spilled_ ? &avg_hess_ : nullptr;
      const at::Tensor& ghat = spilled_ ? avg_grad_ : grads_;
      if (params_.scalar_type() == at::kFloat) {
        FusedStep<float>(m, momentum_, h, params_, ghat, hhat, s);
      } else {
        FusedStep<double>(m, momentum_, h, params_, ghat, hhat, s);
      }
    } else {
      if (!spilled_) SpillPendingSample();
      TensorStep(m, momentum_, h, params_, avg_grad_, avg_hess_, s);
    }
    step_ = step;
    samples_ = 0;
    spilled_ = false;
    avg_grad_ = at::Tensor();
    avg_hess_ = at::Tensor();
    return absl::OkStatus();
  });
}

void Ivon::DiscardStep() {
  at::NoGradGuard no_grad;
  sample_open_ = false;
  samples_ = 0;
  spilled_ = false;
  avg_grad_ = at::Tensor();
  avg_hess_ = at::Tensor();
  params_.copy_(posterior_.mean());
  grads_.zero_();
}

double Ivon::StepScale() const {
  const at::Tensor& h = posterior_.hess();
  if (h.numel() == 0) return 1.0;
  at::NoGradGuard no_grad;
  // The median of (h0 + delta) / (h + delta) is (h0 + delta) over the median of h, plus delta,
  // up to which of the two middle values an even count takes; every h + delta is positive.
  const double median = h.median().item<double>() + options_.weight_decay;
  return (options_.hess_init + options_.weight_decay) / median;
}

int64_t Ivon::StateBytes() const {
  int64_t n = posterior_.mean().numel() + posterior_.hess().numel() + momentum_.numel();
  for (const at::Tensor* t : {&avg_grad_, &avg_hess_}) {
    if (t->defined()) n += t->numel();
  }
  return n * static_cast<int64_t>(momentum_.element_size());
}

void Ivon::AppendTo(TensorMap& out) const {
  posterior_.AppendTo(out, "ivon.posterior.");
  out["ivon.momentum"] = momentum_;
  out["ivon.step"] = ScalarTensor(step_);
  out["ivon.lr"] = ScalarTensor(options_.lr);
  out["ivon.hess_init"] = ScalarTensor(options_.hess_init);
  out["ivon.beta1"] = ScalarTensor(options_.beta1);
  out["ivon.beta2"] = ScalarTensor(options_.beta2);
  out["ivon.clip_radius"] = ScalarTensor(options_.clip_radius);
  out["ivon.debias"] = ScalarTensor(static_cast<int64_t>(options_.debias));
  out["ivon.rescale_lr"] = ScalarTensor(static_cast<int64_t>(options_.rescale_lr));
}

absl::Status Ivon::LoadFrom(const TensorMap& in) {
  if (sample_open_ || samples_ != 0) {
    return absl::FailedPreconditionError("IVON: cannot load state in the middle of a step");
  }
  ADAPTD_ASSIGN_OR_RETURN(Posterior loaded, Posterior::FromTensors(in, "ivon.posterior."));
  if (loaded.numel() != params_.numel() || loaded.mean().scalar_type() != params_.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IVON state is for ", loaded.numel(), " ", std::string(c10::toString(loaded.mean().scalar_type())),
        " parameters; this model has ", params_.numel(), " ",
        std::string(c10::toString(params_.scalar_type()))));
  }
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor momentum, GetTensor(in, "ivon.momentum",
                                                         params_.scalar_type(), params_.numel()));
  IvonOptions o = options_;
  o.ess = loaded.ess();
  o.weight_decay = loaded.delta();
  ADAPTD_ASSIGN_OR_RETURN(int64_t step, GetInt(in, "ivon.step"));
  ADAPTD_ASSIGN_OR_RETURN(o.lr, GetDouble(in, "ivon.lr"));
  ADAPTD_ASSIGN_OR_RETURN(o.hess_init, GetDouble(in, "ivon.hess_init"));
  ADAPTD_ASSIGN_OR_RETURN(o.beta1, GetDouble(in, "ivon.beta1"));
  ADAPTD_ASSIGN_OR_RETURN(o.beta2, GetDouble(in, "ivon.beta2"));
  ADAPTD_ASSIGN_OR_RETURN(o.clip_radius, GetDouble(in, "ivon.clip_radius"));
  ADAPTD_ASSIGN_OR_RETURN(int64_t debias, GetInt(in, "ivon.debias"));
  ADAPTD_ASSIGN_OR_RETURN(int64_t rescale, GetInt(in, "ivon.rescale_lr"));
  o.debias = debias != 0;
  o.rescale_lr = rescale != 0;
  ADAPTD_RETURN_IF_ERROR(o.Validate());
  return CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    const auto opts = params_.options();
    ADAPTD_ASSIGN_OR_RETURN(posterior_, Posterior::Create(loaded.mean().to(opts).clone(),
                                                          loaded.hess().to(opts).clone(),
                                                          o.ess, o.weight_decay));
    momentum_ = momentum.to(opts).clone();
    step_ = step;
    options_ = o;
    params_.copy_(posterior_.mean());
    return absl::OkStatus();
  });
}

namespace internal {
void SetIvonFusedKernels(bool enabled) { g_fused_kernels.store(enabled); }
}  // namespace internal

}  // namespace adaptd

#include "core/continual.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/flat_params.h"
#include "core/fromp.h"
#include "core/jacobian.h"
#include "core/kprior.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

// Rows of `task_masks` for each example's task, or undefined for a single head.
at::Tensor MasksFor(const at::Tensor& task_masks, const at::Tensor& task_ids) {
  if (!task_masks.defined()) return at::Tensor();
  return task_masks.index_select(0, task_ids);
}

// `masks` with row `task_id` set to `mask` (grown with all-false rows as needed).
at::Tensor WithTaskMask(const at::Tensor& masks, int64_t task_id, const at::Tensor& mask) {
  const int64_t k = mask.numel();
  const int64_t rows = std::max<int64_t>(masks.defined() ? masks.size(0) : 0, task_id + 1);
  at::Tensor out = at::zeros({rows, k}, at::kBool);
  if (masks.defined()) out.narrow(0, 0, masks.size(0)).copy_(masks);
  out[task_id].copy_(mask);
  return out;
}

// Logits of `x` on the model's device, restricted to per-example heads when `masks` is defined.
at::Tensor Logits(Model& model, const at::Tensor& x, const at::Tensor& masks) {
  const at::Device device = model.Parameters()[0].device();
  at::Tensor logits = model.Forward(x.to(device));
  return masks.defined() ? MaskLogits(logits, masks.to(device)) : logits;
}

// Bool [k]: the classes that occur in `labels`.
at::Tensor ClassesIn(const at::Tensor& labels, int64_t k) {
  return at::zeros({k}, at::kBool).index_fill_(0, labels, true);
}

// The label sets the old model was taught that the new task leaves alone: the past tasks' heads
// (multi-head) or the old classes (single head: the memory's labels), each less the new task's
// classes. A set of fewer than two classes constrains nothing and is dropped. Bool [G, K];
// undefined when none is left (e.g. every past class reappears, as in a permuted stream).
at::Tensor UntouchedLabelSets(const ContinualState& state, const TaskData& task, int64_t k) {
  const at::Tensor taught = task.label_mask.defined()
                                ? task.label_mask.clone()
                                : ClassesIn(task.train.y, k);
  std::vector<at::Tensor> sets;
  if (state.task_masks.defined()) {
    for (int64_t t = 0; t < state.task_masks.size(0); ++t) {
      if (t != task.task_id) sets.push_back(state.task_masks[t]);
    }
  } else if (state.memory.size() > 0) {
    sets.push_back(ClassesIn(state.memory.y, k));
  }
  std::vector<at::Tensor> kept;
  for (const at::Tensor& set : sets) {
    const at::Tensor left = set.logical_and(taught.logical_not());
    if (left.sum().item<int64_t>() >= 2) kept.push_back(left);
  }
  return kept.empty() ? at::Tensor() : at::stack(kept);
}

// sum_i sum_k diag(J_ik^T J_ik) over the task's examples (a random `points` of them when there
// are more, scaled up to all), with k over the task's head (all classes on a single head) and
// J_ik = d f_k(x_i) / d theta at the model's current weights: the Gauss-Newton diagonal of
// 1/2 sum_i ||f(x_i; theta) - f(x_i; theta_old)||^2, flat [P] on the CPU.
absl::StatusOr<at::Tensor> LogitCurvature(Model& model, const Dataset& data,
                                          const at::Tensor& classes_mask, int64_t points,
                                          uint64_t seed) {
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<LogitJacobian> jacobian, LogitJacobian::Create(model));
  const int64_t n = data.size();
  at::Tensor x = data.x;
  if (points < n) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x637576ULL);
    const at::Tensor rows = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
    x = x.index_select(0, rows.narrow(0, 0, points));
  }
  const at::Tensor classes = classes_mask.nonzero().squeeze(1);
  at::Tensor sum;
  // Neither backend holds more than a few examples' J at once (see jacobian.cc).
  const int64_t chunk = SweepRowsPerBatch(model, 256);
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    const at::Tensor part = x.narrow(0, s, std::min(chunk, x.size(0) - s));
    ADAPTD_ASSIGN_OR_RETURN(LogitJacobian::Output out, jacobian->SquaredSum(part, classes));
    sum = sum.defined() ? sum + out.value : out.value;
  }
  return (sum * (static_cast<double>(n) / static_cast<double>(x.size(0)))).cpu();
}

// Reservoir sampling (Vitter's algorithm R) of the task's examples into `buffer`.
Memory ReservoirUpdate(const Memory& buffer, const TaskData& task, int64_t capacity,
                       int64_t* stream_seen, at::Generator& gen) {
  Memory out = buffer;
  std::vector<int64_t> take;        // task rows appended
  std::vector<std::pair<int64_t, int64_t>> replace;  // (buffer slot, task row)
  int64_t size = buffer.size();
  for (int64_t i = 0; i < task.train.size(); ++i) {
    ++*stream_seen;
    if (size < capacity) {
      take.push_back(i);
      ++size;
    } else {
      const int64_t j = at::randint(0, *stream_seen, {1}, gen, at::kLong).item<int64_t>();
      if (j < capacity) replace.emplace_back(j, i);
    }
  }
  // Replacements may target slots appended from this task: resolve in order on a slot map.
  std::vector<int64_t> slot_row(size, -1);  // -1: keep the old buffer row; else task row
  for (size_t t = 0; t < take.size(); ++t) slot_row[buffer.size() + t] = take[t];
  for (auto [slot, row] : replace) slot_row[slot] = row;
  std::vector<int64_t> keep_slots, new_slots, new_rows;
  for (int64_t s = 0; s < size; ++s) {
    if (slot_row[s] < 0) {
      keep_slots.push_back(s);
    } else {
      new_rows.push_back(slot_row[s]);
    }
  }
  Memory kept = buffer.size() ? buffer.Select(at::tensor(keep_slots, at::kLong)) : Memory();
  if (new_rows.empty()) return kept;
  const at::Tensor rows = at::tensor(new_rows, at::kLong);
  Memory added;
  added.x = task.train.x.index_select(0, rows);
  added.y = task.train.y.index_select(0, rows);
  added.task = at::full({rows.numel()}, task.task_id, at::kLong);
  added.id = task.ids.defined() ? task.ids.index_select(0, rows) : rows;
  return Memory::Concat(kept, added);
}

// The K-prior's weight term 1/2 (w - w*)^T P (w - w*) for n examples: P in total units, and
// IVON's initial Hessian per example. The old posterior (or prior) carries the past; the past
// tasks' logit curvature joins P, and IVON's Hessian starts with it too: IVON's step divides by h,
// so an h without the term's curvature would overshoot the term (a strong term then diverges).
// A posterior precision already holds every term but the newest (each run's h starts from its P
// and keeps it), so it gains only that one; the prior gains them all.
struct KPriorWeights {
  at::Tensor precision;
  at::Tensor initial_hess;
};

KPriorWeights KPriorWeightTerm(const ContinualState& state, const AdaptConfig& config, int64_t n) {
  KPriorWeights w;
  w.precision = config.posterior_precision
                    ? state.Precision()
                    : at::full({1}, state.prior_ess * state.prior_delta, state.mean.options());
  w.initial_hess = config.posterior_precision ? w.precision / static_cast<double>(n)
                                              : at::full_like(state.mean, config.ivon.hess_init);
  const at::Tensor& past = config.posterior_precision ? state.curvature_last : state.curvature;
  if (config.curvature_weight > 0 && past.defined()) {
    const at::Tensor curvature = past * config.curvature_weight;
    w.precision = w.precision + curvature;
    w.initial_hess = w.initial_hess + curvature / static_cast<double>(n);
  }
  return w;
}

int64_t StepsPerEpoch(const AdaptConfig& config, int64_t n) {
  return (n + config.batch_size - 1) / config.batch_size;
}

// `epochs` passes over n examples, or more when min_steps needs them.
int64_t EpochsFor(const AdaptConfig& config, int64_t n) {
  const int64_t steps_per_epoch = StepsPerEpoch(config, n);
  return std::max(config.epochs, config.min_steps / steps_per_epoch +
                                     (config.min_steps % steps_per_epoch != 0));
}

// The trained posterior into `next`: ess counts the n examples trained on, whatever the
// sampling temperature.
void TakePosterior(const Trainer& trainer, int64_t n, ContinualState* next) {
  const Posterior& post = trainer.ivon()->posterior();
  next->mean = post.mean().detach().clone().cpu();
  next->hess = post.hess().detach().clone().cpu();
  next->ess = static_cast<double>(n);
  next->delta = post.delta();
}

AdaptResult Finish(ContinualState next, const Trainer& trainer, double loss,
                   std::chrono::steady_clock::time_point start) {
  AdaptResult result;
  result.state = std::move(next);
  result.stats.steps = trainer.steps_taken();
  result.stats.final_loss = loss;
  result.stats.memory_size = result.state.memory.size();
  result.stats.step_growth = trainer.step_growth();
  result.stats.peak_step = trainer.peak_step();
  result.stats.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

// Labels in [0, k) and, where `masks` is defined (one head [K], or per-example heads [N, K]),
// inside their heads.
absl::Status CheckLabelsInHeads(const at::Tensor& y, int64_t k, const at::Tensor& masks) {
  const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
  if (lo < 0 || hi >= k) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must lie in [0, ", k, "); found ", lo, "..", hi));
  }
  if (masks.defined()) {
    const at::Tensor inside =
        masks.dim() == 1 ? masks.index_select(0, y) : masks.gather(1, y.unsqueeze(1));
    if (!inside.all().item<bool>()) {
      return absl::InvalidArgumentError("some labels lie outside the task's label set");
    }
  }
  return absl::OkStatus();
}

// b of `size` rows at random, drawn on the CPU (the same draw on any device), on `device`.
at::Tensor DrawRows(int64_t size, int64_t b, at::Generator& gen, at::Device device) {
  return at::randperm(size, gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, b).to(device);
}

// A memory's tensors on the training device, with each row's head (undefined: single head).
struct DeviceMemory {
  at::Tensor x, y, soft, logits, masks;
  int64_t size = 0;
  // Minibatches drawn with replacement, O(b) per draw, where a permutation of every row per step
  // would grow with the set (the mixed inputs: memory_mixup copies of the memory).
  bool with_replacement = false;

  static DeviceMemory Of(const Memory& m, const at::Tensor& task_masks, at::Device device) {
    DeviceMemory d;
    d.size = m.size();
    if (d.size == 0) return d;
    auto put = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : at::Tensor(); };
    d.x = put(m.x);
    d.y = put(m.y);
    d.soft = put(m.soft);
    d.logits = put(m.logits);
    d.masks = put(MasksFor(task_masks, m.task));
    return d;
  }
  // The rows of a random minibatch of at most b, drawn on the CPU.
  at::Tensor Batch(int64_t b, at::Generator& gen, at::Device device) const {
    if (with_replacement) return at::randint(size, {std::min(b, size)}, gen, at::kLong).to(device);
    return DrawRows(size, std::min(b, size), gen, device);
  }
  at::Tensor Logits(Model& model, const at::Tensor& rows) const {
    return adaptd::Logits(model, x.index_select(0, rows),
                          masks.defined() ? masks.index_select(0, rows) : at::Tensor());
  }
};

// A stored memory must fit the model it belongs to: inputs of the spec's shape, labels among its
// classes, targets over all of them, and tasks the state knows (multi-head).
absl::Status CheckMemoryFits(const Memory& m, const ModelSpec& spec, const at::Tensor& task_masks,
                             const std::string& what) {
  const int64_t n = m.size();
  if (n == 0) return absl::OkStatus();
  std::vector<int64_t> want = {n};
  want.insert(want.end(), spec.input_shape.begin(), spec.input_shape.end());
  if (m.x.sizes().vec() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ".x is ", DescribeTensor(m.x), "; expected ", ShapeString(want)));
  }
  if (m.y.min().item<int64_t>() < 0 || m.y.max().item<int64_t>() >= spec.num_classes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".y holds labels outside [0, ",
                                                   spec.num_classes, ")"));
  }
  const int64_t tasks = task_masks.defined() ? task_masks.size(0)
                                             : std::numeric_limits<int64_t>::max();
  if (m.task.min().item<int64_t>() < 0 || m.task.max().item<int64_t>() >= tasks) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ".task holds tasks outside [0, ", tasks, ") (the state's task masks)"));
  }
  for (const auto& [name, t] : {std::make_pair(".soft", &m.soft), std::make_pair(".logits", &m.logits)}) {
    if (t->defined() && t->sizes().vec() != std::vector<int64_t>{n, spec.num_classes}) {
      return absl::InvalidArgumentError(absl::StrCat(what, name, " is ", DescribeTensor(*t),
                                                     "; expected [", n, ", ", spec.num_classes, "]"));
    }
  }
  return absl::OkStatus();
}

// CheckLearnt's refusal, told when IVON trained at weight samples wider than the weights they
// perturb (root-mean-square standard deviation against root-mean-square mean, at the run's end).
// At ess = N on a small task the noise of each step's sample then drowns its signal, and the
// mean learns nothing; colder samples (a larger ess_factor) are the remedy the message names.
absl::Status WithSampleWidth(absl::Status refused, const Posterior& posterior, double ess_factor) {
  if (refused.ok()) return refused;
  const double sd = posterior.Sigma().square().mean().sqrt().item<double>();
  const double weights = posterior.mean().square().mean().sqrt().item<double>();
  if (!(sd > weights)) return refused;
  return absl::Status(
      refused.code(),
      absl::StrCat(refused.message(), ". IVON's weight samples were wider than the weights: a "
                   "standard deviation of ", absl::SixDigits(sd), " against weights of ",
                   absl::SixDigits(weights), " (root mean squares) at ess = ", posterior.ess(),
                   " (ess_factor ", ess_factor, " times the examples); a larger ess_factor (the "
                   "service's ivon.ess_factor; 16, say) draws colder samples, which a task this "
                   "small may need, with more epochs or min_steps if it still learns little"));
}

}  // namespace

// Per-example empirical Fisher, summed over the task. Near an optimum the per-example gradients
// have mean about zero, so a minibatch's mean gradient of len examples has a square of about
// 1/len of a per-example one: len * g_batch^2 estimates the per-example Fisher, and N times its
// mean over the batches the task's sum (the Avalanche estimator in per-example total units, with
// a short last batch weighted by its own length).
at::Tensor EmpiricalFisher(Model& model, FlatParameters& flat, const Dataset& data,
                           const at::Tensor& mask, int64_t batch) {
  model.SetTraining(false);
  at::Tensor sum = at::zeros_like(flat.params());
  int64_t batches = 0;
  const at::Device device = flat.params().device();
  for (int64_t s = 0; s < data.size(); s += batch) {
    const int64_t len = std::min(batch, data.size() - s);
    flat.ZeroGrad();
    at::cross_entropy_loss(MaskLogits(model.Forward(data.x.narrow(0, s, len).to(device)), mask),
                           data.y.narrow(0, s, len).to(device))
        .backward();
    sum.addcmul_(flat.grads(), flat.grads(), static_cast<double>(len));
    ++batches;
  }
  flat.ZeroGrad();
  return sum * (static_cast<double>(data.size()) / batches);
}


absl::StatusOr<Method> ParseMethod(const std::string& name) {
  static const std::pair<const char*, Method> kNames[] = {
      {"kprior", Method::kKPrior}, {"fromp", Method::kFromp},       {"ewc", Method::kEwc},
      {"replay", Method::kReplay}, {"finetune", Method::kFinetune}, {"joint", Method::kJoint}};
  for (const auto& [n, m] : kNames) {
    if (name == n) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown method '", name, "'; expected one of kprior, fromp, ewc, replay, finetune, joint"));
}

std::string MethodName(Method method) {
  switch (method) {
    case Method::kKPrior: return "kprior";
    case Method::kFromp: return "fromp";
    case Method::kEwc: return "ewc";
    case Method::kReplay: return "replay";
    case Method::kFinetune: return "finetune";
    case Method::kJoint: return "joint";
  }
  return "unknown";
}

absl::Status AdaptConfig::Validate() const {
  IvonOptions o = ivon;
  o.ess = 1;  // set per task
  ADAPTD_RETURN_IF_ERROR(o.Validate());
  // Sizes far beyond any task, so that the step and memory arithmetic cannot overflow.
  constexpr int64_t kMaxCount = int64_t{1} << 31;
  struct Bound {
    const char* name;
    int64_t value, low, high;
  };
  for (const Bound& b : {Bound{"epochs", epochs, 1, kMaxSteps},
                         Bound{"batch_size", batch_size, 1, kMaxCount},
                         Bound{"memory_batch_size", memory_batch_size, 1, kMaxCount},
                         Bound{"memory_points", memory_points, 0, kMaxCount},
                         Bound{"min_steps", min_steps, 0, kMaxSteps},
                         Bound{"curvature_points", curvature_points, 1, kMaxCount},
                         // Each unit is another copy of the memory's inputs held while training.
                         Bound{"memory_mixup", memory_mixup, 0, 64}}) {
    if (b.value < b.low || b.value > b.high) {
      return absl::InvalidArgumentError(absl::StrCat(b.name, " must be in [", b.low, ", ", b.high,
                                                     "]; got ", b.value));
    }
  }
  // Each named alone, so that the message says which one is wrong.
  for (const auto& [name, value, positive] :
       {std::tuple<const char*, double, bool>{"fromp_jitter", fromp_jitter, true},
        {"fromp_tau", fromp_tau, false},
        {"ewc_lambda", ewc_lambda, false}}) {
    if (!(positive ? value > 0 : value >= 0) || !std::isfinite(value)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be ", positive ? "> 0" : ">= 0",
                                                     " and finite; got ", value));
    }
  }
  if (!std::isfinite(memory_weight)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory_weight must be finite (negative: |M| / N_new); got ", memory_weight));
  }
  // Outside [0.01, 100] the softened logits (f / T) or the T^2 factor leave float32's range
  // or its precision, and the term turns into NaN or nothing.
  if (!(distill_temperature == 0 || (distill_temperature >= 0.01 && distill_temperature <= 100))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distill_temperature must be 0 (off) or in [0.01, 100]; got ", distill_temperature));
  }
  if (!(curvature_weight >= 0) || !std::isfinite(curvature_weight)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "curvature_weight must be >= 0 and finite (0: off); got ", curvature_weight));
  }
  // IVON forms ess (h + delta) in float32: beyond 1e6 x the examples it overflows.
  if (!(ess_factor > 0 && ess_factor <= 1e6)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ess_factor must be in (0, 1e6] (1: the plain posterior); got ", ess_factor));
  }
  if (!(new_input_weight >= 0) || !std::isfinite(new_input_weight)) {
    return absl::InvalidArgumentError(
        absl::StrCat("new_input_weight must be >= 0 and finite (0: off); got ", new_input_weight));
  }
  return CheckDevice(device);
}

at::Tensor ContinualState::Precision() const { return (hess + delta) * ess; }

absl::StatusOr<Posterior> ContinualState::ToPosterior() const {
  if (tasks_seen == 0 || !hess.defined()) {
    return absl::FailedPreconditionError(
        "the model has learnt no task yet, so it has no posterior: stream training data first");
  }
  return Posterior::Create(mean, hess, ess, delta);
}

void ContinualState::AppendTo(TensorMap& out) const {
  out["state.mean"] = mean;
  if (hess.defined()) out["state.hess"] = hess;
  if (task_masks.defined()) out["state.task_masks"] = task_masks;
  if (fisher.defined()) out["state.fisher"] = fisher;
  if (curvature.defined()) out["state.curvature"] = curvature;
  if (curvature_last.defined()) out["state.curvature_last"] = curvature_last;
  out["state.ess"] = ScalarTensor(ess);
  out["state.delta"] = ScalarTensor(delta);
  out["state.prior_delta"] = ScalarTensor(prior_delta);
  out["state.prior_ess"] = ScalarTensor(prior_ess);
  out["state.stream_seen"] = ScalarTensor(stream_seen);
  out["state.tasks_seen"] = ScalarTensor(tasks_seen);
  memory.AppendTo(out, "state.memory.");
  seen.AppendTo(out, "state.seen.");
}

absl::StatusOr<ContinualState> ContinualState::FromTensors(const TensorMap& in,
                                                           const ModelSpec& spec) {
  ContinualState s;
  s.spec = spec;
  ADAPTD_ASSIGN_OR_RETURN(s.mean, GetTensor(in, "state.mean", at::kFloat));
  if (s.mean.dim() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("state.mean must be 1-D; it is ", DescribeTensor(s.mean)));
  }
  const int64_t p = s.mean.numel();
  if (in.count("state.hess")) {
    ADAPTD_ASSIGN_OR_RETURN(s.hess, GetTensor(in, "state.hess", at::kFloat, p));
  }
  if (in.count("state.fisher")) {
    ADAPTD_ASSIGN_OR_RETURN(s.fisher, GetTensor(in, "state.fisher", at::kFloat, p));
  }
  if (in.count("state.curvature")) {
    ADAPTD_ASSIGN_OR_RETURN(s.curvature, GetTensor(in, "state.curvature", at::kFloat, p));
  }
  if (in.count("state.curvature_last")) {
    ADAPTD_ASSIGN_OR_RETURN(s.curvature_last,
                            GetTensor(in, "state.curvature_last", at::kFloat, p));
  }
  if (in.count("state.task_masks")) {
    ADAPTD_ASSIGN_OR_RETURN(s.task_masks, GetTensor(in, "state.task_masks", at::kBool));
    if (s.task_masks.dim() != 2 || s.task_masks.size(1) != spec.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("state.task_masks must be [T, ",
                                                     spec.num_classes, "]; it is ",
                                                     DescribeTensor(s.task_masks)));
    }
  }
  ADAPTD_ASSIGN_OR_RETURN(s.ess, GetDouble(in, "state.ess"));
  ADAPTD_ASSIGN_OR_RETURN(s.delta, GetDouble(in, "state.delta"));
  ADAPTD_ASSIGN_OR_RETURN(s.prior_delta, GetDouble(in, "state.prior_delta"));
  ADAPTD_ASSIGN_OR_RETURN(s.prior_ess, GetDouble(in, "state.prior_ess"));
  ADAPTD_ASSIGN_OR_RETURN(s.stream_seen, GetInt(in, "state.stream_seen"));
  ADAPTD_ASSIGN_OR_RETURN(s.tasks_seen, GetInt(in, "state.tasks_seen"));
  ADAPTD_ASSIGN_OR_RETURN(s.memory, Memory::FromTensors(in, "state.memory."));
  ADAPTD_ASSIGN_OR_RETURN(s.seen, Memory::FromTensors(in, "state.seen."));
  ADAPTD_RETURN_IF_ERROR(CheckMemoryFits(s.memory, spec, s.task_masks, "state.memory"));
  ADAPTD_RETURN_IF_ERROR(CheckMemoryFits(s.seen, spec, s.task_masks, "state.seen"));
  // The weights and posterior every query and the next task start from.
  ADAPTD_RETURN_IF_ERROR(CheckFinite(s.mean, "state.mean"));
  if (s.tasks_seen < 0 || s.stream_seen < 0 || !(s.prior_ess >= 0) || !(s.prior_delta >= 0) ||
      !std::isfinite(s.prior_ess) || !std::isfinite(s.prior_delta)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "state.tasks_seen and state.stream_seen must be >= 0, state.prior_ess and "
        "state.prior_delta finite and >= 0; got ", s.tasks_seen, ", ", s.stream_seen, ", ",
        s.prior_ess, " and ", s.prior_delta));
  }
  if (s.tasks_seen > 0) {
    if (!s.hess.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "state.hess is missing, but the state has learnt ", s.tasks_seen, " tasks"));
    }
    ADAPTD_RETURN_IF_ERROR(CheckFinite(s.hess, "state.hess"));
    if (!std::isfinite(s.ess) || !std::isfinite(s.delta)) {
      return absl::InvalidArgumentError(absl::StrCat("state.ess and state.delta must be finite; got ",
                                                     s.ess, " and ", s.delta));
    }
    const absl::Status posterior = s.ToPosterior().status();  // ess > 0, h + delta > 0
    if (!posterior.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("state.hess and state.ess: ", posterior.message()));
    }
  }
  return s;
}

absl::StatusOr<ContinualState> InitialState(const ModelSpec& spec, uint64_t seed) {
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, BuildModel(spec, seed));
  ContinualState s;
  s.spec = spec;
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : model->Parameters()) flat.push_back(p.detach().reshape({-1}));
  s.mean = at::cat(flat);
  return s;
}

absl::StatusOr<std::unique_ptr<Model>> MaterializeModel(const ContinualState& state) {
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, BuildModel(state.spec, 0));
  at::NoGradGuard no_grad;
  int64_t offset = 0;
  for (at::Tensor& p : model->Parameters()) {
    p.copy_(state.mean.narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  return model;
}

absl::StatusOr<double> EvaluateAccuracy(const ContinualState& state, const Dataset& test,
                                        const at::Tensor& label_mask) {
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, MaterializeModel(state));
  ADAPTD_RETURN_IF_ERROR(model->CheckInput(test.x));
  return CallTorch([&]() -> absl::StatusOr<double> {
    model->SetTraining(false);
    const at::Tensor pred = ChunkedLogits(*model, test.x, label_mask, 2000).argmax(1).cpu();
    const int64_t correct = pred.eq(test.y).sum().item<int64_t>();
    return static_cast<double>(correct) / static_cast<double>(test.size());
  });
}

absl::StatusOr<AdaptResult> Adapt(const ContinualState& state, const TaskData& task,
                                  const AdaptConfig& config, const ProgressFn& progress,
                                  const std::function<bool()>& should_stop) {
  const auto start = std::chrono::steady_clock::now();
  ADAPTD_RETURN_IF_ERROR(config.Validate());
  const Dataset& data = task.train;
  const int64_t k = state.spec.num_classes;
  if (data.size() == 0) return absl::InvalidArgumentError("the task has no training examples");
  if (!data.y.defined() || data.y.scalar_type() != at::kLong || data.y.dim() != 1 ||
      data.x.size(0) != data.y.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("task labels must be int64 [", data.x.size(0),
                                                   "]; got ", DescribeTensor(data.y)));
  }
  if (task.label_mask.defined() &&
      (task.label_mask.scalar_type() != at::kBool || task.label_mask.numel() != k)) {
    return absl::InvalidArgumentError(absl::StrCat("label_mask must be bool [", k, "]; got ",
                                                   DescribeTensor(task.label_mask)));
  }
  if (task.label_mask.defined() != state.task_masks.defined() && state.tasks_seen > 0) {
    return absl::InvalidArgumentError(
        "tasks must all use a head (label_mask) or all use the single head; this task differs");
  }
  if (task.task_id < 0) return absl::InvalidArgumentError("task_id must be >= 0");
  ADAPTD_RETURN_IF_ERROR(CheckLabelsInHeads(data.y, k, task.label_mask));
  const bool first = state.tasks_seen == 0;
  ContinualState next = state;
  next.curvature_last = at::Tensor();  // this run's posterior takes it in
  if (task.label_mask.defined()) next.task_masks = WithTaskMask(state.task_masks, task.task_id, task.label_mask);

  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                          config.method == Method::kJoint ? BuildModel(state.spec, config.seed)
                                                          : MaterializeModel(state));
  ADAPTD_RETURN_IF_ERROR(model->CheckInput(data.x.narrow(0, 0, 1)));

  return CallTorch([&]() -> absl::StatusOr<AdaptResult> {
    model->To(config.device);
    // What to train on.
    Dataset train = data;
    at::Tensor train_mask = task.label_mask;
    if (config.method == Method::kJoint) {
      Memory now;
      now.x = data.x;
      now.y = data.y;
      now.task = at::full({data.size()}, task.task_id, at::kLong);
      now.id = task.ids.defined() ? task.ids : at::arange(data.size(), at::kLong);
      next.seen = Memory::Concat(state.seen, now);
      train = Dataset{next.seen.x, next.seen.y};
      train_mask = MasksFor(next.task_masks, next.seen.task);
    }
    const int64_t n = train.size();

    // The old model's targets on the memory (K-prior and FROMP regularise towards them).
    Memory memory = state.memory;
    const bool uses_targets = config.method == Method::kKPrior || config.method == Method::kFromp;
    if (uses_targets && memory.size() > 0) {
      ADAPTD_RETURN_IF_ERROR(RefreshTargets(*model, memory, next.task_masks));
    }

    TrainOptions to;
    to.optimizer = OptimizerKind::kIvon;
    to.ivon = config.ivon;
    to.ivon.ess = config.ess_factor * static_cast<double>(n);
    to.batch_size = config.batch_size;
    to.seed = config.seed + 7919 * static_cast<uint64_t>(state.tasks_seen);
    to.cosine = true;
    // The K-prior's mixed memory inputs, labelled by the old model as the memory is.
    Memory mixed;
    if (config.method == Method::kKPrior && config.memory_mixup > 0 && memory.size() > 0) {
      at::Generator mix_gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x6d6978ULL);
      mixed = MixMemory(memory, config.memory_mixup, mix_gen);
      ADAPTD_RETURN_IF_ERROR(RefreshTargets(*model, mixed, next.task_masks));
    }
    at::Tensor initial_hess;
    at::Tensor weight_precision;  // total units: the old posterior (or prior) and the curvature term
    if (!first) {
      // Keep the prior's precision (total units) fixed while ess follows the task's size. Joint
      // retraining takes the current weight decay, over the first task's size: batch retraining
      // on everything under the same prior, the reference the K-prior approximates (a per-example
      // decay over all data would grow its prior with every task).
      const double delta = config.method == Method::kJoint ? config.ivon.weight_decay : state.prior_delta;
      to.ivon.weight_decay = state.prior_ess * delta / static_cast<double>(n);
    }
    if (!first && config.method == Method::kKPrior) {
      // The old posterior (or prior) becomes the prior, so the IVON prior delta is off.
      to.ivon.weight_decay = 0.0;
      KPriorWeights w = KPriorWeightTerm(state, config, n);
      weight_precision = std::move(w.precision);
      initial_hess = std::move(w.initial_hess);
    }
    const int64_t epochs = EpochsFor(config, n);
    ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer,
                            Trainer::Create(model.get(), to, epochs * StepsPerEpoch(config, n),
                                            initial_hess));
    FlatParameters& flat = trainer->flat();
    const at::Device device = flat.params().device();
    at::Generator mem_gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x6d656dULL);

    std::vector<FrompBlock> fromp_blocks;
    if (config.method == Method::kFromp && !first && memory.size() > 0) {
      const at::Tensor sigma2 = state.Precision().reciprocal().to(device);
      ADAPTD_ASSIGN_OR_RETURN(fromp_blocks, BuildFrompBlocks(*model, flat, memory, next.task_masks,
                                                             sigma2, config.fromp_jitter));
    }
    const at::Tensor anchor = state.mean.to(device);
    // The new-input term: the old model's logits on the new task's inputs, kept on the label sets
    // the new task leaves alone.
    at::Tensor label_sets, old_new_logits;
    if (config.method == Method::kKPrior && !first && config.new_input_weight > 0) {
      label_sets = UntouchedLabelSets(state, task, k);
      if (label_sets.defined()) {
        old_new_logits = ChunkedLogits(*model, train.x);
        label_sets = label_sets.to(device);
      }
    }
    // The K-prior's weight-space precision (total units).
    auto on_device = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : at::Tensor(); };
    const at::Tensor precision = on_device(weight_precision);
    at::Generator new_gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x6e6577ULL);
    const double mem_weight = config.memory_weight < 0
                                  ? static_cast<double>(memory.size()) / static_cast<double>(n)
                                  : config.memory_weight;
    // The memory (and its mixed inputs) on the device once, rather than its rows every step.
    const DeviceMemory mem = DeviceMemory::Of(memory, next.task_masks, device);
    DeviceMemory mix = DeviceMemory::Of(mixed, next.task_masks, device);
    mix.with_replacement = true;
    const at::Tensor fisher = on_device(state.fisher);
    at::Generator mix_batch_gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x6d6962ULL);
    // The soft-label function term on a random minibatch of `m` (drawn on the CPU, so the draw is
    // the same on any device), with the replay correction where asked and distillation.
    auto soft_label_term = [&](const DeviceMemory& m, at::Generator& gen, bool correct) {
      const at::Tensor rows = m.Batch(config.memory_batch_size, gen, device);
      const at::Tensor logits = m.Logits(*model, rows);
      const at::Tensor soft = m.soft.index_select(0, rows);
      at::Tensor f = FunctionSpaceTerm(logits, soft, Likelihood::kCategorical);
      if (correct) f = f + ReplayCorrectionTerm(logits, soft, m.y.index_select(0, rows));
      if (config.distill_temperature > 0) {
        f = f + DistillationTerm(logits, m.logits.index_select(0, rows), config.distill_temperature);
      }
      return f * (mem_weight / static_cast<double>(rows.numel()));
    };
    ExtraLossFn extra;
    switch (config.method) {
      case Method::kKPrior:
        if (first) break;
        // The weight term's gradient goes straight into the step's gradient; the rest through
        // autograd.
        ADAPTD_RETURN_IF_ERROR(
            trainer->SetQuadraticPenalty(anchor, precision, 1.0 / static_cast<double>(n)));
        if (memory.size() == 0 && !label_sets.defined()) break;
        extra = [&]() {
          at::Tensor term = at::zeros({}, anchor.options());
          if (mem.size > 0) term = term + soft_label_term(mem, mem_gen, config.replay_correction);
          // The mixed inputs' soft labels are the old model's on them: no true label to correct to.
          if (mix.size > 0) term = term + soft_label_term(mix, mix_batch_gen, false);
          if (label_sets.defined()) {
            const int64_t b = std::min(config.memory_batch_size, n);
            const at::Tensor rows =
                at::randperm(n, new_gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, b);
            const at::Tensor logits = Logits(*model, train.x.index_select(0, rows), at::Tensor());
            const at::Tensor old = old_new_logits.index_select(0, rows.to(device));
            term = term + LabelSetTerm(logits, old, label_sets) *
                              (config.new_input_weight / static_cast<double>(b));
          }
          return term;
        };
        break;
      case Method::kFromp:
        if (fromp_blocks.empty()) break;
        extra = [&]() {
          const at::Tensor probs = at::softmax(Logits(*model, mem.x, mem.masks), 1);
          return FrompTerm(probs, fromp_blocks) * config.fromp_tau;
        };
        break;
      case Method::kEwc:
        if (first || !state.fisher.defined()) break;
        ADAPTD_RETURN_IF_ERROR(trainer->SetQuadraticPenalty(
            anchor, fisher, config.ewc_lambda / static_cast<double>(n)));
        break;
      case Method::kReplay:
        if (memory.size() == 0) break;
        extra = [&]() {
          const at::Tensor rows = mem.Batch(config.memory_batch_size, mem_gen, device);
          return at::cross_entropy_loss(mem.Logits(*model, rows), mem.y.index_select(0, rows)) * mem_weight;
        };
        break;
      case Method::kFinetune:
      case Method::kJoint:
        break;
    }

    double loss = 0;
    for (int64_t e = 0; e < epochs; ++e) {
      ADAPTD_ASSIGN_OR_RETURN(loss, trainer->TrainEpoch(train, train_mask, progress, extra, should_stop));
    }
    // A run that collapsed onto one class has a finite loss; nothing of it may be published.
    ADAPTD_RETURN_IF_ERROR(WithSampleWidth(trainer->CheckLearnt(train, train_mask),
                                           trainer->ivon()->posterior(), config.ess_factor));

    // What the next task needs.
    TakePosterior(*trainer, n, &next);
    const Posterior& post = trainer->ivon()->posterior();
    if (first) {
      next.prior_delta = config.ivon.weight_decay;
      next.prior_ess = static_cast<double>(n);
    }
    if (uses_targets && config.memory_points > 0) {
      SelectionOptions so;
      so.method = config.selection;
      so.points = config.memory_points;
      so.seed = to.seed;
      so.should_stop = should_stop;
      if (so.method == SelectionMethod::kSensitivity) so.variance = post.Precision().reciprocal();
      // An earlier run on this task (online mode, a later stream) left rows of it in the
      // memory: they compete with the new rows for the task's budget, which therefore holds
      // however many runs the task takes.
      Memory others = memory;
      Dataset candidates = data;
      at::Tensor candidate_ids = task.ids;
      const at::Tensor mine = memory.size() > 0 ? memory.task.eq(task.task_id) : at::Tensor();
      if (mine.defined() && mine.any().item<bool>()) {
        const Memory held = memory.Select(mine.nonzero().squeeze(1));
        others = memory.Select(mine.logical_not().nonzero().squeeze(1));
        candidates = Dataset{at::cat({held.x.to(data.x.scalar_type()), data.x}), at::cat({held.y, data.y})};
        candidate_ids = at::cat({held.id, task.ids.defined() ? task.ids : at::arange(data.size(), at::kLong)});
        so.held = held.size();
        so.held_weight = std::max(1.0, static_cast<double>(task.learnt_before) /
                                            static_cast<double>(held.size()));
      }
      ADAPTD_ASSIGN_OR_RETURN(Memory selected, SelectMemory(*model, candidates, candidate_ids,
                                                            task.task_id, task.label_mask, so));
      next.memory = Memory::Concat(others, selected);
    } else if (config.method == Method::kReplay) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x72657365ULL);
      // memory_points per task: tasks are numbered in arrival order, so the largest id seen
      // counts them (runs do not: online mode runs many on one task).
      int64_t tasks = task.task_id + 1;
      if (state.memory.size() > 0) tasks = std::max(tasks, state.memory.task.max().item<int64_t>() + 1);
      next.memory = ReservoirUpdate(state.memory, task, config.memory_points * tasks,
                                    &next.stream_seen, gen);
    } else if (config.method == Method::kEwc) {
      const at::Tensor f = EmpiricalFisher(*model, flat, data, task.label_mask, config.batch_size).cpu();
      next.fisher = state.fisher.defined() ? state.fisher + f : f;
    }
    if (config.method == Method::kKPrior && config.curvature_weight > 0) {
      // The logits to hold: the task's head, or on a single head every class taught so far.
      at::Tensor classes = task.label_mask;
      if (!classes.defined()) {
        classes = ClassesIn(data.y, k);
        if (state.memory.size() > 0) classes.index_fill_(0, state.memory.y, true);
      }
      ADAPTD_ASSIGN_OR_RETURN(at::Tensor c, LogitCurvature(*model, data, classes,
                                                           config.curvature_points, to.seed));
      next.curvature = state.curvature.defined() ? state.curvature + c : c;
      next.curvature_last = c;
    }
    next.tasks_seen = state.tasks_seen + 1;
    // A stop asked for after the last step (during selection, the Fisher or the curvature) still
    // counts: the caller must not publish a run it cancelled.
    if (should_stop && should_stop()) {
      return absl::CancelledError("cancelled after training, before the run was finished");
    }
    return Finish(std::move(next), *trainer, loss, start);
  });
}

absl::StatusOr<AdaptResult> Forget(const ContinualState& state, const ForgetData& data,
                                   const AdaptConfig& config, const ProgressFn& progress,
                                   const std::function<bool()>& should_stop) {
  const auto start = std::chrono::steady_clock::now();
  ADAPTD_RETURN_IF_ERROR(config.Validate());
  if (config.method != Method::kKPrior) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forgetting examples needs the K-prior (its weight term and soft labels stand for the "
        "data learnt); the method is ", MethodName(config.method)));
  }
  if (state.tasks_seen == 0) {
    return absl::FailedPreconditionError("nothing is learnt yet, so there is nothing to forget");
  }
  if (state.memory.size() == 0) {
    return absl::FailedPreconditionError(
        "forgetting needs memorable examples besides the removed ones; the memory is empty");
  }
  const Dataset& removed = data.removed;
  const int64_t r = removed.size(), k = state.spec.num_classes;
  if (r == 0) return absl::InvalidArgumentError("no examples to forget");
  if (!removed.x.defined()) return absl::InvalidArgumentError("the examples' inputs are missing");
  if (!removed.y.defined() || removed.y.scalar_type() != at::kLong || removed.y.dim() != 1 ||
      removed.x.size(0) != r) {
    return absl::InvalidArgumentError(absl::StrCat("labels must be int64 [", removed.x.size(0),
                                                   "]; got ", DescribeTensor(removed.y)));
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"task_ids", data.task_ids},
                                {"ids", data.ids}}) {
    if (!t.defined() || t.scalar_type() != at::kLong || t.dim() != 1 || t.size(0) != r) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be int64 [", r, "]; got ", DescribeTensor(t)));
    }
  }
  const int64_t heads = state.task_masks.defined() ? state.task_masks.size(0) : state.tasks_seen;
  if (data.task_ids.min().item<int64_t>() < 0 || data.task_ids.max().item<int64_t>() >= heads) {
    return absl::InvalidArgumentError(absl::StrCat("task_ids must lie in [0, ", heads,
                                                   "), the tasks learnt"));
  }
  const at::Tensor removed_masks = MasksFor(state.task_masks, data.task_ids);
  ADAPTD_RETURN_IF_ERROR(CheckLabelsInHeads(removed.y, k, removed_masks));
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, MaterializeModel(state));
  ADAPTD_RETURN_IF_ERROR(model->CheckInput(removed.x.narrow(0, 0, 1)));

  return CallTorch([&]() -> absl::StatusOr<AdaptResult> {
    model->To(config.device);
    // The memory without the removed examples, and both with the model's probabilities now.
    // Each removed example once, by (task, id); a memory row of one must carry its label.
    std::map<std::pair<int64_t, int64_t>, int64_t> gone_labels;
    const auto r_task = data.task_ids.accessor<int64_t, 1>();
    const auto r_id = data.ids.accessor<int64_t, 1>();
    const auto r_y = removed.y.accessor<int64_t, 1>();
    for (int64_t i = 0; i < r; ++i) {
      if (!gone_labels.emplace(std::make_pair(r_task[i], r_id[i]), r_y[i]).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "example ", r_id[i], " of task ", r_task[i], " is named twice"));
      }
    }
    std::vector<int64_t> keep;
    const auto mem_task = state.memory.task.accessor<int64_t, 1>();
    const auto mem_id = state.memory.id.accessor<int64_t, 1>();
    const auto mem_y = state.memory.y.accessor<int64_t, 1>();
    for (int64_t i = 0; i < state.memory.size(); ++i) {
      auto it = gone_labels.find({mem_task[i], mem_id[i]});
      if (it == gone_labels.end()) {
        keep.push_back(i);
      } else if (it->second != mem_y[i]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "example ", mem_id[i], " of task ", mem_task[i], " was learnt with label ", mem_y[i],
            "; got ", it->second, " (forget examples with the labels they were learnt with)"));
      }
    }
    if (keep.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "forgetting needs memorable examples besides the removed ones; the memory holds ",
          state.memory.size(), " and all are removed"));
    }
    Memory kept = state.memory.Select(at::tensor(keep, at::kLong));
    ADAPTD_RETURN_IF_ERROR(RefreshTargets(*model, kept, state.task_masks));
    Memory gone;
    gone.x = removed.x;
    gone.y = removed.y;
    gone.task = data.task_ids;
    gone.id = data.ids;
    ADAPTD_RETURN_IF_ERROR(RefreshTargets(*model, gone, state.task_masks));

    const int64_t n = kept.size();
    TrainOptions to;
    to.optimizer = OptimizerKind::kIvon;
    to.ivon = config.ivon;
    to.ivon.ess = config.ess_factor * static_cast<double>(n);
    to.ivon.weight_decay = 0.0;  // the weight term carries the prior
    to.batch_size = config.batch_size;
    to.seed = (config.seed ^ 0x666f72676574ULL) + 7919 * static_cast<uint64_t>(state.tasks_seen);
    to.cosine = true;
    const KPriorWeights weights = KPriorWeightTerm(state, config, n);
    const int64_t epochs = EpochsFor(config, n);
    ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer,
                            Trainer::Create(model.get(), to, epochs * StepsPerEpoch(config, n),
                                            weights.initial_hess));
    const at::Device device = trainer->flat().params().device();
    ADAPTD_RETURN_IF_ERROR(trainer->SetQuadraticPenalty(
        state.mean.to(device), weights.precision.to(device), 1.0 / static_cast<double>(n)));

    // The data: the remaining memory with its soft labels. The removed examples' term, on a
    // minibatch of memory_batch_size of them, scaled to all of them per example of the data.
    const Dataset train{kept.x, kept.soft};
    const at::Tensor train_masks = MasksFor(state.task_masks, kept.task);
    const at::Tensor gone_x = gone.x.to(device), gone_y = gone.y.to(device);
    const at::Tensor gone_soft = gone.soft.to(device);
    const at::Tensor gone_masks = removed_masks.defined() ? removed_masks.to(device) : at::Tensor();
    const int64_t b = std::min(config.memory_batch_size, r);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(to.seed ^ 0x72656dULL);
    const ExtraLossFn extra = [&]() {
      const at::Tensor rows = DrawRows(r, b, gen, device);
      const at::Tensor masks = gone_masks.defined() ? gone_masks.index_select(0, rows) : at::Tensor();
      const at::Tensor logits = Logits(*model, gone_x.index_select(0, rows), masks);
      return RemovalTerm(logits, gone_soft.index_select(0, rows), gone_y.index_select(0, rows)) *
             (static_cast<double>(r) / static_cast<double>(b * n));
    };
    // A collapse guard: if the old model fits the remaining memory's labels better than a
    // uniform guess (Trainer::CheckLearnt), so must the new one. (Not against the soft labels:
    // the predictions there are meant to move, and on boundary points any move crosses that bar.)
    const Dataset kept_labels{kept.x, kept.y};
    const bool fitted_before = trainer->CheckLearnt(kept_labels, train_masks).ok();
    double loss = 0;
    for (int64_t e = 0; e < epochs; ++e) {
      ADAPTD_ASSIGN_OR_RETURN(loss, trainer->TrainEpoch(train, train_masks, progress, extra,
                                                        should_stop));
    }
    if (fitted_before) ADAPTD_RETURN_IF_ERROR(trainer->CheckLearnt(kept_labels, train_masks));

    ContinualState next = state;
    next.curvature_last = at::Tensor();  // this run's posterior took it in
    TakePosterior(*trainer, n, &next);
    next.memory = std::move(kept);
    return Finish(std::move(next), *trainer, loss, start);
  });
}

}  // namespace adaptd

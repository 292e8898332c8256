#include "core/mpe.h"

#include <algorithm>
#include <utility>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

// The model's own input check, in the parameters' dtype: a model switched to float64 (an
// oracle in tests) takes float64 inputs of the same shapes.
absl::Status CheckModelInput(Model& model, const at::Tensor& x) {
  const at::ScalarType dtype = model.Parameters()[0].scalar_type();
  if (x.defined() && dtype != at::kFloat && x.scalar_type() == dtype) {
    return model.CheckInput(at::empty(x.sizes(), at::TensorOptions().device(at::kMeta)));
  }
  return model.CheckInput(x);
}

// x as the model takes it, and labels int64 [N] inside [0, K) and inside the head.
absl::Status CheckExamples(Model& model, const at::Tensor& x, const at::Tensor& y,
                           const at::Tensor& mask) {
  ADAPTD_RETURN_IF_ERROR(CheckModelInput(model, x));
  const int64_t k = model.spec().num_classes;
  if (!y.defined() || y.scalar_type() != at::kLong || y.dim() != 1 || y.size(0) != x.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must be int64 [", x.size(0), "]; got ", DescribeTensor(y)));
  }
  ADAPTD_RETURN_IF_ERROR(CheckLabelMask(mask, k));
  const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
  if (lo < 0 || hi >= k) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels must lie in [0, ", k, "); got values in [", lo, ", ", hi, "]"));
  }
  if (mask.defined() && !mask.cpu().index_select(0, y.cpu()).all().item<bool>()) {
    return absl::InvalidArgumentError("every label must lie inside label_mask (the task's head)");
  }
  return absl::OkStatus();
}

absl::Status CheckCovariance(Model& model, const Covariance& sigma) {
  const int64_t p = model.NumParameters();
  if (sigma.numel() != p) {
    return absl::InvalidArgumentError(
        absl::StrCat("covariance covers ", sigma.numel(), " parameters; the model has ", p));
  }
  return absl::OkStatus();
}

// One batch's logits (masked), softmax terms and J Sigma J^T (diagonal or full).
struct Batch {
  int64_t start = 0;
  at::Tensor logits;
  at::Tensor labels;
  SoftmaxTerms terms;
  at::Tensor gram;
};

// Validates, then runs `fn(const Batch&)` over the data set in batches (of SweepRowsPerBatch).
template <typename Fn>
absl::Status ForEachBatch(Model& model, const Covariance& sigma, const Dataset& data,
                          const MpeOptions& options, bool full, Fn&& fn) {
  ADAPTD_RETURN_IF_ERROR(options.Validate());
  ADAPTD_RETURN_IF_ERROR(CheckExamples(model, data.x, data.y, options.label_mask));
  ADAPTD_RETURN_IF_ERROR(CheckCovariance(model, sigma));
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<LogitJacobian> jac, LogitJacobian::Create(model));
  const int64_t n = data.size(), rows = SweepRowsPerBatch(model, options.batch_size);
  for (int64_t start = 0; start < n; start += rows) {
    if (options.should_stop && options.should_stop()) {
      return absl::CancelledError(absl::StrCat("stopped after ", start, " of ", n, " examples"));
    }
    const int64_t len = std::min(rows, n - start);
    ADAPTD_ASSIGN_OR_RETURN(LogitJacobian::Output out,
                            jac->SigmaGram(data.x.narrow(0, start, len), sigma, full));
    ADAPTD_RETURN_IF_ERROR(CallTorch([&]() -> absl::Status {
      at::NoGradGuard no_grad;
      Batch b;
      b.start = start;
      b.logits = MaskLogits(out.logits, options.label_mask);
      b.labels = data.y.narrow(0, start, len).to(b.logits.device());
      b.terms = ComputeSoftmaxTerms(b.logits, b.labels);
      b.gram = out.value;
      return fn(b);
    }));
  }
  return absl::OkStatus();
}

// The per-example shift of the logits for a batch under `options`.
absl::StatusOr<at::Tensor> BatchShift(const Batch& b, const MpeOptions& options) {
  at::Tensor lambda = b.terms.lambda;
  if (options.exclude_self && options.loo == LooMode::kFull) {
    const at::Tensor& p = b.terms.probs;  // the full softmax Hessian diag(p) - p p^T
    lambda = at::diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1);
  }
  return LooLogitShift(b.terms.error, lambda, b.gram, options.exclude_self);
}

at::Tensor CpuLike(int64_t n, int64_t k, const at::Tensor& like) {
  const auto opts = at::TensorOptions().dtype(like.scalar_type());
  return k > 0 ? at::empty({n, k}, opts) : at::empty({n}, opts);
}

}  // namespace

absl::Status MpeOptions::Validate() const {
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be >= 1; got ", batch_size));
  }
  return absl::OkStatus();
}

absl::Status InfluenceOptions::Validate() const {
  if (top_k < 1) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 1; got ", top_k));
  if (batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch_size must be >= 1; got ", batch_size));
  }
  return absl::OkStatus();
}

SoftmaxTerms ComputeSoftmaxTerms(const at::Tensor& logits, const at::Tensor& labels) {
  SoftmaxTerms t;
  t.probs = at::softmax(logits, 1);
  t.error = t.probs.scatter_add(1, labels.unsqueeze(1), -at::ones_like(t.probs).narrow(1, 0, 1));
  t.lambda = t.probs * (1 - t.probs);
  return t;
}

absl::StatusOr<at::Tensor> LooLogitShift(const at::Tensor& error, const at::Tensor& lambda,
                                         const at::Tensor& gram, bool exclude_self) {
  if (!error.defined() || error.dim() != 2 || !error.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("error must be floating [N, K]; got ", DescribeTensor(error)));
  }
  const int64_t n = error.size(0), k = error.size(1);
  auto shaped = [&](const at::Tensor& t) {
    return t.defined() && t.is_floating_point() && t.size(0) == n && t.size(1) == k &&
           (t.dim() == 2 || (t.dim() == 3 && t.size(2) == k));
  };
  if (!shaped(gram) || !shaped(lambda)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "gram and lambda must be [", n, ", ", k, "] or [", n, ", ", k, ", ", k,
        "] to match error; got gram ", DescribeTensor(gram), " and lambda ",
        DescribeTensor(lambda)));
  }
  return CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    if (gram.dim() == 2) {
      if (!exclude_self) return error * gram;
      const at::Tensor lam = lambda.dim() == 3 ? lambda.diagonal(0, 1, 2) : lambda;
      const at::Tensor denom = 1 - lam * gram;
      if (!(denom.min().item<double>() > 0)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "exclude_self needs 1 - lambda v > 0 for every example (a covariance that contains "
            "each example's curvature); the smallest is ", denom.min().item<double>()));
      }
      return error * gram / denom;
    }
    const at::Tensor e = error.unsqueeze(2);
    if (!exclude_self) return at::bmm(gram, e).squeeze(2);
    // Woodbury: J (S - J^T Lambda J)^-1 J^T = Gamma (I - Lambda Gamma)^-1.
    const at::Tensor lam = lambda.dim() == 2 ? at::diag_embed(lambda) : lambda;
    const at::Tensor a = at::eye(k, gram.options()).expand({n, k, k}) - at::bmm(lam, gram);
    auto [z, info] = at::linalg_solve_ex(a, e);
    if (info.ne(0).any().item<bool>() || !z.isfinite().all().item<bool>()) {
      return absl::FailedPreconditionError(
          "exclude_self: I - Lambda Gamma is singular for some example (the covariance does "
          "not contain that example's curvature)");
    }
    return at::bmm(gram, z).squeeze(2);
  });
}

namespace {

// One pass over the data for the memory map, the LOO estimate, or both (either may be null):
// J Sigma J^T, which dominates each, is computed once. The full K x K block only when the LOO
// estimate asks for it; the map then takes its diagonal.
absl::Status MapAndLoo(Model& model, const Covariance& sigma, const Dataset& data,
                       const MpeOptions& options, MemoryMap* map, LooEstimate* loo) {
  double correct = 0;
  const bool full = loo != nullptr && options.loo == LooMode::kFull;
  ADAPTD_RETURN_IF_ERROR(ForEachBatch(
      model, sigma, data, options, full, [&](const Batch& b) -> absl::Status {
        const int64_t n = data.size(), k = b.logits.size(1), len = b.logits.size(0);
        if (map != nullptr) {
          if (!map->error.defined()) {
            map->error = CpuLike(n, k, b.logits);
            map->variance = CpuLike(n, k, b.logits);
            map->lambda = CpuLike(n, k, b.logits);
            map->sensitivity = CpuLike(n, 0, b.logits);
          }
          const at::Tensor v = b.gram.dim() == 3 ? b.gram.diagonal(0, 1, 2) : b.gram;
          map->error.narrow(0, b.start, len).copy_(b.terms.error);
          map->variance.narrow(0, b.start, len).copy_(v);
          map->lambda.narrow(0, b.start, len).copy_(b.terms.lambda);
          map->sensitivity.narrow(0, b.start, len)
              .copy_((b.terms.error * b.terms.lambda * v).abs().sum(1));
        }
        if (loo != nullptr) {
          ADAPTD_ASSIGN_OR_RETURN(at::Tensor shift, BatchShift(b, options));
          const at::Tensor loo_logits = b.logits + shift;  // masked classes stay at -infinity
          const at::Tensor nll =
              -at::log_softmax(loo_logits, 1).gather(1, b.labels.unsqueeze(1)).squeeze(1);
          if (!loo->shift.defined()) {
            loo->shift = CpuLike(n, k, b.logits);
            loo->nll_per_example = CpuLike(n, 0, b.logits);
          }
          loo->shift.narrow(0, b.start, len).copy_(shift);
          loo->nll_per_example.narrow(0, b.start, len).copy_(nll);
          correct += loo_logits.argmax(1).eq(b.labels).sum().item<double>();
        }
        return absl::OkStatus();
      }));
  if (loo != nullptr) {
    loo->nll = loo->nll_per_example.to(at::kDouble).mean().item<double>();
    loo->accuracy = correct / static_cast<double>(data.size());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MemoryMap> ComputeMemoryMap(Model& model, const Covariance& sigma,
                                           const Dataset& data, const MpeOptions& options) {
  MemoryMap map;
  ADAPTD_RETURN_IF_ERROR(MapAndLoo(model, sigma, data, options, &map, nullptr));
  return map;
}

absl::StatusOr<LooEstimate> EstimateLoo(Model& model, const Covariance& sigma, const Dataset& data,
                                        const MpeOptions& options) {
  LooEstimate loo;
  ADAPTD_RETURN_IF_ERROR(MapAndLoo(model, sigma, data, options, nullptr, &loo));
  return loo;
}

absl::StatusOr<MemoryMapAndLoo> ComputeMemoryMapAndLoo(Model& model, const Covariance& sigma,
                                                       const Dataset& data,
                                                       const MpeOptions& options) {
  MemoryMapAndLoo out;
  ADAPTD_RETURN_IF_ERROR(MapAndLoo(model, sigma, data, options, &out.map, &out.loo));
  return out;
}

absl::StatusOr<at::Tensor> SelfInfluence(Model& model, const Covariance& sigma, const Dataset& data,
                                         const MpeOptions& options) {
  MpeOptions full = options;
  full.loo = LooMode::kFull;  // a couples the classes: the whole K x K block
  at::Tensor out;
  ADAPTD_RETURN_IF_ERROR(ForEachBatch(
      model, sigma, data, full, /*full=*/true, [&](const Batch& b) -> absl::Status {
        ADAPTD_ASSIGN_OR_RETURN(at::Tensor shift, BatchShift(b, full));
        const at::Tensor& p = b.terms.probs;
        const at::Tensor c = p.argmax(1, /*keepdim=*/true);
        // a = d p_c / d f = p_c (onehot(c) - p); the change of p_c is a . (the logits' shift).
        const at::Tensor a = p.gather(1, c) * (at::zeros_like(p).scatter_(1, c, 1.0) - p);
        if (!out.defined()) out = CpuLike(data.size(), 0, b.logits);
        out.narrow(0, b.start, a.size(0)).copy_((a * shift).sum(1));
        return absl::OkStatus();
      }));
  return out;
}

absl::StatusOr<std::unique_ptr<InfluenceScorer>> InfluenceScorer::Create(
    Model& model, const Covariance& sigma, const at::Tensor& query,
    const InfluenceOptions& options) {
  ADAPTD_RETURN_IF_ERROR(options.Validate());
  const int64_t k = model.spec().num_classes;
  ADAPTD_RETURN_IF_ERROR(CheckLabelMask(options.label_mask, k));
  const bool single = query.defined() &&
                      query.dim() == static_cast<int64_t>(model.spec().input_shape.size());
  const at::Tensor q = single ? query.unsqueeze(0) : query;
  ADAPTD_RETURN_IF_ERROR(CheckModelInput(model, q));
  if (q.size(0) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("influence takes one query example; got ", DescribeTensor(query)));
  }
  if (options.query_class < -1 || options.query_class >= k) {
    return absl::InvalidArgumentError(absl::StrCat("query_class must be -1 (predicted) or in [0, ",
                                                   k, "); got ", options.query_class));
  }
  if (options.query_class >= 0 && options.label_mask.defined() &&
      !options.label_mask[options.query_class].item<bool>()) {
    return absl::InvalidArgumentError(
        absl::StrCat("query_class ", options.query_class, " lies outside label_mask"));
  }
  ADAPTD_RETURN_IF_ERROR(CheckCovariance(model, sigma));
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<LogitJacobian> jac, LogitJacobian::Create(model));
  std::unique_ptr<InfluenceScorer> scorer(new InfluenceScorer(model, std::move(jac), options));
  scorer->sigma_ = sigma;
  ADAPTD_RETURN_IF_ERROR(CallTorch([&]() -> absl::Status {
    at::AutoGradMode grad_mode(true);
    model.SetTraining(false);
    const std::vector<at::Tensor> params = model.Parameters();
    const at::Tensor& w = params[0];
    const at::Tensor p = at::softmax(MaskLogits(model.Forward(q.to(w.device())), options.label_mask), 1);
    ADAPTD_RETURN_IF_ERROR(CheckFiniteOutputs(p, q));
    const int64_t c = options.query_class >= 0 ? options.query_class : p.argmax(1).item<int64_t>();
    const at::Tensor pc = p[0][c];
    const std::vector<at::Tensor> grads = torch::autograd::grad({pc}, params, {}, false, false, true);
    at::NoGradGuard no_grad;
    scorer->u_ = sigma.To(w.device(), w.scalar_type()).Apply(FlattenLike(grads, params));
    ADAPTD_RETURN_IF_ERROR(CheckFiniteOutputs(scorer->u_.unsqueeze(0), q));
    scorer->query_class_ = c;
    scorer->query_probability_ = pc.item<double>();
    return absl::OkStatus();
  }));
  return scorer;
}

absl::StatusOr<at::Tensor> InfluenceScorer::Add(const at::Tensor& x, const at::Tensor& y,
                                                int64_t first_index) {
  ADAPTD_RETURN_IF_ERROR(CheckExamples(model_, x, y, options_.label_mask));
  ADAPTD_ASSIGN_OR_RETURN(LogitJacobian::Output out, jacobian_->Jvp(x, u_));
  at::Tensor gram;
  if (options_.exclude_self) {
    ADAPTD_ASSIGN_OR_RETURN(LogitJacobian::Output g, jacobian_->SigmaGram(x, sigma_, /*full=*/true));
    gram = g.value;
  }
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor error, CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    const at::Tensor logits = MaskLogits(out.logits, options_.label_mask);
    const SoftmaxTerms t = ComputeSoftmaxTerms(logits, y.to(logits.device()));
    if (!gram.defined()) return t.error;
    // (S - J^T Lambda J)^-1 J^T e = Sigma J^T (I - Lambda Gamma)^-1 e.
    const at::Tensor& p = t.probs;
    const at::Tensor lambda = at::diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1);
    const int64_t k = p.size(1);
    const at::Tensor a = at::eye(k, p.options()).expand({p.size(0), k, k}) - at::bmm(lambda, gram);
    auto [z, info] = at::linalg_solve_ex(a, t.error.unsqueeze(2));
    if (info.ne(0).any().item<bool>()) {
      return absl::FailedPreconditionError(
          "exclude_self: I - Lambda Gamma is singular for some example (the covariance does "
          "not contain that example's curvature)");
    }
    return z.squeeze(2);
  }));
  return CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    // delta p*_j = u^T J_j^T e_j = (J_j u) . e_j; masked classes have e = 0.
    const at::Tensor influence = (error * out.value).sum(1).cpu();
    at::Tensor keys = options_.order == InfluenceOrder::kMagnitude   ? influence.abs()
                      : options_.order == InfluenceOrder::kSupporting ? -influence
                                                                       : influence;
    at::Tensor values = influence;
    at::Tensor indices = at::arange(first_index, first_index + influence.size(0), at::kLong);
    if (top_keys_.defined()) {
      keys = at::cat({top_keys_, keys});
      values = at::cat({top_values_, values});
      indices = at::cat({top_indices_, indices});
    }
    auto [best, order] = at::topk(keys, std::min<int64_t>(options_.top_k, keys.size(0)));
    top_keys_ = best;
    top_values_ = values.index_select(0, order);
    top_indices_ = indices.index_select(0, order);
    return influence;
  });
}

std::vector<InfluenceEntry> InfluenceScorer::Top() const {
  std::vector<InfluenceEntry> top;
  if (!top_keys_.defined()) return top;
  const at::Tensor v = top_values_.to(at::kDouble);
  for (int64_t i = 0; i < v.size(0); ++i) {
    top.push_back({top_indices_[i].item<int64_t>(), v[i].item<double>()});
  }
  return top;
}

absl::StatusOr<std::vector<InfluenceEntry>> TopInfluences(Model& model, const Covariance& sigma,
                                                          const at::Tensor& query,
                                                          const Dataset& data,
                                                          const InfluenceOptions& options) {
  ADAPTD_RETURN_IF_ERROR(CheckExamples(model, data.x, data.y, options.label_mask));
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<InfluenceScorer> scorer,
                          InfluenceScorer::Create(model, sigma, query, options));
  // Without exclude_self a row costs K values at the logits (Jvp); with it, a K x K block.
  const int64_t rows = options.exclude_self ? SweepRowsPerBatch(model, options.batch_size)
                                            : options.batch_size;
  for (int64_t start = 0; start < data.size(); start += rows) {
    const int64_t len = std::min(rows, data.size() - start);
    ADAPTD_RETURN_IF_ERROR(
        scorer->Add(data.x.narrow(0, start, len), data.y.narrow(0, start, len), start).status());
  }
  return scorer->Top();
}

}  // namespace adaptd

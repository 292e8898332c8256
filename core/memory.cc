#include "core/memory.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/jacobian.h"
#include "core/mpe.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

at::Tensor CatOrEmpty(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || a.size(0) == 0) return b;
  if (!b.defined() || b.size(0) == 0) return a;
  return at::cat({a, b});
}

}  // namespace

Memory Memory::Select(const at::Tensor& index) const {
  Memory m;
  m.x = x.index_select(0, index);
  m.y = y.index_select(0, index);
  m.task = task.index_select(0, index);
  m.id = id.index_select(0, index);
  if (soft.defined()) m.soft = soft.index_select(0, index);
  if (logits.defined()) m.logits = logits.index_select(0, index);
  return m;
}

Memory Memory::Concat(const Memory& a, const Memory& b) {
  Memory m;
  m.x = CatOrEmpty(a.x, b.x);
  m.y = CatOrEmpty(a.y, b.y);
  m.task = CatOrEmpty(a.task, b.task);
  m.id = CatOrEmpty(a.id, b.id);
  m.soft = CatOrEmpty(a.soft, b.soft);
  m.logits = CatOrEmpty(a.logits, b.logits);
  return m;
}

Memory Memory::Clone() const {
  Memory m;
  for (auto [dst, src] : {std::pair{&m.x, &x}, {&m.y, &y}, {&m.task, &task}, {&m.id, &id},
                          {&m.soft, &soft}, {&m.logits, &logits}}) {
    if (src->defined()) *dst = src->clone();
  }
  return m;
}

void Memory::AppendTo(TensorMap& out, const std::string& prefix) const {
  if (size() == 0) return;
  out[prefix + "x"] = x;
  out[prefix + "y"] = y;
  out[prefix + "task"] = task;
  out[prefix + "id"] = id;
  if (soft.defined()) out[prefix + "soft"] = soft;
  if (logits.defined()) out[prefix + "logits"] = logits;
}

absl::StatusOr<Memory> Memory::FromTensors(const TensorMap& in, const std::string& prefix) {
  Memory m;
  if (in.find(prefix + "y") == in.end()) return m;  // empty memory
  ADAPTD_ASSIGN_OR_RETURN(m.y, GetTensor(in, prefix + "y", at::kLong));
  const int64_t n = m.y.numel();
  ADAPTD_ASSIGN_OR_RETURN(m.x, GetTensor(in, prefix + "x", at::kFloat));
  ADAPTD_ASSIGN_OR_RETURN(m.task, GetTensor(in, prefix + "task", at::kLong, n));
  ADAPTD_ASSIGN_OR_RETURN(m.id, GetTensor(in, prefix + "id", at::kLong, n));
  if (m.x.dim() < 1 || m.x.size(0) != n) {
    return absl::InvalidArgumentError(absl::StrCat("memory x is ", DescribeTensor(m.x),
                                                   "; expected ", n, " rows"));
  }
  if (in.count(prefix + "soft")) {
    ADAPTD_ASSIGN_OR_RETURN(m.soft, GetTensor(in, prefix + "soft", at::kFloat));
  }
  if (in.count(prefix + "logits")) {
    ADAPTD_ASSIGN_OR_RETURN(m.logits, GetTensor(in, prefix + "logits", at::kFloat));
  }
  return m;
}

absl::StatusOr<SelectionMethod> ParseSelection(const std::string& name) {
  if (name == "lambda") return SelectionMethod::kLambda;
  if (name == "sensitivity") return SelectionMethod::kSensitivity;
  if (name == "random") return SelectionMethod::kRandom;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown memory selection '", name, "'; expected lambda, sensitivity or random"));
}

at::Tensor LambdaScores(const at::Tensor& probs) { return (probs * (1 - probs)).sum(1); }

absl::StatusOr<Memory> SelectMemory(Model& model, const Dataset& data, const at::Tensor& ids,
                                    int64_t task_id, const at::Tensor& label_mask,
                                    const SelectionOptions& options) {
  const int64_t n = data.size();
  if (n == 0) return absl::InvalidArgumentError("cannot select memory from an empty task");
  if (options.points < 0 || options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("memory points must be >= 0 and batch_size >= 1; got ",
                                                   options.points, " and ", options.batch_size));
  }
  if (options.held < 0 || options.held > n || !(options.held_weight >= 1) ||
      !std::isfinite(options.held_weight)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "held rows must lie in [0, ", n, "] and weigh >= 1; got ", options.held, " weighing ",
        options.held_weight));
  }
  if (ids.defined() && (ids.dim() != 1 || ids.size(0) != n)) {
    return absl::InvalidArgumentError(absl::StrCat("ids must be int64 [", n, "]; got ", DescribeTensor(ids)));
  }
  ADAPTD_RETURN_IF_ERROR(model.CheckInput(data.x.narrow(0, 0, 1)));
  Covariance covariance;
  if (options.method == SelectionMethod::kSensitivity) {
    if (!options.variance.defined()) {
      return absl::InvalidArgumentError("sensitivity selection needs the posterior variance; got none");
    }
    ADAPTD_ASSIGN_OR_RETURN(covariance, Covariance::Diagonal(options.variance));
  }
  return CallTorch([&]() -> absl::StatusOr<Memory> {
    at::NoGradGuard no_grad;
    model.SetTraining(false);
    const int64_t k = model.spec().num_classes;
    // Per-class quota; shortfalls are redistributed below.
    const at::Tensor counts = at::bincount(data.y, {}, k);
    std::vector<int64_t> quota(k, 0);
    int64_t left = std::min(options.points, n);
    {
      std::vector<int64_t> avail(k);
      for (int64_t c = 0; c < k; ++c) avail[c] = counts[c].item<int64_t>();
      while (left > 0) {
        int64_t open = 0;
        for (int64_t c = 0; c < k; ++c) open += avail[c] > quota[c];
        if (open == 0) break;
        const int64_t share = std::max<int64_t>(1, left / open);
        for (int64_t c = 0; c < k && left > 0; ++c) {
          const int64_t add = std::min({share, avail[c] - quota[c], left});
          if (add > 0) {
            quota[c] += add;
            left -= add;
          }
        }
      }
    }
    // Streaming top-quota per class over (score, index) candidates.
    std::vector<at::Tensor> best_score(k), best_index(k);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
    const bool draw_with_held = options.method == SelectionMethod::kRandom && options.held > 0;
    if (draw_with_held) {
      // Indices only: per class, the places that go to new rows are drawn one by one without
      // replacement from the examples the held rows stand for and the new ones.
      const at::Tensor is_new = at::arange(n, at::kLong).ge(options.held);
      for (int64_t c = 0; c < k; ++c) {
        if (quota[c] == 0) continue;
        const at::Tensor of_class = data.y.eq(c);
        const at::Tensor held_rows = of_class.logical_and(is_new.logical_not()).nonzero().squeeze(1);
        const at::Tensor new_rows = of_class.logical_and(is_new).nonzero().squeeze(1);
        double pool = static_cast<double>(held_rows.numel()) * options.held_weight +
                      static_cast<double>(new_rows.numel());
        double fresh = static_cast<double>(new_rows.numel());
        int64_t take_new = 0;
        const at::Tensor u = at::rand({quota[c]}, gen, at::kDouble);
        for (int64_t i = 0; i < quota[c] && pool > 0; ++i, pool -= 1) {
          if (u[i].item<double>() * pool < fresh) {
            ++take_new;
            fresh -= 1;
          }
        }
        const int64_t take_held = std::min<int64_t>(quota[c] - take_new, held_rows.numel());
        take_new = quota[c] - take_held;
        auto some = [&](const at::Tensor& rows, int64_t count) {
          return rows.index_select(0, at::randperm(rows.numel(), gen, at::TensorOptions(at::kLong))
                                          .narrow(0, 0, count));
        };
        best_index[c] = at::cat({some(held_rows, take_held), some(new_rows, take_new)});
      }
    }
    for (int64_t start = 0; start < n && !draw_with_held; start += options.batch_size) {
      if (options.should_stop && options.should_stop()) {
        return absl::CancelledError(absl::StrCat("memory selection stopped after ", start, " of ", n,
                                                 " examples"));
      }
      const int64_t len = std::min(options.batch_size, n - start);
      at::Tensor score;
      if (options.method == SelectionMethod::kLambda) {
        const at::Tensor logits = MaskLogits(
            model.Forward(data.x.narrow(0, start, len).to(model.Parameters()[0].device())), label_mask);
        score = LambdaScores(at::softmax(logits, 1)).cpu();
      } else if (options.method == SelectionMethod::kSensitivity) {
        MpeOptions mo;
        mo.label_mask = label_mask;
        mo.should_stop = options.should_stop;
        const Dataset batch{data.x.narrow(0, start, len), data.y.narrow(0, start, len)};
        ADAPTD_ASSIGN_OR_RETURN(MemoryMap map, ComputeMemoryMap(model, covariance, batch, mo));
        score = map.sensitivity.cpu().to(at::kFloat);
      } else {
        score = at::rand({len}, gen, at::kDouble).to(at::kFloat);
      }
      // A score that is not a number (an input whose logits overflowed) ranks last, not first
      // as topk would rank it.
      score = at::nan_to_num(score, -std::numeric_limits<double>::infinity());
      const at::Tensor index = at::arange(start, start + len, at::kLong);
      const at::Tensor y = data.y.narrow(0, start, len);
      for (int64_t c = 0; c < k; ++c) {
        if (quota[c] == 0) continue;
        const at::Tensor sel = y.eq(c).nonzero().squeeze(1);
        if (sel.numel() == 0) continue;
        at::Tensor s = CatOrEmpty(best_score[c], score.index_select(0, sel));
        at::Tensor i = CatOrEmpty(best_index[c], index.index_select(0, sel));
        if (s.numel() > quota[c]) {
          const auto top = s.topk(quota[c]);
          s = std::get<0>(top);
          i = i.index_select(0, std::get<1>(top));
        }
        best_score[c] = s;
        best_index[c] = i;
      }
    }
    std::vector<at::Tensor> picked;
    for (int64_t c = 0; c < k; ++c) {
      if (best_index[c].defined()) picked.push_back(best_index[c]);
    }
    Memory m;
    if (picked.empty()) return m;
    const at::Tensor index = at::cat(picked);
    m.x = data.x.index_select(0, index);
    m.y = data.y.index_select(0, index);
    m.task = at::full({index.numel()}, task_id, at::kLong);
    m.id = ids.defined() ? ids.index_select(0, index) : index.clone();
    const at::Tensor logits = MaskLogits(
        model.Forward(m.x.to(model.Parameters()[0].device())), label_mask).cpu();
    m.logits = logits;
    m.soft = at::softmax(logits, 1);
    return m;
  });
}

Memory MixMemory(const Memory& memory, int64_t per_example, at::Generator& gen) {
  Memory mixed;
  const int64_t m = memory.size();
  if (m == 0 || per_example <= 0) return mixed;
  const at::Tensor first = at::arange(m, at::kLong).repeat({per_example});
  mixed.task = memory.task.index_select(0, first);
  // Each row's partner: a uniform draw among its task's examples.
  at::Tensor partner = at::empty_like(first);
  const at::Tensor tasks = std::get<0>(at::_unique(memory.task));
  for (int64_t i = 0; i < tasks.numel(); ++i) {
    const at::Tensor pool = memory.task.eq(tasks[i]).nonzero().squeeze(1);
    const at::Tensor slots = mixed.task.eq(tasks[i]).nonzero().squeeze(1);
    const at::Tensor draw = at::randint(pool.numel(), {slots.numel()}, gen, at::kLong);
    partner.index_put_({slots}, pool.index_select(0, draw));
  }
  std::vector<int64_t> shape(memory.x.dim(), 1);
  shape[0] = first.numel();
  const at::Tensor u = at::rand({first.numel()}, gen, memory.x.options()).view(shape);
  mixed.x = memory.x.index_select(0, first) * u + memory.x.index_select(0, partner) * (1 - u);
  mixed.y = memory.y.index_select(0, first);
  mixed.id = memory.id.index_select(0, first);
  return mixed;
}

absl::Status RefreshTargets(Model& model, Memory& memory, const at::Tensor& task_masks) {
  if (memory.size() == 0) return absl::OkStatus();
  return CallTorch([&]() -> absl::Status {
    model.SetTraining(false);
    const at::Tensor heads = task_masks.defined() ? task_masks.index_select(0, memory.task) : at::Tensor();
    memory.logits = ChunkedLogits(model, memory.x, heads, 1000).cpu();
    memory.soft = at::softmax(memory.logits, 1);
    return absl::OkStatus();
  });
}

}  // namespace adaptd

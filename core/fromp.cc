#include "core/fromp.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"

namespace adaptd {
namespace {

// K^-1 for the symmetric kernel `gram` + jitter I, by Cholesky; for nearly collinear points, in
// float64 with the jitter raised until it factors. Undefined when nothing factors; `*used` is
// the last jitter tried.
at::Tensor KernelInverse(const at::Tensor& gram, double jitter, double* used) {
  at::Tensor kernel = gram.clone();
  kernel.diagonal().add_(jitter);
  *used = jitter;
  auto [chol, info] = at::linalg_cholesky_ex(kernel);
  if (info.item<int64_t>() == 0) return at::cholesky_inverse(chol);
  const at::Tensor gram64 = gram.to(at::kDouble);
  const double base = std::max(jitter, 1e-12);
  std::vector<double> tries = {jitter};
  for (double j = 10 * base; j <= 1e6 * base; j *= 10) tries.push_back(j);
  for (const double j : tries) {
    at::Tensor k64 = gram64.clone();
    k64.diagonal().add_(j);
    *used = j;
    std::tie(chol, info) = at::linalg_cholesky_ex(k64);
    if (info.item<int64_t>() == 0) return at::cholesky_inverse(chol).to(gram.scalar_type());
  }
  return at::Tensor();
}

}  // namespace

absl::StatusOr<std::vector<FrompBlock>> BuildFrompBlocks(Model& model, FlatParameters& flat,
                                                         const Memory& memory,
                                                         const at::Tensor& task_masks,
                                                         const at::Tensor& sigma2, double jitter) {
  std::vector<FrompBlock> blocks;
  if (memory.size() == 0) return blocks;
  model.SetTraining(false);
  const int64_t num_classes = model.spec().num_classes;
  const at::Tensor tasks = std::get<0>(at::_unique(memory.task));
  const at::Device device = flat.params().device();
  for (int64_t t = 0; t < tasks.numel(); ++t) {
    const int64_t task = tasks[t].item<int64_t>();
    const at::Tensor rows = memory.task.eq(task).nonzero().squeeze(1);
    const int64_t m = rows.numel();
    const at::Tensor x = memory.x.index_select(0, rows).to(device);
    // The task's head; undefined (every class) on a single head.
    const at::Tensor head = task_masks.defined() ? task_masks[task].to(device) : at::Tensor();
    for (int64_t k = 0; k < num_classes; ++k) {
      if (head.defined() && !head[k].item<bool>()) continue;
      at::Tensor jac = at::empty({m, flat.numel()}, flat.params().options());
      for (int64_t i = 0; i < m; ++i) {
        flat.ZeroGrad();
        const at::Tensor logits = MaskLogits(model.Forward(x.narrow(0, i, 1)), head);
        at::softmax(logits, 1)[0][k].backward();
        jac[i].copy_(flat.grads());
      }
      double used = jitter;
      at::Tensor kinv = KernelInverse((jac * sigma2).matmul(jac.t()), jitter, &used);
      if (!kinv.defined()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "FROMP's kernel on task ", task, "'s memorable points, class ", k,
            ", is not positive definite even with jitter ", used, " (non-finite Jacobians?)"));
      }
      FrompBlock b;
      b.rows = rows.to(device);
      b.klass = k;
      b.kinv = std::move(kinv);
      b.m_old = memory.soft.index_select(0, rows).select(1, k).to(device);
      blocks.push_back(std::move(b));
    }
  }
  flat.ZeroGrad();
  return blocks;
}

at::Tensor FrompTerm(const at::Tensor& probs, const std::vector<FrompBlock>& blocks) {
  at::Tensor term = at::zeros({}, probs.options());
  for (const FrompBlock& b : blocks) {
    const at::Tensor m = probs.index_select(0, b.rows).select(1, b.klass);
    const at::Tensor delta = (m - b.m_old).detach();
    const at::Tensor v = b.kinv.matmul(delta.unsqueeze(1)).squeeze(1);
    // Value 1/2 delta^T K^-1 delta; gradient K^-1 delta through m (K fixed within the task).
    const at::Tensor surrogate = (v * m).sum();
    term = term + surrogate - surrogate.detach() + 0.5 * (delta * v).sum();
  }
  return term;
}

}  // namespace adaptd

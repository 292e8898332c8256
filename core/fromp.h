// FROMP: functional regularisation of the memorable past (Pan et al., NeurIPS 2020, Eq. 7; the
// reference code's opt_fromp.py). For each past task s and each class k of its head, the old
// model's probabilities m_old of class k at the task's memorable points are held with the
// Gaussian-process kernel of the linearised model,
//   K_{s,k} = J_{s,k} Sigma J_{s,k}^T + jitter I,
// J_{s,k} [M_s, P] the Jacobian of those probabilities at the start of the new task and Sigma the
// old posterior's diagonal covariance. The term is
//   sum_{s,k} 1/2 (m(w) - m_old)^T K_{s,k}^-1 (m(w) - m_old),
// and its gradient is taken, as in the reference code, with the kernel fixed for the task:
// J(w)^T K^-1 (m(w) - m_old).
#ifndef ADAPTD_CORE_FROMP_H_
#define ADAPTD_CORE_FROMP_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "core/flat_params.h"
#include "core/memory.h"
#include "core/model.h"

namespace adaptd {

// One past task's kernel for one class of its head.
struct FrompBlock {
  at::Tensor rows;   // int64 [M_s]: the task's rows of the memory, on the parameters' device
  int64_t klass;     // the class k
  at::Tensor kinv;   // [M_s, M_s]: K_{s,k}^-1
  at::Tensor m_old;  // [M_s]: the old probabilities of class k
};

// The blocks of every task in `memory` at the model's current weights (bound to `flat`), each
// class of the task's head (`task_masks` [T, K] for multi-head models; undefined for a single
// head, whose every class is a head class). `sigma2` [P] is Sigma's diagonal on the parameters'
// device. A kernel that float32 cannot factor is factored in float64 with the jitter raised
// tenfold at a time, up to 10^6 times; FAILED_PRECONDITION if it still cannot be.
absl::StatusOr<std::vector<FrompBlock>> BuildFrompBlocks(Model& model, FlatParameters& flat,
                                                         const Memory& memory,
                                                         const at::Tensor& task_masks,
                                                         const at::Tensor& sigma2, double jitter);

// The term for the current probabilities `probs` [M, K] of every memory row (softmax over each
// row's head). Its value is sum 1/2 d^T K^-1 d with d = m - m_old; its gradient with respect to
// `probs` is K^-1 d in each block's rows and class.
at::Tensor FrompTerm(const at::Tensor& probs, const std::vector<FrompBlock>& blocks);

}  // namespace adaptd

#endif  // ADAPTD_CORE_FROMP_H_

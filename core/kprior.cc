#include "core/kprior.h"

#include <torch/torch.h>

#include "core/model.h"

namespace adaptd {

at::Tensor FunctionSpaceTerm(const at::Tensor& f, const at::Tensor& target, Likelihood likelihood) {
  if (likelihood == Likelihood::kGaussian) return 0.5 * (f - target).square().sum();
  return SoftCrossEntropySum(f, target);
}

at::Tensor ReplayCorrectionTerm(const at::Tensor& logits, const at::Tensor& p_old,
                                const at::Tensor& labels) {
  const at::Tensor onehot = at::zeros_like(p_old).scatter_(1, labels.unsqueeze(1), 1.0);
  const at::Tensor safe = logits.masked_fill(logits.isinf(), 0.0);
  return (safe * (p_old - onehot).detach()).sum();
}

at::Tensor RemovalTerm(const at::Tensor& logits, const at::Tensor& p_old, const at::Tensor& labels) {
  return -ReplayCorrectionTerm(logits, p_old, labels);
}

at::Tensor DistillationTerm(const at::Tensor& logits, const at::Tensor& old_logits, double temperature) {
  const at::Tensor soft = at::softmax(old_logits / temperature, 1).detach();
  return FunctionSpaceTerm(logits / temperature, soft, Likelihood::kCategorical) *
         (temperature * temperature);
}

at::Tensor LabelSetTerm(const at::Tensor& logits, const at::Tensor& old_logits,
                        const at::Tensor& groups) {
  const int64_t b = logits.size(0), g = groups.size(0);
  // Row i * G + j: example i restricted to group j.
  const at::Tensor masks = groups.to(logits.device()).repeat({b, 1});
  const at::Tensor f = MaskLogits(logits.repeat_interleave(g, 0), masks);
  const at::Tensor f_old = MaskLogits(old_logits.repeat_interleave(g, 0), masks);
  return DistillationTerm(f, f_old, 1.0);
}

at::Tensor WeightSpaceTerm(const std::vector<at::Tensor>& parameters, const at::Tensor& anchor,
                           const at::Tensor& precision) {
  at::Tensor total = at::zeros({}, anchor.options());
  int64_t offset = 0;
  for (const at::Tensor& p : parameters) {
    const int64_t n = p.numel();
    const at::Tensor prec = precision.numel() == 1 ? precision.reshape({}) : precision.narrow(0, offset, n);
    total = total + (prec * (p.reshape({-1}) - anchor.narrow(0, offset, n)).square()).sum();
    offset += n;
  }
  return 0.5 * total;
}

}  // namespace adaptd

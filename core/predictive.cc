#include "core/predictive.h"

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {

absl::StatusOr<at::Tensor> PredictProbs(Model& model, FlatParameters& flat,
                                        const Posterior* posterior, const at::Tensor& x,
                                        const PredictOptions& options, const at::Generator& gen) {
  ADAPTD_RETURN_IF_ERROR(model.CheckInput(x));
  if (options.mode == PredictMode::kBayes && posterior == nullptr) {
    return absl::InvalidArgumentError("bayes prediction needs a posterior; this model has none (trained with adam or sgd?)");
  }
  if (options.samples < 1 || options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("samples and batch_size must be >= 1; got ",
                                                   options.samples, " and ", options.batch_size));
  }
  return CallTorch([&]() -> absl::StatusOr<at::Tensor> {
    at::NoGradGuard no_grad;
    model.SetTraining(false);
    const at::Device device = flat.params().device();
    const int64_t n = x.size(0);
    auto forward_probs = [&](int64_t start, int64_t len) {
      const at::Tensor xb = x.narrow(0, start, len).to(device);
      return at::softmax(MaskLogits(model.Forward(xb), options.label_mask), 1);
    };
    at::Tensor probs;
    if (options.mode == PredictMode::kMean) {
      if (posterior) flat.params().copy_(posterior->mean());
      std::vector<at::Tensor> parts;
      for (int64_t s = 0; s < n; s += options.batch_size) {
        parts.push_back(forward_probs(s, std::min(options.batch_size, n - s)).cpu());
      }
      probs = at::cat(parts);
    } else {
      // Sample-major: each weight sample is drawn once and applied to every batch.
      probs = at::zeros({n, model.spec().num_classes}, at::kFloat);
      at::Tensor params = flat.params();
      for (int64_t s = 0; s < options.samples; ++s) {
        ADAPTD_RETURN_IF_ERROR(posterior->SampleInto(params, gen));
        for (int64_t b = 0; b < n; b += options.batch_size) {
          const int64_t len = std::min(options.batch_size, n - b);
          probs.narrow(0, b, len).add_(forward_probs(b, len).cpu());
        }
      }
      probs.div_(static_cast<double>(options.samples));
      params.copy_(posterior->mean());
    }
    return probs;
  });
}

}  // namespace adaptd

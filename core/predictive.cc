#include "core/predictive.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/jacobian.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

// -sum_k p_k log p_k per row, with 0 log 0 = 0.
at::Tensor Entropy(const at::Tensor& p) { return at::special_entr(p).sum(-1); }

// Running sums over S probability draws per example: E p, E p^2 and E H[p]. The probability
// sums are float64: E p^2 - (E p)^2 in float32 cancels to noise of about 1e-7 in the variance,
// which would swamp the spread of a confident class (p near 1, std below 3e-4). The mean is
// rounded to the draws' dtype once, at the end.
struct Moments {
  at::ScalarType dtype;
  at::Tensor sum_h, sum_p64, sum_p2_64;
  Moments(int64_t n, int64_t k, const at::TensorOptions& opts)
      : dtype(opts.dtype().toScalarType()),
        sum_h(at::zeros({n}, opts)),
        sum_p64(at::zeros({n, k}, opts.dtype(at::kDouble))),
        sum_p2_64(at::zeros({n, k}, opts.dtype(at::kDouble))) {}
  // p: [B, K] (one draw for each of B examples starting at `start`) or [S, B, K].
  void Add(int64_t start, const at::Tensor& p) {
    const at::Tensor draws = p.dim() == 3 ? p : p.unsqueeze(0);
    const int64_t len = draws.size(1);
    sum_h.narrow(0, start, len).add_(Entropy(draws).sum(0).cpu());
    const at::Tensor d64 = draws.to(at::kDouble);
    sum_p64.narrow(0, start, len).add_(d64.sum(0).cpu());
    sum_p2_64.narrow(0, start, len).add_(d64.square().sum(0).cpu());
  }
  // Mean probabilities, their standard deviation and the expected entropy over `s` draws.
  void Finish(double s, Prediction& out) const {
    const at::Tensor mean64 = sum_p64 / s;
    out.probs = mean64.to(dtype);
    out.std = (sum_p2_64 / s - mean64.square()).clamp_min_(0).sqrt_().to(dtype);
    out.expected_entropy = sum_h / s;
  }
};

// Activations per layer in one chunk of draws: 128K floats (512 KB), which stay in a core's
// cache. At batch 256, chunks of 4M ran 2.3x slower than chunks of 64K-256K (bench/predict_speed).
constexpr int64_t kChunk = int64_t{1} << 17;

// Whether kBayes can draw pre-activations layer by layer: Linear layers, Flatten, ReLU and tanh
// only (a kind added to Layer later takes the weight-draw path until it is handled here).
bool LocalReparameterizable(const std::vector<Layer>& layers) {
  bool linear = false;
  for (const Layer& l : layers) {
    switch (l.kind) {
      case Layer::Kind::kLinear: linear = true; break;
      case Layer::Kind::kFlatten:
      case Layer::Kind::kRelu:
      case Layer::Kind::kTanh: break;
      default: return false;
    }
  }
  return linear;
}

// Draws of the logits for the examples x [B, ...] by local reparameterization: through a Linear
// layer with W ~ N(m_W, s_W^2) and b ~ N(m_b, s_b^2) independent per entry, the pre-activation
// of an input a is N(a m_W^T + m_b, a^2 (s_W^2)^T + s_b^2) per unit, and the next layer's
// weights are independent of it. Up to the first Linear layer the input is the same for every
// draw, so that layer's mean and standard deviation are formed once per batch (the constructor)
// and each Draw starts from them.
class LocalReparameterization {
 public:
  LocalReparameterization(const std::vector<Layer>& layers, const std::vector<at::Tensor>& mean,
                          const std::vector<at::Tensor>& var, const at::Tensor& x)
      : layers_(layers), mean_(mean), var_(var) {
    at::Tensor h = x;
    for (first_ = 0; layers_[first_].kind != Layer::Kind::kLinear; ++first_) {
      h = Apply(layers_[first_], h, /*drawn=*/false);  // deterministic up to here
    }
    Gaussian(layers_[first_], h, &mu_, &sd_);
  }
  // [S, B, K]
  at::Tensor Draw(int64_t samples, const at::Generator& gen) const {
    std::vector<int64_t> shape = mu_.sizes().vec();
    shape.insert(shape.begin(), samples);
    at::Tensor h = mu_ + sd_ * at::randn(shape, gen, mu_.options());
    for (size_t i = first_ + 1; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      if (l.kind == Layer::Kind::kLinear) {
        at::Tensor mu, sd;
        Gaussian(l, h, &mu, &sd);
        h = mu + sd * at::randn(mu.sizes(), gen, mu.options());
      } else {
        h = Apply(l, h, /*drawn=*/true);
      }
    }
    return h;
  }

 private:
  void Gaussian(const Layer& l, const at::Tensor& a, at::Tensor* mu, at::Tensor* sd) const {
    *mu = at::matmul(a, mean_[l.weight_index].t());
    at::Tensor v = at::matmul(a.square(), var_[l.weight_index].t());
    if (l.bias_index >= 0) {
      *mu = *mu + mean_[l.bias_index];
      v = v + var_[l.bias_index];
    }
    *sd = v.sqrt_();
  }
  static at::Tensor Apply(const Layer& l, const at::Tensor& h, bool drawn) {
    switch (l.kind) {
      case Layer::Kind::kFlatten: return h.flatten(drawn ? 2 : 1);
      case Layer::Kind::kRelu: return at::relu(h);
      case Layer::Kind::kTanh: return at::tanh(h);
      default:
        TORCH_CHECK(false, "local reparameterization: unexpected layer kind ",
                    static_cast<int>(l.kind));  // excluded by LocalReparameterizable
    }
  }

  const std::vector<Layer>& layers_;
  const std::vector<at::Tensor>& mean_;
  const std::vector<at::Tensor>& var_;
  size_t first_ = 0;
  at::Tensor mu_, sd_;
};

}  // namespace

absl::StatusOr<Prediction> Predict(Model& model, FlatParameters& flat, const Posterior* posterior,
                                   const at::Tensor& x, const PredictOptions& options,
                                   const at::Generator& gen) {
  ADAPTD_RETURN_IF_ERROR(model.CheckInput(x));
  ADAPTD_RETURN_IF_ERROR(CheckLabelMask(options.label_mask, model.spec().num_classes));
  if (options.mode != PredictMode::kMean && posterior == nullptr) {
    return absl::InvalidArgumentError(
        "bayes and linearized prediction need a posterior; this model has none (trained with "
        "adam or sgd?)");
  }
  if (options.samples < 1 || options.batch_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("samples and batch_size must be >= 1; got ",
                                                   options.samples, " and ", options.batch_size));
  }
  // Every way of drawing (weight draws check it again in SampleInto; the linearized draws come
  // from the same generator on the parameters' device).
  if (options.mode != PredictMode::kMean) {
    ADAPTD_RETURN_IF_ERROR(posterior->CheckDrawTarget(flat.params(), gen));
  }
  std::unique_ptr<LogitJacobian> jacobian;
  if (options.mode == PredictMode::kLinearized) {
    ADAPTD_ASSIGN_OR_RETURN(jacobian, LogitJacobian::Create(model));
  }
  return CallTorch([&]() -> absl::StatusOr<Prediction> {
    at::NoGradGuard no_grad;
    model.SetTraining(false);
    at::Tensor params = flat.params();
    const at::Device device = params.device();
    const int64_t n = x.size(0), k = model.spec().num_classes;
    auto logits = [&](int64_t start, int64_t len) {
      return MaskLogits(model.Forward(x.narrow(0, start, len).to(device)), options.label_mask);
    };
    Prediction out;
    Moments m(n, k, at::TensorOptions().dtype(params.scalar_type()));
    const std::vector<Layer> layers = options.mode == PredictMode::kBayes && options.local_reparameterization
                                          ? model.Layers()
                                          : std::vector<Layer>();
    if (options.mode == PredictMode::kMean) {
      if (posterior) params.copy_(posterior->mean());
      for (int64_t b = 0; b < n; b += options.batch_size) {
        m.Add(b, at::softmax(logits(b, std::min(options.batch_size, n - b)), 1));
      }
      m.Finish(1.0, out);
      out.std.zero_();  // a point estimate has no spread (and E p^2 - (E p)^2 only rounds to 0)
    } else if (options.mode == PredictMode::kBayes && LocalReparameterizable(layers)) {
      params.copy_(posterior->mean());
      const std::vector<at::Tensor> like = model.Parameters();
      const std::vector<at::Tensor> mean = ParameterViews(posterior->mean(), like);
      const std::vector<at::Tensor> var =
          ParameterViews(Covariance::FromPosterior(*posterior).matrix(), like);
      int64_t width = k;
      for (const at::Tensor& p : like) width = std::max(width, p.size(0));
      for (int64_t b = 0; b < n; b += options.batch_size) {
        const int64_t len = std::min(options.batch_size, n - b);
        const LocalReparameterization draws(layers, mean, var, x.narrow(0, b, len).to(device));
        // Draws in chunks that stay in cache (kChunk).
        const int64_t chunk = std::max<int64_t>(1, std::min(options.samples, kChunk / (len * width)));
        for (int64_t s = 0; s < options.samples; s += chunk) {
          const at::Tensor f = draws.Draw(std::min(chunk, options.samples - s), gen);
          m.Add(b, at::softmax(MaskLogits(f, options.label_mask), -1));
        }
      }
      m.Finish(static_cast<double>(options.samples), out);
    } else if (options.mode == PredictMode::kBayes) {
      // Sample-major: each weight sample is drawn once and applied to every batch. Whatever
      // happens, the model ends at the mean, where every other caller expects it.
      absl::Status drawn;
      try {
        for (int64_t s = 0; s < options.samples && drawn.ok(); ++s) {
          drawn = posterior->SampleInto(params, gen);
          for (int64_t b = 0; drawn.ok() && b < n; b += options.batch_size) {
            m.Add(b, at::softmax(logits(b, std::min(options.batch_size, n - b)), 1));
          }
        }
      } catch (...) {
        params.copy_(posterior->mean());
        throw;
      }
      params.copy_(posterior->mean());
      ADAPTD_RETURN_IF_ERROR(drawn);
      m.Finish(static_cast<double>(options.samples), out);
    } else {
      params.copy_(posterior->mean());
      const Covariance sigma = Covariance::FromPosterior(*posterior);
      out.probs = at::empty({n, k}, m.sum_h.options());
      // A row holds a K x K block and its sweep's signals, and K values per sample.
      const int64_t rows_per_batch =
          SweepRowsPerBatch(model, options.batch_size, /*extra_per_class=*/options.samples);
      for (int64_t b = 0; b < n; b += rows_per_batch) {
        const int64_t len = std::min(rows_per_batch, n - b);
        ADAPTD_ASSIGN_OR_RETURN(LogitJacobian::Output g,
                                jacobian->SigmaGram(x.narrow(0, b, len), sigma, /*full=*/true));
        // (A non-finite J Sigma J^T would fail the eigendecomposition below as INTERNAL.)
        const at::Tensor rows = x.narrow(0, b, len);
        ADAPTD_RETURN_IF_ERROR(CheckFiniteOutputs(g.logits, rows, b));
        ADAPTD_RETURN_IF_ERROR(CheckFiniteOutputs(g.value, rows, b));
        const at::Tensor f = MaskLogits(g.logits, options.label_mask);
        const at::Tensor var = g.value.diagonal(0, 1, 2);
        out.probs.narrow(0, b, len).copy_(at::softmax(f / (1 + M_PI / 8 * var).sqrt(), 1));
        // Draws f + L eps with L L^T = J Sigma J^T (L from the eigendecomposition: J Sigma J^T is
        // only semi-definite when some direction of the logits does not move).
        auto [evals, evecs] = at::linalg_eigh(g.value);
        const at::Tensor l = evecs * evals.clamp_min(0).sqrt().unsqueeze(1);
        const at::Tensor eps = at::randn({options.samples, len, k}, gen, f.options());
        // L_i eps_si for every sample s, as one batched product over the rows (a broadcast
        // matmul would copy L once per sample).
        const at::Tensor draws = f + at::bmm(l, eps.permute({1, 2, 0})).permute({2, 0, 1});
        m.Add(b, at::softmax(draws, 2));
      }
      const at::Tensor probit = out.probs;
      m.Finish(static_cast<double>(options.samples), out);
      out.probs = probit;
    }
    ADAPTD_RETURN_IF_ERROR(CheckFiniteOutputs(out.probs, x));
    out.label = out.probs.argmax(1);
    out.total_entropy = Entropy(out.probs);
    out.mutual_information = (out.total_entropy - out.expected_entropy).clamp_min(0);
    return out;
  });
}

absl::StatusOr<at::Tensor> PredictProbs(Model& model, FlatParameters& flat,
                                        const Posterior* posterior, const at::Tensor& x,
                                        const PredictOptions& options, const at::Generator& gen) {
  ADAPTD_ASSIGN_OR_RETURN(Prediction p, Predict(model, flat, posterior, x, options, gen));
  return p.probs;
}

}  // namespace adaptd

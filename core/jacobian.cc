#include "core/jacobian.h"

#include <functional>
#include <utility>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/jacobian_kernels.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {

std::vector<at::Tensor> ParameterViews(const at::Tensor& flat, const std::vector<at::Tensor>& like) {
  std::vector<at::Tensor> views;
  int64_t offset = 0;
  for (const at::Tensor& p : like) {
    views.push_back(flat.narrow(-1, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
  return views;
}

namespace {

using Kind = Layer::Kind;

bool g_fused_kernels = true;

std::vector<int64_t> Offsets(const std::vector<at::Tensor>& params) {
  std::vector<int64_t> offsets;
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    offsets.push_back(offset);
    offset += p.numel();
  }
  return offsets;
}

int64_t TotalNumel(const std::vector<at::Tensor>& params) {
  int64_t n = 0;
  for (const at::Tensor& p : params) n += p.numel();
  return n;
}

// J Sigma J^T for explicit Jacobians J [B, K, P].
at::Tensor GramFromJacobian(const at::Tensor& j, const Covariance& sigma, bool full) {
  if (!sigma.dense() && !full) return at::matmul(j.square(), sigma.matrix());
  const at::Tensor sj = sigma.Apply(j);  // [B, K, P]
  if (full) return at::bmm(sj, j.transpose(1, 2));
  return (sj * j).sum(-1);
}

// The structured backend: per-example gradient identities over Model::Layers().
class LayerJacobian final : public LogitJacobian {
 public:
  LayerJacobian(Model& model, std::vector<Layer> layers)
      : LogitJacobian(model, Backend::kLayers), layers_(std::move(layers)) {
    for (size_t i = 0; i < layers_.size(); ++i) {
      if (layers_[i].weight_index >= 0) {
        first_param_layer_ = static_cast<int>(i);
        break;
      }
    }
  }

 protected:
  Output SigmaGramImpl(const at::Tensor& x, const Covariance& sigma, bool full) override;
  Output JvpImpl(const at::Tensor& x, const at::Tensor& u) override;
  Output JacobianImpl(const at::Tensor& x) override;
  Output SquaredSumImpl(const at::Tensor& x, const at::Tensor& classes) override;

 private:
  // What the backward sweep needs of each layer's forward pass.
  struct Cache {
    at::Tensor input;    // Linear, Conv2d, Flatten, MaxPool2d: the layer's input
    at::Tensor output;   // ReLU, Tanh, MaxPool2d: the layer's output
    at::Tensor indices;  // MaxPool2d: argmax positions within each input plane
  };
  // A parameterised layer's share of the result, given its input `a` and the signal `s`
  // [B, R, out...] back-propagated to its output.
  using Sink = std::function<void(const Layer& layer, const at::Tensor& a, const at::Tensor& s)>;
  // A Conv2d -> [activation] -> MaxPool2d block in one step (see core/jacobian_kernels.h):
  // given the signal at the pool output with the activation's derivative applied [B, R, O, M]
  // and the pool's argmax [B, O, M], adds the conv's share and returns the signal at the conv
  // input when `propagate`.
  using PooledSink = std::function<at::Tensor(const Layer& conv, const at::Tensor& a,
                                              const at::Tensor& s_pool, const at::Tensor& indices,
                                              int64_t conv_w, bool propagate)>;

  // Forward pass; with `tangent` (per-parameter directions) also the directional derivative of
  // the logits, written to *tangent_out.
  at::Tensor Forward(const at::Tensor& x, const std::vector<at::Tensor>& params,
                     std::vector<Cache>* cache, const std::vector<at::Tensor>* tangent,
                     at::Tensor* tangent_out) const;
  // Back-propagates the K logit directions through the cached pass and hands every
  // parameterised layer its signal.
  // With `pooled`, blocks it can take (CPU, fused kernels on) go through it instead.
  void Backward(const std::vector<at::Tensor>& params, const std::vector<Cache>& cache,
                int64_t batch, int64_t classes, const at::Device& device,
                at::ScalarType dtype, const Sink& sink, const PooledSink* pooled = nullptr) const;

  std::vector<Layer> layers_;
  int first_param_layer_ = 0;
};

at::Tensor LayerJacobian::Forward(const at::Tensor& x, const std::vector<at::Tensor>& params,
                                  std::vector<Cache>* cache,
                                  const std::vector<at::Tensor>* tangent,
                                  at::Tensor* tangent_out) const {
  at::Tensor h = x;
  at::Tensor dh;  // tangent of h; undefined means zero (the input does not move)
  if (cache) cache->assign(layers_.size(), Cache{});
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    Cache c;
    const at::Tensor w = l.weight_index >= 0 ? params[l.weight_index] : at::Tensor();
    const at::Tensor b = l.bias_index >= 0 ? params[l.bias_index] : at::Tensor();
    switch (l.kind) {
      case Kind::kFlatten:
        c.input = h;
        h = h.flatten(1);
        if (dh.defined()) dh = dh.flatten(1);
        break;
      case Kind::kLinear:
      case Kind::kConv2d: {
        c.input = h;
        const bool conv = l.kind == Kind::kConv2d;
        auto apply = [&](const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias) {
          return conv ? at::conv2d(in, weight, bias, {l.stride, l.stride}, {l.padding, l.padding})
                      : at::linear(in, weight, bias);
        };
        if (tangent) {
          // d(W a + b) = dW a + db + W da.
          const at::Tensor dw = (*tangent)[l.weight_index];
          const at::Tensor db = l.bias_index >= 0 ? (*tangent)[l.bias_index] : at::Tensor();
          at::Tensor dnew = apply(h, dw, db);
          if (dh.defined()) dnew = dnew + apply(dh, w, at::Tensor());
          dh = dnew;
        }
        h = apply(h, w, b);
        break;
      }
      case Kind::kRelu:
        h = at::relu(h);
        c.output = h;
        if (dh.defined()) dh = dh * h.gt(0);
        break;
      case Kind::kTanh:
        h = at::tanh(h);
        c.output = h;
        if (dh.defined()) dh = dh * (1 - h.square());
        break;
      case Kind::kMaxPool2d: {
        c.input = h;
        auto [out, idx] = at::max_pool2d_with_indices(h, {l.kernel, l.kernel}, {l.stride, l.stride});
        if (dh.defined()) dh = dh.flatten(2).gather(2, idx.flatten(2)).view_as(out);
        c.indices = idx;
        c.output = out;
        h = out;
        break;
      }
    }
    if (cache) (*cache)[i] = std::move(c);
  }
  if (tangent_out) *tangent_out = dh.defined() ? dh : at::zeros_like(h);
  return h;
}

void LayerJacobian::Backward(const std::vector<at::Tensor>& params, const std::vector<Cache>& cache,
                             int64_t batch, int64_t classes, const at::Device& device,
                             at::ScalarType dtype, const Sink& sink, const PooledSink* pooled) const {
  // s [B, R, ...]: d f_r / d (the current layer's output), one row per logit direction r.
  at::Tensor s = at::eye(classes, at::TensorOptions().dtype(dtype).device(device))
                     .unsqueeze(0)
                     .expand({batch, classes, classes});
  const int64_t r = classes;
  for (int i = static_cast<int>(layers_.size()) - 1; i >= first_param_layer_; --i) {
    const Layer& l = layers_[i];
    const Cache& c = cache[i];
    const bool last = i == first_param_layer_;  // nothing below needs a signal
    switch (l.kind) {
      case Kind::kFlatten: {
        std::vector<int64_t> shape = {batch, r};
        for (int64_t d = 1; d < c.input.dim(); ++d) shape.push_back(c.input.size(d));
        s = s.reshape(shape);
        break;
      }
      case Kind::kLinear:
        sink(l, c.input, s);
        if (!last) s = at::matmul(s, params[l.weight_index]);
        break;
      case Kind::kConv2d: {
        sink(l, c.input, s);
        if (last) break;
        const at::Tensor& w = params[l.weight_index];
        const int64_t h_in = c.input.size(2), w_in = c.input.size(3);
        const int64_t ho = s.size(3), wo = s.size(4);
        // The transposed convolution maps back to the input size only with this extra padding
        // when the stride does not divide it evenly.
        const int64_t pad_h = h_in - ((ho - 1) * l.stride - 2 * l.padding + l.kernel);
        const int64_t pad_w = w_in - ((wo - 1) * l.stride - 2 * l.padding + l.kernel);
        s = at::conv_transpose2d(s.reshape({batch * r, w.size(0), ho, wo}), w, {},
                                 {l.stride, l.stride}, {l.padding, l.padding}, {pad_h, pad_w})
                .view({batch, r, w.size(1), h_in, w_in});
        break;
      }
      case Kind::kRelu:
        s = s * c.output.gt(0).unsqueeze(1);
        break;
      case Kind::kTanh:
        s = s * (1 - c.output.square()).unsqueeze(1);
        break;
      case Kind::kMaxPool2d: {
        int conv = i - 1;
        const Kind act = conv >= 0 ? layers_[conv].kind : Kind::kFlatten;
        if (act == Kind::kRelu || act == Kind::kTanh) --conv;
        if (pooled && g_fused_kernels && conv >= first_param_layer_ &&
            layers_[conv].kind == Kind::kConv2d && internal::PooledConvKernelApplies(s)) {
          // The activation is monotone, so its derivative at the window's argmax follows from
          // the pooled value: ReLU 1[out > 0], tanh 1 - out^2.
          at::Tensor d = s;
          if (act == Kind::kRelu) d = s * c.output.gt(0).unsqueeze(1);
          if (act == Kind::kTanh) d = s * (1 - c.output.square()).unsqueeze(1);
          const int64_t ch = c.output.size(1), m = c.output.size(2) * c.output.size(3);
          const bool propagate = conv > first_param_layer_;
          s = (*pooled)(layers_[conv], cache[conv].input, d.reshape({batch, r, ch, m}).contiguous(),
                        c.indices.reshape({batch, ch, m}).contiguous(), c.input.size(3), propagate);
          if (!propagate) return;
          i = conv;  // the loop continues below the conv
          break;
        }
        const at::Tensor& in = c.input;
        const int64_t ch = in.size(1), plane = in.size(2) * in.size(3);
        const int64_t out_plane = s.size(3) * s.size(4);
        const at::Tensor idx = c.indices.reshape({batch, 1, ch, out_plane}).expand({batch, r, ch, out_plane});
        s = at::zeros({batch, r, ch, plane}, s.options())
                .scatter_add_(3, idx, s.reshape({batch, r, ch, out_plane}))
                .view({batch, r, ch, in.size(2), in.size(3)});
        break;
      }
    }
  }
}

LogitJacobian::Output LayerJacobian::SigmaGramImpl(const at::Tensor& x, const Covariance& sigma,
                                                   bool full) {
  const std::vector<at::Tensor> params = model_.Parameters();
  if (sigma.dense()) {
    Output j = JacobianImpl(x);
    return {j.logits, GramFromJacobian(j.value, sigma, full)};
  }
  std::vector<Cache> cache;
  const at::Tensor logits = Forward(x, params, &cache, nullptr, nullptr);
  const int64_t batch = logits.size(0), k = logits.size(1);
  const std::vector<at::Tensor> var = ParameterViews(sigma.matrix(), params);
  at::Tensor gram = full ? at::zeros({batch, k, k}, logits.options())
                         : at::zeros({batch, k}, logits.options());
  // Adds the Gram matrix (or its diagonal) of per-example gradients g [B, R, D] under var [D].
  auto add = [&](const at::Tensor& g, const at::Tensor& v) {
    if (full) {
      gram.baddbmm_(g * v, g.transpose(1, 2));
    } else {
      gram.add_(at::matmul(g.square(), v));
    }
  };
  const PooledSink pooled = [&](const Layer& conv, const at::Tensor& a, const at::Tensor& s_pool,
                               const at::Tensor& indices, int64_t conv_w, bool propagate) {
    internal::PooledConvArgs args;
    args.signal = s_pool;
    args.indices = indices;
    args.input = a.contiguous();
    args.conv_w = conv_w;
    args.kernel = conv.kernel;
    args.stride = conv.stride;
    args.padding = conv.padding;
    args.weight_var = var[conv.weight_index].contiguous();
    if (conv.bias_index >= 0) args.bias_var = var[conv.bias_index].contiguous();
    if (propagate) args.weight = params[conv.weight_index].contiguous();
    return internal::PooledConvBackward(args, gram, full);
  };
  Backward(params, cache, batch, k, logits.device(), logits.scalar_type(),
           [&](const Layer& l, const at::Tensor& a, const at::Tensor& s) {
             const at::Tensor& w_var = var[l.weight_index];
             if (l.kind == Kind::kLinear) {
               // sum_j sigma2_oj a_j^2 (+ sigma2_bias_o): one [B, out] term shared by all R rows.
               at::Tensor c = at::matmul(a.square(), w_var.t());
               if (l.bias_index >= 0) c = c + var[l.bias_index];
               const at::Tensor sc = s * c.unsqueeze(1);
               if (full) {
                 gram.baddbmm_(sc, s.transpose(1, 2));
               } else {
                 gram.add_((sc * s).sum(-1));
               }
               return;
             }
             const int64_t out = s.size(2), loc = s.size(3) * s.size(4);
             const at::Tensor u = at::im2col(a, {l.kernel, l.kernel}, {1, 1}, {l.padding, l.padding},
                                             {l.stride, l.stride});  // [B, C k k, L]
             const at::Tensor sm = s.reshape({batch, k * out, loc});
             add(at::bmm(sm, u.transpose(1, 2)).view({batch, k, -1}), w_var.reshape({-1}));
             if (l.bias_index >= 0) add(sm.sum(-1).view({batch, k, out}), var[l.bias_index]);
           },
           &pooled);
  return {logits, gram};
}

LogitJacobian::Output LayerJacobian::JacobianImpl(const at::Tensor& x) {
  const std::vector<at::Tensor> params = model_.Parameters();
  std::vector<Cache> cache;
  const at::Tensor logits = Forward(x, params, &cache, nullptr, nullptr);
  const int64_t batch = logits.size(0), k = logits.size(1);
  const std::vector<int64_t> offsets = Offsets(params);
  at::Tensor j = at::zeros({batch, k, TotalNumel(params)}, logits.options());
  Backward(params, cache, batch, k, logits.device(), logits.scalar_type(),
           [&](const Layer& l, const at::Tensor& a, const at::Tensor& s) {
             const int64_t out = s.size(2);
             at::Tensor jw, jb;
             if (l.kind == Kind::kLinear) {
               jw = (s.unsqueeze(-1) * a.unsqueeze(1).unsqueeze(1)).reshape({batch, k, -1});
               jb = s;
             } else {
               const int64_t loc = s.size(3) * s.size(4);
               const at::Tensor u = at::im2col(a, {l.kernel, l.kernel}, {1, 1},
                                               {l.padding, l.padding}, {l.stride, l.stride});
               const at::Tensor sm = s.reshape({batch, k * out, loc});
               jw = at::bmm(sm, u.transpose(1, 2)).view({batch, k, -1});
               jb = sm.sum(-1).view({batch, k, out});
             }
             j.narrow(2, offsets[l.weight_index], jw.size(2)).copy_(jw);
             if (l.bias_index >= 0) j.narrow(2, offsets[l.bias_index], out).copy_(jb);
           });
  return {logits, j};
}

LogitJacobian::Output LayerJacobian::SquaredSumImpl(const at::Tensor& x, const at::Tensor& classes) {
  const std::vector<at::Tensor> params = model_.Parameters();
  std::vector<Cache> cache;
  const at::Tensor logits = Forward(x, params, &cache, nullptr, nullptr);
  const int64_t batch = logits.size(0), k = logits.size(1), r = classes.numel();
  const std::vector<int64_t> offsets = Offsets(params);
  at::Tensor sum = at::zeros({TotalNumel(params)}, logits.options());
  Backward(params, cache, batch, k, logits.device(), logits.scalar_type(),
           [&](const Layer& l, const at::Tensor& a, const at::Tensor& s_all) {
             const at::Tensor s = s_all.index_select(1, classes);
             const int64_t out = s.size(2);
             at::Tensor w2, b2;
             if (l.kind == Kind::kLinear) {
               // sum_i sum_k (s_iko a_ij)^2 = sum_i (sum_k s_iko^2) a_ij^2: one matmul.
               const at::Tensor s2 = s.square().sum(1);  // [B, out]
               w2 = at::matmul(s2.t(), a.square()).reshape({-1});
               b2 = s2.sum(0);
             } else {
               const int64_t loc = s.size(3) * s.size(4);
               const at::Tensor u = at::im2col(a, {l.kernel, l.kernel}, {1, 1},
                                               {l.padding, l.padding}, {l.stride, l.stride});
               const at::Tensor sm = s.reshape({batch, r * out, loc});
               w2 = at::bmm(sm, u.transpose(1, 2)).view({batch * r, -1}).square().sum(0);
               b2 = sm.sum(-1).view({batch * r, out}).square().sum(0);
             }
             sum.narrow(0, offsets[l.weight_index], w2.numel()).add_(w2);
             if (l.bias_index >= 0) sum.narrow(0, offsets[l.bias_index], out).add_(b2);
           });
  return {logits, sum};
}

LogitJacobian::Output LayerJacobian::JvpImpl(const at::Tensor& x, const at::Tensor& u) {
  const std::vector<at::Tensor> params = model_.Parameters();
  const std::vector<at::Tensor> tangent = ParameterViews(u, params);
  at::Tensor jvp;
  const at::Tensor logits = Forward(x, params, nullptr, &tangent, &jvp);
  return {logits, jvp};
}

// The generic backend: exact autograd through Model::Forward.
class AutogradJacobian final : public LogitJacobian {
 public:
  explicit AutogradJacobian(Model& model) : LogitJacobian(model, Backend::kAutograd) {}

 protected:
  // J is [B, K, P] here (P can be millions for a TorchScript model), so the Gram and the squared
  // sums are formed kRows examples at a time: a caller's batch of hundreds would otherwise hold
  // hundreds of copies of the parameters. Only the small per-chunk results are kept.
  static constexpr int64_t kRows = 4;

  Output SigmaGramImpl(const at::Tensor& x, const Covariance& sigma, bool full) override {
    std::vector<at::Tensor> logits, grams;
    for (int64_t s = 0; s < x.size(0); s += kRows) {
      const Output j = JacobianImpl(x.narrow(0, s, std::min(kRows, x.size(0) - s)));
      logits.push_back(j.logits);
      grams.push_back(GramFromJacobian(j.value, sigma, full));
    }
    return {at::cat(logits), at::cat(grams)};
  }

  Output SquaredSumImpl(const at::Tensor& x, const at::Tensor& classes) override {
    std::vector<at::Tensor> logits;
    at::Tensor sum;
    for (int64_t s = 0; s < x.size(0); s += kRows) {
      const Output j = LogitJacobian::SquaredSumImpl(x.narrow(0, s, std::min(kRows, x.size(0) - s)), classes);
      logits.push_back(j.logits);
      sum = sum.defined() ? sum + j.value : j.value;
    }
    return {at::cat(logits), sum};
  }

  Output JacobianImpl(const at::Tensor& x) override {
    at::AutoGradMode grad_mode(true);
    const std::vector<at::Tensor> params = model_.Parameters();
    std::vector<at::Tensor> rows;
    std::vector<at::Tensor> logits;
    for (int64_t i = 0; i < x.size(0); ++i) {
      const at::Tensor f = model_.Forward(x.narrow(0, i, 1));
      const int64_t k = f.size(1);
      for (int64_t c = 0; c < k; ++c) {
        rows.push_back(FlattenLike(torch::autograd::grad({f[0][c]}, params, {},
                                                         /*retain_graph=*/c + 1 < k,
                                                         /*create_graph=*/false,
                                                         /*allow_unused=*/true),
                                   params));
      }
      logits.push_back(f.detach());
    }
    const at::Tensor f = at::cat(logits);
    return {f, at::stack(rows).view({f.size(0), f.size(1), -1})};
  }

  Output JvpImpl(const at::Tensor& x, const at::Tensor& u) override {
    // With g(v) = J^T v (summed over the batch), d(u^T g(v)) / dv_i = J_i u for every example i.
    at::AutoGradMode grad_mode(true);
    const std::vector<at::Tensor> params = model_.Parameters();
    const std::vector<at::Tensor> tangent = ParameterViews(u, params);
    const at::Tensor f = model_.Forward(x);
    const at::Tensor v = at::zeros_like(f).requires_grad_(true);
    const std::vector<at::Tensor> g = torch::autograd::grad({f}, params, {v}, /*retain_graph=*/true,
                                                            /*create_graph=*/true,
                                                            /*allow_unused=*/true);
    at::Tensor dot = at::zeros({}, f.options());
    for (size_t i = 0; i < g.size(); ++i) {
      if (g[i].defined()) dot = dot + (g[i] * tangent[i]).sum();
    }
    if (!dot.requires_grad()) return {f.detach(), at::zeros_like(f)};
    const at::Tensor jvp = torch::autograd::grad({dot}, {v}, {}, /*retain_graph=*/false,
                                                 /*create_graph=*/false, /*allow_unused=*/true)[0];
    return {f.detach(), jvp.defined() ? jvp : at::zeros_like(f)};
  }
};

}  // namespace

absl::StatusOr<Covariance> Covariance::Diagonal(at::Tensor variance) {
  if (!variance.defined() || variance.dim() != 1 || !variance.is_floating_point() ||
      variance.numel() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "diagonal covariance must be a floating [P] vector with P >= 1; got ",
        DescribeTensor(variance)));
  }
  ADAPTD_RETURN_IF_ERROR(CheckFinite(variance, "diagonal covariance"));
  if (!(variance.min().item<double>() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "diagonal covariance entries must be > 0; the smallest is ", variance.min().item<double>()));
  }
  return Covariance(std::move(variance));
}

absl::StatusOr<Covariance> Covariance::Dense(at::Tensor covariance) {
  if (!covariance.defined() || covariance.dim() != 2 || !covariance.is_floating_point() ||
      covariance.size(0) != covariance.size(1) || covariance.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dense covariance must be a floating [P, P] matrix with P >= 1; got ",
        DescribeTensor(covariance)));
  }
  ADAPTD_RETURN_IF_ERROR(CheckFinite(covariance, "dense covariance"));
  return Covariance(std::move(covariance));
}

Covariance Covariance::FromPosterior(const Posterior& posterior) {
  return Covariance(posterior.Precision().reciprocal());
}

Covariance Covariance::To(const at::Device& device, at::ScalarType dtype) const {
  return Covariance(matrix_.to(device, dtype));
}

at::Tensor Covariance::Apply(const at::Tensor& g) const {
  if (dense()) return at::matmul(g, matrix_);  // Sigma is symmetric: g Sigma = (Sigma g^T)^T
  return g * matrix_;
}

int64_t SweepRowsPerBatch(Model& model, int64_t wanted, int64_t extra_per_class) {
  constexpr int64_t kBatchValues = int64_t{1} << 24;
  const ModelSpec& spec = model.spec();
  const int64_t k = spec.num_classes;
  const std::vector<at::Tensor> params = model.Parameters();
  const std::vector<Layer> layers = model.Layers();
  auto numel = [](const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  };
  int64_t widest = k;
  if (!layers.empty()) {
    // One example's shape through the layers; the widest output is what each signal spans.
    std::vector<int64_t> shape = spec.input_shape;
    for (const Layer& l : layers) {
      const bool planar = shape.size() == 3;
      switch (l.kind) {
        case Layer::Kind::kConv2d:
          if (planar) {
            auto side = [&](int64_t n) { return (n + 2 * l.padding - l.kernel) / l.stride + 1; };
            shape = {params[l.weight_index].size(0), side(shape[1]), side(shape[2])};
          }
          break;
        case Layer::Kind::kMaxPool2d:
          if (planar) {
            auto side = [&](int64_t n) { return (n - l.kernel) / l.stride + 1; };
            shape = {shape[0], side(shape[1]), side(shape[2])};
          }
          break;
        case Layer::Kind::kLinear: shape = {params[l.weight_index].size(0)}; break;
        case Layer::Kind::kFlatten: shape = {numel(shape)}; break;
        case Layer::Kind::kRelu:
        case Layer::Kind::kTanh: break;
      }
      widest = std::max(widest, numel(shape));
    }
  } else {
    // A TorchScript module: a linear layer's outputs, or a convolution's channels times the
    // input's plane (the most it can span at stride 1 with same padding).
    const int64_t plane = spec.input_shape.size() == 3 ? spec.input_shape[1] * spec.input_shape[2] : 1;
    for (const at::Tensor& p : params) {
      if (p.dim() == 2) widest = std::max(widest, p.size(0));
      if (p.dim() == 4) widest = std::max(widest, p.size(0) * plane);
    }
  }
  const int64_t per_row = k * (widest + std::max<int64_t>(extra_per_class, 0));
  return std::clamp<int64_t>(kBatchValues / per_row, 1, std::max<int64_t>(wanted, 1));
}

namespace internal {
void SetJacobianFusedKernels(bool enabled) { g_fused_kernels = enabled; }
}  // namespace internal

at::Tensor FlattenLike(const std::vector<at::Tensor>& parts, const std::vector<at::Tensor>& like) {
  std::vector<at::Tensor> flat;
  for (size_t i = 0; i < like.size(); ++i) {
    flat.push_back(parts[i].defined() ? parts[i].reshape({-1})
                                      : at::zeros({like[i].numel()}, like[i].options()));
  }
  return at::cat(flat);
}

absl::StatusOr<std::unique_ptr<LogitJacobian>> LogitJacobian::Create(Model& model, Backend backend) {
  std::vector<Layer> layers =
      backend == Backend::kAutograd ? std::vector<Layer>() : model.Layers();
  if (backend == Backend::kLayers && layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the layer backend needs a model of known layers (logreg, mlp, lenet5); got a ",
        ArchitectureName(model.spec().architecture), " model without them"));
  }
  if (layers.empty()) return std::unique_ptr<LogitJacobian>(new AutogradJacobian(model));
  return std::unique_ptr<LogitJacobian>(new LayerJacobian(model, std::move(layers)));
}

absl::Status LogitJacobian::CheckBatch(const at::Tensor& x, const at::Tensor& params_like) const {
  if (!x.defined() || x.dim() < 2 || x.size(0) < 1 || x.scalar_type() != params_like.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Jacobian input must be [B >= 1, ...] of the parameters' dtype ",
        c10::toString(params_like.scalar_type()), "; got ", DescribeTensor(x)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LogitJacobian::Output> LogitJacobian::SigmaGram(const at::Tensor& x,
                                                               const Covariance& sigma, bool full) {
  const std::vector<at::Tensor> params = model_.Parameters();
  ADAPTD_RETURN_IF_ERROR(CheckBatch(x, params[0]));
  const int64_t p = TotalNumel(params);
  if (sigma.numel() != p) {
    return absl::InvalidArgumentError(absl::StrCat("covariance covers ", sigma.numel(),
                                                   " parameters; the model has ", p));
  }
  return CallTorch([&]() -> absl::StatusOr<Output> {
    at::NoGradGuard no_grad;
    model_.SetTraining(false);
    const at::Tensor& w = params[0];
    return SigmaGramImpl(x.to(w.device()), sigma.To(w.device(), w.scalar_type()), full);
  });
}

absl::StatusOr<LogitJacobian::Output> LogitJacobian::Jvp(const at::Tensor& x, const at::Tensor& u) {
  const std::vector<at::Tensor> params = model_.Parameters();
  ADAPTD_RETURN_IF_ERROR(CheckBatch(x, params[0]));
  const int64_t p = TotalNumel(params);
  if (!u.defined() || u.dim() != 1 || u.numel() != p || !u.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tangent must be a floating [", p, "] vector; got ", DescribeTensor(u)));
  }
  return CallTorch([&]() -> absl::StatusOr<Output> {
    at::NoGradGuard no_grad;
    model_.SetTraining(false);
    const at::Tensor& w = params[0];
    return JvpImpl(x.to(w.device()), u.to(w.device(), w.scalar_type()));
  });
}

LogitJacobian::Output LogitJacobian::SquaredSumImpl(const at::Tensor& x, const at::Tensor& classes) {
  const Output j = JacobianImpl(x);
  return {j.logits, j.value.index_select(1, classes).square().sum(at::IntArrayRef{0, 1})};
}

absl::StatusOr<LogitJacobian::Output> LogitJacobian::SquaredSum(const at::Tensor& x,
                                                                const at::Tensor& classes) {
  const std::vector<at::Tensor> params = model_.Parameters();
  ADAPTD_RETURN_IF_ERROR(CheckBatch(x, params[0]));
  const int64_t k = model_.spec().num_classes;
  if (!classes.defined() || classes.scalar_type() != at::kLong || classes.dim() != 1 ||
      (classes.numel() > 0 &&
       (classes.min().item<int64_t>() < 0 || classes.max().item<int64_t>() >= k))) {
    return absl::InvalidArgumentError(absl::StrCat("classes must be int64 [R] indices in [0, ", k,
                                                   "); got ", DescribeTensor(classes)));
  }
  return CallTorch([&]() -> absl::StatusOr<Output> {
    at::NoGradGuard no_grad;
    model_.SetTraining(false);
    return SquaredSumImpl(x.to(params[0].device()), classes.to(params[0].device()));
  });
}

absl::StatusOr<LogitJacobian::Output> LogitJacobian::Jacobian(const at::Tensor& x) {
  const std::vector<at::Tensor> params = model_.Parameters();
  ADAPTD_RETURN_IF_ERROR(CheckBatch(x, params[0]));
  return CallTorch([&]() -> absl::StatusOr<Output> {
    at::NoGradGuard no_grad;
    model_.SetTraining(false);
    return JacobianImpl(x.to(params[0].device()));
  });
}

}  // namespace adaptd

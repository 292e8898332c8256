#include "core/model.h"

#include <cmath>
#include <limits>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

torch::nn::AnyModule Activation(const std::string& name) {
  if (name == "tanh") return torch::nn::AnyModule(torch::nn::Tanh());
  return torch::nn::AnyModule(torch::nn::ReLU());
}

// Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for each weight and the bias that follows it.
void InitParameters(torch::nn::Module& module, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  double bound = 1.0;
  for (auto& p : module.parameters()) {
    if (p.dim() >= 2) bound = 1.0 / std::sqrt(static_cast<double>(p.numel() / p.size(0)));
    p.uniform_(-bound, bound, gen);
  }
}

class SequentialModel : public Model {
 public:
  SequentialModel(ModelSpec spec, torch::nn::Sequential net)
      : Model(std::move(spec)), net_(std::move(net)) {}
  at::Tensor Forward(const at::Tensor& x) override { return net_->forward(x); }
  std::vector<at::Tensor> Parameters() override { return net_->parameters(); }
  void SetTraining(bool training) override { net_->train(training); }
  void To(const at::Device& device) override { net_->to(device); }
  std::vector<Layer> Layers() override;

 private:
  torch::nn::Sequential net_;
};

// Square kernels, zero padding, no dilation or groups: anything else reports no layers, and
// callers fall back to generic autograd.
std::vector<Layer> SequentialModel::Layers() {
  namespace nn = torch::nn;
  // LibTorch 2 keeps the conv options' alternatives in std::variant, 1.x in c10::variant.
#if TORCH_VERSION_MAJOR >= 2
  using std::get_if;
#else
  using c10::get_if;
#endif
  const std::vector<at::Tensor> params = net_->parameters();
  auto index_of = [&](const at::Tensor& t) {
    for (size_t i = 0; i < params.size(); ++i) {
      if (t.defined() && params[i].is_same(t)) return static_cast<int>(i);
    }
    return -1;
  };
  auto square = [](auto a) { return (*a)[0] == (*a)[1]; };
  std::vector<Layer> layers;
  for (const auto& child : net_->children()) {
    Layer l;
    if (child->as<nn::Flatten>()) {
      l.kind = Layer::Kind::kFlatten;
    } else if (child->as<nn::ReLU>()) {
      l.kind = Layer::Kind::kRelu;
    } else if (child->as<nn::Tanh>()) {
      l.kind = Layer::Kind::kTanh;
    } else if (auto* lin = child->as<nn::Linear>()) {
      l.kind = Layer::Kind::kLinear;
      l.weight_index = index_of(lin->weight);
      l.bias_index = index_of(lin->bias);
    } else if (auto* conv = child->as<nn::Conv2d>()) {
      const auto& o = conv->options;
      const auto* pad = get_if<torch::ExpandingArray<2>>(&o.padding());
      if (pad == nullptr || !square(*pad) || !square(o.kernel_size()) || !square(o.stride()) ||
          (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 || o.groups() != 1 ||
          !get_if<torch::enumtype::kZeros>(&o.padding_mode())) {
        return {};
      }
      l.kind = Layer::Kind::kConv2d;
      l.weight_index = index_of(conv->weight);
      l.bias_index = index_of(conv->bias);
      l.kernel = (*o.kernel_size())[0];
      l.stride = (*o.stride())[0];
      l.padding = (**pad)[0];
    } else if (auto* pool = child->as<nn::MaxPool2d>()) {
      const auto& o = pool->options;
      if (!square(o.kernel_size()) || !square(o.stride()) || (*o.padding())[0] != 0 ||
          (*o.padding())[1] != 0 || (*o.dilation())[0] != 1 || (*o.dilation())[1] != 1 ||
          o.ceil_mode()) {
        return {};
      }
      l.kind = Layer::Kind::kMaxPool2d;
      l.kernel = (*o.kernel_size())[0];
      l.stride = (*o.stride())[0];
    } else {
      return {};
    }
    if ((l.kind == Layer::Kind::kLinear || l.kind == Layer::Kind::kConv2d) && l.weight_index < 0) {
      return {};
    }
    layers.push_back(l);
  }
  return layers;
}

// The interpreter's error text with its last line, the error itself, first: it reads "The
// following operation failed in the TorchScript interpreter", then two tracebacks, and only then
// what went wrong. The tracebacks follow, cut at 1,500 characters.
std::string InterpreterErrorText(const std::string& text) {
  const std::string trimmed(absl::StripTrailingAsciiWhitespace(text));
  const size_t last = trimmed.rfind('\n');
  if (last == std::string::npos) return trimmed;
  return absl::StrCat(trimmed.substr(last + 1), "\n", trimmed.substr(0, std::min<size_t>(last, 1500)));
}

class ScriptModel : public Model {
 public:
  ScriptModel(ModelSpec spec, torch::jit::Module module)
      : Model(std::move(spec)), module_(std::move(module)) {}
  // Logits [B, K]; the module is checked on every call, not only at load (a module that
  // ignores the batch, returning [1, K], would otherwise be broadcast silently). Throws
  // ModuleError for what the module does wrong; out-of-memory passes through as itself.
  at::Tensor Forward(const at::Tensor& x) override {
    at::Tensor out;
    try {
      out = module_.forward({x}).toTensor();
    } catch (const c10::OutOfMemoryError&) {
      throw;
    } catch (const std::exception& e) {  // the interpreter rethrows as std::runtime_error
      throw ModuleError(absl::StrCat("TorchScript module failed on an input of shape ",
                                     ShapeString(x.sizes()), ": ",
                                     InterpreterErrorText(ExceptionText(e))));
    }
    if (out.dim() != 2 || out.size(0) != x.size(0) || out.size(1) != spec().num_classes) {
      throw ModuleError(absl::StrCat("the TorchScript module maps ", ShapeString(x.sizes()), " to ",
                                     ShapeString(out.sizes()), "; expected [", x.size(0), ", ",
                                     spec().num_classes, "]"));
    }
    return out;
  }
  std::vector<at::Tensor> Parameters() override {
    std::vector<at::Tensor> out;
    for (const at::Tensor& p : module_.parameters()) out.push_back(p);
    return out;
  }
  void SetTraining(bool training) override { training ? module_.train() : module_.eval(); }
  void To(const at::Device& device) override { module_.to(device); }

 private:
  torch::jit::Module module_;
};

torch::nn::Sequential BuildSequential(const ModelSpec& spec) {
  namespace nn = torch::nn;
  nn::Sequential net;
  switch (spec.architecture) {
    case Architecture::kLogReg:
      net->push_back(nn::Flatten());
      net->push_back(nn::Linear(spec.InputNumel(), spec.num_classes));
      break;
    case Architecture::kMlp: {
      net->push_back(nn::Flatten());
      int64_t in = spec.InputNumel();
      for (int64_t width : spec.hidden) {
        net->push_back(nn::Linear(in, width));
        net->push_back(Activation(spec.activation));
        in = width;
      }
      net->push_back(nn::Linear(in, spec.num_classes));
      break;
    }
    case Architecture::kLeNet5:
      // LeCun et al. (1998) with padding 2 so that 28x28 inputs give the classic 5x5x16 maps.
      net->push_back(nn::Conv2d(nn::Conv2dOptions(1, 6, 5).padding(2)));
      net->push_back(Activation(spec.activation));
      net->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
      net->push_back(nn::Conv2d(nn::Conv2dOptions(6, 16, 5)));
      net->push_back(Activation(spec.activation));
      net->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
      net->push_back(nn::Flatten());
      net->push_back(nn::Linear(16 * 5 * 5, 120));
      net->push_back(Activation(spec.activation));
      net->push_back(nn::Linear(120, 84));
      net->push_back(Activation(spec.activation));
      net->push_back(nn::Linear(84, spec.num_classes));
      break;
    case Architecture::kTorchScript:
      break;
  }
  return net;
}

}  // namespace

absl::StatusOr<Architecture> ParseArchitecture(const std::string& name) {
  if (name == "logreg") return Architecture::kLogReg;
  if (name == "mlp") return Architecture::kMlp;
  if (name == "lenet5") return Architecture::kLeNet5;
  if (name == "torchscript") return Architecture::kTorchScript;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown architecture '", name, "'; expected one of logreg, mlp, lenet5, torchscript"));
}

std::string ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLogReg: return "logreg";
    case Architecture::kMlp: return "mlp";
    case Architecture::kLeNet5: return "lenet5";
    case Architecture::kTorchScript: return "torchscript";
  }
  return "unknown";
}

int64_t ModelSpec::InputNumel() const {
  int64_t n = 1;
  for (int64_t d : input_shape) n *= d;
  return n;
}

absl::Status ModelSpec::Validate() const {
  if (input_shape.empty()) {
    return absl::InvalidArgumentError("model spec: input_shape must have at least one dimension; got []");
  }
  for (int64_t d : input_shape) {
    if (d <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model spec: input_shape dimensions must be > 0; got ", ShapeString(input_shape)));
    }
  }
  if (num_classes < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("model spec: num_classes must be >= 2; got ", num_classes));
  }
  if (activation != "relu" && activation != "tanh") {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: activation must be 'relu' or 'tanh'; got '", activation, "'"));
  }
  if (architecture == Architecture::kMlp) {
    for (int64_t w : hidden) {
      if (w <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model spec: hidden widths must be > 0; got ", ShapeString(hidden)));
      }
    }
  }
  // Sizes that would overflow, or allocate far beyond any machine, are refused here rather than
  // by an allocation that takes the server down. Counted in double: no overflow on the way.
  double input = 1;
  for (int64_t d : input_shape) input *= static_cast<double>(d);
  double weights = 0;
  if (architecture == Architecture::kLogReg || architecture == Architecture::kMlp) {
    double width = input;
    for (int64_t w : architecture == Architecture::kMlp ? hidden : std::vector<int64_t>()) {
      weights += (width + 1) * static_cast<double>(w);
      width = static_cast<double>(w);
    }
    weights += (width + 1) * static_cast<double>(num_classes);
  }
  constexpr double kMaxInput = double{1 << 30};
  constexpr double kMaxWeights = double{1 << 30};  // 4 GiB of float32, before optimizer state
  if (input > kMaxInput || num_classes > (int64_t{1} << 24) || weights > kMaxWeights) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: too large (", input, " inputs per example, ", num_classes, " classes, ",
        weights, " weights); the limits are 2^30 inputs, 2^24 classes and 2^30 weights"));
  }
  if (architecture == Architecture::kLeNet5 &&
      input_shape != std::vector<int64_t>{1, 28, 28}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: lenet5 needs input_shape [1, 28, 28]; got ", ShapeString(input_shape)));
  }
  if (architecture == Architecture::kTorchScript && torchscript.empty()) {
    return absl::InvalidArgumentError("model spec: torchscript architecture needs the module's bytes; got none");
  }
  return absl::OkStatus();
}

absl::Status Model::CheckInput(const at::Tensor& x) const {
  const auto& shape = spec_.input_shape;
  bool ok = x.defined() && x.scalar_type() == at::kFloat &&
            x.dim() == static_cast<int64_t>(shape.size()) + 1 && x.size(0) >= 1;
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = x.size(i + 1) == shape[i];
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("model input must be float32 [N, ",
                                                 absl::StrJoin(shape, ", "), "] with N >= 1; got ",
                                                 DescribeTensor(x)));
}

absl::Status CheckFiniteOutputs(const at::Tensor& out, const at::Tensor& x, int64_t first) {
  const int64_t flat = FirstNonFinite(out);
  if (flat < 0) return absl::OkStatus();
  const int64_t i = flat / (out.numel() / out.size(0));  // its row
  return absl::InvalidArgumentError(absl::StrCat(
      "x: the model's outputs for example ", first + i, " are not finite: its features reach |x| = ",
      x[i].abs().max().item<double>(), ", and an input that far from the scale the model learnt "
      "on overflows float32"));
}

int64_t Model::NumParameters() {
  int64_t n = 0;
  for (const at::Tensor& p : Parameters()) n += p.numel();
  return n;
}

absl::StatusOr<std::unique_ptr<Model>> BuildModel(const ModelSpec& spec, uint64_t seed) {
  ADAPTD_RETURN_IF_ERROR(spec.Validate());
  if (spec.architecture != Architecture::kTorchScript) {
    return CallTorch([&]() -> absl::StatusOr<std::unique_ptr<Model>> {
      torch::nn::Sequential net = BuildSequential(spec);
      InitParameters(*net, seed);
      return std::unique_ptr<Model>(new SequentialModel(spec, std::move(net)));
    });
  }
  torch::jit::Module module;
  try {
    std::istringstream in(spec.torchscript);
    module = torch::jit::load(in, at::kCPU);
  } catch (const std::exception& e) {  // c10::Error, or the loader's own ErrorReport
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed TorchScript module (", spec.torchscript.size(),
        " bytes): expected the output of torch.jit.save; loading failed with: ",
        ExceptionText(e).substr(0, 300)));
  }
  // Buffers (BatchNorm's running statistics, say) change in training but are neither parameters
  // nor part of the posterior or the checkpoints: their updates would be lost at every restart.
  std::vector<std::string> buffers;
  for (const auto& b : module.named_buffers()) buffers.push_back(b.name);
  if (!buffers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TorchScript module holds buffers (", absl::StrJoin(buffers, ", "),
        "), e.g. BatchNorm's running statistics: adaptd keeps parameters only, so their "
        "updates would be lost; use a module without them (e.g. LayerNorm or GroupNorm)"));
  }
  auto model = std::make_unique<ScriptModel>(spec, std::move(module));
  if (model->Parameters().empty()) {
    return absl::InvalidArgumentError("TorchScript module has no parameters to train");
  }
  // Modules built in C++ (or frozen) may store parameters without requires_grad; adaptd trains
  // every parameter it is given.
  for (at::Tensor& p : model->Parameters()) p.requires_grad_(true);
  // A dry run on one zero example checks the declared shapes against the module.
  std::vector<int64_t> shape = {1};
  shape.insert(shape.end(), spec.input_shape.begin(), spec.input_shape.end());
  const absl::Status dry = CallTorch([&]() -> absl::Status {
    at::NoGradGuard no_grad;
    model->SetTraining(false);  // as queries run it (dropout off)
    (void)model->Forward(at::zeros(shape));  // Forward checks the logits' shape
    return absl::OkStatus();
  });
  // At creation the module is the request's: what it does wrong is an invalid argument.
  if (dry.code() == absl::StatusCode::kFailedPrecondition) {
    return absl::InvalidArgumentError(dry.message());
  }
  ADAPTD_RETURN_IF_ERROR(dry);
  return std::unique_ptr<Model>(std::move(model));
}

absl::StatusOr<at::Tensor> MakeLabelMask(const std::vector<int64_t>& labels, int64_t num_classes) {
  if (labels.empty()) return absl::InvalidArgumentError("label set must not be empty");
  at::Tensor mask = at::zeros({num_classes}, at::kBool);
  auto acc = mask.accessor<bool, 1>();
  for (int64_t l : labels) {
    if (l < 0 || l >= num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat("label ", l, " in the label set is outside [0, ", num_classes, ")"));
    }
    if (acc[l]) return absl::InvalidArgumentError(absl::StrCat("label ", l, " appears twice in the label set"));
    acc[l] = true;
  }
  return mask;
}

absl::Status CheckLabelMask(const at::Tensor& mask, int64_t num_classes) {
  if (!mask.defined()) return absl::OkStatus();
  if (mask.scalar_type() != at::kBool || mask.dim() != 1 || mask.size(0) != num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("label_mask must be bool [", num_classes,
                                                   "]; got ", DescribeTensor(mask)));
  }
  return absl::OkStatus();
}

at::Tensor MaskLogits(const at::Tensor& logits, const at::Tensor& mask) {
  if (!mask.defined()) return logits;
  return logits.masked_fill(mask.to(logits.device()).logical_not(),
                            -std::numeric_limits<float>::infinity());
}

at::Tensor SoftCrossEntropySum(const at::Tensor& logits, const at::Tensor& target) {
  const at::Tensor log_p = at::log_softmax(logits, 1);
  const at::Tensor safe = log_p.masked_fill(target.eq(0), 0.0);
  return -(target * safe).sum();
}

at::Tensor ChunkedLogits(Model& model, const at::Tensor& x, const at::Tensor& mask, int64_t chunk) {
  at::NoGradGuard no_grad;
  const at::Tensor first = model.Parameters()[0];
  if (x.size(0) == 0) return at::empty({0, model.spec().num_classes}, first.options());
  const bool per_example = mask.defined() && mask.dim() == 2;
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    const int64_t len = std::min(chunk, x.size(0) - s);
    parts.push_back(MaskLogits(model.Forward(x.narrow(0, s, len).to(first.device())),
                               per_example ? mask.narrow(0, s, len) : mask));
  }
  return at::cat(parts);
}

}  // namespace adaptd

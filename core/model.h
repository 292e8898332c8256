// Models built from a ModelSpec: logistic regression, MLP, LeNet-5 and user TorchScript modules.
// All map a batch [N, input_shape...] of float32 inputs to logits [N, num_classes].
#ifndef ADAPTD_CORE_MODEL_H_
#define ADAPTD_CORE_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd {

enum class Architecture { kLogReg, kMlp, kLeNet5, kTorchScript };

// "logreg", "mlp", "lenet5", "torchscript". INVALID_ARGUMENT for anything else.
absl::StatusOr<Architecture> ParseArchitecture(const std::string& name);
std::string ArchitectureName(Architecture a);

struct ModelSpec {
  Architecture architecture = Architecture::kMlp;
  // Shape of one example, e.g. {784} or {1, 28, 28}. LeNet-5 needs {1, 28, 28}.
  std::vector<int64_t> input_shape;
  int64_t num_classes = 0;
  // MLP hidden layer widths, e.g. {512, 512}.
  std::vector<int64_t> hidden;
  // MLP and LeNet-5 activation: "relu" (default) or "tanh".
  std::string activation = "relu";
  // The bytes of a module saved with torch.jit.save (kTorchScript only).
  std::string torchscript;

  // INVALID_ARGUMENT naming the first field that is wrong, what it must be and what it is.
  absl::Status Validate() const;
  int64_t InputNumel() const;
};

// One stage of a built-in model's forward pass. Code that exploits layer structure (the
// per-example gradient identities of core/jacobian.h) walks Model::Layers() in order.
struct Layer {
  enum class Kind { kFlatten, kLinear, kConv2d, kRelu, kTanh, kMaxPool2d };
  Kind kind = Kind::kFlatten;
  // kLinear, kConv2d: indices into Model::Parameters() of the weight ([out, in] or
  // [out, in, k, k]) and the bias ([out]; -1 when there is none).
  int weight_index = -1;
  int bias_index = -1;
  // kConv2d: square kernel, stride and zero padding. kMaxPool2d: square kernel and stride (no
  // padding, no dilation).
  int64_t kernel = 0;
  int64_t stride = 1;
  int64_t padding = 0;
};

// Not thread-safe: forward passes and training mutate module state. Readers that must run
// concurrently use separate instances (CloneModel).
class Model {
 public:
  virtual ~Model() = default;
  // REQUIRES: CheckInput(x).ok(). Returns logits [N, num_classes].
  virtual at::Tensor Forward(const at::Tensor& x) = 0;
  // The trainable parameters, in a fixed order. They alias the module's storage.
  virtual std::vector<at::Tensor> Parameters() = 0;
  virtual void SetTraining(bool training) = 0;
  // Moves the module to `device` (parameters become new tensors: rebind any FlatParameters).
  virtual void To(const at::Device& device) = 0;
  // The forward pass as a sequence of known layers, or empty when the model is not such a
  // sequence (TorchScript modules, or a layer configuration outside Layer's vocabulary).
  virtual std::vector<Layer> Layers() { return {}; }

  const ModelSpec& spec() const { return spec_; }
  // INVALID_ARGUMENT unless x is float32 [N, input_shape...] with N >= 1.
  absl::Status CheckInput(const at::Tensor& x) const;
  int64_t NumParameters();

 protected:
  explicit Model(ModelSpec spec) : spec_(std::move(spec)) {}

 private:
  ModelSpec spec_;
};

// Builds the model and initialises its weights reproducibly from `seed` (uniform
// +-1/sqrt(fan_in), as PyTorch's default for Linear and Conv2d). TorchScript modules keep the
// weights they were saved with. INVALID_ARGUMENT for a bad spec or malformed TorchScript.
absl::StatusOr<std::unique_ptr<Model>> BuildModel(const ModelSpec& spec, uint64_t seed = 0);

// A bool [num_classes] mask with true at `labels` (the task-incremental "head" of a task).
// INVALID_ARGUMENT for an empty set, duplicates or labels outside [0, num_classes).
absl::StatusOr<at::Tensor> MakeLabelMask(const std::vector<int64_t>& labels, int64_t num_classes);

// INVALID_ARGUMENT unless `mask` is undefined (no head) or bool [num_classes].
absl::Status CheckLabelMask(const at::Tensor& mask, int64_t num_classes);

// INVALID_ARGUMENT naming the first example whose row of `out` ([N, ...]: its logits, or what was
// computed from them, for the examples x [N, ...]) is not finite, and how far its features
// reach: an input far outside the scale the model learnt on overflows float32 on a published
// (finite) model, and the caller must not answer with NaN. `first`: the index of x's first row
// in the request. OK when every row is finite.
absl::Status CheckFiniteOutputs(const at::Tensor& out, const at::Tensor& x, int64_t first = 0);

// Logits with classes outside `mask` set to -inf, so softmax and cross-entropy see only the
// task's head. An undefined mask returns the logits unchanged.
at::Tensor MaskLogits(const at::Tensor& logits, const at::Tensor& mask);
// -sum_i sum_k target_ik log softmax(logits_i)_k for probabilities `target` [N, K]: classes with
// probability 0 take no part, so masked logits (-inf) give no 0 * -inf.
at::Tensor SoftCrossEntropySum(const at::Tensor& logits, const at::Tensor& target);

// The model's logits on every row of `x`, `chunk` rows per forward pass, without gradients and
// on the model's device, masked by MaskLogits (`mask`: one head [K] or per-example heads [N, K]).
at::Tensor ChunkedLogits(Model& model, const at::Tensor& x, const at::Tensor& mask = at::Tensor(),
                         int64_t chunk = 1024);

}  // namespace adaptd

#endif  // ADAPTD_CORE_MODEL_H_

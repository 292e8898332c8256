#include "server/convert.h"

#include <cstring>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "core/torch_status.h"
#include "google/protobuf/util/field_mask_util.h"

namespace adaptd {
namespace {

struct DtypeInfo {
  v1::DataType wire;
  at::ScalarType torch;
  const char* name;
};
constexpr DtypeInfo kDtypes[] = {
    {v1::DATA_TYPE_FLOAT32, at::kFloat, "float32"},
    {v1::DATA_TYPE_FLOAT64, at::kDouble, "float64"},
    {v1::DATA_TYPE_UINT8, at::kByte, "uint8"},
    {v1::DATA_TYPE_INT64, at::kLong, "int64"},
};

const DtypeInfo* FindWire(v1::DataType d) {
  for (const auto& i : kDtypes) {
    if (i.wire == d) return &i;
  }
  return nullptr;
}

const DtypeInfo* FindTorch(at::ScalarType t) {
  for (const auto& i : kDtypes) {
    if (i.torch == t) return &i;
  }
  return nullptr;
}

std::string WireShape(const v1::Tensor& p) {
  return absl::StrCat("[", absl::StrJoin(p.shape(), ", "), "]");
}

std::string WireName(const v1::Tensor& p) {
  const DtypeInfo* d = FindWire(p.dtype());
  return d ? d->name : DataTypeText(p.dtype());
}

template <typename T>
T Or(T value, T fallback) {
  return value == T{} ? fallback : value;
}

}  // namespace

absl::StatusOr<ModelSpec> SpecFromProto(const v1::ModelSpec& p) {
  ModelSpec s;
  ADAPTD_ASSIGN_OR_RETURN(s.architecture, ParseArchitecture(p.architecture()));
  s.input_shape.assign(p.input_shape().begin(), p.input_shape().end());
  s.num_classes = p.num_classes();
  s.hidden.assign(p.hidden().begin(), p.hidden().end());
  s.activation = p.activation().empty() ? "relu" : p.activation();
  s.torchscript = p.torchscript();
  ADAPTD_RETURN_IF_ERROR(s.Validate());
  // Building the module checks what Validate cannot: TorchScript bytes that load and a
  // forward pass whose output has num_classes columns.
  ADAPTD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, BuildModel(s, 0));
  ADAPTD_RETURN_IF_ERROR(CallTorch([&]() -> absl::Status {
    std::vector<int64_t> shape = {2};
    shape.insert(shape.end(), s.input_shape.begin(), s.input_shape.end());
    at::NoGradGuard no_grad;
    const at::Tensor out = model->Forward(at::zeros(shape));
    if (out.dim() != 2 || out.size(0) != 2 || out.size(1) != s.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the model maps a batch of 2 inputs to ", DescribeTensor(out), "; expected [2, ",
          s.num_classes, "] logits"));
    }
    return absl::OkStatus();
  }));
  return s;
}

v1::ModelSpec SpecToProto(const ModelSpec& s) {
  v1::ModelSpec p;
  p.set_architecture(ArchitectureName(s.architecture));
  for (int64_t d : s.input_shape) p.add_input_shape(d);
  p.set_num_classes(s.num_classes);
  for (int64_t h : s.hidden) p.add_hidden(h);
  p.set_activation(s.activation);
  p.set_torchscript(s.torchscript);
  return p;
}

absl::StatusOr<v1::LearningConfig> NormalizeConfig(const v1::LearningConfig& in) {
  v1::LearningConfig c = in;
  c.set_method(Or<std::string>(c.method(), "kprior"));
  ADAPTD_ASSIGN_OR_RETURN(Method method, ParseMethod(c.method()));
  c.set_optimizer(Or<std::string>(c.optimizer(), "ivon"));
  if (c.optimizer() != "ivon") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.optimizer must be \"ivon\" (continual adaptation needs its posterior); got \"",
        c.optimizer(), "\""));
  }
  v1::IvonConfig* v = c.mutable_ivon();
  v->set_lr(Or(v->lr(), 0.1));
  v->set_beta1(Or(v->beta1(), 0.9));
  v->set_beta2(Or(v->beta2(), 0.9999));
  v->set_hess_init(Or(v->hess_init(), 0.1));
  v->set_weight_decay(Or(v->weight_decay(), 1e-3));
  v->set_ess_factor(Or(v->ess_factor(), 1.0));
  c.set_epochs(Or<int64_t>(c.epochs(), 10));
  c.set_batch_size(Or<int64_t>(c.batch_size(), 128));
  c.set_memory_points(Or<int64_t>(c.memory_points(), 40));
  c.set_selection(Or<std::string>(c.selection(), method == Method::kFromp ? "lambda" : "random"));
  c.set_memory_batch_size(Or<int64_t>(c.memory_batch_size(), 64));
  if (!c.has_memory_weight()) c.set_memory_weight(1.0);
  if (c.head_mode() == v1::HEAD_MODE_UNSPECIFIED) c.set_head_mode(v1::HEAD_MODE_SINGLE);
  if (c.head_mode() != v1::HEAD_MODE_SINGLE && c.head_mode() != v1::HEAD_MODE_MULTI) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.head_mode must be HEAD_MODE_SINGLE or HEAD_MODE_MULTI; got ", c.head_mode()));
  }
  // 0 means the default for both (models stored before these fields existed have 0).
  if (!(c.ivon().clip_radius() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.ivon.clip_radius must be >= 0 (0: no clip); got ", c.ivon().clip_radius()));
  }
  if (c.curvature_points() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.curvature_points must be >= 0 (0: the default); got ", c.curvature_points()));
  }
  c.set_fromp_tau(Or(c.fromp_tau(), 1.0));
  c.set_ewc_lambda(Or(c.ewc_lambda(), 1.0));
  c.set_curvature_points(Or<int64_t>(c.curvature_points(), AdaptConfig().curvature_points));
  c.set_weight_precision(Or<std::string>(c.weight_precision(), "posterior"));
  if (c.weight_precision() != "posterior" && c.weight_precision() != "prior") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.weight_precision must be \"posterior\" or \"prior\"; got \"",
        c.weight_precision(), "\""));
  }
  if (c.adapt_every() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.adapt_every must be >= 0; got ", c.adapt_every()));
  }
  if (!(c.adapt_after_seconds() >= 0 && c.adapt_after_seconds() <= kMaxAdaptAfterSeconds)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.adapt_after_seconds must be in [0, ", kMaxAdaptAfterSeconds,
                     "] (0: off); got ", c.adapt_after_seconds()));
  }
  ADAPTD_ASSIGN_OR_RETURN(AdaptConfig core, ConfigFromProto(c));
  ADAPTD_RETURN_IF_ERROR(core.Validate());
  return c;
}

absl::StatusOr<AdaptConfig> ConfigFromProto(const v1::LearningConfig& c) {
  AdaptConfig a;
  ADAPTD_ASSIGN_OR_RETURN(a.method, ParseMethod(c.method()));
  a.ivon.lr = c.ivon().lr();
  a.ivon.beta1 = c.ivon().beta1();
  a.ivon.beta2 = c.ivon().beta2();
  a.ivon.hess_init = c.ivon().hess_init();
  a.ivon.weight_decay = c.ivon().weight_decay();
  if (c.ivon().clip_radius() > 0) a.ivon.clip_radius = c.ivon().clip_radius();
  // Models stored before the field existed have 0: the default.
  if (c.ivon().ess_factor() != 0) a.ess_factor = c.ivon().ess_factor();
  a.epochs = c.epochs();
  a.min_steps = c.min_steps();
  a.batch_size = c.batch_size();
  a.memory_points = c.memory_points();
  ADAPTD_ASSIGN_OR_RETURN(a.selection, ParseSelection(c.selection()));
  a.memory_batch_size = c.memory_batch_size();
  a.memory_weight = c.memory_weight();
  a.replay_correction = c.replay_correction();
  a.distill_temperature = c.distill_temperature();
  a.new_input_weight = c.new_input_weight();
  a.curvature_weight = c.curvature_weight();
  a.memory_mixup = c.memory_mixup();
  // Models stored before the field existed have 0: the default.
  if (c.curvature_points() > 0) a.curvature_points = c.curvature_points();
  // Models stored before the field existed have "": the posterior, as they were trained.
  a.posterior_precision = c.weight_precision() != "prior";
  a.fromp_tau = c.fromp_tau();
  a.ewc_lambda = c.ewc_lambda();
  a.seed = c.seed();
  return a;
}

absl::StatusOr<v1::LearningConfig> MergeConfig(const v1::LearningConfig& current,
                                               const v1::LearningConfig& update,
                                               const google::protobuf::FieldMask& mask) {
  using google::protobuf::util::FieldMaskUtil;
  if (mask.paths_size() == 0) {
    return absl::InvalidArgumentError(
        "update_mask must name at least one LearningConfig field, e.g. \"epochs\" or "
        "\"ivon.lr\"; got none");
  }
  for (const std::string& path : mask.paths()) {
    // IsValidPath skips empty segments, so "ivon." would pass as "ivon" and reset every IVON
    // setting the request leaves out.
    const bool empty_segment = path.empty() || absl::StartsWith(path, ".") ||
                               absl::EndsWith(path, ".") || absl::StrContains(path, "..");
    if (empty_segment || !FieldMaskUtil::IsValidPath<v1::LearningConfig>(path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "update_mask: \"", path, "\" is not a LearningConfig field (expected a path such as "
          "\"epochs\" or \"ivon.lr\")"));
    }
  }
  v1::LearningConfig merged = current;
  FieldMaskUtil::MergeOptions options;
  options.set_replace_message_fields(true);  // "ivon": the request's IVON settings, all of them
  options.set_replace_repeated_fields(true);
  FieldMaskUtil::MergeMessageTo(update, mask, options, &merged);
  ADAPTD_ASSIGN_OR_RETURN(merged, NormalizeConfig(merged));
  if (merged.method() != current.method()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.method cannot change: the model's state is built for \"", current.method(),
        "\"; got \"", merged.method(), "\" (create a new model for another method)"));
  }
  if (merged.head_mode() != current.head_mode()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.head_mode cannot change: the model's tasks are stored for ",
        v1::HeadMode_Name(current.head_mode()), "; got ", v1::HeadMode_Name(merged.head_mode())));
  }
  return merged;
}

std::string DataTypeText(v1::DataType dtype) {
  const std::string name = v1::DataType_Name(dtype);
  return name.empty() ? absl::StrCat("dtype number ", static_cast<int>(dtype)) : name;
}

absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& p, const std::string& what) {
  const DtypeInfo* d = FindWire(p.dtype());
  if (d == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": dtype must be one of float32, float64, uint8, int64; got ",
        DataTypeText(p.dtype())));
  }
  int64_t numel = 1;
  for (int64_t s : p.shape()) {
    if (s < 0 || (s > 0 && numel > (int64_t{1} << 40) / s)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shape ", WireShape(p), " has a negative or huge dimension"));
    }
    numel *= s;
  }
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(d->torch));
  if (static_cast<int64_t>(p.raw_data().size()) != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": a ", d->name, " tensor of shape ", WireShape(p), " needs ", bytes,
        " bytes of raw_data; got ", p.raw_data().size()));
  }
  std::vector<int64_t> shape(p.shape().begin(), p.shape().end());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(d->torch));
  if (bytes > 0) std::memcpy(t.data_ptr(), p.raw_data().data(), static_cast<size_t>(bytes));
  return t;
}

v1::Tensor TensorToProto(const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  if (FindTorch(t.scalar_type()) == nullptr) t = t.to(at::kFloat);
  v1::Tensor p;
  p.set_dtype(FindTorch(t.scalar_type())->wire);
  for (int64_t s : t.sizes()) p.add_shape(s);
  p.set_raw_data(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return p;
}

absl::StatusOr<at::Tensor> InputsFromProto(const v1::Tensor& p, const ModelSpec& spec,
                                           bool allow_single, const std::string& what) {
  if (p.dtype() != v1::DATA_TYPE_FLOAT32 && p.dtype() != v1::DATA_TYPE_UINT8) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype must be float32 (or uint8 pixels); got ", WireName(p)));
  }
  const std::vector<int64_t> shape(p.shape().begin(), p.shape().end());
  const std::vector<int64_t>& in = spec.input_shape;
  const bool batched = shape.size() == in.size() + 1 && shape[0] >= 1 &&
                       std::equal(in.begin(), in.end(), shape.begin() + 1);
  const bool single = allow_single && shape == in;
  if (!batched && !single) {
    std::vector<int64_t> want = {-1};
    want.insert(want.end(), in.begin(), in.end());
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": shape must be [B, ", absl::StrJoin(in, ", "), "] with B >= 1",
        allow_single ? absl::StrCat(" or [", absl::StrJoin(in, ", "), "]") : "", "; got ",
        WireShape(p)));
  }
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor t, TensorFromProto(p, what));
  if (single) t = t.unsqueeze(0);
  if (t.scalar_type() == at::kByte) return t.to(at::kFloat).div_(255.0f);
  ADAPTD_RETURN_IF_ERROR(CheckFinite(t, what));
  return t;
}

absl::StatusOr<at::Tensor> LabelsFromProto(const v1::Tensor& p, int64_t batch,
                                           int64_t num_classes, const std::string& what) {
  if (p.dtype() != v1::DATA_TYPE_INT64) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": dtype must be int64; got ", WireName(p)));
  }
  if (p.shape_size() != 1 || p.shape(0) != batch) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shape must be [", batch, "] (one per example); got ", WireShape(p)));
  }
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor y, TensorFromProto(p, what));
  if (batch > 0) {
    const int64_t lo = y.min().item<int64_t>();
    const int64_t hi = y.max().item<int64_t>();
    if (lo < 0 || hi >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": labels must lie in [0, ",
                                                     num_classes, "); got values in [", lo, ", ",
                                                     hi, "]"));
    }
  }
  return y;
}

}  // namespace adaptd

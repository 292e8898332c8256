#include "client/report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "google/protobuf/text_format.h"
#include "client/tensor.h"

namespace adaptd {
namespace {

// Zero means "the server's default" in LearningConfig.
std::string OrDefault(int64_t value) { return value == 0 ? "default" : absl::StrCat(value); }
std::string OrDefault(double value) { return value == 0 ? "default" : absl::StrCat(value); }
std::string OrDefault(const std::string& value) { return value.empty() ? "default" : value; }

std::string HeadName(v1::HeadMode mode) {
  switch (mode) {
    case v1::HEAD_MODE_SINGLE:
      return "single";
    case v1::HEAD_MODE_MULTI:
      return "multi";
    default:
      return "single (default)";
  }
}

// A percentage, or "-" for NaN (a task without evaluation examples yet).
std::string Percent(double fraction) {
  return std::isnan(fraction) ? "-" : absl::StrFormat("%.1f", 100 * fraction);
}

// Percent and its unit, or "-" alone when there is no figure (no evaluation data yet).
std::string PercentIn(double fraction, absl::string_view unit) {
  return std::isnan(fraction) ? "-" : absl::StrCat(Percent(fraction), unit);
}

std::string OrDash(int64_t value) { return value < 0 ? "-" : absl::StrCat(value); }

}  // namespace

absl::StatusOr<std::vector<Prediction>> PredictionsFromResponse(
    const v1::PredictResponse& response) {
  absl::StatusOr<std::vector<float>> probs = FloatValues(response.probs());
  absl::StatusOr<std::vector<int64_t>> labels = Int64Values(response.labels());
  absl::StatusOr<std::vector<float>> total = FloatValues(response.total_entropy());
  absl::StatusOr<std::vector<float>> aleatoric = FloatValues(response.expected_entropy());
  absl::StatusOr<std::vector<float>> epistemic = FloatValues(response.mutual_information());
  for (const absl::Status& s :
       {probs.status(), labels.status(), total.status(), aleatoric.status(), epistemic.status()}) {
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("prediction: ", s.message()));
  }
  const size_t n = labels->size();
  const v1::Tensor& p = response.probs();
  if (p.shape_size() != 2 || p.shape(0) != static_cast<int64_t>(n) || total->size() != n ||
      aleatoric->size() != n || epistemic->size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("prediction: probs ", FormatShape(p.shape()),
                                                   " and the per-example tensors disagree with ", n,
                                                   " labels"));
  }
  const int64_t k = p.shape(1);
  std::vector<Prediction> predictions(n);
  for (size_t i = 0; i < n; ++i) {
    Prediction& out = predictions[i];
    out.label = (*labels)[i];
    if (out.label < 0 || out.label >= k) {
      return absl::InvalidArgumentError(
          absl::StrCat("prediction: label ", out.label, " outside the ", k, " classes"));
    }
    out.probability = (*probs)[i * k + out.label];
    out.total_entropy = (*total)[i];
    out.aleatoric = (*aleatoric)[i];
    out.epistemic = (*epistemic)[i];
  }
  return predictions;
}

std::string FormatServerInfo(const v1::GetServerInfoResponse& info) {
  return absl::StrCat("adaptd ", info.version(), " (LibTorch ", info.torch_version(), ") on ",
                      info.device(), ", ", info.intra_op_threads(),
                      " intra-op threads, messages up to ", info.max_message_bytes() >> 20,
                      " MiB\n", "architectures: ", absl::StrJoin(info.architectures(), ", "), "\n",
                      "methods:       ", absl::StrJoin(info.methods(), ", "), "\n",
                      "optimizers:    ", absl::StrJoin(info.optimizers(), ", "), "\n");
}

std::string FormatModelInfo(const v1::ModelInfo& model) {
  const v1::ModelSpec& spec = model.spec();
  const v1::LearningConfig& config = model.config();
  std::string text =
      absl::StrCat("model ", model.name(), ": ", spec.architecture(), " ",
                   FormatShape(spec.input_shape()), " -> ", spec.num_classes(), " classes");
  if (spec.hidden_size() > 0) absl::StrAppend(&text, ", hidden ", FormatShape(spec.hidden()));
  if (!spec.activation().empty()) absl::StrAppend(&text, ", ", spec.activation());
  absl::StrAppend(&text, ", ", model.num_parameters(), " parameters\n");
  absl::StrAppend(&text, "learning: method ", OrDefault(config.method()), ", head ",
                  HeadName(config.head_mode()), ", optimizer ", OrDefault(config.optimizer()),
                  ", lr ", OrDefault(config.ivon().lr()), ", epochs ", OrDefault(config.epochs()),
                  ", batch ", OrDefault(config.batch_size()), ", memory ",
                  OrDefault(config.memory_points()), " per task (selection ",
                  OrDefault(config.selection()), ")");
  if (config.ivon().ess_factor() > 0 && config.ivon().ess_factor() != 1) {
    absl::StrAppend(&text, ", ess factor ", config.ivon().ess_factor());
  }
  if (config.min_steps() > 0) absl::StrAppend(&text, ", at least ", config.min_steps(), " steps");
  if (config.adapt_every() > 0) absl::StrAppend(&text, ", adapt every ", config.adapt_every());
  if (config.adapt_after_seconds() > 0) {
    absl::StrAppend(&text, ", adapt waiting examples after ", config.adapt_after_seconds(), " s");
  }
  if (config.has_memory_weight() && config.memory_weight() != 1) {
    absl::StrAppend(&text, ", memory weight ", config.memory_weight());
  }
  if (config.ivon().clip_radius() > 0) absl::StrAppend(&text, ", update clipped at ", config.ivon().clip_radius());
  if (config.weight_precision() == "prior") absl::StrAppend(&text, ", weight term at the prior precision");
  if (config.replay_correction()) absl::StrAppend(&text, ", replay correction");
  if (config.distill_temperature() > 0) {
    absl::StrAppend(&text, ", distillation at T = ", config.distill_temperature());
  }
  if (config.new_input_weight() > 0) {
    absl::StrAppend(&text, ", new-input term weight ", config.new_input_weight());
  }
  if (config.memory_mixup() > 0) {
    absl::StrAppend(&text, ", ", config.memory_mixup(), " mixed inputs per memory example");
  }
  if (config.curvature_weight() > 0) {
    absl::StrAppend(&text, ", logit-curvature weight ", config.curvature_weight());
  }
  absl::StrAppend(&text, "\nversion ", model.current().version(), " of ", model.version_count(),
                  ", memory ", model.current().memory_size(), " examples, ", model.jobs_pending(),
                  " jobs pending\n");
  for (const v1::TaskInfo& task : model.tasks()) {
    absl::StrAppend(&text, "task ", task.task_id(), ": ", task.train_examples(), " train, ",
                    task.eval_examples(), " eval");
    if (task.classes_size() > 0) absl::StrAppend(&text, ", classes ", FormatShape(task.classes()));
    if (task.pending_examples() > 0) {
      absl::StrAppend(&text, ", ", task.pending_examples(), " not learnt yet");
    }
    text += "\n";
  }
  return text;
}

std::string FormatModelList(const v1::ListModelsResponse& models) {
  if (models.models().empty()) return "no models\n";
  std::string text = absl::StrFormat("%-24s %-12s %8s %6s %12s %5s\n", "NAME", "ARCH", "VERSION",
                                     "TASKS", "PARAMETERS", "JOBS");
  for (const v1::ModelInfo& m : models.models()) {
    absl::StrAppend(&text, absl::StrFormat("%-24s %-12s %8d %6d %12d %5d\n", m.name(),
                                           m.spec().architecture(), m.current().version(),
                                           m.tasks_size(), m.num_parameters(), m.jobs_pending()));
  }
  return text;
}

namespace {

// "path=value" for every field of `message`, nested messages as "ivon.lr=..." (a field with
// presence, such as the optional memory_weight, only when it is set).
void AppendAssignments(const google::protobuf::Message& message, const std::string& prefix,
                       std::vector<std::string>* out) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  for (int i = 0; i < message.GetDescriptor()->field_count(); ++i) {
    const auto* f = message.GetDescriptor()->field(i);
    if (f->is_repeated() || (f->has_presence() && !reflection->HasField(message, f))) continue;
    const std::string path = prefix + f->name();
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      AppendAssignments(message.GetReflection()->GetMessage(message, f), path + ".", out);
      continue;
    }
    std::string value;
    google::protobuf::TextFormat::PrintFieldValueToString(message, f, -1, &value);
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING) {
      value = message.GetReflection()->GetString(message, f);
    }
    out->push_back(absl::StrCat(path, "=", value));
  }
}

std::vector<std::string> Assignments(const v1::LearningConfig& config) {
  std::vector<std::string> out;
  AppendAssignments(config, "", &out);
  return out;
}

// The assignments of `to` that `from` does not have, and "path=unset" for an optional field
// that only `from` sets.
std::string ConfigChanges(const v1::LearningConfig& from, const v1::LearningConfig& to) {
  const std::vector<std::string> before = Assignments(from), after = Assignments(to);
  auto path_of = [](const std::string& a) { return a.substr(0, a.find('=')); };
  std::vector<std::string> changed;
  for (const std::string& a : after) {
    if (std::find(before.begin(), before.end(), a) == before.end()) changed.push_back(a);
  }
  for (const std::string& b : before) {
    const bool kept = std::any_of(after.begin(), after.end(), [&](const std::string& a) {
      return path_of(a) == path_of(b);
    });
    if (!kept) changed.push_back(path_of(b) + "=unset");
  }
  return absl::StrJoin(changed, " ");
}

}  // namespace

std::string FormatConfigAssignments(const v1::LearningConfig& config) {
  return absl::StrJoin(Assignments(config), " ");
}

std::string FormatVersions(const v1::ListVersionsResponse& versions) {
  std::string text =
      absl::StrFormat("%7s %4s %4s %-19s %6s %8s %6s %8s  %s\n", "VERSION", "TASK", "FROM",
                      "CREATED", "STEPS", "LOSS", "MEMORY", "SECONDS", "ACCURACY % PER TASK");
  const v1::VersionInfo* above = nullptr;
  for (const v1::VersionInfo& v : versions.versions()) {
    std::vector<std::string> accuracy;
    for (const v1::TaskAccuracy& a : v.eval()) {
      accuracy.push_back(absl::StrCat(a.task_id(), ":", Percent(a.accuracy())));
    }
    const std::string created = absl::FormatTime(
        "%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(v.created_unix_ms()), absl::LocalTimeZone());
    absl::StrAppend(&text,
                    absl::StrFormat("%7d %4s %4s %-19s %6d %8.4f %6d %8.1f  %s", v.version(),
                                    OrDash(v.task_id()), OrDash(v.rolled_back_from()), created,
                                    v.steps(), v.final_loss(), v.memory_size(), v.adapt_seconds(),
                                    absl::StrJoin(accuracy, " ")),
                    v.checkpoint_deleted() ? "  (checkpoint deleted: --keep_versions)\n" : "\n");
    // A rollback trained nothing: it carries its target's record, which the next row is
    // compared with.
    if (above != nullptr && above->has_config() && v.has_config() && v.rolled_back_from() < 0) {
      const std::string changes = ConfigChanges(above->config(), v.config());
      if (!changes.empty()) absl::StrAppend(&text, "        trained with ", changes, "\n");
    }
    above = &v;
  }
  return text;
}

std::string FormatRollback(const v1::ModelInfo& model) {
  std::string text = absl::StrFormat("%s: version %d now serves, a copy of version %d\n",
                                     model.name(), model.current().version(),
                                     model.current().rolled_back_from());
  for (const v1::TaskInfo& t : model.tasks()) {
    if (t.pending_examples() == 0) continue;
    absl::StrAppend(&text, absl::StrFormat(
                               "task %d: %d of %d training examples pending; `adaptctl adapt %s "
                               "--task=%d` learns them\n",
                               t.task_id(), t.pending_examples(), t.train_examples(),
                               model.name(), t.task_id()));
  }
  return text;
}

std::string FormatEvaluation(const v1::EvaluateResponse& evaluation) {
  size_t tasks = evaluation.forgetting_size();
  for (const v1::AccuracyRow& row : evaluation.rows()) {
    tasks = std::max<size_t>(tasks, row.accuracy_size());
  }
  std::string text = "accuracy (%) of each version (rows) on each task's evaluation examples\n";
  absl::StrAppend(&text, absl::StrFormat("%7s %6s |", "version", "learnt"));
  for (size_t j = 0; j < tasks; ++j)
    absl::StrAppend(&text, absl::StrFormat(" %7s", absl::StrCat("task ", j)));
  text += "\n";
  for (const v1::AccuracyRow& row : evaluation.rows()) {
    absl::StrAppend(&text, absl::StrFormat("%7d %6s |", row.version(), OrDash(row.task_id())));
    for (size_t j = 0; j < tasks; ++j) {
      const double a = j < static_cast<size_t>(row.accuracy_size()) ? row.accuracy(j) : NAN;
      absl::StrAppend(&text, absl::StrFormat(" %7s", Percent(a)));
    }
    text += "\n";
  }
  absl::StrAppend(&text, absl::StrFormat("%-14s |", "forgetting"));
  for (double f : evaluation.forgetting())
    absl::StrAppend(&text, absl::StrFormat(" %7s", Percent(f)));
  absl::StrAppend(&text, "\n\naverage accuracy   ", PercentIn(evaluation.average_accuracy(), "%"),
                  " (version ", evaluation.version(), ")\n");
  absl::StrAppend(&text, "average forgetting ",
                  PercentIn(evaluation.average_forgetting(), " points"), "\nbackward transfer  ",
                  PercentIn(evaluation.backward_transfer(), " points"), "\n");
  return text;
}

std::string FormatPredictions(const std::vector<Prediction>& predictions, int64_t first_index,
                              const std::vector<int64_t>& true_labels) {
  const bool labelled = true_labels.size() == predictions.size() && !true_labels.empty();
  std::string text =
      absl::StrFormat("%7s %6s %11s %13s %9s %9s%s\n", "INDEX", "LABEL", "PROBABILITY",
                      "TOTAL_ENTROPY", "ALEATORIC", "EPISTEMIC", labelled ? "   TRUE" : "");
  int64_t correct = 0;
  for (size_t i = 0; i < predictions.size(); ++i) {
    const Prediction& p = predictions[i];
    absl::StrAppend(&text,
                    absl::StrFormat("%7d %6d %11.4f %13.4f %9.4f %9.4f", first_index + i, p.label,
                                    p.probability, p.total_entropy, p.aleatoric, p.epistemic));
    if (labelled) {
      const bool right = true_labels[i] == p.label;
      correct += right;
      absl::StrAppend(&text, absl::StrFormat(" %6d%s", true_labels[i], right ? "" : " x"));
    }
    text += "\n";
  }
  if (labelled) {
    absl::StrAppend(
        &text, absl::StrFormat("accuracy %.1f%% (%d of %d)\n", 100.0 * correct / predictions.size(),
                               correct, predictions.size()));
  }
  return text;
}

std::string FormatInfluence(const v1::InfluenceResponse& influence) {
  std::string text = absl::StrFormat(
      "version %d's mean model (not the posterior average that predict shows by default) predicts "
      "class %d with probability %.4f; %d training examples scored\n"
      "score = p(without the example) - p(with it): negative supports the prediction\n",
      influence.version(), influence.query_class(), influence.query_probability(),
      influence.examples_scored());
  absl::StrAppend(&text, absl::StrFormat("%4s %10s %10s %4s %5s %11s\n", "RANK", "EXAMPLE_ID",
                                         "CLIENT_ID", "TASK", "LABEL", "SCORE"));
  int rank = 0;
  for (const v1::InfluentialExample& e : influence.examples()) {
    absl::StrAppend(&text,
                    absl::StrFormat("%4d %10d %10s %4d %5d %11.3e\n", ++rank, e.example_id(),
                                    OrDash(e.client_id()), e.task_id(), e.label(), e.score()));
  }
  return text;
}

}  // namespace adaptd

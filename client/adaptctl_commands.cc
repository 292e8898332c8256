// adaptctl's commands: each turns options and positional arguments into calls of the client
// and prints the answer on stdout; progress goes to stderr.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/adaptctl.h"
#include "client/memory_map.h"
#include "client/progress.h"
#include "client/report.h"
#include "client/tensor.h"
#include "core/files.h"
#include "core/status_macros.h"

namespace adaptd {
namespace {

absl::StatusOr<int64_t> ParseInt64(const std::string& text, const char* what) {
  int64_t value;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be an integer; got '", text, "'"));
  }
  return value;
}

// Gives `examples` the model's input shape, so that files of images ([N, 28, 28]) feed
// flat models ([784]) and flat files feed convolutional ones. `model_info`, when given, gets
// the model's description.
absl::Status FitToModel(const AdaptdClient& client, const std::string& model,
                        ExampleSet& examples, v1::ModelInfo* model_info = nullptr) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo info, client.GetModel(model));
  if (model_info != nullptr) *model_info = info;
  const std::vector<int64_t> shape(info.spec().input_shape().begin(),
                                   info.spec().input_shape().end());
  return ReshapeExamples(examples, shape);
}

// Rows [options.index, options.index + options.count) of the first file argument, fitted to
// the model.
absl::StatusOr<ExampleSet> QueryExamples(const AdaptdClient& client, const std::string& model,
                                         const std::string& file, const CtlOptions& options,
                                         v1::ModelInfo* info = nullptr) {
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet all, LoadExampleFiles({file}, options));
  if (options.index < 0 || options.index >= all.size()) {
    return absl::OutOfRangeError(absl::StrCat("--index ", options.index, " outside the ",
                                              all.size(), " examples of ", file));
  }
  if (options.count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--count must be >= 1; got ", options.count));
  }
  const int64_t count = std::min(options.count, all.size() - options.index);
  if (count < options.count) {
    absl::FPrintF(stderr, "note: %s has %d examples: %d from --index %d\n", file, all.size(),
                  count, options.index);
  }
  std::vector<int64_t> rows(count);
  for (int64_t i = 0; i < count; ++i) rows[i] = options.index + i;
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet some, TakeRows(all, rows));
  ADAPTD_RETURN_IF_ERROR(FitToModel(client, model, some, info));
  return some;
}

absl::Status Info(const AdaptdClient& client, const CtlOptions&, const std::vector<std::string>&) {
  ADAPTD_ASSIGN_OR_RETURN(v1::GetServerInfoResponse info, client.GetServerInfo());
  absl::PrintF("%s", FormatServerInfo(info));
  return absl::OkStatus();
}

absl::Status Create(const AdaptdClient& client, const CtlOptions& options,
                    const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::CreateModelRequest request, BuildCreateRequest(args[0], options));
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo model, client.CreateModel(request));
  absl::PrintF("%s", FormatModelInfo(model));
  return absl::OkStatus();
}

absl::Status List(const AdaptdClient& client, const CtlOptions&, const std::vector<std::string>&) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ListModelsResponse models, client.ListModels());
  absl::PrintF("%s", FormatModelList(models));
  return absl::OkStatus();
}

absl::Status Get(const AdaptdClient& client, const CtlOptions&,
                 const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo model, client.GetModel(args[0]));
  absl::PrintF("%s", FormatModelInfo(model));
  return absl::OkStatus();
}

absl::Status Delete(const AdaptdClient& client, const CtlOptions&,
                    const std::vector<std::string>& args) {
  ADAPTD_RETURN_IF_ERROR(client.DeleteModel(args[0]).status());
  absl::PrintF("deleted %s\n", args[0]);
  return absl::OkStatus();
}

absl::Status Versions(const AdaptdClient& client, const CtlOptions&,
                      const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ListVersionsResponse versions, client.ListVersions(args[0]));
  absl::PrintF("%s", FormatVersions(versions));
  return absl::OkStatus();
}

absl::Status Rollback(const AdaptdClient& client, const CtlOptions&,
                      const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(int64_t version, ParseInt64(args[1], "VERSION"));
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo model, client.Rollback(args[0], version));
  absl::PrintF("%s", FormatRollback(model));
  return absl::OkStatus();
}

absl::Status SetConfig(const AdaptdClient& client, const CtlOptions&,
                       const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(
      v1::UpdateConfigRequest request,
      BuildConfigUpdate(args[0], std::vector<std::string>(args.begin() + 1, args.end())));
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo model, client.UpdateConfig(request));
  absl::PrintF("%s: the learning config is now\n  %s\n", model.name(),
               FormatConfigAssignments(model.config()));
  return absl::OkStatus();
}

absl::Status Export(const AdaptdClient& client, const CtlOptions&,
                    const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(int64_t bytes, client.ExportToFile(args[0], args[1]));
  absl::PrintF("exported %s to %s (%d bytes)\n", args[0], args[1], bytes);
  return absl::OkStatus();
}

absl::Status Import(const AdaptdClient& client, const CtlOptions&,
                    const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo model, client.ImportFromFile(args[0], args[1]));
  absl::PrintF("%s", FormatModelInfo(model));
  return absl::OkStatus();
}

absl::Status Stream(const AdaptdClient& client, const CtlOptions& options,
                    const std::vector<std::string>& args) {
  if (options.task < 0) return absl::InvalidArgumentError("stream needs --task");
  if (options.batch <= 0) return absl::InvalidArgumentError("--batch must be positive");
  v1::StreamHeader header;
  header.set_model(args[0]);
  header.set_task_id(options.task);
  ADAPTD_ASSIGN_OR_RETURN(v1::Split split, ParseSplit(options.split));
  header.set_split(split);
  header.set_keep_open(options.keep_open);
  std::vector<int64_t> classes;
  if (!options.classes.empty()) {
    ADAPTD_ASSIGN_OR_RETURN(classes, ParseInt64List(options.classes));
  }
  for (int64_t c : classes) header.add_classes(c);

  const std::vector<std::string> files(args.begin() + 1, args.end());
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet examples, LoadExampleFiles(files, options));
  if (examples.labels.empty()) {
    return absl::InvalidArgumentError(
        "streamed examples need labels (--labels for NPY and IDX files; a CSV file's label "
        "column, --csv_labels)");
  }
  if (options.select_classes || options.limit > 0) {
    if (options.select_classes && classes.empty()) {
      return absl::InvalidArgumentError("--select_classes needs --classes");
    }
    std::vector<int64_t> rows;
    if (options.select_classes) {
      rows = RowsWithLabels(examples, classes, options.limit);
    } else {
      for (int64_t i = 0; i < std::min(options.limit, examples.size()); ++i) rows.push_back(i);
    }
    ADAPTD_ASSIGN_OR_RETURN(examples, TakeRows(examples, rows));
  }
  if (examples.size() == 0) return absl::InvalidArgumentError("no examples to stream");
  ADAPTD_RETURN_IF_ERROR(FitToModel(client, args[0], examples));

  ADAPTD_ASSIGN_OR_RETURN(v1::StreamExamplesResponse response,
                          StreamWithProgress(client, header, examples, options.batch));
  absl::PrintF("%s task %d: %d examples in %d batches acknowledged at version %d\n",
               response.model(), response.task_id(), response.examples(), response.batches(),
               response.version());
  for (const v1::IdRange& ids : response.ids()) {
    absl::PrintF("  example ids %d..%d\n", ids.first(), ids.first() + ids.count() - 1);
  }
  for (const std::string& job : response.job_ids()) absl::PrintF("  job %s queued\n", job);
  // Stored, and not to be sent again; but nothing learns them yet: a script must hear it.
  if (!response.no_job_reason().empty()) return absl::UnavailableError(response.no_job_reason());
  if (!options.watch) return absl::OkStatus();
  for (const std::string& job : response.job_ids()) {
    ADAPTD_ASSIGN_OR_RETURN(v1::JobStatus status, WatchWithProgress(client, job));
    absl::PrintF("job %s %s: %s\n", job, JobStateName(status.state()), status.message());
  }
  return absl::OkStatus();
}

// A closing training stream with no examples: it queues a job for the task's examples not yet
// learnt (those a failed or cancelled job left, or those of keep_open streams), or names the
// job that learns them already (the task's running job, or its queued one).
absl::Status AdaptPending(const AdaptdClient& client, const CtlOptions& options,
                          const std::vector<std::string>& args) {
  if (options.task < 0) return absl::InvalidArgumentError("adapt needs --task");
  v1::StreamHeader header;
  header.set_model(args[0]);
  header.set_task_id(options.task);
  header.set_split(v1::SPLIT_TRAIN);
  ADAPTD_ASSIGN_OR_RETURN(v1::StreamExamplesResponse response,
                          client.StreamExamples(header, std::vector<v1::ExampleBatch>()));
  if (response.job_ids().empty()) {
    absl::PrintF("%s task %d: nothing to learn (no examples pending)\n", response.model(),
                 response.task_id());
    return absl::OkStatus();
  }
  for (const std::string& job : response.job_ids()) {
    absl::PrintF("%s task %d: job %s learns them\n", response.model(), response.task_id(), job);
    if (!options.watch) continue;
    ADAPTD_ASSIGN_OR_RETURN(v1::JobStatus status, WatchWithProgress(client, job));
    absl::PrintF("job %s %s: %s\n", job, JobStateName(status.state()), status.message());
  }
  return absl::OkStatus();
}

absl::Status Watch(const AdaptdClient& client, const CtlOptions&,
                   const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::JobStatus status, WatchWithProgress(client, args[0]));
  absl::PrintF("job %s (%s task %d) %s: %s\n", status.job_id(), status.model(), status.task_id(),
               JobStateName(status.state()), status.message());
  return absl::OkStatus();
}

absl::Status Jobs(const AdaptdClient& client, const CtlOptions&,
                  const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::ListJobsResponse jobs, client.ListJobs(args[0]));
  for (const v1::JobStatus& j : jobs.jobs()) absl::PrintF("%s\n", JobListLine(j));
  return absl::OkStatus();
}

absl::Status Cancel(const AdaptdClient& client, const CtlOptions&,
                    const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::JobStatus status, client.CancelJob(args[0]));
  // A queued job is cancelled at once; a running one stops at its next step (`watch` shows
  // when it has stopped).
  if (status.state() == v1::JOB_STATE_CANCELLED) {
    absl::PrintF("job %s is cancelled: %s\n", status.job_id(), status.message());
  } else if (status.state() == v1::JOB_STATE_SUCCEEDED || status.state() == v1::JOB_STATE_FAILED) {
    absl::PrintF("job %s had already ended: %s, %s\n", status.job_id(),
                 JobStateName(status.state()), status.message());
  } else {
    absl::PrintF("job %s is %s: %s\n", status.job_id(), JobStateName(status.state()),
                 status.message());
  }
  return absl::OkStatus();
}

absl::Status Predict(const AdaptdClient& client, const CtlOptions& options,
                     const std::vector<std::string>& args) {
  v1::ModelInfo info;
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet examples,
                          QueryExamples(client, args[0], args[1], options, &info));
  v1::PredictRequest request;
  request.set_model(args[0]);
  *request.mutable_x() = examples.x;
  ADAPTD_ASSIGN_OR_RETURN(v1::PredictMode mode, ParsePredictMode(options.mode));
  request.set_mode(mode);
  request.set_samples(options.samples);
  request.set_seed(options.seed);
  if (options.task >= 0) request.set_task_id(options.task);
  if (options.version >= 0) request.set_version(options.version);
  ADAPTD_ASSIGN_OR_RETURN(v1::PredictResponse response,
                          PredictInParts(client, request, info.spec().num_classes(),
                                         options.index));
  ADAPTD_ASSIGN_OR_RETURN(std::vector<Prediction> predictions, PredictionsFromResponse(response));
  absl::PrintF("version %d\n", response.version());
  absl::PrintF("%s", FormatPredictions(predictions, options.index, examples.labels));
  return absl::OkStatus();
}

absl::Status Influence(const AdaptdClient& client, const CtlOptions& options,
                       const std::vector<std::string>& args) {
  CtlOptions one = options;
  one.count = 1;
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet example, QueryExamples(client, args[0], args[1], one));
  v1::InfluenceRequest request;
  request.set_model(args[0]);
  *request.mutable_x() = example.x;
  if (options.top_k < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--top_k must be >= 1; got ", options.top_k));
  }
  request.set_top_k(options.top_k);
  ADAPTD_ASSIGN_OR_RETURN(v1::Scope scope, ParseScope(options.scope));
  request.set_scope(scope);
  if (options.task >= 0) request.set_task_id(options.task);
  if (options.version >= 0) request.set_version(options.version);
  ADAPTD_ASSIGN_OR_RETURN(v1::InfluenceResponse response, client.Influence(request));
  absl::PrintF("query: example %d of %s", options.index, args[1]);
  if (!example.labels.empty()) absl::PrintF(" (label %d)", example.labels[0]);
  absl::PrintF("\n%s", FormatInfluence(response));
  return absl::OkStatus();
}

absl::Status MemoryMap(const AdaptdClient& client, const CtlOptions& options,
                       const std::vector<std::string>& args) {
  v1::MemoryMapRequest request;
  request.set_model(args[0]);
  ADAPTD_ASSIGN_OR_RETURN(v1::Scope scope, ParseScope(options.scope));
  request.set_scope(scope);
  if (options.version >= 0) request.set_version(options.version);
  ADAPTD_ASSIGN_OR_RETURN(v1::MemoryMapResponse response, client.MemoryMap(request));
  ADAPTD_ASSIGN_OR_RETURN(MemoryMapTable table, MemoryMapFromResponse(response));
  absl::PrintF("%s version %d: %d examples, LOO NLL %.4f, LOO accuracy %.1f%%\n", args[0],
               table.version, table.points.size(), table.loo_nll, 100 * table.loo_accuracy);
  const std::vector<MemoryMapPoint> sorted = MostSensitive(table.points, 5);
  if (!sorted.empty()) absl::PrintF("most sensitive:\n");
  for (const MemoryMapPoint& p : sorted) {
    absl::PrintF(
        "  example %d (client id %d, task %d, label %d): sensitivity %.3e, e %.3f, "
        "v %.3e\n",
        p.example_id, p.client_id, p.task_id, p.label, p.sensitivity, p.error, p.variance);
  }
  if (!options.csv.empty()) {
    ADAPTD_RETURN_IF_ERROR(WriteFileAtomically(options.csv, MemoryMapCsv(table)));
    absl::PrintF("wrote %s\n", options.csv);
  }
  if (!options.svg.empty()) {
    ADAPTD_RETURN_IF_ERROR(WriteFileAtomically(options.svg, MemoryMapSvg(table, args[0])));
    absl::PrintF("wrote %s\n", options.svg);
  }
  return absl::OkStatus();
}

absl::Status Evaluate(const AdaptdClient& client, const CtlOptions&,
                      const std::vector<std::string>& args) {
  ADAPTD_ASSIGN_OR_RETURN(v1::EvaluateResponse evaluation, client.Evaluate(args[0]));
  absl::PrintF("%s", FormatEvaluation(evaluation));
  return absl::OkStatus();
}

}  // namespace

const std::vector<CtlCommand>& CtlCommands() {
  static const auto* commands = new std::vector<CtlCommand>{
      {"info", "", 0, 0, "the server's version, device and what it can train", Info},
      {"create", "NAME", 1, 1,
       "create a model (--arch --input_shape --classes --hidden --activation; --method --head --epochs --min_steps "
       "--batch_size --lr --clip_radius --ess_factor --memory_points --memory_weight --selection --weight_precision "
       "--adapt_every --adapt_after_seconds --replay_correction "
       "--distill_temperature --new_input_weight --curvature_weight --memory_mixup --torchscript --seed)",
       Create},
      {"list", "", 0, 0, "list the models", List},
      {"get", "NAME", 1, 1, "a model's spec, configuration, version and tasks", Get},
      {"delete", "NAME", 1, 1, "delete a model with its versions and examples", Delete},
      {"versions", "NAME", 1, 1, "a model's versions with their accuracy per task", Versions},
      {"rollback", "NAME VERSION", 2, 2, "publish a copy of an earlier version", Rollback},
      {"set-config", "NAME FIELD=VALUE...", 2, -1,
       "change learning settings for the jobs to come, e.g. epochs=20 ivon.lr=0.05 "
       "adapt_after_seconds=30 (a field set to 0 takes its default, except memory_weight; "
       "prints the config back)",
       SetConfig},
      {"export", "NAME FILE", 2, 2, "save a snapshot of the current version", Export},
      {"import", "NAME FILE", 2, 2, "create a model from a snapshot", Import},
      {"stream", "NAME FILE...", 2, -1,
       "upload examples to a task (--task --split --classes --format --labels --label_column "
       "--csv_header --csv_labels --batch --keep_open --watch --select_classes --limit)",
       Stream},
      {"adapt", "NAME", 1, 1,
       "queue a job for a task's examples not yet learnt (or name the job that learns them), "
       "e.g. after a failed job and a set-config (--task --watch)",
       AdaptPending},
      {"watch", "JOB_ID", 1, 1, "follow an adaptation job", Watch},
      {"jobs", "NAME", 1, 1, "a model's adaptation jobs, oldest first, with their steps, loss and time", Jobs},
      {"cancel", "JOB_ID", 1, 1, "cancel an adaptation job", Cancel},
      {"predict", "NAME FILE", 2, 2,
       "predictions with uncertainty (--index --count --mode --samples --seed --task --version; "
       "more rows than one message holds go as several requests on one version; "
       "reading FILE: --format --labels --label_column --csv_header --csv_labels)",
       Predict},
      {"influence", "NAME FILE", 2, 2,
       "training examples that most influence a prediction (--index --top_k --scope --task "
       "--version; reading FILE: --format --labels --label_column --csv_header --csv_labels)",
       Influence},
      {"memory-map", "NAME", 1, 1, "per-example error and variance (--csv --svg --scope --version)",
       MemoryMap},
      {"evaluate", "NAME", 1, 1, "accuracy matrix, forgetting and backward transfer", Evaluate},
      {"demo", "split-fmnist", 1, 1,
       "continual learning on Split Fashion-MNIST, end to end (--data_dir --per_task --batch "
       "--model; the MLP's widths: --hidden; how it learns: create's --method --head --epochs and "
       "the other learning flags)",
       RunDemo},
  };
  return *commands;
}

std::string CtlUsage() {
  std::string usage = "adaptctl [--server=host:port] [flags] COMMAND [ARGS]\n\ncommands:\n";
  for (const CtlCommand& c : CtlCommands()) {
    absl::StrAppend(&usage,
                    absl::StrFormat("  %-28s %s\n", absl::StrCat(c.name, " ", c.args), c.help));
  }
  absl::StrAppend(&usage, "\na command's flags: adaptctl help COMMAND; every flag: adaptctl --helpfull\n");
  return usage;
}

absl::Status ValidateCtlOptions(const CtlOptions& options) {
  // Each flag's least value, and what that value means where it is not a plain count.
  for (const auto& [flag, value, least, meaning] :
       {std::tuple<const char*, int64_t, int64_t, const char*>{"task", options.task, -1,
                                                               " (-1: none)"},
        {"version", options.version, -1, " (-1: the current one)"},
        {"limit", options.limit, 0, " (0: all)"},
        {"batch", options.batch, 1, ""}}) {
    if (value < least) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " must be >= ", least, meaning, "; got ", value));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> SplitList(const std::string& text) {
  std::vector<std::string> items;
  if (absl::StripAsciiWhitespace(text).empty()) return items;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", text, "' has an empty item; expected a comma-separated list without empty items"));
    }
    items.emplace_back(part);
  }
  return items;
}

absl::StatusOr<std::vector<int64_t>> ParseInt64List(const std::string& text) {
  ADAPTD_ASSIGN_OR_RETURN(const std::vector<std::string> items, SplitList(text));
  std::vector<int64_t> values;
  for (const std::string& item : items) {
    int64_t v;
    if (!absl::SimpleAtoi(item, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "' is not a comma-separated list of integers"));
    }
    values.push_back(v);
  }
  return values;
}

absl::StatusOr<v1::Split> ParseSplit(const std::string& text) {
  if (text == "train") return v1::SPLIT_TRAIN;
  if (text == "eval") return v1::SPLIT_EVAL;
  return absl::InvalidArgumentError(
      absl::StrCat("--split must be train or eval; got '", text, "'"));
}

absl::StatusOr<v1::HeadMode> ParseHeadMode(const std::string& text) {
  if (text.empty()) return v1::HEAD_MODE_UNSPECIFIED;
  if (text == "single") return v1::HEAD_MODE_SINGLE;
  if (text == "multi") return v1::HEAD_MODE_MULTI;
  return absl::InvalidArgumentError(
      absl::StrCat("--head must be single or multi; got '", text, "'"));
}

absl::StatusOr<v1::PredictMode> ParsePredictMode(const std::string& text) {
  if (text == "bayes") return v1::PREDICT_MODE_BAYES;
  if (text == "mean") return v1::PREDICT_MODE_MEAN;
  if (text == "linearized") return v1::PREDICT_MODE_LINEARIZED;
  return absl::InvalidArgumentError(
      absl::StrCat("--mode must be bayes, mean or linearized; got '", text, "'"));
}

absl::StatusOr<v1::Scope> ParseScope(const std::string& text) {
  if (text == "memory") return v1::SCOPE_MEMORY;
  if (text == "all") return v1::SCOPE_ALL;
  return absl::InvalidArgumentError(
      absl::StrCat("--scope must be memory or all; got '", text, "'"));
}

namespace {

// Every settable path of `descriptor`'s fields, nested messages as "ivon.lr".
void AppendPaths(const google::protobuf::Descriptor* descriptor, const std::string& prefix,
                 std::vector<std::string>* out) {
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const auto* f = descriptor->field(i);
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      AppendPaths(f->message_type(), prefix + f->name() + ".", out);
    } else {
      out->push_back(prefix + f->name());
    }
  }
}

}  // namespace

absl::StatusOr<v1::UpdateConfigRequest> BuildConfigUpdate(
    const std::string& name, const std::vector<std::string>& assignments) {
  using google::protobuf::FieldDescriptor;
  v1::UpdateConfigRequest request;
  request.set_name(name);
  for (const std::string& assignment : assignments) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expected FIELD=VALUE, e.g. epochs=20 or ivon.lr=0.05; got '", assignment, "'"));
    }
    const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    // Every part but the last names a message field (ivon), the last a plain one.
    google::protobuf::Message* message = request.mutable_config();
    const FieldDescriptor* field = nullptr;
    const std::vector<std::string> parts = absl::StrSplit(path, '.');
    for (size_t i = 0; i < parts.size(); ++i) {
      field = message->GetDescriptor()->FindFieldByName(parts[i]);
      const bool last = i + 1 == parts.size();
      if (field == nullptr || field->is_repeated() ||
          (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) == last) {
        std::vector<std::string> paths;
        AppendPaths(v1::LearningConfig::descriptor(), "", &paths);
        return absl::InvalidArgumentError(
            absl::StrCat("'", path, "' is not a setting of the learning config; the settings: ",
                         absl::StrJoin(paths, ", ")));
      }
      if (!last) message = message->GetReflection()->MutableMessage(message, field);
    }
    const google::protobuf::Reflection* r = message->GetReflection();
    bool parsed = true;
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT64: {
        int64_t v;
        parsed = absl::SimpleAtoi(value, &v);
        if (parsed) r->SetInt64(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t v;
        parsed = absl::SimpleAtoi(value, &v);
        if (parsed) r->SetUInt64(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        double v;
        parsed = absl::SimpleAtod(value, &v);
        if (parsed) r->SetDouble(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool v;
        parsed = absl::SimpleAtob(value, &v);
        if (parsed) r->SetBool(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_STRING:
        r->SetString(message, field, value);
        break;
      case FieldDescriptor::CPPTYPE_ENUM: {
        const auto* v = field->enum_type()->FindValueByName(value);
        parsed = v != nullptr;
        if (parsed) r->SetEnum(message, field, v);
        break;
      }
      default:
        parsed = false;
    }
    if (!parsed) {
      std::string expected = field->cpp_type_name();
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {
        std::vector<std::string> names;
        for (int i = 0; i < field->enum_type()->value_count(); ++i) {
          names.push_back(field->enum_type()->value(i)->name());
        }
        expected = absl::StrCat("one of ", absl::StrJoin(names, ", "));
      }
      return absl::InvalidArgumentError(
          absl::StrCat(path, " must be ", expected, "; got '", value, "'"));
    }
    request.mutable_update_mask()->add_paths(path);
  }
  return request;
}

absl::StatusOr<v1::CreateModelRequest> BuildCreateRequest(const std::string& name,
                                                          const CtlOptions& options) {
  v1::CreateModelRequest request;
  request.set_name(name);
  v1::ModelSpec& spec = *request.mutable_spec();
  spec.set_architecture(options.torchscript.empty() ? options.arch : "torchscript");
  if (options.classes.empty()) return absl::InvalidArgumentError("create needs --classes");
  ADAPTD_ASSIGN_OR_RETURN(int64_t classes, ParseInt64(options.classes, "--classes"));
  spec.set_num_classes(classes);
  ADAPTD_ASSIGN_OR_RETURN(std::vector<int64_t> input_shape, ParseInt64List(options.input_shape));
  for (int64_t d : input_shape) spec.add_input_shape(d);
  const std::string widths =
      options.hidden.empty() && spec.architecture() == "mlp" ? "256,256" : options.hidden;
  ADAPTD_ASSIGN_OR_RETURN(std::vector<int64_t> hidden, ParseInt64List(widths));
  for (int64_t h : hidden) spec.add_hidden(h);
  spec.set_activation(options.activation);
  if (!options.torchscript.empty()) {
    ADAPTD_ASSIGN_OR_RETURN(*spec.mutable_torchscript(), ReadFile(options.torchscript));
  }

  v1::LearningConfig& config = *request.mutable_config();
  config.set_method(options.method);
  ADAPTD_ASSIGN_OR_RETURN(v1::HeadMode head, ParseHeadMode(options.head));
  config.set_head_mode(head);
  config.set_epochs(options.epochs);
  config.set_min_steps(options.min_steps);
  config.set_batch_size(options.batch_size);
  config.mutable_ivon()->set_lr(options.lr);
  config.mutable_ivon()->set_ess_factor(options.ess_factor);
  config.set_memory_points(options.memory_points);
  if (!std::isnan(options.memory_weight)) config.set_memory_weight(options.memory_weight);
  config.mutable_ivon()->set_clip_radius(options.clip_radius);
  config.set_selection(options.selection);
  config.set_weight_precision(options.weight_precision);
  config.set_adapt_every(options.adapt_every);
  config.set_adapt_after_seconds(options.adapt_after_seconds);
  config.set_replay_correction(options.replay_correction);
  config.set_distill_temperature(options.distill_temperature);
  config.set_new_input_weight(options.new_input_weight);
  config.set_curvature_weight(options.curvature_weight);
  config.set_memory_mixup(options.memory_mixup);
  config.set_seed(options.seed);
  return request;
}

absl::StatusOr<ExampleSet> LoadExampleFiles(const std::vector<std::string>& files,
                                            const CtlOptions& options) {
  ADAPTD_ASSIGN_OR_RETURN(const std::vector<std::string> labels, SplitList(options.labels));
  CsvOptions csv;
  csv.has_labels = options.csv_labels;
  csv.label_column = options.label_column;
  csv.skip_header = options.csv_header;
  ExampleSet all;
  for (size_t i = 0; i < files.size(); ++i) {
    std::error_code error;
    if (!std::filesystem::exists(files[i], error)) {  // pipes and /dev/fd/N are fine
      return absl::NotFoundError(absl::StrCat("no such file: ", files[i]));
    }
    DataFormat format;
    if (!options.format.empty()) {
      ADAPTD_ASSIGN_OR_RETURN(format, ParseDataFormat(options.format));
    } else {
      ADAPTD_ASSIGN_OR_RETURN(format, DataFormatOfPath(files[i]));
    }
    std::string labels_path;
    if (format == DataFormat::kCsv && !labels.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--labels is for NPY and IDX files; the labels of a CSV file (", files[i],
          ") come from one of its columns (--csv_labels, --label_column)"));
    }
    if (!labels.empty()) {
      if (labels.size() != files.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--labels names ", labels.size(),
                                                       " files for ", files.size(), " data files"));
      }
      labels_path = labels[i];
    }
    ADAPTD_ASSIGN_OR_RETURN(ExampleSet one, ReadExamples(files[i], format, labels_path, csv));
    ADAPTD_RETURN_IF_ERROR(AppendExamples(all, one));
  }
  return all;
}

int64_t RowsPerMessage(int64_t max_message_bytes, int64_t row_bytes) {
  constexpr int64_t kFraming = 64 << 10;
  return std::max<int64_t>(1, (max_message_bytes - kFraming) / std::max<int64_t>(1, row_bytes));
}

namespace {

// The rows of `request.x` in parts of `part` rows, each on the version the first part answered
// from (or the request names). `pin_lost`: a later part found that version gone.
absl::StatusOr<v1::PredictResponse> PredictPinned(const AdaptdClient& client,
                                                  const v1::PredictRequest& request, int64_t part,
                                                  int64_t first_row, bool* pin_lost) {
  *pin_lost = false;
  const int64_t rows = request.x().shape(0);
  v1::PredictResponse all;
  v1::PredictRequest next = request;
  for (int64_t begin = 0; begin < rows; begin += part) {
    const int64_t count = std::min(part, rows - begin);
    ADAPTD_ASSIGN_OR_RETURN(*next.mutable_x(), SliceRows(request.x(), begin, count));
    absl::StatusOr<v1::PredictResponse> answered = client.Predict(next);
    if (!answered.ok()) {
      *pin_lost = begin > 0 && !request.has_version() && absl::IsNotFound(answered.status());
      const bool names_an_example = absl::IsInvalidArgument(answered.status()) ||
                                    absl::IsFailedPrecondition(answered.status());
      if (!names_an_example || (part >= rows && first_row == 0)) return answered.status();
      // The server numbers a refused example within the request it got: say which rows that was.
      return absl::Status(answered.status().code(),
                          absl::StrCat("rows [", first_row + begin, ", ", first_row + begin + count,
                                       ") of the input, asked as one request (the server counts "
                                       "its examples from 0 there): ",
                                       answered.status().message()));
    }
    const v1::PredictResponse& answer = *answered;
    if (begin == 0) {
      all.set_version(answer.version());
      next.set_version(answer.version());  // the rest on the same version
    }
    for (auto [to, from, name] :
         {std::tuple{all.mutable_probs(), &answer.probs(), "probs"},
          std::tuple{all.mutable_labels(), &answer.labels(), "labels"},
          std::tuple{all.mutable_total_entropy(), &answer.total_entropy(), "total_entropy"},
          std::tuple{all.mutable_expected_entropy(), &answer.expected_entropy(),
                     "expected_entropy"},
          std::tuple{all.mutable_mutual_information(), &answer.mutual_information(),
                     "mutual_information"},
          std::tuple{all.mutable_std(), &answer.std(), "std"}}) {
      absl::Status s = CheckTensor(*from);
      if (s.ok() && (from->shape_size() == 0 || from->shape(0) != count)) {
        s = absl::InvalidArgumentError(absl::StrCat("expected ", count, " rows; got shape ",
                                                    FormatShape(from->shape())));
      }
      if (s.ok()) s = AppendRows(to, *from);
      if (!s.ok()) {
        return absl::InternalError(absl::StrCat("the answer for rows [", begin, ", ",
                                                begin + count, ") has a bad ", name, ": ",
                                                s.message()));
      }
    }
  }
  return all;
}

}  // namespace

absl::StatusOr<v1::PredictResponse> PredictInParts(const AdaptdClient& client,
                                                   const v1::PredictRequest& request,
                                                   int64_t num_classes, int64_t first_row) {
  ADAPTD_RETURN_IF_ERROR(CheckTensor(request.x()));
  ADAPTD_ASSIGN_OR_RETURN(const int64_t x_row, RowBytes(request.x()));
  const int64_t rows = request.x().shape(0);
  if (rows == 0) return client.Predict(request);  // the server's own answer to no rows
  // An answer's row: probabilities and deviations (float32 each), a label and three entropies.
  const int64_t answer_row = 8 * std::clamp<int64_t>(num_classes, 1, int64_t{1} << 40) + 8 + 12;
  const int64_t part =
      RowsPerMessage(client.options().max_message_bytes, std::max(x_row, answer_row));
  // A pin of its own is lost when --keep_versions deletes the version before the last part (an
  // online model publishes often): then the prediction starts again once, on the newest one.
  bool pin_lost = false;
  absl::StatusOr<v1::PredictResponse> all =
      PredictPinned(client, request, part, first_row, &pin_lost);
  if (pin_lost) all = PredictPinned(client, request, part, first_row, &pin_lost);
  return all;
}

absl::StatusOr<v1::StreamExamplesResponse> StreamWithProgress(const AdaptdClient& client,
                                                              const v1::StreamHeader& header,
                                                              const ExampleSet& examples,
                                                              int64_t batch) {
  // What stdout holds goes first, so that a log of both streams reads in order.
  std::fflush(stdout);
  const int64_t total = examples.size();
  const absl::Time start = absl::Now();
  const auto elapsed = [&] { return absl::ToDoubleSeconds(absl::Now() - start); };
  ProgressLine line(stderr, ProgressLine::IsTerminal(stderr));
  // An example's bytes and its label and id.
  ADAPTD_ASSIGN_OR_RETURN(const int64_t x_row, RowBytes(examples.x));
  batch = std::min(batch, RowsPerMessage(client.options().max_message_bytes, x_row + 16));
  int64_t begin = 0;
  int64_t sent = 0;
  absl::StatusOr<v1::StreamExamplesResponse> response = client.StreamExamples(
      header,
      [&]() -> absl::StatusOr<std::optional<v1::ExampleBatch>> {
        if (begin >= total) return std::optional<v1::ExampleBatch>();
        const int64_t count = std::min(batch, total - begin);
        ADAPTD_ASSIGN_OR_RETURN(v1::ExampleBatch next, MakeBatch(examples, begin, count));
        begin += count;
        return std::optional<v1::ExampleBatch>(std::move(next));
      },
      [&](int64_t examples_sent) {
        sent = examples_sent;
        line.Update(UploadProgressText(sent, total, elapsed()));
      });
  line.Finish(UploadProgressText(sent, total, elapsed()) + (response.ok() ? "" : "  failed"));
  return response;
}

absl::StatusOr<v1::JobStatus> WatchWithProgress(const AdaptdClient& client,
                                                const std::string& job_id) {
  std::fflush(stdout);
  ProgressLine line(stderr, ProgressLine::IsTerminal(stderr));
  std::optional<v1::JobStatus> last;
  absl::StatusOr<v1::JobStatus> status = client.WatchJob(job_id, [&](const v1::JobStatus& s) {
    line.Update(JobProgressText(s));
    last = s;
  });
  if (!status.ok()) {
    if (last.has_value()) line.Finish(JobProgressText(*last) + "  (watch failed)");
    return status;
  }
  line.Finish(JobProgressText(*status));
  if (status->state() == v1::JOB_STATE_FAILED) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " failed: ", status->message()));
  }
  if (status->state() == v1::JOB_STATE_CANCELLED) {
    return absl::CancelledError(
        absl::StrCat("job ", job_id, " was cancelled: ", status->message()));
  }
  return status;
}

}  // namespace adaptd

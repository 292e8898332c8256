// `adaptctl demo split-fmnist`: continual learning end to end, through the client only.
//
// Fashion-MNIST is split into five tasks of two classes each. For every task the demo streams
// the task's test images (evaluation examples) and then its training images, and watches the
// adaptation job that closing the training stream queues. Afterwards it asks the questions the
// service exists for: how much was forgotten, which predictions are uncertain, and which
// training examples that most influence a prediction.
#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "client/adaptctl.h"
#include "client/progress.h"
#include "client/report.h"
#include "core/status_macros.h"

namespace adaptd {
namespace {

constexpr int kTasks = 5;
constexpr const char* kClassNames[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
// Test images per task whose predictions the demo compares.
constexpr int64_t kPredictPerTask = 200;

std::string ClassName(int64_t label) {
  return label >= 0 && label < 10 ? kClassNames[label] : absl::StrCat("class ", label);
}

// `dir/name.gz`, or `dir/name` when only the uncompressed file is there.
std::string DataFile(const std::string& dir, const std::string& name) {
  const std::string gz = absl::StrCat(dir, "/", name, ".gz");
  return std::ifstream(gz).good() ? gz : absl::StrCat(dir, "/", name);
}

absl::StatusOr<ExampleSet> LoadSplit(const std::string& dir, const std::string& prefix) {
  absl::StatusOr<ExampleSet> read =
      ReadIdxExamples(DataFile(dir, absl::StrCat(prefix, "-images-idx3-ubyte")),
                      DataFile(dir, absl::StrCat(prefix, "-labels-idx1-ubyte")));
  if (absl::IsNotFound(read.status())) {
    return absl::NotFoundError(
        absl::StrCat(read.status().message(), " (--data_dir names the Fashion-MNIST files)"));
  }
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet examples, std::move(read));
  // The MLP takes flat images: [N, 28, 28] -> [N, 784].
  ADAPTD_RETURN_IF_ERROR(ReshapeExamples(examples, {784}));
  return examples;
}

// One test image's prediction, with where it came from.
struct Scored {
  int64_t test_index = 0;  // row in the t10k files
  int64_t task = 0;
  int64_t true_label = 0;
  Prediction prediction;
};

std::string Describe(const Scored& s) {
  return absl::StrFormat(
      "test image %d (%s, task %d): predicted %s with probability %.3f; entropy %.3f = "
      "aleatoric %.3f + epistemic %.3f",
      s.test_index, ClassName(s.true_label), s.task, ClassName(s.prediction.label),
      s.prediction.probability, s.prediction.total_entropy, s.prediction.aleatoric,
      s.prediction.epistemic);
}

}  // namespace

absl::Status RunDemo(const AdaptdClient& client, const CtlOptions& options,
                     const std::vector<std::string>& args) {
  if (args[0] != "split-fmnist") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown demo '", args[0], "'; try split-fmnist"));
  }
  if (options.per_task <= 0) return absl::InvalidArgumentError("--per_task must be positive");
  const absl::Time start = absl::Now();
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet train, LoadSplit(options.data_dir, "train"));
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet test, LoadSplit(options.data_dir, "t10k"));
  absl::PrintF("Split Fashion-MNIST from %s: %d training and %d test images, %d tasks\n",
               options.data_dir, train.size(), test.size(), kTasks);

  // The demo's network is an MLP from 784 pixels to 10 classes, its hidden widths from --hidden
  // (256,256 by default); how it learns follows the flags.
  CtlOptions create = options;
  create.arch = "mlp";
  create.input_shape = "784";
  create.classes = "10";
  create.torchscript.clear();
  if (create.method.empty()) create.method = "kprior";
  if (create.head.empty()) create.head = "multi";
  ADAPTD_ASSIGN_OR_RETURN(v1::CreateModelRequest request,
                          BuildCreateRequest(options.model, create));
  absl::StatusOr<v1::ModelInfo> model = client.CreateModel(request);
  if (absl::IsAlreadyExists(model.status())) {
    return absl::AlreadyExistsError(absl::StrCat("model ", options.model,
                                                 " exists: delete it (adaptctl delete ",
                                                 options.model, ") or name another with --model"));
  }
  if (!model.ok()) return model.status();
  absl::PrintF("\n%s", FormatModelInfo(*model));

  for (int64_t t = 0; t < kTasks; ++t) {
    const std::vector<int64_t> classes = {2 * t, 2 * t + 1};
    absl::PrintF("\ntask %d: %s vs %s\n", t, ClassName(classes[0]), ClassName(classes[1]));
    v1::StreamHeader header;
    header.set_model(options.model);
    header.set_task_id(t);
    for (int64_t c : classes) header.add_classes(c);

    // Evaluation examples first: the version the training stream produces is scored on them
    // when it is published.
    header.set_split(v1::SPLIT_EVAL);
    ADAPTD_ASSIGN_OR_RETURN(ExampleSet eval, TakeRows(test, RowsWithLabels(test, classes)));
    absl::PrintF("streaming %d evaluation examples\n", eval.size());
    ADAPTD_RETURN_IF_ERROR(StreamWithProgress(client, header, eval, options.batch).status());

    header.set_split(v1::SPLIT_TRAIN);
    ADAPTD_ASSIGN_OR_RETURN(ExampleSet learn,
                            TakeRows(train, RowsWithLabels(train, classes, options.per_task)));
    absl::PrintF("streaming %d training examples\n", learn.size());
    ADAPTD_ASSIGN_OR_RETURN(v1::StreamExamplesResponse streamed,
                            StreamWithProgress(client, header, learn, options.batch));
    for (const std::string& job : streamed.job_ids()) {
      absl::PrintF("adapting (job %s)\n", job);
      ADAPTD_ASSIGN_OR_RETURN(v1::JobStatus done, WatchWithProgress(client, job));
      absl::PrintF("job %s: %s\n", JobStateName(done.state()), done.message());
    }
    ADAPTD_ASSIGN_OR_RETURN(v1::ModelInfo now, client.GetModel(options.model));
    std::vector<std::string> accuracy;
    for (const v1::TaskAccuracy& a : now.current().eval()) {
      accuracy.push_back(absl::StrFormat("task %d %.1f%%", a.task_id(), 100 * a.accuracy()));
    }
    absl::PrintF("version %d accuracy: %s\n", now.current().version(),
                 absl::StrJoin(accuracy, ", "));
  }

  ADAPTD_ASSIGN_OR_RETURN(v1::EvaluateResponse evaluation, client.Evaluate(options.model));
  absl::PrintF("\n%s", FormatEvaluation(evaluation));

  // Predict over some test images of every task (within the task's classes: multi-head), then
  // pick the one the model is least sure about and the one it is surest of.
  // Bayes predictions of some test rows within task t's head, as `adaptctl predict` asks them.
  auto predict = [&](const std::vector<int64_t>& rows,
                     int64_t t) -> absl::StatusOr<std::vector<Scored>> {
    ADAPTD_ASSIGN_OR_RETURN(ExampleSet some, TakeRows(test, rows));
    v1::PredictRequest request;
    request.set_model(options.model);
    *request.mutable_x() = some.x;
    request.set_mode(v1::PREDICT_MODE_BAYES);
    request.set_task_id(t);
    ADAPTD_ASSIGN_OR_RETURN(v1::PredictResponse response, client.Predict(request));
    ADAPTD_ASSIGN_OR_RETURN(std::vector<Prediction> predictions, PredictionsFromResponse(response));
    std::vector<Scored> out;
    for (size_t i = 0; i < predictions.size(); ++i) {
      out.push_back({rows[i], t, some.labels[i], predictions[i]});
    }
    return out;
  };
  std::vector<Scored> scored;
  for (int64_t t = 0; t < kTasks; ++t) {
    ADAPTD_ASSIGN_OR_RETURN(std::vector<Scored> some,
                            predict(RowsWithLabels(test, {2 * t, 2 * t + 1}, kPredictPerTask), t));
    scored.insert(scored.end(), some.begin(), some.end());
  }
  if (scored.empty()) return absl::InternalError("no test predictions");
  // Most uncertain: the highest mutual information (what more data could fix), entropy breaking
  // ties; most confident: the highest probability.
  Scored uncertain =
      *std::max_element(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) {
        return std::make_pair(a.prediction.epistemic, a.prediction.total_entropy) <
               std::make_pair(b.prediction.epistemic, b.prediction.total_entropy);
      });
  Scored confident =
      *std::max_element(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) {
        return a.prediction.probability < b.prediction.probability;
      });
  // An MLP draws each example's samples in the stream of its whole request, so the figures are
  // shown as the image asked alone gives them: what the "Try next" predict below prints.
  for (Scored* s : {&uncertain, &confident}) {
    ADAPTD_ASSIGN_OR_RETURN(std::vector<Scored> alone, predict({s->test_index}, s->task));
    *s = alone.at(0);
  }
  absl::PrintF(
      "\nover %d test predictions (bayes), the two picked asked again alone:\nmost uncertain: "
      "%s\nmost confident: %s\n",
      scored.size(), Describe(uncertain), Describe(confident));

  v1::InfluenceRequest influence;
  influence.set_model(options.model);
  ADAPTD_ASSIGN_OR_RETURN(ExampleSet query, TakeRows(test, {uncertain.test_index}));
  *influence.mutable_x() = query.x;
  influence.set_top_k(5);
  influence.set_scope(v1::SCOPE_ALL);
  influence.set_task_id(uncertain.task);
  ADAPTD_ASSIGN_OR_RETURN(v1::InfluenceResponse influential, client.Influence(influence));
  absl::PrintF(
      "\nthe training examples that most influence test image %d (%d scored); score = change of "
      "p(%s) if the example were removed (negative: it supports the prediction):\n",
      uncertain.test_index, influential.examples_scored(), ClassName(influential.query_class()));
  for (const v1::InfluentialExample& e : influential.examples()) {
    absl::PrintF("  example %d (training image %d, task %d, %s): score %+.3e\n", e.example_id(),
                 e.client_id(), e.task_id(), ClassName(e.label()), e.score());
  }

  const std::string& name = options.model;
  const std::string images = DataFile(options.data_dir, "t10k-images-idx3-ubyte");
  const std::string labels = DataFile(options.data_dir, "t10k-labels-idx1-ubyte");
  absl::PrintF(
      "\ndone in %s. Try next:\n"
      "  adaptctl evaluate %s\n"
      "  adaptctl versions %s\n"
      "  adaptctl predict %s %s --labels %s --index %d --count 1 --task %d\n"
      "  adaptctl influence %s %s --index %d --task %d --scope all --top_k 10\n"
      "  adaptctl memory-map %s --scope memory --csv memory.csv --svg memory.svg\n"
      "  adaptctl rollback %s 2\n"
      "  adaptctl export %s %s.snapshot\n",
      absl::FormatDuration(absl::Trunc(absl::Now() - start, absl::Seconds(1))), name, name, name,
      images, labels, uncertain.test_index, uncertain.task, name, images, uncertain.test_index,
      uncertain.task, name, name, name, name);
  return absl::OkStatus();
}

}  // namespace adaptd

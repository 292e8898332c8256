// adaptctl's commands, separate from its flags (adaptctl_main.cc) so that tests can run them.
#ifndef ADAPTD_CLIENT_ADAPTCTL_H_
#define ADAPTD_CLIENT_ADAPTCTL_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/datasets.h"

namespace adaptd {

// Every command option of adaptctl, with its default. adaptctl_main.cc fills it from flags of
// the same names; each field's meaning is its flag's help.
struct CtlOptions {
  // create
  std::string arch = "mlp";
  std::string input_shape = "784";
  // create: the number of classes; stream: the task's classes, e.g. "0,1".
  std::string classes;
  // Empty: 256,256 for an MLP, none otherwise. Widths given go to the server whatever the
  // architecture, and it refuses them for one that has no hidden layers to size.
  std::string hidden;
  std::string activation;
  std::string method;
  std::string head;
  int64_t epochs = 0;
  int64_t min_steps = 0;
  int64_t batch_size = 0;
  double lr = 0;
  double ess_factor = 0;
  int64_t memory_points = 0;
  // NaN: the server's default (memory_weight is optional: 0 turns the memory term off, a
  // negative value asks for |M| / N).
  double memory_weight = std::numeric_limits<double>::quiet_NaN();
  double clip_radius = 0;
  std::string selection;
  std::string weight_precision;
  int64_t adapt_every = 0;
  double adapt_after_seconds = 0;
  bool replay_correction = false;
  double distill_temperature = 0;
  double new_input_weight = 0;
  double curvature_weight = 0;
  int64_t memory_mixup = 0;
  std::string torchscript;
  uint64_t seed = 0;

  // stream and the data files of predict and influence
  int64_t task = -1;
  std::string split = "train";
  std::string format;
  std::string labels;
  int64_t batch = 1000;
  bool keep_open = false;
  bool watch = false;
  bool select_classes = false;
  int64_t limit = 0;
  int label_column = -1;
  bool csv_header = false;
  bool csv_labels = true;

  // queries
  int64_t index = 0;
  int64_t count = 10;
  std::string mode = "bayes";
  int64_t samples = 0;
  int64_t version = -1;
  int64_t top_k = 10;
  std::string scope = "memory";
  std::string csv;
  std::string svg;

  // demo
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t per_task = 2000;
  std::string model = "split-fmnist";
};

// A subcommand: `adaptctl [flags] name args...`.
struct CtlCommand {
  const char* name;
  // The positional arguments, for the usage text, e.g. "NAME FILE...".
  const char* args;
  int min_args;
  int max_args;  // -1: no limit
  const char* help;
  absl::Status (*run)(const AdaptdClient& client, const CtlOptions& options,
                      const std::vector<std::string>& args);
};

const std::vector<CtlCommand>& CtlCommands();
// The commands and their arguments, one per line.
std::string CtlUsage();

// Parsers for option values; INVALID_ARGUMENT names the value and what was expected.
// INVALID_ARGUMENT for flags out of range: --task and --version below -1 (none), --limit
// below 0, --batch below 1.
absl::Status ValidateCtlOptions(const CtlOptions& options);

// The items of a comma-separated flag value, each stripped of spaces; none for an empty value.
// INVALID_ARGUMENT for an empty item ("1,,28"): a typo must not change what the flag means.
absl::StatusOr<std::vector<std::string>> SplitList(const std::string& text);
absl::StatusOr<std::vector<int64_t>> ParseInt64List(const std::string& text);
absl::StatusOr<v1::Split> ParseSplit(const std::string& text);
absl::StatusOr<v1::HeadMode> ParseHeadMode(const std::string& text);
absl::StatusOr<v1::PredictMode> ParsePredictMode(const std::string& text);
absl::StatusOr<v1::Scope> ParseScope(const std::string& text);

// The CreateModel request the create options describe (the TorchScript file is read here).
absl::StatusOr<v1::CreateModelRequest> BuildCreateRequest(const std::string& name,
                                                          const CtlOptions& options);
// The UpdateConfig request that `assignments` describe: each "FIELD=VALUE" names a
// LearningConfig field by its path (epochs=20, ivon.lr=0.05, weight_precision=prior,
// replay_correction=true) and joins the update mask. INVALID_ARGUMENT for a malformed
// assignment, a path that names no field, or a value of the wrong type.
absl::StatusOr<v1::UpdateConfigRequest> BuildConfigUpdate(
    const std::string& name, const std::vector<std::string>& assignments);
// Reads `files` (in --format or by extension, --labels matched one to one) into one set.
absl::StatusOr<ExampleSet> LoadExampleFiles(const std::vector<std::string>& files,
                                            const CtlOptions& options);

// How many rows of `row_bytes` fit in one message of `max_message_bytes` (the server refuses a
// larger message whole), with room for the message's framing; at least 1.
int64_t RowsPerMessage(int64_t max_message_bytes, int64_t row_bytes);
// Predict for every row of `request.x`, in as many requests as messages need: each request's
// rows and its answer (`num_classes` probabilities and deviations a row) fit in one message.
// Every part is answered by one version, the first answer's (pinned for the rest unless the
// request names one), with the request's seed. The answers' rows come back in order. A part's
// error names its rows, counted from `first_row` (the input's first row in the caller's terms,
// adaptctl's --index), when the input was split or starts past row 0.
absl::StatusOr<v1::PredictResponse> PredictInParts(const AdaptdClient& client,
                                                   const v1::PredictRequest& request,
                                                   int64_t num_classes, int64_t first_row = 0);
// Uploads `examples` in batches of `batch` (at most what one message holds) with a progress
// bar on stderr.
absl::StatusOr<v1::StreamExamplesResponse> StreamWithProgress(const AdaptdClient& client,
                                                              const v1::StreamHeader& header,
                                                              const ExampleSet& examples,
                                                              int64_t batch);
// Follows a job with a progress bar on stderr; FAILED_PRECONDITION (with the job's message) if
// it failed, CANCELLED if it was cancelled.
absl::StatusOr<v1::JobStatus> WatchWithProgress(const AdaptdClient& client,
                                                const std::string& job_id);

// `adaptctl demo split-fmnist`: the end-to-end continual-learning tour (adaptctl_demo.cc).
absl::Status RunDemo(const AdaptdClient& client, const CtlOptions& options,
                     const std::vector<std::string>& args);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_ADAPTCTL_H_

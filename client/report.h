// Plain-text reports of server answers, as adaptctl prints them.
#ifndef ADAPTD_CLIENT_REPORT_H_
#define ADAPTD_CLIENT_REPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptd/v1/admin.pb.h"
#include "adaptd/v1/query.pb.h"

namespace adaptd {

// One example's prediction: the predicted label, its probability and the uncertainty split.
struct Prediction {
  int64_t label = 0;
  double probability = 0;
  double total_entropy = 0;
  // Expected entropy (aleatoric) and mutual information (epistemic); they sum to the total.
  double aleatoric = 0;
  double epistemic = 0;
};

// INVALID_ARGUMENT if the response's tensors disagree in dtype or size.
absl::StatusOr<std::vector<Prediction>> PredictionsFromResponse(
    const v1::PredictResponse& response);

std::string FormatServerInfo(const v1::GetServerInfoResponse& info);
// The spec, learning configuration, current version and tasks of a model.
std::string FormatModelInfo(const v1::ModelInfo& model);
// One line per model.
std::string FormatModelList(const v1::ListModelsResponse& models);
// The config's fields as set-config takes them, "method=kprior ivon.lr=0.1 ...".
std::string FormatConfigAssignments(const v1::LearningConfig& config);
// One line per version, with its accuracy on every task's evaluation examples, and under a
// trained version (not a rollback) a line with the settings it was trained with where they
// differ from the version above it.
std::string FormatVersions(const v1::ListVersionsResponse& versions);
// What a rollback did: the version that now serves, and each task with examples pending
// (learnt after the version it went back to, or never).
std::string FormatRollback(const v1::ModelInfo& model);
// The accuracy matrix (rows = versions, columns = tasks, in percent), average accuracy,
// forgetting per task and backward transfer.
std::string FormatEvaluation(const v1::EvaluateResponse& evaluation);
// A table of predictions; the rows are numbered from `first_index`, and `true_labels` (empty
// or one per prediction) adds a column and the accuracy.
std::string FormatPredictions(const std::vector<Prediction>& predictions, int64_t first_index,
                              const std::vector<int64_t>& true_labels);
// The query's predicted class and the influential examples, most influential first.
std::string FormatInfluence(const v1::InfluenceResponse& influence);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_REPORT_H_

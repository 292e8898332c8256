// The continual-learning summary that Evaluate answers, from a model's versions.
#ifndef ADAPTD_SERVER_EVALUATION_H_
#define ADAPTD_SERVER_EVALUATION_H_

#include <vector>

#include "adaptd/v1/model.pb.h"
#include "adaptd/v1/query.pb.h"

namespace adaptd {

// `versions` (oldest first, as the catalog lists them) and `current`, the served version with
// every evaluation it has (it replaces its own entry in `versions`): one row per version, and
// over `current` the average accuracy, each task's forgetting (its best accuracy at the end of
// any task from its own on, minus its accuracy now), their mean, and backward transfer, as
// docs/api.md ("Evaluate") defines them. Only versions whose learning `current` holds count as
// the end of a task: one that a rollback went back past does not.
v1::EvaluateResponse SummarizeVersions(std::vector<v1::VersionInfo> versions,
                                       const v1::VersionInfo& current);

}  // namespace adaptd

#endif  // ADAPTD_SERVER_EVALUATION_H_

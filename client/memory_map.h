// The memory map of a model (MemoryMap RPC) as a table, a CSV file and an SVG scatter plot.
//
// Each example is reduced to its coordinates at its true label y: the prediction error
// e_y = p_y - 1, the prediction variance v_y and lambda_y = p_y (1 - p_y), plus its
// sensitivity. Examples with large |e| and large v are the ones the model would change its mind
// about most if they were removed (MPE, Nickl et al. 2023, Fig. 1).
#ifndef ADAPTD_CLIENT_MEMORY_MAP_H_
#define ADAPTD_CLIENT_MEMORY_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptd/v1/query.pb.h"

namespace adaptd {

struct MemoryMapPoint {
  int64_t example_id = 0;
  // -1 where the stream gave none.
  int64_t client_id = -1;
  int64_t task_id = 0;
  int64_t label = 0;
  // At the true label: e = p - 1 (in [-1, 0]), v and lambda.
  double error = 0;
  double variance = 0;
  double lambda = 0;
  double sensitivity = 0;
};

struct MemoryMapTable {
  int64_t version = 0;
  double loo_nll = 0;
  double loo_accuracy = 0;
  std::vector<MemoryMapPoint> points;
};

// INVALID_ARGUMENT if the response's tensors disagree in dtype or size, or a label has no
// column in error/variance/lambda.
absl::StatusOr<MemoryMapTable> MemoryMapFromResponse(const v1::MemoryMapResponse& response);

// The `k` points of largest sensitivity, largest first; points whose sensitivity is not a
// number come after every other.
std::vector<MemoryMapPoint> MostSensitive(std::vector<MemoryMapPoint> points, size_t k);

// A header line "example_id,client_id,task_id,label,error,variance,lambda,sensitivity" and one
// line per point.
std::string MemoryMapCsv(const MemoryMapTable& table);

// A standalone SVG document: one circle per point at x = variance (log scale when the positive
// values span two decades or more; non-positive ones are drawn at the smallest positive value),
// y = |error|, coloured by label with a legend, axes with ticks and labels, and a title naming
// `model`, the version and the leave-one-out NLL and accuracy. Points with a non-finite
// variance or error are not drawn; the title counts them.
std::string MemoryMapSvg(const MemoryMapTable& table, const std::string& model);

}  // namespace adaptd

#endif  // ADAPTD_CLIENT_MEMORY_MAP_H_

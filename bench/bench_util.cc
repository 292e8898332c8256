#include "bench/bench_util.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace adaptd::bench {

absl::StatusOr<Dataset> LoadFashionMnist(const std::string& dir, bool train) {
  const std::string prefix = absl::StrCat(dir, "/", train ? "train" : "t10k");
  return LoadIdxDataset(prefix + "-images-idx3-ubyte.gz", prefix + "-labels-idx1-ubyte.gz");
}

void Die(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

void OrDie(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(what, s);
}

}  // namespace adaptd::bench

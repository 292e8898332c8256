// The model the service benchmarks create: Split Fashion-MNIST's MLP 784-256-256 under the
// K-prior with the replay correction and 200 memorable examples per task.
#ifndef ADAPTD_BENCH_MODEL_REQUEST_H_
#define ADAPTD_BENCH_MODEL_REQUEST_H_

#include <cstdint>
#include <string>

#include "adaptd/v1/admin.pb.h"

namespace adaptd::bench {

inline v1::CreateModelRequest MlpModelRequest(const std::string& name, int64_t epochs) {
  v1::CreateModelRequest r;
  r.set_name(name);
  r.mutable_spec()->set_architecture("mlp");
  r.mutable_spec()->add_input_shape(784);
  r.mutable_spec()->set_num_classes(10);
  r.mutable_spec()->add_hidden(256);
  r.mutable_spec()->add_hidden(256);
  r.mutable_config()->set_epochs(epochs);
  r.mutable_config()->set_memory_points(200);
  r.mutable_config()->set_replay_correction(true);
  r.mutable_config()->set_seed(1);
  return r;
}

}  // namespace adaptd::bench

#endif  // ADAPTD_BENCH_MODEL_REQUEST_H_

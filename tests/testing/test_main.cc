// Shared main for adaptd test binaries: one intra-op thread (tests are compared bit-for-bit and
// the CI machine has 2 cores) and a fixed global seed.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  torch::manual_seed(0);
  return RUN_ALL_TESTS();
}

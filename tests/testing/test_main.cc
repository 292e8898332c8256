// Shared main for adaptd test binaries that link LibTorch: one intra-op thread (tests are
// compared bit-for-bit and the CI machine has 2 cores), a fixed global seed, and one fresh
// temporary directory per run (tests/testing/run_tests.h).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/testing/run_tests.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  torch::manual_seed(0);
  return adaptd::RunAllTestsInAFreshDirectory();
}

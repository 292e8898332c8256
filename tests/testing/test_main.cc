// Shared main for adaptd test binaries: one intra-op thread (tests are compared bit-for-bit and
// the CI machine has 2 cores), a fixed global seed, and one fresh temporary directory per run.
// Every file a test writes goes under testing::TempDir(), which reads TEST_TMPDIR; pointing it
// at a directory removed on exit keeps runs from leaving files in the system's /tmp.
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  torch::manual_seed(0);
  std::string dir = testing::TempDir() + "adaptd_tests_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    std::perror(("cannot create the test directory " + dir).c_str());
    return 1;
  }
  ::setenv("TEST_TMPDIR", dir.c_str(), /*overwrite=*/1);
  const int rc = RUN_ALL_TESTS();
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return rc;
}

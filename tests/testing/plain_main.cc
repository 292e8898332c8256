// Main for the test binaries without LibTorch (the client's): one fresh temporary directory
// per run (tests/testing/run_tests.h).
#include <gtest/gtest.h>

#include "tests/testing/run_tests.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  return adaptd::RunAllTestsInAFreshDirectory();
}

// RUN_ALL_TESTS() inside one fresh temporary directory. Every file a test writes goes under
// testing::TempDir(), which reads TEST_TMPDIR; pointing it at a directory removed afterwards
// keeps test runs from leaving files in the system's /tmp.
#ifndef ADAPTD_TESTS_TESTING_RUN_TESTS_H_
#define ADAPTD_TESTS_TESTING_RUN_TESTS_H_

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

namespace adaptd {

// Call after testing::InitGoogleTest; returns RUN_ALL_TESTS()'s result (1 if the directory
// cannot be made).
inline int RunAllTestsInAFreshDirectory() {
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

}  // namespace adaptd

#endif  // ADAPTD_TESTS_TESTING_RUN_TESTS_H_

// Tests that read a dataset from a Debian package skip without it, so that a partial checkout
// still tests the rest. Where the package must be there (the test command installs it, so CI
// sets ADAPTD_REQUIRE_DATA=1), its absence fails the test instead: an oracle that quietly
// stopped running is a defect.
#ifndef ADAPTD_TESTS_TESTING_DATA_H_
#define ADAPTD_TESTS_TESTING_DATA_H_

#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

namespace adaptd {
namespace testing_data {

inline bool Required() {
  const char* v = std::getenv("ADAPTD_REQUIRE_DATA");
  return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

}  // namespace testing_data
}  // namespace adaptd

// Ends the test: a failure if ADAPTD_REQUIRE_DATA is set, a skip otherwise.
#define ADAPTD_SKIP_WITHOUT_DATA(why)                                           \
  do {                                                                          \
    if (::adaptd::testing_data::Required()) {                                   \
      FAIL() << why << " (ADAPTD_REQUIRE_DATA is set: the data must be there)"; \
    }                                                                           \
    GTEST_SKIP() << why;                                                        \
  } while (0)

#endif  // ADAPTD_TESTS_TESTING_DATA_H_

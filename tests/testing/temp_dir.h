// A fresh temporary directory for one test, removed with everything in it when the object
// goes away.
#ifndef ADAPTD_TESTS_TESTING_TEMP_DIR_H_
#define ADAPTD_TESTS_TESTING_TEMP_DIR_H_

#include <stdlib.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace adaptd {

class TempDir {
 public:
  TempDir() {
    std::string templ = ::testing::TempDir() + "adaptd_test_XXXXXX";
    path_ = ::mkdtemp(templ.data()) ? templ : "";
    // Every test writes under it: without one, fail now rather than write elsewhere.
    EXPECT_FALSE(path_.empty()) << "cannot create a temporary directory under " << ::testing::TempDir();
  }
  ~TempDir() {
    if (!path_.empty()) (void)std::system(("rm -rf '" + path_ + "'").c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace adaptd

#endif  // ADAPTD_TESTS_TESTING_TEMP_DIR_H_

// The adaptd binary as built: what the build configured into it.
#include <stdio.h>

#include <gtest/gtest.h>

#include <string>

namespace adaptd {
namespace {

#ifndef ADAPTD_SERVER_BIN
#error "ADAPTD_SERVER_BIN must name the adaptd binary"
#endif

// What `command` writes to stdout and stderr together.
std::string Output(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return "popen failed";
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  pclose(pipe);
  return out;
}

// ADAPTD_MALLOC=jemalloc links jemalloc into the binary (a linker that drops a library no
// symbol names would leave glibc's malloc); jemalloc prints its statistics at exit when
// MALLOC_CONF asks, and no other allocator reads that variable.
TEST(BinaryTest, RunsOnTheAllocatorTheBuildChose) {
  const std::string out =
      Output(std::string("MALLOC_CONF=stats_print:true '") + ADAPTD_SERVER_BIN + "' --version");
  ASSERT_NE(out.find("adaptd "), std::string::npos) << out.substr(0, 2000);  // the version
  EXPECT_EQ(out.find("jemalloc statistics") != std::string::npos, ADAPTD_LINKS_JEMALLOC)
      << out.substr(0, 2000);
}

}  // namespace
}  // namespace adaptd

// core/files: whole reads, durable replacement, and the codes their failures carry.
#include "core/files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace adaptd {
namespace {

std::string TestPath(const std::string& name) {
  const std::string dir =
      testing::TempDir() + "/files_test_" +
      testing::UnitTest::GetInstance()->current_test_info()->name();
  std::filesystem::create_directories(dir);
  return dir + "/" + name;
}

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

TEST(FilesTest, ReadFileReturnsEveryByteAndRefusesADirectoryByName) {
  const std::string path = TestPath("bytes");
  ASSERT_TRUE(WriteFileAtomically(path, std::string("a\0b", 3)).ok());
  EXPECT_EQ(ReadFile(path).value(), std::string("a\0b", 3));
  const std::string dir = TestPath("dir");
  std::filesystem::create_directories(dir);
  const absl::Status refused = ReadFile(dir).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr(dir + " is a directory; expected a file"));
  const absl::Status missing = ReadFile(TestPath("missing")).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_THAT(std::string(missing.message()), ::testing::HasSubstr(TestPath("missing")));
}

// A pipe has no size to check against: it is read until its writer closes it.
TEST(FilesTest, ReadFileReadsAPipeToItsEnd) {
  const std::string fifo = TestPath("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string sent(200000, 'x');  // more than one read's buffer
  std::thread writer([&] {
    FILE* f = std::fopen(fifo.c_str(), "w");
    std::fwrite(sent.data(), 1, sent.size(), f);
    std::fclose(f);
  });
  absl::StatusOr<std::string> got = ReadFile(fifo);
  writer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, sent);
}

// A file whose size reads as 0 (as /proc's do) is read to its end all the same.
TEST(FilesTest, ReadFileReadsPastTheSizeThatStatGave) {
  absl::StatusOr<std::string> status = ReadFile("/proc/self/status");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_THAT(*status, ::testing::HasSubstr("Name:"));
}

TEST(FilesTest, ReplaceFileLeavesTheOldFileWhenTheProducerFails) {
  const std::string path = TestPath("file");
  ASSERT_TRUE(WriteFileAtomically(path, "old").ok());
  const absl::Status failed = ReplaceFile(path, [](const WriteFn& write) {
    absl::Status s = write("half of the new");
    if (!s.ok()) return s;
    return absl::AbortedError("the producer gave up");
  });
  EXPECT_EQ(failed, absl::AbortedError("the producer gave up"));
  EXPECT_EQ(ReadFile(path).value(), "old");
  EXPECT_EQ(Names(std::filesystem::path(path).parent_path()), std::vector<std::string>{"file"});
  // A success replaces it whole, in the ordinary mode under the umask.
  ASSERT_TRUE(WriteFileAtomically(path, "new").ok());
  EXPECT_EQ(ReadFile(path).value(), "new");
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644 & ~mask);
}

// The codes are the same for the server and the clients, and no failure leaves a partial file.
TEST(FilesTest, WriteFailuresNameTheFileWithTheirCode) {
  const absl::Status nowhere = WriteFileAtomically(TestPath("no/such/dir/file"), "x");
  EXPECT_EQ(nowhere.code(), absl::StatusCode::kNotFound) << nowhere;
  EXPECT_THAT(std::string(nowhere.message()), ::testing::HasSubstr("no/such/dir/file.partial."));
  const std::string dir = TestPath("a_directory");
  std::filesystem::create_directories(dir);
  const absl::Status over_dir = WriteFileAtomically(dir, "x");
  EXPECT_EQ(over_dir.code(), absl::StatusCode::kInvalidArgument) << over_dir;
  EXPECT_THAT(std::string(over_dir.message()), ::testing::HasSubstr(dir));
  EXPECT_EQ(Names(std::filesystem::path(dir).parent_path()), std::vector<std::string>{"a_directory"});
}

// The errno codes callers that read in pieces share (a root test process cannot be refused a
// read, so the mapping is checked directly): never PERMISSION_DENIED, which would read as the
// caller's role on a server.
TEST(FilesTest, FileErrorCodes) {
  EXPECT_EQ(FileError(EACCES, "cannot open", "f").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FileError(EPERM, "cannot open", "f").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FileError(ENOENT, "cannot open", "f").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FileError(ENOSPC, "writing", "f").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FileError(EISDIR, "reading", "f").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FileError(EIO, "reading", "f").message(), "reading f: Input/output error");
}

}  // namespace
}  // namespace adaptd

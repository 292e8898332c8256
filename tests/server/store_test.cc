// The storage pieces on their own: CRC-32C, the example log's recovery of torn and
// uncommitted tails, and the catalog's transactions.
#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <optional>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include "tests/testing/damage.h"
#include "tests/testing/immutable.h"
#include "tests/testing/sqlite.h"
#include "tests/testing/temp_dir.h"
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "server/catalog.h"
#include "server/crc32c.h"
#include "server/example_log.h"
#include "server/fs_util.h"

namespace adaptd {
namespace {


// A file where a directory belongs: EEXIST says nothing of what exists, so MakeDirs looks.
TEST(FsUtilTest, MakeDirsRefusesAFileInADirectorysPlace) {
  TempDir dir;
  const std::string file = dir.path() + "/models";
  ASSERT_TRUE(WriteFileAtomically(file, "x").ok());
  const absl::Status refused = MakeDirs(file);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInternal) << refused;
  EXPECT_THAT(std::string(refused.message()),
              ::testing::HasSubstr("mkdir " + file + ": exists and is not a directory"));
  EXPECT_FALSE(MakeDirs(file + "/m").ok());
  EXPECT_TRUE(MakeDirs(dir.path() + "/a/b").ok());
  EXPECT_TRUE(MakeDirs(dir.path() + "/a/b").ok());
}

// Runs `sql` on the catalog as another program would; a fatal failure if it fails.
void RawExec(const std::string& path, const std::string& sql) {
  ASSERT_EQ(SqlExec(path, sql), "") << sql;
}

// SQLite opens a catalog it may not write read-only, without an error; the server would then
// fail every write. Open refuses it. (Root writes past permissions: the file is made
// immutable instead, where the filesystem allows it.)
TEST(CatalogTest, ACatalogThatCanOnlyBeReadIsRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/catalog.sqlite";
  ASSERT_TRUE(Catalog::Open(path).ok());
  ASSERT_EQ(::chmod(path.c_str(), 0444), 0);
  std::optional<ImmutableFile> frozen;
  if (::geteuid() == 0) {
    frozen.emplace(path);
    if (!frozen->set()) GTEST_SKIP() << "root, on a filesystem without immutable files";
  }
  const absl::Status refused = Catalog::Open(path).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(std::string(refused.message()),
              ::testing::HasSubstr("catalog " + path + " can only be opened read-only"));
}

// A catalog SQLite cannot open at all (here a link to a directory that does not exist) is
// refused with its path named: before the file is open SQLite knows no name for it.
TEST(CatalogTest, ACatalogThatCannotBeOpenedIsNamed) {
  TempDir dir;
  const std::string path = dir.path() + "/catalog.sqlite";
  ASSERT_EQ(::symlink((dir.path() + "/gone/catalog.sqlite").c_str(), path.c_str()), 0);
  const absl::Status refused = Catalog::Open(path).status();
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()),
              ::testing::StartsWith("catalog: open " + path + ": unable to open"));
}

TEST(Crc32cTest, MatchesTheStandardCheckValues) {
  // The check value of CRC-32C (Castagnoli) and RFC 3720's test vectors.
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  // Extending equals checksumming the concatenation, at every split point.
  const std::string text = "the quick brown fox jumps over the lazy dog";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(Crc32cExtend(Crc32c(text.substr(0, cut)), text.substr(cut)), Crc32c(text)) << cut;
  }
}

// The CPU instruction and the tables agree on every length and alignment (the instruction
// path takes unaligned heads and tails byte by byte).
TEST(Crc32cTest, HardwareAndTablesAgree) {
  if (!crc32c_internal::HardwareAvailable()) GTEST_SKIP() << "no CRC32 instruction on this CPU";
  std::string buffer(4096 + 16, '\0');
  uint32_t state = 12345;
  for (char& ch : buffer) {
    state = state * 1103515245u + 12345u;
    ch = static_cast<char>(state >> 24);
  }
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t length : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096}) {
      const absl::string_view piece(buffer.data() + offset, length);
      for (uint32_t start : {0u, 0xE3069283u}) {
        EXPECT_EQ(crc32c_internal::ExtendHardware(start, piece),
                  crc32c_internal::ExtendPortable(start, piece))
            << "offset " << offset << ", length " << length << ", start " << start;
      }
    }
  }
  EXPECT_EQ(crc32c_internal::ExtendHardware(0, "123456789"), 0xE3069283u);
}

ExampleBatchData Batch(int64_t first_id, int64_t n, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  ExampleBatchData b;
  b.x = at::randn({n, 3}, gen);
  b.y = at::randint(0, 4, {n}, gen, at::kLong);
  b.ids = at::arange(first_id, first_id + n, at::kLong);
  b.client_ids = at::full({n}, -1, at::kLong);
  return b;
}

TEST(SliceBatchesTest, EveryRangeEqualsTheConcatenationNarrowed) {
  // Batches of 3, 1, 4, 2 rows (ids 0..9): each slice, concatenated, must be the rows
  // [begin, end) of the whole, in order, for every range.
  std::vector<ExampleBatchData> batches;
  int64_t first = 0, seed = 1;
  for (int64_t n : {3, 1, 4, 2}) {
    batches.push_back(Batch(first, n, seed++));
    first += n;
  }
  std::vector<at::Tensor> xs;
  for (const auto& b : batches) xs.push_back(b.x);
  const at::Tensor all_x = at::cat(xs);
  for (int64_t begin = 0; begin <= first; ++begin) {
    for (int64_t end = begin; end <= first; ++end) {
      const std::vector<ExampleBatchData> slice = SliceBatches(batches, begin, end);
      std::vector<at::Tensor> ids, sx;
      for (const auto& b : slice) {
        ASSERT_GT(b.size(), 0) << begin << ".." << end;
        ids.push_back(b.ids);
        sx.push_back(b.x);
        EXPECT_EQ(b.y.size(0), b.size());
        EXPECT_EQ(b.client_ids.size(0), b.size());
      }
      const at::Tensor got = ids.empty() ? at::empty({0}, at::kLong) : at::cat(ids);
      EXPECT_TRUE(got.equal(at::arange(begin, end, at::kLong))) << begin << ".." << end;
      if (end > begin) {
        EXPECT_TRUE(at::cat(sx).equal(all_x.narrow(0, begin, end - begin)));
      }
    }
  }
}

void Append(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// A record as the log's format spells it: [u32 length][u32 CRC-32C][type][body].
std::string Record(uint8_t type, const std::string& body) {
  std::string payload(1, static_cast<char>(type));
  payload += body;
  std::string out;
  for (uint32_t v : {static_cast<uint32_t>(payload.size()), Crc32c(payload)}) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
  return out + payload;
}

// Where the records of a log start, found by walking their length fields, plus the end of
// the last whole one.
std::vector<size_t> RecordStarts(const std::string& bytes) {
  std::vector<size_t> starts;
  size_t pos = 0;
  while (pos + 8 <= bytes.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[pos + i])) << (8 * i);
    if (pos + 8 + len > bytes.size()) break;
    starts.push_back(pos);
    pos += 8 + len;
  }
  starts.push_back(pos);
  return starts;
}

// A log at `path` holding the given streams, committed, and its bytes.
std::string WriteLog(const std::string& path, const std::vector<std::vector<ExampleBatchData>>& streams) {
  auto log = ExampleLog::Create(path);
  EXPECT_TRUE(log.ok()) << log.status();
  for (const auto& stream : streams) EXPECT_TRUE((*log)->AppendCommitted(stream).ok());
  auto bytes = ReadFile(path);
  EXPECT_TRUE(bytes.ok());
  EXPECT_EQ(static_cast<int64_t>(bytes->size()), (*log)->size_bytes());
  return *bytes;
}

void ExpectBatches(const LogRecovery& rec, const std::vector<const ExampleBatchData*>& want) {
  ASSERT_EQ(rec.batches.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(at::equal(rec.batches[i].x, want[i]->x)) << i;
    EXPECT_TRUE(at::equal(rec.batches[i].y, want[i]->y)) << i;
    EXPECT_TRUE(at::equal(rec.batches[i].ids, want[i]->ids)) << i;
  }
}

TEST(ExampleLogTest, RecoveryKeepsCommittedStreamsAndCutsEverythingAfter) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  const ExampleBatchData a = Batch(0, 5, 1), b = Batch(5, 7, 2), c = Batch(12, 3, 3);
  // Recovery never creates a log: a missing one lost what it held.
  LogRecovery none;
  EXPECT_EQ(ExampleLog::Open(path, &none).status().code(), absl::StatusCode::kDataLoss);
  const std::string bytes = WriteLog(path, {{a, b}, {c}});
  // Records: the key, a, b, commit, c, commit.
  const std::vector<size_t> at = RecordStarts(bytes);
  ASSERT_EQ(at.size(), 7u);
  ASSERT_EQ(at.back(), bytes.size());
  // A stream that never committed (a whole batch record, no commit record), then a torn
  // record: both must go.
  const std::string batch_a = bytes.substr(at[1], at[2] - at[1]);
  Append(path, batch_a);
  Append(path, batch_a.substr(0, batch_a.size() / 2));
  LogRecovery rec;
  auto log = ExampleLog::Open(path, &rec);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(rec.truncated_bytes, static_cast<int64_t>(batch_a.size() + batch_a.size() / 2));
  EXPECT_EQ((*log)->size_bytes(), static_cast<int64_t>(bytes.size()));
  ExpectBatches(rec, {&a, &b, &c});
  // Opening leaves the file as it is (a model refused at start keeps its files); the next
  // append cuts the tail before it writes, so a later open finds both streams and no tail.
  EXPECT_EQ(ReadFile(path)->size(), bytes.size() + batch_a.size() + batch_a.size() / 2);
  LogRecovery again;
  auto reopened = ExampleLog::Open(path, &again);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ(again.truncated_bytes, rec.truncated_bytes);
  const ExampleBatchData d = Batch(15, 1, 4);
  ASSERT_TRUE((*reopened)->AppendCommitted({d}).ok());
  LogRecovery last;
  ASSERT_TRUE(ExampleLog::Open(path, &last).ok());
  EXPECT_EQ(last.truncated_bytes, 0);
  ExpectBatches(last, {&a, &b, &c, &d});
  EXPECT_EQ(static_cast<int64_t>(ReadFile(path)->size()), (*reopened)->size_bytes());
}

TEST(ExampleLogTest, DamageBeforeACommitIsDataLossNotATornTail) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  const ExampleBatchData first = Batch(0, 4, 1);
  const std::string bytes = WriteLog(path, {{first}, {Batch(4, 4, 2)}});
  // Records: the key, batch, commit, batch, commit.
  const std::vector<size_t> at = RecordStarts(bytes);
  ASSERT_EQ(at.size(), 6u);
  // Damage with a valid commit record after it is not a torn tail: refuse, change nothing.
  std::string damaged = bytes;
  damaged[(at[3] + at[4]) / 2] ^= 0x01;  // inside the second stream's batch record
  ASSERT_TRUE(WriteFileAtomically(path, damaged).ok());
  LogRecovery rec;
  const auto damaged_open = ExampleLog::Open(path, &rec);
  EXPECT_EQ(damaged_open.status().code(), absl::StatusCode::kDataLoss) << damaged_open.status();
  EXPECT_EQ(*ReadFile(path), damaged);
  // A length field that lies (here far past the end of the file) stops the reading at the first
  // stream; the commits after it are still seen, so nothing is cut.
  std::string lying = bytes;
  lying[at[1] + 2] = static_cast<char>(0x3f);  // the first batch's length, now about 4 MiB
  ASSERT_TRUE(WriteFileAtomically(path, lying).ok());
  LogRecovery lied;
  const auto lying_open = ExampleLog::Open(path, &lied);
  EXPECT_EQ(lying_open.status().code(), absl::StatusCode::kDataLoss) << lying_open.status();
  EXPECT_THAT(std::string(lying_open.status().message()),
              ::testing::HasSubstr("a committed stream follows"));
  EXPECT_EQ(*ReadFile(path), lying);
  // A damaged key: the log cannot be read from its start, and its first stream was
  // acknowledged after the key was durable.
  std::string keyless = bytes;
  keyless[at[0] + 12] ^= 0x01;
  ASSERT_TRUE(WriteFileAtomically(path, keyless).ok());
  LogRecovery no_key;
  const auto key_open = ExampleLog::Open(path, &no_key);
  EXPECT_EQ(key_open.status().code(), absl::StatusCode::kDataLoss) << key_open.status();
  EXPECT_THAT(std::string(key_open.status().message()), ::testing::HasSubstr("first record"));
  EXPECT_EQ(*ReadFile(path), keyless);
  // The same damage in the last stream with its commit not on disk reads as a torn tail.
  ASSERT_TRUE(WriteFileAtomically(path, damaged.substr(0, at[4])).ok());
  LogRecovery tail;
  ASSERT_TRUE(ExampleLog::Open(path, &tail).ok());
  ExpectBatches(tail, {&first});
}

// A log written before logs had keys: no key record, and commit records without a body. Open
// reads it, and writes its committed records again under a key of its own (the uncommitted
// tail left out), so that it grows with keyed commits from then on. An empty one gets a key.
TEST(ExampleLogTest, ALogWrittenBeforeKeysIsReadAndGivenAKey) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  const ExampleBatchData a = Batch(0, 4, 1), b = Batch(4, 3, 2);
  const std::string bytes = WriteLog(path, {{a}});
  const std::vector<size_t> at = RecordStarts(bytes);  // the key, a, commit
  ASSERT_EQ(at.size(), 4u);
  const std::string batch_a = bytes.substr(at[1], at[2] - at[1]);
  const std::string old = batch_a + Record(2, "") + batch_a.substr(0, 40);  // and a torn tail
  ASSERT_TRUE(WriteFileAtomically(path, old).ok());
  {
    LogRecovery rec;
    auto log = ExampleLog::Open(path, &rec);
    ASSERT_TRUE(log.ok()) << log.status();
    ExpectBatches(rec, {&a});
    EXPECT_EQ(rec.truncated_bytes, 40);
    const std::string upgraded = *ReadFile(path);
    EXPECT_EQ(static_cast<int64_t>(upgraded.size()), (*log)->size_bytes());
    const std::vector<size_t> now = RecordStarts(upgraded);  // the key, a, a keyed commit
    ASSERT_EQ(now.size(), 4u);
    EXPECT_EQ(upgraded[8], 3);
    EXPECT_EQ(upgraded.substr(now[1], now[2] - now[1]), batch_a);
    EXPECT_EQ(upgraded.substr(now[2]), Record(2, upgraded.substr(9, 16)));
    ASSERT_TRUE((*log)->AppendCommitted({b}).ok());
  }
  const std::string grown = *ReadFile(path);
  EXPECT_EQ(grown.substr(grown.size() - 25), Record(2, grown.substr(9, 16)));
  LogRecovery rec;
  ASSERT_TRUE(ExampleLog::Open(path, &rec).ok());
  ExpectBatches(rec, {&a, &b});
  EXPECT_EQ(rec.truncated_bytes, 0);
  // An empty file (a log created before keys, by a stream of no examples).
  ASSERT_TRUE(WriteFileAtomically(path, "").ok());
  LogRecovery none;
  ASSERT_TRUE(ExampleLog::Open(path, &none).ok());
  EXPECT_EQ(none.batches.size(), 0u);
  EXPECT_EQ(RecordStarts(*ReadFile(path)), (std::vector<size_t>{0, 25}));
}

// A log keeps no file open between its calls, so that a model's many tasks cannot run the
// server out of file descriptors.
TEST(ExampleLogTest, ALogHoldsNoFileOpenBetweenCalls) {
  TempDir dir;
  auto open_files = [] {
    auto names = ReadDir("/proc/self/fd");
    EXPECT_TRUE(names.ok()) << names.status();
    return names.ok() ? names->size() : 0;
  };
  Batch(0, 1, 0);  // whatever LibTorch opens on first use, before the count
  const size_t before = open_files();
  std::vector<std::unique_ptr<ExampleLog>> logs;
  for (int i = 0; i < 20; ++i) {
    const std::string path = dir.path() + "/" + std::to_string(i) + ".log";
    ASSERT_TRUE(ExampleLog::Create(path).ok());
    LogRecovery rec;
    auto log = ExampleLog::Open(path, &rec);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->AppendCommitted({Batch(0, 3, i)}).ok());
    logs.push_back(*std::move(log));
  }
  EXPECT_EQ(open_files(), before);
}

// A crash while a stream is written may leave any of its pages on disk and not others (the
// kernel writes pages back in no set order). Its commit record is written only after the
// rest is durable, so the stream was not acknowledged, and is left out however it was torn.
TEST(ExampleLogTest, AStreamTornInAnyOrderIsCutWhenItsCommitIsMissing) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  const ExampleBatchData a = Batch(0, 4, 1);
  const std::string bytes = WriteLog(path, {{a}, {Batch(4, 64, 2), Batch(68, 64, 3)}});
  // Records: the key, a, commit, b1, b2, commit.
  const std::vector<size_t> at = RecordStarts(bytes);
  ASSERT_EQ(at.size(), 7u);
  const std::string uncommitted = bytes.substr(0, at[5]);
  std::string middle_lost = uncommitted, header_lost = uncommitted;
  std::fill(middle_lost.begin() + at[3] + 100, middle_lost.begin() + at[3] + 400, '\0');
  std::fill(header_lost.begin() + at[3], header_lost.begin() + at[3] + 8, '\0');
  for (const std::string& torn : {middle_lost, header_lost, uncommitted.substr(0, at[4] + 50)}) {
    ASSERT_TRUE(WriteFileAtomically(path, torn).ok());
    LogRecovery rec;
    const auto log = ExampleLog::Open(path, &rec);
    ASSERT_TRUE(log.ok()) << log.status();
    ExpectBatches(rec, {&a});
    EXPECT_EQ(rec.truncated_bytes, static_cast<int64_t>(torn.size() - at[3]));
    EXPECT_EQ(*ReadFile(path), torn);  // cut by the next append, not by opening
    const ExampleBatchData c = Batch(4, 1, 4);
    ASSERT_TRUE((*log)->AppendCommitted({c}).ok());
    EXPECT_EQ(ReadFile(path)->substr(0, at[3]), bytes.substr(0, at[3]));
    LogRecovery after;
    ASSERT_TRUE(ExampleLog::Open(path, &after).ok());
    ExpectBatches(after, {&a, &c});
    EXPECT_EQ(after.truncated_bytes, 0);
  }
}

// A client chooses its examples' bytes. Those of a torn stream must not pass for a commit
// record, or a crash would take the model offline where cutting is safe.
TEST(ExampleLogTest, AnExamplesBytesCannotPassForACommitRecord) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  const ExampleBatchData a = Batch(0, 4, 1);
  // Inputs whose bytes spell a commit record in every form a client could know: the body-less
  // one of a log without a key, with and without a key-sized body of its choosing.
  const std::string forged = Record(2, "") + Record(2, std::string(16, '\0')) + Record(2, std::string(16, 'k'));
  ExampleBatchData b = Batch(4, 1, 2);
  b.x = at::zeros({1, static_cast<int64_t>((forged.size() + 3) / 4)}, at::kFloat);
  std::memcpy(b.x.data_ptr<float>(), forged.data(), forged.size());
  const std::string bytes = WriteLog(path, {{a}, {b}});
  const size_t planted = bytes.find(forged);
  ASSERT_NE(planted, std::string::npos);
  // A kill during the second stream's write: its first bytes, up to past the planted ones.
  const std::string torn = bytes.substr(0, planted + forged.size() + 4);
  ASSERT_TRUE(WriteFileAtomically(path, torn).ok());
  LogRecovery rec;
  const auto log = ExampleLog::Open(path, &rec);
  ASSERT_TRUE(log.ok()) << log.status();
  ExpectBatches(rec, {&a});
}

TEST(CatalogTest, PublishIsOneTransactionAndDeleteRemovesEveryRow) {
  TempDir tmp;
  const std::string dir = tmp.path();
  auto catalog = Catalog::Open(dir + "/catalog.sqlite");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  Catalog& c = **catalog;
  ASSERT_TRUE(c.InsertModel({"m", "spec", "config", 1}).ok());
  EXPECT_FALSE(c.InsertModel({"m", "spec", "config", 2}).ok());  // the name is the key
  ASSERT_TRUE(c.UpsertTask("m", {0, {3, 4}}).ok());
  ASSERT_TRUE(c.InsertJob({"j1", "m", 0, 0, 10, 1, "queued", -1, 5, /*config=*/"", /*progress=*/""}).ok());
  ASSERT_TRUE(c.Publish("m", {1, "info", 77}, "j1", 3, "published version 1", "progress").ok());
  // A second row for the same version fails, and the job's update in it is rolled back.
  EXPECT_FALSE(c.Publish("m", {1, "other", 78}, "j1", 4, "should not stick", "").ok());
  auto jobs = c.ListJobs("m");
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].state, 3);
  EXPECT_EQ((*jobs)[0].version, 1);
  EXPECT_EQ((*jobs)[0].message, "published version 1");
  EXPECT_EQ((*jobs)[0].progress, "progress");
  auto versions = c.ListVersions("m");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 1u);
  EXPECT_EQ((*versions)[0].checkpoint_crc, 77u);
  auto tasks = c.ListTasks("m");
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 1u);
  EXPECT_EQ((*tasks)[0].classes, (std::vector<int64_t>{3, 4}));
  // Reopening sees the same rows (they were committed).
  const std::string before = *c.Dump();
  catalog->reset();
  auto reopened = Catalog::Open(dir + "/catalog.sqlite");
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(*(*reopened)->Dump(), before);
  ASSERT_TRUE((*reopened)->DeleteModel("m").ok());
  EXPECT_EQ(*(*reopened)->Dump(), "");
}

// Models m and n, each with a row in every table, written through every kind of write: two
// tasks, a job (started, grown and ended by a publish) and two versions. Model m's values are
// unique in the file, for damage to find.
void AddModelsMAndN(Catalog& cat) {
  for (const std::string m : {"m", "n"}) {
    ASSERT_TRUE(cat.InsertModel({m, "spec", "settings-of-model-" + m, 1}).ok());
    ASSERT_TRUE(cat.UpsertTask(m, {0, {0, 1}}).ok());
    ASSERT_TRUE(cat.UpsertTask(m, {1, m == "m" ? std::vector<int64_t>{31415, 27182}
                                               : std::vector<int64_t>{2, 3}}).ok());
    ASSERT_TRUE(cat.SetTaskLogBytes(m, 1, 4096).ok());
    ASSERT_TRUE(cat.InsertJob({"job-" + m, m, 1, 0, 10, 1, "queued", -1, 5, "", ""}).ok());
    ASSERT_TRUE(cat.StartJob("job-" + m, 0, 10, "settings", 2, "running").ok());
    ASSERT_TRUE(cat.GrowJob("job-" + m, 12).ok());
    ASSERT_TRUE(cat.Publish(m, {0, "info-of-version-0-" + m, 1}, "", 0, "", "").ok());
    ASSERT_TRUE(cat.Publish(m, {1, "info-of-version-1-" + m, 2}, "job-" + m, 3,
                            "message-of-job-" + m, "progress").ok());
    ASSERT_TRUE(cat.UpdateModelConfig(m, "settings-of-model-" + m).ok());
  }
}

// A value damaged on disk reads back from SQLite as another valid value (a flipped byte in a
// stored config once changed a model's epochs). Every row's checksum finds it: ListModels marks
// the model's row, and the lists of a model's tasks, versions and jobs fail with DATA_LOSS,
// naming the row. The rows beside it read as before.
TEST(CatalogTest, ARowDamagedOnDiskIsFoundWhenRead) {
  struct Case {
    const char* table;
    std::string bytes;  // of model m's row in that table
    std::string named;  // in the list's error
  };
  const Case cases[] = {{"models", "settings-of-model-m", ""},
                        {"tasks", "31415,27182", "task 1 of model \"m\""},
                        {"versions", "info-of-version-1-m", "version 1 of model \"m\""},
                        {"jobs", "message-of-job-m", "job job-m of model \"m\""}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.table);
    TempDir tmp;
    const std::string path = tmp.path() + "/catalog.sqlite";
    {
      auto catalog = Catalog::Open(path);
      ASSERT_TRUE(catalog.ok()) << catalog.status();
      ASSERT_NO_FATAL_FAILURE(AddModelsMAndN(**catalog));
    }  // closing the last connection moves every row from the write-ahead log into the file
    ASSERT_NO_FATAL_FAILURE(FlipBitIn(path, c.bytes));
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto models = (*catalog)->ListModels();
    ASSERT_TRUE(models.ok()) << models.status();
    ASSERT_EQ(models->size(), 2u);
    EXPECT_EQ((*models)[0].damaged, std::string(c.table) == "models");
    EXPECT_FALSE((*models)[1].damaged);
    EXPECT_EQ((*models)[1].config, "settings-of-model-n");
    for (const std::string m : {"m", "n"}) {
      const bool damaged = m == "m";
      const absl::Status lists[] = {(*catalog)->ListTasks(m).status(),
                                    (*catalog)->ListVersions(m).status(),
                                    (*catalog)->ListJobs(m).status()};
      const char* tables[] = {"tasks", "versions", "jobs"};
      for (int i = 0; i < 3; ++i) {
        if (!damaged || c.table != std::string(tables[i])) {
          EXPECT_TRUE(lists[i].ok()) << m << " " << tables[i] << ": " << lists[i];
          continue;
        }
        EXPECT_EQ(lists[i].code(), absl::StatusCode::kDataLoss) << lists[i];
        EXPECT_THAT(std::string(lists[i].message()),
                    ::testing::AllOf(::testing::HasSubstr(c.named),
                                     ::testing::HasSubstr("does not match its checksum"),
                                     ::testing::HasSubstr(path)));
      }
    }
  }
}

// The checksums are kept by the server's own connection: another program's write is refused
// rather than left with a stale checksum, and the rows stay as they were.
TEST(CatalogTest, AWriteByAnotherProgramIsRefused) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_TRUE((*catalog)->InsertModel({"m", "spec", "settings", 1}).ok());
  }
  EXPECT_THAT(SqlExec(path, "UPDATE models SET config = 'other' WHERE name = 'm'"),
              ::testing::HasSubstr("adaptd_row_crc"));
  auto catalog = Catalog::Open(path);
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto models = (*catalog)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].config, "settings");
  EXPECT_FALSE((*models)[0].damaged);
}

// Each open replaces the checksum triggers, so a catalog last opened by another release runs
// this release's: here an old trigger that refuses every update of a job.
TEST(CatalogTest, AnOpenReplacesTheTriggersItFinds) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_TRUE((*catalog)->InsertModel({"m", "spec", "settings", 1}).ok());
    ASSERT_TRUE((*catalog)->InsertJob({"j", "m", 0, 0, 10, 1, "queued", -1, 5, "", ""}).ok());
  }
  ASSERT_NO_FATAL_FAILURE(RawExec(
      path, "DROP TRIGGER jobs_crc_check; CREATE TRIGGER jobs_crc_check BEFORE UPDATE OF state "
            "ON jobs BEGIN SELECT RAISE(ABORT, 'an old release'); END"));
  auto catalog = Catalog::Open(path);
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  const absl::Status updated = (*catalog)->UpdateJob("j", 2, "running", -1, "");
  EXPECT_TRUE(updated.ok()) << updated;
  auto jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].message, "running");
}

// Changes a row the way damage on disk would, while the server's connection stays open: `sql`
// runs with the table's checksum triggers set aside, and they are put back as they were, in one
// transaction.
void DamageAroundTheChecksum(const std::string& path, const std::string& table,
                             const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  std::string drop, create;
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                   "AND tbl_name = ?", -1, &st, nullptr), SQLITE_OK);
  sqlite3_bind_text(st, 1, table.c_str(), -1, SQLITE_TRANSIENT);
  while (sqlite3_step(st) == SQLITE_ROW) {
    absl::StrAppend(&drop, "DROP TRIGGER ",
                    reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), ";");
    absl::StrAppend(&create, reinterpret_cast<const char*>(sqlite3_column_text(st, 1)), ";");
  }
  sqlite3_finalize(st);
  const std::string all = absl::StrCat("BEGIN IMMEDIATE;", drop, sql, ";", create, "COMMIT;");
  const int rc = sqlite3_exec(db, all.c_str(), nullptr, nullptr, nullptr);
  const std::string error = sqlite3_errmsg(db);
  sqlite3_close(db);
  ASSERT_FALSE(drop.empty()) << "no triggers on " << table;
  ASSERT_EQ(rc, SQLITE_OK) << all << ": " << error;
}

// A row damaged while the server runs is not given a fresh checksum by the server's next update
// of it: the update is refused with DATA_LOSS, the row stays as the damage left it, and its
// list still reports it. The other model's rows update as before.
TEST(CatalogTest, AnUpdateOfARowDamagedWhileOpenIsRefused) {
  struct Case {
    const char* table;
    const char* damage;  // of model m's row, in a column the update leaves alone
  };
  const Case cases[] = {{"models", "UPDATE models SET created_ms = 9 WHERE name = 'm'"},
                        {"tasks",
                         "UPDATE tasks SET classes = '2,7' WHERE model = 'm' AND task_id = 1"},
                        {"versions",
                         "UPDATE versions SET checkpoint_crc = 9 "
                         "WHERE model = 'm' AND version = 1"},
                        {"jobs", "UPDATE jobs SET message = 'other' WHERE model = 'm'"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.table);
    TempDir tmp;
    const std::string path = tmp.path() + "/catalog.sqlite";
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    Catalog& cat = **catalog;
    ASSERT_NO_FATAL_FAILURE(AddModelsMAndN(cat));
    ASSERT_NO_FATAL_FAILURE(DamageAroundTheChecksum(path, c.table, c.damage));
    for (const std::string m : {"m", "n"}) {
      const absl::Status updates[] = {
          cat.UpdateModelConfig(m, "new settings"), cat.SetTaskLogBytes(m, 1, 8192),
          cat.UpdateVersionInfos(m, {{1, "new info", 0}}),
          cat.UpdateJob("job-" + m, 4, "failed", -1, "")};
      const char* tables[] = {"models", "tasks", "versions", "jobs"};
      for (int i = 0; i < 4; ++i) {
        if (m == "n" || c.table != std::string(tables[i])) {
          EXPECT_TRUE(updates[i].ok()) << m << " " << tables[i] << ": " << updates[i];
          continue;
        }
        EXPECT_EQ(updates[i].code(), absl::StatusCode::kDataLoss) << updates[i];
        EXPECT_THAT(std::string(updates[i].message()),
                    ::testing::AllOf(::testing::HasSubstr(absl::StrCat(
                                         "the row of table ", c.table, " that this write would "
                                         "change does not match its checksum")),
                                     ::testing::HasSubstr(path)));
      }
    }
    // m's refused row is as the damage left it, and still reads as damaged.
    auto models = cat.ListModels();
    ASSERT_TRUE(models.ok()) << models.status();
    const bool model_row = std::string(c.table) == "models";
    EXPECT_EQ((*models)[0].damaged, model_row);
    EXPECT_EQ((*models)[0].created_ms, model_row ? 9 : 1);
    EXPECT_EQ((*models)[0].config, model_row ? "settings-of-model-m" : "new settings");
    EXPECT_EQ((*models)[1].config, "new settings");
    const absl::Status lists[] = {cat.ListTasks("m").status(), cat.ListVersions("m").status(),
                                  cat.ListJobs("m").status()};
    const char* listed[] = {"tasks", "versions", "jobs"};
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(lists[i].code(), c.table == std::string(listed[i]) ? absl::StatusCode::kDataLoss
                                                                   : absl::StatusCode::kOk)
          << listed[i] << ": " << lists[i];
    }
  }
}

// A jobs table as an older release wrote it: the first release's columns plus `more`, with
// the rows `insert` adds.
void WriteOldJobsTable(const std::string& path, const std::string& more, const std::string& insert) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string sql =
      "CREATE TABLE jobs(id TEXT PRIMARY KEY, model TEXT NOT NULL, task_id INTEGER NOT NULL, "
      "begin_pos INTEGER NOT NULL, end_pos INTEGER NOT NULL, state INTEGER NOT NULL, "
      "message TEXT NOT NULL, version INTEGER NOT NULL, created_ms INTEGER NOT NULL" + more +
      ");" + insert;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << sql;
}

// A catalog written before tasks recorded where their logs' acknowledged streams end opens with
// the end unknown (0), and records it from then on.
TEST(CatalogTest, ACatalogFromBeforeLogEndsGainsThem) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const int rc = sqlite3_exec(
        db,
        "CREATE TABLE tasks(model TEXT NOT NULL, task_id INTEGER NOT NULL, classes TEXT NOT NULL, "
        "PRIMARY KEY(model, task_id)); INSERT INTO tasks VALUES('m', 0, '1,2');",
        nullptr, nullptr, nullptr);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK);
  }
  for (int open = 0; open < 2; ++open) {  // the second open finds the column there
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto tasks = (*catalog)->ListTasks("m");
    ASSERT_TRUE(tasks.ok()) << tasks.status();
    ASSERT_EQ(tasks->size(), 1u);
    EXPECT_EQ((*tasks)[0].classes, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ((*tasks)[0].log_bytes, open == 0 ? 0 : 4096);
    ASSERT_TRUE((*catalog)->SetTaskLogBytes("m", 0, 4096).ok());
  }
  auto catalog = Catalog::Open(path);
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  EXPECT_EQ((*catalog)->SetTaskLogBytes("m", 7, 1).code(), absl::StatusCode::kNotFound);
}

// A catalog written before rows carried checksums gains them, computed from its rows, and its
// rows read back whole at every open since.
TEST(CatalogTest, ACatalogFromBeforeChecksumsGainsThem) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  ASSERT_NO_FATAL_FAILURE(RawExec(
      path,
      "CREATE TABLE models(name TEXT PRIMARY KEY, spec BLOB NOT NULL, config BLOB NOT NULL, "
      "created_ms INTEGER NOT NULL); INSERT INTO models VALUES('m', x'01', x'02', 5);"
      "CREATE TABLE versions(model TEXT NOT NULL, version INTEGER NOT NULL, info BLOB NOT NULL, "
      "checkpoint_crc INTEGER NOT NULL, PRIMARY KEY(model, version));"
      "INSERT INTO versions VALUES('m', 0, x'03', 77);"));
  for (int open = 0; open < 2; ++open) {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto models = (*catalog)->ListModels();
    ASSERT_TRUE(models.ok()) << models.status();
    ASSERT_EQ(models->size(), 1u);
    EXPECT_FALSE((*models)[0].damaged);
    EXPECT_EQ((*models)[0].config, open == 0 ? "\x02" : "\x04");
    auto versions = (*catalog)->ListVersions("m");
    ASSERT_TRUE(versions.ok()) << versions.status();
    ASSERT_EQ(versions->size(), 1u);
    EXPECT_EQ((*versions)[0].checkpoint_crc, 77u);
    ASSERT_TRUE((*catalog)->UpdateModelConfig("m", "\x04").ok());
  }
}

// A row damaged in its model's name alone lists under a name that is no model's, or under
// another model's (each of "l" and "o" is one bit from "m"). Its checksum matches under its
// true name, and the open restores that: the catalog reads as it did before the damage. (On
// disk, such damage to a task or version row also leaves its index entry disagreeing, which
// the integrity check reports until a REINDEX; the rows then stand as here.)
TEST(CatalogTest, ARowDamagedInItsModelNameAloneIsRestored) {
  for (const char* table : {"tasks", "versions", "jobs"}) {
    for (const char* name : {"l", "o"}) {
      SCOPED_TRACE(absl::StrCat(table, " ", name));
      TempDir tmp;
      const std::string path = tmp.path() + "/catalog.sqlite";
      std::string before;
      {
        auto catalog = Catalog::Open(path);
        ASSERT_TRUE(catalog.ok()) << catalog.status();
        ASSERT_NO_FATAL_FAILURE(AddModelsMAndN(**catalog));
        ASSERT_TRUE((*catalog)->InsertModel({"o", "spec", "settings", 1}).ok());
        before = *(*catalog)->Dump();
      }
      ASSERT_NO_FATAL_FAILURE(DamageAroundTheChecksum(
          path, table,
          absl::StrCat("UPDATE ", table, " SET model = '", name, "' WHERE model = 'm'")));
      auto catalog = Catalog::Open(path);
      ASSERT_TRUE(catalog.ok()) << catalog.status();
      EXPECT_EQ(*(*catalog)->Dump(), before);
      for (const std::string m : {"m", "n", "o"}) {
        EXPECT_TRUE((*catalog)->ListTasks(m).ok()) << m;
        EXPECT_TRUE((*catalog)->ListVersions(m).ok()) << m;
        EXPECT_TRUE((*catalog)->ListJobs(m).ok()) << m;
      }
    }
  }
}

// The same damage as a disk leaves it: one flipped bit turns the model's name in a row into
// another model's. In a job's row ("1-model" to "3-model") no index covers the name. In a
// task's and a version's row ("model-a" to "model-c") the index of the key then disagrees with
// the row, and the row holds a key model-c holds too, so a REINDEX would fail on the duplicate:
// the open rebuilds those tables from their rows instead. Every row is its model's again.
TEST(CatalogTest, AModelNameFlippedOnDiskIsRestored) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    Catalog& cat = **catalog;
    for (const std::string m : {"1-model", "3-model", "model-a", "model-c"}) {
      ASSERT_TRUE(cat.InsertModel({m, "spec", "settings", 1}).ok());
    }
    ASSERT_TRUE(cat.InsertJob({"job-abc", "1-model", 0, 0, 10, 1, "queued", -1, 5, "", ""}).ok());
    ASSERT_TRUE(cat.UpsertTask("model-a", {0, {2, 3, 4, 5}}).ok());
    ASSERT_TRUE(cat.UpsertTask("model-c", {0, {7, 8}}).ok());
    ASSERT_TRUE(cat.Publish("model-a", {0, "xyzzy-info", 1}, "", 0, "", "").ok());
    ASSERT_TRUE(cat.Publish("model-c", {0, "other-info", 2}, "", 0, "", "").ok());
  }
  // A row holds its columns' values side by side (task and version 0 take no bytes); the
  // middle byte of each string is the one a bit flip turns into the other model's. The same
  // damage comes twice: a table is rebuilt again as it was the first time.
  for (int open = 0; open < 4; ++open) {  // each damage, then an open that finds nothing to mend
    if (open % 2 == 0) {
      for (const char* bytes : {"job-abc1-model", "model-a2,3,4,", "model-axyzzy"}) {
        ASSERT_NO_FATAL_FAILURE(FlipBitIn(path, bytes));
      }
    }
    SCOPED_TRACE(open);
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    Catalog& cat = **catalog;
    auto jobs = cat.ListJobs("1-model");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].id, "job-abc");
    EXPECT_TRUE(cat.ListJobs("3-model")->empty());
    for (const auto& [m, classes, info] :
         {std::tuple<std::string, std::vector<int64_t>, std::string>{"model-a", {2, 3, 4, 5},
                                                                     "xyzzy-info"},
          {"model-c", {7, 8}, "other-info"}}) {
      auto tasks = cat.ListTasks(m);
      ASSERT_TRUE(tasks.ok()) << m << ": " << tasks.status();
      ASSERT_EQ(tasks->size(), 1u) << m;
      EXPECT_EQ((*tasks)[0].classes, classes) << m;
      auto versions = cat.ListVersions(m);
      ASSERT_TRUE(versions.ok()) << m << ": " << versions.status();
      ASSERT_EQ(versions->size(), 1u) << m;
      EXPECT_EQ((*versions)[0].info, info) << m;
    }
  }
}

// A version row hit in its model's name and elsewhere matches no model's name: rebuilt as it
// stands it would duplicate the key model-c holds, so the rebuild is undone and the open fails,
// naming the duplicate.
TEST(CatalogTest, AKeyDamagedBeyondItsNameStopsTheOpen) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    for (const std::string m : {"model-a", "model-c"}) {
      ASSERT_TRUE((*catalog)->InsertModel({m, "spec", "settings", 1}).ok());
    }
    ASSERT_TRUE((*catalog)->Publish("model-a", {0, "xyzzy-info", 1}, "", 0, "", "").ok());
    ASSERT_TRUE((*catalog)->Publish("model-c", {0, "other-info", 2}, "", 0, "", "").ok());
  }
  ASSERT_NO_FATAL_FAILURE(FlipBitIn(path, "model-axyzzy"));
  ASSERT_NO_FATAL_FAILURE(FlipBitIn(path, "y-info"));
  auto refused = Catalog::Open(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::AllOf(::testing::HasSubstr("integrity check"),
                               ::testing::HasSubstr("sqlite_autoindex_versions_1"),
                               ::testing::HasSubstr("rebuilding the table from its rows was "
                                                    "undone"),
                               ::testing::HasSubstr("UNIQUE"),
                               ::testing::HasSubstr("restore it from a backup")));
  EXPECT_THAT(std::string(refused.status().message()),
              ::testing::Not(::testing::HasSubstr("REINDEX")));
  refused = Catalog::Open(path);  // the same again: the rebuild changed nothing
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss) << refused.status();
  // Nothing of the undone rebuild is left, and the rows are as the damage left them.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM sqlite_master WHERE name LIKE "
                                   "'%rebuilt%'), (SELECT group_concat(model || ':' || info, ' ') "
                                   "FROM versions NOT INDEXED)", -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(st, 0), 0);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 1))),
            "model-c:xyzzy-ilfo model-c:other-info");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

// A damaged row that names no model and matches no model's name was hit in its key and
// elsewhere: no model's list would see it, and which model lost it cannot be told. The open
// fails, naming the row and how to go on without it; after that, the catalog opens.
TEST(CatalogTest, ARowDamagedInItsModelNameAndElsewhereStopsTheOpen) {
  const std::pair<const char*, const char*> damages[] = {
      {"tasks", "classes = '9'"}, {"versions", "info = 'x'"}, {"jobs", "message = 'x'"}};
  for (const auto& [table, elsewhere] : damages) {
    SCOPED_TRACE(table);
    TempDir tmp;
    const std::string path = tmp.path() + "/catalog.sqlite";
    {
      auto catalog = Catalog::Open(path);
      ASSERT_TRUE(catalog.ok()) << catalog.status();
      ASSERT_TRUE((*catalog)->InsertModel({"m", "spec", "settings", 1}).ok());
      ASSERT_TRUE((*catalog)->UpsertTask("m", {0, {0, 1}}).ok());
      ASSERT_TRUE((*catalog)->Publish("m", {0, "info", 1}, "", 0, "", "").ok());
      ASSERT_TRUE((*catalog)->InsertJob({"j", "m", 0, 0, 10, 1, "queued", -1, 5, "", ""}).ok());
    }
    ASSERT_NO_FATAL_FAILURE(DamageAroundTheChecksum(
        path, table, absl::StrCat("UPDATE ", table, " SET model = 'l', ", elsewhere)));
    auto refused = Catalog::Open(path);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss) << refused.status();
    EXPECT_THAT(std::string(refused.status().message()),
                ::testing::AllOf(::testing::HasSubstr(absl::StrCat("rowid 1 in table ", table)),
                                 ::testing::HasSubstr("names no model (\"l\")"),
                                 ::testing::HasSubstr(absl::StrCat("DELETE FROM ", table,
                                                                   " WHERE rowid = 1"))));
    ASSERT_NO_FATAL_FAILURE(RawExec(path, absl::StrCat("DELETE FROM ", table, " WHERE rowid = 1")));
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
  }
}

// Indexes carry no checksum of ours: a damaged index entry could hide its row from a lookup by
// model. SQLite's integrity check finds it, and the open rebuilds the table from its rows.
TEST(CatalogTest, ADamagedIndexIsRebuiltFromItsRows) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    ASSERT_TRUE((*catalog)->InsertModel({"m", "spec", "settings", 1}).ok());
    for (int64_t v = 0; v < 3; ++v) {
      ASSERT_TRUE((*catalog)->Publish("m", {v, "info", 1}, "", 0, "", "").ok());
    }
  }
  int64_t root = 0, page = 0;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT rootpage, (SELECT page_size FROM pragma_page_size) FROM "
                                 "sqlite_master WHERE tbl_name = 'versions' AND type = 'index'",
                                 -1, &st, nullptr),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    root = sqlite3_column_int64(st, 0);
    page = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  // The index's one page holds its entries at its end; the last byte is the first entry's rowid.
  auto bytes = ReadFile(path);
  ASSERT_TRUE(bytes.ok());
  ASSERT_GE(static_cast<int64_t>(bytes->size()), root * page);
  (*bytes)[root * page - 1] ^= 0x04;
  ASSERT_TRUE(WriteFileAtomically(path, *bytes).ok());
  for (int open = 0; open < 2; ++open) {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto versions = (*catalog)->ListVersions("m");
    ASSERT_TRUE(versions.ok()) << versions.status();
    ASSERT_EQ(versions->size(), 3u);
    for (int64_t v = 0; v < 3; ++v) EXPECT_EQ((*versions)[v].version, v);
  }
}

// The checksums' migration is one transaction: a fill that fails leaves the catalog as it was,
// and the next open migrates it whole (not a column there and empty, which would read as damage).
TEST(CatalogTest, AChecksumMigrationThatFailsChangesNothing) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  ASSERT_NO_FATAL_FAILURE(RawExec(
      path,
      "CREATE TABLE models(name TEXT PRIMARY KEY, spec BLOB NOT NULL, config BLOB NOT NULL, "
      "created_ms INTEGER NOT NULL); INSERT INTO models VALUES('m', x'01', x'02', 5);"
      "CREATE TRIGGER refuse BEFORE UPDATE ON models BEGIN SELECT RAISE(ABORT, 'refused'); END;"));
  auto refused = Catalog::Open(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("refused"));
  ASSERT_NO_FATAL_FAILURE(RawExec(path, "DROP TRIGGER refuse"));
  auto catalog = Catalog::Open(path);
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  auto models = (*catalog)->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_FALSE((*models)[0].damaged);
}

// A catalog written before jobs recorded their settings opens, keeps its jobs, and records the
// settings of the jobs that start from then on.
TEST(CatalogTest, ACatalogFromBeforeJobSettingsGainsThem) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  ASSERT_NO_FATAL_FAILURE(WriteOldJobsTable(
      path, "", "INSERT INTO jobs VALUES('j1', 'm', 0, 0, 10, 2, 'running', -1, 5);"));
  for (int open = 0; open < 2; ++open) {  // the second open finds the column there
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto jobs = (*catalog)->ListJobs("m");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].end, open == 0 ? 10 : 12);
    EXPECT_EQ((*jobs)[0].message, "running");
    EXPECT_EQ((*jobs)[0].config, open == 0 ? "" : std::string("\0settings", 9));
    ASSERT_TRUE(
        (*catalog)->StartJob("j1", 0, 12, std::string("\0settings", 9), 2, "running").ok());
  }
  // The start records the state and message with the range.
  auto catalog = Catalog::Open(path);
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  ASSERT_TRUE((*catalog)->StartJob("j1", 3, 7, "s", 1, "resumed").ok());
  auto jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].begin, 3);
  EXPECT_EQ((*jobs)[0].end, 7);
  EXPECT_EQ((*jobs)[0].config, "s");
  EXPECT_EQ((*jobs)[0].state, 1);
  EXPECT_EQ((*jobs)[0].message, "resumed");
  EXPECT_EQ((*jobs)[0].progress, "");
  // The job's end keeps its progress, bytes and all (the column came after job settings).
  ASSERT_TRUE((*catalog)->UpdateJob("j1", 4, "cancelled", -1, std::string("\0steps", 6)).ok());
  jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].state, 4);
  EXPECT_EQ((*jobs)[0].progress, std::string("\0steps", 6));
  EXPECT_EQ((*jobs)[0].end, 7);
  // A join, an end and a cancel can grow the range (examples that joined the job), never
  // shrink it.
  ASSERT_TRUE((*catalog)->GrowJob("j1", 8).ok());
  ASSERT_TRUE((*catalog)->GrowJob("j1", 7).ok());
  jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].end, 8);
  ASSERT_TRUE((*catalog)->UpdateJob("j1", 4, "cancelled", -1, "", 9).ok());
  ASSERT_TRUE((*catalog)->UpdateJob("j1", 4, "cancelled", -1, "", 8).ok());
  jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].begin, 3);
  EXPECT_EQ((*jobs)[0].end, 9);
  ASSERT_TRUE((*catalog)->RecordCancelAndEnd("j1", 4, "cancelled", "", 6).ok());
  jobs = (*catalog)->ListJobs("m");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].end, 9);
  EXPECT_TRUE((*jobs)[0].cancel_requested);
}

// A catalog of the release before job progress (jobs.config there, jobs.progress not) gains the
// column, keeps its rows, and opens again with it.
TEST(CatalogTest, ACatalogWithJobSettingsGainsJobProgress) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  ASSERT_NO_FATAL_FAILURE(WriteOldJobsTable(
      path, ", config BLOB NOT NULL DEFAULT x''",
      "INSERT INTO jobs VALUES('j1', 'm', 0, 0, 10, 3, 'published version 1', 1, 5, x'0102');"));
  for (int open = 0; open < 2; ++open) {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto jobs = (*catalog)->ListJobs("m");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 1u);
    EXPECT_EQ((*jobs)[0].message, "published version 1");
    EXPECT_EQ((*jobs)[0].config, "\x01\x02");
    EXPECT_EQ((*jobs)[0].progress, open == 0 ? "" : "p");
    EXPECT_TRUE((*catalog)->Dump().ok());
    ASSERT_TRUE((*catalog)->UpdateJob("j1", 3, "published version 1", 1, "p").ok());
  }
}

// A catalog of the release before recorded cancels (jobs.progress there, jobs.cancel_requested
// not) gains the column with no cancel on record; a recorded cancel changes nothing else of the
// job and survives a reopen.
TEST(CatalogTest, ACatalogWithJobProgressGainsRecordedCancels) {
  TempDir tmp;
  const std::string path = tmp.path() + "/catalog.sqlite";
  ASSERT_NO_FATAL_FAILURE(WriteOldJobsTable(
      path, ", config BLOB NOT NULL DEFAULT x'', progress BLOB NOT NULL DEFAULT x''",
      "INSERT INTO jobs VALUES('j1', 'm', 0, 0, 10, 2, 'running', -1, 5, x'01', x'');"
      "INSERT INTO jobs VALUES('j2', 'm', 0, 10, 20, 1, 'queued', -1, 6, x'', x'');"));
  for (int open = 0; open < 2; ++open) {
    auto catalog = Catalog::Open(path);
    ASSERT_TRUE(catalog.ok()) << catalog.status();
    auto jobs = (*catalog)->ListJobs("m");
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    ASSERT_EQ(jobs->size(), 2u);
    EXPECT_EQ((*jobs)[0].cancel_requested, open == 1);
    EXPECT_FALSE((*jobs)[1].cancel_requested);
    EXPECT_EQ((*jobs)[0].state, 2);
    EXPECT_EQ((*jobs)[0].message, "running");
    EXPECT_EQ((*jobs)[0].config, "\x01");
    ASSERT_TRUE((*catalog)->RecordCancel("j1").ok());
  }
}

TEST(ExampleLogTest, AWholeRecordThatDoesNotDecodeIsDataLoss) {
  TempDir dir;
  const std::string path = dir.path() + "/0.log";
  // Checksums match, so no crash wrote these: a batch body that is not a tensor map, a record
  // of a type this version does not know, a commit without the key of a log that has one, and
  // a key anywhere but first. None may cut the log.
  const std::string key = Record(3, std::string(16, 'k'));
  for (const std::string& bytes :
       {Record(1, "not a tensor map") + Record(2, ""), Record(9, "") + Record(2, ""),
        key + Record(2, "") + Record(2, std::string(16, 'k')), Record(2, "") + key + Record(2, "")}) {
    ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
    LogRecovery rec;
    const auto log = ExampleLog::Open(path, &rec);
    EXPECT_EQ(log.status().code(), absl::StatusCode::kDataLoss) << log.status();
    EXPECT_EQ(*ReadFile(path), bytes);
  }
  // ExampleLog::Create starts over whatever the file held: its key only, which reads back as
  // a log of no examples with nothing to cut.
  auto fresh = ExampleLog::Create(path);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  const auto fresh_bytes = ReadFile(path);
  EXPECT_EQ(static_cast<int64_t>(fresh_bytes->size()), (*fresh)->size_bytes());
  EXPECT_EQ(RecordStarts(*fresh_bytes), (std::vector<size_t>{0, 8 + 1 + 16}));
  LogRecovery rec;
  ASSERT_TRUE(ExampleLog::Open(path, &rec).ok());
  EXPECT_EQ(rec.batches.size(), 0u);
  EXPECT_EQ(rec.truncated_bytes, 0);
  // Each log draws its own key.
  ASSERT_TRUE(ExampleLog::Create(path + "2").ok());
  EXPECT_NE(ReadFile(path + "2")->substr(9, 16), fresh_bytes->substr(9, 16));
}

}  // namespace
}  // namespace adaptd

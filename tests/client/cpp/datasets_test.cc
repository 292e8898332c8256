#include "client/datasets.h"

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "client/tensor.h"
#include "tests/client/cpp/test_files.h"

namespace adaptd {
namespace {

bool Contains(const absl::Status& s, const std::string& text) {
  return s.message().find(text) != absl::string_view::npos;
}

// Three 2x2 uint8 images 0..11 and their labels 7, 0, 9.
const std::string kPixels = [] {
  std::string p;
  for (char i = 0; i < 12; ++i) p += i;
  return p;
}();
const std::string kLabels = {7, 0, 9};

void ExpectThreeImages(const absl::StatusOr<ExampleSet>& set) {
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->x.dtype(), v1::DATA_TYPE_UINT8);
  EXPECT_EQ(FormatShape(set->x.shape()), "[3, 2, 2]");
  EXPECT_EQ(set->x.raw_data(), kPixels);
  EXPECT_EQ(set->labels, (std::vector<int64_t>{7, 0, 9}));
  EXPECT_EQ(set->ids, (std::vector<int64_t>{0, 1, 2}));
}

TEST(IdxTest, ReadsRawImagesAndLabels) {
  const std::string images = WriteFile("images-idx3-ubyte", Idx(0x08, {3, 2, 2}, kPixels));
  const std::string labels = WriteFile("labels-idx1-ubyte", Idx(0x08, {3}, kLabels));
  ExpectThreeImages(ReadIdxExamples(images, labels));
  absl::StatusOr<ExampleSet> unlabelled = ReadIdxExamples(images, "");
  ASSERT_TRUE(unlabelled.ok());
  EXPECT_TRUE(unlabelled->labels.empty());
  EXPECT_EQ(unlabelled->size(), 3);
}

TEST(IdxTest, ReadsGzipByMagicNotName) {
  const std::string images = WriteFile("images.gz", Gzip(Idx(0x08, {3, 2, 2}, kPixels)));
  const std::string labels = WriteFile("labels", Gzip(Idx(0x08, {3}, kLabels)));
  ExpectThreeImages(ReadIdxExamples(images, labels));
}

TEST(IdxTest, ConcatenatedGzipMembersReadAsOne) {
  const std::string whole = Idx(0x08, {3, 2, 2}, kPixels);
  const std::string path =
      WriteFile("two-members.gz", Gzip(whole.substr(0, 9)) + Gzip(whole.substr(9)));
  absl::StatusOr<v1::Tensor> t = ReadIdx(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->raw_data(), kPixels);
}

TEST(IdxTest, ConvertsBigEndianElements) {
  // float32 1.5 is 0x3FC00000, -2 is 0xC0000000; big-endian in the file.
  const std::string floats = std::string("\x3f\xc0\x00\x00\xc0\x00\x00\x00", 8);
  absl::StatusOr<v1::Tensor> f = ReadIdx(WriteFile("f", Idx(0x0D, {2}, floats)));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*FloatValues(*f), (std::vector<float>{1.5f, -2.0f}));
  // int32 labels widen to int64.
  absl::StatusOr<v1::Tensor> i =
      ReadIdx(WriteFile("i", Idx(0x0C, {2}, BigEndian32(300) + BigEndian32(0xFFFFFFFF))));
  ASSERT_TRUE(i.ok()) << i.status();
  EXPECT_EQ(*Int64Values(*i), (std::vector<int64_t>{300, -1}));
}

TEST(IdxTest, MalformedFilesGiveClearErrors) {
  const std::string whole = Idx(0x08, {3, 2, 2}, kPixels);
  const absl::Status truncated =
      ReadIdx(WriteFile("t", whole.substr(0, whole.size() - 1))).status();
  EXPECT_EQ(truncated.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(truncated, "truncated")) << truncated;
  EXPECT_TRUE(Contains(truncated, "[3, 2, 2]")) << truncated;
  EXPECT_TRUE(Contains(ReadIdx(WriteFile("x", whole + "x")).status(), "1 bytes after"));
  EXPECT_TRUE(Contains(
      ReadIdx(WriteFile("m", std::string("\x01\x00\x08\x01", 4) + BigEndian32(0))).status(),
      "bad magic"));
  EXPECT_TRUE(
      Contains(ReadIdx(WriteFile("h", whole.substr(0, 10))).status(), "truncated IDX header"));
  EXPECT_TRUE(Contains(ReadIdx(WriteFile("k", Idx(0x07, {1}, "a"))).status(), "element type"));
  EXPECT_TRUE(Contains(ReadIdx(WriteFile("s", std::string("\0\0", 2))).status(), "too short"));
  EXPECT_EQ(ReadIdx(TestPath("absent")).status().code(), absl::StatusCode::kNotFound);
}

TEST(IdxTest, CorruptOrTruncatedGzip) {
  const std::string gz = Gzip(Idx(0x08, {3, 2, 2}, kPixels));
  const absl::Status cut = ReadIdx(WriteFile("cut.gz", gz.substr(0, gz.size() - 12))).status();
  EXPECT_TRUE(Contains(cut, "truncated gzip")) << cut;
  std::string bad = gz;
  bad[bad.size() - 8] = static_cast<char>(bad[bad.size() - 8] ^ 0xFF);  // the CRC-32
  const absl::Status corrupt = ReadIdx(WriteFile("bad.gz", bad)).status();
  EXPECT_EQ(corrupt.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(corrupt, "gzip")) << corrupt;
}

TEST(IdxTest, LabelsMustMatchTheImages) {
  const std::string images = WriteFile("images", Idx(0x08, {3, 2, 2}, kPixels));
  const absl::Status count =
      ReadIdxExamples(images, WriteFile("labels", Idx(0x08, {2}, "\1\2"))).status();
  EXPECT_TRUE(Contains(count, "has 2 labels but")) << count;
  const absl::Status two_d =
      ReadIdxExamples(images, WriteFile("labels2", Idx(0x08, {3, 1}, kLabels))).status();
  EXPECT_TRUE(Contains(two_d, "one-dimensional")) << two_d;
  const absl::Status floats =
      ReadIdxExamples(images, WriteFile("labels3", Idx(0x0D, {3}, std::string(12, '\0')))).status();
  EXPECT_TRUE(Contains(floats, "must be integers")) << floats;
}

TEST(CsvTest, ReadsFeaturesAndTheLastColumnAsLabels) {
  const std::string path = WriteFile("data.csv", "1,2.5,0\n-3,4e-1,2\r\n\n0.0 , 1 , 1\n");
  absl::StatusOr<ExampleSet> set = ReadCsv(path);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(FormatShape(set->x.shape()), "[3, 2]");
  EXPECT_EQ(*FloatValues(set->x), (std::vector<float>{1, 2.5f, -3, 0.4f, 0, 1}));
  EXPECT_EQ(set->labels, (std::vector<int64_t>{0, 2, 1}));
  EXPECT_EQ(set->ids, (std::vector<int64_t>{0, 1, 2}));
}

TEST(CsvTest, LabelColumnHeaderAndNoLabels) {
  const std::string path = WriteFile("h.csv", "label,a,b\n3,1,2\n4.0,5,6\n");
  CsvOptions o;
  o.label_column = 0;
  o.skip_header = true;
  absl::StatusOr<ExampleSet> set = ReadCsv(path, o);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(*FloatValues(set->x), (std::vector<float>{1, 2, 5, 6}));
  EXPECT_EQ(set->labels, (std::vector<int64_t>{3, 4}));

  o.skip_header = false;
  const absl::Status header = ReadCsv(path, o).status();
  EXPECT_TRUE(Contains(header, ":1: column 1: 'label' is not a finite number (a header?"))
      << header;

  CsvOptions none;
  none.has_labels = false;
  none.delimiter = ';';
  absl::StatusOr<ExampleSet> unlabelled = ReadCsv(WriteFile("n.csv", "1;2;3\n"), none);
  ASSERT_TRUE(unlabelled.ok());
  EXPECT_EQ(FormatShape(unlabelled->x.shape()), "[1, 3]");
  EXPECT_TRUE(unlabelled->labels.empty());
}

TEST(CsvTest, MalformedFilesGiveClearErrors) {
  const absl::Status ragged = ReadCsv(WriteFile("r.csv", "1,2,0\n3,0\n")).status();
  EXPECT_EQ(ragged.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(ragged, ":2: 2 columns; line 1 has 3")) << ragged;
  EXPECT_TRUE(
      Contains(ReadCsv(WriteFile("l.csv", "1,2,0.5\n")).status(), "not a non-negative integer"));
  EXPECT_TRUE(
      Contains(ReadCsv(WriteFile("m.csv", "1,2,-1\n")).status(), "not a non-negative integer"));
  EXPECT_TRUE(Contains(ReadCsv(WriteFile("e.csv", "\n\n")).status(), "no examples"));
  EXPECT_TRUE(Contains(ReadCsv(WriteFile("f.csv", "1,,0\n")).status(), "column 2"));
  EXPECT_TRUE(Contains(ReadCsv(WriteFile("i.csv", "1,inf,0\n")).status(), "finite"));
  // Finite as a double, infinite as the float32 it is sent as: the file's line says so.
  EXPECT_TRUE(Contains(ReadCsv(WriteFile("g.csv", "1,1e39,0\n")).status(),
                       ":1: column 2: '1e39' is not a finite number"));
  CsvOptions far;
  far.label_column = 5;
  EXPECT_TRUE(
      Contains(ReadCsv(WriteFile("c.csv", "1,2\n"), far).status(), "outside the 2 columns"));
  EXPECT_TRUE(Contains(ReadCsv(WriteFile("o.csv", "1\n2\n")).status(), "no feature columns"));
}

// An .npy file: magic, version, header dict padded to 64 bytes, then `data`.
std::string Npy(const std::string& descr, const std::string& shape, const std::string& data,
                int major = 1, bool fortran = false) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                     ", 'shape': " + shape + ", }";
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  const uint32_t len = static_cast<uint32_t>(dict.size());
  out += static_cast<char>(len & 0xFF);
  out += static_cast<char>(len >> 8);
  if (major != 1) out += std::string("\0\0", 2);
  return out + dict + data;
}

template <typename T>
std::string Raw(const std::vector<T>& values) {
  std::string raw(values.size() * sizeof(T), '\0');
  std::memcpy(raw.data(), values.data(), raw.size());
  return raw;
}

TEST(NpyTest, ReadsEachDtype) {
  absl::StatusOr<v1::Tensor> f4 =
      ReadNpy(WriteFile("f4.npy", Npy("<f4", "(2, 2)", Raw<float>({1, 2, 3, 4.5f}))));
  ASSERT_TRUE(f4.ok()) << f4.status();
  EXPECT_EQ(FormatShape(f4->shape()), "[2, 2]");
  EXPECT_EQ(*FloatValues(*f4), (std::vector<float>{1, 2, 3, 4.5f}));

  absl::StatusOr<v1::Tensor> f8 =
      ReadNpy(WriteFile("f8.npy", Npy("<f8", "(3,)", Raw<double>({0.25, -1, 8}))));
  ASSERT_TRUE(f8.ok()) << f8.status();
  EXPECT_EQ(f8->dtype(), v1::DATA_TYPE_FLOAT64);
  EXPECT_EQ(*FloatValues(*ToFloat32(*f8)), (std::vector<float>{0.25f, -1, 8}));

  absl::StatusOr<v1::Tensor> u1 =
      ReadNpy(WriteFile("u1.npy", Npy("|u1", "(1, 3)", "\x01\x02\xff")));
  ASSERT_TRUE(u1.ok()) << u1.status();
  EXPECT_EQ(*Uint8Values(*u1), (std::vector<uint8_t>{1, 2, 255}));

  absl::StatusOr<v1::Tensor> i8 =
      ReadNpy(WriteFile("i8.npy", Npy("<i8", "(2,)", Raw<int64_t>({5, -6}))));
  ASSERT_TRUE(i8.ok()) << i8.status();
  EXPECT_EQ(*Int64Values(*i8), (std::vector<int64_t>{5, -6}));

  absl::StatusOr<v1::Tensor> i4 =
      ReadNpy(WriteFile("i4.npy", Npy("<i4", "(2,)", Raw<int32_t>({5, -6}))));
  ASSERT_TRUE(i4.ok()) << i4.status();
  EXPECT_EQ(*Int64Values(*i4), (std::vector<int64_t>{5, -6}));

  absl::StatusOr<v1::Tensor> v2 =
      ReadNpy(WriteFile("v2.npy", Npy("<f4", "(1,)", Raw<float>({9}), 2)));
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(*FloatValues(*v2), (std::vector<float>{9}));

  absl::StatusOr<v1::Tensor> gz =
      ReadNpy(WriteFile("gz.npy.gz", Gzip(Npy("<i8", "(1,)", Raw<int64_t>({4})))));
  ASSERT_TRUE(gz.ok()) << gz.status();
  EXPECT_EQ(*Int64Values(*gz), (std::vector<int64_t>{4}));
}

TEST(NpyTest, ExamplesAndLabelsFiles) {
  const std::string x = WriteFile("x.npy", Npy("<f8", "(2, 3)", Raw<double>({1, 2, 3, 4, 5, 6})));
  const std::string y = WriteFile("y.npy", Npy("<i8", "(2,)", Raw<int64_t>({1, 0})));
  absl::StatusOr<ExampleSet> set = ReadNpyExamples(x, y);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->x.dtype(), v1::DATA_TYPE_FLOAT32);  // float64 goes on the wire as float32
  EXPECT_EQ(*FloatValues(set->x), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(set->labels, (std::vector<int64_t>{1, 0}));
  const std::string negative = WriteFile("neg.npy", Npy("<i8", "(2,)", Raw<int64_t>({1, -1})));
  EXPECT_TRUE(Contains(ReadNpyExamples(x, negative).status(), "labels must be >= 0; label 1 (counting from 0) is -1"));
}

TEST(NpyTest, MalformedFilesGiveClearErrors) {
  const std::string four = Raw<float>({1, 2, 3, 4});
  EXPECT_TRUE(
      Contains(ReadNpy(WriteFile("t.npy", Npy("<f4", "(2, 2)", four.substr(0, 15)))).status(),
               "needs 16 bytes of data; the file has 15"));
  EXPECT_TRUE(Contains(ReadNpy(WriteFile("l.npy", Npy("<f4", "(2, 2)", four + "x"))).status(),
                       "needs 16 bytes"));
  EXPECT_TRUE(Contains(ReadNpy(WriteFile("o.npy", Npy("<f4", "(2, 2)", four, 1, true))).status(),
                       "Fortran-order"));
  EXPECT_TRUE(
      Contains(ReadNpy(WriteFile("b.npy", Npy(">f4", "(2, 2)", four))).status(), "big-endian"));
  EXPECT_TRUE(Contains(ReadNpy(WriteFile("d.npy", Npy("<i2", "(2,)", "abcd"))).status(),
                       "unsupported NPY dtype '<i2'"));
  EXPECT_TRUE(Contains(ReadNpy(WriteFile("m.npy", "NUMPY not really")).status(), "bad magic"));
  EXPECT_TRUE(
      Contains(ReadNpy(WriteFile("h.npy", Npy("<f4", "(2, 2)", four).substr(0, 30))).status(),
               "truncated NPY header"));
  EXPECT_TRUE(
      Contains(ReadNpy(WriteFile("s.npy", Npy("<f4", "(2, x)", four))).status(), "dimension 'x'"));
}

TEST(DataFormatTest, ByNameAndByPath) {
  EXPECT_EQ(*ParseDataFormat("npy"), DataFormat::kNpy);
  EXPECT_EQ(ParseDataFormat("parquet").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*DataFormatOfPath("/d/train-images-idx3-ubyte.gz"), DataFormat::kIdx);
  EXPECT_EQ(*DataFormatOfPath("x.NPY"), DataFormat::kNpy);
  EXPECT_EQ(*DataFormatOfPath("dir.npy/table.csv.gz"), DataFormat::kCsv);
  EXPECT_EQ(DataFormatOfPath("data.bin").status().code(), absl::StatusCode::kInvalidArgument);
}

ExampleSet Small(std::vector<uint8_t> pixels, std::vector<int64_t> labels) {
  ExampleSet set;
  const int64_t n = static_cast<int64_t>(labels.size());
  set.x = *Uint8Tensor(pixels, {n, static_cast<int64_t>(pixels.size()) / n});
  set.labels = std::move(labels);
  for (int64_t i = 0; i < n; ++i) set.ids.push_back(i);
  return set;
}

// A reshape keeps each example's values in order: it may flatten and unflatten, but not turn
// [3, 2] into [2, 3] (a transpose's job); a refusal leaves the examples as they were.
TEST(ExampleSetTest, ReshapeRefusesAnotherLayoutOfTheSameCount) {
  ExampleSet set = Small({0, 1, 2, 3, 4, 5}, {0});
  ASSERT_TRUE(ReshapeExamples(set, {3, 2}).ok());
  const absl::Status layout = ReshapeExamples(set, {2, 3});
  EXPECT_EQ(layout.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(layout, "examples of shape [3, 2] hold as many values as the model's input "
                               "shape [2, 3] but in another layout")) << layout;
  EXPECT_EQ(FormatShape(set.x.shape()), "[1, 3, 2]");
  ASSERT_TRUE(ReshapeExamples(set, {1, 6}).ok());
  ASSERT_TRUE(ReshapeExamples(set, {2, 3}).ok());
  EXPECT_EQ(FormatShape(set.x.shape()), "[1, 2, 3]");
  EXPECT_EQ(set.x.raw_data(), std::string("\0\1\2\3\4\5", 6));
}

TEST(ExampleSetTest, AppendKeepsCountingIds) {
  ExampleSet all;
  ASSERT_TRUE(AppendExamples(all, Small({1, 2, 3, 4}, {0, 1})).ok());
  ASSERT_TRUE(AppendExamples(all, Small({5, 6}, {2})).ok());
  EXPECT_EQ(all.size(), 3);
  EXPECT_EQ(all.x.raw_data(), std::string("\1\2\3\4\5\6"));
  EXPECT_EQ(all.labels, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(all.ids, (std::vector<int64_t>{0, 1, 2}));
  const absl::Status wide = AppendExamples(all, Small({1, 2, 3}, {0}));
  EXPECT_TRUE(Contains(wide, "shape [3] to uint8 examples of shape [2]")) << wide;
}

TEST(ExampleSetTest, SelectReshapeAndBatch) {
  ExampleSet set = Small({0, 0, 1, 1, 2, 2, 3, 3, 4, 4}, {3, 1, 3, 2, 3});
  const std::vector<int64_t> rows = RowsWithLabels(set, {3, 2}, /*limit=*/3);
  EXPECT_EQ(rows, (std::vector<int64_t>{0, 2, 3}));
  absl::StatusOr<ExampleSet> some = TakeRows(set, rows);
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->x.raw_data(), std::string("\0\0\2\2\3\3", 6));
  EXPECT_EQ(some->labels, (std::vector<int64_t>{3, 3, 2}));
  EXPECT_EQ(some->ids, (std::vector<int64_t>{0, 2, 3}));

  ASSERT_TRUE(ReshapeExamples(*some, {1, 2}).ok());
  EXPECT_EQ(FormatShape(some->x.shape()), "[3, 1, 2]");
  const absl::Status misfit = ReshapeExamples(*some, {3});
  EXPECT_TRUE(Contains(misfit, "input shape [3]")) << misfit;
  // Axes of size 1 may move.
  ASSERT_TRUE(ReshapeExamples(*some, {2, 1}).ok());
  ASSERT_TRUE(ReshapeExamples(*some, {1, 2}).ok());

  absl::StatusOr<v1::ExampleBatch> batch = MakeBatch(*some, 1, 2);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(FormatShape(batch->x().shape()), "[2, 1, 2]");
  EXPECT_EQ(*Int64Values(batch->y()), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(*Int64Values(batch->client_ids()), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(MakeBatch(*some, 2, 2).status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace adaptd

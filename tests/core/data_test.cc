#include "core/data/readers.h"

#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/testing/data.h"

namespace adaptd {
namespace {

using ::testing::HasSubstr;

std::string IdxBytes(uint8_t type, std::vector<uint32_t> dims, const std::string& payload) {
  std::string b = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<char>((d >> s) & 0xff));
  }
  return b + payload;
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(::getpid()) + "_" + name;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
}

TEST(IdxTest, ParsesUint8AndBigEndianTypes) {
  auto t = ParseIdx(IdxBytes(0x08, {2, 3}, std::string("\x01\x02\x03\x04\x05\xff", 6)));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->scalar_type(), at::kByte);
  EXPECT_EQ(t->sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*t)[1][2].item<int64_t>(), 255);
  // int32 big-endian 258 = 0x00000102.
  auto i = ParseIdx(IdxBytes(0x0C, {1}, std::string("\x00\x00\x01\x02", 4)));
  ASSERT_TRUE(i.ok());
  EXPECT_EQ((*i)[0].item<int64_t>(), 258);
}

TEST(IdxTest, MalformedInputGivesClearErrors) {
  EXPECT_THAT(std::string(ParseIdx("\x01\x02\x08\x01").status().message()), HasSubstr("not an IDX file"));
  EXPECT_THAT(std::string(ParseIdx(IdxBytes(0x07, {1}, "a")).status().message()), HasSubstr("type code"));
  const auto truncated = ParseIdx(IdxBytes(0x08, {10, 10}, std::string(99, 'a')));
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(truncated.status().message()), HasSubstr("needs 112 bytes; the file has 111"));
  EXPECT_FALSE(ParseIdx(IdxBytes(0x08, {0xffffffffu, 0xffffffffu}, "")).ok());  // absurd header
  EXPECT_FALSE(ParseIdx(std::string("\x00\x00\x08", 3)).ok());
  EXPECT_EQ(ReadIdxFile(TempPath("does-not-exist")).status().code(), absl::StatusCode::kNotFound);
}

TEST(IdxTest, GzipRoundTripAndCorruptGzip) {
  const std::string images = TempPath("img.gz"), labels = TempPath("lbl.gz");
  std::string pixels(2 * 28 * 28, '\0');
  pixels[5] = static_cast<char>(255);
  WriteGzip(images, IdxBytes(0x08, {2, 28, 28}, pixels));
  WriteGzip(labels, IdxBytes(0x08, {2}, std::string("\x03\x09", 2)));
  auto d = LoadIdxDataset(images, labels);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->x.sizes(), (std::vector<int64_t>{2, 1, 28, 28}));
  EXPECT_FLOAT_EQ(d->x[0][0][0][5].item<float>(), 1.0f);
  EXPECT_EQ(d->y[1].item<int64_t>(), 9);
  // Labels outside [0, num_classes).
  auto bad_labels = LoadIdxDataset(images, labels, /*num_classes=*/5);
  EXPECT_THAT(std::string(bad_labels.status().message()), HasSubstr("labels must lie in [0, 5)"));
  // Float labels (IDX type 0x0D): 1.7 would become class 1 silently.
  const std::string float_labels = TempPath("flbl.gz");
  const float fl[2] = {1.7f, 3.0f};
  std::string be(8, '\0');
  for (int i = 0; i < 2; ++i) {
    uint32_t u;
    std::memcpy(&u, &fl[i], 4);
    for (int b = 0; b < 4; ++b) be[4 * i + b] = static_cast<char>((u >> (24 - 8 * b)) & 0xff);
  }
  WriteGzip(float_labels, IdxBytes(0x0D, {2}, be));
  EXPECT_THAT(std::string(LoadIdxDataset(images, float_labels).status().message()),
              HasSubstr("expected integer labels"));
  // A truncated gzip stream.
  std::string gz;
  {
    std::ifstream in(images, std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto cut = MaybeGunzip(gz.substr(0, gz.size() / 2));
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cut.status().message()), HasSubstr("gzip"));
  std::remove(images.c_str());
  std::remove(labels.c_str());
}

TEST(IdxTest, FashionMnistFromTheDebianPackage) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  if (::access((dir + "t10k-images-idx3-ubyte.gz").c_str(), R_OK) != 0) {
    ADAPTD_SKIP_WITHOUT_DATA("dataset-fashion-mnist is not installed");
  }
  auto d = LoadIdxDataset(dir + "t10k-images-idx3-ubyte.gz", dir + "t10k-labels-idx1-ubyte.gz");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->size(), 10000);
  EXPECT_EQ(at::bincount(d->y).eq(1000).all().item<bool>(), true);  // balanced classes
  EXPECT_LE(d->x.max().item<float>(), 1.0f);
}

std::string NpyBytes(const std::string& descr, const std::string& shape, const std::string& data,
                     bool fortran = false) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string b = "\x93NUMPY";
  b.push_back('\x01');
  b.push_back('\x00');
  b.push_back(static_cast<char>(header.size() & 0xff));
  b.push_back(static_cast<char>(header.size() >> 8));
  return b + header + data;
}

TEST(NpyTest, ParsesFloatAndUint8Arrays) {
  const float v[6] = {1.5f, -2.0f, 0.0f, 3.25f, 4.0f, 5.0f};
  auto t = ParseNpy(NpyBytes("<f4", "(3, 2)", std::string(reinterpret_cast<const char*>(v), 24)));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_FLOAT_EQ((*t)[1][1].item<float>(), 3.25f);
  auto u = ParseNpy(NpyBytes("|u1", "(4,)", "\x01\x02\x03\x04"));
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->scalar_type(), at::kByte);
  EXPECT_EQ((*u)[3].item<int64_t>(), 4);
}

TEST(NpyTest, MalformedInputGivesClearErrors) {
  EXPECT_THAT(std::string(ParseNpy("PK\x03\x04").status().message()), HasSubstr("not an .npy file"));
  EXPECT_THAT(std::string(ParseNpy(NpyBytes(">f4", "(1,)", "abcd")).status().message()),
              HasSubstr("dtype '>f4'"));
  EXPECT_THAT(std::string(ParseNpy(NpyBytes("<f4", "(2,)", "abcd", true)).status().message()),
              HasSubstr("C order"));
  EXPECT_THAT(std::string(ParseNpy(NpyBytes("<f4", "(2,)", "abcd")).status().message()),
              HasSubstr("needs"));
  EXPECT_FALSE(ParseNpy(NpyBytes("<f4", "(x,)", "abcd")).ok());
  // An empty dimension inside the shape is malformed (only "(3,)"'s trailing comma is Python's).
  EXPECT_THAT(std::string(ParseNpy(NpyBytes("|u1", "(1,,2)", "ab")).status().message()),
              HasSubstr("bad dimension"));
  const float nan[2] = {1.0f, std::nanf("")};
  EXPECT_THAT(std::string(ParseNpy(NpyBytes("<f4", "(2,)", std::string(reinterpret_cast<const char*>(nan), 8)))
                              .status()
                              .message()),
              HasSubstr("not finite"));
}

TEST(CsvTest, ParsesLabelColumnByNameOrIndex) {
  const std::string text = "a,label,b\n1.0,2,3\n4,0,5.5\n";
  CsvOptions o;
  o.label_column = "label";
  auto d = ParseCsv(text, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->x.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_FLOAT_EQ(d->x[1][1].item<float>(), 5.5f);
  EXPECT_EQ(d->y[0].item<int64_t>(), 2);
  CsvOptions last;
  last.has_header = false;
  auto e = ParseCsv("0.5,1\n0.25,0\n", last);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->y[0].item<int64_t>(), 1);
}

TEST(CsvTest, ScikitLearnBundledSets) {
  const std::string dir = "/usr/lib/python3/dist-packages/sklearn/datasets/data/";
  if (::access((dir + "breast_cancer.csv").c_str(), R_OK) != 0) ADAPTD_SKIP_WITHOUT_DATA("no python3-sklearn");
  CsvOptions o;
  o.has_header = false;
  o.skip_lines = 1;  // "569,30,malignant,benign"
  auto cancer = ReadCsvFile(dir + "breast_cancer.csv", o);
  ASSERT_TRUE(cancer.ok()) << cancer.status();
  EXPECT_EQ(cancer->x.sizes(), (std::vector<int64_t>{569, 30}));
  EXPECT_EQ(cancer->y.sum().item<int64_t>(), 357);  // benign
  CsvOptions plain;
  plain.has_header = false;
  auto digits = ReadCsvFile(dir + "digits.csv.gz", plain);
  ASSERT_TRUE(digits.ok()) << digits.status();
  EXPECT_EQ(digits->x.sizes(), (std::vector<int64_t>{1797, 64}));
  EXPECT_EQ(digits->y.max().item<int64_t>(), 9);
}

TEST(CsvTest, MalformedInputGivesClearErrors) {
  CsvOptions o;
  o.label_column = "y";
  EXPECT_THAT(std::string(ParseCsv("a,b\n1,2\n", o).status().message()), HasSubstr("no column named 'y'"));
  o.label_column = "";
  EXPECT_THAT(std::string(ParseCsv("a,b\n1,2\n3\n", o).status().message()),
              HasSubstr("line 3 has 1 columns; expected 2"));
  EXPECT_THAT(std::string(ParseCsv("a,b\nx,2\n", o).status().message()), HasSubstr("'x' is not a number"));
  EXPECT_THAT(std::string(ParseCsv("a,b\n1,2.5\n", o).status().message()), HasSubstr("not an integer"));
  // Labels that no int64 holds are refused, not cast (undefined behaviour).
  EXPECT_THAT(std::string(ParseCsv("a,b\n1,nan\n", o).status().message()), HasSubstr("not an integer"));
  EXPECT_THAT(std::string(ParseCsv("a,b\n1,1e19\n", o).status().message()), HasSubstr("not an integer"));
  EXPECT_THAT(std::string(ParseCsv("a,b\nnan,1\n", o).status().message()), HasSubstr("must be finite"));
  EXPECT_FALSE(ParseCsv("", o).ok());
}

}  // namespace
}  // namespace adaptd

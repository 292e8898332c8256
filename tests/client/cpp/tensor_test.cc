#include "client/tensor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

namespace adaptd {
namespace {

TEST(TensorTest, FloatRoundTripKeepsValuesAndLittleEndianBytes) {
  const std::vector<float> values = {1.5f, -2.0f, 0.0f, 3.25f, 1e-8f, 7.0f};
  absl::StatusOr<v1::Tensor> t = FloatTensor(values, {2, 3});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype(), v1::DATA_TYPE_FLOAT32);
  ASSERT_EQ(t->shape_size(), 2);
  EXPECT_EQ(t->raw_data().size(), 24u);
  // 1.5f is 0x3FC00000: little-endian puts 0x00 0x00 0xC0 0x3F first.
  EXPECT_EQ(static_cast<unsigned char>(t->raw_data()[2]), 0xC0);
  EXPECT_EQ(static_cast<unsigned char>(t->raw_data()[3]), 0x3F);
  absl::StatusOr<std::vector<float>> back = FloatValues(*t);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, values);
}

TEST(TensorTest, Int64AndUint8RoundTrip) {
  const std::vector<int64_t> ints = {-1, 0, std::numeric_limits<int64_t>::max()};
  absl::StatusOr<v1::Tensor> i = Int64Tensor(ints, {3});
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(*Int64Values(*i), ints);
  const std::vector<uint8_t> bytes = {0, 128, 255, 7};
  absl::StatusOr<v1::Tensor> u = Uint8Tensor(bytes, {2, 2});
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->raw_data(), std::string("\x00\x80\xff\x07", 4));
  EXPECT_EQ(*Uint8Values(*u), bytes);
}

TEST(TensorTest, SizeMustMatchShape) {
  const absl::Status s = FloatTensor({1, 2, 3}, {2, 2}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[2, 2]"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("12"), absl::string_view::npos) << s;  // the bytes it has
  EXPECT_EQ(MakeTensor(v1::DATA_TYPE_INT64, {2}, std::string(15, '\0')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeTensor(v1::DATA_TYPE_INT64, {2}, std::string(16, '\0')).ok());
  // A scalar has one element; a zero dimension none.
  EXPECT_TRUE(FloatTensor({4.0f}, {}).ok());
  EXPECT_TRUE(FloatTensor({}, {0, 5}).ok());
}

TEST(TensorTest, RejectsBadDtypesAndShapes) {
  v1::Tensor t;
  t.add_shape(1);
  t.set_raw_data(std::string(4, '\0'));
  EXPECT_EQ(CheckTensor(t).code(), absl::StatusCode::kInvalidArgument);  // no dtype
  t.set_dtype(static_cast<v1::DataType>(99));
  EXPECT_NE(CheckTensor(t).message().find("dtype(99)"), absl::string_view::npos);
  EXPECT_EQ(MakeTensor(v1::DATA_TYPE_UINT8, {-1}, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(NumElements({big, big}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*NumElements({big, 0, big}), 0);
}

TEST(TensorTest, ReadersCheckTheDtype) {
  absl::StatusOr<v1::Tensor> ints = Int64Tensor({1, 2}, {2});
  const absl::Status s = FloatValues(*ints).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expected a float32 tensor; got int64"), absl::string_view::npos) << s;
  v1::Tensor short_float = *FloatTensor({1, 2}, {2});
  short_float.mutable_raw_data()->pop_back();
  EXPECT_EQ(FloatValues(short_float).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, ToFloat32ConvertsByValue) {
  const double d[] = {0.5, -3.0};
  std::string raw(sizeof(d), '\0');
  std::memcpy(raw.data(), d, sizeof(d));
  absl::StatusOr<v1::Tensor> f64 = MakeTensor(v1::DATA_TYPE_FLOAT64, {2}, raw);
  ASSERT_TRUE(f64.ok());
  EXPECT_EQ(*FloatValues(*ToFloat32(*f64)), (std::vector<float>{0.5f, -3.0f}));
  EXPECT_EQ(*FloatValues(*ToFloat32(*Int64Tensor({7, -2}, {2}))), (std::vector<float>{7, -2}));
  // uint8 is converted, not rescaled: the server does the 1/255.
  EXPECT_EQ(*FloatValues(*ToFloat32(*Uint8Tensor({255, 1}, {1, 2}))), (std::vector<float>{255, 1}));
}

TEST(TensorTest, SliceAndGatherRows) {
  absl::StatusOr<v1::Tensor> t = Int64Tensor({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2});
  ASSERT_TRUE(t.ok());
  absl::StatusOr<v1::Tensor> middle = SliceRows(*t, 1, 2);
  ASSERT_TRUE(middle.ok()) << middle.status();
  EXPECT_EQ(FormatShape(middle->shape()), "[2, 2]");
  EXPECT_EQ(*Int64Values(*middle), (std::vector<int64_t>{10, 11, 20, 21}));
  EXPECT_EQ(SliceRows(*t, 3, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(SliceRows(*t, 4, 0).ok());
  absl::StatusOr<v1::Tensor> picked = GatherRows(*t, {3, 0, 3});
  ASSERT_TRUE(picked.ok());
  EXPECT_EQ(*Int64Values(*picked), (std::vector<int64_t>{30, 31, 0, 1, 30, 31}));
  EXPECT_EQ(GatherRows(*t, {4}).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(SliceRows(*Int64Tensor({1}, {}), 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);  // a scalar has no rows
}

// Appending the slices gives back the whole; a mismatch is refused and changes nothing.
TEST(TensorTest, AppendRowsRebuildsTheWholeAndRefusesAMismatch) {
  absl::StatusOr<v1::Tensor> t = Int64Tensor({0, 1, 10, 11, 20, 21, 30, 31}, {4, 2});
  ASSERT_TRUE(t.ok());
  v1::Tensor whole;
  ASSERT_TRUE(AppendRows(&whole, *SliceRows(*t, 0, 1)).ok());
  ASSERT_TRUE(AppendRows(&whole, *SliceRows(*t, 1, 3)).ok());
  EXPECT_EQ(FormatShape(whole.shape()), "[4, 2]");
  EXPECT_EQ(*Int64Values(whole), *Int64Values(*t));
  const absl::Status wide = AppendRows(&whole, *Int64Tensor({1, 2, 3}, {1, 3}));
  EXPECT_EQ(wide.code(), absl::StatusCode::kInvalidArgument) << wide;
  EXPECT_THAT(std::string(wide.message()),
              ::testing::HasSubstr("must be int64 rows of shape [2]; got int64 [1, 3]"));
  EXPECT_EQ(AppendRows(&whole, *FloatTensor({1, 2}, {1, 2})).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*Int64Values(whole), *Int64Values(*t));
}

}  // namespace
}  // namespace adaptd

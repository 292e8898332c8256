#include "core/posterior.h"

#include <zlib.h>

#include <cstring>

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/tensor_io.h"

namespace adaptd {
namespace {

absl::StatusOr<Posterior> Make(at::TensorOptions opts = at::kDouble) {
  return Posterior::Create(at::tensor({0.5, -1.0, 2.0, 0.0}, opts),
                           at::tensor({1.0, 4.0, 0.25, 9.0}, opts), /*ess=*/100, /*delta=*/0.5);
}

TEST(PosteriorTest, SigmaIsInverseSqrtPrecision) {
  auto p = Make();
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<double> h = {1.0, 4.0, 0.25, 9.0};
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(p->Precision()[i].item<double>(), 100 * (h[i] + 0.5));
    EXPECT_NEAR(p->Sigma()[i].item<double>(), 1.0 / std::sqrt(100 * (h[i] + 0.5)), 1e-15);
  }
}

TEST(PosteriorTest, SamplesHaveThePosteriorMeanAndStd) {
  auto p = Make();
  ASSERT_TRUE(p.ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  constexpr int kSamples = 20000;
  at::Tensor draws = at::empty({kSamples, 4}, at::kDouble);
  at::Tensor out = at::empty({4}, at::kDouble);
  for (int s = 0; s < kSamples; ++s) {
    ASSERT_TRUE(p->SampleInto(out, gen).ok());
    draws[s].copy_(out);
  }
  const at::Tensor sigma = p->Sigma();
  // Standard errors: sigma / sqrt(S) for the mean, sigma / sqrt(2 S) for the std.
  const at::Tensor mean_z = (draws.mean(0) - p->mean()) / (sigma / std::sqrt(kSamples));
  const at::Tensor std_rel = draws.std(0) / sigma - 1.0;
  EXPECT_LT(mean_z.abs().max().item<double>(), 4.5);
  EXPECT_LT(std_rel.abs().max().item<double>(), 4.5 / std::sqrt(2.0 * kSamples));
}

TEST(PosteriorTest, SamplingIsReproducibleFromGeneratorState) {
  auto p = Make(at::kFloat);
  ASSERT_TRUE(p.ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
  at::Tensor a = at::empty({4}), b = at::empty({4});
  const at::Tensor state = gen.get_state();
  ASSERT_TRUE(p->SampleInto(a, gen).ok());
  gen.set_state(state);
  ASSERT_TRUE(p->SampleInto(b, gen).ok());
  EXPECT_TRUE(at::equal(a, b));
  ASSERT_TRUE(p->SampleInto(b, gen).ok());
  EXPECT_FALSE(at::equal(a, b));
}

TEST(PosteriorTest, SaveLoadIsBitExact) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(4);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    auto p = Posterior::Create(at::randn({1000}, gen, dtype), at::rand({1000}, gen, dtype),
                               60000, 1e-3);
    ASSERT_TRUE(p.ok());
    TensorMap map;
    p->AppendTo(map);
    auto parsed = ParseTensors(SerializeTensors(map));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    auto q = Posterior::FromTensors(*parsed);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_TRUE(at::equal(p->mean(), q->mean()));
    EXPECT_TRUE(at::equal(p->hess(), q->hess()));
    EXPECT_EQ(p->ess(), q->ess());
    EXPECT_EQ(p->delta(), q->delta());
  }
}

// A record whose CRC is right but whose shape's element count overflows int64 (two dims of
// 2^32 with 0 bytes of data) is refused as malformed, not passed on to an allocation that throws.
TEST(TensorRecordTest, AShapeThatOverflowsIsRejected) {
  TensorMap map;
  map["t"] = at::zeros({0, 0});
  std::string bytes = SerializeTensors(map);
  // magic 4, format 4, count 4, name length 4, name 1, dtype 1, rank 1: the dims follow.
  const int64_t big = int64_t{1} << 32;
  std::memcpy(&bytes[19], &big, 8);
  std::memcpy(&bytes[27], &big, 8);
  const uint32_t crc = static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size() - 4)));
  std::memcpy(&bytes[bytes.size() - 4], &crc, 4);
  const absl::Status status = ParseTensors(bytes).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), testing::HasSubstr("overflows"));
}

TEST(PosteriorTest, CorruptRecordIsRejected) {
  auto p = Make();
  ASSERT_TRUE(p.ok());
  TensorMap map;
  p->AppendTo(map);
  std::string bytes = SerializeTensors(map);
  std::string flipped = bytes;
  flipped[40] ^= 1;
  EXPECT_EQ(ParseTensors(flipped).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseTensors(bytes.substr(0, bytes.size() / 2)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseTensors("garbage").status().code(), absl::StatusCode::kInvalidArgument);
  map.erase("posterior.hess");
  EXPECT_THAT(std::string(Posterior::FromTensors(map).status().message()),
              testing::HasSubstr("missing tensor 'posterior.hess'"));
}

TEST(PosteriorTest, RejectsInvalidParameters) {
  const at::Tensor m = at::zeros({3});
  EXPECT_EQ(Posterior::Create(m, at::zeros({4}), 1, 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Posterior::Create(m, at::zeros({3}), 0, 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(Posterior::Create(m, at::full({3}, -1.0), 1, 0.1).status().message()),
              testing::HasSubstr("h + delta must be > 0"));
  EXPECT_EQ(Posterior::Create(at::zeros({3, 1}), at::zeros({3, 1}), 1, 0.1).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto p = Posterior::Create(m, at::ones({3}), 1, 0.1);
  ASSERT_TRUE(p.ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  at::Tensor wrong = at::empty({5});
  EXPECT_EQ(p->SampleInto(wrong, gen).code(), absl::StatusCode::kInvalidArgument);
}

TEST(PosteriorTest, CudaSamplingMatchesMoments) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  auto p = Posterior::Create(at::full({200000}, 0.5, opts), at::full({200000}, 3.0, opts), 10, 1.0);
  ASSERT_TRUE(p.ok()) << p.status();
  at::Generator gen = at::globalContext().defaultGenerator(at::Device(at::kCUDA, 0)).clone();
  gen.set_current_seed(5);
  at::Tensor out = at::empty({200000}, opts);
  ASSERT_TRUE(p->SampleInto(out, gen).ok());
  const double sigma = 1.0 / std::sqrt(10.0 * 4.0);
  EXPECT_NEAR(out.mean().item<double>(), 0.5, 5 * sigma / std::sqrt(200000.0));
  EXPECT_NEAR(out.std().item<double>(), sigma, 0.01 * sigma);
  TensorMap map;
  p->AppendTo(map);
  auto q = Posterior::FromTensors(*ParseTensors(SerializeTensors(map)));
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(at::equal(p->mean().cpu(), q->mean()));
}

}  // namespace
}  // namespace adaptd

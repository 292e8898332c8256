// The real server on 127.0.0.1:0, called through the real client.
#include "server/server.h"

#include <gtest/gtest.h>

#include "tests/testing/temp_dir.h"
#include <stdlib.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/convert.h"
#include "server/grpc_status.h"

namespace adaptd {
namespace {


TEST(ServerTest, ServesServerInfoToTheClient) {
  ServerOptions o;
  o.port = 0;
  TempDir dir;
  o.data_dir = dir.path();
  auto server = Server::Create(o);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);
  auto client = AdaptdClient::Create(absl::StrCat("127.0.0.1:", (*server)->port()));
  ASSERT_TRUE(client.ok());
  auto info = (*client)->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->version().empty());
  EXPECT_EQ(info->device(), "cpu");
  EXPECT_EQ(info->optimizers_size(), 1);
  EXPECT_EQ(info->optimizers(0), "ivon");
  (*server)->Shutdown();
}

TEST(ServerTest, ClientReportsUnavailableWithoutServer) {
  ServerOptions o;
  o.port = 0;
  TempDir dir;
  o.data_dir = dir.path();
  int port;
  {
    auto server = Server::Create(o);
    ASSERT_TRUE(server.ok());
    port = (*server)->port();
  }  // destroyed: nothing listens there now
  ClientOptions co;
  co.timeout_seconds = 2;
  auto client = AdaptdClient::Create(absl::StrCat("127.0.0.1:", port), co);
  ASSERT_TRUE(client.ok());
  const auto code = (*client)->GetServerInfo().status().code();
  EXPECT_TRUE(code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded)
      << code;
}

TEST(ServerTest, RefusesToStartWithoutADataDirectory) {
  ServerOptions o;
  o.port = 0;
  EXPECT_EQ(Server::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerTest, RefusesANegativeKeepVersions) {
  ServerOptions o;
  o.port = 0;
  TempDir dir;
  o.data_dir = dir.path();
  o.keep_versions = -1;
  auto bad = Server::Create(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("keep_versions must be >= 0 (0: keep every version); got -1"),
            std::string::npos)
      << bad.status();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// A device the machine lacks, or a misspelt one, stops the start with a reason; nothing is
// written to the data directory.
TEST(ServerTest, RefusesADeviceItCannotTrainOn) {
  ServerOptions o;
  o.port = 0;
  TempDir dir;
  o.data_dir = dir.path();
  o.device = "gpu";
  auto bad = Server::Create(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("cpu, cuda or cuda:N"), std::string::npos) << bad.status();
  o.device = "cuda:99";
  auto missing = Server::Create(o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition) << missing.status();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// The K-prior's weight term: the posterior precision unless the config asks for the prior's;
// a config stored before the field existed (empty) keeps the posterior it was trained with.
TEST(ConvertTest, WeightPrecisionReachesTheAdaptConfig) {
  absl::StatusOr<v1::LearningConfig> normal = NormalizeConfig(v1::LearningConfig());
  ASSERT_TRUE(normal.ok()) << normal.status();
  EXPECT_EQ(normal->weight_precision(), "posterior");
  EXPECT_TRUE(ConfigFromProto(*normal)->posterior_precision);
  v1::LearningConfig prior;
  prior.set_weight_precision("prior");
  absl::StatusOr<v1::LearningConfig> loose = NormalizeConfig(prior);
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_FALSE(ConfigFromProto(*loose)->posterior_precision);
  v1::LearningConfig stored = *normal;
  stored.clear_weight_precision();
  EXPECT_TRUE(ConfigFromProto(stored)->posterior_precision);
}

TEST(GrpcStatusTest, EveryCodeRoundTrips) {
  for (int c = 0; c <= 16; ++c) {
    const absl::Status s(static_cast<absl::StatusCode>(c), c == 0 ? "" : "message");
    const absl::Status back = FromGrpcStatus(ToGrpcStatus(s));
    EXPECT_EQ(back.code(), s.code()) << c;
    EXPECT_EQ(back.message(), s.message()) << c;
  }
  const std::string longmsg(5000, 'x');
  const grpc::Status capped = ToGrpcStatus(absl::InternalError(longmsg));
  EXPECT_LT(capped.error_message().size(), 1100u);
  EXPECT_NE(capped.error_message().find("(truncated)"), std::string::npos);
}

}  // namespace
}  // namespace adaptd

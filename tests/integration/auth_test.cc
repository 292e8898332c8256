// Bearer-token roles, and TLS / mutual TLS with certificates made for the test.
#include <cstdlib>
#include <fstream>
#include <functional>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/files.h"
#include "tests/integration/fixtures.h"
#include "tests/integration/server_process.h"

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

template <typename T>
absl::StatusCode Code(const absl::StatusOr<T>& s) {
  return s.status().code();
}

// A server under `dir` whose tokens file gives admintok, writetok and readtok their roles.
absl::StatusOr<std::unique_ptr<ServerProcess>> StartWithThreeRoles(const TempDir& dir) {
  const std::string tokens = dir.path() + "/tokens";
  std::ofstream(tokens) << "# token role\nadmintok admin\nwritetok writer\nreadtok reader\n";
  return ServerProcess::Start(dir.path() + "/data", {"--tokens_file=" + tokens});
}

TEST(AuthTest, RolesGateTheCalls) {
  TempDir dir;
  auto server = StartWithThreeRoles(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  auto admin = (*server)->Client("admintok");
  auto writer = (*server)->Client("writetok");
  auto reader = (*server)->Client("readtok");
  auto anonymous = (*server)->Client();
  auto stranger = (*server)->Client("guess");

  EXPECT_EQ(Code(anonymous->ListModels()), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Code(stranger->ListModels()), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Code(anonymous->GetServerInfo()), absl::StatusCode::kUnauthenticated);

  EXPECT_EQ(Code(reader->CreateModel(BlobModel("m", false))), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Code(writer->CreateModel(BlobModel("m", false))), absl::StatusCode::kPermissionDenied);
  ASSERT_TRUE(admin->CreateModel(BlobModel("m", false)).ok());

  const Dataset d = BlobTask(100, {0, 1}, 1);
  auto denied = StreamData(*reader, "m", 0, v1::SPLIT_TRAIN, {}, d);
  EXPECT_EQ(Code(denied), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(denied.status().message().find("needs the writer role; the token has reader"),
            std::string::npos)
      << denied.status();
  EXPECT_EQ(Code(StreamData(*anonymous, "m", 0, v1::SPLIT_TRAIN, {}, d)),
            absl::StatusCode::kUnauthenticated);
  auto streamed = StreamData(*writer, "m", 0, v1::SPLIT_TRAIN, {}, d);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  WaitJobs(*reader, *streamed);  // readers may watch jobs

  EXPECT_TRUE(reader->GetModel("m").ok());
  EXPECT_EQ(reader->GetModel("m")->tasks(0).train_examples(), 100);
  EXPECT_EQ(Code(reader->DeleteModel("m")), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Code(writer->DeleteModel("m")), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Code(reader->Rollback("m", 0)), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Code(reader->Export("m")), absl::StatusCode::kPermissionDenied);
  v1::UpdateConfigRequest update;
  update.set_name("m");
  update.mutable_config()->set_epochs(1);
  update.mutable_update_mask()->add_paths("epochs");
  EXPECT_EQ(Code(writer->UpdateConfig(update)), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(reader->GetModel("m")->config().epochs(), 1);
  EXPECT_TRUE(reader->GetModel("m").ok());  // nothing was deleted
  ASSERT_TRUE(admin->DeleteModel("m").ok());
}

// Every RPC against every role, as docs/api.md's table gives them: a token below the RPC's role
// is refused with PERMISSION_DENIED, and one at or above it gets past the check (the calls name
// a model that does not exist, or a bad request, so nothing changes).
TEST(AuthTest, EveryCallNeedsTheRoleTheTableGives) {
  TempDir dir;
  auto server = StartWithThreeRoles(dir);
  ASSERT_TRUE(server.ok()) << server.status();
  enum Role { kReader, kWriter, kAdmin };
  using Call = std::function<absl::Status(const AdaptdClient&)>;
  v1::StreamHeader header;
  header.set_model("nope");
  v1::UpdateConfigRequest update;
  update.set_name("nope");
  update.mutable_update_mask()->add_paths("epochs");
  v1::PredictRequest predict;
  predict.set_model("nope");
  v1::InfluenceRequest influence;
  influence.set_model("nope");
  v1::MemoryMapRequest memory_map;
  memory_map.set_model("nope");
  const std::vector<std::tuple<std::string, Role, Call>> calls = {
      {"GetServerInfo", kReader, [](const AdaptdClient& c) { return c.GetServerInfo().status(); }},
      {"CreateModel", kAdmin, [](const AdaptdClient& c) { return c.CreateModel({}).status(); }},
      {"GetModel", kReader, [](const AdaptdClient& c) { return c.GetModel("nope").status(); }},
      {"ListModels", kReader, [](const AdaptdClient& c) { return c.ListModels().status(); }},
      {"DeleteModel", kAdmin, [](const AdaptdClient& c) { return c.DeleteModel("nope").status(); }},
      {"ListVersions", kReader, [](const AdaptdClient& c) { return c.ListVersions("nope").status(); }},
      {"Rollback", kAdmin, [](const AdaptdClient& c) { return c.Rollback("nope", 0).status(); }},
      {"UpdateConfig", kAdmin, [&](const AdaptdClient& c) { return c.UpdateConfig(update).status(); }},
      {"Export", kAdmin, [](const AdaptdClient& c) { return c.Export("nope").status(); }},
      {"Import", kAdmin, [](const AdaptdClient& c) { return c.Import("nope", "not a snapshot").status(); }},
      {"StreamExamples", kWriter,
       [&](const AdaptdClient& c) { return c.StreamExamples(header, std::vector<v1::ExampleBatch>{}).status(); }},
      {"WatchJob", kReader, [](const AdaptdClient& c) { return c.WatchJob("nope").status(); }},
      {"CancelJob", kWriter, [](const AdaptdClient& c) { return c.CancelJob("nope").status(); }},
      {"ListJobs", kReader, [](const AdaptdClient& c) { return c.ListJobs("nope").status(); }},
      {"Predict", kReader, [&](const AdaptdClient& c) { return c.Predict(predict).status(); }},
      {"Influence", kReader, [&](const AdaptdClient& c) { return c.Influence(influence).status(); }},
      {"MemoryMap", kReader, [&](const AdaptdClient& c) { return c.MemoryMap(memory_map).status(); }},
      {"Evaluate", kReader, [](const AdaptdClient& c) { return c.Evaluate("nope").status(); }},
  };
  const std::vector<std::pair<Role, std::unique_ptr<AdaptdClient>>> clients = [&] {
    std::vector<std::pair<Role, std::unique_ptr<AdaptdClient>>> out;
    out.emplace_back(kReader, (*server)->Client("readtok"));
    out.emplace_back(kWriter, (*server)->Client("writetok"));
    out.emplace_back(kAdmin, (*server)->Client("admintok"));
    return out;
  }();
  for (const auto& [rpc, needs, call] : calls) {
    for (const auto& [role, client] : clients) {
      const absl::Status s = call(*client);
      if (role < needs) {
        EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << rpc << " as role " << role << ": " << s;
      } else {
        EXPECT_NE(s.code(), absl::StatusCode::kPermissionDenied) << rpc << " as role " << role << ": " << s;
        EXPECT_NE(s.code(), absl::StatusCode::kUnauthenticated) << rpc << " as role " << role << ": " << s;
      }
    }
  }
  EXPECT_EQ((*clients.back().second).ListModels()->models_size(), 0);
}

// Writes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl.
bool MakeCertificates(const std::string& d) {
  const std::string cmd =
      "cd '" + d + "' && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key "
      "-out ca.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr && "
      "printf 'subjectAltName=IP:127.0.0.1' > san.ext && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-extfile san.ext -out server.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr && "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-out client.pem";
  return std::system((cmd + " > /dev/null 2>&1").c_str()) == 0;
}

std::string Read(const std::string& path) {
  auto s = ReadFile(path);
  return s.ok() ? *s : "";
}

TEST(AuthTest, TlsAndMutualTls) {
  TempDir dir;
  if (!MakeCertificates(dir.path())) GTEST_SKIP() << "openssl is not available";
  const std::string& d = dir.path();
  auto server = ServerProcess::Start(d + "/data", {"--tls_cert=" + d + "/server.pem",
                                                   "--tls_key=" + d + "/server.key",
                                                   "--tls_client_ca=" + d + "/ca.pem"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions o;
  o.timeout_seconds = 10;
  auto plain = AdaptdClient::Create((*server)->target(), o);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE((*plain)->GetServerInfo().ok());  // plaintext cannot talk to a TLS server
  o.root_certs_pem = Read(d + "/ca.pem");
  auto no_cert = AdaptdClient::Create((*server)->target(), o);
  ASSERT_TRUE(no_cert.ok());
  EXPECT_FALSE((*no_cert)->GetServerInfo().ok());  // mTLS: a client certificate is required
  o.client_cert_pem = Read(d + "/client.pem");
  o.client_key_pem = Read(d + "/client.key");
  auto mutual = AdaptdClient::Create((*server)->target(), o);
  ASSERT_TRUE(mutual.ok());
  auto info = (*mutual)->GetServerInfo();
  EXPECT_TRUE(info.ok()) << info.status();
}

}  // namespace
}  // namespace adaptd

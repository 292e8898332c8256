// The real server on 127.0.0.1:0, called through the real client.
#include "server/auth.h"
#include "server/server.h"

#include <gtest/gtest.h>

#include "tests/testing/temp_dir.h"
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/convert.h"
#include "server/evaluation.h"
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

TEST(ServerTest, RefusesSettingsOutOfRange) {
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
  o.keep_versions = 0;
  o.keep_jobs = 0;
  bad = Server::Create(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("keep_jobs must be >= 1; got 0"), std::string::npos)
      << bad.status();
  o.keep_jobs = 1;
  o.max_buffered_bytes = 0;
  bad = Server::Create(o);
  EXPECT_EQ(bad.status().message(), "max_buffered_bytes must be >= 1; got 0") << bad.status();
  o.max_buffered_bytes = 1;
  // No queue would refuse every training stream; no training slot would leave every job queued.
  o.queue_capacity = 0;
  bad = Server::Create(o);
  EXPECT_EQ(bad.status().message(), "queue_capacity must be >= 1; got 0") << bad.status();
  o.queue_capacity = 1;
  o.max_concurrent_jobs = 0;
  bad = Server::Create(o);
  EXPECT_EQ(bad.status().message(), "max_concurrent_jobs must be >= 1; got 0") << bad.status();
  o.max_concurrent_jobs = 1;
  o.training_nice = -5;
  bad = Server::Create(o);
  EXPECT_EQ(bad.status().message(), "training_nice must be in [0, 19]; got -5") << bad.status();
  o.training_nice = 10;
  // Below gRPC's pollers no call would get a thread.
  // Above a million the quota's one more thread (for gRPC's poller) could overflow.
  for (int threads : {3, 1000001, std::numeric_limits<int>::max()}) {
    o.max_threads = threads;
    bad = Server::Create(o);
    EXPECT_EQ(bad.status().message(), absl::StrCat("max_threads must be in [4, 1000000]; got ",
                                                   threads))
        << bad.status();
  }
  o.max_threads = 4;
  // Out of 16 bits a port used to wrap (70000 listened on 4464); a negative one said "in use".
  for (int port : {-5, 65536, 70000}) {
    o.port = port;
    bad = Server::Create(o);
    EXPECT_EQ(bad.status().message(),
              absl::StrCat("port must be in [0, 65535] (0: any free port); got ", port))
        << bad.status();
  }
  o.port = 0;
  for (int port : {-7, 99999}) {
    o.metrics_port = port;
    bad = Server::Create(o);
    EXPECT_EQ(bad.status().message(),
              absl::StrCat("metrics_port must be in [-1, 65535] (-1: off, 0: any free port); got ",
                           port))
        << bad.status();
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// One server per data directory, and one per port: a second one is refused with the reason,
// and the directory is free again once the first is gone.
TEST(ServerTest, RefusesADataDirectoryOrAPortInUse) {
  TempDir dir, other;
  ServerOptions o;
  o.port = 0;
  o.data_dir = dir.path();
  auto first = Server::Create(o);
  ASSERT_TRUE(first.ok()) << first.status();
  auto same_dir = Server::Create(o);
  EXPECT_EQ(same_dir.status().code(), absl::StatusCode::kFailedPrecondition) << same_dir.status();
  EXPECT_NE(same_dir.status().message().find("is in use by another adaptd server"),
            std::string::npos)
      << same_dir.status();
  ServerOptions same_port = o;
  same_port.data_dir = other.path();
  same_port.port = (*first)->port();
  auto busy = Server::Create(same_port);
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kUnavailable) << busy.status();
  first->reset();
  o.metrics_port = 0;
  first = Server::Create(o);
  ASSERT_TRUE(first.ok()) << first.status();
  ServerOptions same_metrics = same_port;
  same_metrics.port = 0;
  same_metrics.metrics_port = (*first)->metrics_port();
  auto busy_metrics = Server::Create(same_metrics);
  EXPECT_EQ(busy_metrics.status().code(), absl::StatusCode::kUnavailable) << busy_metrics.status();
  first->reset();
  auto again = Server::Create(o);
  EXPECT_TRUE(again.ok()) << again.status();
}

// A token listed twice is refused (with both lines, not the token), whatever the roles.
TEST(TokenAuthTest, RefusesARepeatedToken) {
  auto twice = TokenAuth::Parse("tok reader\n# the admins\nboss admin\ntok admin\n");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(twice.status().message(),
            "tokens file line 4: its token is already on line 1; each token must appear once");
  auto ok = TokenAuth::Parse("tok reader\nboss admin\n");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->enabled());
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

// Every LearningConfig field reaches the AdaptConfig member it names: each is set to a value
// no other field has, so a field read into the wrong member, or not read, fails. Fields the
// server keeps for itself are listed; a field added to the message and not named here fails
// too.
TEST(ConvertTest, EveryLearningConfigFieldReachesItsAdaptConfigMember) {
  v1::LearningConfig c;
  c.set_method("ewc");
  c.mutable_ivon()->set_lr(0.011);
  c.mutable_ivon()->set_beta1(0.812);
  c.mutable_ivon()->set_beta2(0.913);
  c.mutable_ivon()->set_hess_init(0.014);
  c.mutable_ivon()->set_weight_decay(0.0015);
  c.mutable_ivon()->set_clip_radius(0.016);
  c.mutable_ivon()->set_ess_factor(17);
  c.set_epochs(18);
  c.set_min_steps(19);
  c.set_batch_size(20);
  c.set_memory_points(21);
  c.set_selection("sensitivity");
  c.set_memory_batch_size(22);
  c.set_memory_weight(2.3);
  c.set_replay_correction(true);
  c.set_distill_temperature(2.4);
  c.set_new_input_weight(2.5);
  c.set_curvature_weight(2.6);
  c.set_curvature_points(27);
  c.set_weight_precision("prior");
  c.set_fromp_tau(2.8);
  c.set_ewc_lambda(2.9);
  c.set_seed(30);
  c.set_memory_mixup(31);
  absl::StatusOr<AdaptConfig> a = ConfigFromProto(c);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->method, Method::kEwc);
  EXPECT_EQ(a->ivon.lr, 0.011);
  EXPECT_EQ(a->ivon.beta1, 0.812);
  EXPECT_EQ(a->ivon.beta2, 0.913);
  EXPECT_EQ(a->ivon.hess_init, 0.014);
  EXPECT_EQ(a->ivon.weight_decay, 0.0015);
  EXPECT_EQ(a->ivon.clip_radius, 0.016);
  EXPECT_EQ(a->ess_factor, 17);
  EXPECT_EQ(a->epochs, 18);
  EXPECT_EQ(a->min_steps, 19);
  EXPECT_EQ(a->batch_size, 20);
  EXPECT_EQ(a->memory_points, 21);
  EXPECT_EQ(a->selection, SelectionMethod::kSensitivity);
  EXPECT_EQ(a->memory_batch_size, 22);
  EXPECT_EQ(a->memory_weight, 2.3);
  EXPECT_TRUE(a->replay_correction);
  EXPECT_EQ(a->distill_temperature, 2.4);
  EXPECT_EQ(a->new_input_weight, 2.5);
  EXPECT_EQ(a->curvature_weight, 2.6);
  EXPECT_EQ(a->curvature_points, 27);
  EXPECT_FALSE(a->posterior_precision);
  EXPECT_EQ(a->fromp_tau, 2.8);
  EXPECT_EQ(a->ewc_lambda, 2.9);
  EXPECT_EQ(a->seed, 30u);
  EXPECT_EQ(a->memory_mixup, 31);
  // The fields set above, and those the server keeps for itself (the optimizer is always IVON;
  // head mode, online chunks and the timer act before a job starts).
  const std::set<std::string> covered = {
      "method", "ivon", "epochs", "min_steps", "batch_size", "memory_points", "selection",
      "memory_batch_size", "memory_weight", "replay_correction", "distill_temperature",
      "new_input_weight", "curvature_weight", "curvature_points", "weight_precision", "fromp_tau",
      "ewc_lambda", "seed", "memory_mixup", "optimizer", "head_mode", "adapt_every", "adapt_after_seconds"};
  const std::set<std::string> ivon_covered = {"lr", "beta1", "beta2", "hess_init", "weight_decay",
                                              "clip_radius", "ess_factor"};
  for (const auto& [descriptor, names] :
       {std::pair{v1::LearningConfig::descriptor(), &covered}, {v1::IvonConfig::descriptor(), &ivon_covered}}) {
    for (int i = 0; i < descriptor->field_count(); ++i) {
      EXPECT_TRUE(names->count(descriptor->field(i)->name()))
          << descriptor->name() << "." << descriptor->field(i)->name() << " is not checked here";
    }
  }
}

google::protobuf::FieldMask Mask(std::initializer_list<const char*> paths) {
  google::protobuf::FieldMask mask;
  for (const char* p : paths) mask.add_paths(p);
  return mask;
}

// UpdateConfig's merge: only the named fields change, a named field at zero takes its default,
// "ivon" replaces all of IVON's settings, and what the model's state depends on cannot change.
TEST(ConvertTest, MergeConfigChangesOnlyTheNamedFields) {
  v1::LearningConfig created;
  created.set_method("replay");
  created.set_epochs(7);
  created.set_memory_weight(3);
  created.mutable_ivon()->set_beta2(0.999);
  created.mutable_ivon()->set_clip_radius(0.1);
  const v1::LearningConfig current = *NormalizeConfig(created);
  v1::LearningConfig update;
  update.set_epochs(20);
  update.set_batch_size(5);  // not in the mask: ignored
  update.mutable_ivon()->set_lr(0.05);

  auto merged = MergeConfig(current, update, Mask({"epochs", "ivon.lr"}));
  ASSERT_TRUE(merged.ok()) << merged.status();
  v1::LearningConfig expected = current;
  expected.set_epochs(20);
  expected.mutable_ivon()->set_lr(0.05);
  EXPECT_EQ(merged->SerializeAsString(), expected.SerializeAsString()) << merged->DebugString();

  // Zero (or absent, for the optional memory_weight) is the default, as in CreateModel.
  merged = MergeConfig(current, v1::LearningConfig(), Mask({"epochs", "memory_weight"}));
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_EQ(merged->epochs(), 10);
  EXPECT_DOUBLE_EQ(merged->memory_weight(), 1.0);
  v1::LearningConfig off;
  off.set_memory_weight(0);
  EXPECT_DOUBLE_EQ(MergeConfig(current, off, Mask({"memory_weight"}))->memory_weight(), 0.0);

  // The whole message: beta2 and the clip go back to their defaults.
  merged = MergeConfig(current, update, Mask({"ivon"}));
  ASSERT_TRUE(merged.ok()) << merged.status();
  EXPECT_DOUBLE_EQ(merged->ivon().lr(), 0.05);
  EXPECT_DOUBLE_EQ(merged->ivon().beta2(), 0.9999);
  EXPECT_EQ(merged->ivon().clip_radius(), 0.0);
  EXPECT_EQ(merged->epochs(), 7);

  // The same method and head mode may be named.
  v1::LearningConfig same;
  same.set_method("replay");
  EXPECT_TRUE(MergeConfig(current, same, Mask({"method", "head_mode"})).ok());

  auto refused = [&](const v1::LearningConfig& u, const google::protobuf::FieldMask& m,
                     const std::string& message) {
    absl::StatusOr<v1::LearningConfig> r = MergeConfig(current, u, m);
    ASSERT_FALSE(r.ok()) << r->DebugString();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(message), absl::string_view::npos) << r.status();
  };
  refused(update, Mask({}), "update_mask must name at least one LearningConfig field");
  refused(update, Mask({"epochs", "learning_rate"}),
          "\"learning_rate\" is not a LearningConfig field");
  refused(update, Mask({"ivon.nope"}), "\"ivon.nope\" is not a LearningConfig field");
  // Empty segments: "ivon." used to pass as "ivon" and reset every IVON setting.
  for (const char* path : {"ivon.", ".epochs", "ivon..lr", ""}) {
    refused(update, Mask({path}), absl::StrCat("\"", path, "\" is not a LearningConfig field"));
  }
  v1::LearningConfig kprior;
  kprior.set_method("kprior");
  refused(kprior, Mask({"method"}),
          "config.method cannot change: the model's state is built for \"replay\"; got "
          "\"kprior\"");
  v1::LearningConfig multi;
  multi.set_head_mode(v1::HEAD_MODE_MULTI);
  refused(multi, Mask({"head_mode"}), "config.head_mode cannot change");
  v1::LearningConfig negative;
  negative.set_epochs(-1);
  refused(negative, Mask({"epochs"}), "epochs");
  negative.set_adapt_after_seconds(-1);
  refused(negative, Mask({"adapt_after_seconds"}), "config.adapt_after_seconds must be in");
}

// A version as the catalog lists it: the task it learnt (-1: none), its evaluation, and the
// examples it has learnt of each task.
v1::VersionInfo Version(int64_t version, int64_t task, std::vector<double> accuracy,
                        std::map<int64_t, int64_t> learnt) {
  v1::VersionInfo v;
  v.set_version(version);
  v.set_task_id(task);
  for (size_t t = 0; t < accuracy.size(); ++t) {
    v1::TaskAccuracy* a = v.add_eval();
    a->set_task_id(static_cast<int64_t>(t));
    a->set_accuracy(accuracy[t]);
  }
  for (const auto& [t, n] : learnt) (*v.mutable_learnt()->mutable_per_task())[t] = n;
  return v;
}

// Evaluate's figures on accuracy matrices worked out by hand: forgetting is the drop from the
// best accuracy at the end of any task from the task's own on (so a task whose accuracy rose
// and fell again has forgotten from its peak, not from when it was learnt), BWT compares now
// with the end of the task itself, and a version a rollback went back past is not an end.
TEST(EvaluationTest, ForgettingAndTransferFollowTheServedHistory) {
  const std::vector<v1::VersionInfo> versions = {
      Version(0, -1, {}, {}),
      Version(1, 0, {0.75}, {{0, 100}}),
      Version(2, 1, {0.875, 0.75}, {{0, 100}, {1, 100}}),
      Version(3, 2, {0.8125, 0.5, 0.9375}, {{0, 100}, {1, 100}, {2, 100}}),
  };
  const v1::EvaluateResponse r = SummarizeVersions(versions, versions.back());
  EXPECT_EQ(r.version(), 3);
  ASSERT_EQ(r.rows_size(), 4);
  EXPECT_EQ(r.rows(0).accuracy_size(), 3);
  EXPECT_TRUE(std::isnan(r.rows(1).accuracy(1)));
  EXPECT_DOUBLE_EQ(r.average_accuracy(), (0.8125 + 0.5 + 0.9375) / 3);
  ASSERT_EQ(r.forgetting_size(), 3);
  EXPECT_DOUBLE_EQ(r.forgetting(0), 0.875 - 0.8125);  // from its peak after task 1
  EXPECT_DOUBLE_EQ(r.forgetting(1), 0.75 - 0.5);
  EXPECT_DOUBLE_EQ(r.forgetting(2), 0);
  EXPECT_DOUBLE_EQ(r.average_forgetting(), (0.0625 + 0.25) / 2);  // the tasks before the last
  EXPECT_DOUBLE_EQ(r.backward_transfer(), ((0.8125 - 0.75) + (0.5 - 0.75)) / 2);

  // A rollback to version 2 (as version 4, which learnt no task of its own, and has the third
  // task's evaluation measured now): version 3 is no longer the end of task 2.
  std::vector<v1::VersionInfo> rolled = versions;
  rolled.push_back(Version(4, -1, {0.875, 0.75, 0.125}, {{0, 100}, {1, 100}}));
  const v1::EvaluateResponse b = SummarizeVersions(rolled, rolled.back());
  EXPECT_EQ(b.version(), 4);
  EXPECT_EQ(b.rows_size(), 5);
  EXPECT_DOUBLE_EQ(b.forgetting(0), 0);
  EXPECT_DOUBLE_EQ(b.forgetting(1), 0);
  EXPECT_TRUE(std::isnan(b.forgetting(2)));  // learnt only by a version rolled back past
  EXPECT_DOUBLE_EQ(b.average_forgetting(), 0);
  EXPECT_DOUBLE_EQ(b.backward_transfer(), 0.875 - 0.75);

  // One task: nothing to compare yet.
  const v1::EvaluateResponse one = SummarizeVersions({versions[0], versions[1]}, versions[1]);
  EXPECT_DOUBLE_EQ(one.forgetting(0), 0);
  EXPECT_TRUE(std::isnan(one.average_forgetting()));
  EXPECT_TRUE(std::isnan(one.backward_transfer()));
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

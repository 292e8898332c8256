// Bad input gets the right status code with a message naming what was expected and what came,
// and changes nothing: the catalog and every file under the data directory are compared before
// and after.
#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "adaptd/v1/learning.grpc.pb.h"
#include "server/convert.h"
#include "tests/integration/fixtures.h"
#include "tests/integration/server_process.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

using namespace testing_service;  // NOLINT

#define EXPECT_STATUS(expr, want, text)                                                 \
  do {                                                                                  \
    const absl::Status s_ = (expr);                                                     \
    EXPECT_EQ(s_.code(), absl::StatusCode::want) << #expr << ": " << s_;                \
    EXPECT_NE(std::string(s_.message()).find(text), std::string::npos) << #expr << ": " << s_; \
  } while (0)

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = ServerProcess::Start(dir_.path(), {"--max_message_mb=1"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = server_->Client();
    ASSERT_TRUE(client_->CreateModel(BlobModel("m", false)).ok());
    ASSERT_TRUE(client_->CreateModel(BlobModel("h", true)).ok());
    auto s = StreamData(*client_, "m", 0, v1::SPLIT_TRAIN, {}, BlobTask(100, {0, 1}, 1));
    ASSERT_TRUE(s.ok()) << s.status();
    WaitJobs(*client_, *s);
    catalog_before_ = CatalogDump(dir_.path());
    files_before_ = DirDigest(dir_.path());
  }

  void TearDown() override {
    EXPECT_EQ(CatalogDump(dir_.path()), catalog_before_);
    EXPECT_EQ(DirDigest(dir_.path()), files_before_);
  }

  // One stream of `batches` to model `model` task `task`.
  absl::Status Stream(const std::vector<v1::ExampleBatch>& batches, const std::string& model = "m",
                      int64_t task = 1, std::vector<int64_t> classes = {}) {
    v1::StreamHeader h;
    h.set_model(model);
    h.set_task_id(task);
    for (int64_t c : classes) h.add_classes(c);
    return client_->StreamExamples(h, batches).status();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<AdaptdClient> client_;
  std::string catalog_before_;
  std::map<std::string, uint32_t> files_before_;
};

TEST_F(BadInputTest, StreamsAreRejectedWholeAndChangeNothing) {
  const Dataset good = BlobTask(16, {2, 3}, 5);
  const v1::ExampleBatch ok_batch = MakeBatch(good.x, good.y);

  EXPECT_STATUS(Stream({MakeBatch(good.x.to(at::kDouble), good.y)}), kInvalidArgument,
                "batch.x: dtype must be float32 (or uint8 pixels); got float64");
  v1::ExampleBatch unknown_dtype = ok_batch;
  unknown_dtype.mutable_x()->set_dtype(static_cast<v1::DataType>(42));
  EXPECT_STATUS(Stream({unknown_dtype}), kInvalidArgument,
                "batch.x: dtype must be float32 (or uint8 pixels); got dtype number 42");
  EXPECT_STATUS(Stream({MakeBatch(good.x.narrow(1, 0, 5), good.y)}), kInvalidArgument,
                "batch.x: shape must be [B, 6] with B >= 1; got [16, 5]");
  at::Tensor nan_x = good.x.clone();
  nan_x[3][2] = std::nanf("");
  EXPECT_STATUS(Stream({MakeBatch(nan_x, good.y)}), kInvalidArgument,
                "must be finite; found 1 NaN/Inf value(s), the first at flat index 20");
  at::Tensor inf_x = good.x.clone();
  inf_x[0][0] = INFINITY;
  EXPECT_STATUS(Stream({MakeBatch(inf_x, good.y)}), kInvalidArgument, "must be finite");
  at::Tensor bad_y = good.y.clone();
  bad_y[4] = 7;
  EXPECT_STATUS(Stream({MakeBatch(good.x, bad_y)}), kInvalidArgument,
                "batch.y: labels must lie in [0, 4); got values in [2, 7]");
  EXPECT_STATUS(Stream({MakeBatch(good.x, good.y.to(at::kFloat))}), kInvalidArgument,
                "batch.y: dtype must be int64; got float32");
  EXPECT_STATUS(Stream({MakeBatch(good.x, good.y.narrow(0, 0, 15))}), kInvalidArgument,
                "batch.y: shape must be [16] (one per example); got [15]");
  v1::ExampleBatch truncated = ok_batch;
  truncated.mutable_x()->mutable_raw_data()->resize(100);
  EXPECT_STATUS(Stream({truncated}), kInvalidArgument,
                "a float32 tensor of shape [16, 6] needs 384 bytes of raw_data; got 100");
  // A bad batch after good ones: the whole stream is refused, the good batches too.
  EXPECT_STATUS(Stream({ok_batch, ok_batch, MakeBatch(nan_x, good.y)}), kInvalidArgument,
                "batch 2: batch.x must be finite");
  // Over the server's 1 MiB limit (gRPC refuses it before the handler sees it).
  const Dataset big = BlobTask(50000, {2, 3}, 6);
  EXPECT_STATUS(Stream({MakeBatch(big.x, big.y)}), kResourceExhausted, "");
  EXPECT_STATUS(Stream({ok_batch, MakeBatch(big.x, big.y)}), kResourceExhausted, "");
  // Headers.
  EXPECT_STATUS(Stream({ok_batch}, "nope"), kNotFound, "no model named \"nope\"");
  EXPECT_STATUS(Stream({ok_batch}, "m", 5), kInvalidArgument,
                "header.task_id must be an existing task or the next one, in [0, 1]; got 5");
  EXPECT_STATUS(Stream({ok_batch}, "h", 0), kInvalidArgument,
                "must name its classes in header.classes");
  EXPECT_STATUS(Stream({ok_batch}, "h", 0, {0, 1}), kInvalidArgument,
                "is not one of task 0's classes [0, 1]");
  EXPECT_STATUS(Stream({ok_batch}, "h", 0, {0, 9}), kInvalidArgument,
                "header.classes must lie in [0, 4); got 9");
  v1::ExampleBatch negative_id = ok_batch;
  *negative_id.mutable_client_ids() = TensorToProto(at::full({good.size()}, -1, at::kLong));
  EXPECT_STATUS(Stream({negative_id}), kInvalidArgument,
                "batch.client_ids must be >= 0 (answers use -1 for none); got -1");
  EXPECT_STATUS(Stream({ok_batch}, "h", 0, {1, 1}), kInvalidArgument,
                "header.classes must not repeat a class; got [1, 1]");
  // Task 0 of "m" was first streamed without classes: a later stream cannot add a label set.
  EXPECT_STATUS(Stream({ok_batch}, "m", 0, {0, 1}), kInvalidArgument,
                "task 0's first stream named no classes");
  v1::StreamHeader empty;
  EXPECT_STATUS(client_->StreamExamples(empty, std::vector<v1::ExampleBatch>{}).status(), kNotFound,
                "no model named \"\"");
  // The first message must be the header, and a stream must carry one. The client always sends
  // it, so these go through the generated stub.
  auto stub = v1::LearningService::NewStub(
      grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  auto raw = [&](const std::vector<v1::StreamExamplesRequest>& messages) {
    grpc::ClientContext ctx;
    v1::StreamExamplesResponse response;
    auto writer = stub->StreamExamples(&ctx, &response);
    for (const v1::StreamExamplesRequest& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  };
  v1::StreamExamplesRequest batch_first;
  *batch_first.mutable_batch() = ok_batch;
  EXPECT_STATUS(raw({batch_first}), kInvalidArgument,
                "the first message of a stream must be its header");
  EXPECT_STATUS(raw({}), kInvalidArgument, "the stream carried no header");
  // A stream is all-or-nothing: without its end message (a client that half-closes early) it
  // stores nothing, and nothing may come after the end message, or in place of a batch.
  v1::StreamExamplesRequest header;
  header.mutable_header()->set_model("m");
  header.mutable_header()->set_task_id(1);
  v1::StreamExamplesRequest end;
  end.mutable_end()->set_examples(good.size());
  EXPECT_STATUS(raw({header, batch_first}), kAborted,
                "the stream ended without its end message (cancelled or cut short)");
  EXPECT_STATUS(raw({header, batch_first, end, batch_first}), kInvalidArgument,
                "nothing may follow the stream's end message");
  EXPECT_STATUS(raw({header, batch_first, header}), kInvalidArgument,
                "message 2 of the stream must be a batch; only the first is a header");
}

// An answer over the server's message limit (1 MiB here) from a request within it: 30,000 rows
// of 6 floats ask in 720 kB and would be answered in about 1.6 MB. The server refuses it with
// the remedy, rather than leave it to gRPC's send, which names none (and which the metrics
// counted as OK).
TEST_F(BadInputTest, AnAnswerOverTheMessageLimitIsRefusedWithTheRemedy) {
  v1::PredictRequest r;
  r.set_model("m");
  r.set_mode(v1::PREDICT_MODE_MEAN);
  *r.mutable_x() = MakeBatch(at::zeros({30000, kDim}), at::zeros({30000}, at::kLong)).x();
  ASSERT_LT(r.ByteSizeLong(), size_t{1} << 20);
  EXPECT_STATUS(client_->Predict(r).status(), kResourceExhausted,
                "more than this server sends in one message (1048576, --max_message_mb): ask for "
                "fewer rows at a time");
  *r.mutable_x() = MakeBatch(at::zeros({3000, kDim}), at::zeros({3000}, at::kLong)).x();
  EXPECT_TRUE(client_->Predict(r).ok());
}

TEST_F(BadInputTest, ModelsAndQueriesAreRejectedAndChangeNothing) {
  v1::CreateModelRequest ts = BlobModel("ts", false);
  ts.mutable_spec()->set_architecture("torchscript");
  ts.mutable_spec()->set_torchscript("PK\x03\x04 definitely not a module");
  EXPECT_STATUS(client_->CreateModel(ts).status(), kInvalidArgument, "TorchScript");
  // A module that cannot take the declared input is refused, and the name stays free.
  ts.mutable_spec()->clear_hidden();
  ts.mutable_spec()->set_torchscript(testing_models::ScriptedMlpSpec(kDim + 1, kClasses).torchscript);
  EXPECT_STATUS(client_->CreateModel(ts).status(), kInvalidArgument,
                absl::StrCat("TorchScript module failed on an input of shape [1, ", kDim, "]"));
  ts.mutable_spec()->set_torchscript(testing_models::ScriptedMlpSpec(kDim, kClasses).torchscript);
  EXPECT_TRUE(client_->CreateModel(ts).ok());
  ASSERT_TRUE(client_->DeleteModel("ts").ok());
  v1::CreateModelRequest arch = BlobModel("x", false);
  arch.mutable_spec()->set_architecture("transformer");
  EXPECT_STATUS(client_->CreateModel(arch).status(), kInvalidArgument, "transformer");
  // Fields the architecture would ignore: a logreg given hidden widths is no MLP.
  arch.mutable_spec()->set_architecture("logreg");
  EXPECT_STATUS(client_->CreateModel(arch).status(), kInvalidArgument,
                "model spec: hidden widths apply to architecture mlp only; got [16] for logreg");
  arch.mutable_spec()->clear_hidden();
  arch.mutable_spec()->set_activation("tanh");
  EXPECT_STATUS(client_->CreateModel(arch).status(), kInvalidArgument,
                "model spec: activation applies to architectures mlp and lenet5 only; got 'tanh' "
                "for logreg");
  arch.mutable_spec()->clear_activation();
  arch.mutable_spec()->set_torchscript("PK");
  EXPECT_STATUS(client_->CreateModel(arch).status(), kInvalidArgument,
                "model spec: TorchScript bytes apply to architecture torchscript only; got 2 "
                "bytes for logreg");
  // Config values refused at creation, each named in the message: values that would overflow
  // the step or memory arithmetic, an unknown head mode, and values that used to fall back to a
  // default in silence.
  using Set = std::function<void(v1::LearningConfig&)>;
  const std::vector<std::pair<Set, std::string>> bad_configs = {
      {[](v1::LearningConfig& c) { c.set_optimizer("adam"); }, "config.optimizer must be \"ivon\""},
      {[](v1::LearningConfig& c) { c.mutable_ivon()->set_ess_factor(-2); },
       "ess_factor must be in (0, 1e6] (1: the plain posterior); got -2"},
      {[](v1::LearningConfig& c) { c.set_batch_size(int64_t{1} << 62); },
       "batch_size must be in [1, 2147483648]; got 4611686018427387904"},
      {[](v1::LearningConfig& c) { c.set_memory_points(int64_t{1} << 62); },
       "memory_points must be in"},
      {[](v1::LearningConfig& c) { c.set_head_mode(static_cast<v1::HeadMode>(7)); },
       "config.head_mode must be HEAD_MODE_SINGLE or HEAD_MODE_MULTI; got 7"},
      {[](v1::LearningConfig& c) { c.mutable_ivon()->set_clip_radius(-1); },
       "config.ivon.clip_radius must be >= 0 (0: no clip); got -1"},
      {[](v1::LearningConfig& c) { c.set_curvature_points(-5); },
       "config.curvature_points must be >= 0 (0: the default); got -5"},
      {[](v1::LearningConfig& c) { c.set_min_steps(-5); },
       "min_steps must be in [0, 1000000000]; got -5"},
      {[](v1::LearningConfig& c) { c.set_weight_precision("fisher"); },
       "config.weight_precision must be \"posterior\" or \"prior\"; got \"fisher\""},
      {[](v1::LearningConfig& c) { c.set_adapt_after_seconds(-1); },
       "config.adapt_after_seconds must be in [0, 31536000] (0: off); got -1"},
      {[](v1::LearningConfig& c) { c.set_adapt_after_seconds(std::nan("")); },
       "config.adapt_after_seconds must be in [0, 31536000] (0: off); got nan"},
      {[](v1::LearningConfig& c) { c.set_adapt_after_seconds(4e7); },
       "config.adapt_after_seconds must be in [0, 31536000] (0: off); got 4e+07"},
      {[](v1::LearningConfig& c) { c.set_memory_weight(std::nan("")); },
       "memory_weight must be finite (negative: |M| / N_new); got nan"},
      {[](v1::LearningConfig& c) { c.set_method("magic"); }, "magic"},
  };
  for (const auto& [set, says] : bad_configs) {
    SCOPED_TRACE(says);
    v1::CreateModelRequest r = BlobModel("x", false);
    set(*r.mutable_config());
    EXPECT_STATUS(client_->CreateModel(r).status(), kInvalidArgument, says);
  }
  // The timer's bound itself is a valid wait (that model is removed again: the test expects no
  // change).
  v1::CreateModelRequest year = BlobModel("year", false);
  year.mutable_config()->set_adapt_after_seconds(31536000);
  EXPECT_TRUE(client_->CreateModel(year).ok());
  EXPECT_TRUE(client_->DeleteModel("year").ok());
  EXPECT_STATUS(client_->CreateModel(BlobModel("a/b", false)).status(), kInvalidArgument,
                "model name must match");
  EXPECT_STATUS(client_->CreateModel(BlobModel("m", false)).status(), kAlreadyExists,
                "a model named \"m\" exists");

  const Dataset q = BlobTask(4, {0, 1}, 8);
  v1::PredictRequest p;
  p.set_model("m");
  *p.mutable_x() = TensorToProto(q.x.narrow(1, 0, 3));
  EXPECT_STATUS(client_->Predict(p).status(), kInvalidArgument, "x: shape must be [B, 6]");
  at::Tensor nan_x = q.x.clone();
  nan_x[0][0] = std::nanf("");
  *p.mutable_x() = TensorToProto(nan_x);
  EXPECT_STATUS(client_->Predict(p).status(), kInvalidArgument, "x must be finite");
  *p.mutable_x() = TensorToProto(q.x);
  p.set_version(99);
  EXPECT_STATUS(client_->Predict(p).status(), kNotFound, "has no version 99");
  p.clear_version();
  p.set_samples(-1);
  EXPECT_STATUS(client_->Predict(p).status(), kInvalidArgument, "samples must lie in");
  p.set_samples(0);
  p.set_task_id(0);
  EXPECT_STATUS(client_->Predict(p).status(), kInvalidArgument, "multi-head");
  p.set_model("h");
  p.clear_task_id();
  p.set_mode(v1::PREDICT_MODE_BAYES);
  EXPECT_STATUS(client_->Predict(p).status(), kFailedPrecondition,
                "version 0 has learnt no task (a new model's version 0, or a rollback to it), so "
                "it has no posterior");
  p.set_model("nope");
  EXPECT_STATUS(client_->Predict(p).status(), kNotFound, "no model named \"nope\"");

  v1::InfluenceRequest inf;
  inf.set_model("m");
  *inf.mutable_x() = TensorToProto(q.x);
  EXPECT_STATUS(client_->Influence(inf).status(), kInvalidArgument,
                "x must be one query example; got a batch of 4");
  // A bad scope is the request's error even where the version could not answer anyway.
  v1::MemoryMapRequest map;
  map.set_model("h");  // version 0: no posterior yet
  map.set_scope(static_cast<v1::Scope>(9));
  EXPECT_STATUS(client_->MemoryMap(map).status(), kInvalidArgument,
                "scope must be SCOPE_MEMORY or SCOPE_ALL; got 9");
  EXPECT_STATUS(client_->Rollback("m", 99).status(), kNotFound, "has no version 99");

  // A refused config update leaves the config as it was, in memory and in the catalog.
  const std::string config_before = client_->GetModel("m")->config().SerializeAsString();
  v1::UpdateConfigRequest update;
  update.set_name("m");
  update.mutable_config()->set_epochs(-3);
  update.mutable_config()->set_method("replay");
  update.mutable_config()->set_adapt_after_seconds(-1);
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kInvalidArgument,
                "update_mask must name at least one LearningConfig field");
  update.mutable_update_mask()->add_paths("epochs");
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kInvalidArgument,
                "epochs must be in [1, 1000000000]; got -3");
  update.mutable_update_mask()->set_paths(0, "method");
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kInvalidArgument,
                "config.method cannot change: the model's state is built for \"kprior\"");
  update.mutable_update_mask()->set_paths(0, "adapt_after_seconds");
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kInvalidArgument,
                "config.adapt_after_seconds must be in [0, 31536000] (0: off); got -1");
  update.mutable_update_mask()->set_paths(0, "ivon.speed");
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kInvalidArgument,
                "update_mask: \"ivon.speed\" is not a LearningConfig field");
  EXPECT_EQ(client_->GetModel("m")->config().SerializeAsString(), config_before);
  update.set_name("nope");
  EXPECT_STATUS(client_->UpdateConfig(update).status(), kNotFound, "no model named \"nope\"");
  EXPECT_STATUS(client_->Import("new", "not a snapshot").status(), kInvalidArgument,
                "the snapshot is not an adaptd export");
  EXPECT_STATUS(client_->DeleteModel("nope").status(), kNotFound, "no model named");
  EXPECT_STATUS(client_->CancelJob("j123").status(), kNotFound, "no job with id");
  EXPECT_STATUS(client_->WatchJob("j123").status(), kNotFound, "no job with id");
}

}  // namespace
}  // namespace adaptd

// adaptctl's option parsing and helpers, and its streaming against the scripted server.
#include "client/adaptctl.h"

#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"

#include "client/report.h"
#include "client/tensor.h"
#include "tests/client/cpp/fake_server.h"
#include "tests/client/cpp/test_files.h"

namespace adaptd {
namespace {

TEST(AdaptctlTest, ParsesOptionValues) {
  EXPECT_EQ(*ParseInt64List("256, 128,64"), (std::vector<int64_t>{256, 128, 64}));
  EXPECT_TRUE(ParseInt64List("")->empty());
  EXPECT_EQ(ParseInt64List("1,x").status().code(), absl::StatusCode::kInvalidArgument);
  // An empty item is a typo, not nothing: "1,,28" is not [1, 28].
  for (const char* text : {"1,,28", "256,", ",", " , 3"}) {
    const absl::Status s = ParseInt64List(text).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("has an empty item")) << text;
  }
  EXPECT_EQ(*SplitList(" a.gz , b.gz"), (std::vector<std::string>{"a.gz", "b.gz"}));
  EXPECT_TRUE(SplitList("  ")->empty());
  EXPECT_EQ(*ParseSplit("eval"), v1::SPLIT_EVAL);
  EXPECT_FALSE(ParseSplit("test").ok());
  EXPECT_EQ(*ParseHeadMode(""), v1::HEAD_MODE_UNSPECIFIED);
  EXPECT_EQ(*ParseHeadMode("multi"), v1::HEAD_MODE_MULTI);
  EXPECT_FALSE(ParseHeadMode("many").ok());
  EXPECT_EQ(*ParsePredictMode("linearized"), v1::PREDICT_MODE_LINEARIZED);
  EXPECT_FALSE(ParsePredictMode("sampled").ok());
  EXPECT_EQ(*ParseScope("all"), v1::SCOPE_ALL);
  EXPECT_FALSE(ParseScope("some").ok());
}

// A negative --version or --task would silently mean "the current version" or "no task", a
// negative --limit "everything", and --batch 0 empty batches.
TEST(AdaptctlTest, RefusesOptionValuesOutOfRange) {
  CtlOptions o;
  EXPECT_TRUE(ValidateCtlOptions(o).ok());
  o.version = -3;
  EXPECT_EQ(ValidateCtlOptions(o).message(), "--version must be >= -1 (-1: the current one); got -3");
  o = CtlOptions();
  o.task = -2;
  EXPECT_EQ(ValidateCtlOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o = CtlOptions();
  o.limit = -5;
  EXPECT_EQ(ValidateCtlOptions(o).message(), "--limit must be >= 0 (0: all); got -5");
  o = CtlOptions();
  o.batch = 0;
  EXPECT_EQ(ValidateCtlOptions(o).message(), "--batch must be >= 1; got 0");
}

TEST(AdaptctlTest, BuildsTheCreateRequest) {
  CtlOptions o;
  o.classes = "10";
  o.method = "ewc";
  o.head = "multi";
  o.epochs = 3;
  o.lr = 0.05;
  o.memory_points = 20;
  o.replay_correction = true;
  o.distill_temperature = 2;
  o.new_input_weight = 1.5;
  o.curvature_weight = 300;
  o.memory_mixup = 8;
  o.ess_factor = 16;
  o.min_steps = 50;
  o.weight_precision = "prior";
  o.memory_weight = 3;
  o.clip_radius = 0.1;
  o.adapt_after_seconds = 30;
  absl::StatusOr<v1::CreateModelRequest> r = BuildCreateRequest("fm", o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->name(), "fm");
  EXPECT_EQ(r->spec().architecture(), "mlp");
  EXPECT_EQ(FormatShape(r->spec().input_shape()), "[784]");
  EXPECT_EQ(FormatShape(r->spec().hidden()), "[256, 256]");
  EXPECT_EQ(r->spec().num_classes(), 10);
  EXPECT_EQ(r->config().method(), "ewc");
  EXPECT_EQ(r->config().head_mode(), v1::HEAD_MODE_MULTI);
  EXPECT_EQ(r->config().epochs(), 3);
  EXPECT_DOUBLE_EQ(r->config().ivon().lr(), 0.05);
  EXPECT_EQ(r->config().memory_points(), 20);
  EXPECT_TRUE(r->config().replay_correction());
  EXPECT_DOUBLE_EQ(r->config().distill_temperature(), 2);
  EXPECT_DOUBLE_EQ(r->config().new_input_weight(), 1.5);
  EXPECT_DOUBLE_EQ(r->config().curvature_weight(), 300);
  EXPECT_EQ(r->config().memory_mixup(), 8);
  EXPECT_DOUBLE_EQ(r->config().ivon().ess_factor(), 16);
  EXPECT_EQ(r->config().weight_precision(), "prior");
  ASSERT_TRUE(r->config().has_memory_weight());
  EXPECT_DOUBLE_EQ(r->config().memory_weight(), 3);
  EXPECT_DOUBLE_EQ(r->config().ivon().clip_radius(), 0.1);
  EXPECT_EQ(r->config().min_steps(), 50);
  EXPECT_DOUBLE_EQ(r->config().adapt_after_seconds(), 30);

  // Default hidden widths go to MLPs only, and widths the user gave go to the server, which
  // refuses them for other architectures; a TorchScript file sets the architecture.
  o.arch = "lenet5";
  o.input_shape = "1,28,28";
  {
    CtlOptions plain;
    plain.classes = "10";
    // Unset flags leave the server's defaults: no memory weight (optional), no clip.
    absl::StatusOr<v1::CreateModelRequest> d = BuildCreateRequest("d", plain);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_FALSE(d->config().has_memory_weight());
    EXPECT_EQ(d->config().ivon().clip_radius(), 0);
  }
  EXPECT_EQ(BuildCreateRequest("c", o)->spec().hidden_size(), 0);
  o.hidden = "512";
  EXPECT_EQ(BuildCreateRequest("c", o)->spec().hidden_size(), 1);
  o.hidden.clear();
  o.torchscript = WriteFile("module.pt", "TORCHSCRIPT");
  EXPECT_EQ(BuildCreateRequest("t", o)->spec().architecture(), "torchscript");
  EXPECT_EQ(BuildCreateRequest("t", o)->spec().torchscript(), "TORCHSCRIPT");

  CtlOptions missing;
  EXPECT_NE(BuildCreateRequest("m", missing).status().message().find("--classes"),
            absl::string_view::npos);
}

// set-config: each FIELD=VALUE sets one field, by its type, and names it in the mask.
TEST(AdaptctlTest, BuildsTheConfigUpdate) {
  absl::StatusOr<v1::UpdateConfigRequest> r = BuildConfigUpdate(
      "fm", {"epochs=20", "ivon.lr=0.05", "weight_precision=prior", "replay_correction=true",
             "seed=7", "head_mode=HEAD_MODE_MULTI", "memory_weight=0"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->name(), "fm");
  EXPECT_EQ(r->config().epochs(), 20);
  EXPECT_DOUBLE_EQ(r->config().ivon().lr(), 0.05);
  EXPECT_EQ(r->config().weight_precision(), "prior");
  EXPECT_TRUE(r->config().replay_correction());
  EXPECT_EQ(r->config().seed(), 7u);
  EXPECT_EQ(r->config().head_mode(), v1::HEAD_MODE_MULTI);
  ASSERT_TRUE(r->config().has_memory_weight());
  EXPECT_EQ(r->config().memory_weight(), 0.0);
  EXPECT_EQ(std::vector<std::string>(r->update_mask().paths().begin(),
                                     r->update_mask().paths().end()),
            (std::vector<std::string>{"epochs", "ivon.lr", "weight_precision",
                                      "replay_correction", "seed", "head_mode", "memory_weight"}));

  auto refused = [](const std::string& assignment, const std::string& message) {
    absl::StatusOr<v1::UpdateConfigRequest> bad = BuildConfigUpdate("fm", {assignment});
    ASSERT_FALSE(bad.ok()) << assignment;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find(message), absl::string_view::npos) << bad.status();
  };
  refused("epochs", "expected FIELD=VALUE, e.g. epochs=20 or ivon.lr=0.05; got 'epochs'");
  refused("=3", "expected FIELD=VALUE");
  refused("speed=3", "'speed' is not a setting of the learning config; the settings: method, "
                    "optimizer, ivon.lr, ivon.beta1");
  refused("ivon=3", "'ivon' is not a setting");          // a message, not a value
  refused("epochs.lr=3", "'epochs.lr' is not a setting");  // a value has no fields
  refused("ivon.lr.x=3", "'ivon.lr.x' is not a setting");
  refused("epochs=many", "epochs must be int64; got 'many'");
  refused("ivon.lr=fast", "ivon.lr must be double; got 'fast'");
  refused("replay_correction=perhaps", "replay_correction must be bool");
  refused("head_mode=multi",
          "head_mode must be one of HEAD_MODE_UNSPECIFIED, HEAD_MODE_SINGLE, HEAD_MODE_MULTI; "
          "got 'multi'");
}

TEST(AdaptctlTest, LoadsSeveralFilesAsOneSet) {
  const std::string a = WriteFile("a.csv", "1,2,0\n3,4,1\n");
  const std::string b = WriteFile("b.csv", "5,6,1\n");
  absl::StatusOr<ExampleSet> set = LoadExampleFiles({a, b}, CtlOptions());
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(*FloatValues(set->x), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(set->labels, (std::vector<int64_t>{0, 1, 1}));
  EXPECT_EQ(set->ids, (std::vector<int64_t>{0, 1, 2}));

  // IDX images take their labels from --labels, one file for each.
  CtlOptions o;
  o.labels = WriteFile("labels-idx1-ubyte", Idx(0x08, {2}, "\3\4"));
  const std::string images = WriteFile("images-idx3-ubyte", Idx(0x08, {2, 1, 2}, "abcd"));
  absl::StatusOr<ExampleSet> idx = LoadExampleFiles({images}, o);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->labels, (std::vector<int64_t>{3, 4}));
  const absl::Status count = LoadExampleFiles({images, images}, o).status();
  EXPECT_NE(count.message().find("--labels names 1 files for 2 data files"),
            absl::string_view::npos)
      << count;
  o.format = "npy";
  EXPECT_NE(LoadExampleFiles({images}, o).status().message().find("bad magic"),
            absl::string_view::npos);
  // A CSV file's labels are one of its columns: --labels beside it is refused, not ignored.
  CtlOptions csv_labels;
  csv_labels.labels = o.labels;
  const absl::Status ignored = LoadExampleFiles({a}, csv_labels).status();
  EXPECT_EQ(ignored.code(), absl::StatusCode::kInvalidArgument) << ignored;
  EXPECT_NE(ignored.message().find("--labels is for NPY and IDX files; the labels of a CSV file"),
            absl::string_view::npos)
      << ignored;
  // A missing file is named as missing, whatever its name says of its format.
  const absl::Status missing = LoadExampleFiles({images + ".gone.gz"}, CtlOptions()).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(missing.message().find("no such file: " + images + ".gone.gz"), absl::string_view::npos)
      << missing;
}

TEST(AdaptctlTest, UsageListsEveryCommand) {
  const std::string usage = CtlUsage();
  std::set<std::string> names;
  for (const CtlCommand& c : CtlCommands()) {
    EXPECT_NE(usage.find(absl::StrCat("  ", c.name, " ")), std::string::npos) << c.name;
    EXPECT_TRUE(names.insert(c.name).second) << "twice: " << c.name;
  }
  for (const char* name :
       {"info", "create", "list", "get", "delete", "versions", "rollback", "export", "import",
        "set-config", "stream", "adapt", "watch", "cancel", "predict", "influence", "memory-map", "evaluate", "demo"}) {
    EXPECT_EQ(names.count(name), 1u) << name;
  }
}

TEST(AdaptctlTest, StreamsInBatchesWithClientIds) {
  FakeServer server;
  ClientOptions co;
  co.timeout_seconds = 10;
  co.stream_timeout_seconds = 10;
  auto client = AdaptdClient::Create(server.target(), co);
  ASSERT_TRUE(client.ok());
  ExampleSet set;
  std::vector<float> x(25 * 4);
  std::vector<int64_t> y(25, 1);
  set.x = *FloatTensor(x, {25, 4});
  set.labels = y;
  for (int64_t i = 0; i < 25; ++i) set.ids.push_back(100 + i);
  v1::StreamHeader header;
  header.set_model("m");
  absl::StatusOr<v1::StreamExamplesResponse> r =
      StreamWithProgress(**client, header, set, /*batch=*/10);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->examples(), 25);
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().batch_sizes, (std::vector<int64_t>{10, 10, 5}));
  ASSERT_EQ(server.log().client_ids.size(), 25u);
  EXPECT_EQ(server.log().client_ids.front(), 100);
  EXPECT_EQ(server.log().client_ids.back(), 124);
}

absl::StatusOr<std::unique_ptr<AdaptdClient>> ClientWithOneMiBMessages(const FakeServer& server) {
  ClientOptions co;
  co.max_message_bytes = 1 << 20;
  return AdaptdClient::Create(server.target(), co);
}

// A --batch larger than a message holds is cut to what fits, as the server would refuse the
// message whole: rows of 4,096 floats (16,400 bytes on the wire) in 1 MiB, less 64 KiB.
TEST(AdaptctlTest, StreamBatchesFitTheMessageLimit) {
  FakeServer server;
  auto client = ClientWithOneMiBMessages(server);
  ASSERT_TRUE(client.ok());
  ExampleSet set;
  set.x = *FloatTensor(std::vector<float>(130 * 4096), {130, 64, 64});
  set.labels.assign(130, 1);
  v1::StreamHeader header;
  header.set_model("m");
  absl::StatusOr<v1::StreamExamplesResponse> r =
      StreamWithProgress(**client, header, set, /*batch=*/1000);
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t fits = ((1 << 20) - (64 << 10)) / (4096 * 4 + 16);
  ASSERT_EQ(fits, 59);
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().batch_sizes, (std::vector<int64_t>{59, 59, 12}));
}

// Predictions for more rows than one message holds go as several requests, each answered by the
// first answer's version, and come back whole and in order. 130 rows of 4,096 floats in 1 MiB,
// less 64 KiB: 60 a request. A model of many classes is split by the size of its answer.
TEST(AdaptctlTest, PredictSplitsWhatOneMessageCannotHoldOnOneVersion) {
  FakeServer server;
  auto client = ClientWithOneMiBMessages(server);
  ASSERT_TRUE(client.ok());
  std::vector<float> x(130 * 4096, 0.f);
  for (int i = 0; i < 130; ++i) x[i * 4096] = static_cast<float>(i) / 1000;
  v1::PredictRequest request;
  request.set_model("m");
  *request.mutable_x() = *FloatTensor(x, {130, 4096});
  absl::StatusOr<v1::PredictResponse> all = PredictInParts(**client, request, 2);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->version(), 3);
  absl::StatusOr<std::vector<float>> probs = FloatValues(all->probs());
  ASSERT_TRUE(probs.ok()) << probs.status();
  ASSERT_EQ(probs->size(), 260u);
  for (int i = 0; i < 130; ++i) EXPECT_EQ((*probs)[2 * i], static_cast<float>(i) / 1000) << i;
  EXPECT_EQ(Int64Values(all->labels())->size(), 130u);
  EXPECT_EQ(FloatValues(all->mutual_information())->size(), 130u);
  {
    absl::MutexLock lock(&server.log().mu);
    EXPECT_EQ(server.log().predict_rows, (std::vector<int64_t>{60, 60, 10}));
    EXPECT_EQ(server.log().predict_versions, (std::vector<int64_t>{-1, 3, 3}));
    server.log().predict_rows.clear();
    server.log().predict_versions.clear();
  }
  // Small rows, a large answer: 100,000 classes take 800 kB a row, so one row a request; a
  // version the request names is kept.
  v1::PredictRequest small;
  small.set_model("m");
  small.set_version(7);
  *small.mutable_x() = *FloatTensor(std::vector<float>(3 * 4, 0.5f), {3, 4});
  all = PredictInParts(**client, small, 100000);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->version(), 7);
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().predict_rows, (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(server.log().predict_versions, (std::vector<int64_t>{7, 7, 7}));
}

// A part the server refuses: its error says which rows of the input the part held, counted from
// the input's first row (adaptctl's --index), since the server numbers examples within the part.
TEST(AdaptctlTest, ARefusedPartOfASplitPredictionNamesItsRows) {
  FakeServer server;
  auto client = ClientWithOneMiBMessages(server);
  ASSERT_TRUE(client.ok());
  std::vector<float> x(130 * 4096, 0.f);
  x[75 * 4096] = 2;  // row 75: the second part's example 15
  v1::PredictRequest request;
  request.set_model("m");
  *request.mutable_x() = *FloatTensor(x, {130, 4096});
  absl::Status refused = PredictInParts(**client, request, 2, /*first_row=*/500).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.message(),
            "rows [560, 620) of the input, asked as one request (the server counts its examples "
            "from 0 there): x: the model's outputs for example 15 are not finite");
  // One request from row 0: the server's own words.
  *request.mutable_x() = *FloatTensor(std::vector<float>{0.5f, 2.f}, {2, 1});
  EXPECT_EQ(PredictInParts(**client, request, 2).status().message(),
            "x: the model's outputs for example 1 are not finite");
}

// A version that retention deletes between the parts of a split prediction: the prediction
// starts again once, on the newest version, unless the request named the version.
TEST(AdaptctlTest, PredictStartsAgainWhenItsPinnedVersionIsDeleted) {
  FakeServer server;
  auto client = ClientWithOneMiBMessages(server);
  ASSERT_TRUE(client.ok());
  {
    absl::MutexLock lock(&server.log().mu);
    server.log().retire_after_calls = 1;
  }
  v1::PredictRequest request;
  request.set_model("m");
  *request.mutable_x() = *FloatTensor(std::vector<float>(130 * 4096, 0.f), {130, 4096});
  absl::StatusOr<v1::PredictResponse> all = PredictInParts(**client, request, 2);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->version(), 4);
  EXPECT_EQ(FloatValues(all->probs())->size(), 260u);
  {
    absl::MutexLock lock(&server.log().mu);
    EXPECT_EQ(server.log().predict_versions, (std::vector<int64_t>{-1, 3, -1, 4, 4}));
    server.log().predict_rows.clear();
    server.log().predict_versions.clear();
    server.log().retire_after_calls = 0;
  }
  // A version the request names is its caller's: its loss is reported, not worked around.
  request.set_version(3);
  EXPECT_EQ(PredictInParts(**client, request, 2).status().code(), absl::StatusCode::kNotFound);
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().predict_versions, (std::vector<int64_t>{3}));
}

const CtlCommand& Command(const std::string& name) {
  for (const CtlCommand& c : CtlCommands()) {
    if (name == c.name) return c;
  }
  ADD_FAILURE() << "no command " << name;
  return CtlCommands().front();
}

// The config printed back as set-config's own assignments: each one parses to the same value.
TEST(AdaptctlTest, FormatsTheConfigAsAssignments) {
  v1::LearningConfig c;
  c.set_method("kprior");
  c.set_epochs(15);
  c.mutable_ivon()->set_lr(0.05);
  c.set_memory_weight(0);
  c.set_head_mode(v1::HEAD_MODE_MULTI);
  const std::string text = FormatConfigAssignments(c);
  EXPECT_THAT(text, ::testing::StartsWith("method=kprior optimizer= ivon.lr=0.05 ivon.beta1=0 "));
  EXPECT_THAT(text, ::testing::HasSubstr(" epochs=15 batch_size=0 "));
  EXPECT_THAT(text, ::testing::HasSubstr(" memory_weight=0 "));
  EXPECT_THAT(text, ::testing::HasSubstr(" head_mode=HEAD_MODE_MULTI "));
  EXPECT_THAT(text, ::testing::EndsWith(" memory_mixup=0"));
  // Every field appears once (ivon's own in place of the message), and each assignment parses
  // back to the same config.
  const std::vector<std::string> parts = absl::StrSplit(text, ' ');
  EXPECT_EQ(parts.size(), static_cast<size_t>(v1::LearningConfig::descriptor()->field_count() - 1 +
                                              v1::IvonConfig::descriptor()->field_count()));
  absl::StatusOr<v1::UpdateConfigRequest> back = BuildConfigUpdate("m", parts);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config().SerializeAsString(), c.SerializeAsString());
  // Unset, the optional memory_weight is left out.
  c.clear_memory_weight();
  EXPECT_THAT(FormatConfigAssignments(c), ::testing::Not(::testing::HasSubstr("memory_weight")));
}

// set-config sends the mask its assignments name; adapt sends a closing training stream with
// no examples, which the server answers with a job for the task's pending examples.
TEST(AdaptctlTest, SetConfigAndAdaptCallTheServer) {
  FakeServer server;
  auto client = AdaptdClient::Create(server.target());
  ASSERT_TRUE(client.ok());
  CtlOptions options;
  ASSERT_TRUE(Command("set-config").run(**client, options, {"m", "epochs=4", "ivon.lr=0.2"}).ok());
  {
    absl::MutexLock lock(&server.log().mu);
    EXPECT_EQ(server.log().update.name(), "m");
    EXPECT_EQ(server.log().update.config().epochs(), 4);
    EXPECT_DOUBLE_EQ(server.log().update.config().ivon().lr(), 0.2);
    EXPECT_EQ(server.log().update.update_mask().paths_size(), 2);
  }
  EXPECT_FALSE(Command("set-config").run(**client, options, {"m", "epochs"}).ok());

  EXPECT_EQ(Command("adapt").run(**client, options, {"m"}).code(),
            absl::StatusCode::kInvalidArgument);  // --task is needed
  options.task = 3;
  ASSERT_TRUE(Command("adapt").run(**client, options, {"m"}).ok());
  absl::MutexLock lock(&server.log().mu);
  EXPECT_EQ(server.log().header.model(), "m");
  EXPECT_EQ(server.log().header.task_id(), 3);
  EXPECT_EQ(server.log().header.split(), v1::SPLIT_TRAIN);
  EXPECT_FALSE(server.log().header.keep_open());
  EXPECT_TRUE(server.log().batch_sizes.empty());
}

TEST(AdaptctlTest, WatchTurnsAFailedJobIntoAnError) {
  FakeServer server;
  auto client = AdaptdClient::Create(server.target());
  ASSERT_TRUE(client.ok());
  absl::StatusOr<v1::JobStatus> ok = WatchWithProgress(**client, "job-1");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->version(), 1);
  const absl::Status failed = WatchWithProgress(**client, "job-fail").status();
  EXPECT_EQ(failed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(failed.message().find("loss is NaN"), absl::string_view::npos) << failed;
}

}  // namespace
}  // namespace adaptd

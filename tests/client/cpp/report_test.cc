#include "client/report.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "client/tensor.h"

namespace adaptd {
namespace {

bool Has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

v1::PredictResponse TwoPredictions() {
  v1::PredictResponse r;
  *r.mutable_probs() = *FloatTensor({0.1f, 0.7f, 0.2f, 0.6f, 0.3f, 0.1f}, {2, 3});
  *r.mutable_labels() = *Int64Tensor({1, 0}, {2});
  *r.mutable_total_entropy() = *FloatTensor({0.8f, 0.9f}, {2});
  *r.mutable_expected_entropy() = *FloatTensor({0.7f, 0.6f}, {2});
  *r.mutable_mutual_information() = *FloatTensor({0.1f, 0.3f}, {2});
  return r;
}

TEST(ReportTest, PredictionsTakeTheProbabilityOfThePredictedLabel) {
  absl::StatusOr<std::vector<Prediction>> p = PredictionsFromResponse(TwoPredictions());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].label, 1);
  EXPECT_FLOAT_EQ((*p)[0].probability, 0.7f);
  EXPECT_FLOAT_EQ((*p)[1].probability, 0.6f);
  EXPECT_FLOAT_EQ((*p)[1].epistemic, 0.3f);
  EXPECT_FLOAT_EQ((*p)[1].aleatoric, 0.6f);

  v1::PredictResponse short_entropy = TwoPredictions();
  *short_entropy.mutable_total_entropy() = *FloatTensor({0.8f}, {1});
  EXPECT_EQ(PredictionsFromResponse(short_entropy).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::PredictResponse bad_label = TwoPredictions();
  *bad_label.mutable_labels() = *Int64Tensor({1, 3}, {2});
  EXPECT_EQ(PredictionsFromResponse(bad_label).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReportTest, PredictionTableMarksMistakesAndCountsAccuracy) {
  const std::vector<Prediction> p = *PredictionsFromResponse(TwoPredictions());
  const std::string table = FormatPredictions(p, 40, {1, 2});
  EXPECT_TRUE(Has(table, "     40      1      0.7000")) << table;
  EXPECT_TRUE(Has(table, "     41      0      0.6000")) << table;
  EXPECT_TRUE(Has(table, "2 x\n")) << table;
  EXPECT_TRUE(Has(table, "accuracy 50.0% (1 of 2)")) << table;
  EXPECT_FALSE(Has(FormatPredictions(p, 0, {}), "accuracy"));
}

TEST(ReportTest, EvaluationShowsTheMatrixForgettingAndTransfer) {
  v1::EvaluateResponse e;
  e.set_version(2);
  v1::AccuracyRow* r0 = e.add_rows();
  r0->set_version(0);
  r0->set_task_id(-1);
  r0->add_accuracy(0.5);
  r0->add_accuracy(NAN);
  v1::AccuracyRow* r1 = e.add_rows();
  r1->set_version(1);
  r1->set_task_id(0);
  r1->add_accuracy(0.99);
  r1->add_accuracy(NAN);
  v1::AccuracyRow* r2 = e.add_rows();
  r2->set_version(2);
  r2->set_task_id(1);
  r2->add_accuracy(0.95);
  r2->add_accuracy(0.975);
  e.set_average_accuracy(0.96);
  e.add_forgetting(0.04);
  e.add_forgetting(0);
  e.set_average_forgetting(0.02);
  e.set_backward_transfer(-0.04);
  const std::string text = FormatEvaluation(e);
  EXPECT_TRUE(Has(text, "version learnt |  task 0  task 1\n")) << text;
  EXPECT_TRUE(Has(text, "      0      - |    50.0       -\n")) << text;
  EXPECT_TRUE(Has(text, "      2      1 |    95.0    97.5\n")) << text;
  EXPECT_TRUE(Has(text, "forgetting     |     4.0     0.0\n")) << text;
  EXPECT_TRUE(Has(text, "average accuracy   96.0% (version 2)")) << text;
  EXPECT_TRUE(Has(text, "backward transfer  -4.0 points")) << text;
  // Before any evaluation data there is no figure, and no unit after the dash.
  e.set_average_accuracy(NAN);
  e.set_backward_transfer(NAN);
  const std::string none = FormatEvaluation(e);
  EXPECT_TRUE(Has(none, "average accuracy   - (version 2)")) << none;
  EXPECT_TRUE(Has(none, "backward transfer  -\n")) << none;
}

TEST(ReportTest, ModelInfoNamesDefaults) {
  v1::ModelInfo m;
  m.set_name("fm");
  m.mutable_spec()->set_architecture("mlp");
  m.mutable_spec()->add_input_shape(784);
  m.mutable_spec()->set_num_classes(10);
  m.mutable_spec()->add_hidden(256);
  m.mutable_config()->set_method("kprior");
  m.mutable_config()->set_head_mode(v1::HEAD_MODE_MULTI);
  v1::TaskInfo* t = m.add_tasks();
  t->set_task_id(0);
  t->add_classes(0);
  t->add_classes(1);
  t->set_train_examples(2000);
  const std::string text = FormatModelInfo(m);
  EXPECT_TRUE(Has(text, "model fm: mlp [784] -> 10 classes, hidden [256]")) << text;
  EXPECT_TRUE(Has(text, "method kprior, head multi")) << text;
  EXPECT_TRUE(Has(text, "epochs default")) << text;
  EXPECT_TRUE(Has(text, "task 0: 2000 train, 0 eval, classes [0, 1]")) << text;
  // Options left at their defaults are not listed; set ones are.
  EXPECT_FALSE(Has(text, "steps")) << text;
  m.mutable_config()->set_min_steps(500);
  m.mutable_config()->mutable_ivon()->set_ess_factor(16);
  m.mutable_config()->set_adapt_after_seconds(30);
  const std::string set = FormatModelInfo(m);
  EXPECT_TRUE(Has(set, ", ess factor 16, at least 500 steps")) << set;
  EXPECT_TRUE(Has(set, ", adapt waiting examples after 30 s")) << set;
}

// A version whose checkpoint retention deleted says so on its own line.
TEST(ReportTest, VersionsMarkDeletedCheckpoints) {
  v1::ListVersionsResponse r;
  for (int v = 0; v < 2; ++v) {
    v1::VersionInfo* info = r.add_versions();
    info->set_version(v);
    info->set_task_id(v - 1);
    info->set_rolled_back_from(-1);
    info->set_checkpoint_deleted(v == 0);
  }
  const std::string text = FormatVersions(r);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << text;
  EXPECT_TRUE(Has(lines[1], "(checkpoint deleted: --keep_versions)")) << text;
  EXPECT_FALSE(Has(lines[2], "deleted")) << text;
}

// Where a version was trained with other settings than the version above it, a line names
// the ones that changed.
TEST(ReportTest, VersionsNameTheSettingsThatChanged) {
  v1::LearningConfig base;
  base.set_method("kprior");
  base.set_epochs(10);
  base.mutable_ivon()->set_lr(0.1);
  base.set_memory_weight(3);
  v1::ListVersionsResponse r;
  auto add = [&](const v1::LearningConfig& config, int64_t rolled_back_from = -1) {
    v1::VersionInfo* info = r.add_versions();
    info->set_version(r.versions_size() - 1);
    info->set_rolled_back_from(rolled_back_from);
    *info->mutable_config() = config;
  };
  add(base);
  add(base);  // unchanged: no line
  v1::LearningConfig faster = base;
  faster.set_epochs(20);
  faster.mutable_ivon()->set_lr(0.05);
  faster.clear_memory_weight();
  add(faster);
  add(base, /*rolled_back_from=*/1);  // trained nothing: no line
  add(faster);                        // differs from the rollback's record
  r.add_versions()->set_version(5);   // made before versions recorded their settings
  add(base);                          // nothing to compare with above it
  const std::string text = FormatVersions(r);
  const std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 10u) << text;
  EXPECT_EQ(lines[4], "        trained with ivon.lr=0.05 epochs=20 memory_weight=unset") << text;
  EXPECT_EQ(lines[5].rfind("      3", 0), 0u) << text;
  EXPECT_EQ(lines[7], lines[4]) << text;
  EXPECT_EQ(FormatConfigAssignments(faster).find("memory_weight"), std::string::npos);
}

// A rollback names the version that serves and how to learn what is pending again.
TEST(ReportTest, RollbackNamesThePendingExamples) {
  v1::ModelInfo m;
  m.set_name("fm");
  m.mutable_current()->set_version(3);
  m.mutable_current()->set_rolled_back_from(1);
  for (int64_t t = 0; t < 2; ++t) {
    v1::TaskInfo* task = m.add_tasks();
    task->set_task_id(t);
    task->set_train_examples(100);
    task->set_pending_examples(t == 1 ? 100 : 0);
  }
  EXPECT_EQ(FormatRollback(m),
            "fm: version 3 now serves, a copy of version 1\n"
            "task 1: 100 of 100 training examples pending; `adaptctl adapt fm --task=1` learns "
            "them\n");
}

TEST(ReportTest, InfluenceListsExamplesInOrder) {
  v1::InfluenceResponse r;
  r.set_query_class(3);
  r.set_query_probability(0.5);
  for (int i = 0; i < 2; ++i) {
    v1::InfluentialExample* e = r.add_examples();
    e->set_example_id(100 + i);
    e->set_client_id(i == 0 ? -1 : 7);
    e->set_score(-0.25 / (i + 1));
  }
  const std::string text = FormatInfluence(r);
  EXPECT_TRUE(Has(text, "mean model (not the posterior average that predict shows by default) "
                        "predicts class 3 with probability 0.5000")) << text;
  const size_t first = text.find("   1        100          -");
  const size_t second = text.find("   2        101          7");
  EXPECT_NE(first, std::string::npos) << text;
  EXPECT_NE(second, std::string::npos) << text;
  EXPECT_LT(first, second);
  EXPECT_TRUE(Has(text, "-2.500e-01")) << text;
}

}  // namespace
}  // namespace adaptd

#include "core/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/metrics.h"
#include "core/predictive.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

// Two Gaussian blobs per class in 10-D: learnable, not linearly trivial.
Dataset Blobs(int64_t n, uint64_t seed) {
  return testing_models::Blobs(n, /*classes=*/3, /*dim=*/10, seed);
}

ModelSpec MlpSpec() {
  ModelSpec s;
  s.architecture = Architecture::kMlp;
  s.input_shape = {10};
  s.num_classes = 3;
  s.hidden = {16};
  return s;
}

TrainOptions IvonOptionsFor(int64_t n) {
  TrainOptions o;
  o.optimizer = OptimizerKind::kIvon;
  o.ivon.ess = static_cast<double>(n);
  o.ivon.lr = 0.2;
  o.ivon.hess_init = 0.1;
  o.ivon.weight_decay = 1e-3;
  o.ivon.beta2 = 0.999;
  o.batch_size = 32;
  o.seed = 17;
  return o;
}

// Train 3 epochs straight, versus 1 epoch, save, rebuild everything, load, 2 more epochs.
TEST(TrainTest, SaveLoadContinueIsBitIdentical) {
  for (auto kind : {OptimizerKind::kIvon, OptimizerKind::kAdam, OptimizerKind::kSgd}) {
    const Dataset data = Blobs(300, 2);
    TrainOptions o = IvonOptionsFor(300);
    o.optimizer = kind;
    o.lr = kind == OptimizerKind::kAdam ? 1e-2 : 0.05;
    o.weight_decay = 1e-4;
    o.train_samples = kind == OptimizerKind::kIvon ? 2 : 1;
    const int64_t total = 3 * 10;

    auto model_a = BuildModel(MlpSpec(), 1);
    ASSERT_TRUE(model_a.ok());
    auto a = Trainer::Create(model_a->get(), o, total);
    ASSERT_TRUE(a.ok()) << a.status();
    for (int e = 0; e < 3; ++e) ASSERT_TRUE((*a)->TrainEpoch(data).ok());

    auto model_b = BuildModel(MlpSpec(), 1);
    auto b = Trainer::Create(model_b->get(), o, total);
    ASSERT_TRUE((*b)->TrainEpoch(data).ok());
    const std::string saved = (*b)->SaveState();

    auto model_c = BuildModel(MlpSpec(), 99);  // different initial weights: load must overwrite
    TrainOptions other_seed = o;
    other_seed.seed = 1234;
    auto c = Trainer::Create(model_c->get(), other_seed, total);
    ASSERT_TRUE((*c)->LoadState(saved).ok());
    for (int e = 0; e < 2; ++e) ASSERT_TRUE((*c)->TrainEpoch(data).ok());

    EXPECT_TRUE(at::equal((*a)->flat().params(), (*c)->flat().params())) << OptimizerName(kind);
    if (kind == OptimizerKind::kIvon) {
      EXPECT_TRUE(at::equal((*a)->ivon()->posterior().hess(), (*c)->ivon()->posterior().hess()));
      EXPECT_TRUE(at::equal((*a)->ivon()->momentum(), (*c)->ivon()->momentum()));
    }
    EXPECT_EQ((*a)->steps_taken(), (*c)->steps_taken());
    EXPECT_EQ((*a)->step_growth(), (*c)->step_growth()) << OptimizerName(kind);
    EXPECT_EQ((*a)->peak_step(), (*c)->peak_step()) << OptimizerName(kind);
  }
}

// A learning rate far too large makes IVON diverge: TrainEpoch says so (ABORTED, with the step
// and the advice) instead of returning a NaN loss, and so does Adapt.
TEST(TrainTest, DivergenceIsAnErrorNamingTheStep) {
  const Dataset data = Blobs(200, 2);
  auto model = BuildModel(MlpSpec(), 1);
  TrainOptions o = IvonOptionsFor(200);
  o.ivon.lr = 1e30;
  o.ivon.hess_init = 1e-8;
  auto t = Trainer::Create(model->get(), o, 10 * 7);
  ASSERT_TRUE(t.ok());
  absl::Status status;
  for (int e = 0; e < 10 && status.ok(); ++e) status = (*t)->TrainEpoch(data).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
  EXPECT_THAT(std::string(status.message()), testing::HasSubstr("training diverged: "));
  EXPECT_THAT(std::string(status.message()), testing::HasSubstr("Lower the learning rate"));
  EXPECT_THAT(std::string(status.message()), testing::ContainsRegex("at step [0-9]+ of 70"));
  EXPECT_THAT(std::string(status.message()),
              testing::HasSubstr(absl::StrCat("the examples' features reach |x| = ",
                                              data.x.abs().max().item<double>(), ")")));

  // A sane rate on the same data trains without complaint.
  auto model2 = BuildModel(MlpSpec(), 1);
  auto sane = Trainer::Create(model2->get(), IvonOptionsFor(200), 10 * 7);
  for (int e = 0; e < 10; ++e) ASSERT_TRUE((*sane)->TrainEpoch(data).ok());
}

// A model that learnt nothing has a finite loss, so TrainEpoch cannot see it; CheckLearnt does,
// against the uniform guess ln |head|. All weights zero but the output bias b = (1, 0, 5) give
// logits b on every input: for labels 0, cross-entropy -log softmax(b)_0 = 4.02 > ln 3 over the
// three classes, but -log(e / (e + 1)) = 0.31 < ln 2 within the head {0, 1}.
TEST(TrainTest, CheckLearntComparesTheMeanModelWithAUniformGuess) {
  auto model = BuildModel(MlpSpec(), 1);
  ASSERT_TRUE(model.ok());
  auto t = Trainer::Create(model->get(), IvonOptionsFor(100), 10);
  ASSERT_TRUE(t.ok());
  {
    at::NoGradGuard no_grad;
    (*t)->flat().params().zero_();
    (*model)->Parameters().back().copy_(at::tensor({1.0f, 0.0f, 5.0f}));
  }
  Dataset zeros = Blobs(100, 3);
  zeros.y = at::zeros({100}, at::kLong);
  const absl::Status all = (*t)->CheckLearnt(zeros);
  EXPECT_EQ(all.code(), absl::StatusCode::kAborted) << all;
  EXPECT_THAT(std::string(all.message()),
              testing::ContainsRegex("cross-entropy on the 100 examples trained on is 4\\.02[0-9]*, "
                                     "no better than a uniform guess over their classes "
                                     "\\(1\\.098[0-9]*\\), after step 0 of 10"));
  // Large data: every third of 20,000 examples (at most 8,192 are checked).
  Dataset many = Blobs(20000, 3);
  many.y = at::zeros({20000}, at::kLong);
  EXPECT_THAT(std::string((*t)->CheckLearnt(many).message()),
              testing::HasSubstr("cross-entropy on 6667 of the 20000 examples trained on is 4.02"));
  const at::Tensor head = at::tensor({1, 1, 0}, at::kLong).to(at::kBool);
  EXPECT_TRUE((*t)->CheckLearnt(zeros, head).ok());
  EXPECT_TRUE((*t)->CheckLearnt(zeros, head.unsqueeze(0).expand({100, 3})).ok());
  // A trained model passes on its labels, and fails on labels it was not taught.
  const Dataset data = Blobs(200, 2);
  auto model2 = BuildModel(MlpSpec(), 1);
  auto sane = Trainer::Create(model2->get(), IvonOptionsFor(200), 10 * 7);
  for (int e = 0; e < 10; ++e) ASSERT_TRUE((*sane)->TrainEpoch(data).ok());
  EXPECT_TRUE((*sane)->CheckLearnt(data).ok());
  Dataset shifted = data;
  shifted.y = (data.y + 1).remainder(3);
  EXPECT_EQ((*sane)->CheckLearnt(shifted).code(), absl::StatusCode::kAborted);
}

TEST(TrainTest, LoadRejectsAnotherOptimizersCheckpoint) {
  const Dataset data = Blobs(64, 2);
  auto model = BuildModel(MlpSpec(), 1);
  TrainOptions o = IvonOptionsFor(64);
  auto ivon = Trainer::Create(model->get(), o, 10);
  ASSERT_TRUE(ivon.ok());
  ASSERT_TRUE((*ivon)->TrainEpoch(data).ok());
  auto model2 = BuildModel(MlpSpec(), 1);
  o.optimizer = OptimizerKind::kAdam;
  auto adam = Trainer::Create(model2->get(), o, 10);
  const absl::Status s = (*adam)->LoadState((*ivon)->SaveState());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("written by optimizer ivon"));
  EXPECT_EQ((*adam)->LoadState("junk").code(), absl::StatusCode::kInvalidArgument);
  // A trainer on another schedule (20 steps, not 10) would run the checkpoint's lr wrongly.
  auto model3 = BuildModel(MlpSpec(), 1);
  auto longer = Trainer::Create(model3->get(), IvonOptionsFor(64), 20);
  ASSERT_TRUE(longer.ok());
  const at::Tensor before = (*longer)->flat().params().clone();
  const absl::Status other = (*longer)->LoadState((*ivon)->SaveState());
  EXPECT_EQ(other.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(other.message()), testing::HasSubstr("this trainer runs 20 steps"));
  EXPECT_TRUE(at::equal(before, (*longer)->flat().params()));
}

// Another batch size, number of weight samples or schedule shape would draw other minibatches
// or samples, or run another lr, from the checkpoint's step on: refused, the trainer unchanged.
TEST(TrainTest, LoadRejectsACheckpointOfAnotherBatchSizeSamplingOrSchedule) {
  const Dataset data = Blobs(64, 2);
  auto model = BuildModel(MlpSpec(), 1);
  const TrainOptions o = IvonOptionsFor(64);
  auto saved = Trainer::Create(model->get(), o, 10);
  ASSERT_TRUE(saved.ok());
  ASSERT_TRUE((*saved)->TrainEpoch(data).ok());
  const std::string bytes = (*saved)->SaveState();
  struct Case {
    void (*change)(TrainOptions&);
    const char* message;
  };
  const Case cases[] = {
      {[](TrainOptions& t) { t.batch_size *= 2; }, "written with batch size 32; this trainer uses 64"},
      {[](TrainOptions& t) { t.train_samples = 2; }, "weight samples per step 1; this trainer uses 2"},
      {[](TrainOptions& t) { t.cosine = false; }, "cosine schedule (1: on) 1; this trainer uses 0"},
  };
  for (const Case& c : cases) {
    TrainOptions other = o;
    c.change(other);
    auto model2 = BuildModel(MlpSpec(), 1);
    auto t = Trainer::Create(model2->get(), other, 10);
    ASSERT_TRUE(t.ok());
    const at::Tensor before = (*t)->flat().params().clone();
    const absl::Status s = (*t)->LoadState(bytes);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr(c.message));
    EXPECT_TRUE(at::equal(before, (*t)->flat().params()));
    EXPECT_EQ((*t)->steps_taken(), 0);
  }
  // The same options load.
  auto model3 = BuildModel(MlpSpec(), 1);
  auto same = Trainer::Create(model3->get(), o, 10);
  ASSERT_TRUE(same.ok());
  EXPECT_TRUE((*same)->LoadState(bytes).ok());
}

// IVON learns the blobs, and posterior averaging yields a valid, no-worse predictive.
TEST(TrainTest, IvonLearnsAndPosteriorAveragingIsCalibrated) {
  const Dataset train = Blobs(1500, 3), test = Blobs(1500, 4);
  auto model = BuildModel(MlpSpec(), 1);
  TrainOptions o = IvonOptionsFor(1500);
  const int64_t epochs = 15, per_epoch = (1500 + 31) / 32;
  auto t = Trainer::Create(model->get(), o, epochs * per_epoch);
  ASSERT_TRUE(t.ok());
  int64_t reports = 0;
  for (int e = 0; e < epochs; ++e) {
    ASSERT_TRUE((*t)->TrainEpoch(train, at::Tensor(), [&](const StepReport& r) {
      EXPECT_EQ(r.step, ++reports);
      EXPECT_TRUE(std::isfinite(r.loss));
    }).ok());
  }
  EXPECT_EQ(reports, epochs * per_epoch);
  EXPECT_NEAR((*t)->NextLr(), 0.0, 1e-12);  // cosine schedule ended at zero
  PredictOptions mean_opts;
  auto mean = PredictProbs(**model, (*t)->flat(), &(*t)->ivon()->posterior(), test.x, mean_opts,
                           (*t)->generator());
  PredictOptions bayes_opts;
  bayes_opts.mode = PredictMode::kBayes;
  bayes_opts.samples = 32;
  auto bayes = PredictProbs(**model, (*t)->flat(), &(*t)->ivon()->posterior(), test.x, bayes_opts,
                            (*t)->generator());
  ASSERT_TRUE(mean.ok() && bayes.ok());
  EXPECT_TRUE(at::allclose(bayes->sum(1), at::ones({1500}), 1e-5, 1e-5));
  auto cm = ComputeCalibration(*mean, test.y);
  auto cb = ComputeCalibration(*bayes, test.y);
  EXPECT_GT(cm->accuracy, 0.9);
  EXPECT_GT(cb->accuracy, cm->accuracy - 0.01);
  EXPECT_LT(cb->nll, cm->nll + 0.01);
  std::cout << "ECE: mean " << cm->ece << ", posterior averaging " << cb->ece << "\n";
  EXPECT_LT(cb->ece, cm->ece + 0.005);
  EXPECT_LT(cb->ece, 0.02);
  // Predicting restored the posterior mean into the weights.
  EXPECT_TRUE(at::equal((*t)->flat().params(), (*t)->ivon()->posterior().mean()));
}

// Progress carries IVON's step growth (its step scale over the scale at step 1), measured at
// steps 1, 1 + kStepGrowthEvery, ... and the schedule's last, and repeated in between, and the
// peak step: the largest of lr / (peak lr) * growth at those measurements. Adam reports 0 for
// both.
TEST(TrainTest, ProgressReportsIvonsStepGrowthAndPeakStep) {
  const Dataset train = Blobs(1500, 3);
  const int64_t epochs = 5, per_epoch = (1500 + 31) / 32, total = epochs * per_epoch;
  ASSERT_GT(total, 2 * kStepGrowthEvery);
  for (auto kind : {OptimizerKind::kIvon, OptimizerKind::kAdam}) {
    auto model = BuildModel(MlpSpec(), 1);
    TrainOptions o = IvonOptionsFor(1500);
    o.optimizer = kind;
    o.lr = 1e-2;
    auto t = Trainer::Create(model->get(), o, total);
    ASSERT_TRUE(t.ok());
    double shown = -1, peak = 0, first = 0;
    for (int e = 0; e < epochs; ++e) {
      ASSERT_TRUE((*t)->TrainEpoch(train, at::Tensor(), [&](const StepReport& r) {
        if (kind != OptimizerKind::kIvon) {
          EXPECT_EQ(r.step_growth, 0);
          EXPECT_EQ(r.peak_step, 0);
          return;
        }
        if (r.step == 1) first = (*t)->ivon()->StepScale();
        if ((r.step - 1) % kStepGrowthEvery == 0 || r.step == total) {
          EXPECT_DOUBLE_EQ(r.step_growth, (*t)->ivon()->StepScale() / first) << "step " << r.step;
          peak = std::max(peak, r.lr / o.ivon.lr * r.step_growth);
        } else {
          EXPECT_EQ(r.step_growth, shown) << "step " << r.step;
        }
        EXPECT_DOUBLE_EQ(r.peak_step, peak) << "step " << r.step;
        shown = r.step_growth;
      }).ok());
    }
    if (kind == OptimizerKind::kIvon) {
      // h started at h0 = 0.1 and fell towards the blobs' smaller curvature.
      EXPECT_GT(shown, 1.05);
      EXPECT_EQ((*t)->step_growth(), shown);
      EXPECT_EQ((*t)->peak_step(), peak);
    }
  }
}

// The same loop on a GPU: IVON learns, and a checkpoint continues bit-identically there too.
TEST(TrainTest, IvonTrainsAndResumesOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Dataset train = Blobs(1500, 3), test = Blobs(1500, 4);
  auto run = [&](int epochs_before_save, std::string* saved, const std::string* load) {
    auto model = BuildModel(MlpSpec(), 1);
    (*model)->To(at::kCUDA);
    auto t = Trainer::Create(model->get(), IvonOptionsFor(1500), 15 * 47);
    EXPECT_TRUE(t.ok()) << t.status();
    if (load) {
      EXPECT_TRUE((*t)->LoadState(*load).ok());
    }
    for (int e = 0; e < epochs_before_save; ++e) EXPECT_TRUE((*t)->TrainEpoch(train).ok());
    if (saved) *saved = (*t)->SaveState();
    PredictOptions po;
    po.mode = PredictMode::kBayes;
    po.samples = 8;
    auto p = PredictProbs(**model, (*t)->flat(), &(*t)->ivon()->posterior(), test.x, po,
                          (*t)->generator());
    EXPECT_TRUE(p.ok()) << p.status();
    return std::make_pair((*t)->flat().params().cpu(), Accuracy(*p, test.y));
  };
  std::string checkpoint;
  const auto straight = run(15, nullptr, nullptr);
  EXPECT_GT(straight.second, 0.9);
  run(5, &checkpoint, nullptr);
  const auto resumed = run(10, nullptr, &checkpoint);
  EXPECT_TRUE(at::equal(straight.first, resumed.first));
}

TEST(TrainTest, MultiHeadMaskKeepsPredictionsInTheHead) {
  const Dataset data = Blobs(200, 5);
  auto model = BuildModel(MlpSpec(), 1);
  auto mask = MakeLabelMask({0, 2}, 3);
  ASSERT_TRUE(mask.ok());
  const at::Tensor keep = data.y.ne(1).nonzero().squeeze(1);
  const Dataset head = data.Select(keep);
  auto t = Trainer::Create(model->get(), IvonOptionsFor(head.size()), 20);
  ASSERT_TRUE((*t)->TrainEpoch(head, *mask).ok());
  PredictOptions po;
  po.label_mask = *mask;
  auto p = PredictProbs(**model, (*t)->flat(), &(*t)->ivon()->posterior(), head.x, po, (*t)->generator());
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->select(1, 1).abs().max().item<float>(), 0.0f);

  // Training under the mask ignores class 1's output row: a run whose row starts elsewhere
  // ends bit-identical in every other weight. Without the mask the same start moves them all.
  auto run = [&](bool moved_row, const at::Tensor& label_mask) {
    auto m = BuildModel(MlpSpec(), 1);
    std::vector<at::Tensor> params = (*m)->Parameters();
    if (moved_row) {
      at::NoGradGuard no_grad;
      params[params.size() - 2][1].add_(1.0);  // the output layer's weights of class 1
      params.back()[1].add_(1.0);              // and its bias
    }
    auto trainer = Trainer::Create(m->get(), IvonOptionsFor(head.size()), 20);
    EXPECT_TRUE(trainer.ok());
    EXPECT_TRUE((*trainer)->TrainEpoch(head, label_mask).ok());
    return (*trainer)->ivon()->posterior().mean().clone();
  };
  std::vector<at::Tensor> params = (*model)->Parameters();
  int64_t offset = 0;
  for (size_t i = 0; i + 2 < params.size(); ++i) offset += params[i].numel();
  const int64_t width = params[params.size() - 2].size(1), rows = params.back().numel();
  at::Tensor others = at::ones({offset + rows * (width + 1)}, at::kBool);
  others.narrow(0, offset + width, width).fill_(false);
  others[offset + rows * width + 1] = false;
  const at::Tensor masked = run(false, *mask), masked_moved = run(true, *mask);
  ASSERT_EQ(masked.numel(), others.numel());
  EXPECT_TRUE(at::equal(masked.masked_select(others), masked_moved.masked_select(others)));
  EXPECT_FALSE(at::equal(masked, masked_moved));
  const at::Tensor free = run(false, at::Tensor()), free_moved = run(true, at::Tensor());
  EXPECT_FALSE(at::equal(free.masked_select(others), free_moved.masked_select(others)));
}

TEST(TrainTest, BadInputIsInvalidArgumentAndChangesNothing) {
  auto model = BuildModel(MlpSpec(), 1);
  auto t = Trainer::Create(model->get(), IvonOptionsFor(10), 10);
  ASSERT_TRUE(t.ok());
  const at::Tensor before = (*t)->flat().params().clone();
  EXPECT_EQ((*t)->Step(at::zeros({4, 9}), at::zeros({4}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->Step(at::zeros({4, 10}), at::zeros({3}, at::kLong)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(at::equal(before, (*t)->flat().params()));
  EXPECT_EQ((*t)->steps_taken(), 0);
  // Classes outside [0, K).
  const absl::Status range = (*t)->Step(at::zeros({4, 10}), at::tensor({0, 1, 2, 3}, at::kLong)).status();
  EXPECT_EQ(range.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(range.message()), ::testing::HasSubstr("labels must lie in [0, 3); got 0 to 3"));
  // Soft labels must be float32 probabilities over every class.
  const absl::Status soft = (*t)->Step(at::zeros({4, 10}), at::zeros({4, 2})).status();
  EXPECT_EQ(soft.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(soft.message()),
              ::testing::HasSubstr("labels must be int64 [4] or probabilities float32 [4, 3]"));
  // Labels outside their head: an infinite loss that used to be reported as divergence.
  const at::Tensor head = at::tensor({1, 0, 1}, at::kLong).to(at::kBool);
  const absl::Status hidden =
      (*t)->Step(at::zeros({4, 10}), at::tensor({0, 2, 1, 0}, at::kLong), head).status();
  EXPECT_EQ(hidden.code(), absl::StatusCode::kInvalidArgument) << hidden;
  EXPECT_THAT(std::string(hidden.message()),
              ::testing::HasSubstr("example 2 has label 1, outside classes [0, 2]"));
  const at::Tensor per_example = head.unsqueeze(0).repeat({4, 1});
  EXPECT_EQ((*t)->Step(at::zeros({4, 10}), at::tensor({0, 2, 1, 0}, at::kLong), per_example)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status soft_hidden =
      (*t)->Step(at::zeros({4, 10}), at::full({4, 3}, 1.0f / 3), head).status();
  EXPECT_EQ(soft_hidden.code(), absl::StatusCode::kInvalidArgument) << soft_hidden;
  EXPECT_THAT(std::string(soft_hidden.message()),
              ::testing::HasSubstr("soft labels must put no mass outside their head"));
  EXPECT_TRUE(at::equal(before, (*t)->flat().params()));
  EXPECT_EQ((*t)->steps_taken(), 0);
  TrainOptions bad = IvonOptionsFor(10);
  bad.batch_size = 0;
  EXPECT_EQ(Trainer::Create(model->get(), bad, 10).status().code(), absl::StatusCode::kInvalidArgument);
}

// A step that fails half-way (here the extra loss throws after the forward pass) is an error,
// and the trainer stays usable: the weights are the mean again, and the next step trains.
TEST(TrainTest, AFailedIvonStepLeavesTheTrainerUsable) {
  auto model = BuildModel(MlpSpec(), 1);
  ASSERT_TRUE(model.ok());
  auto t = Trainer::Create(model->get(), IvonOptionsFor(32), 10);
  ASSERT_TRUE(t.ok());
  const Dataset d = Blobs(32, 3);
  const at::Tensor before = (*t)->flat().params().clone();
  const absl::Status failed =
      (*t)->Step(d.x, d.y, at::Tensor(), []() -> at::Tensor { throw std::runtime_error("boom"); })
          .status();
  EXPECT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.message()), ::testing::HasSubstr("boom"));
  EXPECT_TRUE(at::equal((*t)->flat().params(), before)) << "the sampled weights stayed in place";
  EXPECT_EQ((*t)->steps_taken(), 0);
  auto next = (*t)->Step(d.x, d.y);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ((*t)->steps_taken(), 1);
  EXPECT_FALSE(at::equal((*t)->flat().params(), before));
}

// Soft labels: one-hot probabilities train as the classes do (the same weight samples and
// minibatches, so the weights agree to rounding), and under a head mask the classes outside it,
// at probability 0, take no part (no NaN from 0 * -inf).
TEST(TrainTest, OneHotSoftLabelsTrainAsClassesDo) {
  const Dataset data = Blobs(96, 3);
  const Dataset soft{data.x, at::one_hot(data.y, 3).to(at::kFloat)};
  auto run = [&](const Dataset& d, const at::Tensor& mask) {
    auto model = BuildModel(MlpSpec(), 1);
    auto t = Trainer::Create(model->get(), IvonOptionsFor(96), 9);
    EXPECT_TRUE(t.ok());
    for (int e = 0; e < 3; ++e) EXPECT_TRUE((*t)->TrainEpoch(d, mask).ok());
    EXPECT_TRUE((*t)->CheckLearnt(d, mask).ok());
    return (*t)->flat().params().clone();
  };
  EXPECT_TRUE(at::allclose(run(data, at::Tensor()), run(soft, at::Tensor()), 1e-5, 1e-6));
  const at::Tensor head = data.y.ne(2).nonzero().squeeze(1);
  const at::Tensor mask = at::tensor({1, 1, 0}, at::kLong).to(at::kBool);
  const at::Tensor w = run(soft.Select(head), mask);
  EXPECT_TRUE(w.isfinite().all().item<bool>());
  EXPECT_TRUE(at::allclose(run(data.Select(head), mask), w, 1e-5, 1e-6));
}

// The penalty's gradient, added straight into the step, against the same term as an
// ExtraLossFn through autograd (an independent form: parameter by parameter), for IVON with two
// samples a step, SGD and Adam (these two with weight decay, which follows the penalty), with a
// per-weight and a single precision.
TEST(TrainTest, QuadraticPenaltyMatchesTheTermThroughAutograd) {
  const Dataset data = Blobs(300, 4);
  for (auto kind : {OptimizerKind::kIvon, OptimizerKind::kSgd, OptimizerKind::kAdam}) {
    for (bool per_weight : {true, false}) {
      TrainOptions o = IvonOptionsFor(300);
      o.optimizer = kind;
      o.lr = kind == OptimizerKind::kAdam ? 1e-2 : 0.05;
      o.weight_decay = 1e-3;
      o.train_samples = kind == OptimizerKind::kIvon ? 2 : 1;
      std::vector<std::unique_ptr<Model>> models;
      std::vector<std::unique_ptr<Trainer>> trainers;  // through autograd, penalty, neither
      for (int t = 0; t < 3; ++t) {
        auto model = BuildModel(MlpSpec(), 3);
        ASSERT_TRUE(model.ok());
        auto trainer = Trainer::Create(model->get(), o, 20);
        ASSERT_TRUE(trainer.ok()) << trainer.status();
        models.push_back(*std::move(model));
        trainers.push_back(*std::move(trainer));
      }
      const int64_t p = trainers[0]->flat().params().numel();
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
      const at::Tensor anchor = trainers[0]->flat().params() + at::randn({p}, gen) * 0.5;
      const at::Tensor precision = per_weight ? at::rand({p}, gen) * 40 + 1 : at::full({1}, 25.0);
      const double scale = 1.0 / 300;
      const std::vector<at::Tensor> params = models[0]->Parameters();
      ExtraLossFn term = [&]() {
        at::Tensor sum = at::zeros({});
        int64_t offset = 0;
        for (const at::Tensor& w : params) {
          const at::Tensor prec = per_weight ? precision.narrow(0, offset, w.numel()) : precision;
          sum = sum + (prec * (w.reshape({-1}) - anchor.narrow(0, offset, w.numel())).square()).sum();
          offset += w.numel();
        }
        return sum * (0.5 * scale);
      };
      ASSERT_TRUE(trainers[1]->SetQuadraticPenalty(anchor, precision, scale).ok());
      for (int e = 0; e < 2; ++e) {
        auto la = trainers[0]->TrainEpoch(data, at::Tensor(), nullptr, term);
        auto lb = trainers[1]->TrainEpoch(data);
        ASSERT_TRUE(trainers[2]->TrainEpoch(data).ok());
        ASSERT_TRUE(la.ok() && lb.ok());
        EXPECT_NEAR(*la, *lb, 1e-5);
      }
      const at::Tensor wa = trainers[0]->flat().params(), wb = trainers[1]->flat().params();
      const std::string what = OptimizerName(kind) + (per_weight ? ", per weight" : ", one precision");
      EXPECT_TRUE(at::allclose(wa, wb, 1e-4, 1e-5))
          << what << ": max difference " << (wa - wb).abs().max().item<double>();
      // The penalty matters: without it the weights end far from both.
      EXPECT_GT((wb - trainers[2]->flat().params()).abs().max().item<double>(), 1e-2) << what;
    }
  }
}

TEST(TrainTest, QuadraticPenaltyRejectsBadTensorsAndKeepsTheOneBefore) {
  const Dataset data = Blobs(32, 6);
  auto model = BuildModel(MlpSpec(), 1);
  auto t = Trainer::Create(model->get(), IvonOptionsFor(10), 10);
  ASSERT_TRUE(t.ok());
  const int64_t n = (*t)->flat().params().numel();
  const at::Tensor anchor = (*t)->flat().params() + 0.5;
  const at::Tensor precision = at::full({n}, 10.0);
  ASSERT_TRUE((*t)->SetQuadraticPenalty(anchor, precision, 0.1).ok());
  auto code = [&](const at::Tensor& a, const at::Tensor& prec, double scale) {
    return (*t)->SetQuadraticPenalty(a, prec, scale).code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(at::zeros({n - 1}), at::ones({n}), 1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::ones({2}), 1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::ones({}), 1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}, at::kDouble), at::ones({n}), 1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::Tensor(), 1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::ones({n}), -1), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::ones({n}), std::nan("")), kInvalid);
  EXPECT_EQ(code(at::zeros({n}), at::full({1}, -1.0), 1), kInvalid);
  EXPECT_EQ(code(at::full({n}, std::nan("")), at::ones({n}), 1), kInvalid);
  const absl::Status s = (*t)->SetQuadraticPenalty(at::zeros({n}), at::ones({3}), 1);
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr("precision [" + std::to_string(n) + "] or [1]"));
  // None took: a step equals one of a trainer that only ever had the first penalty.
  auto model_b = BuildModel(MlpSpec(), 1);
  auto b = Trainer::Create(model_b->get(), IvonOptionsFor(10), 10);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->SetQuadraticPenalty(anchor, precision, 0.1).ok());
  ASSERT_TRUE((*t)->Step(data.x, data.y).ok());
  ASSERT_TRUE((*b)->Step(data.x, data.y).ok());
  EXPECT_TRUE(at::equal((*t)->flat().params(), (*b)->flat().params()));
}

}  // namespace
}  // namespace adaptd

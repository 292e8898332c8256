#include "client/memory_map.h"

#include <cmath>
#include <limits>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/tensor.h"

namespace adaptd {
namespace {

// Four examples over three classes. The true-label columns hold the values the table must pick:
// error -0.1 * (i + 1), variance 10^-(i + 1), lambda 0.01 * (i + 1); everything else is 9.
v1::MemoryMapResponse Response() {
  const std::vector<int64_t> labels = {2, 0, 1, 2};
  std::vector<float> error(12, 9), variance(12, 9), lambda(12, 9);
  for (int i = 0; i < 4; ++i) {
    error[i * 3 + labels[i]] = -0.1f * (i + 1);
    variance[i * 3 + labels[i]] = std::pow(10.0f, -(i + 1));
    lambda[i * 3 + labels[i]] = 0.01f * (i + 1);
  }
  v1::MemoryMapResponse r;
  r.set_version(5);
  r.set_loo_nll(0.3125);
  r.set_loo_accuracy(0.875);
  *r.mutable_example_ids() = *Int64Tensor({10, 11, 12, 13}, {4});
  *r.mutable_client_ids() = *Int64Tensor({100, -1, 102, 103}, {4});
  *r.mutable_labels() = *Int64Tensor(labels, {4});
  *r.mutable_task_ids() = *Int64Tensor({0, 0, 1, 1}, {4});
  *r.mutable_error() = *FloatTensor(error, {4, 3});
  *r.mutable_variance() = *FloatTensor(variance, {4, 3});
  *r.mutable_lambda() = *FloatTensor(lambda, {4, 3});
  *r.mutable_sensitivity() = *FloatTensor({0.5f, 0.25f, 2, 1}, {4});
  return r;
}

TEST(MemoryMapTest, PicksTheTrueLabelColumn) {
  absl::StatusOr<MemoryMapTable> table = MemoryMapFromResponse(Response());
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->version, 5);
  ASSERT_EQ(table->points.size(), 4u);
  const MemoryMapPoint& p = table->points[2];
  EXPECT_EQ(p.example_id, 12);
  EXPECT_EQ(p.client_id, 102);
  EXPECT_EQ(p.task_id, 1);
  EXPECT_EQ(p.label, 1);
  EXPECT_FLOAT_EQ(p.error, -0.3f);
  EXPECT_FLOAT_EQ(p.variance, 1e-3f);
  EXPECT_FLOAT_EQ(p.lambda, 0.03f);
  EXPECT_FLOAT_EQ(p.sensitivity, 2);
}

TEST(MemoryMapTest, RejectsInconsistentResponses) {
  v1::MemoryMapResponse short_ids = Response();
  *short_ids.mutable_client_ids() = *Int64Tensor({1, 2, 3}, {3});
  EXPECT_EQ(MemoryMapFromResponse(short_ids).status().code(), absl::StatusCode::kInvalidArgument);
  v1::MemoryMapResponse label = Response();
  *label.mutable_labels() = *Int64Tensor({2, 0, 3, 2}, {4});
  const absl::Status s = MemoryMapFromResponse(label).status();
  EXPECT_NE(s.message().find("label 3 outside the 3 columns"), absl::string_view::npos) << s;
  v1::MemoryMapResponse dtype = Response();
  *dtype.mutable_error() = *Int64Tensor(std::vector<int64_t>(12, 0), {4, 3});
  EXPECT_EQ(MemoryMapFromResponse(dtype).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MemoryMapTest, CsvParsesBack) {
  const MemoryMapTable table = *MemoryMapFromResponse(Response());
  const std::vector<std::string> lines =
      absl::StrSplit(MemoryMapCsv(table), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], "example_id,client_id,task_id,label,error,variance,lambda,sensitivity");
  for (size_t i = 0; i < table.points.size(); ++i) {
    const std::vector<std::string> f = absl::StrSplit(lines[i + 1], ',');
    ASSERT_EQ(f.size(), 8u) << lines[i + 1];
    const MemoryMapPoint& p = table.points[i];
    int64_t ints[4];
    double doubles[4];
    for (int c = 0; c < 4; ++c) ASSERT_TRUE(absl::SimpleAtoi(f[c], &ints[c])) << f[c];
    for (int c = 0; c < 4; ++c) ASSERT_TRUE(absl::SimpleAtod(f[4 + c], &doubles[c])) << f[4 + c];
    EXPECT_EQ(ints[0], p.example_id);
    EXPECT_EQ(ints[1], p.client_id);
    EXPECT_EQ(ints[2], p.task_id);
    EXPECT_EQ(ints[3], p.label);
    // Eight significant digits: float32 values survive.
    EXPECT_FLOAT_EQ(doubles[0], p.error);
    EXPECT_FLOAT_EQ(doubles[1], p.variance);
    EXPECT_FLOAT_EQ(doubles[2], p.lambda);
    EXPECT_FLOAT_EQ(doubles[3], p.sensitivity);
  }
}

struct Circle {
  double cx, cy;
  std::string fill;
};

std::vector<Circle> Circles(const std::string& svg) {
  std::vector<Circle> circles;
  const std::regex re("<circle cx=\"([^\"]+)\" cy=\"([^\"]+)\" r=\"[^\"]+\" fill=\"([^\"]+)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it) {
    circles.push_back({std::stod((*it)[1]), std::stod((*it)[2]), (*it)[3]});
  }
  return circles;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(MemoryMapTest, SvgHasOneCirclePerPointPlacedByVarianceAndError) {
  const MemoryMapTable table = *MemoryMapFromResponse(Response());
  const std::string svg = MemoryMapSvg(table, "fmnist");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(Count(svg, "<circle"), 4u);
  const std::vector<Circle> circles = Circles(svg);
  ASSERT_EQ(circles.size(), 4u);
  // Variance falls with i (1e-1 .. 1e-4) and |error| grows: left and up on the page.
  for (int i = 1; i < 4; ++i) {
    EXPECT_LT(circles[i].cx, circles[i - 1].cx) << i;
    EXPECT_LT(circles[i].cy, circles[i - 1].cy) << i;
  }
  // Log scale: equal ratios are equal distances.
  EXPECT_NEAR(circles[0].cx - circles[1].cx, circles[2].cx - circles[3].cx, 1e-3);
  EXPECT_NE(svg.find("(log scale)"), std::string::npos);
  // Colour by label: examples 0 and 3 share label 2.
  EXPECT_EQ(circles[0].fill, circles[3].fill);
  EXPECT_NE(circles[0].fill, circles[1].fill);
  EXPECT_NE(svg.find(">label 0<"), std::string::npos);
  EXPECT_NE(svg.find(">label 2<"), std::string::npos);
  EXPECT_NE(svg.find("LOO NLL 0.3125, LOO accuracy 87.5%"), std::string::npos);
  EXPECT_NE(svg.find("fmnist v5"), std::string::npos);
}

TEST(MemoryMapTest, SvgUsesALinearScaleForANarrowRangeAndEscapesText) {
  MemoryMapTable table;
  for (int i = 0; i < 3; ++i) {
    MemoryMapPoint p;
    p.variance = 1 + i;
    p.error = -0.5;
    table.points.push_back(p);
  }
  const std::string svg = MemoryMapSvg(table, "a<b&c");
  EXPECT_EQ(svg.find("log scale"), std::string::npos);
  EXPECT_NE(svg.find("a&lt;b&amp;c"), std::string::npos);
  const std::vector<Circle> circles = Circles(svg);
  ASSERT_EQ(circles.size(), 3u);
  EXPECT_NEAR(circles[1].cx - circles[0].cx, circles[2].cx - circles[1].cx, 1e-3);
  EXPECT_EQ(Count(MemoryMapSvg(MemoryMapTable(), "m"), "<circle"), 0u);
}

// An infinite variance (a float32 overflow) would make the log axis endless: such points are
// left out of the plot and counted in the title; the others are drawn as before.
TEST(MemoryMapTest, SvgLeavesOutNonFiniteValuesAndSaysSo) {
  MemoryMapTable table = *MemoryMapFromResponse(Response());
  const std::vector<Circle> finite = Circles(MemoryMapSvg(table, "m"));
  MemoryMapPoint inf_variance = table.points[0];
  inf_variance.variance = std::numeric_limits<float>::infinity();
  MemoryMapPoint nan_error = table.points[1];
  nan_error.error = std::nanf("");
  table.points.push_back(inf_variance);
  table.points.push_back(nan_error);
  const std::string svg = MemoryMapSvg(table, "m");
  EXPECT_NE(svg.find("(6 examples, 2 with a non-finite value not drawn)"), std::string::npos);
  const std::vector<Circle> drawn = Circles(svg);
  ASSERT_EQ(drawn.size(), finite.size());
  for (size_t i = 0; i < drawn.size(); ++i) {
    EXPECT_EQ(drawn[i].cx, finite[i].cx) << i;
    EXPECT_EQ(drawn[i].cy, finite[i].cy) << i;
  }
}

// The most sensitive points, largest first, with NaN sensitivities (0 x inf from an
// overflowed variance) after every number: 40 points so that the sort takes its unguarded path.
TEST(MemoryMapTest, MostSensitiveOrdersNumbersFirstAndNaNLast) {
  std::vector<MemoryMapPoint> points(40);
  for (int i = 0; i < 40; ++i) {
    points[i].example_id = i;
    points[i].sensitivity = i % 3 == 0 ? std::numeric_limits<double>::quiet_NaN() : i;
  }
  const std::vector<MemoryMapPoint> top = MostSensitive(points, 5);
  ASSERT_EQ(top.size(), 5u);
  const std::vector<int64_t> ids = {top[0].example_id, top[1].example_id, top[2].example_id,
                                    top[3].example_id, top[4].example_id};
  EXPECT_EQ(ids, (std::vector<int64_t>{38, 37, 35, 34, 32}));
  const std::vector<MemoryMapPoint> all = MostSensitive(points, 100);
  ASSERT_EQ(all.size(), 40u);
  for (int i = 0; i < 26; ++i) EXPECT_FALSE(std::isnan(all[i].sensitivity)) << i;
  for (int i = 26; i < 40; ++i) EXPECT_TRUE(std::isnan(all[i].sensitivity)) << i;
  EXPECT_TRUE(MostSensitive({}, 5).empty());
}

}  // namespace
}  // namespace adaptd

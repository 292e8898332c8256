#include "client/memory_map.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/tensor.h"

namespace adaptd {
namespace {

// Plot geometry in SVG user units. The right margin holds the legend.
constexpr double kWidth = 760;
constexpr double kHeight = 500;
constexpr double kLeft = 80;
constexpr double kRight = 150;
constexpr double kTop = 50;
constexpr double kBottom = 60;

// Matplotlib's "tab10": distinct hues, readable on white.
constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Number(double v, int digits = 8) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.*g", digits, v);
  return buffer;
}

std::string EscapeXml(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// One axis: a data interval, its ticks and a map to pixels.
struct Axis {
  bool log = false;
  double lo = 0;  // in data units, or log10 of them
  double hi = 1;
  std::vector<double> ticks;  // data units

  double Fraction(double v) const {
    const double t = log ? std::log10(v) : v;
    return (t - lo) / (hi - lo);
  }
};

// Ticks 1, 2 or 5 times a power of ten apart, about five over [lo, hi], which are widened to
// whole steps.
Axis LinearAxis(double lo, double hi) {
  if (!(hi > lo)) {
    const double pad = lo == 0 ? 1 : std::abs(lo) * 0.5;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / 5;
  const double magnitude = std::pow(10, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  Axis axis;
  axis.lo = std::floor(lo / step) * step;
  axis.hi = std::ceil(hi / step) * step;
  for (double t = axis.lo; t <= axis.hi + step * 1e-9; t += step) {
    axis.ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  }
  return axis;
}

// Whole decades around [lo, hi] (both positive), one tick per decade.
Axis LogAxis(double lo, double hi) {
  Axis axis;
  axis.log = true;
  axis.lo = std::floor(std::log10(lo));
  axis.hi = std::ceil(std::log10(hi));
  if (axis.hi == axis.lo) axis.hi += 1;
  for (double e = axis.lo; e <= axis.hi; e += 1) axis.ticks.push_back(std::pow(10, e));
  return axis;
}

}  // namespace

absl::StatusOr<MemoryMapTable> MemoryMapFromResponse(const v1::MemoryMapResponse& response) {
  absl::StatusOr<std::vector<int64_t>> example_ids = Int64Values(response.example_ids());
  absl::StatusOr<std::vector<int64_t>> client_ids = Int64Values(response.client_ids());
  absl::StatusOr<std::vector<int64_t>> labels = Int64Values(response.labels());
  absl::StatusOr<std::vector<int64_t>> task_ids = Int64Values(response.task_ids());
  absl::StatusOr<std::vector<float>> error = FloatValues(response.error());
  absl::StatusOr<std::vector<float>> variance = FloatValues(response.variance());
  absl::StatusOr<std::vector<float>> lambda = FloatValues(response.lambda());
  absl::StatusOr<std::vector<float>> sensitivity = FloatValues(response.sensitivity());
  for (const absl::Status& s :
       {example_ids.status(), client_ids.status(), labels.status(), task_ids.status(),
        error.status(), variance.status(), lambda.status(), sensitivity.status()}) {
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("memory map: ", s.message()));
  }
  const size_t n = example_ids->size();
  if (client_ids->size() != n || labels->size() != n || task_ids->size() != n ||
      sensitivity->size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory map: per-example tensors disagree on the count (", n, " ids)"));
  }
  const int64_t k = response.error().shape_size() == 2 ? response.error().shape(1) : 0;
  for (const v1::Tensor* t : {&response.error(), &response.variance(), &response.lambda()}) {
    if (t->shape_size() != 2 || t->shape(0) != static_cast<int64_t>(n) || t->shape(1) != k) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory map: error, variance and lambda must be [", n, ", K]; got ",
                       FormatShape(t->shape())));
    }
  }
  MemoryMapTable table;
  table.version = response.version();
  table.loo_nll = response.loo_nll();
  table.loo_accuracy = response.loo_accuracy();
  table.points.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t y = (*labels)[i];
    if (y < 0 || y >= k) {
      return absl::InvalidArgumentError(absl::StrCat("memory map: example ", (*example_ids)[i],
                                                     " has label ", y, " outside the ", k,
                                                     " columns"));
    }
    MemoryMapPoint p;
    p.example_id = (*example_ids)[i];
    p.client_id = (*client_ids)[i];
    p.task_id = (*task_ids)[i];
    p.label = y;
    p.error = (*error)[i * k + y];
    p.variance = (*variance)[i * k + y];
    p.lambda = (*lambda)[i * k + y];
    p.sensitivity = (*sensitivity)[i];
    table.points.push_back(p);
  }
  return table;
}

std::vector<MemoryMapPoint> MostSensitive(std::vector<MemoryMapPoint> points, size_t k) {
  // NaN compares false with everything, which would break the strict ordering that sorting
  // needs (and can make std::sort read outside the range): NaNs go last.
  auto first = [](const MemoryMapPoint& a, const MemoryMapPoint& b) {
    const bool a_nan = std::isnan(a.sensitivity), b_nan = std::isnan(b.sensitivity);
    if (a_nan || b_nan) return b_nan && !a_nan;
    return a.sensitivity > b.sensitivity;
  };
  k = std::min(k, points.size());
  std::partial_sort(points.begin(), points.begin() + static_cast<std::ptrdiff_t>(k), points.end(), first);
  points.resize(k);
  return points;
}

std::string MemoryMapCsv(const MemoryMapTable& table) {
  std::string csv = "example_id,client_id,task_id,label,error,variance,lambda,sensitivity\n";
  for (const MemoryMapPoint& p : table.points) {
    absl::StrAppend(&csv, p.example_id, ",", p.client_id, ",", p.task_id, ",", p.label, ",",
                    Number(p.error), ",", Number(p.variance), ",", Number(p.lambda), ",",
                    Number(p.sensitivity), "\n");
  }
  return csv;
}

std::string MemoryMapSvg(const MemoryMapTable& table, const std::string& model) {
  // A point with a non-finite variance or error has no place on the axes (an infinite one
  // would make the log axis endless): such points are counted in the title, not drawn.
  std::vector<MemoryMapPoint> points;
  for (const MemoryMapPoint& p : table.points) {
    if (std::isfinite(p.variance) && std::isfinite(p.error)) points.push_back(p);
  }
  const size_t left_out = table.points.size() - points.size();
  double min_positive = std::numeric_limits<double>::infinity();
  double x_min = std::numeric_limits<double>::infinity();
  double x_max = -x_min;
  double y_max = 0;
  for (const MemoryMapPoint& p : points) {
    if (p.variance > 0) min_positive = std::min(min_positive, p.variance);
    x_min = std::min(x_min, p.variance);
    x_max = std::max(x_max, p.variance);
    y_max = std::max(y_max, std::abs(p.error));
  }
  if (points.empty()) {
    x_min = 0;
    x_max = 1;
  }
  const bool log_x = std::isfinite(min_positive) && x_max / min_positive >= 100;
  const Axis x_axis = log_x ? LogAxis(min_positive, x_max) : LinearAxis(x_min, x_max);
  const Axis y_axis = LinearAxis(0, y_max > 0 ? y_max : 1);

  const double plot_w = kWidth - kLeft - kRight;
  const double plot_h = kHeight - kTop - kBottom;
  const auto px = [&](double v) {
    return kLeft + plot_w * x_axis.Fraction(log_x ? std::max(v, min_positive) : v);
  };
  const auto py = [&](double v) { return kTop + plot_h * (1 - y_axis.Fraction(v)); };

  std::string svg = absl::StrCat("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                                 "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", kWidth,
                                 "\" height=\"", kHeight, "\" viewBox=\"0 0 ", kWidth, " ", kHeight,
                                 "\" font-family=\"sans-serif\" font-size=\"12\">\n",
                                 "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  const std::string title = absl::StrFormat(
      "Memory map of %s v%d (%d examples%s): LOO NLL %.4f, LOO accuracy %.1f%%", model,
      table.version, table.points.size(),
      left_out ? absl::StrFormat(", %d with a non-finite value not drawn", left_out) : "",
      table.loo_nll, 100 * table.loo_accuracy);
  absl::StrAppend(&svg, "<text x=\"", kWidth / 2, "\" y=\"28\" text-anchor=\"middle\" ",
                  "font-size=\"15\">", EscapeXml(title), "</text>\n");

  // Frame, ticks with grid lines, axis labels.
  absl::StrAppend(&svg, "<rect x=\"", kLeft, "\" y=\"", kTop, "\" width=\"", plot_w, "\" height=\"",
                  plot_h, "\" fill=\"none\" stroke=\"black\"/>\n");
  for (double t : x_axis.ticks) {
    const std::string x = Number(px(t), 6);
    absl::StrAppend(&svg, "<line x1=\"", x, "\" y1=\"", kTop, "\" x2=\"", x, "\" y2=\"",
                    kTop + plot_h + 5, "\" stroke=\"#ddd\"/>\n<text x=\"", x, "\" y=\"",
                    kTop + plot_h + 19, "\" text-anchor=\"middle\">", Number(t, 3), "</text>\n");
  }
  for (double t : y_axis.ticks) {
    const std::string y = Number(py(t), 6);
    absl::StrAppend(&svg, "<line x1=\"", kLeft - 5, "\" y1=\"", y, "\" x2=\"", kLeft + plot_w,
                    "\" y2=\"", y, "\" stroke=\"#ddd\"/>\n<text x=\"", kLeft - 8, "\" y=\"", y,
                    "\" dy=\"4\" text-anchor=\"end\">", Number(t, 3), "</text>\n");
  }
  absl::StrAppend(&svg, "<text x=\"", kLeft + plot_w / 2, "\" y=\"", kHeight - 15,
                  "\" text-anchor=\"middle\">prediction variance v at the true label",
                  log_x ? " (log scale)" : "", "</text>\n");
  absl::StrAppend(&svg, "<text transform=\"translate(22 ", kTop + plot_h / 2,
                  ") rotate(-90)\" text-anchor=\"middle\">prediction error |e| at the true "
                  "label</text>\n");

  // Points, then the legend (rectangles, so that circles are exactly the points).
  std::map<int64_t, const char*> colours;
  for (const MemoryMapPoint& p : points) {
    const char* colour = kPalette[static_cast<size_t>(p.label) % std::size(kPalette)];
    colours.emplace(p.label, colour);
    absl::StrAppend(&svg, "<circle cx=\"", Number(px(p.variance), 6), "\" cy=\"",
                    Number(py(std::abs(p.error)), 6), "\" r=\"3\" fill=\"", colour,
                    "\" fill-opacity=\"0.7\"><title>example ", p.example_id, " (client id ",
                    p.client_id, "), task ", p.task_id, ", label ", p.label, "</title></circle>\n");
  }
  double legend_y = kTop + 10;
  for (const auto& [label, colour] : colours) {
    absl::StrAppend(&svg, "<rect x=\"", kWidth - kRight + 20, "\" y=\"", legend_y - 9,
                    "\" width=\"10\" height=\"10\" fill=\"", colour, "\"/><text x=\"",
                    kWidth - kRight + 36, "\" y=\"", legend_y, "\">label ", label, "</text>\n");
    legend_y += 18;
  }
  if (points.empty()) {
    absl::StrAppend(&svg, "<text x=\"", kLeft + plot_w / 2, "\" y=\"", kTop + plot_h / 2,
                    "\" text-anchor=\"middle\">no examples</text>\n");
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace adaptd

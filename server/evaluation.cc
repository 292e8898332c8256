#include "server/evaluation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>

namespace adaptd {

v1::EvaluateResponse SummarizeVersions(std::vector<v1::VersionInfo> versions,
                                       const v1::VersionInfo& current) {
  v1::EvaluateResponse out;
  for (v1::VersionInfo& v : versions) {
    if (v.version() == current.version()) v = current;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  int64_t tasks = 0;
  for (const auto& v : versions) {
    for (const auto& a : v.eval()) tasks = std::max(tasks, a.task_id() + 1);
  }
  auto row_of = [&](const v1::VersionInfo& v) {
    std::vector<double> row(tasks, nan);
    for (const auto& a : v.eval()) {
      if (a.task_id() >= 0 && a.task_id() < tasks) row[a.task_id()] = a.accuracy();
    }
    return row;
  };
  for (const auto& v : versions) {
    v1::AccuracyRow* r = out.add_rows();
    r->set_version(v.version());
    r->set_task_id(v.task_id());
    for (double a : row_of(v)) r->add_accuracy(a);
  }
  out.set_version(current.version());
  // The continual-learning matrix: after each task (the last version that learnt it, up to
  // the current version), on every task. Only versions whose learning the current one
  // holds: one a rollback went back past (the current version has learnt less of its task
  // than it had) is not in the served model's history.
  auto learnt = [](const v1::VersionInfo& v, int64_t task) {
    const auto it = v.learnt().per_task().find(task);
    return it == v.learnt().per_task().end() ? int64_t{0} : it->second;
  };
  std::map<int64_t, std::vector<double>> after_task;
  for (const auto& v : versions) {
    if (v.version() > current.version()) break;
    if (v.task_id() < 0) continue;
    const bool held = !current.has_learnt() || !v.has_learnt() ||
                      learnt(current, v.task_id()) >= learnt(v, v.task_id());
    if (held) after_task[v.task_id()] = row_of(v);
  }
  const std::vector<double> now = row_of(current);
  double sum = 0;
  int64_t seen = 0;
  for (double a : now) {
    if (!std::isnan(a)) {
      sum += a;
      ++seen;
    }
  }
  out.set_average_accuracy(seen ? sum / seen : nan);
  double forgetting_sum = 0;
  int64_t forgetting_n = 0;
  for (int64_t j = 0; j < tasks; ++j) {
    double best = nan;
    for (const auto& [t, row] : after_task) {
      if (t >= j && !std::isnan(row[j]) && (std::isnan(best) || row[j] > best)) best = row[j];
    }
    const double f = std::isnan(best) || std::isnan(now[j]) ? nan : best - now[j];
    out.add_forgetting(f);
    if (!std::isnan(f) && after_task.count(j) && after_task.rbegin()->first > j) {
      forgetting_sum += f;
      ++forgetting_n;
    }
  }
  out.set_average_forgetting(forgetting_n ? forgetting_sum / forgetting_n : nan);
  double bwt = 0;
  int64_t bwt_n = 0;
  for (const auto& [t, row] : after_task) {
    if (t < tasks && !after_task.empty() && t < after_task.rbegin()->first &&
        !std::isnan(row[t]) && !std::isnan(now[t])) {
      bwt += now[t] - row[t];
      ++bwt_n;
    }
  }
  out.set_backward_transfer(bwt_n ? bwt / bwt_n : nan);
  return out;
}

}  // namespace adaptd

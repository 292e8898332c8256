// Early-return helpers for absl::Status / absl::StatusOr. Abseil 20220623 (Debian 12) has no
// ABSL_RETURN_IF_ERROR; these have the same semantics so a later switch is mechanical.
#ifndef ADAPTD_CORE_STATUS_MACROS_H_
#define ADAPTD_CORE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ADAPTD_STATUS_CONCAT_INNER_(a, b) a##b
#define ADAPTD_STATUS_CONCAT_(a, b) ADAPTD_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function if not OK.
#define ADAPTD_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status adaptd_status_ = (expr);          \
    if (!adaptd_status_.ok()) return adaptd_status_; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else moves the value
// into `lhs` (which may be a declaration such as `auto x`).
#define ADAPTD_ASSIGN_OR_RETURN(lhs, rexpr) \
  ADAPTD_ASSIGN_OR_RETURN_IMPL_(ADAPTD_STATUS_CONCAT_(adaptd_statusor_, __LINE__), lhs, rexpr)

#define ADAPTD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // ADAPTD_CORE_STATUS_MACROS_H_

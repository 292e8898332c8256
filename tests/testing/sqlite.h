// SQL on a catalog through a connection of the test's own, as another program would write it.
#ifndef ADAPTD_TESTS_TESTING_SQLITE_H_
#define ADAPTD_TESTS_TESTING_SQLITE_H_

#include <sqlite3.h>

#include <string>

namespace adaptd {

// Runs `sql` on the SQLite file at `path` (waiting up to 5 s for a lock another connection
// holds). Returns the error's message, empty when every statement succeeded.
inline std::string SqlExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return "open: " + message;
  }
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  std::string message = error != nullptr ? error : "";
  sqlite3_free(error);
  sqlite3_close(db);
  if (rc != SQLITE_OK && message.empty()) message = "error code " + std::to_string(rc);
  return message;
}

}  // namespace adaptd

#endif  // ADAPTD_TESTS_TESTING_SQLITE_H_

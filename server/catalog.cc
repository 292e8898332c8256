#include "server/catalog.h"

#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "server/crc32c.h"

namespace adaptd {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS models(
  name TEXT PRIMARY KEY, spec BLOB NOT NULL, config BLOB NOT NULL, created_ms INTEGER NOT NULL,
  crc INTEGER);
CREATE TABLE IF NOT EXISTS tasks(
  model TEXT NOT NULL, task_id INTEGER NOT NULL, classes TEXT NOT NULL,
  log_bytes INTEGER NOT NULL DEFAULT 0, crc INTEGER, PRIMARY KEY(model, task_id));
CREATE TABLE IF NOT EXISTS versions(
  model TEXT NOT NULL, version INTEGER NOT NULL, info BLOB NOT NULL,
  checkpoint_crc INTEGER NOT NULL, crc INTEGER, PRIMARY KEY(model, version));
CREATE TABLE IF NOT EXISTS jobs(
  id TEXT PRIMARY KEY, model TEXT NOT NULL, task_id INTEGER NOT NULL, begin_pos INTEGER NOT NULL,
  end_pos INTEGER NOT NULL, state INTEGER NOT NULL, message TEXT NOT NULL,
  version INTEGER NOT NULL, created_ms INTEGER NOT NULL, config BLOB NOT NULL DEFAULT x'',
  progress BLOB NOT NULL DEFAULT x'', cancel_requested INTEGER NOT NULL DEFAULT 0, crc INTEGER);
)sql";

// Every row carries a CRC-32C of its other columns, so that bytes damaged on disk (which SQLite
// does not check: a flipped byte in a stored config reads back as another valid config) are
// found when the row is read at start. Triggers keep it current on every insert and update, so
// no write path can forget it; the SQL function they call exists only in the server's own
// connection, so a write by any other program fails rather than leave a stale checksum.
constexpr const char* kRowCrcFunction = "adaptd_row_crc";

struct Table {
  const char* name;
  const char* columns;  // every column but crc, in the order the checksum covers them
};
constexpr Table kModels{"models", "name, spec, config, created_ms"};
constexpr Table kTasks{"tasks", "model, task_id, classes, log_bytes"};
constexpr Table kVersions{"versions", "model, version, info, checkpoint_crc"};
constexpr Table kJobs{"jobs",
                      "id, model, task_id, begin_pos, end_pos, state, message, version, "
                      "created_ms, config, progress, cancel_requested"};
constexpr Table kTables[] = {kModels, kTasks, kVersions, kJobs};

// The columns of a row of `t`, named with `prefix` ("NEW." inside a trigger), and with the SQL
// `value` in place of the column `swapped` where one is given; and their checksum.
std::string Columns(const Table& t, const std::string& prefix, absl::string_view swapped,
                    absl::string_view value) {
  std::vector<std::string> names = absl::StrSplit(t.columns, ", ");
  for (std::string& n : names) n = n == swapped ? std::string(value) : absl::StrCat(prefix, n);
  return absl::StrJoin(names, ", ");
}

std::string RowCrc(const Table& t, const std::string& prefix = "", absl::string_view swapped = "",
                   absl::string_view value = "") {
  return absl::StrCat(kRowCrcFunction, "(", Columns(t, prefix, swapped, value), ")");
}

// A select-list entry that is 1 where the row's checksum does not match its columns.
std::string Damaged(const Table& t) { return absl::StrCat("crc IS NOT ", RowCrc(t)); }

// The checksum of its arguments, each with its type and (for text and blobs) its length, so that
// no two different rows share their input bytes.
void RowCrcFunction(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  uint32_t crc = 0;
  for (int i = 0; i < argc; ++i) {
    const int type = sqlite3_value_type(argv[i]);
    // The bytes first, then their length (SQLite's order: asking for the bytes may convert).
    const void* bytes = nullptr;
    if (type == SQLITE_TEXT) bytes = sqlite3_value_text(argv[i]);
    if (type == SQLITE_BLOB) bytes = sqlite3_value_blob(argv[i]);
    int64_t n = 0;
    if (type == SQLITE_INTEGER) {
      n = sqlite3_value_int64(argv[i]);
    } else if (type == SQLITE_FLOAT) {
      const double d = sqlite3_value_double(argv[i]);
      std::memcpy(&n, &d, sizeof(n));
    } else if (type == SQLITE_TEXT || type == SQLITE_BLOB) {
      n = sqlite3_value_bytes(argv[i]);
    }
    char head[9];
    head[0] = static_cast<char>(type);
    for (int b = 0; b < 8; ++b) {
      head[1 + b] = static_cast<char>((static_cast<uint64_t>(n) >> (8 * b)) & 0xff);
    }
    crc = Crc32cExtend(crc, absl::string_view(head, sizeof(head)));
    if (bytes != nullptr) {
      crc = Crc32cExtend(crc, absl::string_view(static_cast<const char*>(bytes), n));
    }
  }
  sqlite3_result_int64(ctx, crc);
}

// The start of the error a trigger raises when a write would change a row whose checksum no
// longer matches; the table's name follows (SQLite 3.40 takes only a literal there).
constexpr absl::string_view kDamagedRaise = "adaptd damaged row in table ";

// The triggers that keep each row's checksum: after an insert or an update of its columns they
// set it (the checksum's own update does not fire them again), and before such an update they
// check the row as it stands. Without that check, a row damaged while the server runs would be
// given a fresh checksum over its damaged bytes by the server's next update of it. An update
// that makes a damaged row match its checksum again restores it, and passes. Each open puts
// back any whose text differs (SQLite keeps a trigger's statement as written, without the final
// semicolon), so that a catalog written by another release runs this release's triggers.
std::vector<std::pair<std::string, std::string>> RowCrcTriggers() {
  std::vector<std::pair<std::string, std::string>> triggers;  // name, CREATE statement
  const auto create = [&triggers](const std::string& name, const std::string& rest) {
    triggers.emplace_back(name, absl::StrCat("CREATE TRIGGER ", name, " ", rest));
  };
  for (const Table& t : kTables) {
    create(absl::StrCat(t.name, "_crc_check"),
           absl::StrCat("BEFORE UPDATE OF ", t.columns, " ON ", t.name, " WHEN OLD.crc IS NOT ",
                        RowCrc(t, "OLD."), " AND OLD.crc IS NOT ", RowCrc(t, "NEW."),
                        " BEGIN SELECT RAISE(ABORT, '", kDamagedRaise, t.name, "'); END"));
    const std::string set = absl::StrCat("BEGIN UPDATE ", t.name, " SET crc = ", RowCrc(t, "NEW."),
                                         " WHERE rowid = NEW.rowid; END");
    create(absl::StrCat(t.name, "_crc_insert"), absl::StrCat("AFTER INSERT ON ", t.name, " ", set));
    create(absl::StrCat(t.name, "_crc_update"),
           absl::StrCat("AFTER UPDATE OF ", t.columns, " ON ", t.name, " ", set));
  }
  return triggers;
}

// DATA_LOSS for a row of `what` whose bytes do not match its checksum.
absl::Status DamagedRow(sqlite3* db, const std::string& what) {
  const char* file = sqlite3_db_filename(db, "main");
  return absl::DataLossError(absl::StrCat(
      "catalog ", file != nullptr ? file : "", ": the row of ", what,
      " does not match its checksum: the file was damaged on disk (restore catalog.sqlite from a "
      "backup)"));
}

// The failure of the last call on `db`, naming the catalog's file. A full disk or quota is
// RESOURCE_EXHAUSTED (worth a retry once space is freed), with the system's reason where SQLite
// kept one ("disk I/O error" alone does not say that the disk is full). A write refused by the
// checksum check is DATA_LOSS.
absl::Status SqlError(sqlite3* db, const std::string& what, const char* message = nullptr) {
  absl::string_view raised = sqlite3_errmsg(db);
  if (sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_TRIGGER &&
      absl::ConsumePrefix(&raised, kDamagedRaise)) {
    return DamagedRow(db, absl::StrCat("table ", raised, " that this write would change"));
  }
  const int code = sqlite3_errcode(db) & 0xff;
  const int sys =
      code == SQLITE_IOERR || code == SQLITE_FULL || code == SQLITE_CANTOPEN ? sqlite3_system_errno(db) : 0;
  const char* file = sqlite3_db_filename(db, "main");  // null or empty before the file is open
  std::string text = absl::StrCat("catalog", file != nullptr && *file != '\0' ? " " : "",
                                  file != nullptr ? file : "", ": ", what,
                                  what.empty() ? "" : ": ", message ? message : sqlite3_errmsg(db));
  if (sys != 0) absl::StrAppend(&text, " (", std::strerror(sys), ")");
  if (code == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT) {
    return absl::ResourceExhaustedError(
        absl::StrCat(text, "; free space on the data directory's filesystem"));
  }
  return absl::InternalError(text);
}

// One prepared statement; binds are 1-based, in the order given.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }

  Statement& Bind(int64_t v) {
    if (rc_ == SQLITE_OK) rc_ = sqlite3_bind_int64(stmt_, ++index_, v);
    return *this;
  }
  Statement& Bind(const std::string& v, bool blob = false) {
    if (rc_ != SQLITE_OK) return *this;
    rc_ = blob ? sqlite3_bind_blob(stmt_, ++index_, v.data(), static_cast<int>(v.size()),
                                   SQLITE_TRANSIENT)
               : sqlite3_bind_text(stmt_, ++index_, v.data(), static_cast<int>(v.size()),
                                   SQLITE_TRANSIENT);
    return *this;
  }
  // Runs a statement that returns no rows.
  absl::Status Run() {
    if (rc_ != SQLITE_OK) return SqlError(db_, "prepare");
    const int rc = sqlite3_step(stmt_);
    return rc == SQLITE_DONE ? absl::OkStatus() : SqlError(db_, "step");
  }
  // Next row: true while there is one.
  absl::StatusOr<bool> Next() {
    if (rc_ != SQLITE_OK) return SqlError(db_, "prepare");
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqlError(db_, "step");
  }
  int Columns() const { return sqlite3_column_count(stmt_); }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Bytes(int col) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    const int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
  int index_ = 0;
};

std::string JoinClasses(const std::vector<int64_t>& c) { return absl::StrJoin(c, ","); }

std::vector<int64_t> SplitClasses(const std::string& s) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    out.push_back(std::stoll(s.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Catalog>> Catalog::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                             SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK) {
    const absl::Status error = db ? SqlError(db, absl::StrCat("open ", path))
                                  : absl::ResourceExhaustedError("catalog: open: out of memory");
    sqlite3_close(db);
    return error;
  }
  auto catalog = std::unique_ptr<Catalog>(new Catalog(db));
  // SQLite opens a file it may not write read-only, without an error: every write would fail
  // later, a stream's job among them.
  if (sqlite3_db_readonly(db, "main") == 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "catalog ", path, " can only be opened read-only (its permissions, its owner or the "
        "filesystem's mount): the server writes it"));
  }
  std::lock_guard<std::mutex> lock(catalog->mu_);
  // Innocuous: the triggers may call it however strict the schema's trust setting is.
  if (sqlite3_create_function_v2(db, kRowCrcFunction, -1,
                                 SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS,
                                 nullptr, RowCrcFunction, nullptr, nullptr,
                                 nullptr) != SQLITE_OK) {
    return SqlError(db, "registering the row checksum");
  }
  ADAPTD_RETURN_IF_ERROR(catalog->ExecLocked(
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;"));
  ADAPTD_RETURN_IF_ERROR(catalog->CheckIntegrityLocked());
  ADAPTD_RETURN_IF_ERROR(catalog->ExecLocked(kSchema));
  ADAPTD_RETURN_IF_ERROR(catalog->MigrateLocked());
  ADAPTD_RETURN_IF_ERROR(catalog->PutBackTriggersLocked());
  ADAPTD_RETURN_IF_ERROR(catalog->CheckKeysLocked());
  return catalog;
}

Catalog::~Catalog() { sqlite3_close(db_); }

absl::Status Catalog::MigrateLocked() {
  // Columns that came after the first release; a catalog written before one gains it, empty
  // for its rows. jobs.config: they resume with the model's settings, as they did then.
  // jobs.progress: a job that ended before it shows no step counts. jobs.cancel_requested: no
  // cancel of theirs was on record. tasks.log_bytes: not known (the start records it). crc:
  // each row's checksum, computed from the row as it stands (the rows are trusted once).
  const Added added[] = {{"jobs", "config", "BLOB NOT NULL DEFAULT x''"},
                         {"jobs", "progress", "BLOB NOT NULL DEFAULT x''"},
                         {"jobs", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"},
                         {"tasks", "log_bytes", "INTEGER NOT NULL DEFAULT 0"},
                         {"models", "crc", "INTEGER"},
                         {"tasks", "crc", "INTEGER"},
                         {"versions", "crc", "INTEGER"},
                         {"jobs", "crc", "INTEGER"}};
  std::vector<Added> missing;
  for (const Added& a : added) {
    const std::string sql =
        absl::StrCat("SELECT 1 FROM pragma_table_info('", a.table, "') WHERE name = ?");
    Statement st(db_, sql.c_str());
    st.Bind(std::string(a.column));
    ADAPTD_ASSIGN_OR_RETURN(const bool present, st.Next());
    if (!present) missing.push_back(a);
  }
  if (missing.empty()) return absl::OkStatus();
  // One transaction: a crash between a column's addition and its fill must not leave the
  // column there and empty (every row would then read as damaged).
  return InTransactionLocked([&]() -> absl::Status { return AddColumnsLocked(missing); });
}

absl::Status Catalog::InTransactionLocked(const std::function<absl::Status()>& body) {
  ADAPTD_RETURN_IF_ERROR(ExecLocked("BEGIN IMMEDIATE"));
  const absl::Status status = body();
  if (!status.ok()) {
    (void)ExecLocked("ROLLBACK");
    return status;
  }
  return CommitLocked();
}

absl::Status Catalog::PutBackTriggersLocked() {
  std::map<std::string, std::string> stored;
  {
    Statement st(db_, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'");
    while (true) {
      ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
      if (!more) break;
      stored[st.Bytes(0)] = st.Bytes(1);
    }
  }
  std::string sql;
  for (const auto& [name, create] : RowCrcTriggers()) {
    const auto it = stored.find(name);
    if (it != stored.end() && it->second == create) continue;
    absl::StrAppend(&sql, "DROP TRIGGER IF EXISTS ", name, "; ", create, ";\n");
  }
  if (sql.empty()) return absl::OkStatus();  // an open that finds them current writes nothing
  return InTransactionLocked([&]() -> absl::Status { return ExecLocked(sql); });
}

absl::Status Catalog::AddColumnsLocked(absl::Span<const Added> added) {
  for (const Added& a : added) {
    ADAPTD_RETURN_IF_ERROR(
        ExecLocked(absl::StrCat("ALTER TABLE ", a.table, " ADD COLUMN ", a.column, " ", a.type)));
    if (std::string(a.column) != "crc") continue;
    for (const Table& t : kTables) {
      if (std::string(t.name) != a.table) continue;
      ADAPTD_RETURN_IF_ERROR(ExecLocked(absl::StrCat("UPDATE ", t.name, " SET crc = ", RowCrc(t))));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Catalog::IntegrityProblemsLocked() {
  Statement st(db_, "PRAGMA integrity_check(10)");
  std::vector<std::string> problems;
  while (true) {
    ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
    if (!more) break;
    if (st.Bytes(0) != "ok") problems.push_back(st.Bytes(0));
  }
  return problems;
}

absl::Status Catalog::CheckIntegrityLocked() {
  // Indexes are SQLite's, not checksummed: a damaged entry would hide its row from a lookup by
  // model, and a version hidden so would read as one that a crash left unpublished.
  ADAPTD_ASSIGN_OR_RETURN(std::vector<std::string> problems, IntegrityProblemsLocked());
  if (problems.empty()) return absl::OkStatus();
  // A row hit in its key (a model's name, a task's or version's model) disagrees with the index
  // of its key, and may now hold another row's key, so that a REINDEX fails on the duplicate.
  // If such indexes are all that is named, their tables are rebuilt from their rows, a task's,
  // version's or job's model name restored where its checksum matches under another model's.
  // The check lists at most 10 problems, so a table named only once the others are mended is
  // rebuilt in a later round; each table is rebuilt once at most.
  std::vector<std::string> rebuilt_tables;
  std::string rebuild_failed;
  while (!problems.empty() && rebuild_failed.empty()) {
    std::vector<std::string> keyed;  // the tables whose key index the problems name
    bool only_keys = true;
    for (const std::string& p : problems) {
      const auto named = std::find_if(std::begin(kTables), std::end(kTables), [&](const Table& t) {
        return absl::StrContains(p, absl::StrCat("index sqlite_autoindex_", t.name, "_1"));
      });
      if (named == std::end(kTables)) {
        only_keys = false;
      } else if (std::find(keyed.begin(), keyed.end(), named->name) == keyed.end()) {
        keyed.push_back(named->name);
      }
    }
    if (!only_keys) break;
    for (const std::string& t : keyed) {
      if (std::find(rebuilt_tables.begin(), rebuilt_tables.end(), t) != rebuilt_tables.end()) {
        only_keys = false;  // rebuilt already, and its index still disagrees: not ours to mend
      }
    }
    if (!only_keys) break;
    const absl::Status rebuilt = InTransactionLocked([&]() -> absl::Status {
      for (const std::string& t : keyed) ADAPTD_RETURN_IF_ERROR(RebuildRestoringNamesLocked(t));
      return absl::OkStatus();
    });
    if (absl::IsDataLoss(rebuilt)) {
      rebuild_failed = absl::StrCat("; rebuilding the table from its rows was undone: ",
                                    rebuilt.message());
      break;
    }
    if (!rebuilt.ok()) {  // not the data's fault (a full disk, say): the same status, explained
      return absl::Status(rebuilt.code(), absl::StrCat("rebuilding a table of the catalog whose "
                                                       "index disagrees with its rows: ",
                                                       rebuilt.message()));
    }
    rebuilt_tables.insert(rebuilt_tables.end(), keyed.begin(), keyed.end());
    ADAPTD_ASSIGN_OR_RETURN(problems, IntegrityProblemsLocked());
  }
  if (problems.empty()) return absl::OkStatus();
  const char* file = sqlite3_db_filename(db_, "main");
  return absl::DataLossError(absl::StrCat(
      "catalog ", file != nullptr ? file : "", " fails SQLite's integrity check (",
      absl::StrJoin(problems, "; "), rebuild_failed, "): restore it from a backup",
      rebuild_failed.empty() ? "; if only indexes are named, `sqlite3 catalog.sqlite REINDEX` "
                               "rebuilds them from the rows"
                             : ""));
}

absl::Status Catalog::RebuildRestoringNamesLocked(const std::string& table) {
  const Table& t = *std::find_if(std::begin(kTables), std::end(kTables),
                                 [&](const Table& k) { return table == k.name; });
  // The table as this catalog declares it (with any column a migration added), under a new name
  // (SQLite keeps the name quoted once a table was renamed, as a rebuild does). Each statement
  // ends before the table is dropped: SQLite refuses to drop a table that a statement reads.
  std::string create;
  {
    Statement st(db_, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?");
    st.Bind(std::string(t.name));
    ADAPTD_ASSIGN_OR_RETURN(const bool found, st.Next());
    if (found) create = st.Bytes(0);
  }
  const size_t columns = create.find('(');
  if (!absl::StartsWith(create, "CREATE TABLE ") || columns == std::string::npos) {
    return absl::InternalError(absl::StrCat("table ", t.name, " has no declaration to copy"));
  }
  const std::string rebuilt = absl::StrCat(t.name, "_rebuilt");
  create.replace(0, columns, absl::StrCat("CREATE TABLE ", rebuilt));
  ADAPTD_RETURN_IF_ERROR(ExecLocked(create));
  // Each row as it stands, read without the index; a damaged one whose checksum matches under
  // another model's name gets that name (a model's own row has no model column to restore).
  const std::string owner = absl::StrCat(
      "(SELECT models.name FROM models WHERE models.name IS NOT r.model AND r.crc = ",
      RowCrc(t, "r.", "model", "models.name"), ")");
  const std::string model = absl::StrCat("CASE WHEN r.crc IS NOT ", RowCrc(t, "r."),
                                         " THEN COALESCE(", owner, ", r.model) ELSE r.model END");
  const absl::Status copied = ExecLocked(absl::StrCat(
      "INSERT INTO ", rebuilt, "(rowid, ", t.columns, ", crc) SELECT r.rowid, ",
      Columns(t, "r.", "model", model), ", r.crc FROM ", t.name, " AS r NOT INDEXED"));
  if (!copied.ok() && (sqlite3_errcode(db_) & 0xff) == SQLITE_CONSTRAINT) {
    // Two rows with one key: a row damaged beyond its name whose key is another row's.
    return absl::DataLossError(copied.message());
  }
  ADAPTD_RETURN_IF_ERROR(copied);
  const auto count_damaged = [&]() -> absl::StatusOr<int64_t> {
    const std::string sql =
        absl::StrCat("SELECT count(*) FROM ", t.name, " NOT INDEXED WHERE ", Damaged(t));
    Statement st(db_, sql.c_str());
    ADAPTD_ASSIGN_OR_RETURN(const bool counted, st.Next());
    return counted ? st.Int(0) : 0;
  };
  ADAPTD_ASSIGN_OR_RETURN(const int64_t damaged_before, count_damaged());
  ADAPTD_RETURN_IF_ERROR(ExecLocked(absl::StrCat("DROP TABLE ", t.name, "; ALTER TABLE ", rebuilt,
                                                 " RENAME TO ", t.name)));
  ADAPTD_ASSIGN_OR_RETURN(const int64_t damaged_after, count_damaged());
  const std::string restored =
      std::string(t.name) == kModels.name  // its names are restored from the directories' names
          ? ""
          : absl::StrCat(", restoring the model's name of ", damaged_before - damaged_after,
                         " rows from their checksums");
  std::fprintf(stderr,
               "adaptd: catalog: the index of table %s disagreed with its rows; rebuilt it from "
               "them%s\n", t.name, restored.c_str());
  return absl::OkStatus();
}

absl::Status Catalog::CheckKeysLocked() {
  // A row damaged in its model's name alone lists under another name: a model's that does not
  // exist (no model's check would see it), or another model's (that model would go offline, and
  // the one that lost the row would not notice; names one bit apart, "m1" and "m3", are common).
  // Its checksum still matches its other columns under its true name, so each damaged row is
  // tried under every model's name: a match (a chance one has odds of 2^-32 per name) restores
  // it. A row that names no model and matches none stops the open.
  for (const Table& t : {kTasks, kVersions, kJobs}) {
    std::vector<std::pair<int64_t, std::string>> damaged;  // rowid, model
    {
      const std::string sql =
          absl::StrCat("SELECT rowid, model FROM ", t.name, " WHERE ", Damaged(t));
      Statement st(db_, sql.c_str());
      while (true) {
        ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
        if (!more) break;
        damaged.emplace_back(st.Int(0), st.Bytes(1));
      }
    }
    for (const auto& [rowid, model] : damaged) {
      const std::string find = absl::StrCat(
          "SELECT models.name FROM models, ", t.name, " WHERE ", t.name,
          ".rowid = ? AND models.name IS NOT ", t.name, ".model AND ", t.name, ".crc = ",
          RowCrc(t, absl::StrCat(t.name, "."), "model", "models.name"));
      Statement st(db_, find.c_str());
      st.Bind(rowid);
      ADAPTD_ASSIGN_OR_RETURN(const bool matched, st.Next());
      if (matched) {
        const std::string owner = st.Bytes(0);
        const std::string restore =
            absl::StrCat("UPDATE ", t.name, " SET model = ? WHERE rowid = ?");
        const absl::Status restored = Statement(db_, restore.c_str()).Bind(owner).Bind(rowid).Run();
        if (!restored.ok() && (sqlite3_errcode(db_) & 0xff) != SQLITE_CONSTRAINT) return restored;
        if (!restored.ok()) {
          return DamagedRow(db_, absl::StrCat("rowid ", rowid, " in table ", t.name,
                                              ", whose checksum matches under model \"", owner,
                                              "\" (restoring that name failed: ",
                                              restored.message(), "),"));
        }
        std::fprintf(stderr,
                     "adaptd: catalog: rowid %lld in table %s named model \"%s\", but its "
                     "checksum matches it under model \"%s\": its name was damaged on disk, and "
                     "is restored\n",
                     static_cast<long long>(rowid), t.name, absl::CHexEscape(model).c_str(),
                     owner.c_str());
        continue;
      }
      Statement known(db_, "SELECT 1 FROM models WHERE name = ?");
      known.Bind(model);
      ADAPTD_ASSIGN_OR_RETURN(const bool named, known.Next());
      if (named) continue;  // that model's own check finds it
      return DamagedRow(db_, absl::StrCat(
          "rowid ", rowid, " in table ", t.name, ", which names no model (\"",
          absl::CHexEscape(model), "\"), so its key was damaged and the model that lost it "
          "cannot be told; to go on without the row, delete it: sqlite3 catalog.sqlite "
          "'DELETE FROM ", t.name, " WHERE rowid = ", rowid, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status Catalog::CommitLocked() {
  absl::Status s = ExecLocked("COMMIT");
  // A failed COMMIT can leave the transaction open; later statements would join it.
  if (!s.ok() && !sqlite3_get_autocommit(db_)) (void)ExecLocked("ROLLBACK");
  return s;
}

absl::Status Catalog::ExecLocked(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    const std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return SqlError(db_, "", msg.c_str());
  }
  return absl::OkStatus();
}

absl::Status Catalog::InsertModel(const ModelRow& row) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_, "INSERT INTO models(name, spec, config, created_ms) VALUES(?, ?, ?, ?)");
  return st.Bind(row.name).Bind(row.spec, true).Bind(row.config, true).Bind(row.created_ms).Run();
}

absl::Status Catalog::UpdateModelConfig(const std::string& name, const std::string& config) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_, "UPDATE models SET config = ? WHERE name = ?");
  ADAPTD_RETURN_IF_ERROR(st.Bind(config, true).Bind(name).Run());
  if (sqlite3_changes(db_) != 1) {
    return absl::NotFoundError(absl::StrCat("the catalog has no model \"", name, "\""));
  }
  return absl::OkStatus();
}

absl::Status Catalog::DeleteModel(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  return InTransactionLocked([&]() -> absl::Status {
    for (const char* sql :
         {"DELETE FROM models WHERE name = ?", "DELETE FROM tasks WHERE model = ?",
          "DELETE FROM versions WHERE model = ?", "DELETE FROM jobs WHERE model = ?"}) {
      ADAPTD_RETURN_IF_ERROR(Statement(db_, sql).Bind(name).Run());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<ModelRow>> Catalog::ListModels() {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sql =
      absl::StrCat("SELECT name, spec, config, created_ms, ", Damaged(kModels),
                   " FROM models ORDER BY name");
  Statement st(db_, sql.c_str());
  std::vector<ModelRow> rows;
  while (true) {
    ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
    if (!more) break;
    rows.push_back({st.Bytes(0), st.Bytes(1), st.Bytes(2), st.Int(3), st.Int(4) != 0});
  }
  return rows;
}

absl::Status Catalog::UpsertTask(const std::string& model, const TaskRow& row) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_, "INSERT OR REPLACE INTO tasks(model, task_id, classes, log_bytes) "
                    "VALUES(?, ?, ?, ?)");
  return st.Bind(model).Bind(row.task_id).Bind(JoinClasses(row.classes)).Bind(row.log_bytes).Run();
}

absl::Status Catalog::SetTaskLogBytes(const std::string& model, int64_t task_id,
                                      int64_t log_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_, "UPDATE tasks SET log_bytes = ? WHERE model = ? AND task_id = ?");
  ADAPTD_RETURN_IF_ERROR(st.Bind(log_bytes).Bind(model).Bind(task_id).Run());
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("catalog: no task ", task_id, " of model ", model));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Catalog::RestoreModelNames(
    const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> damaged;
  {
    const std::string sql = absl::StrCat("SELECT name FROM models WHERE ", Damaged(kModels));
    Statement st(db_, sql.c_str());
    while (true) {
      ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
      if (!more) break;
      damaged.push_back(st.Bytes(0));
    }
  }
  const std::string match = absl::StrCat("SELECT 1 FROM models WHERE name = ? AND crc = ",
                                         RowCrc(kModels, "", "name", "?"));
  std::vector<std::string> restored;
  std::vector<std::string> left = names;  // a name goes to one row at most
  for (const std::string& name : damaged) {
    for (auto candidate_it = left.begin(); candidate_it != left.end(); ++candidate_it) {
      const std::string candidate = *candidate_it;
      Statement st(db_, match.c_str());
      st.Bind(name).Bind(candidate);
      ADAPTD_ASSIGN_OR_RETURN(const bool matched, st.Next());
      if (!matched) continue;
      const absl::Status renamed = Statement(db_, "UPDATE models SET name = ? WHERE name = ?")
                                       .Bind(candidate)
                                       .Bind(name)
                                       .Run();
      if (!renamed.ok() && (sqlite3_errcode(db_) & 0xff) != SQLITE_CONSTRAINT) return renamed;
      if (!renamed.ok()) {
        return DamagedRow(db_, absl::StrCat("model \"", absl::CHexEscape(name),
                                            "\", whose checksum matches under the name \"",
                                            candidate, "\" (restoring that name failed: ",
                                            renamed.message(), "),"));
      }
      left.erase(candidate_it);
      std::fprintf(stderr,
                   "adaptd: catalog: the row of model \"%s\" matches its checksum under the name "
                   "\"%s\", whose directory no row listed: its name was damaged on disk, and is "
                   "restored\n",
                   absl::CHexEscape(name).c_str(), candidate.c_str());
      restored.push_back(candidate);
      break;
    }
  }
  return restored;
}

absl::StatusOr<std::vector<TaskRow>> Catalog::ListTasks(const std::string& model) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sql = absl::StrCat("SELECT task_id, classes, log_bytes, ", Damaged(kTasks),
                                       " FROM tasks WHERE model = ? ORDER BY task_id");
  Statement st(db_, sql.c_str());
  st.Bind(model);
  std::vector<TaskRow> rows;
  while (true) {
    ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
    if (!more) break;
    if (st.Int(3) != 0) {
      return DamagedRow(db_, absl::StrCat("task ", st.Int(0), " of model \"", model, "\""));
    }
    rows.push_back({st.Int(0), SplitClasses(st.Bytes(1)), st.Int(2)});
  }
  return rows;
}

absl::StatusOr<std::vector<VersionRow>> Catalog::ListVersions(const std::string& model) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sql = absl::StrCat("SELECT version, info, checkpoint_crc, ", Damaged(kVersions),
                                       " FROM versions WHERE model = ? ORDER BY version");
  Statement st(db_, sql.c_str());
  st.Bind(model);
  std::vector<VersionRow> rows;
  while (true) {
    ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
    if (!more) break;
    if (st.Int(3) != 0) {
      return DamagedRow(db_, absl::StrCat("version ", st.Int(0), " of model \"", model, "\""));
    }
    rows.push_back({st.Int(0), st.Bytes(1), static_cast<uint32_t>(st.Int(2))});
  }
  return rows;
}

absl::Status Catalog::InsertJob(const JobRow& row) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_,
               "INSERT INTO jobs(id, model, task_id, begin_pos, end_pos, state, message, version, "
               "created_ms) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)");
  return st.Bind(row.id)
      .Bind(row.model)
      .Bind(row.task_id)
      .Bind(row.begin)
      .Bind(row.end)
      .Bind(row.state)
      .Bind(row.message)
      .Bind(row.version)
      .Bind(row.created_ms)
      .Run();
}

absl::Status Catalog::UpdateJob(const std::string& id, int state, const std::string& message,
                                int64_t version, const std::string& progress, int64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_,
               "UPDATE jobs SET state = ?, message = ?, version = ?, progress = ?, "
               "end_pos = MAX(end_pos, ?) WHERE id = ?");
  return st.Bind(state).Bind(message).Bind(version).Bind(progress, true).Bind(end).Bind(id).Run();
}

absl::Status Catalog::GrowJob(const std::string& id, int64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  return Statement(db_, "UPDATE jobs SET end_pos = MAX(end_pos, ?) WHERE id = ?")
      .Bind(end)
      .Bind(id)
      .Run();
}

absl::Status Catalog::RecordCancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return Statement(db_, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?").Bind(id).Run();
}

absl::Status Catalog::RecordCancelAndEnd(const std::string& id, int state,
                                         const std::string& message, const std::string& progress,
                                         int64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_,
               "UPDATE jobs SET cancel_requested = 1, state = ?, message = ?, progress = ?, "
               "end_pos = MAX(end_pos, ?) WHERE id = ?");
  return st.Bind(state).Bind(message).Bind(progress, true).Bind(end).Bind(id).Run();
}

absl::Status Catalog::StartJob(const std::string& id, int64_t begin, int64_t end,
                               const std::string& config, int state, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement st(db_,
               "UPDATE jobs SET begin_pos = ?, end_pos = ?, config = ?, state = ?, message = ? "
               "WHERE id = ?");
  return st.Bind(begin).Bind(end).Bind(config, true).Bind(state).Bind(message).Bind(id).Run();
}

absl::StatusOr<std::vector<JobRow>> Catalog::ListJobs(const std::string& model) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string sql = absl::StrCat("SELECT ", kJobs.columns, ", ", Damaged(kJobs),
                                       " FROM jobs WHERE model = ? ORDER BY created_ms, rowid");
  Statement st(db_, sql.c_str());
  st.Bind(model);
  std::vector<JobRow> rows;
  while (true) {
    ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
    if (!more) break;
    if (st.Int(12) != 0) {
      return DamagedRow(db_, absl::StrCat("job ", st.Bytes(0), " of model \"", model, "\""));
    }
    JobRow r;
    r.id = st.Bytes(0);
    r.model = st.Bytes(1);
    r.task_id = st.Int(2);
    r.begin = st.Int(3);
    r.end = st.Int(4);
    r.state = static_cast<int>(st.Int(5));
    r.message = st.Bytes(6);
    r.version = st.Int(7);
    r.created_ms = st.Int(8);
    r.config = st.Bytes(9);
    r.progress = st.Bytes(10);
    r.cancel_requested = st.Int(11) != 0;
    rows.push_back(std::move(r));
  }
  return rows;
}

absl::Status Catalog::Publish(const std::string& model, const VersionRow& version,
                              const std::string& job_id, int job_state,
                              const std::string& message, const std::string& progress) {
  std::lock_guard<std::mutex> lock(mu_);
  return InTransactionLocked([&]() -> absl::Status {
    ADAPTD_RETURN_IF_ERROR(
        Statement(db_,
                  "INSERT INTO versions(model, version, info, checkpoint_crc) VALUES(?, ?, ?, ?)")
            .Bind(model)
            .Bind(version.version)
            .Bind(version.info, true)
            .Bind(static_cast<int64_t>(version.checkpoint_crc))
            .Run());
    if (job_id.empty()) return absl::OkStatus();
    return Statement(db_,
                     "UPDATE jobs SET state = ?, message = ?, version = ?, progress = ? "
                     "WHERE id = ?")
        .Bind(job_state)
        .Bind(message)
        .Bind(version.version)
        .Bind(progress, true)
        .Bind(job_id)
        .Run();
  });
}

absl::Status Catalog::UpdateVersionInfos(const std::string& model,
                                         const std::vector<VersionRow>& rows) {
  std::lock_guard<std::mutex> lock(mu_);
  return InTransactionLocked([&]() -> absl::Status {
    for (const VersionRow& row : rows) {
      ADAPTD_RETURN_IF_ERROR(
          Statement(db_, "UPDATE versions SET info = ? WHERE model = ? AND version = ?")
              .Bind(row.info, true)
              .Bind(model)
              .Bind(row.version)
              .Run());
      if (sqlite3_changes(db_) != 1) {
        return absl::NotFoundError(
            absl::StrCat("model ", model, " has no version row ", row.version, " to update"));
      }
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::string> Catalog::Dump() {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const char* sql :
       {"SELECT 'model', name, hex(spec), hex(config), created_ms FROM models ORDER BY name",
        "SELECT 'task', model, task_id, classes FROM tasks ORDER BY model, task_id",
        "SELECT 'version', model, version, hex(info), checkpoint_crc FROM versions "
        "ORDER BY model, version",
        "SELECT 'job', id, model, task_id, begin_pos, end_pos, state, message, version, hex(config), "
        "hex(progress), cancel_requested FROM jobs ORDER BY id"}) {
    Statement st(db_, sql);
    while (true) {
      ADAPTD_ASSIGN_OR_RETURN(bool more, st.Next());
      if (!more) break;
      for (int c = 0; c < st.Columns(); ++c) {
        absl::StrAppend(&out, st.Bytes(c), "|");
      }
      out += "\n";
    }
  }
  return out;
}

}  // namespace adaptd

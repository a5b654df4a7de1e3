// Recovery of a damaged index: `cnclip repair`.
//
// repair_index() takes the writer lock, reads every row of every catalog table that SQLite can still
// read (row by row, by rowid, stepping over unreadable pages), drops rows that cannot be used (an
// embedding that is not a finite unit vector of the index's dimension), writes them to a fresh
// catalog, and puts it in place atomically (rename over catalog.sqlite3). The damaged catalog is kept
// beside it as catalog.sqlite3.damaged-<UTC time> (with its -wal, if any). File ids are kept, so the
// vectors of kept files do not change; the snapshot is rebuilt for the new generation. A later
// `cnclip index` finds the lost files as new (their rows are gone) and re-encodes only those.
//
// A catalog whose 16-byte file header ("SQLite format 3") was overwritten is read from a copy with
// the header written back (the original is kept as it was), so its rows are not lost with it.
// What cannot be recovered: rows on damaged pages, and everything when the first page (SQLite's
// schema) is unreadable. When the roots (the indexed folders) are lost, `roots_lost` says so: a
// plain `cnclip index` then has nothing to walk, and the folders must be given again. A sound catalog is left as it is
// (only a missing or damaged snapshot is rewritten), except one of pages smaller than
// kCatalogPageBytes (catalog.h; made before catalogs had 32 KiB pages): it goes through the same
// fresh copy and swap, nothing is kept beside it, the snapshot is rewritten, and `pages_enlarged`
// says so. That happens only when its whole write-ahead log could be checkpointed first (no reader
// held part of it); otherwise it stays as it was, and a later repair tries again. It needs room for
// the copy (about half the old catalog); on a full disk nothing changes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cnclip {

struct RepairReport {
  std::string index_dir;
  bool damaged = false;                       // the catalog failed its checks (and was replaced)
  std::vector<std::string> problems;          // what SQLite's integrity_check and the reads found (at most 20)
  std::string damaged_copy;                   // where the damaged catalog was kept ("" when sound)
  std::map<std::string, int64_t> kept;        // rows kept per table (files, roots, meta, failures, ...)
  std::map<std::string, int64_t> unreadable;  // rows (or row positions) SQLite could not read, per table
  int64_t files_invalid = 0;                  // file rows read whose embedding was unusable (dropped)
  int64_t files_lost_known = 0;               // ids in an intact vector snapshot that could not be kept
  bool snapshot_rewritten = false;
  bool header_restored = false;  // the file header was overwritten; read through a restored copy
  bool roots_lost = false;       // some or all indexed folders could not be read back
  int64_t page_bytes = 0;        // the catalog's page size as found (SQLite's 4096 before 32 KiB pages)
  bool pages_enlarged = false;   // a sound catalog of smaller pages was rewritten in kCatalogPageBytes
};

// Repairs the index in `dir` (see above). Throws kNotFound without a catalog, kBusy when another
// writer holds the lock (waits with `wait_for_lock`), kPermissionDenied on a read-only index, and
// kIoError when the fresh catalog cannot be written (a full disk): nothing is changed then.
RepairReport repair_index(const std::string& dir, bool wait_for_lock = false);

}  // namespace cnclip

// What `cnclip info` shows about an index, as one value: the CLI prints it (text or JSON) and
// `cnclip serve` answers GET /api/v1/info with the same JSON (index_info_json), so the two agree
// field for field.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/index_store.h"
#include "cnclip/search.h"

namespace cnclip {

struct IndexInfo {
  std::string index;  // the index folder, absolute and canonical (symbolic links resolved)
  std::string model_fingerprint, model_architecture, model_precision;  // "" before the first embedding
  int embedding_dim = 0;
  int64_t files = 0;                 // catalog entries
  int64_t vectors = 0;               // vectors a search sees (the snapshot's, or the catalog's)
  std::vector<std::string> folders;  // the roots, as stored (bytes: not necessarily UTF-8)
  std::vector<bool> folder_is_file;  // parallel to `folders`: true for a single file given as a root
  int64_t disk_bytes = 0;            // catalog, its write-ahead log and the snapshot
  std::string updated_at;            // "2026-11-29T05:45:11Z" (UTC) of the last write, "" never
  // The vector snapshot (README "Scale"): the setting (`cnclip index --vectors`, "flat" unless set);
  // the type searches read ("flat", "IVF1024,SQ8", ...; "" when no snapshot is usable and they read
  // the catalog's embeddings), its tuned search parameter ("nprobe 128"; "" for flat types) and the
  // ids changed since it was written (read from the catalog by each search); and why the snapshot
  // is flat under another setting (IndexStore::standing_snapshot_fallback), "" otherwise; and why a
  // snapshot file was passed over ("<path>: not a usable vector file (checksum mismatch)": damaged,
  // or not readable by this user), "" when none was.
  std::string vectors_setting = "flat";
  std::string snapshot_type, snapshot_search_parameter;
  int64_t snapshot_changed_since = 0;
  std::string snapshot_note;
  std::string snapshot_problem;
  // The catalog's page size: kCatalogPageBytes (catalog.h), or SQLite's 4096 for a catalog made
  // before, which `cnclip repair` rewrites.
  int64_t catalog_page_bytes = 0;
};

// The info of an open index. `loaded`: the vectors a caller already searches (a server's Searcher);
// null loads them as a search would (IndexStore::search_vectors). Throws what the catalog and the
// vector loading throw (kCorrupt for damage).
IndexInfo index_info(IndexStore& store, const Searcher* loaded = nullptr);
// The info of the index at `dir` as `cnclip info` shows it: opened read-only, the catalog checked
// with SQLite's quick_check first (damage is reported with the recovery command rather than shown
// as counts). Throws kNotFound when there is no index at `dir`.
IndexInfo read_index_info(const std::string& dir);
// What an index folder without an index yet shows (a server started before the first `index`).
IndexInfo empty_index_info(const std::string& dir);

// `cnclip info --format json`, field order as documented: index, model_fingerprint,
// model_architecture, model_precision, embedding_dim, files, vectors, folders, disk_bytes,
// updated_at, vectors_setting, snapshot ({type, search_parameter, changed_since}, or null when
// searches read the catalog), snapshot_note, snapshot_problem, catalog_page_bytes. A folder name or index path that is
// not UTF-8 is printed with U+FFFD and its exact bytes in hex (index_bytes; folders_bytes lists every folder's bytes
// when any needs it). `folders` holds every root, single files too; when any root is a file, folders_kind (right after
// folders and folders_bytes) says for each root "folder" or "file".
nlohmann::ordered_json index_info_json(const IndexInfo& info);

}  // namespace cnclip

// `cnclip import`: add embeddings computed elsewhere (another machine, a GPU, the benchmark) to an index.
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/index_store.h"

namespace cnclip {

struct ImportSummary {
  int64_t added = 0, updated = 0;
  int64_t unchanged = 0;     // rows the index held already, exactly (nothing written for them)
  bool interrupted = false;  // stopped by interrupt_requested() between batches; committed rows stay
};

// A row whose length is within this of 1 is stored bit for bit (see import_embeddings). Float
// normalization leaves a model's output within ~1e-7 of unit length (embed-image output of the fixture
// models: below 2e-7); a row 1e-5 off changes no score by more than 1e-5.
constexpr double kUnitLengthTolerance = 1e-5;

// Rows read from a file, ready for import_embeddings.
struct ImportRows {
  std::vector<std::string> paths;
  std::vector<float> embeddings;  // paths.size() rows of the dimension asked for
};

// The longest JSONL line read (a ViT-H embedding with full precision is ~25 KB).
constexpr size_t kMaxImportLineBytes = 16u << 20;

// Refuses what cannot be read as an input file before it is opened (a directory opens, then reads
// nothing): throws naming `path` and what it should be ("a JSONL file"): kInvalidArgument for a
// directory, the errno's code for a file that cannot be looked at.
void require_input_file(const std::string& path, const char* what);

// Reads JSONL as `embed-image` prints it: one object per line with "embedding" (an array of `dim`
// finite numbers, not all zero) and "path" (a non-empty string), or "path_bytes" (the lower-case hex
// of the raw path bytes, which output.h adds for a path that is not valid UTF-8; it wins over
// "path"). Other fields are ignored; blank lines and a CR before the newline are skipped.
// Throws Exception for the first bad line, naming `name` and the line number ("e.jsonl:3: "path" is
// empty"): kCorrupt for malformed lines (not JSON, not an object, missing or mistyped fields,
// non-finite or all-zero embeddings, lines over kMaxImportLineBytes), kMismatch for another
// dimension, kIoError when reading fails. Nothing is imported when it throws.
ImportRows read_embeddings_jsonl(std::istream& in, const std::string& name, int dim);
// The same for a file ("-" = stdin); a directory or unreadable file throws naming it.
ImportRows read_embeddings_jsonl_file(const std::string& path, int dim);
// A float32 or float64 [N, dim] .npy matrix and a text file with its N paths ("-" = stdin), one per
// line (a CR before the newline is removed, blank lines are skipped), or with `null_separated` each
// ending with a NUL (find -print0; newlines and CRs are part of the name, empty items skipped, a last
// item without its NUL counts). Throws naming the file (and the line or row): unreadable or a
// directory, another shape, a count that differs, a non-finite or zero row, a path holding a NUL.
ImportRows read_embeddings_npy(const std::string& npy_path, const std::string& paths_file, int dim,
                               bool null_separated = false);

// Adds (path, embedding) rows computed elsewhere (another machine, a GPU cluster, the benchmark).
// `embeddings` holds paths.size() rows of the bundle's dimension. A row of unit length (within
// kUnitLengthTolerance: what a model returns) is stored exactly as given, so embeddings from
// `embed-image` (JSONL or --out .npy) are stored bit for bit as `cnclip index` stores them; any other
// row is L2-normalized on the way in. Paths are made absolute; size and mtime are taken from the file
// when it exists here (so a later `index` of its folder keeps it), else 0 (so a later `index`
// re-encodes it).
// Idempotent: a row the index already holds exactly (same path, size, mtime and stored embedding) is
// left alone and counted in `unchanged`; a batch of such rows writes nothing, so importing the same
// file twice leaves the catalog, its generation and the snapshot as they were. Committed in batches of
// 20,000 rows (one transaction each, only for batches with changes); between batches it stops when
// interrupt_requested() (summary.interrupted): what was committed stays, and importing the same rows
// again skips it. The index must hold the same model (or be empty). Throws kMismatch for a wrong
// dimension, kInvalidArgument for an empty path and kCorrupt for a zero or non-finite row, before
// writing anything. `update_snapshot`: at the end, write the vector snapshot when something changed
// (else only when the current one is missing or damaged, IndexStore::ensure_snapshot); false leaves
// that to the caller (several files in a row: once after the last).
ImportSummary import_embeddings(IndexStore& store, const BundleManifest& bundle, const std::vector<std::string>& paths,
                                const std::vector<float>& embeddings, bool allow_mixed_precision = false,
                                bool update_snapshot = true);

// `import --map-prefix FROM=TO`: rows embedded on another machine, where the photos are mounted
// elsewhere (a cluster's /shared/photos, the laptop's /home/me/photos).
struct PrefixMap {
  std::string from, to;  // both absolute and lexically normal, without a trailing '/' (but "/")
};
// Parses "FROM=TO" (the first '=' splits; TO is made absolute). Throws Exception(kInvalidArgument)
// naming the option for a missing '=', an empty side, or a FROM that is not absolute.
PrefixMap parse_prefix_map(const std::string& text);
// Rewrites each path that is FROM or lies below it (FROM + "/...") to lie below TO instead, the first
// map that matches winning; other paths stay. Returns, for each map, how many paths it rewrote.
std::vector<int64_t> map_path_prefixes(std::vector<std::string>& paths, const std::vector<PrefixMap>& maps);

// An .npy named on its own (`cnclip import shard-1.npy`): its paths file PREFIX.paths, and the
// manifest PREFIX.json that `embed-image --out PREFIX` writes beside them ("" when there is none).
struct NpyImportFiles {
  std::string npy, paths, manifest;
};
// Throws Exception(kNotFound) naming the missing PREFIX.paths (and saying how to give another).
NpyImportFiles npy_import_files(const std::string& npy);

// Checks an embed-image manifest (shard.h) before its rows are read: kCorrupt when it is not one
// (names the file), kMismatch when its embeddings come from another model than `bundle` (another
// precision of the same checkpoint passes with allow_mixed_precision) or the row count of
// PREFIX.npy differs from the one it records (`rows`, or -1 to skip that check).
void check_shard_manifest(const std::string& manifest, const BundleManifest& bundle, bool allow_mixed_precision,
                          int64_t rows = -1);

}  // namespace cnclip

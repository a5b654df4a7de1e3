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
};

// Rows read from a file, ready for import_embeddings.
struct ImportRows {
  std::vector<std::string> paths;
  std::vector<float> embeddings;  // paths.size() rows of the dimension asked for
};

// The longest JSONL line read (a ViT-H embedding with full precision is ~25 KB).
constexpr size_t kMaxImportLineBytes = 16u << 20;

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
// A float32 or float64 [N, dim] .npy matrix and a text file with its N paths, one per line (a CR
// before the newline is removed, blank lines are skipped). Throws naming the file (and the line or
// row): unreadable or a directory, another shape, a count that differs, a non-finite or zero row.
ImportRows read_embeddings_npy(const std::string& npy_path, const std::string& paths_file, int dim);

// Adds (path, embedding) rows computed elsewhere (another machine, a GPU cluster, the benchmark).
// `embeddings` holds paths.size() rows of the bundle's dimension; each is L2-normalized on the way in.
// Paths are made absolute; size and mtime are taken from the file when it exists here (so a later
// `index` of its folder keeps it), else 0 (so a later `index` re-encodes it). Committed in batches;
// the index must hold the same model (or be empty). Throws kMismatch for a wrong dimension,
// kInvalidArgument for an empty path and kCorrupt for a zero or non-finite row, before writing anything.
ImportSummary import_embeddings(IndexStore& store, const BundleManifest& bundle, const std::vector<std::string>& paths,
                                const std::vector<float>& embeddings, bool allow_mixed_precision = false);

}  // namespace cnclip

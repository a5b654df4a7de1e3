// `cnclip remove`: dropping files and whole folders from an index (the photos are not touched).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/index_store.h"

namespace cnclip {

struct RemoveSummary {
  int64_t removed = 0;                 // catalog entries dropped
  std::vector<std::string> not_found;  // paths as given that matched nothing in the index
};

// Checks the paths before anything is opened: throws kInvalidArgument for an empty list or an empty
// path ("" would be made absolute as the current directory, and remove all of it).
void check_remove_paths(const std::vector<std::string>& paths);

// Removes every entry at or below each path, in one transaction: a path is resolved with
// realpath(3) when it exists, else matched as written (made absolute, trailing '/' dropped), so a
// file or folder already gone from disk can still be removed. Also forgets the roots at or below it
// and the remembered failures. Then rewrites the vector snapshot. `store` must be open kWrite.
// Throws kInvalidArgument as check_remove_paths does, and what the catalog throws (nothing is
// removed then).
RemoveSummary remove_paths(IndexStore& store, const std::vector<std::string>& paths);

}  // namespace cnclip

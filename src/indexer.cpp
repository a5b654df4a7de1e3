#include "cnclip/indexer.h"

#include <xxhash.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

#include "cnclip/runtime.h"
#include "encode_pipeline.h"

namespace cnclip {
namespace {

struct WorkItem {
  FoundFile file;
  std::optional<FileRecord> existing;  // set when the file changed since it was indexed
};

std::string content_hash(const std::vector<uint8_t>& bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  Catalog& catalog = store.catalog();
  IndexSummary summary;

  if (options.reindex) {
    CatalogTransaction tx(catalog);
    catalog.remove_all();
    store.record_model(bundle);
    tx.commit();
  } else {
    store.require_model(bundle, options.allow_mixed_precision);
  }

  // What to look at: folders (walked, and pruned of vanished files) and single files.
  std::vector<std::string> folders, files;
  const bool from_roots = options.paths.empty();
  for (const auto& p : from_roots ? catalog.roots() : options.paths) {
    auto canonical = canonical_path(p);
    if (!canonical) {
      if (!from_roots) throw Exception(canonical.error());
      folders.push_back(p);  // an indexed folder that is gone entirely: its files go too
      continue;
    }
    struct stat st {};
    if (::stat(canonical.value().c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      folders.push_back(canonical.value());
    } else {
      files.push_back(canonical.value());
    }
  }

  // Plan: compare what is on disk with the catalog.
  std::vector<WorkItem> work;
  std::unordered_multimap<std::string, FileRecord> vanished;  // by content hash
  std::set<std::string> seen;
  auto consider = [&](const FoundFile& f, const std::optional<FileRecord>& existing) {
    if (!seen.insert(f.path).second) return;
    if (existing && existing->size == f.size && existing->mtime_ns == f.mtime_ns) {
      ++summary.unchanged;
      return;
    }
    if (!options.retry_failed) {
      auto failed = catalog.failure(f.path);
      if (failed && failed->size == f.size && failed->mtime_ns == f.mtime_ns) {
        ++summary.failed_before;
        return;
      }
    }
    work.push_back(WorkItem{f, existing});
  };
  for (const auto& folder : folders) {
    std::vector<FoundFile> found;
    if (::access(folder.c_str(), F_OK) == 0) {
      walk_folder(folder, options.walk, found, [&](const Error& e) { observer.on_file_error(e); });
    }
    std::vector<FileRecord> known = catalog.files_under(folder);
    std::unordered_map<std::string, size_t> known_by_path;
    for (size_t i = 0; i < known.size(); ++i) known_by_path.emplace(known[i].path, i);
    std::vector<bool> still_there(known.size(), false);
    for (const auto& f : found) {
      auto it = known_by_path.find(f.path);
      if (it != known_by_path.end()) still_there[it->second] = true;
      consider(f, it == known_by_path.end() ? std::nullopt : std::optional<FileRecord>(known[it->second]));
    }
    for (size_t i = 0; i < known.size(); ++i) {
      // Files excluded by this run's options but still on disk are left alone.
      if (!still_there[i] && !seen.count(known[i].path) && ::access(known[i].path.c_str(), F_OK) != 0) {
        vanished.emplace(known[i].content_hash, known[i]);
      }
    }
  }
  for (const auto& path : files) {
    auto f = stat_file(path);
    if (!f) {
      observer.on_file_error(f.error());
      ++summary.failed;
      continue;
    }
    consider(f.value(), catalog.find(path));
  }
  observer.on_plan(static_cast<int64_t>(work.size()), summary.unchanged, static_cast<int64_t>(vanished.size()));

  // Encode in batches; each batch is committed in one transaction.
  bool model_recorded = false;
  int64_t done = 0;
  if (!work.empty()) {
    // Filled by the decoder threads, each slot by one of them, before its item is queued.
    std::vector<std::string> hashes(work.size());
    std::vector<std::optional<FileRecord>> moved_from(work.size());
    std::mutex vanished_mu;
    const Normalization norm = bundle.image;
    auto prepare = [&](size_t i) {
      detail::PreparedItem p;
      const WorkItem& item = work[i];
      auto bytes = read_file_bytes(item.file.path);
      if (!bytes) {
        p.error = bytes.error();
        return p;
      }
      hashes[i] = content_hash(bytes.value());
      if (!item.existing) {
        std::lock_guard<std::mutex> lock(vanished_mu);
        auto it = vanished.find(hashes[i]);
        if (it != vanished.end()) {  // a vanished file's content under a new name: a move
          p.kind = detail::PreparedItem::kNoModel;
          moved_from[i] = it->second;
          vanished.erase(it);
          return p;
        }
      }
      return detail::prepare_image(bytes.value(), item.file.path, norm, options.decode);
    };
    detail::EncodePipeline pipeline(model, work.size(), prepare,
                                    detail::EncodeSettings{options.decode_threads, options.model_workers, options.batch_size});
    bool stopped_early = false;
    while (auto batch = pipeline.next()) {
      if (batch->error) {
        pipeline.stop();
        std::rethrow_exception(batch->error);
      }
      CatalogTransaction tx(catalog);
      if (!model_recorded) {
        store.record_model(bundle);
        model_recorded = true;
      }
      size_t row = 0;
      for (const auto& p : batch->items) {
        const WorkItem& item = work[p.index];
        if (p.kind == detail::PreparedItem::kFailed) {
          observer.on_file_error(p.error);
          ++summary.failed;
          catalog.record_failure(FileRecord{0, item.file.path, item.file.size, item.file.mtime_ns, "", 0}, p.error.message);
          continue;
        }
        catalog.forget_failure(item.file.path);
        FileRecord r{0, item.file.path, item.file.size, item.file.mtime_ns, hashes[p.index], now_seconds()};
        if (p.kind == detail::PreparedItem::kPixels) {
          const float* e = &batch->embeddings[row++ * static_cast<size_t>(dim)];
          if (item.existing) {
            r.id = item.existing->id;
            catalog.update(r, e, dim);
            ++summary.updated;
          } else {
            catalog.insert(r, e, dim);
            ++summary.added;
          }
        } else {
          r.id = moved_from[p.index]->id;
          catalog.update(r, nullptr, dim);
          ++summary.moved;
        }
      }
      tx.commit();
      done += static_cast<int64_t>(batch->items.size());
      observer.on_progress(done, static_cast<int64_t>(work.size()));
      if (interrupt_requested() && done < static_cast<int64_t>(work.size())) {
        stopped_early = true;
        break;
      }
    }
    pipeline.stop();
    summary.interrupted = stopped_early;
    if (summary.interrupted) {
      // What was decoded but not committed is simply done again next time.
      summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return summary;
    }
  }

  // A complete pass: forget vanished files that were not moved, remember the folders.
  const auto known_roots = catalog.roots();
  bool new_roots = false;
  for (const auto& f : folders) {
    if (std::find(known_roots.begin(), known_roots.end(), f) == known_roots.end()) new_roots = true;
  }
  if (!vanished.empty() || new_roots) {
    CatalogTransaction tx(catalog);
    for (const auto& [hash, record] : vanished) {
      catalog.remove(record.id);
      ++summary.removed;
    }
    for (const auto& f : folders) {
      if (::access(f.c_str(), F_OK) == 0) catalog.add_root(f);
      else catalog.remove_root(f);
    }
    store.record_model(bundle);
    tx.commit();
  }
  store.ensure_snapshot();  // also replaces a damaged one
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace cnclip

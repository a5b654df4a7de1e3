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

std::string content_hash(const std::vector<uint8_t>& bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Phase 3: decode, encode and commit the plan's files, one transaction per batch. Returns false when
// interrupted before the end (what was committed is kept).
bool encode_and_commit(IndexStore& store, Model& model, IndexPlan& plan, const IndexOptions& options,
                       IndexObserver& observer, IndexSummary& summary) {
  if (plan.to_encode.empty()) return true;
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  Catalog& catalog = store.catalog();
  std::mutex vanished_mu;  // plan.vanished: a move takes its source out, from a decoder thread
  const Normalization norm = bundle.image;
  auto prepare = [&](size_t i) {
    const PlannedFile& item = plan.to_encode[i];
    auto bytes = read_file_bytes(item.file.path);
    if (!bytes) {
      detail::PreparedItem p;
      p.error = bytes.error();
      return p;
    }
    std::string hash = content_hash(bytes.value());
    if (!item.existing) {
      std::lock_guard<std::mutex> lock(vanished_mu);
      auto it = plan.vanished.find(hash);
      if (it != plan.vanished.end()) {  // a vanished file's content under a new name: a move
        detail::PreparedItem p;
        p.kind = detail::PreparedItem::kNoModel;
        p.content_hash = std::move(hash);
        p.reuse_id = it->second.id;
        plan.vanished.erase(it);
        return p;
      }
    }
    detail::PreparedItem p = detail::prepare_image(bytes.value(), item.file.path, norm, options.decode);
    p.content_hash = std::move(hash);
    return p;
  };
  detail::EncodePipeline pipeline(model, plan.to_encode.size(), prepare,
                                  detail::EncodeSettings{options.decode_threads, options.model_workers, options.batch_size});
  bool model_recorded = false;
  int64_t done = 0;
  const auto total = static_cast<int64_t>(plan.to_encode.size());
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
      const PlannedFile& item = plan.to_encode[p.index];
      if (p.kind == detail::PreparedItem::kFailed) {
        observer.on_file_error(p.error);
        ++summary.failed;
        catalog.record_failure(FileRecord{0, item.file.path, item.file.size, item.file.mtime_ns, "", 0}, p.error.message);
        continue;
      }
      catalog.forget_failure(item.file.path);
      FileRecord r{0, item.file.path, item.file.size, item.file.mtime_ns, p.content_hash, now_seconds()};
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
        r.id = p.reuse_id;
        catalog.update(r, nullptr, dim);
        ++summary.moved;
      }
    }
    tx.commit();
    done += static_cast<int64_t>(batch->items.size());
    observer.on_progress(done, total);
    if (interrupt_requested() && done < total) {
      pipeline.stop();
      return false;  // what was decoded but not committed is simply done again next time
    }
  }
  pipeline.stop();
  return true;
}

// Phase 4, after a complete pass: forget vanished files that were not moved, remember the folders.
void finish_pass(IndexStore& store, const BundleManifest& bundle, const std::vector<IndexTarget>& targets,
                 const IndexPlan& plan, IndexSummary& summary) {
  Catalog& catalog = store.catalog();
  const auto known_roots = catalog.roots();
  bool new_roots = false;
  for (const auto& t : targets) {
    if (!t.is_file && std::find(known_roots.begin(), known_roots.end(), t.path) == known_roots.end()) new_roots = true;
  }
  if (!plan.vanished.empty() || new_roots) {
    CatalogTransaction tx(catalog);
    for (const auto& [hash, record] : plan.vanished) {
      catalog.remove(record.id);
      ++summary.removed;
    }
    for (const auto& t : targets) {
      if (t.is_file) continue;
      if (::access(t.path.c_str(), F_OK) == 0) catalog.add_root(t.path);
      else catalog.remove_root(t.path);
    }
    store.record_model(bundle);
    tx.commit();
  }
  struct stat st {};
  if (::stat(store.snapshot_path().c_str(), &st) != 0) store.write_snapshot();
}

}  // namespace

std::vector<IndexTarget> resolve_targets(Catalog& catalog, const IndexOptions& options) {
  std::vector<IndexTarget> targets;
  const bool from_roots = options.paths.empty();
  for (const auto& p : from_roots ? catalog.roots() : options.paths) {
    auto canonical = canonical_path(p);
    if (!canonical) {
      if (!from_roots) throw Exception(canonical.error());
      targets.push_back(IndexTarget{p, false, options.walk});  // an indexed folder that is gone entirely
      continue;
    }
    struct stat st {};
    const bool is_dir = ::stat(canonical.value().c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    targets.push_back(IndexTarget{canonical.value(), !is_dir, options.walk});
  }
  return targets;
}

IndexPlan plan_index(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options,
                     IndexObserver& observer) {
  IndexPlan plan;
  std::set<std::string> seen;
  auto consider = [&](const FoundFile& f, const std::optional<FileRecord>& existing) {
    if (!seen.insert(f.path).second) return;
    if (existing && existing->size == f.size && existing->mtime_ns == f.mtime_ns) {
      ++plan.unchanged;
      return;
    }
    if (!options.retry_failed) {
      auto failed = catalog.failure(f.path);
      if (failed && failed->size == f.size && failed->mtime_ns == f.mtime_ns) {
        ++plan.failed_before;
        return;
      }
    }
    plan.to_encode.push_back(PlannedFile{f, existing});
  };
  for (const auto& target : targets) {
    if (target.is_file) continue;
    std::vector<FoundFile> found;
    if (::access(target.path.c_str(), F_OK) == 0) {
      walk_folder(target.path, target.walk, found, [&](const Error& e) { observer.on_file_error(e); });
    }
    std::vector<FileRecord> known = catalog.files_under(target.path);
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
        plan.vanished.emplace(known[i].content_hash, known[i]);
      }
    }
  }
  for (const auto& target : targets) {
    if (!target.is_file) continue;
    auto f = stat_file(target.path);
    if (!f) {
      observer.on_file_error(f.error());
      ++plan.failed;
      continue;
    }
    consider(f.value(), catalog.find(target.path));
  }
  return plan;
}

IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const BundleManifest& bundle = model.manifest();
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

  const std::vector<IndexTarget> targets = resolve_targets(catalog, options);
  IndexPlan plan = plan_index(catalog, targets, options, observer);
  summary.unchanged = plan.unchanged;
  summary.failed_before = plan.failed_before;
  summary.failed = plan.failed;
  observer.on_plan(static_cast<int64_t>(plan.to_encode.size()), summary.unchanged,
                   static_cast<int64_t>(plan.vanished.size()));

  if (!encode_and_commit(store, model, plan, options, observer, summary)) {
    summary.interrupted = true;
  } else {
    finish_pass(store, bundle, targets, plan, summary);
  }
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace cnclip

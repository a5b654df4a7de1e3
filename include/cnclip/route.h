// Instant CLI queries: `search-text` and `search-image` send their queries to a `cnclip serve` that
// runs for the same index, so they need neither LibTorch nor the model (a cold query loads both).
//
// The advert: while `cnclip serve` runs it also listens on the Unix socket INDEX/serve.sock (HTTP,
// a private protocol under /route/v1/, never on the TCP port). It binds a temporary name and
// hard-links it to serve.sock, so the advert appears whole; a stale one (a server killed with
// SIGKILL) refuses connections at once, and the next serve replaces it. The socket has the index
// folder's permissions (read-write for each class that may read and enter the folder): whoever can
// read the index can query it, as they could without the server. No request names a file to open:
// an indexed query image is named by its canonical path only to look up its stored embedding, other
// images are sent as bytes by the client, which reads them with its own permissions.
//
// A client uses the advert only when (1) serve.sock is a socket owned by the index's owner (the
// owner of catalog.sqlite3), (2) the process listening on it runs as that user (SO_PEERCRED), and
// (3) the server says it serves the same index folder (canonical path) with the same model (bundle
// fingerprint and precision) on the same device. Anything else (no advert, a stale one, another
// index or model, a server that does not answer within its timeout) makes the query run locally.
//
// Same output: the client checks the queries (tokenizer), the options and the files itself, as the
// local path does, and prints the server's results with the same printer; the server runs the same
// library calls (Model, Searcher) on the same batches of queries, so results, scores and order are
// the local ones. When the server answers an error that is not a single image's (an empty or damaged
// index, a model failure) or stops answering mid-way, the client answers that query and the rest
// locally, so the error (or the answer) and the exit status are exactly the local ones.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/error.h"
#include "cnclip/file_walk.h"
#include "cnclip/image_options.h"
#include "cnclip/search.h"

namespace cnclip {

// The advert's name in the index folder.
constexpr const char* kServeSocketName = "serve.sock";

// Set (to anything but "" or "0") in the environment, it turns routing off like --no-server.
constexpr const char* kNoServerEnv = "CNCLIP_NO_SERVER";

// A connection to the server advertised in an index folder. Not thread-safe (one per command).
class RouteClient {
 public:
  // The server advertised in `index_dir` when it may be used for queries with the model `bundle` on
  // `device` (see above), else null; `why_not`, when given, gets the reason. Never throws. Costs a
  // connect and one request (well under a millisecond on a local machine); a stale advert is
  // refused at once by the kernel.
  static std::unique_ptr<RouteClient> connect(const std::string& index_dir, const BundleManifest& bundle,
                                              const std::string& device, std::string* why_not = nullptr);
  ~RouteClient();
  RouteClient(const RouteClient&) = delete;
  RouteClient& operator=(const RouteClient&) = delete;

  enum class Status {
    kAnswered,     // `results` holds the answer
    kImageError,   // this image cannot be used (undecodable, too large...): `error`, as a local run says it
    kNeedBytes,    // the file is not indexed as it is now: send its bytes (search_image_bytes)
    kUnavailable,  // the server could not answer (gone, timed out, an error of its own): answer locally
  };
  struct Answer {
    Status status = Status::kUnavailable;
    std::vector<QueryResult> results;
    Error error;
  };

  // Whether the server can answer queries on the index with these options (the index is there, not
  // empty, and fits its model under `mixed_precision`): kAnswered with no results, or kUnavailable.
  Answer check(const SearchOptions& options, bool mixed_precision);
  // One result per query, for a batch encoded together (as a local run encodes it: same floats).
  Answer search_texts(const std::vector<std::string>& queries, const SearchOptions& options, bool mixed_precision);
  // An image file by its canonical path and what stat_file found now: answered from its stored
  // embedding when the index holds the file unchanged (same size and mtime), else kNeedBytes.
  // `label` is the query as given; `exclude` a path to leave out of the results ("" for none).
  Answer search_indexed_image(const std::string& label, const std::string& canonical, const FoundFile& now,
                              const std::string& exclude, const SearchOptions& options, bool mixed_precision);
  // An image as bytes, decoded by the server with `decode` and named `name` in its errors ("standard
  // input", the path as given); `label` is the query as given ("-", the path).
  Answer search_image_bytes(const std::string& label, const std::string& name, const std::vector<uint8_t>& bytes,
                            const DecodeOptions& decode, const std::string& exclude, const SearchOptions& options,
                            bool mixed_precision);

  // Why the last call was kUnavailable (for CNCLIP_ROUTE_DEBUG).
  const std::string& last_problem() const;

 private:
  struct Impl;
  explicit RouteClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whether routing is turned off by the environment (kNoServerEnv).
bool routing_disabled_by_environment();

}  // namespace cnclip

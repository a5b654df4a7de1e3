// `cnclip serve`: an HTTP service over one index, a JSON API (v1) and a web page, on the same library
// calls as the CLI (Model, IndexStore, Searcher), so its results equal `search-text`'s.
//
// API v1 (stable; documented in the README):
//   GET  /api/v1/search?q=TEXT&k=N&offset=M[&under=DIR&threshold=S]
//   POST /api/v1/search/image            the image as the body, or a multipart field "image"
//   GET  /api/v1/similar/ID              images like an indexed one (its stored embedding)
//   GET  /api/v1/info                    what `cnclip info --format json` prints
//   GET  /api/v1/thumb/ID                JPEG, upright, longest side 320, cached in INDEX/thumbs/
//   GET  /api/v1/image/ID                the original file, with its content type
// Results: {"query", "results": [{"id", "rank", "path"(, "path_bytes"), "score", "thumbnail", "image"}]}.
// Errors:  {"error": {"code", "message"}} with 400, 401, 403, 404, 405 (a route asked with another
// method; with an Allow header), 413, 414 (a request line over 8192 bytes), 415, 431, 500.
//
// Security: files are served by catalog id only (no request parameter is ever a path); the Host
// header must name the bound host or a loopback name (DNS rebinding), a POST's Origin must be this
// server; a non-loopback host requires a token, checked on every request; requests are bounded in
// size, header count and time, and served by a fixed pool of worker threads.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip {

struct ServerOptions {
  std::string host = "127.0.0.1";  // address to bind; loopback unless a token is given
  int port = 8765;                 // 0: a free port, chosen by the system
  std::string index_dir;           // the index folder (resolved: resolve_index_dir)
  std::string model_dir;           // the model bundle (resolved: resolve_model_dir)
  ModelOptions model;
  bool mixed_precision = false;                // as --mixed-precision: accept the other precision's index
  DecodeOptions decode;                        // how uploaded example images are decoded
  size_t max_upload_bytes = size_t{32} << 20;  // larger request bodies get 413
  // Required (non-empty) when `host` is not a loopback address. Accepted as "Authorization: Bearer
  // T", as the cookie cnclip_token=T, or as ?token=T (which also sets the cookie, for the page).
  std::string token;
  int workers = 8;       // fixed pool of request threads
  int thumb_size = 320;  // longest side of thumbnails, in pixels
  // Advertise the server in the index folder (INDEX/serve.sock, see route.h) so that `search-text`
  // and `search-image` on this index send their queries here. Best effort: without the advert
  // (a read-only index, another live server's advert) the server runs all the same.
  bool advertise = true;
};

// Whether `host` is a loopback address or name (127.0.0.0/8, ::1, localhost).
bool is_loopback_host(const std::string& host);
// A random token (32 hex digits from /dev/urandom), for a non-loopback host given without one.
std::string generate_token();

// The service. create() opens the model (and loads its text tower: the first query is answered
// warm) and binds the socket; run() serves until stop(). The index is opened when first needed and
// reopened when missing, and its vectors are reloaded whenever the catalog's generation changes, so
// what a concurrent `cnclip index` commits is found without a restart. The image tower is loaded on
// the first image query. Errors (bad options, a port in use, a model that does not match the index)
// throw Exception: kInvalidArgument for options, kIoError for the socket, others from the library.
// The advert (route.h) is made by create() and withdrawn when run() returns or the Server is
// destroyed; a server started before its index folder exists makes it once the folder appears.
// Thread-safety: stop() may be called from any thread (a signal watcher); the rest from one thread.
class Server {
 public:
  static std::unique_ptr<Server> create(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;  // the bound port (the chosen one for port 0)
  // The advert's path while this server owns it, else "" with the reason in advert_note().
  std::string advert() const;
  std::string advert_note() const;
  std::string url() const;  // "http://HOST:PORT/"
  // Serves until stop() or until `should_stop` (polled every 100 ms; may be empty) returns true.
  void run(const std::function<bool()>& should_stop = {});
  void stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cnclip

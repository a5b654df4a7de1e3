// The client side of routing (include/cnclip/route.h).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <httplib.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "cnclip/route.h"
#include "server/route_protocol.h"

namespace cnclip {
namespace {

using json = nlohmann::json;

// The name to connect to or bind: the path itself when it fits in sun_path, else the same file
// through /proc/self/fd/DIRFD/ (which needs `dir_fd` open on its folder).
std::string socket_address(const std::string& dir, const std::string& name, int dir_fd) {
  const std::string full = dir + "/" + name;
  if (full.size() < sizeof(sockaddr_un{}.sun_path)) return full;
  return "/proc/self/fd/" + std::to_string(dir_fd) + "/" + name;
}

}  // namespace

bool routing_disabled_by_environment() {
  const char* v = std::getenv(kNoServerEnv);
  return v && *v && std::strcmp(v, "0") != 0;
}

struct RouteClient::Impl {
  int dir_fd = -1;
  std::unique_ptr<httplib::Client> http;
  std::string problem;

  ~Impl() {
    http.reset();
    if (dir_fd >= 0) ::close(dir_fd);
  }

  // A JSON answer of status 200, else null with `problem` set.
  std::optional<json> post(const std::string& path, const std::string& body, const char* type) {
    auto res = http->Post(path.c_str(), body, type);
    return answer(res);
  }
  std::optional<json> answer(const httplib::Result& res) {
    if (!res) {
      problem = "the server did not answer (" + httplib::to_string(res.error()) + ")";
      return std::nullopt;
    }
    try {
      json j = json::parse(res->body);
      if (res->status == 200) return j;
      problem = "the server answered " + std::to_string(res->status) + ": " +
                (j.contains("error") ? route::error_from_json(j["error"]).message : res->body);
    } catch (const std::exception& e) {
      problem = std::string("the server's answer is not understood (") + e.what() + ")";
    }
    return std::nullopt;
  }
};

RouteClient::RouteClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RouteClient::~RouteClient() = default;

const std::string& RouteClient::last_problem() const { return impl_->problem; }

std::unique_ptr<RouteClient> RouteClient::connect(const std::string& index_dir, const BundleManifest& bundle,
                                                  const std::string& device, std::string* why_not) {
  std::string ignored;
  std::string& why = why_not ? *why_not : ignored;
  try {
    if (routing_disabled_by_environment()) {
      why = std::string(kNoServerEnv) + " is set";
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    impl->dir_fd = ::open(index_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (impl->dir_fd < 0) {
      why = index_dir + ": " + std::strerror(errno);
      return nullptr;
    }
    // The advert must be a socket of the index's owner: nobody else can pose as the server.
    struct stat sock_st {
    }, catalog_st{};
    if (::fstatat(impl->dir_fd, kServeSocketName, &sock_st, AT_SYMLINK_NOFOLLOW) != 0) {
      why = "no server advertised (" + std::string(std::strerror(errno)) + ")";
      return nullptr;
    }
    if (!S_ISSOCK(sock_st.st_mode)) {
      why = std::string(kServeSocketName) + " is not a socket";
      return nullptr;
    }
    if (::fstatat(impl->dir_fd, "catalog.sqlite3", &catalog_st, 0) != 0 || catalog_st.st_uid != sock_st.st_uid) {
      why = std::string(kServeSocketName) + " does not belong to the index's owner";
      return nullptr;
    }
    const std::string address = socket_address(index_dir, kServeSocketName, impl->dir_fd);
    // A probe connection: a stale advert (its server killed) is refused here at once, and the
    // process listening must run as the socket's owner.
    {
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, address.c_str(), address.size() + 1);
      if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        why = "the advertised server does not answer (" + std::string(std::strerror(errno)) + "): a stale advert";
        if (fd >= 0) ::close(fd);
        return nullptr;
      }
      ucred peer{};
      socklen_t len = sizeof(peer);
      const bool same_user = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 && peer.uid == sock_st.st_uid;
      ::close(fd);
      if (!same_user) {
        why = "the process listening on " + std::string(kServeSocketName) + " is not the index owner's";
        return nullptr;
      }
    }
    impl->http = std::make_unique<httplib::Client>(address);
    impl->http->set_address_family(AF_UNIX);
    impl->http->set_keep_alive(true);
    impl->http->set_connection_timeout(2, 0);
    impl->http->set_write_timeout(60, 0);
    // A first image query loads the image tower (seconds for a large model); a search of millions
    // of vectors takes a fraction of a second. A server stuck longer than this is given up on.
    impl->http->set_read_timeout(300, 0);
    auto hello = impl->answer(impl->http->Get("/route/v1/hello"));
    if (!hello) {
      why = impl->problem;
      return nullptr;
    }
    const json& h = *hello;
    auto canonical = canonical_path(index_dir);
    if (detail::json_integer_or<int>(h, "protocol", 0) != route::kProtocol) {
      why = "the server speaks another protocol version";
    } else if (!canonical || route::from_bytes_field(h.at("index")) != canonical.value()) {
      why = "the server serves another index";
    } else if (h.value("model_fingerprint", "") != bundle.fingerprint ||
               h.value("model_precision", "") != bundle.precision) {
      why = "the server runs another model (" + h.value("model_fingerprint", "").substr(0, 16) + " " +
            h.value("model_precision", "") + ")";
    } else if (h.value("device", "") != device) {
      why = "the server computes on another device (" + h.value("device", "") + ")";
    } else {
      return std::unique_ptr<RouteClient>(new RouteClient(std::move(impl)));
    }
    return nullptr;
  } catch (const std::exception& e) {
    why = std::string("routing failed: ") + e.what();
    return nullptr;
  }
}

RouteClient::Answer RouteClient::check(const SearchOptions& options, bool mixed_precision) {
  Answer a;
  nlohmann::ordered_json body{{"options", route::options_json(options)}, {"mixed_precision", mixed_precision}};
  try {
    if (impl_->post("/route/v1/check", dump_json(body), "application/json")) a.status = Status::kAnswered;
  } catch (const std::exception& e) {
    impl_->problem = e.what();
  }
  return a;
}

RouteClient::Answer RouteClient::search_texts(const std::vector<std::string>& queries, const SearchOptions& options,
                                              bool mixed_precision) {
  Answer a;
  nlohmann::ordered_json body;
  body["queries"] = nlohmann::ordered_json::array();
  for (const auto& q : queries) body["queries"].push_back(route::bytes_field(q));
  body["options"] = route::options_json(options);
  body["mixed_precision"] = mixed_precision;
  try {
    auto j = impl_->post("/route/v1/search-text", dump_json(body), "application/json");
    if (!j) return a;
    a.results = route::results_from_json(j->at("results"));
    if (a.results.size() != queries.size()) {
      impl_->problem = "the server answered " + std::to_string(a.results.size()) + " of " +
                       std::to_string(queries.size()) + " queries";
      a.results.clear();
      return a;
    }
    a.status = Status::kAnswered;
  } catch (const std::exception& e) {
    impl_->problem = std::string("the server's answer is not understood (") + e.what() + ")";
    a.results.clear();
  }
  return a;
}

namespace {

RouteClient::Answer image_answer(const std::optional<json>& j, std::string& problem) {
  RouteClient::Answer a;
  if (!j) return a;
  try {
    if (j->value("need_bytes", false)) {
      a.status = RouteClient::Status::kNeedBytes;
    } else if (j->contains("image_error")) {
      a.error = route::error_from_json(j->at("image_error"));
      a.status = RouteClient::Status::kImageError;
    } else {
      a.results = route::results_from_json(j->at("results"));
      if (a.results.size() == 1) {
        a.status = RouteClient::Status::kAnswered;
      } else {
        problem = "the server answered " + std::to_string(a.results.size()) + " results for one image";
        a.results.clear();
      }
    }
  } catch (const std::exception& e) {
    problem = std::string("the server's answer is not understood (") + e.what() + ")";
    a = {};
  }
  return a;
}

}  // namespace

RouteClient::Answer RouteClient::search_indexed_image(const std::string& label, const std::string& canonical,
                                                      const FoundFile& now, const std::string& exclude,
                                                      const SearchOptions& options, bool mixed_precision) {
  nlohmann::ordered_json head;
  head["label"] = route::bytes_field(label);
  head["path"] = route::bytes_field(canonical);
  head["size"] = now.size;
  head["mtime_ns"] = now.mtime_ns;
  head["exclude"] = route::bytes_field(exclude);
  head["options"] = route::options_json(options);
  head["mixed_precision"] = mixed_precision;
  head["has_bytes"] = false;
  try {
    return image_answer(impl_->post("/route/v1/search-image", dump_json(head) + "\n", "application/octet-stream"),
                        impl_->problem);
  } catch (const std::exception& e) {
    impl_->problem = e.what();
    return {};
  }
}

RouteClient::Answer RouteClient::search_image_bytes(const std::string& label, const std::string& name,
                                                    const std::vector<uint8_t>& bytes, const DecodeOptions& decode,
                                                    const std::string& exclude, const SearchOptions& options,
                                                    bool mixed_precision) {
  nlohmann::ordered_json head;
  head["label"] = route::bytes_field(label);
  head["name"] = route::bytes_field(name);
  head["exclude"] = route::bytes_field(exclude);
  head["options"] = route::options_json(options);
  head["mixed_precision"] = mixed_precision;
  head["decode"] = route::decode_json(decode);
  head["has_bytes"] = true;
  std::string body = dump_json(head) + "\n";
  body.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  try {
    return image_answer(impl_->post("/route/v1/search-image", body, "application/octet-stream"), impl_->problem);
  } catch (const std::exception& e) {
    impl_->problem = e.what();
    return {};
  }
}

}  // namespace cnclip

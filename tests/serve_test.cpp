// cnclip serve: the API against a server on an ephemeral loopback port, started by each test and
// always stopped. Requests are sent byte for byte over a socket, so paths reach the server exactly
// as written (no client-side normalization of "../" or "%2e").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <regex>
#include <thread>

#include "cnclip/server.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
using test::TempDir;

struct Response {
  int status = 0;
  std::string head, body;
  json body_json() const { return json::parse(body); }
};

// One request on its own connection; "Host: 127.0.0.1:PORT" unless `headers` names a Host.
Response request(int port, const std::string& method, const std::string& target, const std::string& body = "",
                 const std::vector<std::string>& headers = {}) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return {};
  }
  std::string req = method + " " + target + " HTTP/1.1\r\n";
  bool has_host = false;
  for (const auto& h : headers) {
    req += h + "\r\n";
    has_host = has_host || h.rfind("Host:", 0) == 0;
  }
  if (!has_host) req += "Host: 127.0.0.1:" + std::to_string(port) + "\r\n";
  bool has_length = false;
  for (const auto& h : headers) has_length = has_length || h.rfind("Content-Length:", 0) == 0;
  if (!has_length && (!body.empty() || method == "POST"))
    req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "Connection: close\r\n\r\n" + body;
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer (413) and close before reading everything
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  Response r;
  const auto end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(9, 3));
  r.head = raw.substr(0, end);
  r.body = raw.substr(end + 4);
  return r;
}

std::string multipart(const std::string& field, const std::string& filename, const std::string& content,
                      std::string& content_type) {
  const std::string boundary = "cnclipTestBoundary7MA4YWxk";
  content_type = "Content-Type: multipart/form-data; boundary=" + boundary;
  return "--" + boundary + "\r\nContent-Disposition: form-data; name=\"" + field + "\"; filename=\"" + filename +
         "\"\r\nContent-Type: application/octet-stream\r\n\r\n" + content + "\r\n--" + boundary + "--\r\n";
}

// `cnclip serve --port 0 ARGS` in the background; stopped (SIGTERM, then SIGKILL) when destroyed.
class ServeProcess {
 public:
  // `prefix` runs the binary through another command that execs it (setpriv, to run as another user).
  explicit ServeProcess(const std::string& args, int port = 0, const std::string& prefix = "") {
    err_path_ = dir_ / "stderr";
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string cmd = "exec " + prefix + CNCLIP_BINARY + " serve --port " + std::to_string(port) + " " + args +
                              " 2> " + test::shell_quote(err_path_) + " > /dev/null < /dev/null";
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const std::regex listening("listening on http://[^ ]*:([0-9]+)/");
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::smatch m;
      const std::string err = test::read_text(err_path_);
      if (std::regex_search(err, m, listening)) port_ = std::stoi(m[1]);
      if (port_ == 0 && ::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServeProcess() { stop(); }
  int port() const { return port_; }
  bool exited() const { return pid_ < 0; }
  std::string err() const { return test::read_text(err_path_); }
  // SIGTERM; returns the exit status (or -1 when it had to be killed).
  int stop() {
    if (pid_ <= 0) return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    pid_ = -1;
    return -1;
  }

 private:
  TempDir dir_;
  std::string err_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  int status_ = 0;
};

// An index of the fixture photos, built with the tiny bundle.
class Serve : public ::testing::Test {
 protected:
  void SetUp() override {
    photos_ = tmp_ / "photos";
    index_ = tmp_ / "index";
    ::mkdir(photos_.c_str(), 0755);
    for (const char* f : {"astronaut_palette.png", "camera_gray_1000x100.png", "chelsea_rgba.png",
                          "coffee_2048x1366_exif6.jpg", "pokemon.jpeg", "rocket_rgb16_17x9.png"}) {
      test::copy_file(test::fixtures(std::string("images/") + f), photos_ + "/" + f);
    }
    auto r = test::run_cnclip(test::concat({"index", "-q", photos_}, common_args()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // For ServeProcess (a shell command line) and for run_cnclip.
  std::string common() const {
    return "--model " + test::shell_quote(test::tiny_bundle()) + " --index " + test::shell_quote(index_);
  }
  std::vector<std::string> common_args() const { return {"--model", test::tiny_bundle(), "--index", index_}; }
  // search-text's jsonl lines as JSON objects, answered by the CLI itself (not routed to the server
  // under test).
  std::vector<json> cli_search(const std::string& q, int k, const std::vector<std::string>& extra = {}) {
    auto r = test::run_cnclip(test::concat(
        test::concat({"search-text", q, "-k", std::to_string(k), "--format", "jsonl", "--no-server"}, extra),
        common_args()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<json> out;
    for (const auto& l : test::lines(r.out)) out.push_back(json::parse(l));
    return out;
  }

  // `search-text -` over `queries`, one process for all: each query's results, in rank order.
  std::map<std::string, std::vector<json>> cli_search_each(const std::vector<std::string>& queries, int k,
                                                           const std::vector<std::string>& extra = {}) {
    std::string lines;
    for (const auto& q : queries) lines += q + "\n";
    auto r = test::run_cnclip(
        test::concat(
            test::concat({"search-text", "-", "-k", std::to_string(k), "--format", "jsonl", "--no-server"}, extra),
            common_args()),
        lines);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::map<std::string, std::vector<json>> out;
    for (const auto& l : test::lines(r.out)) {
      json j = json::parse(l);
      out[j["query"].get<std::string>()].push_back(j);
    }
    return out;
  }

  TempDir tmp_;
  std::string photos_, index_;
};

// The first n of `rows`.
std::vector<json> first(const std::vector<json>& rows, size_t n) {
  return {rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(std::min(n, rows.size()))};
}

void expect_same_results(const json& api, const std::vector<json>& cli, size_t offset = 0) {
  ASSERT_EQ(api["results"].size() + offset, cli.size()) << api.dump();
  for (size_t i = 0; i < api["results"].size(); ++i) {
    const json& a = api["results"][i];
    const json& c = cli[i + offset];
    EXPECT_EQ(a["path"], c["path"]);
    EXPECT_EQ(a["rank"], c["rank"]);
    EXPECT_EQ(a["score"].get<double>(), c["score"].get<double>()) << a["path"];
    const std::string id = std::to_string(a["id"].get<int64_t>());
    EXPECT_EQ(a["thumbnail"], "/api/v1/thumb/" + id);
    EXPECT_EQ(a["image"], "/api/v1/image/" + id);
  }
}

TEST_F(Serve, TextResultsEqualSearchText) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  EXPECT_NE(server.err().find("listening on http://127.0.0.1:"), std::string::npos);
  // What the command line answers, each query's top 10 in one process (a top k is the first k of them).
  const std::vector<std::string> queries{"小狗", "夕阳、大海、沙滩", "a cat on a sofa", "火箭"};
  auto cli = cli_search_each(queries, 10);
  auto cli_filtered = cli_search_each(queries, 10, {"--threshold", "-0.05", "--under", photos_});
  for (const std::string& q : queries) {
    ASSERT_EQ(cli[q].size(), 6u) << q;  // every photo of the index
    for (int k : {1, 3, 10}) {
      auto r = request(server.port(), "GET", "/api/v1/search?q=" + test::url_encode(q) + "&k=" + std::to_string(k));
      ASSERT_EQ(r.status, 200) << r.body;
      json j = r.body_json();
      EXPECT_EQ(j["query"], q);
      expect_same_results(j, first(cli[q], static_cast<size_t>(k)));
    }
    // offset pages through the same ranking: ranks 3..4 of -k 4.
    auto r = request(server.port(), "GET", "/api/v1/search?q=" + test::url_encode(q) + "&k=2&offset=2");
    ASSERT_EQ(r.status, 200) << r.body;
    expect_same_results(r.body_json(), first(cli[q], 4), 2);
    // under and threshold filter as the CLI's options do.
    r = request(server.port(), "GET",
                "/api/v1/search?q=" + test::url_encode(q) + "&k=10&threshold=-0.05&under=" + test::url_encode(photos_));
    ASSERT_EQ(r.status, 200) << r.body;
    expect_same_results(r.body_json(), cli_filtered[q]);
  }
  // Bad parameters are 400 with a JSON error naming the parameter.
  for (const std::string& target : std::vector<std::string>{
           "/api/v1/search", "/api/v1/search?q=", "/api/v1/search?q=%20%20", "/api/v1/search?q=x&k=0",
           "/api/v1/search?q=x&k=abc", "/api/v1/search?q=x&k=1001", "/api/v1/search?q=x&offset=-1",
           "/api/v1/search?q=x&threshold=nan", "/api/v1/search?q=%FF%FE", "/api/v1/search?q=x&under=relative/dir"}) {
    auto r = request(server.port(), "GET", target);
    EXPECT_EQ(r.status, 400) << target << ": " << r.body;
    if (r.status == 400) {
      EXPECT_EQ(r.body_json()["error"]["code"], "bad_request") << target;
    }
  }
  EXPECT_EQ(server.stop(), 0) << server.err();
  EXPECT_NE(server.err().find("stopped"), std::string::npos);
}

TEST_F(Serve, FilesOnlyByCatalogIdEverythingElse404) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  const std::string secret = test::read_text("/etc/passwd").substr(0, 10);
  for (const std::string& target : std::vector<std::string>{
           "/../../../etc/passwd", "/api/v1/image/../../../../etc/passwd", "/api/v1/thumb/..%2f..%2fetc%2fpasswd",
           "/%2e%2e/%2e%2e/etc/passwd", "/api/v1/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/v1/image//etc/passwd",
           "/api/v1/image/" + test::url_encode(photos_ + "/pokemon.jpeg"), "/etc/passwd", "/api/v1/image/1%00",
           "/api/v1/thumb/1%00.jpg", "/index.html%00.js", "/api/v1/image/999999", "/api/v1/thumb/999999",
           "/api/v1/similar/999999", "/api/v1/image/-1", "/api/v1/image/99999999999999999999999", "/api/v1/nothing",
           "/api/v2/search?q=x"}) {
    auto r = request(server.port(), "GET", target);
    EXPECT_EQ(r.status, 404) << target << ": " << r.body;
    EXPECT_EQ(r.body.find(secret), std::string::npos) << target;
    if (r.status == 404) {
      EXPECT_EQ(r.body_json()["error"]["code"], "not_found") << target;
    }
  }
  // The image of a real id is the file itself, with its type.
  auto hits = request(server.port(), "GET", "/api/v1/search?q=x&k=10").body_json()["results"];
  ASSERT_EQ(hits.size(), 6u);
  for (const auto& h : hits) {
    auto r = request(server.port(), "GET", h["image"].get<std::string>());
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.body, test::read_text(h["path"].get<std::string>())) << h["path"];
    const std::string type =
        h["path"].get<std::string>().find(".png") != std::string::npos ? "image/png" : "image/jpeg";
    EXPECT_NE(r.head.find("Content-Type: " + type), std::string::npos) << r.head;
  }
}

// What sits at an indexed path now is served only if it is still that file: a symbolic link swapped
// in (to a file the index never held), a folder swapped for a link, or a changed file give 404.
TEST_F(Serve, SwappedOrChangedFilesAreNotServed) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  std::map<std::string, int64_t> id_of;
  const json all = request(server.port(), "GET", "/api/v1/search?q=x&k=10").body_json();
  for (const auto& h : all["results"]) {
    id_of[std::filesystem::path(h["path"].get<std::string>()).filename()] = h["id"];
  }
  ASSERT_EQ(id_of.size(), 6u);
  const std::string secret = tmp_ / "secret.txt";
  test::write_text(secret, std::string(6220, 's'));  // the size of pokemon.jpeg
  auto swap_for_link = [&](const std::string& name) {
    const std::string p = photos_ + "/" + name;
    std::filesystem::remove(p);
    std::filesystem::create_symlink(secret, p);
  };
  swap_for_link("pokemon.jpeg");
  test::write_text(photos_ + "/rocket_rgb16_17x9.png", "changed");
  // The folder itself swapped for a link to a copy elsewhere.
  const std::string moved = tmp_ / "moved";
  std::filesystem::rename(photos_, moved);
  std::filesystem::create_directory_symlink(moved, photos_);
  for (const std::string& name :
       {std::string("pokemon.jpeg"), std::string("rocket_rgb16_17x9.png"), std::string("chelsea_rgba.png")}) {
    for (const std::string kind : {"image", "thumb"}) {
      auto r = request(server.port(), "GET", "/api/v1/" + kind + "/" + std::to_string(id_of[name]));
      EXPECT_EQ(r.status, 404) << kind << " " << name << ": " << r.body.substr(0, 200);
      EXPECT_EQ(r.body.find("sss"), std::string::npos);
    }
  }
}

TEST_F(Serve, InfoIsWhatCnclipInfoPrints) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  auto r = request(server.port(), "GET", "/api/v1/info");
  ASSERT_EQ(r.status, 200) << r.body;
  auto cli = test::run_cnclip({"info", "--format", "json", "--index", index_});
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(r.body_json(), json::parse(cli.out));
  EXPECT_EQ(r.body_json()["files"], 6);
}

TEST_F(Serve, ThumbnailsAreUprightBoundedAndCached) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  auto hits = request(server.port(), "GET", "/api/v1/search?q=x&k=10").body_json()["results"];
  ASSERT_EQ(hits.size(), 6u);
  for (const auto& h : hits) {
    const std::string path = h["path"];
    auto r = request(server.port(), "GET", h["thumbnail"].get<std::string>());
    ASSERT_EQ(r.status, 200) << path << ": " << r.body;
    EXPECT_NE(r.head.find("Content-Type: image/jpeg"), std::string::npos);
    cv::Mat thumb = cv::imdecode(std::vector<uchar>(r.body.begin(), r.body.end()), cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(thumb.empty()) << path;
    cv::Mat original = cv::imread(path, cv::IMREAD_COLOR);  // applies EXIF orientation
    const int longest = std::max(original.cols, original.rows);
    const double f = longest > 320 ? 320.0 / longest : 1.0;
    EXPECT_EQ(std::max(thumb.cols, thumb.rows), std::min(longest, 320)) << path;
    EXPECT_NEAR(thumb.cols, original.cols * f, 1.0) << path;  // upright: same orientation as a viewer's
    EXPECT_NEAR(thumb.rows, original.rows * f, 1.0) << path;
    // Served again from the cache: the same bytes.
    EXPECT_EQ(request(server.port(), "GET", h["thumbnail"].get<std::string>()).body, r.body);
  }
  // The coffee photo is landscape on disk and portrait by its EXIF tag.
  int count = 0;
  for (const auto& e : std::filesystem::directory_iterator(index_ + "/thumbs")) {
    ++count;
    EXPECT_EQ(e.path().extension(), ".jpg");
  }
  EXPECT_EQ(count, 6);
  // A damaged cached thumbnail (garbage, empty, cut short) is made again, not served.
  const std::string first = hits[0]["thumbnail"];
  const std::string good = request(server.port(), "GET", first).body;
  std::string cached;
  for (const auto& e : std::filesystem::directory_iterator(index_ + "/thumbs")) {
    if (test::read_text(e.path().string()) == good) cached = e.path().string();
  }
  ASSERT_FALSE(cached.empty());
  for (const std::string& damage : {std::string("garbage\n"), std::string(), good.substr(0, good.size() / 2)}) {
    test::write_text(cached, damage);
    auto r = request(server.port(), "GET", first);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, good) << "damage of " << damage.size() << " bytes served";
    EXPECT_EQ(test::read_text(cached), good) << "the cache is repaired";
  }
}

TEST_F(Serve, ImageUploadsSimilarAndTheirErrors) {
  ServeProcess server(common() + " --max-upload-mb 0.05");
  ASSERT_GT(server.port(), 0) << server.err();
  const std::string small = test::read_text(photos_ + "/pokemon.jpeg");              // 6 KB
  const std::string big = test::read_text(photos_ + "/coffee_2048x1366_exif6.jpg");  // 150 KB
  // search-image gives the same ranking for the same bytes.
  auto cli = test::run_cnclip(test::concat(
      {"search-image", photos_ + "/pokemon.jpeg", "-k", "3", "--format", "jsonl", "--no-server"}, common_args()));
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  std::vector<json> expected;
  for (const auto& l : test::lines(cli.out)) expected.push_back(json::parse(l));
  auto raw = request(server.port(), "POST", "/api/v1/search/image?k=3", small, {"Content-Type: image/jpeg"});
  ASSERT_EQ(raw.status, 200) << raw.body;
  expect_same_results(raw.body_json(), expected);
  std::string type;
  auto body = multipart("image", "pokemon.jpeg", small, type);
  auto form = request(server.port(), "POST", "/api/v1/search/image?k=3", body, {type});
  ASSERT_EQ(form.status, 200) << form.body;
  EXPECT_EQ(form.body_json()["query"], "pokemon.jpeg");
  expect_same_results(form.body_json(), expected);
  EXPECT_NE(server.err().find("listening"), std::string::npos);

  // Over the limit: 413, raw or multipart.
  auto r = request(server.port(), "POST", "/api/v1/search/image", big, {"Content-Type: image/jpeg"});
  EXPECT_EQ(r.status, 413) << r.body;
  if (r.status == 413) {
    EXPECT_EQ(r.body_json()["error"]["code"], "too_large");
  }
  body = multipart("image", "coffee.jpg", big, type);
  EXPECT_EQ(request(server.port(), "POST", "/api/v1/search/image", body, {type}).status, 413);
  // A declared length far over the limit is refused before any body is read.
  r = request(server.port(), "POST", "/api/v1/search/image", "",
              {"Content-Type: image/jpeg", "Content-Length: 9999999999"});
  EXPECT_EQ(r.status, 413) << r.body;
  r = request(server.port(), "POST", "/api/v1/search/image", "", {"Content-Type: image/jpeg"});
  EXPECT_EQ(r.status, 400) << r.body;  // empty body
  // Not an image: 400; not an image type: 415; no "image" field: 400.
  const std::string text = "this is a text file, not a photo\n";
  r = request(server.port(), "POST", "/api/v1/search/image", text, {"Content-Type: application/octet-stream"});
  EXPECT_EQ(r.status, 400) << r.body;
  if (r.status == 400) {
    EXPECT_EQ(r.body_json()["error"]["code"], "bad_image");
  }
  body = multipart("image", "notes.jpg", text, type);
  EXPECT_EQ(request(server.port(), "POST", "/api/v1/search/image", body, {type}).status, 400);
  body = multipart("other", "pokemon.jpeg", small, type);
  EXPECT_EQ(request(server.port(), "POST", "/api/v1/search/image", body, {type}).status, 400);
  r = request(server.port(), "POST", "/api/v1/search/image", text, {"Content-Type: text/plain"});
  EXPECT_EQ(r.status, 415) << r.body;
  const std::string truncated = small.substr(0, small.size() / 2);
  EXPECT_EQ(request(server.port(), "POST", "/api/v1/search/image", truncated, {"Content-Type: image/jpeg"}).status,
            400);

  // similar/ID: the stored embedding's neighbours, itself left out.
  const int64_t id = raw.body_json()["results"][0]["id"];
  auto sim = request(server.port(), "GET", "/api/v1/similar/" + std::to_string(id) + "?k=10");
  ASSERT_EQ(sim.status, 200) << sim.body;
  auto cli_sim = test::run_cnclip(test::concat(
      {"search-image", photos_ + "/pokemon.jpeg", "--exclude-self", "-k", "10", "--format", "jsonl", "--no-server"},
      common_args()));
  std::vector<json> expected_sim;
  for (const auto& l : test::lines(cli_sim.out)) expected_sim.push_back(json::parse(l));
  expect_same_results(sim.body_json(), expected_sim);
  EXPECT_EQ(sim.body_json()["results"].size(), 5u);
}

TEST_F(Serve, HostOriginAndToken) {
  {
    ServeProcess server(common());
    ASSERT_GT(server.port(), 0) << server.err();
    const std::string p = std::to_string(server.port());
    // DNS rebinding: a page of another name that resolves to 127.0.0.1 sends its own Host.
    for (const std::string& host :
         std::vector<std::string>{"Host: evil.example:" + p, "Host: evil.example", "Host: 127.0.0.1.evil.example"}) {
      auto r = request(server.port(), "GET", "/api/v1/info", "", {host});
      EXPECT_EQ(r.status, 403) << host;
      if (r.status == 403) {
        EXPECT_EQ(r.body_json()["error"]["code"], "bad_host");
      }
    }
    for (const std::string& host :
         std::vector<std::string>{"Host: localhost:" + p, "Host: 127.0.0.1:" + p, "Host: [::1]:" + p}) {
      EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", {host}).status, 200) << host;
    }
    const std::string img = test::read_text(photos_ + "/pokemon.jpeg");
    for (const std::string& origin :
         std::vector<std::string>{"Origin: http://evil.example", "Origin: null", "Origin: http://127.0.0.1:1",
                                  "Origin: https://evil.example:" + p}) {
      auto r = request(server.port(), "POST", "/api/v1/search/image", img, {origin, "Content-Type: image/jpeg"});
      EXPECT_EQ(r.status, 403) << origin;
    }
    EXPECT_EQ(request(server.port(), "POST", "/api/v1/search/image", img,
                      {"Origin: http://localhost:" + p, "Content-Type: image/jpeg"})
                  .status,
              200);
    // Too many headers.
    std::vector<std::string> many;
    for (int i = 0; i < 100; ++i) many.push_back("X-Filler-" + std::to_string(i) + ": x");
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", many).status, 431);
  }
  {
    ServeProcess server(common() + " --token s3cret-token");
    ASSERT_GT(server.port(), 0) << server.err();
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").status, 401);
    EXPECT_EQ(request(server.port(), "GET", "/").status, 401);
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", {"Authorization: Bearer wrong"}).status, 401);
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", {"Authorization: Bearer s3cret-token"}).status, 200);
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", {"Cookie: a=b; cnclip_token=s3cret-token"}).status,
              200);
    auto r = request(server.port(), "GET", "/?token=s3cret-token");
    EXPECT_EQ(r.status, 200);
    EXPECT_NE(r.head.find("Set-Cookie: cnclip_token=s3cret-token; Path=/; HttpOnly; SameSite=Strict"),
              std::string::npos);
  }
  {
    // Not loopback and no token: one is generated and printed.
    ServeProcess server(common() + " --host 0.0.0.0");
    ASSERT_GT(server.port(), 0) << server.err();
    std::smatch m;
    const std::string err = server.err();
    ASSERT_TRUE(std::regex_search(err, m, std::regex("token: ([0-9a-f]{32})"))) << err;
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").status, 401);
    EXPECT_EQ(request(server.port(), "GET", "/api/v1/info", "", {"Authorization: Bearer " + m[1].str()}).status, 200);
  }
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("127.1.2.3"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_TRUE(is_loopback_host("localhost"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("192.168.1.2"));
  EXPECT_FALSE(is_loopback_host("localhost.evil.example"));
}

// Two search answers agree: the same hits (id, rank, path) in the same order, scores equal up to
// float rounding (model calls running side by side may split BLAS work differently: the sixth
// decimal can move; a race would give other hits or other scores altogether).
bool same_results(const std::string& a, const std::string& b) {
  if (a == b) return true;
  const auto ja = nlohmann::json::parse(a, nullptr, false), jb = nlohmann::json::parse(b, nullptr, false);
  if (ja.is_discarded() || jb.is_discarded() || !ja.contains("results") || !jb.contains("results")) return false;
  const auto &ra = ja["results"], &rb = jb["results"];
  if (ra.size() != rb.size()) return false;
  for (size_t i = 0; i < ra.size(); ++i) {
    if (ra[i]["id"] != rb[i]["id"] || ra[i]["rank"] != rb[i]["rank"] || ra[i]["path"] != rb[i]["path"]) return false;
    if (std::fabs(ra[i]["score"].get<double>() - rb[i]["score"].get<double>()) > 1e-5) return false;
  }
  return true;
}

TEST_F(Serve, ParallelMixedQueriesAllCorrect) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  const int port = server.port();
  const std::vector<std::string> texts{"小狗", "夕阳、大海、沙滩", "猫", "rocket", "咖啡"};
  std::map<std::string, std::string> expected;  // target -> body, answered one at a time
  for (const auto& q : texts) {
    const std::string t = "/api/v1/search?q=" + test::url_encode(q) + "&k=4";
    expected[t] = request(port, "GET", t).body;
  }
  const std::string img = test::read_text(photos_ + "/chelsea_rgba.png");
  const std::string image_body = request(port, "POST", "/api/v1/search/image?k=4", img).body;
  const std::string thumb_body = request(port, "GET", "/api/v1/thumb/2").body;
  const std::string similar_body = request(port, "GET", "/api/v1/similar/3?k=4").body;
  // Each parallel answer with the serial one it must agree with, printed both when they differ.
  struct Answer {
    std::string got, want;
    bool same = false;
  };
  std::vector<std::future<Answer>> jobs;
  for (int i = 0; i < 20; ++i) {
    jobs.push_back(std::async(std::launch::async, [&, i] {
      Answer a;
      switch (i % 4) {
        case 0:
        case 1: {
          auto it = std::next(expected.begin(), i % expected.size());
          a.got = request(port, "GET", it->first).body, a.want = it->second;
          break;
        }
        case 2: a.got = request(port, "POST", "/api/v1/search/image?k=4", img).body, a.want = image_body; break;
        default:
          if (i % 8 == 3) {
            a.got = request(port, "GET", "/api/v1/thumb/2").body, a.want = thumb_body;
            a.same = a.got == a.want;
            return a;
          }
          a.got = request(port, "GET", "/api/v1/similar/3?k=4").body, a.want = similar_body;
      }
      a.same = same_results(a.got, a.want);
      return a;
    }));
  }
  int ok = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Answer a = jobs[i].get();
    ok += a.same ? 1 : 0;
    EXPECT_TRUE(a.same) << "parallel request " << i << " (kind " << i % 4 << ") differs from its serial answer:\n"
                        << a.got.substr(0, 2000) << "\nserial:\n"
                        << a.want.substr(0, 2000);
  }
  EXPECT_EQ(ok, 20);
  EXPECT_NE(image_body.find("\"rank\":4"), std::string::npos) << image_body;
}

// `cnclip index --vectors TYPE` without paths rewrites the snapshot under the same generation: the
// server's next request loads the new type (it kept the old one, while its info already showed the
// new setting).
TEST_F(Serve, LoadsASnapshotRebuiltAsAnotherType) {
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  const auto before = request(server.port(), "GET", "/api/v1/search?q=x&k=100").body_json()["results"];
  ASSERT_EQ(before.size(), 6u);
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").body_json()["snapshot"]["type"], "flat");
  for (const char* type : {"flat-fp16", "HNSW8", "flat"}) {
    SCOPED_TRACE(type);
    auto r = test::run_cnclip({"index", "--vectors", type, "--index", index_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto info = request(server.port(), "GET", "/api/v1/info").body_json();
    EXPECT_EQ(info["vectors_setting"], type);
    EXPECT_EQ(info["snapshot"]["type"], type) << info.dump();
    const auto after = request(server.port(), "GET", "/api/v1/search?q=x&k=100").body_json()["results"];
    ASSERT_EQ(after.size(), 6u);
    for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i]["id"], before[i]["id"]) << i;
  }
}

TEST_F(Serve, SeesWhatAConcurrentIndexCommits) {
  const std::string later = tmp_ / "later";
  ::mkdir(later.c_str(), 0755);
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  auto before = request(server.port(), "GET", "/api/v1/search?q=x&k=100").body_json()["results"];
  EXPECT_EQ(before.size(), 6u);
  test::copy_file(photos_ + "/pokemon.jpeg", later + "/new_photo.jpeg");
  auto r = test::run_cnclip(test::concat({"index", "-q", later}, common_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto after = request(server.port(), "GET", "/api/v1/search?q=x&k=100").body_json()["results"];
  ASSERT_EQ(after.size(), 7u);
  bool found = false;
  for (const auto& h : after) found = found || h["path"] == later + "/new_photo.jpeg";
  EXPECT_TRUE(found);
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").body_json()["files"], 7);
  // And a removed file is gone.
  r = test::run_cnclip({"remove", later, "--index", index_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/search?q=x&k=100").body_json()["results"].size(), 6u);
}

// A read-only index (another user's files, a read-only mount) is served: searches, info, images and
// thumbnails (made but not cached), with nothing written into it.
TEST_F(Serve, ReadOnlyIndexIsServed) {
  std::string prefix;
  if (::geteuid() == 0) {
    // As root every file is writable: serve as another user, who cannot write the index.
    // setpriv execs the binary (runuser would stay its parent and turn SIGTERM into exit 143).
    prefix = "setpriv --reuid=nobody --regid=nogroup --clear-groups -- ";
    if (std::system((prefix + "true 2>/dev/null").c_str()) != 0) {
      GTEST_SKIP() << "root, and cannot run as the user 'nobody' (setpriv): no other user to prove read-only";
    }
  }
  const auto before = cli_search("小狗", 6);
  ASSERT_EQ(std::system(("chmod -R a+rX " + test::shell_quote(tmp_.path()) + " && chmod a-w " +
                         test::shell_quote(index_) + " " + test::shell_quote(index_) + "/*")
                            .c_str()),
            0);
  std::vector<std::string> listing;
  for (const auto& e : std::filesystem::directory_iterator(index_)) listing.push_back(e.path().filename());
  ServeProcess server(common(), 0, prefix);
  ASSERT_GT(server.port(), 0) << server.err();
  auto r = request(server.port(), "GET", "/api/v1/search?q=" + test::url_encode("小狗") + "&k=6");
  ASSERT_EQ(r.status, 200) << r.body;
  expect_same_results(r.body_json(), before);
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").body_json()["files"], 6);
  const std::string thumb = r.body_json()["results"][0]["thumbnail"];
  auto t = request(server.port(), "GET", thumb);
  EXPECT_EQ(t.status, 200) << t.body;
  EXPECT_NE(t.head.find("Content-Type: image/jpeg"), std::string::npos);
  EXPECT_EQ(request(server.port(), "GET", r.body_json()["results"][0]["image"]).status, 200);
  EXPECT_EQ(server.stop(), 0) << server.err();
  std::vector<std::string> after;
  for (const auto& e : std::filesystem::directory_iterator(index_)) after.push_back(e.path().filename());
  std::sort(listing.begin(), listing.end());
  std::sort(after.begin(), after.end());
  EXPECT_EQ(after, listing);  // no thumbs/, no -wal or -shm left behind
  std::system(("chmod -R u+w " + test::shell_quote(tmp_.path())).c_str());
}

// A server that may not write the index (it reads the catalog as it is on disk, having no -shm to
// coordinate with) still sees what a writer commits later: additions and removals, in info and in
// searches, as a local search does.
TEST_F(Serve, ReadOnlyIndexServedSeesLaterCommits) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to serve as another user";
  const std::string prefix = "setpriv --reuid=nobody --regid=nogroup --clear-groups -- ";
  if (std::system((prefix + "true 2>/dev/null").c_str()) != 0) GTEST_SKIP() << "cannot run as 'nobody' (setpriv)";
  ASSERT_EQ(std::system(("chmod -R a+rX " + test::shell_quote(tmp_.path())).c_str()), 0);
  ASSERT_FALSE(std::filesystem::exists(index_ + "/catalog.sqlite3-shm"));
  ServeProcess server(common(), 0, prefix);
  ASSERT_GT(server.port(), 0) << server.err();
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").body_json()["files"], 6);
  auto paths = [&] {
    auto r = request(server.port(), "GET", "/api/v1/search?q=" + test::url_encode("小狗") + "&k=20");
    std::set<std::string> out;
    const json body = r.body_json();
    for (const auto& h : body["results"]) out.insert(h["path"].get<std::string>());
    return out;
  };
  ASSERT_EQ(paths().size(), 6u);
  // As root: two photos added, one removed. First info alone, then searches.
  test::copy_file(test::fixtures("images/pokemon.jpeg"), photos_ + "/pokemon-2.jpeg");
  test::copy_file(test::fixtures("images/chelsea_rgba.png"), photos_ + "/chelsea-2.png");
  ASSERT_EQ(test::run_cnclip(test::concat({"index", "-q", photos_}, common_args())).exit_code, 0);
  auto removed = test::run_cnclip({"remove", photos_ + "/chelsea_rgba.png", "--index", index_});
  ASSERT_EQ(removed.exit_code, 0) << removed.err;
  int64_t files = 0;
  for (int i = 0; i < 60 && files != 7; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    files = request(server.port(), "GET", "/api/v1/info").body_json()["files"].get<int64_t>();
  }
  EXPECT_EQ(files, 7) << "info does not see the commits";
  std::set<std::string> now;
  for (int i = 0; i < 60 && (now.size() != 7 || !now.count(photos_ + "/pokemon-2.jpeg")); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    now = paths();
  }
  EXPECT_EQ(now.count(photos_ + "/pokemon-2.jpeg"), 1u) << "the addition is not served";
  EXPECT_EQ(now.count(photos_ + "/chelsea_rgba.png"), 0u) << "a removed photo is served";
  std::set<std::string> local;
  for (const auto& h : cli_search("小狗", 20)) local.insert(h["path"].get<std::string>());
  EXPECT_EQ(now, local);
  EXPECT_EQ(server.stop(), 0) << server.err();
}

// `cnclip repair` puts a fresh catalog in place of the one a running server has open (here to
// rewrite an older cnclip's 4 KiB pages): the server follows it, and what is indexed after.
TEST_F(Serve, ARepairUnderARunningServerIsFollowed) {
  const std::string catalog = index_ + "/catalog.sqlite3";
  ASSERT_EQ(
      std::system(("/usr/bin/python3 -c \"import sqlite3,sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
                   "c.executescript('PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM; "
                   "PRAGMA journal_mode=WAL;')\" " +
                   test::shell_quote(catalog))
                      .c_str()),
      0);
  ServeProcess server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  auto info = request(server.port(), "GET", "/api/v1/info").body_json();
  EXPECT_EQ(info["catalog_page_bytes"], 4096);
  auto repaired = test::run_cnclip({"repair", "--format", "json", "--index", index_});
  ASSERT_EQ(repaired.exit_code, 0) << repaired.err;
  EXPECT_EQ(json::parse(repaired.out)["pages_enlarged"], true) << repaired.out;
  test::copy_file(test::fixtures("images/pokemon.jpeg"), photos_ + "/pokemon-2.jpeg");
  ASSERT_EQ(test::run_cnclip(test::concat({"index", "-q", photos_}, common_args())).exit_code, 0);
  for (int i = 0; i < 60 && info["files"] != 7; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    info = request(server.port(), "GET", "/api/v1/info").body_json();
  }
  EXPECT_EQ(info["files"], 7) << "the server still reads the replaced catalog";
  EXPECT_EQ(info["catalog_page_bytes"], 32768);
  auto r = request(server.port(), "GET", "/api/v1/search?q=" + test::url_encode("小狗") + "&k=20");
  EXPECT_EQ(r.body_json()["results"].size(), 7u);
  EXPECT_EQ(server.stop(), 0) << server.err();
}

TEST(ServeEmpty, NoIndexYetIsAnEmptyIndexUntilOneAppears) {
  TempDir tmp;
  const std::string common =
      "--model " + test::shell_quote(test::tiny_bundle()) + " --index " + test::shell_quote(tmp / "index");
  ServeProcess server(common);
  ASSERT_GT(server.port(), 0) << server.err();
  auto r = request(server.port(), "GET", "/api/v1/search?q=%E5%B0%8F%E7%8B%97");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body_json()["results"].size(), 0u);
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/info").body_json()["files"], 0);
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/thumb/1").status, 404);
  // The page itself.
  auto page = request(server.port(), "GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.head.find("Content-Type: text/html"), std::string::npos);
  EXPECT_NE(page.head.find("Content-Security-Policy: default-src 'self'"), std::string::npos);
  EXPECT_EQ(request(server.port(), "GET", "/app.js").status, 200);
  // An index appears: found without a restart.
  ::mkdir((tmp / "p").c_str(), 0755);
  test::copy_file(test::fixtures("images/pokemon.jpeg"), tmp / "p/a.jpeg");
  auto idx = test::run_cnclip({"index", "-q", tmp / "p", "--model", test::tiny_bundle(), "--index", tmp / "index"});
  ASSERT_EQ(idx.exit_code, 0) << idx.err;
  EXPECT_EQ(request(server.port(), "GET", "/api/v1/search?q=x").body_json()["results"].size(), 1u);
}

TEST(ServeEmpty, BadOptionsAreUsageErrors) {
  TempDir tmp;
  const std::vector<std::string> common{"--model", test::tiny_bundle(), "--index", tmp / "index"};
  auto r = test::run_cnclip(test::concat({"serve", "--port", "70000"}, common));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = test::run_cnclip(test::concat({"serve", "--max-upload-mb", "0"}, common));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  // A model that does not fit the index is refused at start, naming both.
  ::mkdir((tmp / "p").c_str(), 0755);
  test::copy_file(test::fixtures("images/pokemon.jpeg"), tmp / "p/a.jpeg");
  ASSERT_EQ(test::run_cnclip(test::concat({"index", "-q", tmp / "p"}, common)).exit_code, 0);
  r = test::run_cnclip({"serve", "--port", "0", "--model", test::random_tiny_bundle(), "--index", tmp / "index"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  // A port in use: one line naming it, exit 1.
  const std::string common_line =
      "--model " + test::shell_quote(test::tiny_bundle()) + " --index " + test::shell_quote(tmp / "index");
  ServeProcess first(common_line);
  ASSERT_GT(first.port(), 0) << first.err();
  ServeProcess second(common_line, first.port());
  EXPECT_TRUE(second.exited());
  EXPECT_EQ(second.port(), 0);
  EXPECT_EQ(second.stop(), 1);
  EXPECT_NE(second.err().find("cannot listen on 127.0.0.1:" + std::to_string(first.port())), std::string::npos)
      << second.err();
  EXPECT_EQ(test::lines(second.err()).size(), 1u) << second.err();
}

// A stop asked for right after start-up (a SIGTERM as soon as "listening on" is printed) ends the
// server: it was lost when the stop watcher acted before httplib's listen loop had started (its
// stop() is then a no-op) and the server ran on. That happened to scripts/bench_serve.sh on a loaded
// machine; here the listen loop nearly always wins the race, so this guards the behaviour rather
// than reproducing the race on demand. Odd rounds call stop() before run().
TEST(ServeEmpty, StopRightAfterStartEndsTheServer) {
  TempDir tmp;
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(round);
    ServerOptions o;
    o.port = 0;
    o.index_dir = tmp / ("index" + std::to_string(round));
    o.model_dir = test::tiny_bundle();
    o.workers = 1;
    auto server = Server::create(o);
    if (round % 2 == 1) server->stop();  // stop() before run(): run returns at once
    auto ran = std::async(std::launch::async, [&] { server->run([] { return true; }); });
    const bool ended = ran.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    EXPECT_TRUE(ended) << "the server ran on after being told to stop";
    if (!ended) server->stop();  // listening by now: this stop() takes effect
    ran.wait();
  }
}

}  // namespace
}  // namespace cnclip

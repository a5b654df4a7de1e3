// cnclip serve: what httplib would answer by itself with a generic status gets the API's JSON error
// with the status that says what went wrong: 405 (and Allow) for a wrong method on an API route,
// 414 for a request line over the limit. The server runs in this process on an ephemeral port.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "cnclip/server.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;

class ServeErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.port = 0;
    o.index_dir = tmp_ / "index";  // no index yet: the routes answer all the same
    o.model_dir = test::tiny_bundle();
    o.workers = 2;
    o.advertise = false;
    server_ = Server::create(o);
    thread_ = std::thread([this] { server_->run(); });
  }
  void TearDown() override {
    server_->stop();
    thread_.join();
  }
  httplib::Result send(const std::string& method, const std::string& target, const std::string& body = "") {
    httplib::Client client("127.0.0.1", server_->port());
    httplib::Request req;
    req.method = method;
    req.path = target;
    req.body = body;
    if (!body.empty()) req.set_header("Content-Type", "application/octet-stream");
    return client.send(req);
  }
  static void expect_error(const httplib::Result& r, int status, const std::string& code, const std::string& what) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, status) << r->body;
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json; charset=utf-8");
    const json j = json::parse(r->body);
    EXPECT_EQ(j["error"]["code"], code) << r->body;
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  }

  test::TempDir tmp_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

TEST_F(ServeErrors, WrongMethodOnAnApiRouteIs405WithAllow) {
  for (const std::string target :
       {"/api/v1/search?q=x", "/api/v1/info", "/api/v1/similar/1", "/api/v1/thumb/1", "/api/v1/image/1"}) {
    for (const std::string method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) {
      const auto r = send(method, target, method == "OPTIONS" ? "" : "x");
      expect_error(r, 405, "method_not_allowed", method + " " + target);
      if (r) {
        EXPECT_EQ(r->get_header_value("Allow"), "GET, HEAD") << method << " " << target;
      }
    }
    // Without a body too (httplib said 400 "malformed request" for a POST without one).
    expect_error(send("POST", target), 405, "method_not_allowed", "POST " + target + " without a body");
  }
  for (const std::string method : {"GET", "HEAD", "PUT", "DELETE"}) {
    const auto r = send(method, "/api/v1/search/image");
    if (method == "HEAD") {  // no body in a HEAD answer
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 405);
    } else {
      expect_error(r, 405, "method_not_allowed", method + " /api/v1/search/image");
    }
    if (r) {
      EXPECT_EQ(r->get_header_value("Allow"), "POST") << method;
    }
  }
  // The right methods still reach their routes, and unknown routes stay 404.
  auto r = send("GET", "/api/v1/info");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = send("HEAD", "/api/v1/info");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  expect_error(send("POST", "/api/v1/search/image", "not an image"), 400, "bad_image", "POST of a non-image");
  expect_error(send("POST", "/api/v1/nothing", "x"), 404, "not_found", "POST to an unknown route");
  expect_error(send("GET", "/api/v1/similar/x"), 404, "not_found", "GET of a malformed id");
}

TEST_F(ServeErrors, OverLongRequestLineIs414) {
  // httplib's limit is on the whole request line ("GET " + target + " HTTP/1.1").
  const std::string query = "/api/v1/search?q=" + std::string(9000, 'a');
  expect_error(send("GET", query), 414, "uri_too_long", "GET, 9000 bytes");
  expect_error(send("POST", "/api/v1/search/image?k=" + std::string(9000, '1'), "x"), 414, "uri_too_long",
               "POST, 9000 bytes");
  // A long one under the limit is a query like any other.
  auto r = send("GET", "/api/v1/search?q=" + std::string(8000, 'a') + "&k=1");
  ASSERT_TRUE(r);
  EXPECT_NE(r->status, 414) << r->body;
  EXPECT_NE(r->status, 500) << r->body;
}

}  // namespace
}  // namespace cnclip

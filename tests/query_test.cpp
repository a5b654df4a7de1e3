// Combined queries ("2:海边 + ./pool.jpg - 人群") and --not: the parser, the weighted sum, and the
// ranking of search-text (and serve's q=) on imported fixed vectors against numpy
// (tests/query_numpy_reference.py); bad input.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cnclip/query.h"
#include "cnclip/search.h"
#include "cnclip/server.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
constexpr int kDim = 32;  // the tiny bundle's embedding size

// ---- the syntax -------------------------------------------------------------------------------

TEST(QuerySyntax, PlainQueriesStayPlain) {
  for (const char* q : {"小狗", "C++ 教程", "4:3 的照片", "2:海边", "黑-白", "-5度的雪", "a -b", "a+ b", "a +b", "一 -",
                        "+ 猫", "夕阳、大海、沙滩", "\"海边 + 人群\"", "1+1=2", "./pool.jpg", "海边 -- 人群"}) {
    EXPECT_TRUE(parse_combined_query(q).empty()) << q;
  }
}

TEST(QuerySyntax, TermsWeightsSignsAndKinds) {
  const auto t = parse_combined_query("2:海边 + ./pool.jpg - 人群");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].value, "海边");
  EXPECT_EQ(t[0].weight, 2);
  EXPECT_EQ(t[0].kind, QueryTerm::Kind::kText);
  EXPECT_EQ(t[1].value, "./pool.jpg");
  EXPECT_EQ(t[1].weight, 1);
  EXPECT_EQ(t[1].kind, QueryTerm::Kind::kImage);
  EXPECT_EQ(t[2].value, "人群");
  EXPECT_EQ(t[2].weight, -1);

  const auto u = parse_combined_query("0.5:/a b/c.jpg\t-\t1.5:~/x.png + ../y.webp + .25:夜景 的 灯光");
  ASSERT_EQ(u.size(), 4u);
  EXPECT_EQ(u[0].value, "/a b/c.jpg");  // spaces inside a term are kept
  EXPECT_EQ(u[0].weight, 0.5);
  EXPECT_EQ(u[0].kind, QueryTerm::Kind::kImage);
  EXPECT_EQ(u[1].value, "~/x.png");
  EXPECT_EQ(u[1].weight, -1.5);
  EXPECT_EQ(u[1].kind, QueryTerm::Kind::kImage);
  EXPECT_EQ(u[2].kind, QueryTerm::Kind::kImage);
  EXPECT_EQ(u[3].value, "夜景 的 灯光");
  EXPECT_EQ(u[3].weight, 0.25);

  // Quotes: operators, weights and path prefixes inside are not syntax... except that a quoted
  // path is still a path.
  const auto q = parse_combined_query("\"10:30 的日落\" - \"/trip - 2024/a.jpg\" + 2:\"C + D\"");
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(q[0].value, "10:30 的日落");
  EXPECT_EQ(q[0].weight, 1);
  EXPECT_EQ(q[0].kind, QueryTerm::Kind::kText);
  EXPECT_EQ(q[1].value, "/trip - 2024/a.jpg");
  EXPECT_EQ(q[1].kind, QueryTerm::Kind::kImage);
  EXPECT_EQ(q[1].weight, -1);
  EXPECT_EQ(q[2].value, "C + D");
  EXPECT_EQ(q[2].weight, 2);
}

TEST(QuerySyntax, MalformedCombinedQueriesAreRefused) {
  const std::map<std::string, std::string> bad = {
      {"猫 + + 狗", "term 2 of the combined query is empty (two operators in a row, or one at an end?)"},
      {"猫 + ", "term 2 of the combined query is empty (two operators in a row, or one at an end?)"},
      {" - 猫", "term 1 of the combined query is empty (two operators in a row, or one at an end?)"},
      {"猫 + 0:狗", "term 2 of the combined query has the weight 0: a weight must be a number greater than 0"},
      {"猫 + 0.0:狗", "term 2 of the combined query has the weight 0.0: a weight must be a number greater than 0"},
      {"猫 + 2: ", "term 2 of the combined query is empty"},
      {"猫 + \"狗", "the combined query has an unbalanced '\"'"},
      {"\"猫 + 狗", "the combined query has an unbalanced '\"'"},  // the quote hides the operator
      {"猫 + 狗\"", "the combined query has an unbalanced '\"'"},
      {"\"猫 - 狗 + 鸟", "the combined query has an unbalanced '\"'"},
      {"猫 + \"\"", "term 2 of the combined query is empty"},
  };
  for (const auto& [query, message] : bad) {
    try {
      parse_combined_query(query);
      ADD_FAILURE() << "accepted: " << query;
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << query;
      EXPECT_EQ(std::string(e.what()), message) << query;
    }
  }
}

TEST(QuerySyntax, RandomQueriesParseOrFailCleanly) {
  // Strings over the syntax's own characters: every query is plain, or parses into non-empty terms
  // with finite non-zero weights, or is refused with kInvalidArgument; it is combined exactly when it
  // holds a spaced operator outside quotes, and refused only when it holds one somewhere (with an
  // unbalanced quote, which side is quoted is unknown).
  const std::vector<std::string> pieces = {" ", "+", "-", "\"", ":", "2", "0", ".", "/", "~", "猫", "a", "\t", "./"};
  std::mt19937 rng(7);
  for (int round = 0; round < 20000; ++round) {
    std::string q;
    const int n = static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) q += pieces[rng() % pieces.size()];
    bool spaced_operator = false, any_operator = false, quoted = false;
    for (size_t i = 0; i < q.size(); ++i) {
      if (q[i] == '"') quoted = !quoted;
      const auto space = [&](size_t j) { return q[j] == ' ' || q[j] == '\t'; };
      if ((q[i] == '+' || q[i] == '-') && i > 0 && i + 1 < q.size() && space(i - 1) && space(i + 1)) {
        any_operator = true;
        if (!quoted) spaced_operator = true;
      }
    }
    try {
      const auto terms = parse_combined_query(q);
      EXPECT_EQ(!terms.empty(), spaced_operator) << "'" << q << "'";
      for (const auto& t : terms) {
        EXPECT_FALSE(t.value.empty()) << "'" << q << "'";
        EXPECT_TRUE(std::isfinite(t.weight) && t.weight != 0) << "'" << q << "'";
      }
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << "'" << q << "'";
      EXPECT_TRUE(any_operator) << "a plain query was refused: '" << q << "': " << e.what();
    }
  }
}

TEST(QuerySyntax, WeightedSumOfNormalizedTerms) {
  // Terms of different lengths count by their weights only.
  std::vector<QueryTerm> terms(3);
  terms[0].weight = 2;
  terms[1].weight = 1;
  terms[2].weight = -1;
  const std::vector<float> e = {10, 0, 0, 0, 0.5f, 0, 0, 0, 3};
  const auto v = combine_term_embeddings(terms, e, 3);
  const double n = std::sqrt(4.0 + 1 + 1);
  EXPECT_NEAR(v[0], 2 / n, 1e-7);
  EXPECT_NEAR(v[1], 1 / n, 1e-7);
  EXPECT_NEAR(v[2], -1 / n, 1e-7);
  // The same term added and subtracted: nothing left.
  std::vector<QueryTerm> cancel(2);
  cancel[1].weight = -1;
  try {
    combine_term_embeddings(cancel, {0.6f, 0.8f, 0.6f, 0.8f}, 2);
    ADD_FAILURE() << "a zero query was accepted";
  } catch (const Exception& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(std::string(error.what()), "the terms of the combined query cancel out: nothing is left to search for");
  }
}

// ---- search-text and serve against numpy -----------------------------------------------------

// 60 imported photos with random unit embeddings. The files exist (a few bytes, not images): an
// image term that names one must use its stored embedding, since decoding it would fail.
class Combined : public ::testing::Test {
 protected:
  void SetUp() override {
    photos_ = fs::canonical(dir_.path()).string() + "/photos";
    fs::create_directories(photos_ + "/trip - 2024");
    std::mt19937 rng(1234);
    std::normal_distribution<double> normal;
    std::string jsonl;
    for (int i = 0; i < 60; ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), i % 10 == 9 ? "/trip - 2024/p%02d.jpg" : "/p%02d.jpg", i);
      const std::string path = photos_ + name;
      test::write_text(path, "not an image " + std::to_string(i));
      std::vector<double> e(kDim);
      for (auto& v : e) v = normal(rng);
      vectors_[path] = e;
      paths_.push_back(path);
      jsonl += json{{"path", path}, {"embedding", e}}.dump() + "\n";
    }
    test::write_text(dir_ / "import.jsonl", jsonl);
    auto r = test::run_cnclip(test::concat({"import", dir_ / "import.jsonl"}, common()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::vector<std::string> common() const { return {"--model", test::tiny_bundle(), "--index", dir_ / "index"}; }
  std::string index_dir() const { return dir_ / "index"; }

  std::vector<double> text_embedding(const std::string& text) {
    auto r = test::run_cnclip({"embed-text", "--model", test::tiny_bundle(), "--", text});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out)["embedding"].get<std::vector<double>>();
  }
  std::vector<double> image_embedding(const std::string& path) {
    auto r = test::run_cnclip({"embed-image", path, "--model", test::tiny_bundle()});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out)["embedding"].get<std::vector<double>>();
  }
  // numpy's top k for weighted terms, with optional --not vectors.
  json numpy(const std::vector<std::pair<double, std::vector<double>>>& terms, int k,
             const std::vector<std::vector<double>>& nots = {}, double not_threshold = kDefaultNotThreshold) {
    json req;
    req["vectors"] = json::object();
    for (const auto& [p, v] : vectors_) req["vectors"][p] = v;
    req["terms"] = json::array();
    for (const auto& [w, e] : terms) req["terms"].push_back({{"weight", w}, {"embedding", e}});
    req["not"] = nots;
    req["not_threshold"] = not_threshold;
    req["k"] = k;
    test::write_text(dir_ / "request.json", req.dump());
    const std::string cmd = std::string(CNCLIP_PYTHON) + " " +
                            test::shell_quote(std::string(CNCLIP_SOURCE_DIR) + "/tests/query_numpy_reference.py") +
                            " < " + test::shell_quote(dir_ / "request.json");
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string text;
    char buf[4096];
    for (size_t n; p && (n = fread(buf, 1, sizeof(buf), p)) > 0;) text.append(buf, n);
    EXPECT_EQ(p ? ::pclose(p) : -1, 0) << text;
    return json::parse(text);
  }
  // search-text's results: paths and scores.
  std::pair<std::vector<std::string>, std::vector<double>> search(const std::vector<std::string>& args) {
    auto r = test::run_cnclip(
        test::concat(test::concat({"search-text"}, args), test::concat({"--format", "jsonl"}, common())));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    std::pair<std::vector<std::string>, std::vector<double>> out;
    for (const auto& l : test::lines(r.out)) {
      const json j = json::parse(l);
      out.first.push_back(j["path"]);
      out.second.push_back(j["score"]);
    }
    return out;
  }
  void expect_same(const std::pair<std::vector<std::string>, std::vector<double>>& got, const json& want) {
    EXPECT_EQ(got.first, want["paths"].get<std::vector<std::string>>());  // the ranking, exactly
    ASSERT_EQ(got.second.size(), want["scores"].size());
    for (size_t i = 0; i < got.second.size(); ++i) EXPECT_NEAR(got.second[i], want["scores"][i].get<double>(), 2e-6);
  }

  test::TempDir dir_;
  std::string photos_;
  std::vector<std::string> paths_;
  std::map<std::string, std::vector<double>> vectors_;
};

TEST_F(Combined, RankingEqualsNumpy) {
  const auto sea = text_embedding("海边"), crowd = text_embedding("人群"), cat = text_embedding("猫");
  const std::string p3 = paths_[3], p7 = paths_[7], trip = paths_[19];
  {
    SCOPED_TRACE("2:海边 + PHOTO - 人群");
    const auto got = search({"2:海边 + " + p3 + " - 人群", "-k", "12"});
    expect_same(got, numpy({{2, sea}, {1, vectors_[p3]}, {-1, crowd}}, 12));
    EXPECT_EQ(got.first.front(), p3);  // its own embedding weighs in: it comes first
  }
  {
    SCOPED_TRACE("weights below one, image subtracted");
    expect_same(search({"0.5:猫 - 0.25:" + p7 + " + 海边", "-k", "60"}),
                numpy({{0.5, cat}, {-0.25, vectors_[p7]}, {1, sea}}, 60));
  }
  {
    SCOPED_TRACE("a quoted path holding ' - '");
    ASSERT_NE(trip.find(" - "), std::string::npos);
    expect_same(search({"\"" + trip + "\" + 3:猫", "-k", "5"}), numpy({{1, vectors_[trip]}, {3, cat}}, 5));
  }
  {
    SCOPED_TRACE("an image that is not indexed is decoded and encoded");
    const std::string pokemon = test::fixtures("images/pokemon.jpeg");
    expect_same(search({pokemon + " - 猫", "-k", "8"}), numpy({{1, image_embedding(pokemon)}, {-1, cat}}, 8));
  }
  {
    SCOPED_TRACE("--plain, and a plain query in the same call");
    const auto plain_text = text_embedding("猫 - 海边");
    expect_same(search({"--plain", "猫 - 海边", "-k", "6"}), numpy({{1, plain_text}}, 6));
    // Several queries in one call: each its own kind.
    auto r =
        test::run_cnclip(test::concat({"search-text", "猫", "猫 - 海边", "-k", "3", "--format", "jsonl"}, common()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto lines = test::lines(r.out);
    ASSERT_EQ(lines.size(), 6u);
    const json want_plain = numpy({{1, cat}}, 3), want_combined = numpy({{1, cat}, {-1, sea}}, 3);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(json::parse(lines[i])["path"], want_plain["paths"][i]);
      EXPECT_EQ(json::parse(lines[3 + i])["path"], want_combined["paths"][i]);
      EXPECT_EQ(json::parse(lines[3 + i])["query"], "猫 - 海边");
    }
  }
  {
    SCOPED_TRACE("stdin lines");
    auto r = test::run_cnclip(test::concat({"search-text", "-", "-k", "4", "--format", "jsonl"}, common()),
                              "猫\n2:海边 + " + p3 + "\n");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto lines = test::lines(r.out);
    ASSERT_EQ(lines.size(), 8u);
    const json want = numpy({{2, sea}, {1, vectors_[p3]}}, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(json::parse(lines[4 + i])["path"], want["paths"][i]);
  }
}

TEST_F(Combined, NotDropsResultsBeforeTopK) {
  const auto cat = text_embedding("猫"), dog = text_embedding("狗"), sea = text_embedding("海边");
  // A threshold that drops about half of the photos: k results must still come.
  std::vector<double> cos_dog;
  for (const auto& [p, v] : vectors_) {
    double n = 0, d = 0;
    for (int i = 0; i < kDim; ++i) n += v[i] * v[i], d += v[i] * dog[i];
    cos_dog.push_back(d / std::sqrt(n));
  }
  std::sort(cos_dog.begin(), cos_dog.end());
  const double s = (cos_dog[29] + cos_dog[30]) / 2;
  char s_text[32];
  std::snprintf(s_text, sizeof(s_text), "%.9f", s);
  const auto got = search({"猫", "--not", "狗", "--not-threshold", std::string(s_text), "-k", "20"});
  ASSERT_EQ(got.first.size(), 20u);
  expect_same(got, numpy({{1, cat}}, 20, {dog}, std::stod(s_text)));
  // Unfiltered, some of those 20 places went to photos like 狗: the filter changed something.
  EXPECT_NE(search({"猫", "-k", "20"}).first, got.first);
  // Two --not texts, the default threshold, with a combined query.
  expect_same(search({"猫 + 0.5:海边", "--not", "狗", "--not", "人群", "-k", "60"}),
              numpy({{1, cat}, {0.5, sea}}, 60, {dog, text_embedding("人群")}, kDefaultNotThreshold));
  // search-image takes --not too.
  auto r = test::run_cnclip(test::concat(
      {"search-image", paths_[5], "--not", "狗", "--not-threshold", s_text, "-k", "60", "--format", "jsonl"},
      common()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json want = numpy({{1, vectors_[paths_[5]]}}, 60, {dog}, std::stod(s_text));
  const auto lines = test::lines(r.out);
  ASSERT_EQ(lines.size(), want["paths"].size());
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(json::parse(lines[i])["path"], want["paths"][i]);
}

// One bad input: the status, one stderr line, nothing on stdout, and the index as it was.
TEST_F(Combined, BadInputOneLineEach) {
  auto refused = [&](const std::vector<std::string>& args, int status, const std::string& message) {
    SCOPED_TRACE(args[0]);
    auto r = test::run_cnclip(test::concat(test::concat({"search-text"}, args), common()));
    EXPECT_EQ(r.exit_code, status);
    EXPECT_EQ(r.err, "cnclip: error: " + message + "\n");
    EXPECT_EQ(r.out, "");
  };
  refused({"猫 + " + photos_ + "/missing.jpg"}, 1, photos_ + "/missing.jpg: No such file or directory");
  refused({"猫 - 猫"}, 2, "the terms of the combined query cancel out: nothing is left to search for");
  refused({"猫 + \u200b"}, 2, "query 1 term 2 '\u200b' is blank: give some words to search for");
  refused({"猫 + + 狗"}, 2, "term 2 of the combined query is empty (two operators in a row, or one at an end?)");
  refused({"猫 + 0:狗"}, 2, "term 2 of the combined query has the weight 0: a weight must be a number greater than 0");
  refused({"猫", "--not", ""}, 2, "--not text 1 is empty: give some words to search for");
  refused({"猫", "--not", "狗", "--not-threshold", "1.5"}, 2,
          "--not-threshold: expects a number from -1 to 1, not '1.5' (see 'cnclip search-text --help')");
  // A file that is not an image and not indexed.
  test::write_text(dir_ / "notes.jpg", "text");
  refused({"猫 + " + fs::canonical(dir_.path()).string() + "/notes.jpg"}, 1,
          fs::canonical(dir_.path()).string() +
              "/notes.jpg: unsupported format (not JPEG, PNG, WebP, BMP, TIFF, GIF, HEIF, AVIF or camera RAW)");
  EXPECT_EQ(search({"猫", "-k", "100"}).first.size(), 60u);  // nothing lost
}

// serve: GET /api/v1/search?q= reads the same syntax; image terms are indexed photos by path.
std::pair<int, std::string> http_get(int port, const std::string& target) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return {0, ""};
  }
  const std::string req =
      "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\nConnection: close\r\n\r\n";
  (void)!::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string raw;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const auto end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return {0, raw};
  return {std::stoi(raw.substr(9, 3)), raw.substr(end + 4)};
}

TEST_F(Combined, ServeReadsTheSameSyntax) {
  ServerOptions so;
  so.port = 0;
  so.index_dir = index_dir();
  so.model_dir = test::tiny_bundle();
  so.workers = 2;
  auto server = Server::create(so);
  std::thread runner([&] { server->run(); });
  struct Stop {
    Server& s;
    std::thread& t;
    ~Stop() {
      s.stop();
      t.join();
    }
  } stop{*server, runner};

  const std::string q = "2:海边 + " + paths_[3] + " - 人群";
  auto [status, body] = http_get(server->port(), "/api/v1/search?k=7&q=" + test::url_encode(q));
  ASSERT_EQ(status, 200) << body;
  const json api = json::parse(body);
  const auto cli = search({q, "-k", "7"});
  ASSERT_EQ(api["results"].size(), cli.first.size());
  for (size_t i = 0; i < cli.first.size(); ++i) {
    EXPECT_EQ(api["results"][i]["path"], cli.first[i]);
    EXPECT_EQ(api["results"][i]["score"].get<double>(), cli.second[i]);
  }
  // plain=1: the same text as one plain query.
  std::tie(status, body) = http_get(server->port(), "/api/v1/search?k=5&plain=1&q=" + test::url_encode("猫 - 海边"));
  ASSERT_EQ(status, 200) << body;
  const auto plain = search({"--plain", "猫 - 海边", "-k", "5"});
  const json plain_api = json::parse(body);
  for (size_t i = 0; i < plain.first.size(); ++i) EXPECT_EQ(plain_api["results"][i]["path"], plain.first[i]);
  // An image term must be an indexed photo: the API never reads a file it was not given by the index.
  const std::string pokemon = test::fixtures("images/pokemon.jpeg");
  std::tie(status, body) = http_get(server->port(), "/api/v1/search?q=" + test::url_encode("猫 + " + pokemon));
  EXPECT_EQ(status, 400) << body;
  EXPECT_EQ(json::parse(body)["error"]["message"],
            "'" + pokemon + "' is not an indexed photo (image terms are the paths of indexed photos)");
  // not= and not_threshold=, as --not and --not-threshold.
  std::tie(status, body) =
      http_get(server->port(), "/api/v1/search?k=60&q=" + test::url_encode("猫") + "&not=" + test::url_encode("狗") +
                                   "&not=" + test::url_encode("人群") + "&not_threshold=0.1");
  ASSERT_EQ(status, 200) << body;
  const auto filtered = search({"猫", "--not", "狗", "--not", "人群", "--not-threshold", "0.1", "-k", "60"});
  const json filtered_api = json::parse(body);
  ASSERT_EQ(filtered_api["results"].size(), filtered.first.size());
  EXPECT_LT(filtered.first.size(), 60u);
  for (size_t i = 0; i < filtered.first.size(); ++i) EXPECT_EQ(filtered_api["results"][i]["path"], filtered.first[i]);
  std::tie(status, body) = http_get(server->port(), "/api/v1/search?q=" + test::url_encode("猫") + "&not_threshold=2");
  EXPECT_EQ(status, 400) << body;
  std::tie(status, body) = http_get(server->port(), "/api/v1/search?q=" + test::url_encode("猫 - 猫"));
  EXPECT_EQ(status, 400) << body;
  EXPECT_EQ(json::parse(body)["error"]["code"], "bad_request");
}

}  // namespace
}  // namespace cnclip

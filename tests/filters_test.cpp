// Capture times and sizes (photo_meta.h), the --after/--before filters, --sort and --offset, and
// the schema 2 -> 3 migration of an index made by the previous release.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "cnclip/catalog.h"
#include "cnclip/dups.h"
#include "cnclip/image.h"
#include "cnclip/index_store.h"
#include "cnclip/photo_meta.h"
#include "cnclip/search.h"
#include "cnclip/server.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// Sets TZ for this process (and the cnclip processes it starts) while alive.
class ScopedTz {
 public:
  explicit ScopedTz(const char* tz) {
    if (const char* old = std::getenv("TZ")) old_ = old;
    ::setenv("TZ", tz, 1);
    ::tzset();
  }
  ~ScopedTz() {
    if (old_) ::setenv("TZ", old_->c_str(), 1);
    else ::unsetenv("TZ");
    ::tzset();
  }

 private:
  std::optional<std::string> old_;
};

std::vector<uint8_t> bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Writes images with Pillow. Each spec: "name|date|offset|seed|orientation" (date "" = no EXIF,
// offset "" = no OffsetTimeOriginal). The format follows the name (jpg, png, webp; tif writes the
// date as IFD0's DateTime, the only way Pillow 9.4 writes one in a TIFF).
void make_images(const std::string& dir, const std::vector<std::string>& specs) {
  std::string list;
  for (const auto& s : specs) list += (list.empty() ? "" : ",") + ("'" + s + "'");
  const std::string script = R"(
import sys, random
from PIL import Image
d = sys.argv[1]
for spec in [)" + list + R"(]:
    name, date, off, seed, orient = spec.split('|')
    rnd = random.Random(int(seed))
    im = Image.new('RGB', (48 + int(seed) % 7, 40))
    im.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(im.width * im.height)])
    path = d + '/' + name
    if name.endswith('.tif'):
        im.save(path, tiffinfo={306: date} if date else {})
        continue
    e = Image.Exif()
    sub = {}
    if date: sub[0x9003] = date
    if off: sub[0x9011] = off
    if sub: e[0x8769] = sub
    if orient != '1': e[0x0112] = int(orient)
    im.save(path, exif=e, quality=95) if name.endswith('.jpg') else im.save(path, exif=e)
)";
  test::write_text(dir + "/make.py", script);
  const std::string cmd =
      std::string(CNCLIP_PYTHON) + " " + test::shell_quote(dir + "/make.py") + " " + test::shell_quote(dir);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  fs::remove(dir + "/make.py");
}

void set_mtime(const std::string& path, int64_t unix_seconds) {
  struct timespec times[2] = {{unix_seconds, 0}, {unix_seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

TEST(TimeBounds, DatesAndTimesWithAndWithoutOffsets) {
  ScopedTz tz("Asia/Shanghai");                                                       // UTC+8, no daylight saving time
  const int64_t may1_utc = 1714521600;                                                // 2024-05-01T00:00:00Z
  EXPECT_EQ(parse_time_bound("2024-05-01", "--after").value(), may1_utc - 8 * 3600);  // local midnight
  EXPECT_EQ(parse_time_bound("2024-05-01T00:00:00Z", "--after").value(), may1_utc);
  EXPECT_EQ(parse_time_bound("2024-05-01T08:00+08:00", "--after").value(), may1_utc);
  EXPECT_EQ(parse_time_bound("2024-05-01 08:00:00+0800", "--after").value(), may1_utc);
  EXPECT_EQ(parse_time_bound("2024-04-30T19:00:00-05", "--after").value(), may1_utc);
  EXPECT_EQ(parse_time_bound("2024-05-01T08:00:00.750", "--after").value(), may1_utc);  // local, fraction dropped
  EXPECT_EQ(parse_time_bound("2024-02-29", "--after").value(), 1709164800 - 8 * 3600);  // leap day
  for (const std::string bad : {"", "2024", "2024-5-1", "2024-13-01", "2024-02-30", "2023-02-29", "yesterday",
                                "2024-05-01+08:00", "2024-05-01T25:00", "2024-05-01T08", "2024-05-01T08:00+8",
                                "2024-05-01T08:00:00+08:00x", "2024/05/01", "2024-05-01T08:61"}) {
    auto r = parse_time_bound(bad, "--before");
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_EQ(r.error().message,
              "--before: expects a date (2024-05-01) or an ISO time (2024-05-01T08:30:00+08:00), not '" + bad + "'");
  }
  EXPECT_EQ(format_time(may1_utc, 480), "2024-05-01T08:00:00+08:00");
  EXPECT_EQ(format_time(may1_utc, -330), "2024-04-30T18:30:00-05:30");
  EXPECT_EQ(format_time(may1_utc, std::nullopt), "2024-05-01T08:00:00+08:00");  // local
}

TEST(PhotoMeta, ExifDatesInEveryFormatTheDecoderReads) {
  ScopedTz tz("UTC");
  test::TempDir dir;
  make_images(dir.path(), {"offset.jpg|2024:05:10 12:00:00|+08:00|1|1", "naive.jpg|2024:05:10 12:00:00||2|1",
                           "turned.jpg|2023:01:02 03:04:05|-05:00|3|6", "none.jpg|||4|1",
                           "offset.png|2022:12:31 23:59:59|+01:00|5|1", "offset.webp|2021:06:07 08:09:10|+00:00|6|1",
                           "dated.tif|2020:02:29 10:00:00||7|1"});
  set_mtime(dir / "none.jpg", 1600000000);
  auto meta = [&](const std::string& name) {
    const std::string path = dir / name;
    struct stat st {};
    ::stat(path.c_str(), &st);
    const int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
    auto from_file = read_photo_meta_file(path, mtime_ns);
    EXPECT_TRUE(from_file) << name;
    const PhotoMeta m = read_photo_meta(bytes_of(path), mtime_ns);
    EXPECT_EQ(from_file.value().taken_at, m.taken_at) << name;
    EXPECT_EQ(from_file.value().width, m.width) << name;
    return m;
  };
  PhotoMeta m = meta("offset.jpg");
  EXPECT_EQ(m.source, TimeSource::kExif);
  EXPECT_EQ(m.taken_at, 1715313600);  // 2024-05-10T12:00:00+08:00 = 04:00Z
  EXPECT_EQ(m.offset_minutes, 480);
  EXPECT_EQ(m.width, 49);
  EXPECT_EQ(m.height, 40);
  m = meta("naive.jpg");
  EXPECT_EQ(m.source, TimeSource::kExifLocal);
  EXPECT_EQ(m.taken_at, 1715342400);  // read in the local zone (UTC here)
  EXPECT_FALSE(m.offset_minutes);
  m = meta("turned.jpg");             // orientation 6: shown turned, so width and height swap
  EXPECT_EQ(m.taken_at, 1672646645);  // 2023-01-02T08:04:05Z
  EXPECT_EQ(m.offset_minutes, -300);
  EXPECT_EQ(m.width, 40);
  EXPECT_EQ(m.height, 51);
  m = meta("none.jpg");
  EXPECT_EQ(m.source, TimeSource::kMtime);
  EXPECT_EQ(m.taken_at, 1600000000);
  m = meta("offset.png");
  EXPECT_EQ(m.source, TimeSource::kExif);
  EXPECT_EQ(m.taken_at, 1672527599);  // 2022-12-31T22:59:59Z
  EXPECT_EQ(m.width, 53);
  m = meta("offset.webp");
  EXPECT_EQ(m.source, TimeSource::kExif);
  EXPECT_EQ(m.taken_at, 1623053350);
  EXPECT_EQ(m.offset_minutes, 0);
  m = meta("dated.tif");
  EXPECT_EQ(m.source, TimeSource::kExifLocal);
  EXPECT_EQ(m.taken_at, 1582970400);
  EXPECT_EQ(m.width, 48);
  // The fixture photo with orientation 6, and a prefix of a large JPEG is enough.
  const auto coffee = bytes_of(test::fixtures("images/coffee_2048x1366_exif6.jpg"));
  m = read_photo_meta(coffee, 0);
  EXPECT_EQ(m.width, 1366);
  EXPECT_EQ(m.height, 2048);
  const std::vector<uint8_t> prefix(coffee.begin(), coffee.begin() + 4096);
  EXPECT_EQ(read_photo_meta(prefix, 0).width, 1366);
}

TEST(PhotoMeta, DamagedExifNeverCrashesAndFallsBackToTheMtime) {
  test::TempDir dir;
  make_images(dir.path(), {"a.jpg|2024:05:10 12:00:00|+08:00|1|1"});
  const auto good = bytes_of(dir / "a.jpg");
  ASSERT_TRUE(read_exif_date(good.data(), good.size()));
  // Every prefix, and every single byte changed to each of a few values, within the EXIF segment.
  for (size_t n = 0; n < std::min<size_t>(good.size(), 400); ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + n);
    (void)read_exif_date(cut.data(), cut.size());
    (void)read_photo_meta(cut, 7'000'000'000);
  }
  for (size_t i = 0; i < std::min<size_t>(good.size(), 300); ++i) {
    for (uint8_t v : {uint8_t{0}, uint8_t{0x7f}, uint8_t{0xff}}) {
      auto bad = good;
      bad[i] = v;
      const PhotoMeta m = read_photo_meta(bad, 7'000'000'000);
      if (m.source == TimeSource::kMtime) {
        EXPECT_EQ(m.taken_at, 7);
      }
    }
  }
  // A date that is not one.
  for (const std::string date : {"2024:13:10 12:00:00", "0000:00:00 00:00:00", "    :  :     :  :  ", "garbage"}) {
    test::TempDir d2;
    make_images(d2.path(), {"x.jpg|" + date + "||1|1"});
    EXPECT_EQ(read_photo_meta(bytes_of(d2 / "x.jpg"), 5'000'000'000).source, TimeSource::kMtime) << date;
  }
}

// A folder of photos with crafted capture times, indexed with the tiny model.
class Filters : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(photos());
    // May 2024 (several, with and without offsets), April, June, 2023, and a photo without EXIF
    // whose mtime is in May; two photos taken at the same second; and exact copies (equal scores).
    make_images(photos(), {"may01.jpg|2024:05:01 00:30:00|+08:00|11|1", "may10.jpg|2024:05:10 12:00:00||12|1",
                           "may15a.jpg|2024:05:15 09:00:00|+00:00|13|1", "may15b.jpg|2024:05:15 09:00:00|+00:00|14|1",
                           "may31.jpg|2024:05:31 23:00:00|+00:00|15|1", "apr30.jpg|2024:04:30 23:59:59|+00:00|16|1",
                           "jun01.jpg|2024:06:01 00:00:00|+00:00|17|1", "old.jpg|2023:05:20 10:00:00|+00:00|18|1",
                           "noexif.png|||19|1", "may20.png|2024:05:20 10:00:00|+00:00|20|1"});
    for (const char* copy : {"copy1.jpg", "copy2.jpg"}) test::copy_file(photos() + "/may10.jpg", photos() + "/" + copy);
    set_mtime(photos() + "/noexif.png", 1715940000);  // 2024-05-17T10:00:00Z
    auto r = run({"index", "-q", photos()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  test::RunResult run(const std::vector<std::string>& args) {
    return test::run_cnclip(test::concat(args, {"--model", test::tiny_bundle(), "--index", index()}));
  }
  std::string photos() const { return dir_ / "photos"; }
  std::string index() const { return dir_ / "index"; }
  std::string p(const std::string& name) const { return photos() + "/" + name; }
  std::vector<json> hits(const std::vector<std::string>& args) {
    auto r = run(test::concat(args, {"--format", "jsonl"}));
    EXPECT_EQ(r.exit_code, 0) << args[0] << " " << args[1] << ": " << r.err;
    std::vector<json> out;
    for (const auto& line : test::lines(r.out)) out.push_back(json::parse(line));
    return out;
  }
  std::set<std::string> paths(const std::vector<json>& h) {
    std::set<std::string> out;
    for (const auto& j : h) out.insert(j["path"].get<std::string>());
    return out;
  }

  ScopedTz tz_{"UTC"};
  test::TempDir dir_;
};

TEST_F(Filters, AfterAndBeforeKeepThePhotosTakenInTheRange) {
  // May 2024 in UTC: may01 was taken on 2024-04-30T16:30Z (+08:00), so it is April here.
  auto h = hits({"search-text", "照片", "-k", "100", "--after", "2024-05-01", "--before", "2024-06-01"});
  EXPECT_EQ(paths(h), (std::set<std::string>{p("may10.jpg"), p("copy1.jpg"), p("copy2.jpg"), p("may15a.jpg"),
                                             p("may15b.jpg"), p("may31.jpg"), p("noexif.png"), p("may20.png")}));
  // The same month seen from UTC+8: bounds with an offset; may01 is in, may31 (23:00Z) is June there.
  h = hits({"search-text", "照片", "-k", "100", "--after", "2024-05-01T00:00:00+08:00", "--before",
            "2024-06-01T00:00+08:00"});
  // (apr30 was taken at 23:59:59Z: May 1 in UTC+8.)
  EXPECT_EQ(paths(h),
            (std::set<std::string>{p("apr30.jpg"), p("may01.jpg"), p("may10.jpg"), p("copy1.jpg"), p("copy2.jpg"),
                                   p("may15a.jpg"), p("may15b.jpg"), p("noexif.png"), p("may20.png")}));
  // Bounds: --after is inclusive, --before exclusive.
  EXPECT_EQ(paths(hits({"search-text", "照片", "-k", "100", "--after", "2024-06-01T00:00:00Z"})),
            (std::set<std::string>{p("jun01.jpg")}));
  EXPECT_EQ(paths(hits({"search-text", "照片", "-k", "100", "--before", "2024-04-30T23:59:59Z"})),
            (std::set<std::string>{p("old.jpg"), p("may01.jpg")}));
  EXPECT_TRUE(hits({"search-text", "照片", "--after", "2025-01-01"}).empty());
  // Naive times in the TZ of the run: may01 is 2024-04-30 in UTC but 2024-05-01 in Shanghai.
  {
    ScopedTz shanghai("Asia/Shanghai");
    EXPECT_EQ(paths(hits({"search-text", "照片", "-k", "100", "--after", "2024-05-01", "--before", "2024-05-02"})),
              (std::set<std::string>{p("may01.jpg"), p("apr30.jpg")}));
  }
}

TEST_F(Filters, FiltersApplyBeforeTheTopK) {
  // The query photo itself (old.jpg, 2023) is the best match of an unfiltered search...
  auto all = hits({"search-image", p("old.jpg"), "-k", "1"});
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0]["path"], p("old.jpg"));
  // ...and filtered out, k results still come, the best of those in range, in the same order.
  auto in_may = hits({"search-image", p("old.jpg"), "-k", "100", "--after", "2024-05-01", "--before", "2024-06-01"});
  ASSERT_EQ(in_may.size(), 8u);
  for (int k : {1, 3, 8}) {
    auto top = hits(
        {"search-image", p("old.jpg"), "-k", std::to_string(k), "--after", "2024-05-01", "--before", "2024-06-01"});
    ASSERT_EQ(top.size(), static_cast<size_t>(k));
    for (int i = 0; i < k; ++i) EXPECT_EQ(top[i], in_may[i]);
  }
  // With --under too: both filters at once.
  auto under = hits({"search-image", p("old.jpg"), "-k", "2", "--after", "2024-01-01", "--under", photos()});
  EXPECT_EQ(under.size(), 2u);
}

// Pages of every size joined are the whole list, ranks included, for both orders: in process (the
// library call every front end makes), two queries at once, and once through the CLI.
TEST_F(Filters, PagesJoinedAreTheWholeList) {
  auto store = IndexStore::open(index(), IndexAccess::kRead);
  Searcher searcher(*store);
  std::vector<float> queries;
  for (const char* q : {"may10.jpg", "old.jpg"}) {
    auto e = store->catalog().embedding(store->catalog().find(p(q))->id);
    queries.insert(queries.end(), e.begin(), e.end());
  }
  const std::vector<std::string> labels{"a", "b"};
  auto list = [&](SearchOptions o, int k, int64_t offset) {
    o.top_k = k;
    o.offset = offset;
    return searcher.search(labels, queries, o);
  };
  auto same = [](const RankedHit& a, const RankedHit& b) {
    return a.rank == b.rank && a.id == b.id && a.path == b.path && a.score == b.score;
  };
  std::vector<SearchOptions> orders(4);
  orders[1].sort = SortOrder::kDate;
  orders[1].threshold = -1.0f;
  orders[2].threshold = 0.0f;
  orders[3].sort = SortOrder::kDate;
  orders[3].threshold = -1.0f;
  orders[3].after = 1714521600;  // 2024-05-01T00:00:00Z
  for (size_t o = 0; o < orders.size(); ++o) {
    SCOPED_TRACE("order " + std::to_string(o));
    const auto whole = list(orders[o], 1000, 0);
    for (size_t q = 0; q < labels.size(); ++q) {
      for (size_t i = 0; i < whole[q].hits.size(); ++i) EXPECT_EQ(whole[q].hits[i].rank, static_cast<int>(i + 1));
    }
    EXPECT_EQ(whole[0].hits.size(), o == 0 || o == 1 ? 12u : o == 3 ? 9u : whole[0].hits.size());
    for (int k = 1; k <= 6; ++k) {
      std::vector<std::vector<RankedHit>> joined(labels.size());
      for (int64_t offset = 0; offset < 15; offset += k) {
        const auto page = list(orders[o], k, offset);
        for (size_t q = 0; q < labels.size(); ++q) {
          EXPECT_LE(page[q].hits.size(), static_cast<size_t>(k));
          joined[q].insert(joined[q].end(), page[q].hits.begin(), page[q].hits.end());
        }
      }
      for (size_t q = 0; q < labels.size(); ++q) {
        ASSERT_EQ(joined[q].size(), whole[q].hits.size()) << "k " << k;
        for (size_t i = 0; i < joined[q].size(); ++i)
          EXPECT_TRUE(same(joined[q][i], whole[q].hits[i])) << "k " << k << " #" << i;
      }
    }
  }
  // Through the CLI: pages of 5 of a text query.
  const auto whole = hits({"search-text", "海边", "-k", "1000"});
  ASSERT_EQ(whole.size(), 12u);
  std::vector<json> joined;
  for (int offset = 0; offset < 15; offset += 5) {
    auto page = hits({"search-text", "海边", "-k", "5", "--offset", std::to_string(offset)});
    joined.insert(joined.end(), page.begin(), page.end());
  }
  EXPECT_EQ(joined, whole);
}

TEST_F(Filters, EqualScoresAreOrderedById) {
  // may10, copy1 and copy2 have the same bytes, so the same embedding and score: they come in the
  // order they were indexed (catalog id), at every k.
  auto store = IndexStore::open(index(), IndexAccess::kRead);
  std::map<std::string, int64_t> id;
  for (const auto& r : store->catalog().files_under("")) id[r.path] = r.id;
  for (int k = 1; k <= 3; ++k) {
    auto h = hits({"search-image", p("may10.jpg"), "-k", std::to_string(k)});
    ASSERT_EQ(h.size(), static_cast<size_t>(k));
    std::vector<std::string> three{p("may10.jpg"), p("copy1.jpg"), p("copy2.jpg")};
    std::sort(three.begin(), three.end(), [&](const std::string& a, const std::string& b) { return id[a] < id[b]; });
    for (int i = 0; i < k; ++i) {
      EXPECT_EQ(h[i]["path"], three[i]) << "k " << k;
      EXPECT_EQ(h[i]["score"], 1.0);
    }
  }
}

TEST_F(Filters, SortByDateIsNewestFirstThenById) {
  auto h = hits({"search-text", "海边", "-k", "100", "--sort", "date", "--threshold", "-1"});
  ASSERT_EQ(h.size(), 12u);
  std::vector<std::string> got;
  for (const auto& j : h) got.push_back(j["path"]);
  auto store = IndexStore::open(index(), IndexAccess::kRead);
  std::map<std::string, int64_t> id;
  for (const auto& r : store->catalog().files_under("")) id[r.path] = r.id;
  auto by_id = [&](std::vector<std::string> v) {
    std::sort(v.begin(), v.end(), [&](const std::string& a, const std::string& b) { return id[a] < id[b]; });
    return v;
  };
  std::vector<std::string> want{p("jun01.jpg"), p("may31.jpg"), p("may20.png"), p("noexif.png")};
  for (const auto& x : by_id({p("may15a.jpg"), p("may15b.jpg")})) want.push_back(x);
  for (const auto& x : by_id({p("may10.jpg"), p("copy1.jpg"), p("copy2.jpg")})) want.push_back(x);
  for (const auto& x : {p("apr30.jpg"), p("may01.jpg"), p("old.jpg")}) want.push_back(x);
  EXPECT_EQ(got, want);
  // A threshold keeps the results the score order keeps, ordered by date.
  const double cut = hits({"search-text", "海边", "-k", "5"})[4]["score"].get<double>() - 1e-6;
  auto top = hits({"search-text", "海边", "-k", "100", "--sort", "date", "--threshold", std::to_string(cut)});
  EXPECT_GE(top.size(), 5u);
  EXPECT_LT(top.size(), 12u);
  EXPECT_EQ(paths(top), paths(hits({"search-text", "海边", "-k", "100", "--threshold", std::to_string(cut)})));
  // With a date filter.
  EXPECT_EQ(hits({"search-text", "海边", "-k", "100", "--sort", "date", "--threshold", "-1", "--after", "2024-05-15",
                  "--before", "2024-05-16"})
                .size(),
            2u);
}

TEST_F(Filters, BadValuesAreUsageErrors) {
  struct Case {
    std::string option, value, message;
  };
  for (const auto& c : std::vector<Case>{
           {"--after", "2024-13-01",
            "--after: expects a date (2024-05-01) or an ISO time (2024-05-01T08:30:00+08:00), not '2024-13-01'"},
           {"--before", "tomorrow",
            "--before: expects a date (2024-05-01) or an ISO time (2024-05-01T08:30:00+08:00), not 'tomorrow'"},
           {"--sort", "date",
            "--sort date orders the results above --threshold by capture time: give --threshold too (--threshold -1 "
            "keeps every photo)"},
       }) {
    auto r = run({"search-text", "海边", c.option, c.value});
    EXPECT_EQ(r.exit_code, 2) << c.option << " " << c.value;
    EXPECT_EQ(r.err, "cnclip: error: " + c.message + "\n") << c.option << " " << c.value;
    EXPECT_EQ(r.out, "");
  }
  for (const auto& [option, value] :
       std::vector<std::pair<std::string, std::string>>{{"--sort", "name"}, {"--offset", "-1"}, {"--offset", "x"}}) {
    auto r = run({"search-text", "海边", option, value});
    EXPECT_EQ(r.exit_code, 2) << option << " " << value;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  }
}

// serve's API takes the same filters and order, through the same library call.
TEST_F(Filters, ServeTakesAfterBeforeAndSort) {
  ServerOptions o;
  o.port = 0;
  o.index_dir = index();
  o.model_dir = test::tiny_bundle();
  o.workers = 2;
  auto server = Server::create(o);
  std::thread serving([&] { server->run(); });
  httplib::Client client("127.0.0.1", server->port());
  auto get = [&](const std::string& target) {
    auto r = client.Get(target.c_str());
    EXPECT_TRUE(r) << target;
    return r ? std::make_pair(r->status, json::parse(r->body)) : std::make_pair(0, json());
  };
  const std::string q = "/api/v1/search?q=%E6%B5%B7%E8%BE%B9&k=100";  // 海边
  auto [status, j] = get(q + "&after=2024-05-01&before=2024-06-01");
  EXPECT_EQ(status, 200);
  const auto cli = hits({"search-text", "海边", "-k", "100", "--after", "2024-05-01", "--before", "2024-06-01"});
  ASSERT_EQ(j["results"].size(), cli.size());
  for (size_t i = 0; i < cli.size(); ++i) {
    EXPECT_EQ(j["results"][i]["path"], cli[i]["path"]);
    EXPECT_EQ(j["results"][i]["time"], cli[i]["time"]);
    EXPECT_EQ(j["results"][i]["width"], cli[i]["width"]);
  }
  std::tie(status, j) = get("/api/v1/search?q=%E6%B5%B7%E8%BE%B9&sort=date&threshold=-1&k=3&offset=1");
  EXPECT_EQ(status, 200);
  const auto by_date = hits({"search-text", "海边", "-k", "4", "--sort", "date", "--threshold", "-1"});
  ASSERT_EQ(j["results"].size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(j["results"][i]["path"], by_date[i + 1]["path"]);
  for (const auto& [target, says] : std::vector<std::pair<std::string, std::string>>{
           {q + "&after=2024-13-01", "parameter 'after': expects a date"},
           {q + "&before=x", "parameter 'before': expects a date"},
           {q + "&sort=name", "parameter 'sort': expects score or date, not 'name'"},
           {q + "&sort=date", "sorting by date needs a score threshold"}}) {
    std::tie(status, j) = get(target);
    EXPECT_EQ(status, 400) << target;
    EXPECT_EQ(j["error"]["code"], "bad_request") << target;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(says), std::string::npos) << j.dump();
  }
  server->stop();
  serving.join();
}

// --- Migration ----------------------------------------------------------------------------------

// tests/data/schema2_catalog.sqlite3 was written by the release before schema 3 (main at 52b8dc3,
// `cnclip index photos` of pokemon.jpeg, coffee_2048x1366_exif6.jpg and chelsea_rgba.png from the
// fixtures, mtimes 2021-03-04T05:06:07Z, with the tiny bundle; then its WAL checkpointed). Its paths
// are those of the machine that made it; the test moves them to a temporary folder with SQL (only
// the path columns change, the schema stays as that release wrote it).
class Migration : public ::testing::Test {
 protected:
  static constexpr const char* kOldDir = "/tmp/cnclip-schema2/photos";
  ScopedTz tz_{"UTC"};
  void SetUp() override {
    fs::create_directories(dir_ / "index");
    fs::create_directories(photos());
    test::copy_file(std::string(CNCLIP_SOURCE_DIR) + "/tests/data/schema2_catalog.sqlite3", catalog());
    for (const char* name : {"pokemon.jpeg", "coffee_2048x1366_exif6.jpg", "chelsea_rgba.png"}) {
      test::copy_file(test::fixtures(std::string("images/") + name), photos() + "/" + name);
      set_mtime(photos() + "/" + name, 1614834367);
    }
    sql("UPDATE files SET path = replace(path, '" + std::string(kOldDir) + "', '" + photos() +
        "');"
        "UPDATE roots SET path = '" +
        photos() + "';");
    embeddings_before_ = embeddings();
    ASSERT_EQ(embeddings_before_.size(), 3u);
    ASSERT_EQ(schema_version(), "2");
  }
  std::string photos() const { return dir_ / "photos"; }
  std::string index() const { return dir_ / "index"; }
  std::string catalog() const { return index() + "/catalog.sqlite3"; }
  void sql(const std::string& statements) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(catalog().c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db, statements.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
    sqlite3_free(err);
    sqlite3_close(db);
  }
  std::string schema_version() {
    auto c = Catalog::open_read_only(catalog());
    return c->meta("schema_version").value_or("");
  }
  std::map<std::string, std::vector<float>> embeddings() {
    auto c = Catalog::open_read_only(catalog());
    std::map<std::string, std::vector<float>> out;
    for (const auto& r : c->files_under("")) out[r.path] = c->embedding(r.id);
    return out;
  }
  test::TempDir dir_;
  std::map<std::string, std::vector<float>> embeddings_before_;
};

TEST_F(Migration, ReadOnlyOldIndexIsSearchedWithMtimesAndNotWritten) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run as 'nobody' (runuser)";
  std::system(("chmod -R a+rX " + test::shell_quote(dir_.path())).c_str());
  const auto before = bytes_of(catalog());
  test::RunOptions as_nobody;
  as_nobody.through = {"runuser", "-u", "nobody", "--"};
  auto r = test::run_cnclip({"search-text", "咖啡", "-k", "10", "--format", "jsonl", "--after", "2021-03-04",
                             "--before", "2021-03-05", "--model", test::tiny_bundle(), "--index", index()},
                            as_nobody);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 3u) << "the mtimes are the capture times: " << r.out;
  r = test::run_cnclip({"search-text", "咖啡", "-k", "10", "--format", "jsonl", "--after", "2021-03-05", "--model",
                        test::tiny_bundle(), "--index", index()},
                       as_nobody);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(bytes_of(catalog()), before) << "a reader never migrates";
  EXPECT_EQ(schema_version(), "2");
}

TEST_F(Migration, FirstIndexRunUpgradesInPlaceAndFillsTheNewFieldsWithoutTheModel) {
  auto r = test::run_cnclip({"index", "--format", "json", "--model", test::tiny_bundle(), "--index", index()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(r.out);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["moved"], 0);
  EXPECT_EQ(s["unchanged"], 3);
  EXPECT_NE(
      r.err.find("reading the capture time and size of 3 file(s) indexed before cnclip stored them (no re-encoding)"),
      std::string::npos)
      << r.err;
  EXPECT_EQ(schema_version(), "4");  // the current schema (4: video frames)
  EXPECT_EQ(embeddings(), embeddings_before_) << "no embedding is touched";
  auto c = Catalog::open_read_only(catalog());
  std::map<std::string, FileRecord> by_name;
  for (const auto& f : c->files_under("")) by_name[fs::path(f.path).filename().string()] = f;
  ASSERT_EQ(by_name.size(), 3u);
  // The fixtures carry no DateTimeOriginal: their mtime, recorded as such.
  for (const auto& [name, f] : by_name) {
    EXPECT_EQ(f.meta.source, TimeSource::kMtime) << name;
    EXPECT_EQ(f.meta.taken_at, 1614834367) << name;
  }
  EXPECT_EQ(by_name["coffee_2048x1366_exif6.jpg"].meta.width, 1366);  // upright (orientation 6)
  EXPECT_EQ(by_name["coffee_2048x1366_exif6.jpg"].meta.height, 2048);
  EXPECT_GT(by_name["pokemon.jpeg"].meta.width, 0);
  EXPECT_GT(by_name["chelsea_rgba.png"].meta.height, 0);
  // The next run has nothing left to fill.
  r = test::run_cnclip({"index", "--format", "json", "--model", test::tiny_bundle(), "--index", index()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("capture time"), std::string::npos) << r.err;
  // Searches of the upgraded index use the new fields.
  r = test::run_cnclip({"search-text", "咖啡", "--format", "jsonl", "--after", "2021-03-04T05:06:07Z", "--before",
                        "2021-03-04T05:06:08Z", "--model", test::tiny_bundle(), "--index", index()});
  EXPECT_EQ(test::lines(r.out).size(), 3u) << r.err;
}

TEST_F(Migration, ChangedFilesAreEncodedAndUnchangedOnesFilled) {
  // One photo replaced by another with a capture date: encoded (with its date), the others filled.
  make_images(photos(), {"pokemon.jpeg|2024:05:10 12:00:00|+08:00|1|1"});
  auto r = test::run_cnclip({"index", "--format", "json", "--model", test::tiny_bundle(), "--index", index()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(r.out);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["unchanged"], 2);
  auto c = Catalog::open_read_only(catalog());
  for (const auto& f : c->files_under("")) {
    if (f.path == photos() + "/pokemon.jpeg") {
      EXPECT_EQ(f.meta.source, TimeSource::kExif);
      EXPECT_EQ(f.meta.taken_at, 1715313600);
    } else {
      EXPECT_EQ(f.meta.source, TimeSource::kMtime) << f.path;
    }
  }
}

}  // namespace
}  // namespace cnclip

namespace cnclip {
namespace {

// Measurement, not run by ctest (scripts/bench_filters.sh runs it): 100,000 random 512-d unit
// vectors (ViT-B-16's size) with capture times spread over ten years; a plain, a filtered and a
// date-ordered search, and `dups` on the first 20,000. Prints the times; checks the results.
TEST(FiltersScale, DISABLED_HundredThousandPhotos) {
  constexpr int kDim512 = 512;
  const int64_t n = std::getenv("CNCLIP_BENCH_N") ? std::atoll(std::getenv("CNCLIP_BENCH_N")) : 100000;
  test::TempDir dir;
  auto clock = [] { return std::chrono::steady_clock::now(); };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int64_t t0 = 1420070400;  // 2015-01-01
  {
    auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
    CatalogTransaction tx(store->catalog());
    store->catalog().set_meta("embedding_dim", std::to_string(kDim512));
    std::vector<float> v(kDim512);
    for (int64_t i = 0; i < n; ++i) {
      double norm = 0;
      for (auto& x : v) x = normal(rng), norm += double(x) * x;
      for (auto& x : v) x = static_cast<float>(x / std::sqrt(norm));
      FileRecord r{0, "/photos/" + std::to_string(i) + ".jpg", 1000, 0, "h" + std::to_string(i), 0};
      r.meta.source = TimeSource::kExif;
      r.meta.taken_at = t0 + (i * 7919) % (10 * 365 * 86400);
      store->catalog().insert(r, v.data(), kDim512);
    }
    tx.commit();
    store->write_snapshot();
  }
  auto store = IndexStore::open(dir / "index", IndexAccess::kRead);
  Searcher searcher(*store);
  const auto query = store->catalog().embedding(1);
  auto timed = [&](const char* what, SearchOptions o) {
    searcher.search({"q"}, query, o);  // warm
    const auto a = clock();
    auto r = searcher.search({"q"}, query, o);
    const auto b = clock();
    std::printf("%-60s %8.1f ms  (%zu results)\n", what, ms(a, b), r[0].hits.size());
    return r[0].hits;
  };
  SearchOptions plain;
  timed("search, k 10", plain);
  SearchOptions year = plain;
  year.after = t0 + 365 * 86400;
  year.before = t0 + 2 * 365 * 86400;  // one year of ten
  auto hits = timed("search, k 10, --after/--before (one year in ten)", year);
  EXPECT_EQ(hits.size(), 10u);
  for (const auto& h : hits) EXPECT_TRUE(*h.taken_at >= *year.after && *h.taken_at < *year.before);
  SearchOptions day = plain;
  day.after = t0 + 400 * 86400;
  day.before = t0 + 401 * 86400;  // one day
  timed("search, k 10, one day", day);
  SearchOptions by_date = plain;
  by_date.sort = SortOrder::kDate;
  by_date.threshold = 0.1f;
  timed("search, k 10, --sort date --threshold 0.1", by_date);
  by_date.threshold = -1.0f;
  timed("search, k 10, --sort date --threshold -1 (every photo)", by_date);
  SearchOptions paged = plain;
  paged.offset = 1000;
  timed("search, k 10, --offset 1000", paged);
  {
    const auto a = clock();
    auto times = store->catalog().capture_times(year.after, year.before);
    std::printf("%-60s %8.1f ms  (%zu photos)\n", "catalog: capture times of one year", ms(a, clock()), times.size());
  }
  // dups on the first 20,000 (every pair compared).
  test::TempDir d2;
  {
    auto w = IndexStore::open(d2 / "index", IndexAccess::kWrite);
    CatalogTransaction tx(w->catalog());
    w->catalog().set_meta("embedding_dim", std::to_string(kDim512));
    const int64_t m = std::min<int64_t>(n, 20000);
    for (int64_t i = 1; i <= m; ++i) {
      auto v = store->catalog().embedding(i);
      w->catalog().insert(FileRecord{0, "/d/" + std::to_string(i), 1, 0, "h" + std::to_string(i), 0}, v.data(),
                          kDim512);
    }
    tx.commit();
    w->write_snapshot();
    const auto a = clock();
    auto groups = find_duplicates(*w, DupsOptions{});
    std::printf("%-60s %8.1f ms  (%zu groups)\n", "dups, 20,000 photos, threshold 0.95", ms(a, clock()), groups.size());
    EXPECT_TRUE(groups.empty());  // random vectors are far apart
  }
}

}  // namespace
}  // namespace cnclip

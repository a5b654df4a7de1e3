// Roots and the walk: what `cnclip index` keeps, re-encodes and removes in everyday situations
// (issue #10 items 1-7, and the walk/index points of issue #11). CLI-level where a user sees it,
// plus unit tests of the plan (no model) and of the catalog's schema upgrade.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <thread>

#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"
#include "cnclip/index_store.h"
#include "cnclip/indexer.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string q(const std::string& s) { return test::shell_quote(s); }

// A distinct small photo (its own content hash), written as JPEG or PNG by its extension.
void make_photo(const std::string& path, unsigned seed) {
  cv::Mat img(40 + static_cast<int>(seed % 7), 48 + static_cast<int>(seed % 5), CV_8UC3);
  cv::theRNG().state = seed * 7919u + 1;
  cv::randu(img, cv::Scalar::all(0), cv::Scalar::all(255));
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_TRUE(cv::imwrite(path, img)) << path;
}

class Roots : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::string idx = dir / "index";
  std::string a = dir / "A 相册";
  std::string b = dir / "B";

  std::vector<std::string> idx_args() const { return {"--index", idx}; }
  test::RunResult index(const std::vector<std::string>& args) {
    return test::run_cnclip(
        test::concat({"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", idx}, args));
  }
  // Runs `index ARGS`, expects exit 0, returns the summary.
  json index_ok(const std::vector<std::string>& args) {
    auto r = index(args);
    EXPECT_EQ(r.exit_code, 0) << (args.empty() ? "" : args.back()) << "\n" << r.err;
    return r.out.empty() ? json{} : json::parse(r.out);
  }
  json info() {
    auto r = test::run_cnclip(test::concat({"info", "--format", "json"}, idx_args()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out.empty() ? json{} : json::parse(r.out);
  }
  std::set<std::string> paths() { return test::indexed_paths(idx); }
  std::vector<RootRecord> roots() {
    auto store = IndexStore::open(idx, IndexAccess::kRead);
    return store->catalog().root_records();
  }
};

// --- item 1: --reindex ---------------------------------------------------------------------------

TEST_F(Roots, ReindexWithoutPathReencodesEveryRootAndKeepsThem) {
  for (int i = 0; i < 3; ++i) make_photo(a + "/a" + std::to_string(i) + ".jpg", i);
  for (int i = 0; i < 2; ++i) make_photo(b + "/b" + std::to_string(i) + ".png", 10 + i);
  make_photo(dir / "single.jpg", 20);
  index_ok({a, "--exclude", "a2*"});
  index_ok({b, dir / "single.jpg"});
  ASSERT_EQ(paths().size(), 5u);
  const auto roots_before = roots();
  ASSERT_EQ(roots_before.size(), 3u);

  auto s = index_ok({"--reindex"});
  EXPECT_EQ(s["updated"], 5);  // every entry encoded again, with the roots' own options (a2 excluded)
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(paths().size(), 5u);
  const auto roots_after = roots();
  ASSERT_EQ(roots_after.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(roots_after[i].path, roots_before[i].path);
    EXPECT_EQ(roots_after[i].options, roots_before[i].options);
    EXPECT_EQ(roots_after[i].is_file, roots_before[i].is_file);
  }

  // With a path: only that root is encoded again; the others keep their entries.
  s = index_ok({"--reindex", b});
  EXPECT_EQ(s["updated"], 2);
  EXPECT_EQ(paths().size(), 5u);
  EXPECT_EQ(roots().size(), 3u);
}

TEST_F(Roots, ARunWithNothingToDoCommitsNothing) {
  // Every commit is a new generation, and a new generation a new vector snapshot: a run that finds
  // nothing changed must not rewrite it (2 GB at a million files).
  for (int i = 0; i < 3; ++i) make_photo(a + "/a" + std::to_string(i) + ".jpg", i);
  index_ok({a, "--exclude", "*.png"});
  auto generation = [&] { return IndexStore::open(idx, IndexAccess::kRead)->catalog().generation(); };
  const int64_t before = generation();
  auto s = index_ok({});
  EXPECT_EQ(s["unchanged"], 3);
  EXPECT_EQ(generation(), before) << "index with no path and nothing changed committed something";
  index_ok({a});  // the same root again, its stored options kept
  EXPECT_EQ(generation(), before);
  index_ok({a, "--exclude", "*.gif"});  // other options: recorded, so a new generation
  EXPECT_GT(generation(), before);
}

TEST_F(Roots, ReindexWithAnotherModelMovesTheWholeIndexOrRefuses) {
  for (int i = 0; i < 2; ++i) make_photo(a + "/a" + std::to_string(i) + ".jpg", i);
  for (int i = 0; i < 2; ++i) make_photo(b + "/b" + std::to_string(i) + ".jpg", 10 + i);
  index_ok({a});
  index_ok({b});
  const std::vector<std::string> other{"--model", test::random_tiny_bundle(), "--index", idx};

  // A path given: still every root moves to the new model (no mixing of two models).
  auto r = test::run_cnclip(test::concat({"index", "-q", "--format", "json", "--reindex", a}, other));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 4);
  EXPECT_EQ(paths().size(), 4u);
  r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "10", "--format", "paths"}, other));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 4u);
  r = test::run_cnclip(test::concat({"search-text", "猫", "--model", test::tiny_bundle()}, idx_args()));
  EXPECT_EQ(r.exit_code, 1);  // the old model is refused: nothing of it is left

  // A missing root: its entries could not be encoded again, so the move is refused, nothing changed.
  fs::rename(b, dir / "B unplugged");
  r = test::run_cnclip(test::concat({"index", "-q", "--reindex", "--model", test::tiny_bundle()}, idx_args()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(b), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_EQ(paths().size(), 4u);
  r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "10", "--format", "paths"}, other));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 4u);
}

TEST_F(Roots, ReindexWithAnotherModelRefusesEntriesUnderNoRoot) {
  make_photo(a + "/a.jpg", 1);
  index_ok({a});
  make_photo(dir / "elsewhere/e.jpg", 2);
  auto e = test::run_cnclip({"embed-image", dir / "elsewhere/e.jpg", "--model", test::tiny_bundle()});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  test::write_text(dir / "e.jsonl", e.out);
  auto r = test::run_cnclip(test::concat({"import", dir / "e.jsonl", "--model", test::tiny_bundle()}, idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip(test::concat({"index", "-q", "--reindex", "--model", test::random_tiny_bundle()}, idx_args()));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("under no indexed folder"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 2u);
}

// --- item 2: a missing root ----------------------------------------------------------------------

TEST_F(Roots, MissingRootKeepsItsEntriesAndStaysARoot) {
  for (int i = 0; i < 3; ++i) make_photo(a + "/sub/a" + std::to_string(i) + ".jpg", i);
  make_photo(b + "/b.jpg", 9);
  index_ok({a});
  index_ok({b});
  ASSERT_EQ(paths().size(), 4u);

  fs::rename(a, dir / "A renamed");  // an unplugged drive
  auto r = index({});
  EXPECT_EQ(r.exit_code, 0) << r.err;  // documented: the pass completed; the warning says what was kept
  EXPECT_NE(r.err.find(a + ": folder missing; its 3 entries are kept; 'cnclip remove"), std::string::npos) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["missing"], 1);
  EXPECT_EQ(paths().size(), 4u);
  EXPECT_EQ(roots().size(), 2u);

  fs::rename(dir / "A renamed", a);  // plugged in again: nothing to do
  s = index_ok({});
  EXPECT_EQ(s["unchanged"], 4);
  EXPECT_EQ(s["added"], 0);
}

TEST_F(Roots, RootWhoseParentIsGoneKeepsItsEntries) {
  const std::string root = dir / "mnt/drive/photos";
  make_photo(root + "/p.jpg", 3);
  index_ok({root});
  fs::rename(dir / "mnt", dir / "mnt-gone");
  auto r = index({});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(root + ": folder missing; its 1 entry is kept"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 1u);
  // `cnclip remove` drops them, as the message says.
  r = test::run_cnclip(test::concat({"remove", root}, idx_args()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(paths().size(), 0u);
  EXPECT_EQ(roots().size(), 0u);
}

// --- item 3: folders that cannot be listed -------------------------------------------------------

// Runs cnclip as `nobody` (root can list any folder, so permissions prove nothing as root).
test::RunResult run_as_nobody(const std::vector<std::string>& args) {
  test::RunOptions as_nobody;
  as_nobody.through = {"runuser", "-u", "nobody", "--"};
  return test::run_cnclip(args, as_nobody);
}

TEST(RootsPermissions, UnlistableSubfolderKeepsItsEntries) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run cnclip as another user (nobody)";
  if (std::system("runuser -u nobody -- true") != 0) GTEST_SKIP() << "runuser -u nobody is not available";
  test::TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  const std::string photos = dir / "photos", idx = dir / "index";
  for (int i = 0; i < 3; ++i) make_photo(photos + "/locked/l" + std::to_string(i) + ".jpg", i);
  make_photo(photos + "/open/o.jpg", 7);
  ASSERT_EQ(
      std::system(("chmod -R a+rX " + q(photos) + " && mkdir -p " + q(idx) + " && chown nobody " + q(idx)).c_str()), 0);
  // The tiny bundle must be readable by nobody: copy it into the world-readable temp dir.
  fs::copy(test::tiny_bundle(), dir / "tiny", fs::copy_options::recursive);
  ASSERT_EQ(std::system(("chmod -R a+rX " + q(dir / "tiny")).c_str()), 0);
  const std::vector<std::string> common{"--model", dir / "tiny", "--index", idx, "-q", "--format", "json"};

  auto r = run_as_nobody(test::concat({"index", photos}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(json::parse(r.out)["added"], 4);

  ASSERT_EQ(::chmod((photos + "/locked").c_str(), 0700), 0);  // owned by root: nobody cannot list it
  r = run_as_nobody(test::concat({"index"}, common));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["unreadable_folders"], 1);
  EXPECT_EQ(s["unchanged"], 1);
  // Reported once, naming the folder and what is kept.
  size_t mentions = 0;
  for (const auto& line : test::lines(r.err)) mentions += line.find(photos + "/locked") != std::string::npos;
  EXPECT_EQ(mentions, 1u) << r.err;
  EXPECT_NE(r.err.find("its 3 indexed file(s) are kept"), std::string::npos) << r.err;
  auto store = IndexStore::open(idx, IndexAccess::kRead);
  EXPECT_EQ(store->catalog().count(), 4);
  store.reset();

  // Readable again, and one file really deleted meanwhile: only that one goes.
  ASSERT_EQ(::chmod((photos + "/locked").c_str(), 0755), 0);
  fs::remove(photos + "/locked/l1.jpg");
  r = run_as_nobody(test::concat({"index"}, common));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["removed"], 1);
}

// --- item 4: roots recorded when the run starts --------------------------------------------------

TEST_F(Roots, KilledFirstRunIsContinuedByIndexWithNoPath) {
  const int n = 40;
  for (int i = 0; i < n; ++i) make_photo(a + "/d" + std::to_string(i % 3) + "/p" + std::to_string(i) + ".jpg", 100 + i);
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl(CNCLIP_BINARY, "cnclip", "index", "-q", "--batch-size", "1", "-j", "1", a.c_str(), "--model",
          test::tiny_bundle().c_str(), "--index", idx.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Kill it once some batches are committed, well before the end.
  int64_t committed = 0;
  for (int tries = 0; tries < 3000 && committed < 2; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!fs::exists(idx + "/catalog.sqlite3")) continue;
    try {
      auto store = IndexStore::open(idx, IndexAccess::kRead);
      committed = store->catalog().count();
    } catch (const Exception&) {
    }
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_GE(committed, 2);
  const auto before = paths().size();
  if (before >= static_cast<size_t>(n)) GTEST_SKIP() << "the run finished before it could be killed";
  EXPECT_EQ(roots().size(), 1u);  // recorded in the first transaction

  auto s = index_ok({});  // no path: continues the interrupted first run
  EXPECT_EQ(s["added"].get<int64_t>() + s["unchanged"].get<int64_t>(), n);
  EXPECT_EQ(paths().size(), static_cast<size_t>(n));
}

// --- item 5: walk options stored per root --------------------------------------------------------

TEST_F(Roots, WalkOptionsAreStoredAndAChangeAppliesToExistingEntries) {
  make_photo(a + "/x.jpg", 1);
  make_photo(a + "/y.png", 2);
  make_photo(a + "/raw/z.jpg", 3);
  make_photo(a + "/.hidden/h.jpg", 4);
  auto s = index_ok({"--exclude", "*.png", "--exclude", "raw", a});
  EXPECT_EQ(s["added"], 1);

  s = index_ok({});  // no path: the stored options, not the defaults
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["unchanged"], 1);
  s = index_ok({a});  // the root again without walk options: keeps its stored ones
  EXPECT_EQ(s["added"], 0);

  // Other options replace them (said on stderr); newly excluded entries go, newly included come.
  // (All of the root's entries go: confirmed, see store_trust_test.cpp.)
  auto r = index({"--exclude", "*.jpg", "--hidden", "--confirm-removal", a});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  s = json::parse(r.out);
  EXPECT_NE(
      r.err.find("walk options are replaced (were: --exclude '*.png' --exclude raw; now: --hidden --exclude '*.jpg')"),
      std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("1 indexed file(s) that their folder's options now exclude were removed"), std::string::npos)
      << r.err;
  EXPECT_EQ(s["added"], 1);     // y.png
  EXPECT_EQ(s["excluded"], 1);  // x.jpg
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/y.png"}));

  r = index({"--no-hidden", "--ext", "jpg", "--confirm-removal", a});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/raw/z.jpg", a + "/x.jpg"}));
  s = index_ok({});
  EXPECT_EQ(s["unchanged"], 2);
  EXPECT_EQ(s["excluded"], 0);
}

TEST_F(Roots, ExcludeTakesOneValuePerFlag) {
  make_photo(a + "/x.jpg", 1);
  make_photo(a + "/y.png", 2);
  auto s = index_ok({"--exclude", "*.png", a});  // the path is not taken as a second pattern
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/x.jpg"}));
  test::TempDir other;
  auto r = test::run_cnclip({"index", "-q", "--format", "json", "--exclude=*.jpg", a, "--model", test::tiny_bundle(),
                             "--index", other / "i"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 1);  // y.png only
}

// --- item 6: file roots --------------------------------------------------------------------------

TEST_F(Roots, SingleFileRootIsUpdatedAndPruned) {
  const std::string f = dir / "loose/one.jpg";
  make_photo(f, 1);
  make_photo(dir / "loose/other.jpg", 2);  // its folder is not indexed
  auto s = index_ok({f});
  EXPECT_EQ(s["added"], 1);
  ASSERT_EQ(roots().size(), 1u);
  EXPECT_TRUE(roots()[0].is_file);

  make_photo(f, 5);  // changed: seen by `index` with no path
  fs::last_write_time(f, fs::last_write_time(f) + std::chrono::seconds(5));
  s = index_ok({});
  EXPECT_EQ(s["updated"], 1);

  fs::remove(f);  // deleted (its folder is there): pruned, root and entry
  s = index_ok({});
  EXPECT_EQ(s["removed"], 1);
  EXPECT_TRUE(paths().empty());
  EXPECT_TRUE(roots().empty());
}

TEST_F(Roots, FileRootWhoseFolderIsMissingIsKept) {
  const std::string f = dir / "drive/one.jpg";
  make_photo(f, 1);
  index_ok({f});
  fs::rename(dir / "drive", dir / "drive-unplugged");
  auto r = index({});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(f + ": file missing, and so is its folder; its entry is kept"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 1u);
  EXPECT_EQ(roots().size(), 1u);
}

TEST_F(Roots, FileInsideAnIndexedFolderIsNotASeparateRoot) {
  make_photo(a + "/x.jpg", 1);
  index_ok({a});
  index_ok({a + "/x.jpg"});
  EXPECT_EQ(roots().size(), 1u);
}

// --- item 7: symbolic links ----------------------------------------------------------------------

TEST_F(Roots, SymlinksAreReportedNeverDuplicatedAndLoopsEnd) {
  make_photo(a + "/real.jpg", 1);
  make_photo(dir / "outside/o.jpg", 2);
  fs::create_directories(a + "/sub");
  fs::create_symlink(a + "/real.jpg", a + "/link-to-real.jpg");       // duplicate of its target
  fs::create_symlink(dir / "outside/o.jpg", a + "/link-out.jpg");     // outside the root
  fs::create_directory_symlink(a, a + "/sub/loop");                   // a loop
  fs::create_directory_symlink(dir / "outside", a + "/outside-dir");  // a folder outside
  fs::create_symlink(dir / "nowhere.jpg", a + "/dangling.jpg");
  auto r = index({a});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["links"], 4);
  EXPECT_EQ(s["failed"], 1);  // the dangling link, reported
  EXPECT_NE(r.err.find("4 symbolic link(s) not followed"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(a + "/dangling.jpg: dangling symbolic link"), std::string::npos) << r.err;
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/real.jpg"}));  // canonical only

  // A root given through a link is stored under its real path.
  fs::create_directory_symlink(a, dir / "A-link");
  s = index_ok({dir / "A-link"});
  EXPECT_EQ(s["unchanged"], 1);
  EXPECT_EQ(roots().size(), 1u);
}

TEST_F(Roots, EntryStoredUnderALinkPathIsNotKeptForever) {
  // An older cnclip stored files reached through a link under the link's path.
  make_photo(a + "/real.jpg", 1);
  index_ok({a});
  fs::create_symlink(dir / "elsewhere.jpg", a + "/via-link.jpg");
  make_photo(dir / "elsewhere.jpg", 2);
  {
    auto store = IndexStore::open(idx, IndexAccess::kWrite);
    Catalog& c = store->catalog();
    auto e = c.embedding(c.find(a + "/real.jpg")->id);
    CatalogTransaction tx(c);
    c.insert(FileRecord{0, a + "/via-link.jpg", 1, 1, "h", 0}, e.data(), static_cast<int>(e.size()));
    tx.commit();
  }
  auto s = index_ok({});
  EXPECT_EQ(s["removed"], 1);
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/real.jpg"}));
}

TEST_F(Roots, AFolderReplacedByALinkOrAFileDropsItsEntries) {
  make_photo(a + "/keep.jpg", 1);
  make_photo(a + "/x/one.jpg", 2);
  make_photo(a + "/y/two.jpg", 3);
  index_ok({a});
  ASSERT_EQ(paths().size(), 3u);
  // x becomes a link to a copy elsewhere (its old paths still resolve, through the link), y a file.
  fs::rename(a + "/x", dir / "x-elsewhere");
  fs::create_directory_symlink(dir / "x-elsewhere", a + "/x");
  fs::remove_all(a + "/y");
  test::write_text(a + "/y", "a file now");
  auto s = index_ok({});
  EXPECT_EQ(s["removed"], 2);
  EXPECT_EQ(s["links"], 1);
  EXPECT_EQ(paths(), (std::set<std::string>{a + "/keep.jpg"}));
}

// --- issue #11: every skip that is not an exclusion is reported and counted ----------------------

TEST_F(Roots, SpecialFilesAndOverlongPathsAreReportedAndCounted) {
  make_photo(a + "/ok.jpg", 1);
  ASSERT_EQ(::mkfifo((a + "/fifo.jpg").c_str(), 0644), 0);
  make_photo(a + "/folder.jpg/inside.jpg", 2);  // a folder named like a photo is walked
  const bool device = ::mknod((a + "/dev.jpg").c_str(), S_IFCHR | 0644, makedev(1, 3)) == 0;
  // A file whose absolute path is longer than PATH_MAX, made with relative *at calls.
  int fd = ::open(a.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  const std::string part(200, 'n');
  size_t depth = a.size();
  while (depth < PATH_MAX + 100) {
    ASSERT_EQ(::mkdirat(fd, part.c_str(), 0755), 0);
    const int next = ::openat(fd, part.c_str(), O_RDONLY | O_DIRECTORY);
    ::close(fd);
    fd = next;
    ASSERT_GE(fd, 0);
    depth += part.size() + 1;
  }
  const int file = ::openat(fd, "deep.jpg", O_WRONLY | O_CREAT, 0644);
  ASSERT_GE(file, 0);
  ::close(file);
  ::close(fd);

  auto r = index({a});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["added"], 2);  // ok.jpg, folder.jpg/inside.jpg
  EXPECT_NE(r.err.find(a + "/fifo.jpg: a FIFO"), std::string::npos) << r.err;
  if (device) {
    EXPECT_NE(r.err.find(a + "/dev.jpg: a device"), std::string::npos) << r.err;
  }
  // The overlong part: the folder that cannot be listed, or the file, is named on stderr.
  EXPECT_TRUE(r.err.find("File name too long") != std::string::npos ||
              r.err.find("longer than the system limit") != std::string::npos)
      << r.err;
  EXPECT_EQ(s["failed"].get<int64_t>() + s["unreadable_folders"].get<int64_t>(), device ? 3 : 2);

  // Remembered: not reported again while unchanged.
  s = index_ok({});
  EXPECT_EQ(s["failed"], 0);
  EXPECT_GE(s["failed_before"].get<int64_t>(), 1);
  EXPECT_EQ(s["removed"], 0);
}

TEST_F(Roots, IndexWithNoPathOnANewIndexCreatesNothing) {
  auto r = test::run_cnclip(test::concat({"index", "--model", test::tiny_bundle()}, idx_args()));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("nothing to index"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(idx));
}

TEST_F(Roots, FailedFilesAreReportedAndTheRunExitsZero) {
  make_photo(a + "/ok.jpg", 1);
  test::write_text(a + "/broken.jpg", "not a jpeg");
  auto r = index({a});
  EXPECT_EQ(r.exit_code, 0) << r.err;  // documented: the pass completed; failures are reported and counted
  EXPECT_EQ(json::parse(r.out)["failed"], 1);
  EXPECT_NE(r.err.find(a + "/broken.jpg"), std::string::npos) << r.err;
}

// --- the plan, without a model -------------------------------------------------------------------

class Plan : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::unique_ptr<Catalog> catalog = Catalog::open(dir / "c.sqlite3", true);
  std::string root = dir / "r";
  void add(const std::string& path) {
    const float e[2] = {1, 0};
    CatalogTransaction tx(*catalog);
    catalog->insert(FileRecord{0, path, 1, 1, "hash-" + path, 0}, e, 2);
    tx.commit();
  }
  IndexPlan plan(const WalkOptions& walk = {}) {
    IndexOptions o;
    return plan_index(*catalog, {IndexTarget{root, false, walk, true, std::nullopt, ""}}, o);
  }
};

TEST_F(Plan, OnlyFilesSeenGoneAreVanished) {
  fs::create_directories(root);
  test::write_text(root + "/kept.jpg", "x");
  fs::create_directories(root + "/emptied");
  add(root + "/kept.jpg");
  add(root + "/gone.jpg");            // its folder was listed without it
  add(root + "/emptied/gone2.jpg");   // its folder is empty now (an unmounted share?): kept, missing
  add(root + "/deleted-dir/g3.jpg");  // its folder is gone, and the root was listed without it
  auto p = plan();
  std::set<std::string> vanished;
  for (const auto& [h, r] : p.vanished) vanished.insert(r.path);
  EXPECT_EQ(vanished, (std::set<std::string>{root + "/gone.jpg", root + "/deleted-dir/g3.jpg"}));
  EXPECT_EQ(p.missing, 1);
  ASSERT_EQ(p.to_encode.size(), 1u);  // kept.jpg changed (size 1 vs the file's)
  EXPECT_TRUE(p.excluded.empty());
}

TEST_F(Plan, AnEntryThatCannotBeLookedAtIsKept) {
  // lstat fails with ENAMETOOLONG, not ENOENT: cnclip cannot tell it is gone, so it is kept.
  // (Folders that cannot be listed: RootsPermissions.UnlistableSubfolderKeepsItsEntries.)
  fs::create_directories(root);
  add(root + "/" + std::string(300, 'x') + "/" + std::string(PATH_MAX, 'y') + "/f.jpg");
  auto p = plan();
  EXPECT_TRUE(p.vanished.empty());
}

TEST_F(Plan, AMissingRootKeepsEverything) {
  add(root + "/a.jpg");
  add(root + "/b/c.jpg");
  auto p = plan();
  EXPECT_TRUE(p.vanished.empty());
  EXPECT_EQ(p.missing, 1);
  ASSERT_EQ(p.notices.size(), 1u);
  EXPECT_NE(p.notices[0].find("folder missing; its 2 entries are kept"), std::string::npos);
}

TEST_F(Plan, ExcludedEntriesOnDiskAreExcludedNotVanished) {
  fs::create_directories(root);
  test::write_text(root + "/a.png", "x");
  test::write_text(root + "/b.jpg", "x");
  add(root + "/a.png");
  WalkOptions w;
  w.excludes = {"*.png"};
  auto p = plan(w);
  ASSERT_EQ(p.excluded.size(), 1u);
  EXPECT_EQ(p.excluded[0].path, root + "/a.png");
  EXPECT_TRUE(p.vanished.empty());
}

TEST_F(Plan, AnEntryAnotherRootTakesIsNotExcluded) {
  // Nested roots with different options: the outer one excludes what the inner one holds.
  fs::create_directories(root + "/inner");
  test::write_text(root + "/inner/a.png", "x");
  add(root + "/inner/a.png");
  WalkOptions outer;
  outer.excludes = {"*.png"};
  IndexOptions o;
  auto p = plan_index(*catalog,
                      {IndexTarget{root, false, outer, true, std::nullopt, ""},
                       IndexTarget{root + "/inner", false, WalkOptions{}, true, std::nullopt, ""}},
                      o);
  EXPECT_TRUE(p.excluded.empty());
  EXPECT_TRUE(p.vanished.empty());
  ASSERT_EQ(p.to_encode.size(), 1u);  // changed (size and mtime differ from the record)
  // Only the outer root: now it is excluded.
  p = plan(outer);
  ASSERT_EQ(p.excluded.size(), 1u);
}

TEST_F(Plan, ForceEncodesUnchangedAndFailedFilesAgain) {
  fs::create_directories(root);
  test::write_text(root + "/a.jpg", "x");
  auto f = stat_file(root + "/a.jpg").value();
  {
    const float e[2] = {1, 0};
    CatalogTransaction tx(*catalog);
    catalog->insert(FileRecord{0, f.path, f.size, f.mtime_ns, "h", 0}, e, 2);
    test::write_text(root + "/bad.jpg", "y");
    auto b = stat_file(root + "/bad.jpg").value();
    catalog->record_failure(FileRecord{0, b.path, b.size, b.mtime_ns, "", 0}, "broken");
    tx.commit();
  }
  IndexOptions o;
  auto p = plan_index(*catalog, {IndexTarget{root, false, WalkOptions{}, true, std::nullopt, ""}}, o);
  EXPECT_EQ(p.unchanged, 1);
  EXPECT_EQ(p.failed_before, 1);
  EXPECT_TRUE(p.to_encode.empty());
  p = plan_index(*catalog, {IndexTarget{root, false, WalkOptions{}, true, std::nullopt, ""}}, o, /*force=*/true);
  ASSERT_EQ(p.to_encode.size(), 2u);
  EXPECT_TRUE(p.to_encode[0].existing.has_value());  // a.jpg: updated in place, not added
}

TEST(WalkOptionsTest, HoldsMatchesTheWalk) {
  WalkOptions w;
  w.excludes = {"raw", "*.png"};
  EXPECT_TRUE(w.holds("/r", "/r/a/b.jpg"));
  EXPECT_TRUE(w.holds("/r", "/r"));
  EXPECT_FALSE(w.holds("/r", "/r/raw/b.jpg"));
  EXPECT_FALSE(w.holds("/r", "/r/a/b.png"));
  EXPECT_FALSE(w.holds("/r", "/r/.h/b.jpg"));
  EXPECT_FALSE(w.holds("/r", "/rx/b.jpg"));
  EXPECT_FALSE(w.holds("/r", "/r/b.txt"));
  w.include_hidden = true;
  EXPECT_TRUE(w.holds("/r", "/r/.h/b.jpg"));
  EXPECT_EQ(WalkOptions::from_json(w.to_json()), w);
  EXPECT_EQ(WalkOptions::from_json(""), WalkOptions{});
  EXPECT_EQ(WalkOptions{}.to_json(), "");
}

// --- schema: a catalog made by the previous schema opens and is upgraded in place ----------------

// A new catalog has 32 KiB pages (src/catalog.cpp: one 2 KiB embedding row per 4 KiB page wasted
// nearly half the file), also once rows are in.
TEST(CatalogSchema, NewCatalogsHave32KiBPages) {
  test::TempDir dir;
  const std::string path = dir / "catalog.sqlite3";
  {
    auto c = Catalog::open(path, true);
    c->begin();
    const std::vector<float> e(512, 1.0f / std::sqrt(512.0f));
    for (int i = 0; i < 1000; ++i)
      c->insert(FileRecord{0, "/p/" + std::to_string(i) + ".jpg", 1, 2, "h", 3}, e.data(), 512);
    c->commit();
  }
  EXPECT_EQ(test::sqlite_page_size(path), 32768);
  // 1000 rows of 2 KiB embeddings: ~2.3 KB each, not a 4 KiB page each (4.1 MB).
  // (the last connection's close checkpoints the log into the file).
  EXPECT_LT(std::filesystem::file_size(path), 1000u * 2600 + 16 * 32768);
}

TEST(CatalogSchema, Version1CatalogIsUpgradedInPlace) {
  test::TempDir dir;
  const std::string path = dir / "catalog.sqlite3";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  // Exactly what cnclip with schema 1 created (src/catalog.cpp before the upgrade), with some rows.
  const char* v1 =
      "PRAGMA journal_mode=WAL;"
      "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS files("
      "  id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,"
      "  mtime_ns INTEGER NOT NULL, content_hash TEXT NOT NULL, indexed_at INTEGER NOT NULL,"
      "  embedding BLOB NOT NULL);"
      "CREATE INDEX IF NOT EXISTS files_by_hash ON files(content_hash);"
      "CREATE TABLE IF NOT EXISTS roots(path TEXT PRIMARY KEY);"
      "CREATE TABLE IF NOT EXISTS failures(path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
      "  mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);"
      "INSERT INTO meta VALUES('schema_version', '1');"
      "INSERT INTO meta VALUES('generation', '7');"
      "INSERT INTO roots VALUES('/photos');"
      "INSERT INTO files(path, size, mtime_ns, content_hash, indexed_at, embedding) "
      "  VALUES('/photos/a.jpg', 3, 4, 'h', 5, x'0000803f00000000');";
  ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);

  auto c = Catalog::open(path, false);
  EXPECT_EQ(c->meta("schema_version"), "4");  // straight to the current schema (4: video frames)
  EXPECT_EQ(test::sqlite_page_size(path), 4096) << "an existing catalog keeps its pages";
  EXPECT_TRUE(c->frames().empty());
  EXPECT_EQ(c->generation(), 7);
  EXPECT_EQ(c->count(), 1);
  auto roots = c->root_records();
  ASSERT_EQ(roots.size(), 1u);
  EXPECT_EQ(roots[0].path, "/photos");
  EXPECT_FALSE(roots[0].is_file);
  EXPECT_EQ(roots[0].options, "");
  c->begin();
  c->set_root(RootRecord{"/one.jpg", true, "{\"hidden\":true}"});
  c->commit();
  c.reset();
  c = Catalog::open(path, false);  // opens again without upgrading twice
  roots = c->root_records();
  ASSERT_EQ(roots.size(), 2u);
  EXPECT_TRUE(roots[0].is_file);
  EXPECT_TRUE(WalkOptions::from_json(roots[0].options).include_hidden);
}

TEST(CatalogSchema, NewerSchemaIsRefused) {
  test::TempDir dir;
  const std::string path = dir / "catalog.sqlite3";
  {
    auto c = Catalog::open(path, true);
    c->begin();
    c->set_meta("schema_version", "99");
    c->commit();
  }
  try {
    Catalog::open(path, false);
    FAIL() << "a newer schema was accepted";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kMismatch);
    EXPECT_NE(std::string(e.what()).find("newer"), std::string::npos);
  }
}

}  // namespace
}  // namespace cnclip

// Store integrity: nothing indexed is lost or corrupted, silently or otherwise, by a typo in the walk
// options, an unmounted share, an index folder inside a root, a subfolder given on its own, or a
// damaged catalog (issue "store integrity bugs a new-user probe reproduced", points 1-6).
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "cnclip/catalog.h"
#include "cnclip/error.h"
#include "cnclip/file_walk.h"
#include "cnclip/index_store.h"
#include "cnclip/indexer.h"
#include "cnclip/model.h"
#include "cnclip/search.h"
#include "damage_util.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

class Trust : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::string idx = dir / "index";
  std::string root = dir / "photos";

  std::vector<std::string> idx_args() const { return {"--index", idx}; }
  test::RunResult index(const std::vector<std::string>& args) {
    return test::run_cnclip(
        test::concat({"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", idx}, args));
  }
  json index_ok(const std::vector<std::string>& args) {
    auto r = index(args);
    EXPECT_EQ(r.exit_code, 0) << (args.empty() ? "" : args[0]) << "\n" << r.err;
    return r.out.empty() ? json{} : json::parse(r.out);
  }
  std::set<std::string> paths() { return test::indexed_paths(idx); }
  // Moves the index onto a tmpfs of `bytes` (and at most `inodes` files) mounted on dir/disk for the
  // lifetime of the returned mount.
  test::ScopedMount index_on_tmpfs(uint64_t bytes, uint64_t inodes = 0) {
    const std::string disk = dir / "disk";
    fs::create_directories(disk);
    idx = disk + "/index";
    return test::ScopedMount::tmpfs(disk, bytes, inodes);
  }
  std::vector<RootRecord> roots() {
    auto store = IndexStore::open(idx, IndexAccess::kRead);
    return store->catalog().root_records();
  }
  void photos(const std::string& folder, int n, unsigned seed, const std::string& ext = "png") {
    fs::create_directories(folder);
    for (int i = 0; i < n; ++i) {
      test::make_small_photo(folder + "/p" + std::to_string(seed + i) + "." + ext, seed + static_cast<unsigned>(i));
    }
  }
};

// --- 1. options that cannot be meant ------------------------------------------------------------

TEST(TrustOptions, EveryDefaultExtensionIsAcceptedAndAnyOtherIsRefusedWithTheReadableList) {
  WalkOptions o;  // the default list, whatever it holds (another format may be added to it)
  EXPECT_NO_THROW(check_walk_options(o));
  for (const auto& e : WalkOptions::default_extensions()) {
    o.extensions = {e};
    EXPECT_NO_THROW(check_walk_options(o)) << e;
  }
  for (const std::string bad : {"jgp", "txt", "pngg", "j"}) {
    o.extensions = {"jpg", bad};
    try {
      check_walk_options(o);
      ADD_FAILURE() << bad << " accepted";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      const std::string m = e.what();
      EXPECT_NE(m.find(bad), std::string::npos) << m;
      for (const auto& known : WalkOptions::default_extensions()) EXPECT_NE(m.find(known), std::string::npos) << m;
    }
  }
}

TEST(TrustOptions, ExcludesThatCannotBeMeantAreRefusedAndUsefulOnesAccepted) {
  for (const std::string bad : {"", "[", "*.[jp", "photos/a", "a/*.png", "sub/"}) {
    WalkOptions o;
    o.excludes = {"*.png", bad};
    try {
      check_walk_options(o);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("--exclude"), std::string::npos) << e.what();
    }
  }
  for (const std::string good : {"*.png", "[[]x", "*/photos/a", "/abs/photos/a", "?a/b", "[ab]/c", "[]]x", "IMG_*"}) {
    WalkOptions o;
    o.excludes = {good};
    EXPECT_NO_THROW(check_walk_options(o)) << good;
  }
}

TEST_F(Trust, ExtensionTypoIsAUsageErrorAndChangesNothing) {
  photos(root, 4, 1);
  index_ok({root});
  const auto before = roots();
  for (const std::string ext : {"jgp", "png,jgp", ".PNJ"}) {
    auto r = index({root, "--ext", ext});
    EXPECT_EQ(r.exit_code, 2) << ext << "\n" << r.err;
    EXPECT_NE(r.err.find("cnclip reads no files with the extension"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("jpg,jpeg"), std::string::npos) << "the readable ones are listed: " << r.err;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
    EXPECT_EQ(paths().size(), 4u);
    EXPECT_EQ(roots()[0].options, before[0].options);
  }
}

TEST_F(Trust, BadExcludePatternsAreUsageErrors) {
  photos(root, 2, 1);
  index_ok({root});
  for (const std::string g : {"", "[", "photos/a"}) {
    auto r = index({root, "--exclude", g});
    EXPECT_EQ(r.exit_code, 2) << "'" << g << "'\n" << r.err;
    EXPECT_NE(r.err.find("--exclude"), std::string::npos) << r.err;
    EXPECT_EQ(paths().size(), 2u);
  }
}

TEST_F(Trust, OptionsThatWouldRemoveMostOfARootAreRefusedUntilConfirmed) {
  photos(root, 12, 1, "png");
  photos(root + "/sub", 1, 100, "jpg");
  index_ok({root});
  ASSERT_EQ(paths().size(), 13u);
  const std::string options_before = roots()[0].options;
  // All of them (a too-broad glob, a glob on every full path), most of them (a format that is not the
  // main one): refused, exit 2, nothing changed; the message says how many and how to confirm.
  for (const auto& [option, value] : std::vector<std::pair<std::string, std::string>>{
           {"--exclude", "*"}, {"--exclude", "*/photos/*"}, {"--ext", "jpg"}, {"--exclude", "*.png"}}) {
    const std::string opts = option + " " + value;
    auto r = index({root, option, value});
    EXPECT_EQ(r.exit_code, 2) << opts << "\n" << r.err;
    EXPECT_NE(r.err.find("would remove"), std::string::npos) << r.err;
    const std::string count = value.rfind('*', 0) == 0 && value.find("png") == std::string::npos
                                  ? "would remove all 13"
                                  : "would remove 12 of the 13";
    EXPECT_NE(r.err.find(count), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--confirm-removal"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("nothing was changed"), std::string::npos) << r.err;
    EXPECT_EQ(paths().size(), 13u) << opts;
    EXPECT_EQ(roots()[0].options, options_before) << opts;
  }
  // A narrowing that removes a minority goes through.
  auto s = index_ok({root, "--exclude", "p1.png"});
  EXPECT_EQ(s["excluded"], 1);
  EXPECT_EQ(paths().size(), 12u);
  // Confirmed: done.
  EXPECT_EQ(index({root, "--ext", "jpg"}).exit_code, 2);  // 11 of the 12 left
  s = index_ok({root, "--ext", "jpg", "--confirm-removal"});
  EXPECT_EQ(s["excluded"], 11);
  EXPECT_EQ(paths().size(), 1u);
}

TEST_F(Trust, InASmallRootOnlyRemovingEverythingIsRefused) {
  photos(root, 3, 1, "png");
  photos(root, 1, 10, "jpg");
  index_ok({root});
  auto r = index({root, "--exclude", "*"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("would remove all 4"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 4u);
  auto s = index_ok({root, "--ext", "jpg"});  // 3 of 4: an ordinary choice in a small folder
  EXPECT_EQ(s["excluded"], 3);
  r = index({root, "--ext", "png"});  // the last one
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(paths().size(), 1u);
}

// --- 2. an unmounted share, an emptied folder ------------------------------------------------------

TEST_F(Trust, UnmountedRootKeepsItsEntriesAsMissing) {
  const std::string mnt = dir / "mnt";
  fs::create_directories(mnt);
  {
    auto m = test::ScopedMount::tmpfs(mnt, 8 << 20);
    ASSERT_TRUE(m.ok()) << m.why();
    photos(mnt, 5, 1, "jpg");
    EXPECT_EQ(index_ok({mnt})["added"], 5);
  }  // unmounted: the mount point is an empty folder
  ASSERT_TRUE(fs::is_empty(mnt));
  auto r = index({});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["missing"], 1);
  EXPECT_NE(r.err.find("folder empty now"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cnclip remove"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 5u);
  // The same with the root given again: kept.
  s = index_ok({mnt});
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(paths().size(), 5u);
  // Mounted again with the same files: nothing to do.
  auto m = test::ScopedMount::tmpfs(mnt, 8 << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  photos(mnt, 5, 1, "jpg");  // same bytes, new mtimes: encoded again in place, never added twice
  s = index_ok({});
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(paths().size(), 5u);
}

TEST_F(Trust, UnmountedShareBelowARootKeepsItsEntries) {
  photos(root, 2, 1);
  const std::string mnt = root + "/nas";
  fs::create_directories(mnt);
  auto m = test::ScopedMount::tmpfs(mnt, 8 << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  photos(mnt + "/2024", 3, 20);
  index_ok({root});
  ASSERT_EQ(paths().size(), 5u);
  ASSERT_EQ(::umount2(mnt.c_str(), MNT_DETACH), 0);
  auto r = index({});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["missing"], 1);
  EXPECT_NE(r.err.find(mnt), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 5u);
}

TEST_F(Trust, EmptiedFolderKeepsItsEntriesUntilRemovedButSingleDeletionsStillGo) {
  photos(root, 2, 1);
  photos(root + "/trip", 3, 10);
  index_ok({root});
  ASSERT_EQ(paths().size(), 5u);
  // One photo deleted in a folder that still holds others: gone from the index.
  fs::remove(root + "/p1.png");
  auto s = index_ok({});
  EXPECT_EQ(s["removed"], 1);
  EXPECT_EQ(paths().size(), 4u);
  // Every photo of a folder deleted, the folder left empty: kept, counted as missing, said once.
  for (const auto& e : fs::directory_iterator(root + "/trip")) fs::remove(e.path());
  auto r = index({});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  s = json::parse(r.out);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["missing"], 1);
  EXPECT_EQ(paths().size(), 4u);
  size_t notices = 0;
  for (size_t at = 0; (at = r.err.find("folder empty now", at)) != std::string::npos; ++at) ++notices;
  EXPECT_EQ(notices, 1u) << r.err;
  // The next step the notice names drops them.
  auto rm = test::run_cnclip({"remove", "--index", idx, root + "/trip"});
  EXPECT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_EQ(paths().size(), 1u);
  // A folder holding only a hidden file is not empty: its photos are seen deleted.
  photos(root + "/b", 2, 30);
  index_ok({});
  ASSERT_EQ(paths().size(), 3u);
  for (const auto& e : fs::directory_iterator(root + "/b")) fs::remove(e.path());
  test::write_text(root + "/b/.DS_Store", "x");
  s = index_ok({});
  EXPECT_EQ(s["removed"], 2);
  EXPECT_EQ(paths().size(), 1u);
}

// --- 3. index folders inside a root --------------------------------------------------------------

TEST_F(Trust, WalkNeverEntersAnIndexFolder) {
  photos(root, 3, 1, "jpg");
  const std::string in_use = root + "/idx";
  // The index in use inside the root, with thumbnails as `serve` writes them.
  auto r =
      test::run_cnclip({"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", in_use, root});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 3);
  fs::create_directories(in_use + "/thumbs");
  for (const auto& e : fs::directory_iterator(root)) {
    if (e.is_regular_file()) fs::copy_file(e.path(), in_use + "/thumbs/" + e.path().filename().string());
  }
  r = test::run_cnclip({"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", in_use});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["added"], 0) << r.err;
  EXPECT_NE(r.err.find("index folder"), std::string::npos) << r.err;
  // Another index folder met by a walk (recognized by its catalog), also with photos in it.
  photos(root + "/old-index", 2, 40, "jpg");
  test::write_text(root + "/old-index/catalog.sqlite3", "");
  s = index_ok({root});
  EXPECT_EQ(s["added"], 3);
  for (const auto& p : paths()) {
    EXPECT_EQ(p.find("/idx/"), std::string::npos) << p;
    EXPECT_EQ(p.find("/old-index/"), std::string::npos) << p;
  }
  // A folder indexed before it became an index folder: its entries go.
  fs::create_directories(root + "/later");
  photos(root + "/later", 1, 50, "jpg");
  EXPECT_EQ(index_ok({})["added"], 1);
  test::write_text(root + "/later/catalog.sqlite3", "");
  s = index_ok({});
  EXPECT_EQ(s["excluded"], 1);
  EXPECT_EQ(paths().size(), 3u);
}

// --- 4. a subfolder of a root --------------------------------------------------------------------

TEST_F(Trust, SubfolderUsesItsRootsOptionsAndIsNoRootOfItsOwn) {
  photos(root + "/a", 2, 1, "png");
  photos(root + "/a", 2, 10, "jpg");
  photos(root + "/b", 1, 20, "png");
  photos(root + "/b", 1, 30, "jpg");
  photos(root + "/.hidden", 1, 40, "jpg");
  index_ok({root, "--exclude", "*.png"});
  ASSERT_EQ(paths().size(), 3u);
  const auto before = roots();
  auto r = index({root + "/a"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 0);
  EXPECT_NE(r.err.find("inside the indexed folder"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 3u);
  auto after = roots();
  ASSERT_EQ(after.size(), before.size());
  EXPECT_EQ(after[0].path, before[0].path);
  EXPECT_EQ(after[0].options, before[0].options);
  // --reindex of a subfolder: its files, with the root's options.
  r = index({"--reindex", root + "/b"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(roots().size(), 1u);
  // Options of its own for a subfolder: refused, naming the root to give them to.
  r = index({root + "/a", "--ext", "png"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(root), std::string::npos) << r.err;
  // A subfolder the root's options leave out (hidden): refused rather than indexed with others.
  r = index({root + "/.hidden"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("leave it out"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 3u);
  EXPECT_EQ(roots().size(), 1u);
}

// --- 5. repair --------------------------------------------------------------------------------------

TEST_F(Trust, RepairAfterTheHeaderIsOverwrittenKeepsEverythingAndIndexWorksAgain) {
  photos(root, 4, 1);
  index_ok({root});
  test::damage_bytes(idx + "/catalog.sqlite3", 0, 16, 7);
  auto r = test::run_cnclip(test::concat({"repair", "--format", "json"}, idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_TRUE(j["damaged"]);
  EXPECT_TRUE(j["header_restored"]);
  EXPECT_FALSE(j["roots_lost"]);
  EXPECT_EQ(j["kept"]["files"], 4);
  EXPECT_EQ(j["kept"]["roots"], 1);
  EXPECT_EQ(r.err.find("give the folders again"), std::string::npos) << r.err;
  auto s = index_ok({});
  EXPECT_EQ(s["unchanged"], 4);
  EXPECT_EQ(s["added"], 0);
}

TEST_F(Trust, RepairThatLosesTheRootsSaysToGiveTheFoldersAgain) {
  photos(root, 4, 1);
  index_ok({root});
  // The whole first page (the schema) overwritten: nothing can be read.
  test::damage_bytes(idx + "/catalog.sqlite3", 0, 4096, 7);
  auto r = test::run_cnclip(test::concat({"repair", "--format", "json"}, idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_TRUE(j["roots_lost"]);
  EXPECT_NE(r.err.find("give the folders again"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cnclip index FOLDER"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("the next 'cnclip index' re-encodes"), std::string::npos) << r.err;
  // What it says works.
  auto s = index_ok({root});
  EXPECT_EQ(s["added"], 4);
}

// --- 6. SQLite errors that mean damage ------------------------------------------------------------

TEST_F(Trust, MissingTablesReadAsDamageInEveryReadingCommand) {
  photos(root, 3, 1);
  index_ok({root});
  for (const std::string table : {"meta", "files", "roots"}) {
    test::TempDir copy;
    for (const auto& e : fs::directory_iterator(idx)) fs::copy(e.path(), copy / e.path().filename().string());
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((copy / "catalog.sqlite3").c_str(), &db), SQLITE_OK);
    // Emptied out of SQLite's schema as lost pages would leave it (the writable schema is the
    // simplest way to drop a table without running a command cnclip would then repeat).
    ASSERT_EQ(sqlite3_exec(db, ("DROP TABLE " + table).c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"info"}, {"search-text", "猫", "--model", test::tiny_bundle()}, {"dups"}}) {
      const std::string& cmd = args[0];
      auto r = test::run_cnclip(test::concat(args, {"--index", copy.path()}));
      // Searches and dups never read the roots; every other case must fail.
      if (table == "roots" && cmd != "info") continue;
      EXPECT_EQ(r.exit_code, 1) << table << " / " << cmd << "\n" << r.err;
      EXPECT_NE(r.err.find("the catalog is damaged"), std::string::npos) << table << " / " << cmd << "\n" << r.err;
      EXPECT_NE(r.err.find("cnclip repair"), std::string::npos) << r.err;
    }
  }
}

TEST_F(Trust, LeftoverWriteAheadLogWithABadFrameReadsAsDamage) {
  // A run killed before any checkpoint: everything it committed is only in the -wal. Copy the index
  // while a writer holds it open (as kill -9 leaves it), then flip a byte in the log's first frame:
  // SQLite replays no frame from there on, so the catalog has no tables at all.
  photos(root, 2, 1);
  const std::string copy = dir / "copy";
  {
    auto store = IndexStore::open(idx, IndexAccess::kWrite);
    store->catalog().set_meta("probe", "1");
    fs::create_directories(copy);
    for (const auto& e : fs::directory_iterator(idx))
      fs::copy_file(e.path(), copy + "/" + e.path().filename().string());
  }
  ASSERT_GT(test::file_size(copy + "/catalog.sqlite3-wal"), 32u + 24u + 200u);
  test::damage_bytes(copy + "/catalog.sqlite3-wal", 32 + 24 + 100, 4, 3);
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"info"}, {"search-text", "猫", "--model", test::tiny_bundle()}, {"dups"}}) {
    const std::string& cmd = args[0];
    auto r = test::run_cnclip(test::concat(args, {"--index", copy}));
    EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find("the catalog is damaged"), std::string::npos) << cmd << "\n" << r.err;
    EXPECT_NE(r.err.find("cnclip repair"), std::string::npos) << r.err;
  }
}

// An index whose first run committed nothing (stopped by a full disk before its first batch): info
// says so instead of printing blank fields.
TEST_F(Trust, InfoOfAnIndexWithNothingCommittedSaysSo) {
  IndexStore::open(idx, IndexAccess::kWrite).reset();
  auto r = test::run_cnclip(test::concat({"info"}, idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("model:    none yet (nothing indexed)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("updated:  never\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("fingerprint ,"), std::string::npos) << r.out;
}

// --- a full disk -----------------------------------------------------------------------------------

// Fills the file system holding `dir` to its last byte.
void fill_disk(const std::string& dir) {
  std::ofstream f(dir + "/filler", std::ios::binary);
  const std::string block(64 << 10, 'f');
  while (f.write(block.data(), static_cast<std::streamsize>(block.size()))) {
  }
  f.clear();
  for (int i = 0; i < (64 << 10) && f.put('f') && f.flush(); ++i) {
  }
}

TEST_F(Trust, AFullDiskStillSearchesAndLosesNothing) {
  // A library whose disk filled up (by anything: a download, another program) stays searchable. The
  // catalog's write-ahead-log index (-shm) is created by the first reader and needs 32 KiB, which a
  // full disk cannot give: readers then read the catalog as it is on disk.
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk needs a tmpfs mounted as root";
  const std::string disk = dir / "disk";
  auto m = index_on_tmpfs(4u << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  photos(root, 5, 1, "jpg");
  index_ok({root});
  const std::vector<std::vector<std::string>> reads{
      {"info", "--format", "json"},
      {"search-text", "小狗", "-k", "3", "--model", test::tiny_bundle()},
      {"search-image", root + "/p2.jpg", "--format", "paths", "--model", test::tiny_bundle()},
      {"dups", "--format", "json"},
  };
  // info's disk_bytes counts the -shm of the reader itself, there while space allows.
  auto output = [](const std::string& cmd, const std::string& out) {
    if (cmd != "info") return out;
    auto j = json::parse(out);
    j.erase("disk_bytes");
    return j.dump();
  };
  std::vector<std::string> before;
  for (const auto& args : reads) {
    auto r = test::run_cnclip(test::concat(args, idx_args()));
    ASSERT_EQ(r.exit_code, 0) << args[0] << "\n" << r.err;
    before.push_back(output(args[0], r.out));
  }
  fill_disk(disk);
  ASSERT_LT(fs::space(disk).available, 4096u);
  for (size_t i = 0; i < reads.size(); ++i) {
    auto r = test::run_cnclip(test::concat(reads[i], idx_args()));
    EXPECT_EQ(r.exit_code, 0) << reads[i][0] << "\n" << r.err;
    EXPECT_EQ(output(reads[i][0], r.out), before[i]) << reads[i][0];
  }
  // They read without the 32 KiB -shm (the fallback under test, not a -shm made before the disk filled).
  EXPECT_LT(test::file_size(idx + "/catalog.sqlite3-shm"), 32768u);
  // A run that has something to write stops with the disk named; nothing indexed is lost.
  photos(root, 2, 10, "jpg");
  auto r = index({root});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("the disk is full"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 5u);
  // Space again: the run finishes, and the files the full disk left (an unfinished -shm) are no trouble.
  fs::remove(disk + "/filler");
  EXPECT_EQ(index_ok({root})["added"], 2);
  EXPECT_EQ(paths().size(), 7u);
}

// A file size limit (`ulimit -f`, as batch systems and some admins set): SIGXFSZ ended every cnclip
// command at its first write past it, without a word, even searches (a reader's first act is a 32 KiB
// -shm). Readers now read as on a full disk; writers stop with the limit named and lose nothing.
TEST_F(Trust, AFileSizeLimitIsNamedAndLosesNothing) {
  photos(root, 5, 1, "jpg");
  index_ok({root});
  // Limits that leave room for what the command prints (stdout and stderr are files here), not for
  // a -shm (32 KiB) or a log frame of the catalog's 32 KiB pages.
  auto limited = [&](const std::string& kib, const std::vector<std::string>& args) {
    test::RunOptions o;
    o.through = {"prlimit", "--fsize=" + std::to_string(std::stoi(kib) * 1024), "--"};
    return test::run_cnclip(test::concat(args, idx_args()), o);
  };
  const auto search = test::concat({"search-text", "小狗", "-k", "3", "--model", test::tiny_bundle()}, idx_args());
  const auto unlimited = test::run_cnclip(search);
  ASSERT_EQ(unlimited.exit_code, 0) << unlimited.err;
  for (const char* kib : {"16", "28"}) {
    SCOPED_TRACE(std::string("ulimit -f ") + kib);
    // No -shm left by an earlier reader: this one has to make it.
    for (const char* leftover : {"-shm", "-wal"}) fs::remove(idx + "/catalog.sqlite3" + leftover);
    auto r = limited(kib, {"search-text", "小狗", "-k", "3", "--model", test::tiny_bundle()});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, unlimited.out);
    r = limited(kib, {"info"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    // A run with something to write stops in one line naming the limit.
    photos(root, 2, 10 + static_cast<unsigned>(std::stoi(kib)), "jpg");
    r = limited(kib, {"index", "-q", "--model", test::tiny_bundle(), root});
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(std::string("the file size limit (ulimit -f ") + kib + ")"), std::string::npos) << r.err;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
    EXPECT_EQ(paths().size(), 5u);
  }
  // Without the limit the run finishes.
  EXPECT_EQ(index_ok({root})["added"], 4);
  // A limit well above the catalog, reached by its write-ahead log during a longer run (SQLite then
  // said only "disk I/O error"): the first batches are kept, and the limit is named.
  const uint64_t catalog_bytes = test::file_size(idx + "/catalog.sqlite3");
  photos(root, 60, 100, "jpg");
  test::RunOptions o;
  o.through = {"prlimit", "--fsize=" + std::to_string(catalog_bytes + (256u << 10)), "--"};
  auto r = test::run_cnclip(
      test::concat({"index", "-q", "--batch-size", "2", "--model", test::tiny_bundle(), root}, idx_args()), o);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("the file size limit (ulimit -f "), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  const size_t kept = paths().size();
  EXPECT_GT(kept, 9u);  // batches committed before the limit
  EXPECT_LT(kept, 69u);
  EXPECT_EQ(index_ok({root})["added"], static_cast<int64_t>(69 - kept));
}

// A reader that reads the catalog as it is on disk (immutable: its -shm could not be made) and goes
// on running (`cnclip serve`, a `search-text -` stream) sees what is committed later, whichever way
// that came: a full disk freed, or a writer beside a reader that may not write (a read-only view).
TEST_F(Trust, ALongLivedReaderOfACatalogReadAsItIsSeesLaterCommits) {
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk and mounting need root";
  const std::vector<float> query = [] {
    auto m = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 1, true});
    return m->encode_texts({"小狗"});
  }();
  auto result_paths = [&](Searcher& s) {
    SearchOptions o;
    o.top_k = 100;
    std::set<std::string> got;
    const auto results = s.search({"小狗"}, query, o);
    for (const auto& h : results[0].hits) got.insert(h.path);
    return got;
  };
  // 1. The full disk of a reader, freed; then photos added and one removed.
  const std::string disk = dir / "disk";
  auto m = index_on_tmpfs(4u << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  photos(root, 4, 1, "jpg");
  index_ok({root});
  fill_disk(disk);
  // What such a reader does: a Searcher per generation (as the server reloads on a new one), each
  // query resolving its hits in the catalog (a removed photo is dropped at once).
  {
    auto store = IndexStore::open(idx, IndexAccess::kRead);
    Searcher searcher(*store);
    EXPECT_EQ(result_paths(searcher).size(), 4u);
    const int64_t generation = store->catalog().generation();
    fs::remove(disk + "/filler");
    photos(root, 2, 10, "jpg");
    index_ok({root});
    ASSERT_EQ(test::run_cnclip(test::concat({"remove", root + "/p1.jpg"}, idx_args())).exit_code, 0);
    fs::remove(root + "/p1.jpg");  // else the next index run finds it again
    auto after = result_paths(searcher);
    EXPECT_EQ(after.count(root + "/p1.jpg"), 0u) << "a removed photo still found";
    EXPECT_EQ(after.size(), 3u);
    store->catalog().refresh();
    EXPECT_GT(store->catalog().generation(), generation) << "the commits are not seen";
    EXPECT_EQ(store->catalog().count(), 5);
    Searcher next(*store);
    after = result_paths(next);
    EXPECT_EQ(after.size(), 5u);
    EXPECT_EQ(after.count(root + "/p10.jpg"), 1u) << "an addition not found";
  }
  // 2. A reader through a read-only view of the folder, a writer through the folder itself.
  const std::string view = dir / "view";
  fs::create_directories(view);
  auto ro = test::ScopedMount::read_only_view(idx, view);
  ASSERT_TRUE(ro.ok()) << ro.why();
  ASSERT_FALSE(fs::exists(idx + "/catalog.sqlite3-wal")) << "the last writer left its log";
  auto store = IndexStore::open(view, IndexAccess::kRead);
  Searcher searcher(*store);
  EXPECT_EQ(result_paths(searcher).size(), 5u);
  const int64_t generation = store->catalog().generation();
  EXPECT_FALSE(store->catalog().changed_under_immutable_read());
  photos(root, 3, 20, "jpg");
  index_ok({root});
  ASSERT_EQ(test::run_cnclip(test::concat({"remove", root + "/p2.jpg"}, idx_args())).exit_code, 0);
  // What it would read now may mix pages from before and after: a search reads it again.
  EXPECT_TRUE(store->catalog().changed_under_immutable_read());
  auto after = result_paths(searcher);
  EXPECT_FALSE(store->catalog().changed_under_immutable_read());
  EXPECT_EQ(after.count(root + "/p2.jpg"), 0u) << "a removed photo still found";
  EXPECT_EQ(after.size(), 4u);
  store->catalog().refresh();
  EXPECT_GT(store->catalog().generation(), generation) << "the commits are not seen";
  Searcher next(*store);
  after = result_paths(next);
  EXPECT_EQ(after.size(), 7u);
  EXPECT_EQ(after.count(root + "/p20.jpg"), 1u) << "an addition not found";
}

// Wherever the disk fills while a first run sets the catalog up (its schema, the change log, the
// first batch), the run ends with the full disk named, and the next run with space finishes it.
TEST_F(Trust, ADiskThatFillsWhileTheCatalogIsMadeIsNamed) {
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk needs a tmpfs mounted as root";
  photos(root, 3, 1, "jpg");
  const std::string disk = dir / "disk";
  fs::create_directories(disk);
  auto m = test::ScopedMount::tmpfs(disk, 2u << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  int failed = 0;
  for (uint64_t free_kib = 32; free_kib <= 1056; free_kib += 64) {
    SCOPED_TRACE(std::to_string(free_kib) + " KiB free");
    fs::remove_all(disk + "/index");
    fs::remove(disk + "/filler");
    const auto space = fs::space(disk);
    std::ofstream(disk + "/filler", std::ios::binary)
        << std::string(static_cast<size_t>(space.available - free_kib * 1024), 'f');
    idx = disk + "/index";
    auto r = index({root});
    if (r.exit_code == 0) continue;
    ++failed;
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find("the disk is full"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("no transaction"), std::string::npos) << r.err;
    fs::remove(disk + "/filler");
    index_ok({root});
    EXPECT_EQ(paths().size(), 3u);
  }
  EXPECT_GT(failed, 3) << "the disk never filled";
}

// A folder where the next vector snapshot goes (made by hand, or by a tool that unpacked the index)
// is not cnclip's to delete: the run keeps what it committed, names the folder and says what to do,
// searches answer from the catalog, and once the folder is gone the next run writes the snapshot.
TEST_F(Trust, AFolderWhereTheSnapshotGoesIsNamedAndLosesNothing) {
  photos(root, 3, 1, "jpg");
  index_ok({root});
  const std::string in_the_way = [&] {
    auto store = IndexStore::open(idx, IndexAccess::kRead);
    return store->snapshot_path(store->catalog().generation() + 1);
  }();
  fs::create_directories(in_the_way + "/keep");
  photos(root, 1, 10, "jpg");
  auto r = index({root});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(in_the_way + ": a folder of that name is where cnclip writes this file"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("move the folder elsewhere and run the command again"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 4u);
  EXPECT_TRUE(fs::exists(in_the_way + "/keep")) << "the user's folder was touched";
  const auto found = test::run_cnclip(test::concat(
      {"search-text", "小狗", "--format", "paths", "-k", "10", "--model", test::tiny_bundle()}, idx_args()));
  EXPECT_EQ(found.exit_code, 0) << found.err;
  EXPECT_EQ(test::lines(found.out).size(), 4u);
  fs::remove_all(in_the_way);
  index_ok({root});
  EXPECT_TRUE(fs::is_regular_file(in_the_way)) << "the next run wrote no snapshot";
}

// No inode left (blocks free) is a full disk too: searches work, a run that must create its log says
// the disk is full, and the next one with room finishes.
TEST_F(Trust, NoInodeLeftIsAFullDisk) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string disk = dir / "disk";
  auto m = index_on_tmpfs(8u << 20, 16);
  ASSERT_TRUE(m.ok()) << m.why();
  photos(root, 3, 1, "jpg");
  index_ok({root});
  const std::vector<std::string> search{"search-text", "小狗", "--format", "paths", "--model", test::tiny_bundle()};
  const auto before = test::run_cnclip(test::concat(search, idx_args()));
  ASSERT_EQ(before.exit_code, 0) << before.err;
  int made = 0;
  while (std::ofstream(disk + "/f" + std::to_string(made))) ++made;
  ASSERT_GT(made, 0);
  auto r = test::run_cnclip(test::concat(search, idx_args()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, before.out);
  photos(root, 1, 10, "jpg");
  r = index({root});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("the disk is full"), std::string::npos) << r.err;
  EXPECT_EQ(paths().size(), 3u);
  for (int i = 0; i < made; ++i) fs::remove(disk + "/f" + std::to_string(i));
  index_ok({root});
  EXPECT_EQ(paths().size(), 4u);
}

TEST_F(Trust, AFullDiskWithCommitsOnlyInTheWriteAheadLogSaysSo) {
  // A run killed before its last checkpoint leaves commits only in the -wal, and no -shm once the
  // machine restarted: reading those needs the -shm, which a full disk cannot hold. The catalog
  // without its log would be an older state: refused, with the way out.
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk needs a tmpfs mounted as root";
  photos(root, 3, 1, "jpg");
  index_ok({root});
  const std::string disk = dir / "disk", copy = disk + "/index";
  fs::create_directories(disk);
  auto m = test::ScopedMount::tmpfs(disk, 4u << 20);
  ASSERT_TRUE(m.ok()) << m.why();
  {
    auto store = IndexStore::open(idx, IndexAccess::kWrite);
    store->catalog().remove_under(root + "/p1.jpg");
    fs::create_directories(copy);
    for (const auto& e : fs::directory_iterator(idx))
      if (e.path().filename() != "catalog.sqlite3-shm")
        fs::copy_file(e.path(), copy + "/" + e.path().filename().string());
  }
  ASSERT_GT(test::file_size(copy + "/catalog.sqlite3-wal"), 0u);
  fill_disk(disk);
  auto r = test::run_cnclip({"info", "--format", "json", "--index", copy});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.err.find("-wal"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the disk is full"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  fs::remove(disk + "/filler");
  r = test::run_cnclip({"info", "--format", "json", "--index", copy});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["files"], 2) << "the commit in the -wal is read";
}

}  // namespace
}  // namespace cnclip

// Fault injection (issue #10, Proof): over many rounds, kill index runs at random moments, damage the
// vector snapshot at random offsets, and fill the disk under a run (a small tmpfs, when the test may
// mount one). After every round each entry committed before is still there with the same
// embedding, and no search returns a score outside [-1, 1].
//
// CNCLIP_FAULT_ROUNDS (default 14, about a minute) and CNCLIP_FAULT_SEED set the length and the
// sequence; scripts/fault_soak.sh runs a longer soak and prints the summary line the README quotes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <chrono>
#include <cstdlib>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cnclip/index_store.h"
#include "damage_util.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

std::map<std::string, std::vector<float>> entries_or_empty(const std::string& catalog) {
  if (!fs::exists(catalog)) return {};
  try {
    return test::catalog_entries(catalog);
  } catch (const Exception&) {
    return {};  // a writer created the file but had not initialised it when it was killed
  }
}

TEST(FaultInjection, KillsSnapshotDamageAndFullDisksLoseNothingCommitted) {
  const int rounds = env_int("CNCLIP_FAULT_ROUNDS", 14);
  const unsigned seed = static_cast<unsigned>(env_int("CNCLIP_FAULT_SEED", 1));
  std::mt19937 rng(seed);
  test::TempDir dir;
  const std::string photos = dir / "photos", disk = dir / "disk", idx = disk + "/idx";
  const std::string catalog = idx + "/catalog.sqlite3";
  fs::create_directories(photos);
  fs::create_directories(disk);
  // The index on a small disk of its own, so that it can be filled.
  std::unique_ptr<test::ScopedMount> tmpfs;
  if (::geteuid() == 0) tmpfs = std::make_unique<test::ScopedMount>(test::ScopedMount::tmpfs(disk, 8u << 20));
  const bool can_fill = tmpfs && tmpfs->ok();
  if (!can_fill) {
    std::cout << "fault injection: full-disk rounds skipped: "
              << (tmpfs ? tmpfs->why() : std::string("not root, cannot mount a small tmpfs")) << std::endl;
  }
  int next_photo = 0;
  auto add_photos = [&](int n) {
    for (int i = 0; i < n; ++i, ++next_photo) {
      test::make_small_photo(photos + "/p" + std::to_string(next_photo) + ".png", 5000 + next_photo);
    }
  };
  add_photos(40);
  const std::string model = test::tiny_bundle();
  auto index_args = [&](const char* batch) {
    return std::vector<std::string>{"cnclip", "index",   "-q",  "--batch-size", batch,
                                    photos,   "--model", model, "--index",      idx};
  };
  auto spawn = [&](const std::vector<std::string>& args, const std::string& err_path) {
    pid_t pid = fork();
    if (pid == 0) {
      int out = ::open("/dev/null", O_WRONLY);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(out, 1);
      dup2(err, 2);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(CNCLIP_BINARY, argv.data());
      _exit(127);
    }
    return pid;
  };

  std::map<std::string, std::vector<float>> committed;  // every entry known to be committed
  int kills = 0, damages = 0, full_disks = 0, full_disk_errors = 0, searches = 0;
  int64_t lost = 0, checked = 0;
  for (int round = 0; round < rounds; ++round) {
    add_photos(6);
    const int kind = static_cast<int>(rng() % 4);  // 0, 1: kill; 2: snapshot damage; 3: full disk
    std::string what;
    if (kind == 3 && can_fill) {
      // Leave a few KB free, then index more photos: the run must end with a clear message, keeping
      // what it committed.
      what = "full disk";
      ++full_disks;
      add_photos(30);
      const auto space = fs::space(disk);
      const uint64_t leave = 16384 + rng() % 65536;
      if (space.available > leave) {
        std::ofstream(disk + "/filler", std::ios::binary)
            << std::string(static_cast<size_t>(space.available - leave), 'f');
      }
      const pid_t pid = spawn(index_args("4"), dir / "err");
      int status = 0;
      waitpid(pid, &status, 0);
      fs::remove(disk + "/filler");
      const std::string err = test::read_text(dir / "err");
      ASSERT_TRUE(WIFEXITED(status)) << err;
      if (WEXITSTATUS(status) != 0) {
        ++full_disk_errors;
        EXPECT_EQ(WEXITSTATUS(status), 1) << err;
        const auto lines = test::lines(err);
        ASSERT_FALSE(lines.empty());
        // Says what happened and that nothing committed is lost, wherever the disk filled up (the
        // catalog, its journal, the vector snapshot).
        EXPECT_NE(lines.back().find("the disk is full"), std::string::npos) << err;
        EXPECT_NE(lines.back().find("kept"), std::string::npos) << err;
      }
    } else if (kind == 2 && fs::exists(catalog)) {
      what = "snapshot damage";
      // A complete run first, so that there is a current snapshot to damage.
      const pid_t pid = spawn(index_args("8"), dir / "err");
      int status = 0;
      waitpid(pid, &status, 0);
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_text(dir / "err");
      for (const auto& e : fs::directory_iterator(idx)) {
        const std::string name = e.path().filename().string();
        if (name.rfind("vectors-", 0) != 0) continue;
        const uint64_t size = test::file_size(e.path());
        ++damages;
        switch (rng() % 3) {
          case 0: test::damage_bytes(e.path(), rng() % size, 1 + rng() % 64, static_cast<unsigned>(rng())); break;
          case 1: fs::resize_file(e.path(), rng() % size); break;
          default: std::ofstream(e.path(), std::ios::binary | std::ios::app) << std::string(1 + rng() % 100, 'x');
        }
      }
    } else {
      what = "kill";
      const pid_t pid = spawn(index_args("2"), "/dev/null");
      std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 2500));
      const auto before_kill = entries_or_empty(catalog);  // all committed before the kill
      if (::kill(pid, SIGKILL) == 0) ++kills;
      waitpid(pid, nullptr, 0);
      for (const auto& [path, e] : before_kill) committed.emplace(path, e);
    }
    // Every committed entry is still there, with the same embedding.
    const auto now = entries_or_empty(catalog);
    for (const auto& [path, e] : committed) {
      ++checked;
      auto it = now.find(path);
      if (it == now.end() || it->second != e) {
        ++lost;
        ADD_FAILURE() << "round " << round << " (" << what << "): lost or changed " << path;
      }
    }
    for (const auto& [path, e] : now) committed[path] = e;
    if (now.empty()) continue;
    // Searches work, on every fault, with scores in [-1, 1].
    auto r =
        test::run_cnclip({"search-text", "小狗", "-k", "1000", "--format", "jsonl", "--model", model, "--index", idx});
    ++searches;
    ASSERT_EQ(r.exit_code, 0) << "round " << round << " (" << what << "): " << r.err;
    const auto hits = test::lines(r.out);
    EXPECT_EQ(hits.size(), now.size()) << "round " << round << " (" << what << ")";
    for (const auto& l : hits) {
      const double score = json::parse(l)["score"];
      ASSERT_TRUE(score >= -1.0 && score <= 1.0) << "round " << round << " (" << what << "): " << l;
    }
    EXPECT_LE(test::lines(r.err).size(), 1u) << r.err;  // at most the one line about a damaged snapshot
  }
  // A last uninterrupted run finishes the work: everything indexed, the snapshot intact.
  auto r = test::run_cnclip({"index", "-q", "--format", "json", photos, "--model", model, "--index", idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto final_entries = entries_or_empty(catalog);
  EXPECT_EQ(final_entries.size(), static_cast<size_t>(next_photo));
  for (const auto& [path, e] : committed) {
    auto it = final_entries.find(path);
    if (it == final_entries.end() || it->second != e) ++lost;
  }
  auto s = IndexStore::open(idx, IndexAccess::kRead);
  EXPECT_NE(s->open_snapshot(), nullptr);
  EXPECT_EQ(lost, 0);
  EXPECT_GT(kills, 0);
  std::cout << "fault injection: " << rounds << " rounds (seed " << seed << "): " << kills << " kills, " << damages
            << " snapshot damages, " << full_disks << " full disks (" << full_disk_errors << " runs stopped by it), "
            << searches << " searches, " << checked << " committed-entry checks; entries lost: " << lost << std::endl;
}

}  // namespace
}  // namespace cnclip

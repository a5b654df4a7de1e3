// libFuzzer target: any bytes as a model bundle's bundle.json. load_bundle_manifest must throw
// cnclip::Exception (never a JSON library exception, never crash), or return a manifest whose sizes
// are usable (positive embedding size and image size, context length >= 2).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "cnclip/bundle.h"
#include "cnclip/error.h"
#include "fuzz_util.h"

namespace {
// One directory per fuzzing process (on tmpfs when TMPDIR is not set), removed at exit.
const std::string& bundle_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/dev/shm") + "/cnclip-fuzz-bundle-XXXXXX";
    if (!::mkdtemp(templ.data())) cnclip_fuzz::fail("mkdtemp failed");
    static std::string removed = templ;
    std::atexit([] {
      ::unlink((removed + "/bundle.json").c_str());
      ::rmdir(removed.c_str());
    });
    return templ;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = bundle_dir();
  {
    std::ofstream out(dir + "/bundle.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) cnclip_fuzz::fail("cannot write bundle.json");
  }
  try {
    const cnclip::BundleManifest m = cnclip::load_bundle_manifest(dir);
    if (m.embedding_dim <= 0 || m.image.size <= 0 || m.context_length < 2) cnclip_fuzz::fail("bad sizes accepted");
    for (const auto& [name, f] : m.files) {
      try {
        cnclip::check_bundle_file(m, name);
      } catch (const cnclip::Exception&) {
      }
    }
  } catch (const cnclip::Exception& e) {
    if (std::string(e.what()).empty()) cnclip_fuzz::fail("error without a message");
  }
  return 0;
}

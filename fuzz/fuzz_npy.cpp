// libFuzzer target: any bytes as a .npy file (`import --npy`, the fixtures). read_npy must return a
// typed error, or an array whose data holds exactly count() items of its dtype; the conversions
// then must not read outside it.
#include <cstdint>

#include "cnclip/error.h"
#include "cnclip/npy.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const cnclip_fuzz::MemFile file(data, size);
  const auto r = cnclip::read_npy(file.path());
  if (!r) {
    if (r.error().message.empty()) cnclip_fuzz::fail("error without a message");
    return 0;
  }
  const cnclip::NpyArray& a = r.value();
  int64_t count = 1;
  for (int64_t d : a.shape) {
    if (d < 0) cnclip_fuzz::fail("negative dimension accepted");
    if (__builtin_mul_overflow(count, d, &count)) cnclip_fuzz::fail("a shape whose size overflows accepted");
  }
  const size_t item = a.dtype == "<f8" || a.dtype == "<i8" ? 8 : 4;
  if (a.count() != count || a.data.size() != static_cast<size_t>(count) * item) {
    cnclip_fuzz::fail("data size does not match the shape");
  }
  try {
    if (a.dtype[1] == 'f') {
      if (a.as_float().size() != static_cast<size_t>(count)) cnclip_fuzz::fail("as_float size");
    } else {
      if (a.as_int64().size() != static_cast<size_t>(count)) cnclip_fuzz::fail("as_int64 size");
    }
  } catch (const cnclip::Exception&) {
  }
  return 0;
}

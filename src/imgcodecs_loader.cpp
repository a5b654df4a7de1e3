// cv::imdecode and cv::imencode, the only functions cnclip uses from OpenCV's imgcodecs, defined here
// to load libopencv_imgcodecs the first time one is called. Debian's build of that library maps ~110
// more shared libraries (GDAL, GDCM, OpenEXR, HEIF, Poppler, ... behind its codecs): linked into the
// program, loading them was ~85% of the start-up of a command that decodes no image (measured:
// a program linking cnclip's libraries starts in 66 ms without it, 422 ms with it, on the loaded
// 2-core machine). The program does not link the library, so these definitions are the ones its
// calls reach; a program that also links it (the tests) reaches the library's own through dlsym on
// its handle, which searches the library first.
#include <dlfcn.h>

#include <mutex>
#include <opencv2/imgcodecs.hpp>
#include <string>

#include "cnclip/error.h"

#ifndef CNCLIP_IMGCODECS_SONAME
#define CNCLIP_IMGCODECS_SONAME "libopencv_imgcodecs.so"
#endif

namespace cnclip {
namespace {

using Imdecode = cv::Mat (*)(const cv::_InputArray&, int);
using Imencode = bool (*)(const cv::String&, const cv::_InputArray&, std::vector<uchar>&, const std::vector<int>&);

struct Imgcodecs {
  Imdecode imdecode = nullptr;
  Imencode imencode = nullptr;
};

// Loaded once (thread-safe); a failure is thrown to every caller, naming the library.
const Imgcodecs& imgcodecs() {
  static std::once_flag once;
  static Imgcodecs codecs;
  static std::string failure;
  std::call_once(once, [] {
    void* handle = ::dlopen(CNCLIP_IMGCODECS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      // The mangled names of the two declarations in <opencv2/imgcodecs.hpp>.
      codecs.imdecode = reinterpret_cast<Imdecode>(::dlsym(handle, "_ZN2cv8imdecodeERKNS_11_InputArrayEi"));
      codecs.imencode =
          reinterpret_cast<Imencode>(::dlsym(handle,
                                             "_ZN2cv8imencodeERKNSt7__cxx1112basic_stringIcSt11char_"
                                             "traitsIcESaIcEEERKNS_11_InputArrayERSt6vectorIhSaIhEERKSB_IiSaIiEE"));
    }
    if (!codecs.imdecode || !codecs.imencode) {
      const char* why = ::dlerror();
      failure = std::string("cannot load OpenCV's image codecs (") + CNCLIP_IMGCODECS_SONAME +
                "): " + (why ? why : "cv::imdecode or cv::imencode missing");
    }
  });
  if (!failure.empty()) throw Exception(ErrorCode::kInternal, failure);
  return codecs;
}

}  // namespace
}  // namespace cnclip

namespace cv {

Mat imdecode(InputArray buf, int flags) { return cnclip::imgcodecs().imdecode(buf, flags); }

bool imencode(const String& ext, InputArray img, std::vector<uchar>& buf, const std::vector<int>& params) {
  return cnclip::imgcodecs().imencode(ext, img, buf, params);
}

}  // namespace cv

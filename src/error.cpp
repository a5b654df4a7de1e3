#include "cnclip/error.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

namespace cnclip {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kPermissionDenied: return "permission_denied";
    case ErrorCode::kIoError: return "io_error";
    case ErrorCode::kUnsupportedFormat: return "unsupported_format";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kTruncated: return "truncated";
    case ErrorCode::kTooLarge: return "too_large";
    case ErrorCode::kMismatch: return "mismatch";
    case ErrorCode::kBusy: return "busy";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kInternal: return "internal";
  }
  return "internal";
}

Error errno_error(const std::string& path, int err, const std::string& what) {
  ErrorCode code = ErrorCode::kIoError;
  if (err == ENOENT || err == ENOTDIR) code = ErrorCode::kNotFound;
  if (err == EACCES || err == EPERM) code = ErrorCode::kPermissionDenied;
  std::string message = path + ": ";
  if (err == ENOSPC || err == EDQUOT) {
    // Said the same way wherever it happens (the catalog says it too, catalog.cpp).
    return Error{code, message + "the disk is full (" + (what.empty() ? "" : what + ": ") + std::strerror(err) + ")"};
  }
  if (err == EFBIG && !file_size_limit().empty()) {
    return Error{code, file_size_limit_message(path, (what.empty() ? "" : what + ": ") + std::strerror(err))};
  }
  if (!what.empty()) message += what + ": ";
  message += std::strerror(err);
  return Error{code, message};
}

std::string file_size_limit() {
  struct rlimit r {};
  if (::getrlimit(RLIMIT_FSIZE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return "";
  return "ulimit -f " + std::to_string(static_cast<unsigned long long>(r.rlim_cur) / 1024);
}

std::string file_size_limit_message(const std::string& path, const std::string& detail) {
  return path + ": the file size limit (" + file_size_limit() + ") stops the write (" + detail +
         "); what was committed before is kept: raise it and run the command again";
}

}  // namespace cnclip

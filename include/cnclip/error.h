// Errors as values. Every failure cnclip reports carries a code (what kind of failure, so callers can
// react: skip a bad photo, stop on a bad bundle) and a one-line message that names the file and the
// reason. Functions that can fail for reasons outside the program's control return Result<T>;
// functions whose failure ends the whole command throw cnclip::Exception, which carries the same Error.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace cnclip {

enum class ErrorCode {
  kInvalidArgument,    // the caller asked for something impossible (bad option, bad UTF-8)
  kNotFound,           // a file or directory does not exist
  kPermissionDenied,   // it exists but cannot be read or written
  kIoError,            // reading or writing failed
  kUnsupportedFormat,  // not an image format cnclip decodes
  kCorrupt,            // the data is damaged or not what its name says
  kTruncated,          // the file ends early
  kTooLarge,           // over a configured limit (e.g. the pixel limit)
  kMismatch,           // valid data that does not fit (another model, another dimension)
  kBusy,               // another process holds the index lock
  kInterrupted,        // the user asked to stop
  kInternal,           // a bug or an unexpected library failure
};

// Short stable name of a code, e.g. "truncated"; used in JSON output and messages.
const char* error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // one line, names the file where there is one
};

// Thrown where a failure ends the operation. what() is the one-line message.
class Exception : public std::runtime_error {
 public:
  explicit Exception(Error error) : std::runtime_error(error.message), error_(std::move(error)) {}
  Exception(ErrorCode code, std::string message) : Exception(Error{code, std::move(message)}) {}
  const Error& error() const { return error_; }
  ErrorCode code() const { return error_.code; }

 private:
  Error error_;
};

// Either a value or an Error. Cheap to move; value() on an error throws the Exception.
template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return std::get<1>(v_); }
  T& value() & {
    if (!ok()) throw Exception(error());
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!ok()) throw Exception(error());
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!ok()) throw Exception(error());
    return std::get<0>(std::move(v_));
  }

 private:
  std::variant<T, Error> v_;
};

// Success, or an Error: what a function that can fail returns when it has no value to give (its
// output goes to a buffer of the caller's). Tested like a Result: `if (!status) ... status.error()`.
class Status {
 public:
  Status() = default;                                // success
  Status(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *error_; }  // only on a failure
  // Throws the failure as an Exception; nothing on success.
  void check() const {
    if (error_) throw Exception(*error_);
  }

 private:
  std::optional<Error> error_;
};

// Error for a failed system call on `path`, from errno: "PATH: No such file or directory". A full disk
// (ENOSPC, EDQUOT) and this process's file size limit (EFBIG) are named as such.
Error errno_error(const std::string& path, int err, const std::string& what = "");

// "ulimit -f N" (N in KiB, as the shell counts) when this process has a file size limit, else empty.
// A write past it fails with EFBIG: the command-line tool ignores SIGXFSZ, which would end it unsaid.
std::string file_size_limit();
// The one message for a write stopped by that limit: "PATH: the file size limit (ulimit -f N) stops
// the write (DETAIL); what was committed before is kept: raise it and run the command again".
std::string file_size_limit_message(const std::string& path, const std::string& detail);

}  // namespace cnclip

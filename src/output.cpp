#include "cnclip/output.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <streambuf>

namespace cnclip {
namespace {

// Decodes one UTF-8 sequence at text[i] (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF, as nlohmann::json checks it). Returns the code point and sets `len`, or nullopt.
std::optional<char32_t> decode_utf8(std::string_view text, size_t i, size_t& len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) {
    len = 1;
    return c;
  }
  size_t n;
  char32_t cp, min;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07, min = 0x10000;
  else return std::nullopt;
  if (i + n > text.size()) return std::nullopt;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
  len = n;
  return cp;
}

bool valid_utf8(std::string_view text) {
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    if (!decode_utf8(text, i, len)) return false;
  }
  return true;
}

std::string json_string(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// "0.312000": six decimals always; JSON has no NaN, so a non-finite score (a broken model) is null.
std::string score_text(float s) {
  if (!std::isfinite(s)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6f", static_cast<double>(s));
  return buf;
}

// std::cout's buffer: writes to fd 1 and remembers the first failure (errno).
class CheckedStdoutBuf : public std::streambuf {
 public:
  CheckedStdoutBuf() { setp(buf_, buf_ + sizeof(buf_)); }
  int error() const { return error_; }

 protected:
  int_type overflow(int_type c) override {
    if (!flush_buffer()) return traits_type::eof();
    if (c != traits_type::eof()) {
      *pptr() = static_cast<char>(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n >= static_cast<std::streamsize>(sizeof(buf_))) {  // large writes go straight out
      if (!flush_buffer() || !write_all(s, static_cast<size_t>(n))) return 0;
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }
  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  bool flush_buffer() {
    const size_t n = static_cast<size_t>(pptr() - pbase());
    setp(buf_, buf_ + sizeof(buf_));
    return write_all(buf_, n);
  }
  bool write_all(const char* s, size_t n) {
    if (error_) return false;  // after a failure nothing more is written
    while (n > 0) {
      const ssize_t w = ::write(STDOUT_FILENO, s, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        error_ = w < 0 ? errno : EIO;
        return false;
      }
      s += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  char buf_[1 << 16];
  int error_ = 0;
};

CheckedStdoutBuf* g_stdout = nullptr;

void throw_stdout_error(int err) {
  if (err == EPIPE) throw StdoutClosed();
  throw Exception(ErrorCode::kIoError, std::string("standard output: write failed: ") + std::strerror(err));
}

// Flushes `out`; throws when it (or stdout behind it) failed.
void flush_checked(std::ostream& out) {
  if (&out == &std::cout) {
    flush_stdout();
    return;
  }
  out.flush();
  if (!out) throw Exception(ErrorCode::kIoError, "output: write failed");
}

}  // namespace

std::string dump_json(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string hex_encode(std::string_view bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

void set_string_field(nlohmann::ordered_json& j, const std::string& key, const std::string& value) {
  j[key] = value;
  if (!valid_utf8(value)) j[key + "_bytes"] = hex_encode(value);
}

std::string get_string_field(const nlohmann::json& j, const std::string& key) {
  const auto hex_field = j.find(key + "_bytes");
  if (hex_field != j.end()) {
    if (!hex_field->is_string()) throw Exception(ErrorCode::kCorrupt, "\"" + key + "_bytes\" is not a string");
    const auto& hex = hex_field->get_ref<const std::string&>();
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    std::string out;
    bool ok = hex.size() % 2 == 0;
    for (size_t i = 0; ok && i < hex.size(); i += 2) {
      const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
      ok = hi >= 0 && lo >= 0;
      out.push_back(static_cast<char>(hi * 16 + lo));
    }
    if (!ok) throw Exception(ErrorCode::kCorrupt, "\"" + key + "_bytes\" is not an even-length hex string");
    return out;
  }
  const auto field = j.find(key);
  if (field == j.end()) throw Exception(ErrorCode::kCorrupt, "no \"" + key + "\" field");
  if (!field->is_string()) throw Exception(ErrorCode::kCorrupt, "\"" + key + "\" is not a string");
  return field->get<std::string>();
}

std::string terminal_safe(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  char buf[16];
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    const auto cp = decode_utf8(text, i, len);
    if (!cp) {
      len = 1;
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(text[i]));
      out += buf;
      continue;
    }
    const char32_t c = *cp;
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if ((c >= 0x80 && c <= 0x9F) || c == 0x2028 || c == 0x2029 || (c >= 0x202A && c <= 0x202E) ||
               (c >= 0x2066 && c <= 0x2069) || c == 0x200E || c == 0x200F || c == 0x061C) {
      // C1 controls (0x9B is CSI on many terminals), line separators, and the bidirectional
      // controls that make a name display as something else.
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out.append(text.substr(i, len));
    }
  }
  return out;
}

// Seconds into a video, to the millisecond, without trailing zeros: "12", "2.5", "3.04".
static std::string seconds_text(double t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", t);
  std::string s = buf;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

// "1:02.5" (minutes, seconds) for the table.
static std::string clock_text(double t) {
  const auto ms = static_cast<int64_t>(std::llround(t * 1000));
  char buf[48];
  const int64_t h = ms / 3'600'000, m = ms / 60'000 % 60;
  const double sec = static_cast<double>(ms % 60'000) / 1000.0;
  if (h > 0)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%04.1f", static_cast<long long>(h), static_cast<long long>(m), sec);
  else std::snprintf(buf, sizeof buf, "%lld:%04.1f", static_cast<long long>(m), sec);
  return buf;
}

std::string hit_json(const std::string& query, const RankedHit& hit) {
  // Written by hand rather than through nlohmann::json, which prints 1.0 as "1.0" and 0.5 as "0.5":
  // the README promises six decimals.
  std::string s = "{\"query\":" + json_string(query);
  if (!valid_utf8(query)) s += ",\"query_bytes\":\"" + hex_encode(query) + "\"";
  s += ",\"rank\":" + std::to_string(hit.rank) + ",\"path\":" + json_string(hit.path);
  if (!valid_utf8(hit.path)) s += ",\"path_bytes\":\"" + hex_encode(hit.path) + "\"";
  s += ",\"score\":" + score_text(hit.score);
  // A video: the matching moment (seconds), and the range of the adjacent matching frames merged
  // into it; its capture time is then "taken".
  if (hit.time) {
    s += ",\"time\":" + seconds_text(*hit.time) + ",\"start\":" + seconds_text(hit.start.value_or(*hit.time)) +
         ",\"end\":" + seconds_text(hit.end.value_or(*hit.time));
  }
  // Capture time and size (search results; absent for hits made elsewhere, and size when unknown).
  if (hit.taken_at) {
    s += std::string(hit.time ? ",\"taken\":\"" : ",\"time\":\"") +
         format_time(*hit.taken_at, hit.meta.source == TimeSource::kExif ? hit.meta.offset_minutes : std::nullopt) +
         "\"";
  }
  if (hit.meta.width > 0 && hit.meta.height > 0) {
    s += ",\"width\":" + std::to_string(hit.meta.width) + ",\"height\":" + std::to_string(hit.meta.height);
  }
  s += "}";
  return s;
}

OutputFormat parse_output_format(const std::string& name, bool stdout_is_terminal) {
  if (name.empty() || name == "auto") return stdout_is_terminal ? OutputFormat::kTable : OutputFormat::kJsonl;
  if (name == "table") return OutputFormat::kTable;
  if (name == "json") return OutputFormat::kJson;
  if (name == "jsonl") return OutputFormat::kJsonl;
  if (name == "paths") return OutputFormat::kPaths;
  throw Exception(ErrorCode::kInvalidArgument, "unknown format '" + name + "' (table, json, jsonl, paths)");
}

ResultPrinter::ResultPrinter(std::ostream& out, OutputFormat format, PrintOptions options)
    : out_(out), format_(format), options_(options) {}

void ResultPrinter::print(const QueryResult& r) {
  const char end = options_.null_separated ? '\0' : '\n';
  switch (format_) {
    case OutputFormat::kJson:
      for (const auto& h : r.hits) out_ << (hits_++ ? "," : "[") << hit_json(r.query, h);
      break;
    case OutputFormat::kJsonl:
      for (const auto& h : r.hits) out_ << hit_json(r.query, h) << '\n';
      break;
    case OutputFormat::kPaths:
      if (blocks_) out_ << end;  // an empty line (record) between one query's paths and the next's
      for (const auto& h : r.hits) {
        out_ << (options_.terminal ? terminal_safe(h.path) : h.path);
        if (h.time) out_ << "#t=" << seconds_text(*h.time);  // a media fragment, as browsers and players take it
        out_ << end;
      }
      break;
    case OutputFormat::kTable:
      if (blocks_) out_ << '\n';
      out_ << "query: " << terminal_safe(r.query) << '\n';
      if (r.hits.empty()) out_ << "  (no results)\n";
      for (const auto& h : r.hits) {
        char head[64];
        // %9.6f: "-0.041000" and " 0.312000" take the same width, so the paths line up.
        std::snprintf(head, sizeof(head), "%4d  %9.6f  ", h.rank, static_cast<double>(h.score));
        out_ << head << terminal_safe(h.path);
        if (h.time) {
          out_ << "  @ " << clock_text(*h.time);
          if (h.start && h.end && *h.end > *h.start)
            out_ << " (" << clock_text(*h.start) << "-" << clock_text(*h.end) << ")";
        }
        out_ << '\n';
      }
      break;
  }
  ++blocks_;
  flush_checked(out_);
}

void ResultPrinter::skip(const std::string&) {
  if (format_ != OutputFormat::kPaths) return;
  if (blocks_) out_ << (options_.null_separated ? '\0' : '\n');
  ++blocks_;
  flush_checked(out_);
}

void ResultPrinter::finish() {
  if (finished_) return;
  finished_ = true;
  if (format_ == OutputFormat::kJson) out_ << (hits_ ? "]\n" : "[]\n");
  flush_checked(out_);
}

void print_results(std::ostream& out, const std::vector<QueryResult>& results, OutputFormat format,
                   PrintOptions options) {
  ResultPrinter printer(out, format, options);
  for (const auto& r : results) printer.print(r);
  printer.finish();
}

void install_checked_stdout() {
  if (g_stdout) return;
  std::cout.flush();
  g_stdout = new CheckedStdoutBuf;  // never destroyed: std::cout may be flushed during exit
  std::cout.rdbuf(g_stdout);
}

void flush_stdout() {
  std::cout.flush();
  check_stdout();
  if (!g_stdout && !std::cout) throw Exception(ErrorCode::kIoError, "standard output: write failed");
}

void check_stdout() {
  if (g_stdout && g_stdout->error()) throw_stdout_error(g_stdout->error());
}

}  // namespace cnclip

// Checked reads of numbers from JSON that comes from outside the process: bundle manifests, shard
// manifests and JSONL on disk, route requests over loopback HTTP.
//
// nlohmann's get<int>() and get<float>() static_cast whatever number is there. For 8.9e71 into an
// int, or 1e300 into a float, that is undefined behaviour (the bundle fuzzer found the first in
// `format_version`), and 3.7 silently becomes 3. These accept only a value the target type holds
// (integers exactly, floats finite and in range) and otherwise throw nlohmann::json::type_error or
// out_of_range naming the field, so each caller's existing handler for malformed JSON reports it.
// Header-only so that it works for both nlohmann::json and nlohmann::ordered_json.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace cnclip::detail {

// v as Int, when v is a JSON number equal to an Int (2, 2.0; not 2.5, 1e72, true or "2").
template <class Int, class Json>
Int json_integer(const Json& v, const std::string& what) {
  static_assert(std::is_integral_v<Int> && !std::is_same_v<Int, bool>);
  using Limits = std::numeric_limits<Int>;
  auto out_of_range = [&] {
    return nlohmann::json::out_of_range::create(406,
                                                what + ": " + v.dump() + " is not an integer from " +
                                                    std::to_string(Limits::min()) + " to " +
                                                    std::to_string(Limits::max()),
                                                nullptr);
  };
  if (v.is_number_unsigned()) {
    const auto u = v.template get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(Limits::max())) throw out_of_range();
    return static_cast<Int>(u);
  }
  if (v.is_number_integer()) {
    const auto i = v.template get<std::int64_t>();
    if constexpr (std::is_signed_v<Int>) {
      if (i < static_cast<std::int64_t>(Limits::min()) || i > static_cast<std::int64_t>(Limits::max())) {
        throw out_of_range();
      }
    } else {
      if (i < 0 || static_cast<std::uint64_t>(i) > static_cast<std::uint64_t>(Limits::max())) throw out_of_range();
    }
    return static_cast<Int>(i);
  }
  if (v.is_number_float()) {
    const double d = v.template get<double>();
    // Limits::min() is 0 or minus a power of two, and 2^digits is one past max(): both exact doubles.
    if (!(d >= static_cast<double>(Limits::min()) && d < std::ldexp(1.0, Limits::digits)) || std::trunc(d) != d) {
      throw out_of_range();
    }
    return static_cast<Int>(d);
  }
  throw nlohmann::json::type_error::create(302, what + ": must be a number, but is " + std::string(v.type_name()),
                                           nullptr);
}

// v as double, when v is a JSON number (not a boolean, which nlohmann's get<double>() accepts).
template <class Json>
double json_double(const Json& v, const std::string& what) {
  if (!v.is_number()) {
    throw nlohmann::json::type_error::create(302, what + ": must be a number, but is " + std::string(v.type_name()),
                                             nullptr);
  }
  return v.template get<double>();
}

// v as float, when v is a JSON number a float can hold (|v| <= FLT_MAX; smaller values round).
template <class Json>
float json_float(const Json& v, const std::string& what) {
  const double d = json_double(v, what);
  if (!(std::fabs(d) <= static_cast<double>(FLT_MAX))) {
    throw nlohmann::json::out_of_range::create(406, what + ": " + v.dump() + " is out of range for a float", nullptr);
  }
  return static_cast<float>(d);
}

// obj[key] read with json_integer, or fallback when obj has no such key.
template <class Int, class Json>
Int json_integer_or(const Json& obj, const char* key, Int fallback) {
  auto it = obj.find(key);
  return it == obj.end() ? fallback : json_integer<Int>(*it, key);
}

// A JSON array of numbers as floats (each read with json_float).
template <class Json>
std::vector<float> json_floats(const Json& array, const std::string& what) {
  if (!array.is_array()) {
    throw nlohmann::json::type_error::create(302, what + ": must be an array, but is " + std::string(array.type_name()),
                                             nullptr);
  }
  std::vector<float> out;
  out.reserve(array.size());
  for (const auto& v : array) out.push_back(json_float(v, what));
  return out;
}

}  // namespace cnclip::detail

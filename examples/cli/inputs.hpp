// Reading the CLI's .npy inputs as float32, whatever floating-point type
// PyTorch or NumPy users saved them in.
//
// float32 is read as is; float16 is widened exactly (every half is a
// float); float64 is rounded to the nearest float32 (ties to even), and a
// finite value beyond float32's range is refused rather than turned into an
// infinity. Files that are not .npy but what torch.save or pickle writes get
// a hint on how to save a .npy instead.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "arguments.hpp"
#include "kvcrush/io/npy.hpp"

namespace kvcrush_cli {

struct float_array {
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

namespace detail {

// How to turn a PyTorch tensor into what the CLI reads; .float() because
// NumPy has no bfloat16.
inline std::string save_hint(const std::string& path) {
  const auto dot = path.find_last_of('.');
  const auto slash = path.find_last_of('/');
  const bool has_extension = dot != std::string::npos && (slash == std::string::npos || dot > slash);
  const std::string npy = (has_extension ? path.substr(0, dot) : path) + ".npy";
  return "save the tensor with numpy.save('" + npy + "', t.float().numpy()) and pass that file";
}

// kvcrush::io reads no float64. A '<f8' array has the item size of '<u8',
// which it does read, so the header's descr is rewritten to '<u8' and the
// library still checks everything else (shape, order, sizes); the bytes are
// reinterpreted as doubles afterwards. Returns whether it was float64.
inline bool retag_float64(std::vector<unsigned char>& content) {
  if (content.size() < 12 || std::memcmp(content.data(), "\x93NUMPY", 6) != 0) return false;
  // Only the header dictionary is searched: its length is 2 bytes in
  // version 1, 4 in later ones (little-endian).
  const bool v1 = content[6] == 1;
  const std::size_t start = v1 ? 10 : 12;
  std::size_t length = 0;
  for (std::size_t i = 0; i < (v1 ? 2u : 4u); ++i) length |= static_cast<std::size_t>(content[8 + i]) << (8 * i);
  if (content.size() - start < length) return false;  // the library reports the truncation
  const std::string_view header(reinterpret_cast<const char*>(content.data()) + start, length);
  const auto key = header.find("descr");
  if (key == std::string_view::npos) return false;
  // Skip the key's closing quote, then find the value's opening quote.
  const auto open = header.find_first_of("'\"", key + 6);
  if (open == std::string_view::npos || open + 4 >= header.size()) return false;
  if (header.substr(open + 1, 3) != "<f8" || header[open + 4] != header[open]) return false;
  content[start + open + 2] = 'u';
  return true;
}

}  // namespace detail

// Reads a floating-point .npy of the given rank as float32 values. `what`
// names the option in errors (e.g. "--scores").
inline float_array read_float_array(const std::string& path, std::size_t rank, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw cli_error(what + ": cannot open " + path + " for reading");
  std::vector<unsigned char> content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw cli_error(what + ": read error on " + path);
  // torch.save writes a zip archive (PyTorch >= 1.6) or a pickle stream
  // (older, or _use_new_zipfile_serialization=False); numpy.savez a zip too.
  if (content.size() >= 4 && std::memcmp(content.data(), "PK\x03\x04", 4) == 0) {
    throw cli_error(what + ": " + path + " is a zip archive (torch.save or numpy.savez), not a .npy file; " +
                    detail::save_hint(path));
  }
  if (content.size() >= 2 && content[0] == 0x80 && content[1] >= 2 && content[1] <= 5) {
    throw cli_error(what + ": " + path + " is a Python pickle (torch.save's legacy format), not a .npy file; " +
                    detail::save_hint(path));
  }
  const bool float64 = detail::retag_float64(content);
  const kvcrush::io::npy_array array = kvcrush::io::parse_npy(content.data(), content.size(), path);

  float_array out;
  out.shape = array.shape;
  if (array.shape.size() != rank) {
    throw cli_error(what + " must have " + std::to_string(rank) + " dimensions, " + path + " has " +
                    std::to_string(array.shape.size()));
  }
  if (array.dtype == kvcrush::io::npy_dtype::float32) {
    out.values = array.values<float>();
  } else if (array.dtype == kvcrush::io::npy_dtype::float16) {
    const auto halves = array.values<kvcrush::float16>();
    out.values.resize(halves.size());
    for (std::size_t i = 0; i < halves.size(); ++i) out.values[i] = kvcrush::to_float(halves[i]);
  } else if (array.dtype == kvcrush::io::npy_dtype::uint64 && float64) {
    out.values.resize(array.size());
    for (std::size_t i = 0; i < out.values.size(); ++i) {
      double value = 0;
      std::memcpy(&value, array.bytes.data() + i * sizeof(double), sizeof(double));
      if (std::isfinite(value) && std::fabs(value) > static_cast<double>(FLT_MAX)) {
        std::ostringstream text;
        text << what << ": " << path << " holds " << value << " at index " << i << ", beyond float32's range";
        throw cli_error(text.str());
      }
      out.values[i] = static_cast<float>(value);
    }
  } else {
    throw cli_error(what + " must hold floating-point values (float32, float16 or float64), " + path + " holds " +
                    kvcrush::io::to_string(array.dtype));
  }
  for (std::size_t i = 0; i < out.values.size(); ++i) {
    if (std::isnan(out.values[i])) throw cli_error(what + ": " + path + " holds NaN at index " + std::to_string(i));
  }
  return out;
}

}  // namespace kvcrush_cli

// NumPy .npy files: the interchange format for score matrices, attention
// dumps and keep sets (see the CLI). Versions 1.0 and 2.0, C order,
// little-endian float32, float16, int32, int64 and uint64.
//
// Anything else (Fortran order, big-endian, other dtypes, truncated or
// corrupted headers, data whose size does not match the shape) is rejected
// with a kvcrush::io::npy_error that says what was wrong and where.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <utility>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"

namespace kvcrush::io {

class npy_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class npy_dtype { float32, float16, int32, int64, uint64 };

inline std::size_t item_size(npy_dtype dtype) noexcept {
  switch (dtype) {
    case npy_dtype::float16: return 2;
    case npy_dtype::float32:
    case npy_dtype::int32: return 4;
    case npy_dtype::int64:
    case npy_dtype::uint64: return 8;
  }
  return 0;
}

inline const char* descr_of(npy_dtype dtype) noexcept {
  switch (dtype) {
    case npy_dtype::float32: return "<f4";
    case npy_dtype::float16: return "<f2";
    case npy_dtype::int32: return "<i4";
    case npy_dtype::int64: return "<i8";
    case npy_dtype::uint64: return "<u8";
  }
  return "";
}

inline const char* to_string(npy_dtype dtype) noexcept {
  switch (dtype) {
    case npy_dtype::float32: return "float32";
    case npy_dtype::float16: return "float16";
    case npy_dtype::int32: return "int32";
    case npy_dtype::int64: return "int64";
    case npy_dtype::uint64: return "uint64";
  }
  return "?";
}

template <class T>
constexpr npy_dtype dtype_of() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return npy_dtype::float32;
  else if constexpr (std::is_same_v<U, float16>) return npy_dtype::float16;
  else if constexpr (std::is_same_v<U, std::int32_t>) return npy_dtype::int32;
  else if constexpr (std::is_same_v<U, std::int64_t>) return npy_dtype::int64;
  else {
    static_assert(std::is_same_v<U, std::uint64_t>, "unsupported .npy element type");
    return npy_dtype::uint64;
  }
}

// An array read from a .npy file: dtype, shape (empty for a 0-d array) and
// the raw little-endian bytes.
struct npy_array {
  npy_dtype dtype = npy_dtype::float32;
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> bytes;

  std::size_t size() const noexcept {
    std::size_t n = 1;
    for (auto e : shape) n *= static_cast<std::size_t>(e);
    return n;
  }

  // Typed copy of the elements; T must match the dtype.
  template <class T>
  std::vector<T> values() const {
    if (dtype_of<T>() != dtype) {
      throw npy_error(kvcrush::detail::concat("kvcrush: .npy array holds ", to_string(dtype),
                                     ", not ", to_string(dtype_of<T>())));
    }
    std::vector<T> out(size());
    if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
};

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

[[noreturn]] inline void npy_fail(std::string_view source, std::string_view what) {
  throw npy_error(kvcrush::detail::concat("kvcrush: ", source, ": ", what));
}

// A cursor over the header dictionary, a Python literal such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class header_parser {
 public:
  header_parser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
  }

  bool consume(char c) {
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void expect(char c) {
    if (!consume(c)) fail(kvcrush::detail::concat("expected '", c, "'"));
  }

  std::string quoted() {
    skip_space();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) fail("expected a string");
    const char quote = text_[pos_++];
    const std::size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return out;
  }

  bool boolean() {
    skip_space();
    for (auto [word, value] : {std::pair<std::string_view, bool>{"True", true}, {"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    fail("expected True or False");
  }

  std::vector<std::int64_t> tuple() {
    expect('(');
    std::vector<std::int64_t> out;
    while (!consume(')')) {
      skip_space();
      std::int64_t value = 0;
      std::size_t digits = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        if (value > (std::numeric_limits<std::int64_t>::max() - 9) / 10) fail("shape dimension too large");
        value = value * 10 + (text_[pos_++] - '0');
        ++digits;
      }
      if (digits == 0) fail("expected a non-negative integer in shape");
      // NumPy writes "3L" in some Python 2 era files.
      if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;
      out.push_back(value);
      if (!consume(',')) {
        expect(')');
        break;
      }
    }
    return out;
  }

  bool at_end() {
    skip_space();
    while (pos_ < text_.size() && (text_[pos_] == '\n' || text_[pos_] == ' ')) ++pos_;
    return pos_ == text_.size();
  }

  [[noreturn]] void fail(std::string_view what) const {
    npy_fail(source_, kvcrush::detail::concat("corrupted .npy header (", what, " at column ", pos_,
                                             "): ", text_));
  }

 private:
  std::string_view text_;
  std::string_view source_;
  std::size_t pos_ = 0;
};

inline npy_dtype parse_descr(const std::string& descr, std::string_view source) {
  if (descr.size() >= 2 && descr[0] == '>' && descr != ">u1" && descr != ">i1") {
    npy_fail(source, "big-endian data ('" + descr + "') is not supported; save with '<' byte order");
  }
  static const std::pair<const char*, npy_dtype> known[] = {
      {"<f4", npy_dtype::float32}, {"<f2", npy_dtype::float16}, {"<i4", npy_dtype::int32},
      {"<i8", npy_dtype::int64},   {"<u8", npy_dtype::uint64},
  };
  for (const auto& [name, dtype] : known) {
    if (descr == name) return dtype;
  }
  npy_fail(source, "unsupported dtype '" + descr +
                       "' (supported: <f4 float32, <f2 float16, <i4 int32, <i8 int64, <u8 uint64)");
}

inline std::uint32_t read_le(const unsigned char* p, std::size_t n) noexcept {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace impl

// Parses a whole .npy file held in memory. source names it in errors.
inline npy_array parse_npy(const unsigned char* data, std::size_t size,
                           std::string_view source = "<memory>") {
  using impl::npy_fail;
  static constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10) npy_fail(source, "truncated: too short for a .npy header");
  if (std::memcmp(data, magic, 6) != 0) npy_fail(source, "not a .npy file (bad magic string)");
  const unsigned major = data[6];
  const unsigned minor = data[7];
  if ((major != 1 && major != 2) || minor != 0) {
    npy_fail(source, kvcrush::detail::concat("unsupported .npy version ", major, ".", minor,
                                             " (supported: 1.0, 2.0)"));
  }
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (size < 8 + length_bytes) npy_fail(source, "truncated: header length missing");
  const std::size_t header_len = impl::read_le(data + 8, length_bytes);
  const std::size_t data_offset = 8 + length_bytes + header_len;
  if (data_offset > size) npy_fail(source, "truncated: header runs past the end of the file");
  const std::string_view header(reinterpret_cast<const char*>(data + 8 + length_bytes), header_len);

  impl::header_parser parser(header, source);
  std::string descr;
  bool fortran = false;
  std::vector<std::int64_t> shape;
  bool seen_descr = false, seen_fortran = false, seen_shape = false;
  parser.expect('{');
  while (!parser.consume('}')) {
    const std::string key = parser.quoted();
    parser.expect(':');
    if (key == "descr") {
      descr = parser.quoted();
      seen_descr = true;
    } else if (key == "fortran_order") {
      fortran = parser.boolean();
      seen_fortran = true;
    } else if (key == "shape") {
      shape = parser.tuple();
      seen_shape = true;
    } else {
      parser.fail("unknown key '" + key + "'");
    }
    if (!parser.consume(',')) {
      parser.expect('}');
      break;
    }
  }
  if (!parser.at_end()) parser.fail("trailing characters after the dictionary");
  if (!seen_descr || !seen_fortran || !seen_shape) {
    parser.fail("missing one of 'descr', 'fortran_order', 'shape'");
  }
  npy_array out;
  out.dtype = impl::parse_descr(descr, source);
  if (fortran) {
    npy_fail(source, "Fortran-order arrays are not supported; save a C-contiguous array "
                     "(numpy.ascontiguousarray)");
  }
  out.shape = std::move(shape);
  std::size_t count = 1;
  for (auto e : out.shape) {
    if (e != 0 && count > std::numeric_limits<std::size_t>::max() / static_cast<std::size_t>(e)) npy_fail(source, "shape too large");
    count *= static_cast<std::size_t>(e);
  }
  const std::size_t item = item_size(out.dtype);
  if (count > std::numeric_limits<std::size_t>::max() / item) npy_fail(source, "shape too large");
  const std::size_t expected = count * item;
  const std::size_t available = size - data_offset;
  if (available < expected) {
    npy_fail(source, kvcrush::detail::concat("truncated: shape needs ", expected,
                                             " bytes of data, file has ", available));
  }
  if (available > expected) {
    npy_fail(source, kvcrush::detail::concat("size mismatch: shape needs ", expected,
                                             " bytes of data, file has ", available));
  }
  out.bytes.assign(data + data_offset, data + size);
  return out;
}

inline npy_array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) impl::npy_fail(path, "cannot open file for reading");
  std::vector<unsigned char> content((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
  if (in.bad()) impl::npy_fail(path, "read error");
  return parse_npy(content.data(), content.size(), path);
}

// Serialises an array; version 1.0 unless the header needs 2.0. The data
// starts on a 64-byte boundary as NumPy writes it.
inline std::vector<unsigned char> serialize_npy(npy_dtype dtype,
                                                const std::vector<std::int64_t>& shape,
                                                const void* data) {
  std::string dict = std::string("{'descr': '") + descr_of(dtype) +
                     "', 'fortran_order': False, 'shape': (";
  std::size_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    kvcrush::detail::require(shape[i] >= 0, "write_npy: negative dimension ", shape[i]);
    dict += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dict += ",";
    if (i + 1 < shape.size()) dict += " ";
    count *= static_cast<std::size_t>(shape[i]);
  }
  dict += "), }";
  const bool v1 = dict.size() + 1 + 10 <= 65535;
  const std::size_t prefix = v1 ? 10 : 12;
  std::size_t total = prefix + dict.size() + 1;
  const std::size_t padding = (64 - total % 64) % 64;
  dict.append(padding, ' ');
  dict += '\n';
  const std::size_t header_len = dict.size();

  std::vector<unsigned char> out;
  const std::size_t data_bytes = count * item_size(dtype);
  out.reserve(prefix + header_len + data_bytes);
  static constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  out.insert(out.end(), magic, magic + 6);
  out.push_back(v1 ? 1 : 2);
  out.push_back(0);
  for (std::size_t i = 0; i < prefix - 8; ++i) {
    out.push_back(static_cast<unsigned char>((header_len >> (8 * i)) & 0xff));
  }
  out.insert(out.end(), dict.begin(), dict.end());
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (data_bytes > 0) out.insert(out.end(), bytes, bytes + data_bytes);
  return out;
}

inline void write_npy(const std::string& path, npy_dtype dtype,
                      const std::vector<std::int64_t>& shape, const void* data) {
  const auto content = serialize_npy(dtype, shape, data);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) impl::npy_fail(path, "cannot open file for writing");
  out.write(reinterpret_cast<const char*>(content.data()),
            static_cast<std::streamsize>(content.size()));
  out.flush();
  if (!out) impl::npy_fail(path, "write error");
}

template <class T>
void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const T* data) {
  write_npy(path, dtype_of<T>(), shape, data);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush::io

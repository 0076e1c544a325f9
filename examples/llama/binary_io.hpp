// Reading llama2.c's binary files: little-endian scalars from a byte buffer,
// float arrays from a stream, and errors that name the file and the problem.
//
// Both file formats are little-endian by definition, so values are decoded
// byte by byte (scalars) or byte-swapped after a bulk read (arrays) on a
// big-endian host, never reinterpreted blindly.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace kvcrush_llama {

// "<kind> '<path>': <problem>", e.g. "checkpoint 'm.bin': file truncated ...".
template <class... Parts>
[[noreturn]] void throw_file_error(const char* kind, const std::string& path, const Parts&... problem) {
  std::ostringstream out;
  out << kind << " '" << path << "': ";
  (out << ... << problem);
  throw std::runtime_error(out.str());
}

inline std::uint32_t load_u32_le(const unsigned char* bytes) noexcept {
  return static_cast<std::uint32_t>(bytes[0]) | (static_cast<std::uint32_t>(bytes[1]) << 8) |
         (static_cast<std::uint32_t>(bytes[2]) << 16) | (static_cast<std::uint32_t>(bytes[3]) << 24);
}

inline std::int32_t load_i32_le(const unsigned char* bytes) noexcept {
  const std::uint32_t bits = load_u32_le(bytes);
  std::int32_t value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline float load_f32_le(const unsigned char* bytes) noexcept {
  static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "float must be IEEE binary32");
  const std::uint32_t bits = load_u32_le(bytes);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline bool host_is_little_endian() noexcept {
  const std::uint32_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// The size of the file in bytes; throws (naming the file) when it cannot be
// opened. Leaves the stream positioned at the start.
inline std::uint64_t open_binary(std::ifstream& file, const char* kind, const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) throw_file_error(kind, path, "is a directory, not a file");
  file.open(path, std::ios::binary);
  if (!file) throw_file_error(kind, path, "cannot open the file");
  file.seekg(0, std::ios::end);
  const std::streamoff size = file.tellg();
  file.seekg(0, std::ios::beg);
  if (size < 0 || !file) throw_file_error(kind, path, "cannot determine the file size");
  return static_cast<std::uint64_t>(size);
}

// Reads count little-endian float32 values into out. The caller has already
// checked the file size, so a short read means an I/O error.
inline void read_f32_array(std::ifstream& file, float* out, std::uint64_t count, const char* kind,
                           const std::string& path, const char* what) {
  // Read in slices so that a single request never exceeds std::streamsize.
  constexpr std::uint64_t slice = std::uint64_t{1} << 28;
  for (std::uint64_t done = 0; done < count;) {
    const std::uint64_t n = std::min(slice, count - done);
    file.read(reinterpret_cast<char*>(out + done), static_cast<std::streamsize>(n * sizeof(float)));
    if (!file) throw_file_error(kind, path, "read error in ", what);
    done += n;
  }
  if (!host_is_little_endian()) {
    for (std::uint64_t i = 0; i < count; ++i) {
      unsigned char bytes[4];
      std::memcpy(bytes, out + i, 4);
      out[i] = load_f32_le(bytes);
    }
  }
}

// Sequential reader over an in-memory file; the caller checks remaining()
// before each read so that it can report what was being read.
class byte_cursor {
 public:
  byte_cursor(const unsigned char* data, std::size_t size) noexcept : data_(data), size_(size) {}

  std::size_t offset() const noexcept { return offset_; }
  std::size_t remaining() const noexcept { return size_ - offset_; }

  std::int32_t take_i32() noexcept {
    const std::int32_t v = load_i32_le(data_ + offset_);
    offset_ += 4;
    return v;
  }
  float take_f32() noexcept {
    const float v = load_f32_le(data_ + offset_);
    offset_ += 4;
    return v;
  }
  std::string take_bytes(std::size_t n) {
    std::string s(reinterpret_cast<const char*>(data_ + offset_), n);
    offset_ += n;
    return s;
  }

 private:
  const unsigned char* data_;
  std::size_t size_;
  std::size_t offset_ = 0;
};

}  // namespace kvcrush_llama

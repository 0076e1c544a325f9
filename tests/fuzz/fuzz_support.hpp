// Shared by the fuzz targets: a reader that turns the input bytes into
// choices (libFuzzer's FuzzedDataProvider is clang-only, and the targets
// also build with g++ for corpus replay), a check that aborts with a message
// (libFuzzer and the replay both report an abort as a failure), and a file
// holding the input for loaders that only take a path.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace kvcrush_fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", file, line, what);
  std::abort();
}

#define KVCRUSH_FUZZ_CHECK(condition) \
  ((condition) ? (void)0 : ::kvcrush_fuzz::fail(__FILE__, __LINE__, #condition))

// Consumes the input front to back. Once it is exhausted every read returns
// zero bytes, so any prefix of an input is itself a valid input.
class reader {
 public:
  reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::size_t remaining() const noexcept { return size_ - pos_; }

  std::uint8_t byte() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }

  std::uint64_t bits(int count) noexcept {
    std::uint64_t v = 0;
    for (int i = 0; i < count; i += 8) v |= static_cast<std::uint64_t>(byte()) << i;
    return count >= 64 ? v : v & ((std::uint64_t{1} << count) - 1);
  }

  // A value in [lo, hi]; the range must be small enough for 32 bits.
  std::int64_t in_range(std::int64_t lo, std::int64_t hi) noexcept {
    const auto span = static_cast<std::uint64_t>(hi - lo) + 1;
    const std::uint64_t v = span <= 256 ? byte() : span <= 65536 ? bits(16) : bits(32);
    return lo + static_cast<std::int64_t>(v % span);
  }

  bool flag() noexcept { return byte() & 1; }

  std::uint32_t u32() noexcept { return static_cast<std::uint32_t>(bits(32)); }

  float f32() noexcept {
    const std::uint32_t b = u32();
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
  }

  // Up to max_length bytes as text (the length is read first).
  std::string text(std::size_t max_length) {
    const std::size_t n = static_cast<std::size_t>(in_range(0, static_cast<std::int64_t>(max_length)));
    return bytes(n);
  }

  std::string bytes(std::size_t n) {
    const std::size_t take = n < remaining() ? n : remaining();
    std::string out(reinterpret_cast<const char*>(data_ + pos_), take);
    pos_ += take;
    return out;
  }

  // Everything not consumed yet.
  std::string_view rest() noexcept {
    std::string_view out(reinterpret_cast<const char*>(data_ + pos_), size_ - pos_);
    pos_ = size_;
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// A file in memory (memfd) whose content is replaced on every call: the
// loaders under test take a path, and writing a real file per execution
// would cost the fuzzer a disk write each time.
class memory_file {
 public:
  memory_file() : fd_(memfd_create("kvcrush-fuzz", 0)) {
    if (fd_ < 0) fail(__FILE__, __LINE__, "memfd_create");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  memory_file(const memory_file&) = delete;
  memory_file& operator=(const memory_file&) = delete;
  ~memory_file() { close(fd_); }

  const std::string& write(const void* data, std::size_t size) {
    if (ftruncate(fd_, 0) != 0) fail(__FILE__, __LINE__, "ftruncate");
    const auto* p = static_cast<const char*>(data);
    for (std::size_t done = 0; done < size;) {
      const ssize_t n = pwrite(fd_, p + done, size - done, static_cast<off_t>(done));
      if (n <= 0) fail(__FILE__, __LINE__, "pwrite");
      done += static_cast<std::size_t>(n);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

}  // namespace kvcrush_fuzz

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "kvcrush/io/npy.hpp"
#include "test_support.hpp"

using kvcrush::io::npy_array;
using kvcrush::io::npy_dtype;
using kvcrush::io::npy_error;

namespace {

std::vector<unsigned char> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

template <std::size_t N>
std::vector<unsigned char> literal_bytes(const char (&s)[N]) {
  return {s, s + N - 1};  // keeps embedded NULs, drops the terminator
}

// A v1.0 file with the given header dictionary (padded as NumPy does) and raw data.
std::vector<unsigned char> make_file(const std::string& dict, const std::vector<unsigned char>& data,
                                     unsigned major = 1) {
  std::string header = dict;
  const std::size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  out += header;
  auto v = bytes_of(out);
  v.insert(v.end(), data.begin(), data.end());
  return v;
}

npy_array parse(const std::vector<unsigned char>& file) {
  return kvcrush::io::parse_npy(file.data(), file.size(), "test.npy");
}

std::string error_of(const std::vector<unsigned char>& file) {
  try {
    parse(file);
  } catch (const npy_error& e) {
    return e.what();
  }
  return "no error";
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("kvcrush_test_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST(Npy, WritesExactlyWhatNumPyWrites) {
  // np.save(f, np.zeros((2, 3), np.float32)) starts with these 64 bytes.
  const std::vector<float> zeros(6, 0.0f);
  const auto file = kvcrush::io::serialize_npy(npy_dtype::float32, {2, 3}, zeros.data());
  std::string expected_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  // NumPy pads the header with spaces so that the data starts at a multiple of 64.
  expected_header.append(128 - 10 - expected_header.size() - 1, ' ');
  expected_header += '\n';
  ASSERT_EQ(file.size(), 128u + 24u);
  EXPECT_EQ(std::string(file.begin() + 10, file.begin() + 128), expected_header);
  EXPECT_EQ(file[8] | (file[9] << 8), 118) << "header length, little-endian";
  EXPECT_EQ(file[6], 1);
  EXPECT_EQ(file[7], 0);
  const auto one_d = kvcrush::io::serialize_npy(npy_dtype::int64, {5}, std::vector<std::int64_t>(5).data());
  EXPECT_NE(std::string(one_d.begin(), one_d.end()).find("'shape': (5,), }"), std::string::npos);
  const auto scalar = kvcrush::io::serialize_npy(npy_dtype::float32, {}, zeros.data());
  EXPECT_NE(std::string(scalar.begin(), scalar.end()).find("'shape': (), }"), std::string::npos);
}

TEST(Npy, RoundTripEveryDtypeThroughAFile) {
  const auto path = temp_path("roundtrip.npy");
  {
    std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    kvcrush::io::write_npy(path.string(), {2, 3}, v.data());
    const auto a = kvcrush::io::read_npy(path.string());
    EXPECT_EQ(a.dtype, npy_dtype::float32);
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(a.values<float>(), v);
  }
  {
    std::vector<kvcrush::float16> v = {kvcrush::to_float16(1.0f), kvcrush::to_float16(-65504.0f)};
    kvcrush::io::write_npy(path.string(), {1, 1, 2}, v.data());
    const auto a = kvcrush::io::read_npy(path.string());
    EXPECT_EQ(a.dtype, npy_dtype::float16);
    EXPECT_EQ(a.values<kvcrush::float16>(), v);
  }
  {
    std::vector<std::int32_t> v = {-7, 0, 2147483647};
    kvcrush::io::write_npy(path.string(), {3}, v.data());
    EXPECT_EQ(kvcrush::io::read_npy(path.string()).values<std::int32_t>(), v);
  }
  {
    std::vector<std::int64_t> v = {-(std::int64_t{1} << 40), 5};
    kvcrush::io::write_npy(path.string(), {2, 1}, v.data());
    EXPECT_EQ(kvcrush::io::read_npy(path.string()).values<std::int64_t>(), v);
  }
  {
    std::vector<std::uint64_t> v = {~std::uint64_t{0}, 1, 2, 3};
    kvcrush::io::write_npy(path.string(), {2, 2}, v.data());
    const auto a = kvcrush::io::read_npy(path.string());
    EXPECT_EQ(a.values<std::uint64_t>(), v);
    EXPECT_THROW((void)a.values<std::int64_t>(), npy_error) << "dtype mismatch is reported";
  }
  {
    kvcrush::io::write_npy<float>(path.string(), {0, 4}, nullptr);
    const auto a = kvcrush::io::read_npy(path.string());
    EXPECT_EQ(a.shape, (std::vector<std::int64_t>{0, 4}));
    EXPECT_EQ(a.size(), 0u);
  }
  std::filesystem::remove(path);
}

TEST(Npy, ReadsVersion2AndLegacyShapes) {
  const std::vector<unsigned char> data = {0, 0, 128, 63, 0, 0, 0, 64};  // 1.0f, 2.0f
  auto v2 = make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data, 2);
  const auto a = parse(v2);
  EXPECT_EQ(a.values<float>(), (std::vector<float>{1.0f, 2.0f}));
  // Keys in another order, double quotes, Python 2 long suffix.
  auto odd = make_file("{\"shape\": (1L, 2L), 'fortran_order': False, 'descr': '<f4'}", data);
  EXPECT_EQ(parse(odd).shape, (std::vector<std::int64_t>{1, 2}));
}

TEST(Npy, MalformedFilesGetClearErrors) {
  const std::vector<unsigned char> eight(8, 0);
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  struct Case {
    std::vector<unsigned char> file;
    std::string expected;
  };
  auto truncated = make_file(ok, eight);
  truncated.resize(truncated.size() - 1);
  auto header_cut = make_file(ok, eight);
  header_cut.resize(30);
  auto bad_version = make_file(ok, eight);
  bad_version[6] = 3;
  const std::vector<Case> cases = {
      {literal_bytes("NUMPY\x01\x00"), "truncated"},
      {literal_bytes("\x93NUMPX\x01\x00\x10\x00{}              "), "bad magic"},
      {bad_version, "unsupported .npy version 3.0"},
      {header_cut, "header runs past the end"},
      {truncated, "truncated: shape needs 8 bytes of data, file has 7"},
      {make_file(ok, std::vector<unsigned char>(12, 0)), "size mismatch"},
      {make_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight), "Fortran-order"},
      {make_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", eight), "big-endian"},
      {make_file("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", eight), "unsupported dtype '<f8'"},
      {make_file("{'descr': '|b1', 'fortran_order': False, 'shape': (8,), }", eight), "unsupported dtype '|b1'"},
      {make_file("{'descr': '<f4', 'fortran_order': False}", eight), "missing one of"},
      {make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", eight), "unknown key 'extra'"},
      {make_file("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", eight), "expected True or False"},
      {make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", eight), "non-negative integer"},
      {make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) ", eight), "expected '}'"},
      {make_file("{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }", eight), "corrupted .npy header"},
      {make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", eight), "trailing characters"},
      {make_file("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", eight), "too large"},
  };
  for (const auto& c : cases) {
    const std::string message = error_of(c.file);
    EXPECT_NE(message.find(c.expected), std::string::npos)
        << "expected an error containing '" << c.expected << "', got: " << message;
    EXPECT_NE(message.find("test.npy"), std::string::npos) << "errors name the source: " << message;
  }
}

TEST(Npy, MissingFileAndUnwritablePath) {
  EXPECT_THROW((void)kvcrush::io::read_npy("/nonexistent/dir/file.npy"), npy_error);
  const float x = 0.0f;
  EXPECT_THROW(kvcrush::io::write_npy("/nonexistent/dir/file.npy", {1}, &x), npy_error);
  EXPECT_THROW((void)kvcrush::io::serialize_npy(npy_dtype::float32, {-1}, &x), std::invalid_argument);
}

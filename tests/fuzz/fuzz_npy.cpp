// The .npy reader (include/kvcrush/io/npy.hpp) on arbitrary bytes: it must
// either throw npy_error or return an array whose shape, dtype and data
// agree, and that survives a write/read round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.hpp"
#include "kvcrush/io/npy.hpp"

namespace {

template <class T>
void check_values(const kvcrush::io::npy_array& a) {
  if (kvcrush::io::dtype_of<T>() != a.dtype) return;
  const std::vector<T> v = a.values<T>();
  KVCRUSH_FUZZ_CHECK(v.size() == a.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace io = kvcrush::io;
  io::npy_array a;
  try {
    a = io::parse_npy(data, size, "fuzz");
  } catch (const io::npy_error&) {
    return 0;  // rejected with the documented error: fine
  }
  for (auto e : a.shape) KVCRUSH_FUZZ_CHECK(e >= 0);
  KVCRUSH_FUZZ_CHECK(a.bytes.size() == a.size() * io::item_size(a.dtype));
  check_values<float>(a);
  check_values<kvcrush::float16>(a);
  check_values<std::int32_t>(a);
  check_values<std::int64_t>(a);
  check_values<std::uint64_t>(a);
  // What we accepted, we must also be able to write and read back.
  const std::vector<unsigned char> again = io::serialize_npy(a.dtype, a.shape, a.bytes.data());
  const io::npy_array b = io::parse_npy(again.data(), again.size(), "round trip");
  KVCRUSH_FUZZ_CHECK(b.dtype == a.dtype);
  KVCRUSH_FUZZ_CHECK(b.shape == a.shape);
  KVCRUSH_FUZZ_CHECK(b.bytes == a.bytes);
  return 0;
}

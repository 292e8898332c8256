// Files the client tests write for the readers to read back.
#ifndef ADAPTD_TESTS_CLIENT_CPP_TEST_FILES_H_
#define ADAPTD_TESTS_CLIENT_CPP_TEST_FILES_H_

#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace adaptd {

// A fresh path in the test's temporary directory.
inline std::string TestPath(const std::string& name) {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  return testing::TempDir() + info->test_suite_name() + "." + info->name() + "." + name;
}

inline std::string WriteFile(const std::string& name, const std::string& bytes) {
  const std::string path = TestPath(name);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

inline std::string FileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// `bytes` as one gzip member, as gzip(1) writes it.
inline std::string Gzip(const std::string& bytes) {
  z_stream zs{};
  // 16 + MAX_WBITS: a gzip wrapper rather than zlib's.
  deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, bytes.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// Big-endian 32-bit, as IDX headers store dimensions.
inline std::string BigEndian32(uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
}

// An IDX file's bytes: magic (type, ndim), dimensions, then `data` as given.
inline std::string Idx(int type, const std::vector<uint32_t>& dims, const std::string& data) {
  std::string bytes = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) bytes += BigEndian32(d);
  return bytes + data;
}

}  // namespace adaptd

#endif  // ADAPTD_TESTS_CLIENT_CPP_TEST_FILES_H_

// Damage on disk, as a failing sector or a stray write leaves it: a flipped bit inside bytes
// that a file holds.
#ifndef ADAPTD_TESTS_TESTING_DAMAGE_H_
#define ADAPTD_TESTS_TESTING_DAMAGE_H_

#include <gtest/gtest.h>

#include <string>

#include "core/files.h"

namespace adaptd {

// Flips one bit of the middle byte of `bytes` wherever `path` holds them (a database keeps
// stale copies of rewritten rows in its free space); a fatal failure if it holds none. Call it
// as ASSERT_NO_FATAL_FAILURE(FlipBitIn(...)).
inline void FlipBitIn(const std::string& path, const std::string& bytes) {
  auto file = ReadFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  size_t found = 0;
  for (size_t at = file->find(bytes); at != std::string::npos; at = file->find(bytes, at + 1)) {
    (*file)[at + bytes.size() / 2] ^= 0x02;
    ++found;
  }
  ASSERT_GT(found, 0u) << path << " does not hold the bytes";
  ASSERT_TRUE(WriteFileAtomically(path, *file).ok());
}

}  // namespace adaptd

#endif  // ADAPTD_TESTS_TESTING_DAMAGE_H_

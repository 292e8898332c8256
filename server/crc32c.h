// CRC-32C (Castagnoli), the checksum of the example log's records. Detects torn and corrupted
// records; it is not a defence against deliberate tampering.
#ifndef ADAPTD_SERVER_CRC32C_H_
#define ADAPTD_SERVER_CRC32C_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace adaptd {

// CRC-32C of `data`, continuing from `crc` (0 to start). Extend(Extend(0, a), b) equals the
// checksum of a followed by b.
uint32_t Crc32cExtend(uint32_t crc, absl::string_view data);
inline uint32_t Crc32c(absl::string_view data) { return Crc32cExtend(0, data); }

}  // namespace adaptd

#endif  // ADAPTD_SERVER_CRC32C_H_

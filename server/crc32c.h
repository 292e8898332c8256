// CRC-32C (Castagnoli), the checksum of the example log's records and of checkpoints. Detects
// torn and corrupted data; it is not a defence against deliberate tampering.
#ifndef ADAPTD_SERVER_CRC32C_H_
#define ADAPTD_SERVER_CRC32C_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace adaptd {

// CRC-32C of `data`, continuing from `crc` (0 to start). Extend(Extend(0, a), b) equals the
// checksum of a followed by b. Uses the CPU's CRC32 instruction where there is one (x86-64
// with SSE4.2), else tables.
uint32_t Crc32cExtend(uint32_t crc, absl::string_view data);
inline uint32_t Crc32c(absl::string_view data) { return Crc32cExtend(0, data); }

// The two implementations, for tests and benchmarks.
namespace crc32c_internal {
uint32_t ExtendPortable(uint32_t crc, absl::string_view data);
// Whether this CPU has the instruction; ExtendHardware may only be called if so.
bool HardwareAvailable();
uint32_t ExtendHardware(uint32_t crc, absl::string_view data);
}  // namespace crc32c_internal

}  // namespace adaptd

#endif  // ADAPTD_SERVER_CRC32C_H_

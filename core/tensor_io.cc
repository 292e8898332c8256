#include "core/tensor_io.h"

#include <zlib.h>

#include <cstring>
#include <limits>

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/torch_status.h"

namespace adaptd {
namespace {

constexpr char kMagic[4] = {'A', 'D', 'T', 'N'};
constexpr uint32_t kFormatVersion = 1;

struct DtypeCode {
  at::ScalarType type;
  uint8_t code;
};
constexpr DtypeCode kDtypes[] = {{at::kByte, 1}, {at::kInt, 2},    {at::kLong, 3},
                                 {at::kFloat, 4}, {at::kDouble, 5}, {at::kBool, 6}};

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof v);
}

class Reader {
 public:
  explicit Reader(absl::string_view bytes) : bytes_(bytes) {}
  template <typename T>
  absl::Status Get(T* v, const char* what) {
    if (bytes_.size() - pos_ < sizeof(T)) return Truncated(what);
    std::memcpy(v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetBytes(size_t n, absl::string_view* v, const char* what) {
    if (bytes_.size() - pos_ < n) return Truncated(what);
    *v = bytes_.substr(pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  absl::Status Truncated(const char* what) const {
    return absl::DataLossError(absl::StrCat("tensor record truncated while reading ", what,
                                            " at byte ", pos_, " of ", bytes_.size()));
  }
  absl::string_view bytes_;
  size_t pos_ = 0;
};

}  // namespace

std::string SerializeTensors(const TensorMap& tensors) {
  std::string out(kMagic, sizeof kMagic);
  Put<uint32_t>(&out, kFormatVersion);
  Put<uint32_t>(&out, static_cast<uint32_t>(tensors.size()));
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    uint8_t code = 0;
    for (const auto& d : kDtypes) {
      if (d.type == t.scalar_type()) code = d.code;
    }
    TORCH_CHECK(code != 0, "SerializeTensors: unsupported dtype for ", name);
    Put<uint32_t>(&out, static_cast<uint32_t>(name.size()));
    out.append(name);
    Put<uint8_t>(&out, code);
    Put<uint8_t>(&out, static_cast<uint8_t>(t.dim()));
    for (int64_t d : t.sizes()) Put<int64_t>(&out, d);
    const uint64_t nbytes = t.numel() * t.element_size();
    Put<uint64_t>(&out, nbytes);
    out.append(static_cast<const char*>(t.data_ptr()), nbytes);
  }
  const uint32_t crc = static_cast<uint32_t>(
      crc32_z(0L, reinterpret_cast<const Bytef*>(out.data()), out.size()));
  Put<uint32_t>(&out, crc);
  return out;
}

absl::StatusOr<TensorMap> ParseTensors(absl::string_view bytes) {
  if (bytes.size() < sizeof kMagic + 12 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a tensor record: expected the magic 'ADTN' and at least 16 bytes, got ",
        bytes.size(), " bytes"));
  }
  uint32_t stored_crc;
  std::memcpy(&stored_crc, bytes.data() + bytes.size() - 4, 4);
  const absl::string_view body = bytes.substr(0, bytes.size() - 4);
  const uint32_t crc = static_cast<uint32_t>(
      crc32_z(0L, reinterpret_cast<const Bytef*>(body.data()), body.size()));
  if (crc != stored_crc) {
    return absl::DataLossError(
        absl::StrCat("tensor record CRC mismatch (stored ", stored_crc, ", computed ", crc,
                     "): the record is corrupt or truncated"));
  }
  Reader r(body.substr(sizeof kMagic));
  uint32_t version, count;
  ADAPTD_RETURN_IF_ERROR(r.Get(&version, "version"));
  if (version != kFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor record version ", version, "; expected ", kFormatVersion));
  }
  ADAPTD_RETURN_IF_ERROR(r.Get(&count, "count"));
  TensorMap out;
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t name_len = 0;
    absl::string_view name;
    uint8_t code = 0, ndim = 0;
    ADAPTD_RETURN_IF_ERROR(r.Get(&name_len, "name length"));
    ADAPTD_RETURN_IF_ERROR(r.GetBytes(name_len, &name, "name"));
    ADAPTD_RETURN_IF_ERROR(r.Get(&code, "dtype"));
    ADAPTD_RETURN_IF_ERROR(r.Get(&ndim, "rank"));
    at::ScalarType type = at::kByte;
    bool known = false;
    for (const auto& d : kDtypes) {
      if (d.code == code) {
        type = d.type;
        known = true;
      }
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has unknown dtype code ", code));
    }
    std::vector<int64_t> shape(ndim);
    int64_t numel = 1;
    for (auto& d : shape) {
      ADAPTD_RETURN_IF_ERROR(r.Get(&d, "shape"));
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dim in '", name, "'"));
      if (d > 0 && numel > std::numeric_limits<int64_t>::max() / d) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name, "' has a shape whose element count overflows"));
      }
      numel *= d;
    }
    uint64_t nbytes = 0;
    ADAPTD_RETURN_IF_ERROR(r.Get(&nbytes, "byte count"));
    const uint64_t element = c10::elementSize(type);
    if (static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / element) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has a shape whose byte count overflows"));
    }
    const uint64_t expected = static_cast<uint64_t>(numel) * element;
    if (nbytes != expected) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' of shape ",
                                                     ShapeString(shape), " needs ", expected,
                                                     " bytes; the record says ", nbytes));
    }
    absl::string_view data;
    ADAPTD_RETURN_IF_ERROR(r.GetBytes(nbytes, &data, "data"));
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
    if (nbytes > 0) std::memcpy(t.data_ptr(), data.data(), nbytes);
    out.emplace(std::string(name), std::move(t));
  }
  if (r.remaining() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor record has ", r.remaining(), " trailing bytes"));
  }
  return out;
}

absl::StatusOr<at::Tensor> GetTensor(const TensorMap& map, const std::string& name,
                                     at::ScalarType dtype, int64_t numel) {
  auto it = map.find(name);
  if (it == map.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing tensor '", name, "'"));
  }
  const at::Tensor& t = it->second;
  if (t.scalar_type() != dtype || (numel >= 0 && t.numel() != numel)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' is ", DescribeTensor(t), "; expected ", std::string(c10::toString(dtype)),
        numel >= 0 ? absl::StrCat(" with ", numel, " elements") : std::string()));
  }
  return t;
}

at::Tensor ScalarTensor(double v) { return at::scalar_tensor(v, at::kDouble); }
at::Tensor ScalarTensor(int64_t v) { return at::scalar_tensor(v, at::kLong); }

absl::StatusOr<double> GetDouble(const TensorMap& map, const std::string& name) {
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor t, GetTensor(map, name, at::kDouble, 1));
  return t.item<double>();
}

absl::StatusOr<int64_t> GetInt(const TensorMap& map, const std::string& name) {
  ADAPTD_ASSIGN_OR_RETURN(at::Tensor t, GetTensor(map, name, at::kLong, 1));
  return t.item<int64_t>();
}

}  // namespace adaptd

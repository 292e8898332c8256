#include "core/noise.h"

#include <cmath>
#include <cstring>
#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace adaptd {
namespace {

// Grain of the parallel loop, in pairs: large enough that thread start-up is amortised.
constexpr int64_t kGrainPairs = 1 << 15;

inline uint32_t Fmix32(uint32_t h) {  // MurmurHash3's finaliser: a bijective avalanche mix.
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

inline float AsFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t AsBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// Natural log for x in (0, 1], branch-free: x = 2^e * mm with mm in [sqrt(1/2), sqrt(2)),
// then the Cephes minimax polynomial for log(1 + r), r = mm - 1.
inline float LogPoly(float x) {
  const uint32_t bits = AsBits(x);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xffu) - 126);
  float mm = AsFloat((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  // Selects are written as integer arithmetic so that the loop has no control flow and
  // vectorises: small = 1 when mm < sqrt(1/2), i.e. when the mantissa bits are <= 0x3504f3.
  const int32_t mbits = static_cast<int32_t>(bits & 0x007fffffu);
  const float small = static_cast<float>(-((mbits - 0x3504f4) >> 31));
  e -= small;
  const float r = mm - 1.0f + small * mm;
  const float z = r * r;
  float y = 7.0376836292e-2f;
  y = y * r - 1.1514610310e-1f;
  y = y * r + 1.1676998740e-1f;
  y = y * r - 1.2420140846e-1f;
  y = y * r + 1.4249322787e-1f;
  y = y * r - 1.6668057665e-1f;
  y = y * r + 2.0000714765e-1f;
  y = y * r - 2.4999993993e-1f;
  y = y * r + 3.3333331174e-1f;
  y = y * r * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return r + y + 0.693359375f * e;
}

// sin and cos of 2*pi*t for t in [0, 1), branch-free: reduce to a quarter turn q and an angle
// a in [-pi/4, pi/4], evaluate the Cephes polynomials there, then rotate by q.
inline void SinCos2PiPoly(float t, float* s_out, float* c_out) {
  // Round to the nearest quarter turn by truncation (t >= 0), which vectorises without SSE4.1.
  const float q = static_cast<float>(static_cast<int32_t>(t * 4.0f + 0.5f));  // 0..4
  const float a = (t - 0.25f * q) * 6.28318530717958647692f;
  const float a2 = a * a;
  const float s = a + a * a2 * (-1.6666654611e-1f + a2 * (8.3321608736e-3f + a2 * -1.9515295891e-4f));
  const float c = 1.0f - 0.5f * a2 +
                  a2 * a2 * (4.166664568298827e-2f + a2 * (-1.388731625493765e-3f + a2 * 2.443315711809948e-5f));
  const int32_t qi = static_cast<int32_t>(q) & 3;
  // Rotating by qi quarter turns: (s, c) -> (s, c), (c, -s), (-s, -c), (-c, s); as arithmetic.
  const float odd = static_cast<float>(qi & 1);
  const float sign_s = static_cast<float>(1 - (qi & 2));
  const float sign_c = static_cast<float>(1 - 2 * (((qi + 1) >> 1) & 1));
  *s_out = sign_s * (odd * c + (1.0f - odd) * s);
  *c_out = sign_c * (odd * s + (1.0f - odd) * c);
}

// The two 24-bit uniforms of pair k: u1 in (0, 1], u2 in [0, 1). (The shifted values are below
// 2^24, so the signed conversions are exact and vectorise, unlike unsigned ones.)
inline void Uniforms(uint32_t k, uint32_t key0, uint32_t key1, float* u1, float* u2) {
  const uint32_t h1 = Fmix32(Fmix32(k ^ key0) + key1);
  const uint32_t h2 = Fmix32(Fmix32(k ^ key1) + key0);
  constexpr float kScale = 1.0f / 16777216.0f;  // 2^-24
  *u1 = static_cast<float>(static_cast<int32_t>((h1 >> 8) + 1u)) * kScale;
  *u2 = static_cast<float>(static_cast<int32_t>(h2 >> 8)) * kScale;
}

// Layout: pair k (0 <= k < half, half = n / 2) fills element k with r cos and element k + half
// with r sin, so that loads and stores are contiguous and the loop vectorises. An odd n's last
// element takes the cosine of pair `half`.
//
// The affine form writes mean + z / sqrt(ess (hess + delta)).
// target_clones gives an AVX2 body where the CPU has it and a baseline one elsewhere.
template <bool kAffine>
__attribute__((always_inline)) inline void PairsFloatBody(float* __restrict out,
                                                          const float* __restrict mean,
                                                          const float* __restrict hess, float ess,
                                                          float delta, int64_t begin, int64_t end,
                                                          int64_t half, uint32_t key0,
                                                          uint32_t key1) {
  float* __restrict out2 = out + half;
  for (int64_t k = begin; k < end; ++k) {
    float u1, u2, s, c;
    Uniforms(static_cast<uint32_t>(k), key0, key1, &u1, &u2);
    const float r2 = -2.0f * LogPoly(u1);  // the squared Box-Muller radius
    SinCos2PiPoly(u2, &s, &c);
    if (kAffine) {
      // sigma * r = sqrt(r^2 / (ess (h + delta))): one square root per element, none shared.
      out[k] = mean[k] + c * std::sqrt(r2 / (ess * (hess[k] + delta)));
      out2[k] = mean[k + half] + s * std::sqrt(r2 / (ess * (hess[k + half] + delta)));
    } else {
      const float r = std::sqrt(r2);
      out[k] = r * c;
      out2[k] = r * s;
    }
  }
}

__attribute__((target_clones("avx2", "default"))) void PairsFloat(float* out, int64_t begin,
                                                                  int64_t end, int64_t half,
                                                                  uint32_t key0, uint32_t key1) {
  PairsFloatBody<false>(out, nullptr, nullptr, 0.f, 0.f, begin, end, half, key0, key1);
}

__attribute__((target_clones("avx2", "default"))) void PairsFloatAffine(
    float* out, const float* mean, const float* hess, float ess, float delta, int64_t begin,
    int64_t end, int64_t half, uint32_t key0, uint32_t key1) {
  PairsFloatBody<true>(out, mean, hess, ess, delta, begin, end, half, key0, key1);
}

// Float64: the same uniforms and layout, transformed with libm in double precision.
template <bool kAffine>
void PairsDouble(double* out, const double* mean, const double* hess, double ess, double delta,
                 int64_t begin, int64_t end, int64_t half, uint32_t key0, uint32_t key1) {
  for (int64_t k = begin; k < end; ++k) {
    float u1, u2;
    Uniforms(static_cast<uint32_t>(k), key0, key1, &u1, &u2);
    const double r = std::sqrt(-2.0 * std::log(static_cast<double>(u1)));
    const double angle = 6.283185307179586476925 * static_cast<double>(u2);
    double z0 = r * std::cos(angle), z1 = r * std::sin(angle);
    if (kAffine) {
      z0 = mean[k] + z0 / std::sqrt(ess * (hess[k] + delta));
      z1 = mean[k + half] + z1 / std::sqrt(ess * (hess[k + half] + delta));
    }
    out[k] = z0;
    out[k + half] = z1;
  }
}

// The last element of an odd-sized draw: the cosine of pair `half`, written at 2 * half.
template <typename T>
void OddTail(T* out, const T* mean, const T* hess, double ess, double delta, int64_t half,
             uint32_t key0, uint32_t key1) {
  float u1, u2;
  Uniforms(static_cast<uint32_t>(half), key0, key1, &u1, &u2);
  double z = std::sqrt(-2.0 * std::log(static_cast<double>(u1))) *
             std::cos(6.283185307179586476925 * static_cast<double>(u2));
  const int64_t i = 2 * half;
  if (mean) z = mean[i] + z / std::sqrt(ess * (hess[i] + delta));
  out[i] = static_cast<T>(z);
}

void Fill(at::Tensor& out, const at::Tensor* mean, const at::Tensor* hess, double ess,
          double delta, uint64_t seed) {
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(), "noise: out must be contiguous CPU");
  const int64_t n = out.numel();
  const int64_t half = n / 2;
  TORCH_CHECK(half < (int64_t{1} << 32), "noise: fewer than 2^33 elements per draw");
  const uint32_t key0 = static_cast<uint32_t>(seed);
  const uint32_t key1 = static_cast<uint32_t>(seed >> 32) ^ 0x9e3779b9u;
  if (out.scalar_type() == at::kFloat) {
    float* o = out.data_ptr<float>();
    const float* m = mean ? mean->data_ptr<float>() : nullptr;
    const float* h = hess ? hess->data_ptr<float>() : nullptr;
    at::parallel_for(0, half, kGrainPairs, [&](int64_t b, int64_t e) {
      if (m) {
        PairsFloatAffine(o, m, h, static_cast<float>(ess), static_cast<float>(delta), b, e, half,
                         key0, key1);
      } else {
        PairsFloat(o, b, e, half, key0, key1);
      }
    });
    if (n % 2) OddTail(o, m, h, ess, delta, half, key0, key1);
  } else {
    TORCH_CHECK(out.scalar_type() == at::kDouble, "noise: float32 or float64 expected");
    double* o = out.data_ptr<double>();
    const double* m = mean ? mean->data_ptr<double>() : nullptr;
    const double* h = hess ? hess->data_ptr<double>() : nullptr;
    at::parallel_for(0, half, kGrainPairs, [&](int64_t b, int64_t e) {
      if (m) {
        PairsDouble<true>(o, m, h, ess, delta, b, e, half, key0, key1);
      } else {
        PairsDouble<false>(o, nullptr, nullptr, 0, 0, b, e, half, key0, key1);
      }
    });
    if (n % 2) OddTail(o, m, h, ess, delta, half, key0, key1);
  }
}

}  // namespace

void FillStandardNormal(at::Tensor& out, uint64_t seed) {
  Fill(out, nullptr, nullptr, 0.0, 0.0, seed);
}

void SampleDiagonalGaussian(at::Tensor& out, const at::Tensor& mean, const at::Tensor& hess,
                            double ess, double delta, uint64_t seed) {
  TORCH_CHECK(mean.is_contiguous() && hess.is_contiguous() && mean.numel() == out.numel() &&
                  hess.numel() == out.numel() && mean.scalar_type() == out.scalar_type() &&
                  hess.scalar_type() == out.scalar_type(),
              "noise: mean and hess must match out");
  Fill(out, &mean, &hess, ess, delta, seed);
}

uint64_t NextSeed(const at::Generator& gen) {
  at::Generator handle = gen;  // a shared handle: copying it is cheap and shares the state
  std::lock_guard<std::mutex> lock(handle.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(handle)->random64();
}

namespace internal {
float FastLog(float x) { return LogPoly(x); }
void FastSinCos2Pi(float turns, float* s, float* c) { SinCos2PiPoly(turns, s, c); }
}  // namespace internal

}  // namespace adaptd

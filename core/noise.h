// Fast, reproducible Gaussian noise for weight sampling.
//
// Element i of a draw depends only on (seed, i): the result is the same for any thread count,
// and a draw can be regenerated from its seed instead of being stored. Elements k and k + n/2
// come from one Box-Muller transform of two 24-bit uniforms taken from a counter-based hash of
// (seed, k), so the
// magnitude of a draw is at most sqrt(2 ln 2^24) ~= 5.77 (P(|z| > 5.77) ~= 8e-9 for a true
// normal). Float math uses vectorisable polynomial log/sin/cos (relative error < 1e-6).
#ifndef ADAPTD_CORE_NOISE_H_
#define ADAPTD_CORE_NOISE_H_

#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace adaptd {

// Fills the contiguous CPU float32 or float64 tensor `out` with N(0, 1) draws keyed by `seed`.
// REQUIRES: out is contiguous, on the CPU, float32 or float64.
void FillStandardNormal(at::Tensor& out, uint64_t seed);

// Writes out = mean + eps / sqrt(ess * (hess + delta)) with eps keyed by `seed`, in one pass:
// a sample of the diagonal Gaussian N(mean, 1 / (ess (hess + delta))).
// REQUIRES: out, mean and hess contiguous CPU tensors of one floating dtype and one size.
void SampleDiagonalGaussian(at::Tensor& out, const at::Tensor& mean, const at::Tensor& hess,
                            double ess, double delta, uint64_t seed);

// Draws a fresh 64-bit seed from `gen` (a CPU generator), advancing its state.
uint64_t NextSeed(const at::Generator& gen);

namespace internal {
// Scalar helpers exposed for tests.
float FastLog(float x);
void FastSinCos2Pi(float turns, float* s, float* c);  // sin and cos of 2*pi*turns
}  // namespace internal

}  // namespace adaptd

#endif  // ADAPTD_CORE_NOISE_H_

// CPU kernel behind LogitJacobian's structured backend (core/jacobian.h): the backward step
// through a Conv2d -> [ReLU | Tanh] -> MaxPool2d block for all K logit directions at once.
//
// After max pooling, the signal at a conv output channel is nonzero only at the argmax of each
// pooling window, and those positions are the same for every logit direction. The kernel
// therefore visits only the argmax positions (a quarter of the plane for 2x2 pooling) instead of
// forming the dense per-example gradients S_k unfold(a)^T, and keeps the K directions innermost
// so that every update is one vector instruction. Internal to core/jacobian.cc.
#ifndef ADAPTD_CORE_JACOBIAN_KERNELS_H_
#define ADAPTD_CORE_JACOBIAN_KERNELS_H_

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace adaptd::internal {

struct PooledConvArgs {
  // d f_k / d(pool output) with the activation's derivative at the argmax already applied:
  // [B, K, O, M] (M = pooled positions per channel), contiguous.
  at::Tensor signal;
  // max_pool2d's argmax per pooled position, flat within the conv output plane: [B, O, M] int64.
  at::Tensor indices;
  // The conv input [B, C, H, W], contiguous, and the conv geometry.
  at::Tensor input;
  int64_t conv_w = 0;  // width of the conv output plane (to decode `indices`)
  int64_t kernel = 0;
  int64_t stride = 1;
  int64_t padding = 0;
  // The posterior variance of the conv weight [O, C, k, k] and bias [O] (bias may be undefined).
  at::Tensor weight_var;
  at::Tensor bias_var;
  // The conv weight, when the signal must continue below the conv (else undefined).
  at::Tensor weight;
};

// True when the kernel handles these tensors: CPU, float32 or float64.
bool PooledConvKernelApplies(const at::Tensor& t);

// Adds the block's share of J Sigma J^T to `gram` ([B, K, K] when `full`, else its diagonal
// [B, K]; contiguous, same dtype). Returns d f_k / d(conv input) [B, K, C, H, W] when
// args.weight is defined, else an undefined tensor. Each example's result depends on that
// example alone and is the same for any thread count.
at::Tensor PooledConvBackward(const PooledConvArgs& args, at::Tensor& gram, bool full);

}  // namespace adaptd::internal

#endif  // ADAPTD_CORE_JACOBIAN_KERNELS_H_

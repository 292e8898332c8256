// FROMP's kernel blocks and term against the closed form of multinomial logistic regression.
// With z = W x + b and p the softmax over a head H, d p_k / d z_j = p_k (delta_kj - p_j) for j in
// H (0 outside it), so the Jacobian of p_k in the flat layout (W row-major, then b) is
// [dz (x) x, dz]. Everything below is recomputed from it in float64.
#include "core/fromp.h"

#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/flat_params.h"
#include "tests/testing/models.h"

namespace adaptd {
namespace {

constexpr int64_t kClasses = 4;
constexpr int64_t kDim = 6;

// Each row's head, [M, K] bool, or undefined on a single head.
at::Tensor RowMasks(const at::Tensor& task_masks, const at::Tensor& task) {
  return task_masks.defined() ? task_masks.index_select(0, task) : at::Tensor();
}

// The model's probabilities on x, float64 [M, K], zero outside each row's head.
at::Tensor Probs64(FlatParameters& flat, const at::Tensor& x, const at::Tensor& masks) {
  const at::Tensor w = flat.views()[0].detach().to(at::kDouble);  // [K, D]
  const at::Tensor b = flat.views()[1].detach().to(at::kDouble);  // [K]
  const at::Tensor z = x.to(at::kDouble).matmul(w.t()) + b;
  return at::softmax(MaskLogits(z, masks), 1);
}

// d p_k / d theta for one example with probabilities p [K] and input x [D], float64 [P].
at::Tensor JacobianRow(const at::Tensor& p, int64_t k, const at::Tensor& x) {
  at::Tensor dz = -p[k] * p;
  dz[k] += p[k];
  return at::cat({(dz.unsqueeze(1) * x.to(at::kDouble).unsqueeze(0)).reshape({-1}), dz});
}

// J [rows, P] of class k at the probabilities `p` of the memory's rows `rows`.
at::Tensor Jacobian(const at::Tensor& p, const at::Tensor& x, const at::Tensor& rows, int64_t k) {
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < rows.numel(); ++i) {
    const int64_t r = rows[i].item<int64_t>();
    out.push_back(JacobianRow(p[r], k, x[r]));
  }
  return at::stack(out);
}

void CheckAgainstClosedForm(const at::Tensor& task_masks, size_t expected_blocks) {
  std::unique_ptr<Model> model =
      testing_models::BuildOrDie(testing_models::Spec(Architecture::kLogReg, {kDim}, kClasses), 3);
  ASSERT_NE(model, nullptr);
  auto flat = FlatParameters::Bind(model->Parameters());
  ASSERT_TRUE(flat.ok()) << flat.status();
  ASSERT_EQ(flat->numel(), kClasses * kDim + kClasses);

  Memory memory;
  memory.x = testing_models::Blobs(7, kClasses, kDim, 21).x;
  memory.task = at::tensor({0, 0, 0, 1, 1, 1, 1}, at::kLong);
  memory.y = at::zeros({7}, at::kLong);
  memory.id = at::arange(7, at::kLong);
  const at::Tensor masks = RowMasks(task_masks, memory.task);
  const at::Tensor p_old = Probs64(*flat, memory.x, masks);
  memory.soft = p_old.to(at::kFloat);
  const at::Tensor sigma2 =
      at::rand({flat->numel()}, at::detail::createCPUGenerator(5)) * 0.5 + 0.5;
  const double jitter = 1e-2;

  auto blocks = BuildFrompBlocks(*model, *flat, memory, task_masks, sigma2, jitter);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  ASSERT_EQ(blocks->size(), expected_blocks);

  // Each block's inverse kernel, from the Jacobian at the old weights.
  const at::Tensor s64 = sigma2.to(at::kDouble);
  std::vector<at::Tensor> kinv64;
  for (const FrompBlock& b : *blocks) {
    const at::Tensor task = memory.task.index_select(0, b.rows);
    ASSERT_TRUE(task.eq(task[0]).all().item<bool>()) << "a block mixes tasks";
    const at::Tensor j = Jacobian(p_old, memory.x, b.rows, b.klass);
    at::Tensor kernel = (j * s64).matmul(j.t());
    kernel.diagonal().add_(jitter);
    kinv64.push_back(at::inverse(kernel));
    const double err = (b.kinv.to(at::kDouble) - kinv64.back()).norm().item<double>() /
                       kinv64.back().norm().item<double>();
    EXPECT_LT(err, 1e-4) << "task " << task[0].item<int64_t>() << ", class " << b.klass;
    EXPECT_TRUE(at::allclose(b.m_old.to(at::kDouble), p_old.index_select(0, b.rows).select(1, b.klass),
                             1e-6, 1e-7));
  }

  // Away from the old weights: the term's value and its gradient J(w)^T K^-1 (m(w) - m_old).
  {
    at::NoGradGuard no_grad;
    flat->params().add_(at::randn({flat->numel()}, at::detail::createCPUGenerator(8)) * 0.4);
  }
  const at::Tensor p_new = Probs64(*flat, memory.x, masks);
  double value = 0;
  at::Tensor grad = at::zeros({flat->numel()}, at::kDouble);
  for (size_t i = 0; i < blocks->size(); ++i) {
    const FrompBlock& b = (*blocks)[i];
    const at::Tensor d = p_new.index_select(0, b.rows).select(1, b.klass) -
                         p_old.index_select(0, b.rows).select(1, b.klass);
    const at::Tensor v = kinv64[i].matmul(d);
    value += 0.5 * d.dot(v).item<double>();
    grad += Jacobian(p_new, memory.x, b.rows, b.klass).t().matmul(v);
  }
  ASSERT_GT(value, 1e-3);  // the weights moved far enough to matter

  flat->ZeroGrad();
  const at::Tensor probs = at::softmax(MaskLogits(model->Forward(memory.x), masks), 1);
  const at::Tensor term = FrompTerm(probs, *blocks);
  term.backward();
  EXPECT_NEAR(term.item<double>(), value, 1e-4 * value);
  const at::Tensor got = flat->grads().to(at::kDouble);
  const double gerr = (got - grad).norm().item<double>() / grad.norm().item<double>();
  std::cout << "value " << value << ", gradient's relative error " << gerr << "\n";
  EXPECT_LT(gerr, 1e-4);
}

// Multi-head: two tasks, each with a head of two classes: four blocks, softmax within the head.
TEST(FrompTest, MultiHeadBlocksAndTermMatchTheClosedForm) {
  const at::Tensor task_masks =
      at::tensor({1, 1, 0, 0, 0, 0, 1, 1}, at::kLong).to(at::kBool).reshape({2, kClasses});
  CheckAgainstClosedForm(task_masks, 4);
}

// Single head: every class of every task has a block.
TEST(FrompTest, SingleHeadBlocksAndTermMatchTheClosedForm) {
  CheckAgainstClosedForm(at::Tensor(), 2 * kClasses);
}

}  // namespace
}  // namespace adaptd

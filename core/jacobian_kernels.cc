#include "core/jacobian_kernels.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/Functions.h>
#include <ATen/Parallel.h>

namespace adaptd::internal {
namespace {

// The K directions are padded to whole 64-byte vectors: the padding lanes stay zero.
template <typename T>
int64_t PaddedClasses(int64_t k) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  return (k + kLanes - 1) / kLanes * kLanes;
}

// One K-row accumulator: a GCC vector of kKp lanes held in registers (the compiler splits it
// into what the target has), or, for kKp == 0, a row of `n` in a scratch buffer.
template <typename T, int64_t kKp>
struct Row {
  typedef T V __attribute__((vector_size(kKp * sizeof(T))));
  V v;
  Row() { Zero(); }
  explicit Row(T* /*scratch*/, int64_t /*n*/) { Zero(); }
  void Zero() { v = V{}; }
  void Fma(const T* x, T a) {  // v += a x
    V r;
    std::memcpy(&r, x, sizeof(V));
    v += a * r;
  }
  void AddTo(T* y) const {  // y += v
    V r;
    std::memcpy(&r, y, sizeof(V));
    r += v;
    std::memcpy(y, &r, sizeof(V));
  }
  void Store(T* y) const { std::memcpy(y, &v, sizeof(V)); }
  void SquareTo(T* y, T a) const {  // y += a v^2
    V r;
    std::memcpy(&r, y, sizeof(V));
    r += a * v * v;
    std::memcpy(y, &r, sizeof(V));
  }
};

template <typename T>
struct Row<T, 0> {
  T* v;
  int64_t n;
  Row(T* scratch, int64_t width) : v(scratch), n(width) { Zero(); }
  void Zero() { std::fill(v, v + n, T(0)); }
  void Fma(const T* x, T a) {
    for (int64_t l = 0; l < n; ++l) v[l] += a * x[l];
  }
  void AddTo(T* y) const {
    for (int64_t l = 0; l < n; ++l) y[l] += v[l];
  }
  void Store(T* y) const { std::copy(v, v + n, y); }
  void SquareTo(T* y, T a) const {
    for (int64_t l = 0; l < n; ++l) y[l] += a * v[l] * v[l];
  }
};

// Runs `accumulate(rows, t, count)` (fill `count` register rows for taps t, t + 1, ...) and then
// `finish(row, tap)` for every tap in [0, taps): eight taps per pass where the width is fixed, so
// that each pass over the inner operands feeds eight independent accumulators.
template <typename T, int64_t kKp, typename Accumulate, typename Finish>
__attribute__((always_inline)) inline void ForTaps(int64_t taps, int64_t kp, T* scratch,
                                                   Accumulate&& accumulate, Finish&& finish) {
  int64_t t = 0;
  if constexpr (kKp > 0) {
    constexpr int kBlock = 8;
    for (; t + kBlock <= taps; t += kBlock) {
      Row<T, kKp> rows[kBlock];
      accumulate(rows, t, kBlock);
      for (int q = 0; q < kBlock; ++q) finish(rows[q], t + q);
    }
  }
  Row<T, kKp> r(scratch, kp);
  for (; t < taps; ++t) {
    r.Zero();
    accumulate(&r, t, 1);
    finish(r, t);
  }
}

template <typename T>
struct Geometry {
  int64_t b_count, k, kp, o_count, m_count, c_count, h, w, conv_w, ksize, stride, pad;
  int64_t hp, wp;              // the zero-padded input plane
  const int64_t* tap_offsets;  // [C k k]: (c hp + a) wp + e, the tap's offset in the padded input
  const T* signal;
  const int64_t* indices;
  const T* input;
  const T* weight_var;
  const T* bias_var;  // may be null
  const T* weight;    // null: no propagation
  T* gram;
  T* out;  // [B, K, C, H, W] or null
  bool full;
};

// The calling thread's buffers for one example at a time.
template <typename T>
struct Scratch {
  std::vector<T> s;         // [O, M, KP] the signal, K innermost
  std::vector<T> in_pad;    // [C, hp, wp] the zero-padded input (when padding > 0)
  std::vector<T> j;         // [C k k + 1, KP] one channel's Jacobian rows (full Gram only)
  std::vector<T> acc;       // [KP] or [K, KP]
  std::vector<T> in_grad;   // [C, hp, wp, KP] (when propagating)
  std::vector<T> row;       // [KP] accumulator storage for the runtime-width body
  std::vector<T> compact;        // [M, KP] one channel's live window signals, contiguous
  std::vector<char> live;        // [O, M] whether any direction reaches the window
  std::vector<const T*> alive_s;
  std::vector<int64_t> alive_base;
  std::vector<int64_t> group_of;

  Scratch(const Geometry<T>& g, int64_t ckk)
      : s(g.o_count * g.m_count * g.kp),
        in_pad(g.pad > 0 ? g.c_count * g.hp * g.wp : 0),
        j(g.full ? (ckk + 1) * g.kp : 0),
        acc((g.full ? g.k : 1) * g.kp),
        in_grad(g.weight ? g.c_count * g.hp * g.wp * g.kp : 0),
        row(g.kp),
        compact(g.m_count * g.kp),
        live(g.o_count * g.m_count),
        alive_s(std::max(g.m_count, g.o_count)),
        alive_base(std::max(g.m_count, g.o_count)),
        group_of(g.o_count) {}
};

// One example. kKp > 0 fixes the padded K width at compile time.
template <typename T, int64_t kKp, bool kPropagate>
__attribute__((always_inline)) inline void ExampleBody(const Geometry<T>& g, int64_t b,
                                                       Scratch<T>& sc) {
  const int64_t kp = kKp > 0 ? kKp : g.kp;
  const int64_t ckk = g.c_count * g.ksize * g.ksize;
  const int64_t om = g.o_count * g.m_count;
  T* s = sc.s.data();
  std::fill(s, s + om * kp, T(0));
  for (int64_t k = 0; k < g.k; ++k) {
    const T* src = g.signal + (b * g.k + k) * om;
    for (int64_t i = 0; i < om; ++i) s[i * kp + k] = src[i];
  }
  const T* in = g.input + b * g.c_count * g.h * g.w;
  if (g.pad > 0) {
    T* dst = sc.in_pad.data();
    std::fill(dst, dst + g.c_count * g.hp * g.wp, T(0));
    for (int64_t c = 0; c < g.c_count; ++c) {
      for (int64_t y = 0; y < g.h; ++y) {
        std::copy(in + (c * g.h + y) * g.w, in + (c * g.h + y + 1) * g.w,
                  dst + (c * g.hp + y + g.pad) * g.wp + g.pad);
      }
    }
    in = dst;
  }
  T* acc = sc.acc.data();
  std::fill(acc, acc + (g.full ? g.k : 1) * kp, T(0));
  const int64_t* idx = g.indices + b * om;
  auto window_base = [&](int64_t pos) {  // the window's top-left in the padded input
    return (pos / g.conv_w) * g.stride * g.wp + (pos % g.conv_w) * g.stride;
  };
  auto alive = [&](const T* sv) {  // false for a dead ReLU: nothing reaches the window
    for (int64_t k = 0; k < g.k; ++k) {
      if (sv[k] != T(0)) return true;
    }
    return false;
  };
  char* live = sc.live.data();
  for (int64_t i = 0; i < om; ++i) live[i] = alive(s + i * kp);
  Row<T, kKp> r(sc.row.data(), kp);
  T* compact = sc.compact.data();
  int64_t* base = sc.alive_base.data();
  for (int64_t o = 0; o < g.o_count; ++o) {
    int64_t n = 0;
    for (int64_t m = 0; m < g.m_count; ++m) {
      if (!live[o * g.m_count + m]) continue;
      std::copy(s + (o * g.m_count + m) * kp, s + (o * g.m_count + m + 1) * kp, compact + n * kp);
      base[n] = window_base(idx[o * g.m_count + m]);
      ++n;
    }
    if (n == 0) continue;
    const T* var = g.weight_var + o * ckk;
    const T bias_var = g.bias_var ? g.bias_var[o] : T(0);
    // dF_k/dW[o, t] = sum over windows of s_k times the input under tap t (input times
    // back-propagated signal), accumulated in registers, kBlock taps per pass over the windows;
    // the bias row is the sum of s_k.
    auto finish = [&](const Row<T, kKp>& row, int64_t t) {
      if (!g.full) {
        row.SquareTo(acc, t < ckk ? var[t] : bias_var);
      } else {
        row.Store(sc.j.data() + t * kp);
      }
    };
    ForTaps<T, kKp>(
        ckk, kp, sc.row.data(),
        [&](Row<T, kKp>* rows, int64_t t, int count) {
          const int64_t* off = g.tap_offsets + t;
          for (int64_t i = 0; i < n; ++i) {
            const T* in_i = in + base[i];
            const T* sv = compact + i * kp;
            for (int q = 0; q < count; ++q) rows[q].Fma(sv, in_i[off[q]]);
          }
        },
        finish);
    r.Zero();
    for (int64_t i = 0; i < n; ++i) r.Fma(compact + i * kp, T(1));
    finish(r, ckk);
    if (g.full) {
      for (int64_t t = 0; t <= ckk; ++t) {
        const T* jr = sc.j.data() + t * kp;
        const T v = t < ckk ? var[t] : bias_var;
        for (int64_t k = 0; k < g.k; ++k) {
          Row<T, kKp> a(sc.row.data(), kp);
          a.Fma(jr, v * jr[k]);
          a.AddTo(acc + k * kp);
        }
      }
    }
  }
  if (kPropagate) {
    // dF_k/d a[pixel] = sum over (o, window) of s_k W[o, tap]. Channels whose argmax in a window
    // is the same pixel write the same 150 input pixels: sum them in registers first.
    T* grad = sc.in_grad.data();
    std::fill(grad, grad + g.c_count * g.hp * g.wp * kp, T(0));
    for (int64_t m = 0; m < g.m_count; ++m) {
      std::fill(sc.group_of.begin(), sc.group_of.end(), int64_t{-1});
      for (int64_t o = 0; o < g.o_count; ++o) {
        if (sc.group_of[o] >= 0 || !live[o * g.m_count + m]) continue;
        const int64_t pos = idx[o * g.m_count + m];
        int64_t members = 0;
        for (int64_t q = o; q < g.o_count; ++q) {
          if (sc.group_of[q] < 0 && live[q * g.m_count + m] && idx[q * g.m_count + m] == pos) {
            sc.group_of[q] = o;
            sc.alive_s[members] = s + (q * g.m_count + m) * kp;
            sc.alive_base[members] = q * ckk;  // the member's weight row
            ++members;
          }
        }
        T* grad_w = grad + window_base(pos) * kp;
        ForTaps<T, kKp>(
            ckk, kp, sc.row.data(),
            [&](Row<T, kKp>* rows, int64_t t, int count) {
              for (int64_t i = 0; i < members; ++i) {
                const T* w_i = g.weight + sc.alive_base[i] + t;
                for (int q = 0; q < count; ++q) rows[q].Fma(sc.alive_s[i], w_i[q]);
              }
            },
            [&](const Row<T, kKp>& row, int64_t t) { row.AddTo(grad_w + g.tap_offsets[t] * kp); });
      }
    }
  }
  if (g.full) {
    T* dst = g.gram + b * g.k * g.k;
    for (int64_t k = 0; k < g.k; ++k) {
      for (int64_t l = 0; l < g.k; ++l) dst[k * g.k + l] += acc[k * kp + l];
    }
  } else {
    T* dst = g.gram + b * g.k;
    for (int64_t k = 0; k < g.k; ++k) dst[k] += acc[k];
  }
  if (kPropagate) {
    const T* grad = sc.in_grad.data();
    const int64_t chw = g.c_count * g.h * g.w;
    for (int64_t k = 0; k < g.k; ++k) {
      T* dst = g.out + (b * g.k + k) * chw;
      for (int64_t c = 0; c < g.c_count; ++c) {
        for (int64_t y = 0; y < g.h; ++y) {
          const T* src = grad + ((c * g.hp + y + g.pad) * g.wp + g.pad) * kp + k;
          for (int64_t x = 0; x < g.w; ++x) *dst++ = src[x * kp];
        }
      }
    }
  }
}

// target_clones gives AVX-512 and AVX2 bodies where the CPU has them and a baseline elsewhere.
// Widths 16 (float) and 8 or 16 (double) cover up to 16 classes; wider heads take the
// runtime-width body.
#define ADAPTD_DEFINE_POOLED_CONV_KERNEL(NAME, T, KP)                                              \
  __attribute__((target_clones("avx512f", "avx2", "default"))) void NAME(                          \
      const Geometry<T>& g, int64_t b, Scratch<T>& sc) {                                           \
    if (g.weight) {                                                                                \
      ExampleBody<T, KP, true>(g, b, sc);                                                          \
    } else {                                                                                       \
      ExampleBody<T, KP, false>(g, b, sc);                                                         \
    }                                                                                              \
  }
ADAPTD_DEFINE_POOLED_CONV_KERNEL(ExampleFloat16, float, 16)
ADAPTD_DEFINE_POOLED_CONV_KERNEL(ExampleFloatAny, float, 0)
ADAPTD_DEFINE_POOLED_CONV_KERNEL(ExampleDouble8, double, 8)
ADAPTD_DEFINE_POOLED_CONV_KERNEL(ExampleDouble16, double, 16)
ADAPTD_DEFINE_POOLED_CONV_KERNEL(ExampleDoubleAny, double, 0)
#undef ADAPTD_DEFINE_POOLED_CONV_KERNEL

template <typename T>
void Run(const PooledConvArgs& args, at::Tensor& gram, bool full, at::Tensor* out) {
  Geometry<T> g;
  g.b_count = args.signal.size(0);
  g.k = args.signal.size(1);
  g.kp = PaddedClasses<T>(g.k);
  g.o_count = args.signal.size(2);
  g.m_count = args.signal.size(3);
  g.c_count = args.input.size(1);
  g.h = args.input.size(2);
  g.w = args.input.size(3);
  g.conv_w = args.conv_w;
  g.ksize = args.kernel;
  g.stride = args.stride;
  g.pad = args.padding;
  g.hp = g.h + 2 * g.pad;
  g.wp = g.w + 2 * g.pad;
  const int64_t ckk = g.c_count * g.ksize * g.ksize;
  std::vector<int64_t> taps(ckk);
  for (int64_t c = 0; c < g.c_count; ++c) {
    for (int64_t a = 0; a < g.ksize; ++a) {
      for (int64_t e = 0; e < g.ksize; ++e) taps[(c * g.ksize + a) * g.ksize + e] = (c * g.hp + a) * g.wp + e;
    }
  }
  g.tap_offsets = taps.data();
  g.signal = args.signal.data_ptr<T>();
  g.indices = args.indices.data_ptr<int64_t>();
  g.input = args.input.data_ptr<T>();
  g.weight_var = args.weight_var.data_ptr<T>();
  g.bias_var = args.bias_var.defined() ? args.bias_var.data_ptr<T>() : nullptr;
  g.weight = args.weight.defined() ? args.weight.data_ptr<T>() : nullptr;
  g.gram = gram.data_ptr<T>();
  g.out = out ? out->data_ptr<T>() : nullptr;
  g.full = full;
  at::parallel_for(0, g.b_count, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> sc(g, ckk);
    for (int64_t b = begin; b < end; ++b) {
      if constexpr (std::is_same_v<T, float>) {
        (g.kp == 16 ? ExampleFloat16 : ExampleFloatAny)(g, b, sc);
      } else {
        (g.kp == 8 ? ExampleDouble8 : g.kp == 16 ? ExampleDouble16 : ExampleDoubleAny)(g, b, sc);
      }
    }
  });
}

}  // namespace

bool PooledConvKernelApplies(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

at::Tensor PooledConvBackward(const PooledConvArgs& args, at::Tensor& gram, bool full) {
  at::Tensor out;
  if (args.weight.defined()) {
    out = at::empty({args.signal.size(0), args.signal.size(1), args.input.size(1),
                     args.input.size(2), args.input.size(3)},
                    args.input.options());
  }
  at::Tensor* out_ptr = out.defined() ? &out : nullptr;
  if (gram.scalar_type() == at::kFloat) {
    Run<float>(args, gram, full, out_ptr);
  } else {
    Run<double>(args, gram, full, out_ptr);
  }
  return out;
}

}  // namespace adaptd::internal

// GOTM's light sum as a C++ torch operator: pelagos::light_scan (CPU kernel, C++ autograd kernel).
//
// gotm_fabm's light routine walks down from the surface and adds each layer's bio-extinction k_i h_i in
// two halves, one before and one after the layer centre. light.py writes that as torch.cumsum over the
// flipped, interleaved halves; aten's cumsum cannot be fused by Inductor and reads the flipped,
// interleaved input element by element. This kernel does the same additions in the same order, with the
// same accumulator as aten's CPU cumsum (double, also for float32 input), so its results are those of
// light.py's eager path to the bit. Built and loaded by pelagos/column/_light_op.py; the fake-tensor
// rule is registered there.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

namespace {

using at::Tensor;

// Rows [r0, r1) of x (rows of n layers, bottom first): going down from the surface (index n-1),
// at[i] = sum of the halves above i plus the half of i, below[i] = that plus the half of i again.
template <class T>
void scan_rows(int64_t r0, int64_t r1, int64_t n, const T *x, T *at, T *below) {
  constexpr int64_t G = 8;  // independent rows at a time, so that their running sums overlap
  int64_t r = r0;
  for (; r + G <= r1; r += G) {
    double s[G] = {};
    for (int64_t i = n - 1; i >= 0; i--)
      for (int64_t g = 0; g < G; g++) {
        const int64_t o = (r + g) * n + i;
        const double h = x[o];
        s[g] += h;
        at[o] = (T)s[g];
        s[g] += h;
        below[o] = (T)s[g];
      }
  }
  for (; r < r1; r++) {
    double s = 0;
    for (int64_t i = n - 1; i >= 0; i--) {
      const int64_t o = r * n + i;
      const double h = x[o];
      s += h;
      at[o] = (T)s;
      s += h;
      below[o] = (T)s;
    }
  }
}

std::tuple<Tensor, Tensor> light_scan_cpu(const Tensor &half0) {
  TORCH_CHECK(half0.dim() >= 1, "pelagos::light_scan: expected (..., nz) half-layer extinctions, got a scalar");
  const auto dt = half0.scalar_type();
  TORCH_CHECK(dt == at::kDouble || dt == at::kFloat, "pelagos::light_scan: float32 or float64, got ", dt);
  const Tensor half = half0.contiguous();
  Tensor at_centre = at::empty(half.sizes(), half.options());
  Tensor below = at::empty(half.sizes(), half.options());
  const int64_t n = half.size(-1);
  if (n == 0 || half.numel() == 0) return {at_centre, below};
  const int64_t rows = half.numel() / n;
  const int64_t grain = std::max<int64_t>(8, (int64_t(1) << 15) / n);
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (dt == at::kDouble)
      scan_rows<double>(r0, r1, n, half.const_data_ptr<double>(), at_centre.mutable_data_ptr<double>(),
                        below.mutable_data_ptr<double>());
    else
      scan_rows<float>(r0, r1, n, half.const_data_ptr<float>(), at_centre.mutable_data_ptr<float>(),
                       below.mutable_data_ptr<float>());
  });
  return {at_centre, below};
}

const c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(const Tensor &)> &scan_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pelagos::light_scan", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor &)>();
  return op;
}

struct ScanFunction : public torch::autograd::Function<ScanFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *, const Tensor &half) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b] = scan_op().call(half);
    return {a, b};
  }

  // at_i = x_i + 2 sum_{j > i} x_j and below_i = 2 sum_{j >= i} x_j, so
  // dL/dx_j = 2 sum_{i <= j} (g_at_i + g_below_i) - g_at_j: a cumsum from the bottom (differentiable).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *,
                                                 torch::autograd::variable_list grads) {
    const Tensor &ga = grads[0], &gb = grads[1];
    return {at::cumsum((ga + gb) * 2, -1) - ga};
  }
};

std::tuple<Tensor, Tensor> light_scan_autograd(const Tensor &half) {
  if (at::GradMode::is_enabled() && half.requires_grad()) {
    auto out = ScanFunction::apply(half);
    return {out[0], out[1]};
  }
  at::AutoDispatchBelowADInplaceOrView guard;  // nothing to record
  return scan_op().call(half);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pelagos, m) {
  m.def("light_scan(Tensor half) -> (Tensor at_centre, Tensor below)");
}

TORCH_LIBRARY_IMPL(pelagos, CPU, m) { m.impl("light_scan", &light_scan_cpu); }

TORCH_LIBRARY_IMPL(pelagos, Autograd, m) { m.impl("light_scan", &light_scan_autograd); }

// Lets the loader check that the library it loaded is the one it built.
extern "C" int pelagos_light_op_abi(void) { return 1; }
